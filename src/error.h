/* The per-thread last-error message (the only state libmoba keeps). */
#ifndef MOBA_ERROR_H
#define MOBA_ERROR_H

#include "moba.h"

#if defined(__GNUC__)
#define MOBA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MOBA_PRINTF(a, b)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Sets this thread's message and returns `status`, so code can `return moba_fail(...)`. */
moba_status moba_fail(moba_status status, const char *fmt, ...) MOBA_PRINTF(2, 3);
void moba_clear_error(void);

#ifdef __cplusplus
}
#endif

#endif
