/* Staged output files (see outputs.h). */
#include "outputs.h"

#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void outputs_init(output_set *s) { memset(s, 0, sizeof *s); }

const char *outputs_reserve(output_set *s, const char *path) {
    if (s->n >= OUTPUTS_MAX) return NULL;
    size_t len = strlen(path) + 40;
    char *tmp = malloc(len);
    if (!tmp) return NULL;
    snprintf(tmp, len, "%s.partial-%ld", path, (long)getpid());
    s->path[s->n] = path;
    s->tmp[s->n++] = tmp;
    return tmp;
}

int outputs_save_npy(output_set *s, const char *path, const char *descr, int ndim, const int64_t *shape,
                     const void *data, char *err, size_t errlen) {
    const char *tmp = outputs_reserve(s, path);
    if (!tmp) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    char why[256];
    if (npy_save(tmp, descr, ndim, shape, data, why, sizeof why)) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 0;
}

int outputs_commit(output_set *s, char *err, size_t errlen) {
    for (int i = 0; i < s->n; i++) {
        if (rename(s->tmp[i], s->path[i])) {
            snprintf(err, errlen, "%s: cannot rename into place: %s", s->path[i], strerror(errno));
            for (int j = 0; j < i; j++) unlink(s->path[j]); /* all or nothing, as far as we can */
            return -1;
        }
    }
    for (int i = 0; i < s->n; i++) free(s->tmp[i]);
    s->n = 0;
    return 0;
}

void outputs_discard(output_set *s) {
    for (int i = 0; i < s->n; i++) {
        unlink(s->tmp[i]);
        free(s->tmp[i]);
    }
    s->n = 0;
}

int outputs_probe(const char *path, char *err, size_t errlen) {
    size_t len = strlen(path) + 40;
    char *tmp = malloc(len);
    if (!tmp) return snprintf(err, errlen, "out of memory"), -1;
    snprintf(tmp, len, "%s.probe-%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    int rc = 0;
    if (!f) rc = -1, snprintf(err, errlen, "cannot write: %s", strerror(errno));
    else fclose(f), unlink(tmp);
    free(tmp);
    return rc;
}

int outputs_write_text(const char *flag, const char *path, int (*write)(FILE *f, const void *ctx), const void *ctx,
                       char *err, size_t errlen) {
    output_set s;
    outputs_init(&s);
    const char *tmp = outputs_reserve(&s, path);
    FILE *f = tmp ? fopen(tmp, "w") : NULL;
    int rc = -1;
    if (!f) {
        snprintf(err, errlen, "%s %s: cannot write: %s", flag, path, strerror(errno));
    } else {
        int bad = write(f, ctx) != 0 || ferror(f);
        bad |= fclose(f) != 0;
        if (bad) snprintf(err, errlen, "%s %s: write failed", flag, path);
        else if (!outputs_commit(&s, err, errlen)) rc = 0;
    }
    outputs_discard(&s);
    return rc;
}
