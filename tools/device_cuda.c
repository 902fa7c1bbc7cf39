/* CUDA memory for the moba command (compiled only when the build has CUDA). */
#include "device.h"

#include <stdio.h>

#include <cuda_runtime.h>

static int cuda_fail(cudaError_t e, const char *what, char *err, size_t errlen) {
    snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e));
    return -1;
}

int cuda_built(void) { return 1; }

int cuda_mem_alloc(size_t bytes, void **ptr, char *err, size_t errlen) {
    cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);
    if (e != cudaSuccess) { *ptr = NULL; return cuda_fail(e, "cudaMalloc", err, errlen); }
    return 0;
}

int cuda_mem_copy(void *dst, const void *src, size_t bytes, int to_device, char *err, size_t errlen) {
    cudaError_t e = cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? 0 : cuda_fail(e, "cudaMemcpy", err, errlen);
}

int cuda_mem_sync(char *err, size_t errlen) {
    cudaError_t e = cudaDeviceSynchronize();
    return e == cudaSuccess ? 0 : cuda_fail(e, "cudaDeviceSynchronize", err, errlen);
}

void cuda_mem_free(void *ptr) { cudaFree(ptr); }
