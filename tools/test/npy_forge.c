/*
 * npy_forge: writes .npy files for the CLI's tests.
 *   npy_forge KIND PATH                  one kind of broken file; each is otherwise a plausible q of
 *                                        shape (4, 2, 8) float32, so only the named defect differs
 *   npy_forge valid PATH DESCR D0 [D1..] a well-formed array of pseudo-random values in [-1, 1)
 *   npy_forge ints PATH V0 [V1..]        a 1-D int32 array of the given values (cu_seqlens)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "npy.h"

static int valid(const char *path, const char *descr, int ndim, char **dims) {
    int64_t shape[8], count = 1;
    for (int i = 0; i < ndim; i++) count *= shape[i] = atoll(dims[i]);
    size_t itemsize = npy_descr_itemsize(descr);
    unsigned char *data = malloc((size_t)count * itemsize + 1);
    if (!data || !itemsize) return 2;
    uint32_t state = 12345;
    for (int64_t i = 0; i < count; i++) {
        state = state * 1664525u + 1013904223u;
        float x = (float)((state >> 8) / 8388608.0 - 1.0);
        if (!strcmp(descr, "<f4")) memcpy(data + 4 * i, &x, 4);
        else if (!strcmp(descr, "<i4")) { int32_t v = (int32_t)(x * 100); memcpy(data + 4 * i, &v, 4); }
        else { uint16_t h = !strcmp(descr, "<f2") ? float_to_f16(x) : float_to_bf16(x); memcpy(data + 2 * i, &h, 2); }
    }
    char err[256];
    int rc = npy_save(path, descr, ndim, shape, data, err, sizeof err);
    if (rc) fprintf(stderr, "npy_forge: %s: %s\n", path, err);
    free(data);
    return rc ? 1 : 0;
}

static int ints(const char *path, int n, char **values) {
    int32_t v[64];
    if (n > 64) return 2;
    for (int i = 0; i < n; i++) v[i] = (int32_t)atol(values[i]);
    int64_t shape[1] = {n};
    char err[256];
    return npy_save(path, "<i4", 1, shape, v, err, sizeof err) ? 1 : 0;
}

/* preamble (version 1.0) + header padded to 64 + nbytes of data; major/minor and magic overridable */
static int write_npy(const char *path, const char *magic, int major, const char *dict, long nbytes, long header_len_lie) {
    char header[512];
    size_t n = (size_t)snprintf(header, sizeof header, "%s", dict);
    while ((10 + n + 1) % 64) header[n++] = ' ';
    header[n++] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    size_t hl = header_len_lie >= 0 ? (size_t)header_len_lie : n;
    unsigned char pre[10] = {0, 0, 0, 0, 0, 0, (unsigned char)major, 0, (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
    memcpy(pre, magic, 6);
    fwrite(pre, 1, 10, f);
    fwrite(header, 1, n, f);
    for (long i = 0; i < nbytes; i++) fputc((int)(i * 37 % 251), f);
    return fclose(f) != 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "valid")) return valid(argv[2], argv[3], argc - 4, argv + 4);
    if (argc >= 4 && !strcmp(argv[1], "ints")) return ints(argv[2], argc - 3, argv + 3);
    if (argc != 3) {
        fprintf(stderr, "usage: npy_forge KIND PATH\n");
        return 2;
    }
    const char *kind = argv[1], *path = argv[2];
    const char *good = "\x93NUMPY";
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 8), }";
    long nbytes = 4 * 2 * 8 * 4;
    if (!strcmp(kind, "empty")) {
        FILE *f = fopen(path, "wb");
        return !f || fclose(f);
    }
    if (!strcmp(kind, "short")) {
        FILE *f = fopen(path, "wb");
        if (!f) return 1;
        fwrite(good, 1, 4, f);
        return fclose(f) != 0;
    }
    if (!strcmp(kind, "magic")) return write_npy(path, "\x93NUMPX", 1, dict, nbytes, -1);
    if (!strcmp(kind, "text")) {
        FILE *f = fopen(path, "wb");
        if (!f) return 1;
        fputs("q,k,v\n1,2,3\n", f);
        return fclose(f) != 0;
    }
    if (!strcmp(kind, "version")) return write_npy(path, good, 9, dict, nbytes, -1);
    if (!strcmp(kind, "descr_f8"))
        return write_npy(path, good, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2, 8), }", nbytes * 2, -1);
    if (!strcmp(kind, "big_endian"))
        return write_npy(path, good, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (4, 2, 8), }", nbytes, -1);
    if (!strcmp(kind, "fortran"))
        return write_npy(path, good, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (4, 2, 8), }", nbytes, -1);
    if (!strcmp(kind, "truncated_header")) return write_npy(path, good, 1, dict, 0, 4000);
    if (!strcmp(kind, "truncated_data")) return write_npy(path, good, 1, dict, nbytes - 100, -1);
    if (!strcmp(kind, "long_data")) return write_npy(path, good, 1, dict, nbytes + 3, -1);
    if (!strcmp(kind, "huge_dims"))
        return write_npy(path, good, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 8), }", nbytes, -1);
    if (!strcmp(kind, "negative_dim"))
        return write_npy(path, good, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 2, 8), }", nbytes, -1);
    if (!strcmp(kind, "not_dict")) return write_npy(path, good, 1, "[4, 2, 8]", nbytes, -1);
    if (!strcmp(kind, "zero_tokens"))
        return write_npy(path, good, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2, 8), }", 0, -1);
    if (!strcmp(kind, "two_dims"))
        return write_npy(path, good, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 16), }", nbytes, -1);
    fprintf(stderr, "npy_forge: unknown kind '%s'\n", kind);
    return 2;
}
