/* What every subcommand shares: one-line error messages and exit codes. */
#ifndef MOBA_TOOLS_CLI_H
#define MOBA_TOOLS_CLI_H

#include "moba.h"
#include "opts.h"

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* Prints "moba CMD: message" on one line of stderr; returns code. */
int cli_error(const char *cmd, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Reports a failed library call: "moba CMD: [context: ]<the library's last error>". Bad arguments
 * and unsupported settings are the input's fault (exit 2); anything else is a run-time failure (1). */
int cli_library_error(const char *cmd, const char *context, moba_status st);

/* Device and storage dtype of a demo / bench run: auto device = cuda when usable, else cpu; auto dtype =
 * bf16 on cuda, f32 on cpu; the pair checked with moba_backend_supports. 0, or an exit code (printed). */
int cli_pick_device(const char *cmd, device_kind want_device, dtype_choice want_dtype, int head_dim, int block_size,
                    device_kind *device, moba_dtype *dtype);

/* A progress line on stderr, rewritten in place ("\r") on a terminal, one line per step otherwise.
 * cli_error ends an open progress line first so that the error stands on its own line. */
void cli_progress(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void cli_progress_end(void);

/* Subcommands: argv holds the flags only (after "moba CMD"); each returns the exit code. */
int cmd_attn(int argc, char **argv);
int cmd_route(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_decode_bench(int argc, char **argv);

#endif
