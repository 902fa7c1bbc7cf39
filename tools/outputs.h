/*
 * All-or-nothing output files: each output is written to a temporary name beside it, and only when
 * every output of a command is complete are they renamed into place. A failure anywhere leaves no
 * output file behind (and no temporary one).
 */
#ifndef MOBA_TOOLS_OUTPUTS_H
#define MOBA_TOOLS_OUTPUTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define OUTPUTS_MAX 8

typedef struct {
    int n;
    const char *path[OUTPUTS_MAX];
    char *tmp[OUTPUTS_MAX];
} output_set;

void outputs_init(output_set *s);
/* The temporary path to write for the final path, or NULL (out of memory / too many outputs). */
const char *outputs_reserve(output_set *s, const char *path);
/* Writes an .npy for path (to its temporary name). 0, or -1 with a message. */
int outputs_save_npy(output_set *s, const char *path, const char *descr, int ndim, const int64_t *shape,
                     const void *data, char *err, size_t errlen);
/* A whole text output: write(f, ctx) fills the temporary file, which then replaces path.
 * 0, or -1 with a message naming flag and path. */
int outputs_write_text(const char *flag, const char *path, int (*write)(FILE *f, const void *ctx), const void *ctx,
                       char *err, size_t errlen);
/* Renames every temporary into place. 0, or -1 with a message naming the path that failed. */
int outputs_commit(output_set *s, char *err, size_t errlen);
/* Checks early that path can be written: creates and removes a temporary file beside it.
 * 0, or -1 with a message (not naming the path; the caller adds it). */
int outputs_probe(const char *path, char *err, size_t errlen);
/* Removes whatever temporaries exist and forgets them (safe after commit). */
void outputs_discard(output_set *s);

#endif
