/*
 * Flag parsing for the moba command: a table of flags per subcommand, parsed strictly.
 *
 *   --name VALUE or --name=VALUE; -h / --help anywhere asks for help.
 *   Every error is one line in err: unknown flag, missing value, a value that is not a number,
 *   out of range, a flag given twice, a required flag missing, a stray positional argument.
 * No global state, no exit(), no printing while parsing: the parser is a fuzz target.
 */
#ifndef MOBA_TOOLS_ARGS_H
#define MOBA_TOOLS_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    ARG_STRING, /* value: const char **                      */
    ARG_INT,    /* value: int64_t *, checked against min/max */
    ARG_REAL,   /* value: double *, finite, within min/max   */
    ARG_SWITCH  /* value: int *, set to 1, takes no value    */
} arg_kind;

typedef struct {
    const char *name;       /* "--block-size"                          */
    arg_kind kind;
    const char *value_name; /* "N", "FILE", ... (help only)            */
    const char *help;       /* one line; the default is in the text    */
    void *value;            /* where the parsed value goes             */
    double min, max;        /* accepted range of ARG_INT / ARG_REAL    */
    int required;
} arg_spec;

enum { ARGS_OK = 0, ARGS_HELP = 1, ARGS_ERROR = -1 };

/* Formats a one-line message into err (when err is not NULL) and returns ARGS_ERROR (-1). */
int args_error(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Parses argv[0..argc) against specs. ARGS_OK, ARGS_HELP, or ARGS_ERROR with a message in err. */
int args_parse(const arg_spec *specs, int nspecs, int argc, char **argv, char *err, size_t errlen);

/* Prints one line per flag: "  --name VALUE   help". */
void args_print_help(FILE *f, const arg_spec *specs, int nspecs);

/* Parses a comma-separated list of integers in [min, max] into out[0..*n), at most cap of them. */
int args_parse_int_list(const char *s, int64_t min, int64_t max, int64_t *out, int cap, int *n,
                        char *err, size_t errlen);

#endif
