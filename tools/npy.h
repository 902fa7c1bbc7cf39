/*
 * A strict reader and an atomic writer of NumPy .npy files (format versions 1.0, 2.0 and 3.0),
 * for the four element types libmoba's tools and tests use:
 *   "<f4" float32, "<f2" float16, "<u2" uint16 (raw bfloat16 bits), "<i4" int32.
 * C order only, little-endian host only. Anything the reader does not fully understand is an error:
 * it never guesses, never reads past a buffer, and rejects a file whose size disagrees with its
 * header (shorter or longer).
 */
#ifndef MOBA_NPY_H
#define MOBA_NPY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NPY_MAX_DIMS 8
/* No array may hold more than 2^40 elements (a guard against absurd headers). */
#define NPY_MAX_ELEMENTS ((int64_t)1 << 40)

typedef struct {
    char descr[8];               /* "<f4", "<f2", "<u2" or "<i4"                     */
    int ndim;                    /* 0 (a scalar) .. NPY_MAX_DIMS                     */
    int64_t shape[NPY_MAX_DIMS]; /* shape[0..ndim-1]; unused entries are 0          */
    size_t itemsize;             /* bytes per element                               */
    size_t count;                /* number of elements (product of shape, 1 if ndim 0) */
    void *data;                  /* count * itemsize bytes, malloc'd; npy_free frees it */
} npy_array;

/* 0 on success; else -1 and a one-line message in err naming the problem (not the path; the caller
 * adds it). On failure *out is zeroed (nothing to free). */
int npy_load(const char *path, npy_array *out, char *err, size_t errlen);

/* The same parse from a buffer holding a whole .npy file (used by fuzzers and tests). */
int npy_load_mem(const void *buf, size_t len, npy_array *out, char *err, size_t errlen);

/* Writes a .npy (version 1.0, or 2.0 if the header needs it) to path atomically: a temporary file
 * in the same directory, renamed over path once complete, so a failure leaves no partial output.
 * 0 on success; else -1 and a message in err. */
int npy_save(const char *path, const char *descr, int ndim, const int64_t *shape, const void *data,
             char *err, size_t errlen);

/* Frees a->data and zeroes *a. Safe on a zeroed array. */
void npy_free(npy_array *a);

/* Bytes per element of a supported descr, 0 if unsupported. */
size_t npy_descr_itemsize(const char *descr);

#ifdef __cplusplus
}
#endif

#endif /* MOBA_NPY_H */
