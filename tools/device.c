/* Host or CUDA memory behind one interface (see device.h). */
#include "device.h"

#include "dtype.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int device_resolve(device_kind wanted, device_kind *out, char *err, size_t errlen) {
    int usable = cuda_built() && moba_backend_available(MOBA_BACKEND_CUDA);
    if (wanted == DEVICE_CUDA && !cuda_built()) {
        snprintf(err, errlen, "--device cuda: not built with CUDA");
        return -1;
    }
    if (wanted == DEVICE_CUDA && !usable) {
        snprintf(err, errlen, "--device cuda: no usable CUDA device");
        return -1;
    }
    *out = wanted == DEVICE_AUTO ? (usable ? DEVICE_CUDA : DEVICE_CPU) : wanted;
    return 0;
}

moba_backend device_backend(device_kind d) { return d == DEVICE_CUDA ? MOBA_BACKEND_CUDA : MOBA_BACKEND_CPU; }

int device_alloc(device_kind d, size_t bytes, void **ptr, char *err, size_t errlen) {
    if (d == DEVICE_CUDA) return cuda_mem_alloc(bytes, ptr, err, errlen);
    *ptr = malloc(bytes ? bytes : 1);
    if (!*ptr) {
        snprintf(err, errlen, "out of memory (%zu bytes)", bytes);
        return -1;
    }
    return 0;
}

int device_upload(device_kind d, void *dst, const void *src, size_t bytes, char *err, size_t errlen) {
    if (d == DEVICE_CUDA) return cuda_mem_copy(dst, src, bytes, 1, err, errlen);
    memcpy(dst, src, bytes);
    return 0;
}

int device_download(device_kind d, void *dst, const void *src, size_t bytes, char *err, size_t errlen) {
    if (d == DEVICE_CUDA) return cuda_mem_copy(dst, src, bytes, 0, err, errlen);
    memcpy(dst, src, bytes);
    return 0;
}

int device_sync(device_kind d, char *err, size_t errlen) {
    return d == DEVICE_CUDA ? cuda_mem_sync(err, errlen) : 0;
}

void device_free(device_kind d, void *ptr) {
    if (!ptr) return;
    if (d == DEVICE_CUDA) cuda_mem_free(ptr);
    else free(ptr);
}

int device_upload_as(device_kind d, moba_dtype t, const float *src, size_t n, void **dst, char *err, size_t errlen) {
    size_t bytes = n * moba_dtype_size(t);
    void *tmp = malloc(bytes ? bytes : 1);
    *dst = NULL;
    if (!tmp) return snprintf(err, errlen, "out of memory"), -1;
    dtype_store(t, src, tmp, n);
    int rc = device_alloc(d, bytes, dst, err, errlen) || device_upload(d, *dst, tmp, bytes, err, errlen);
    free(tmp);
    return rc ? -1 : 0;
}

float *device_download_float(device_kind d, moba_dtype t, const void *src, size_t n, char *err, size_t errlen) {
    size_t bytes = n * moba_dtype_size(t);
    void *tmp = malloc(bytes ? bytes : 1);
    float *out = malloc(n ? n * sizeof(float) : 1);
    if (!tmp || !out) {
        snprintf(err, errlen, "out of memory");
    } else if (!device_download(d, tmp, src, bytes, err, errlen)) {
        dtype_load(t, tmp, out, n);
        free(tmp);
        return out;
    }
    free(tmp);
    free(out);
    return NULL;
}
