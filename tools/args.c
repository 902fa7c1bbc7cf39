/*
 * Strict flag parsing (see args.h). Numbers must be the whole argument (strtoll / strtod with an
 * end check), finite, and within the flag's range; values are quoted back at most 40 characters.
 */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define ARGS_MAX_SPECS 64

int args_error(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return ARGS_ERROR;
}

static int parse_int(const char *s, int64_t *out) {
    if (!*s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return 0;
    *out = (int64_t)v;
    return 1;
}

static int parse_real(const char *s, double *out) {
    if (!*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

/* Stores text as the value of spec s; the flag name is only for messages. */
static int store(const arg_spec *s, const char *text, char *err, size_t errlen) {
    switch (s->kind) {
    case ARG_STRING:
        if (!*text) return args_error(err, errlen, "%s needs a non-empty value", s->name);
        *(const char **)s->value = text;
        return ARGS_OK;
    case ARG_INT: {
        int64_t v;
        if (!parse_int(text, &v)) return args_error(err, errlen, "%s wants an integer, got '%.40s'", s->name, text);
        if ((double)v < s->min || (double)v > s->max)
            return args_error(err, errlen, "%s must be in [%.0f, %.0f], got %lld", s->name, s->min, s->max, (long long)v);
        *(int64_t *)s->value = v;
        return ARGS_OK;
    }
    case ARG_REAL: {
        double v;
        if (!parse_real(text, &v)) return args_error(err, errlen, "%s wants a finite number, got '%.40s'", s->name, text);
        if (v < s->min || v > s->max)
            return args_error(err, errlen, "%s must be in [%g, %g], got %g", s->name, s->min, s->max, v);
        *(double *)s->value = v;
        return ARGS_OK;
    }
    case ARG_SWITCH:
        *(int *)s->value = 1;
        return ARGS_OK;
    }
    return args_error(err, errlen, "%s: internal error (bad kind)", s->name);
}

int args_parse(const arg_spec *specs, int nspecs, int argc, char **argv, char *err, size_t errlen) {
    if (nspecs > ARGS_MAX_SPECS) return args_error(err, errlen, "internal error: too many flags");
    int seen[ARGS_MAX_SPECS] = {0};
    for (int i = 0; i < argc; i++)
        if (argv[i] && (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))) return ARGS_HELP;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!a) return args_error(err, errlen, "argument %d is missing", i);
        if (strncmp(a, "--", 2) || !a[2])
            return args_error(err, errlen, "unexpected argument '%.40s' (flags start with --; see --help)", a);
        /* --name=value or --name value */
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        int found = -1;
        for (int s = 0; s < nspecs; s++)
            if (strlen(specs[s].name) == nlen && !strncmp(specs[s].name, a, nlen)) { found = s; break; }
        if (found < 0) return args_error(err, errlen, "unknown flag '%.*s' (see --help)", (int)(nlen > 40 ? 40 : nlen), a);
        const arg_spec *s = &specs[found];
        if (seen[found]++) return args_error(err, errlen, "%s is given twice", s->name);
        const char *value;
        if (s->kind == ARG_SWITCH) {
            if (eq) return args_error(err, errlen, "%s takes no value", s->name);
            value = "";
        } else if (eq) {
            value = eq + 1;
        } else {
            /* a following "--flag" is not a value: "--q --k k.npy" means --q lost its value */
            if (i + 1 >= argc || !argv[i + 1] || !strncmp(argv[i + 1], "--", 2))
                return args_error(err, errlen, "%s needs a value (%s)", s->name, s->value_name ? s->value_name : "VALUE");
            value = argv[++i];
        }
        if (store(s, value, err, errlen)) return ARGS_ERROR;
    }
    for (int s = 0; s < nspecs; s++)
        if (specs[s].required && !seen[s])
            return args_error(err, errlen, "missing %s %s", specs[s].name, specs[s].value_name ? specs[s].value_name : "");
    return ARGS_OK;
}

void args_print_help(FILE *f, const arg_spec *specs, int nspecs) {
    for (int s = 0; s < nspecs; s++) {
        char left[64];
        if (specs[s].kind == ARG_SWITCH) snprintf(left, sizeof left, "%s", specs[s].name);
        else snprintf(left, sizeof left, "%s %s", specs[s].name, specs[s].value_name ? specs[s].value_name : "VALUE");
        fprintf(f, "  %-24s %s%s\n", left, specs[s].help, specs[s].required ? " (required)" : "");
    }
}

int args_parse_int_list(const char *s, int64_t min, int64_t max, int64_t *out, int cap, int *n,
                        char *err, size_t errlen) {
    *n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[32];
        if (len == 0 || len >= sizeof item) return args_error(err, errlen, "bad list item in '%.40s'", s);
        memcpy(item, p, len);
        item[len] = 0;
        int64_t v;
        if (!parse_int(item, &v)) return args_error(err, errlen, "list item '%s' is not an integer", item);
        if (v < min || v > max)
            return args_error(err, errlen, "list item %lld is not in [%lld, %lld]", (long long)v, (long long)min, (long long)max);
        if (*n >= cap) return args_error(err, errlen, "list has more than %d items", cap);
        out[(*n)++] = v;
        if (!comma) break;
        p = comma + 1;
    }
    return ARGS_OK;
}
