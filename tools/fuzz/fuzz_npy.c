/*
 * libFuzzer target for the .npy reader: every input is parsed from memory (npy_load_mem) and from a
 * file (npy_load); both must agree, and whatever they accept must be self-consistent.
 */
#include "npy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err_mem[256], err_file[256], path[64];
    npy_array a, b;
    int rc_mem = npy_load_mem(data, size, &a, err_mem, sizeof err_mem);

    snprintf(path, sizeof path, "/tmp/fuzz_npy_%ld.npy", (long)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    int rc_file = npy_load(path, &b, err_file, sizeof err_file);
    unlink(path);

    if (rc_mem != rc_file) abort(); /* the two readers must accept exactly the same files */
    if (rc_mem == 0) {
        size_t count = 1;
        for (int i = 0; i < a.ndim; i++) count *= (size_t)a.shape[i];
        if (count != a.count || a.itemsize != npy_descr_itemsize(a.descr)) abort();
        if (memcmp(&a.shape, &b.shape, sizeof a.shape) || strcmp(a.descr, b.descr)) abort();
        if (a.count && memcmp(a.data, b.data, a.count * a.itemsize)) abort();
        if (a.count * a.itemsize > size) abort(); /* never more data than the file holds */
    } else {
        if (!memchr(err_mem, 0, sizeof err_mem) || !err_mem[0] || strchr(err_mem, '\n')) abort(); /* one line */
    }
    npy_free(&a);
    npy_free(&b);
    return 0;
}
