/*
 * Memory where the library runs: host memory for the CPU backend, CUDA device memory for the CUDA
 * backend (only in a build with CUDA: device_cuda.c; otherwise device_nocuda.c says so).
 */
#ifndef MOBA_TOOLS_DEVICE_H
#define MOBA_TOOLS_DEVICE_H

#include <stddef.h>

#include "moba.h"
#include "opts.h"

/* Picks the device for a run: DEVICE_AUTO -> cuda when usable, else cpu. 0, or -1 with a message
 * ("--device cuda: not built with CUDA") when an explicit cuda cannot be used. */
int device_resolve(device_kind wanted, device_kind *out, char *err, size_t errlen);

moba_backend device_backend(device_kind d);

/* Each returns 0, or -1 with a message. Pointers for cuda are device pointers. */
int device_alloc(device_kind d, size_t bytes, void **ptr, char *err, size_t errlen);
int device_upload(device_kind d, void *dst, const void *src, size_t bytes, char *err, size_t errlen);
int device_download(device_kind d, void *dst, const void *src, size_t bytes, char *err, size_t errlen);
int device_sync(device_kind d, char *err, size_t errlen);
void device_free(device_kind d, void *ptr);

/* A float32 host tensor of n elements, allocated on the device and stored as dtype t. */
int device_upload_as(device_kind d, moba_dtype t, const float *src, size_t n, void **dst, char *err, size_t errlen);
/* A device tensor of dtype t read back as a malloc'd float32 array (NULL with a message on failure). */
float *device_download_float(device_kind d, moba_dtype t, const void *src, size_t n, char *err, size_t errlen);

/* The CUDA side (device_cuda.c or device_nocuda.c). */
int cuda_built(void);
int cuda_mem_alloc(size_t bytes, void **ptr, char *err, size_t errlen);
int cuda_mem_copy(void *dst, const void *src, size_t bytes, int to_device, char *err, size_t errlen);
int cuda_mem_sync(char *err, size_t errlen);
void cuda_mem_free(void *ptr);

#endif
