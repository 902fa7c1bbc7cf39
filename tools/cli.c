/* One-line errors and exit codes (see cli.h). */
#include "cli.h"

#include "device.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int progress_open; /* a "\r" progress line is on the terminal without its newline */

void cli_progress(const char *cmd, const char *fmt, ...) {
    int tty = isatty(2);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%smoba %s: ", tty ? "\r" : "", cmd);
    int n = vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (tty) fprintf(stderr, "%*s", n < 60 ? 60 - n : 0, ""); /* blank the rest of a longer line */
    else fputc('\n', stderr);
    fflush(stderr);
    progress_open = tty;
}

void cli_progress_end(void) {
    if (progress_open) fputc('\n', stderr);
    progress_open = 0;
}

int cli_error(const char *cmd, int code, const char *fmt, ...) {
    va_list ap;
    cli_progress_end();
    va_start(ap, fmt);
    fprintf(stderr, "moba %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

int cli_library_error(const char *cmd, const char *context, moba_status st) {
    int code = (st == MOBA_ERR_INVALID_ARGUMENT || st == MOBA_ERR_UNSUPPORTED) ? EXIT_USAGE : EXIT_RUNTIME;
    const char *why = moba_last_error(); /* already names the function: "moba_forward: ..." */
    if (!why[0]) why = moba_strerror(st);
    return context ? cli_error(cmd, code, "%s: %s", context, why) : cli_error(cmd, code, "%s", why);
}

int cli_pick_device(const char *cmd, device_kind want_device, dtype_choice want_dtype, int head_dim, int block_size,
                    device_kind *device, moba_dtype *dtype) {
    char err[256];
    if (device_resolve(want_device, device, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);
    *dtype = want_dtype == DTYPE_AUTO ? (*device == DEVICE_CUDA ? MOBA_DTYPE_BF16 : MOBA_DTYPE_F32) : (moba_dtype)want_dtype;
    moba_status st = moba_backend_supports(device_backend(*device), *dtype, head_dim, block_size);
    return st ? cli_library_error(cmd, NULL, st) : EXIT_OK;
}
