/*
 * The tests' assertions: on failure print file:line, the condition and a message, count it, and
 * keep going so one run shows every failure; check_done() prints the summary and gives the exit
 * status. CHECK_FATAL stops at once (for things later checks depend on, like an allocation).
 */
#ifndef MOBA_TEST_CHECK_H
#define MOBA_TEST_CHECK_H

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures = 0;
static int check_count = 0;

static inline void check_failed(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    check_failures++;
    fflush(stdout); /* keep the order of the printed table and the failures */
    fprintf(stderr, "%s:%d: FAILED: %s: ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        check_count++;                                                        \
        if (!(cond)) check_failed(__FILE__, __LINE__, #cond, __VA_ARGS__);    \
    } while (0)

#define CHECK_FATAL(cond, ...)                                                \
    do {                                                                      \
        check_count++;                                                        \
        if (!(cond)) {                                                        \
            check_failed(__FILE__, __LINE__, #cond, __VA_ARGS__);             \
            fprintf(stderr, "%s:%d: fatal, stopping\n", __FILE__, __LINE__);  \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static inline int check_done(const char *name) {
    if (check_failures) {
        fprintf(stderr, "%s: %d of %d checks FAILED\n", name, check_failures, check_count);
        return 1;
    }
    printf("%s: all %d checks passed\n", name, check_count);
    return 0;
}

static inline void *check_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* name occurs in msg as a whole identifier (so "k" is not found inside "top_k"): error messages must
 * name the bad argument. */
static inline int has_word(const char *msg, const char *name) {
    size_t n = strlen(name);
    for (const char *s = strstr(msg, name); s; s = strstr(s + 1, name)) {
        int before = s > msg && (isalnum((unsigned char)s[-1]) || s[-1] == '_');
        int after = isalnum((unsigned char)s[n]) || s[n] == '_';
        if (!before && !after) return 1;
    }
    return 0;
}

#endif
