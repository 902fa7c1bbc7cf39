/* The last error message, one per thread: the only state libmoba keeps, so calls from different
 * threads never see each other's messages. */
#include <stdarg.h>
#include <stdio.h>

#include "error.h"

static _Thread_local char last_error[512];

moba_status moba_fail(moba_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void moba_clear_error(void) { last_error[0] = '\0'; }

const char *moba_last_error(void) { return last_error; }

const char *moba_strerror(moba_status status) {
    switch (status) {
    case MOBA_OK: return "success";
    case MOBA_ERR_INVALID_ARGUMENT: return "invalid argument";
    case MOBA_ERR_UNSUPPORTED: return "unsupported";
    case MOBA_ERR_OUT_OF_MEMORY: return "out of memory";
    case MOBA_ERR_WORKSPACE_TOO_SMALL: return "workspace too small";
    case MOBA_ERR_CUDA: return "CUDA error";
    case MOBA_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}
