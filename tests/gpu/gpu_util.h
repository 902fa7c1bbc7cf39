/* What the GPU tests share: checked CUDA calls, host <-> device copies, poisoned device buffers, and
 * loading a golden case's .npy files. Include after check.h, moba.h, npy.h and ref64.h. */
#ifndef MOBA_TESTS_GPU_UTIL_H
#define MOBA_TESTS_GPU_UTIL_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#define CUDA_OK(call)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        CHECK_FATAL(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));                   \
    } while (0)

/* A device buffer of `bytes` (at least 1), holding host's bytes when host != NULL. */
static inline void *to_device(const void *host, size_t bytes) {
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes && host) CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* A host copy (malloc'd) of `bytes` of device memory. */
static inline void *from_device(const void *dev, size_t bytes) {
    void *h = check_malloc(bytes ? bytes : 1);
    if (bytes) CUDA_OK(cudaMemcpy(h, dev, bytes, cudaMemcpyDeviceToHost));
    return h;
}

/* Device buffer of n storage elements holding the poison pattern. */
static inline void *poisoned_device(moba_dtype dt, size_t n) {
    size_t es = ref_dtype_size(dt);
    void *h = check_malloc(n * es);
    ref_poison(dt, h, n);
    void *d = to_device(h, n * es);
    free(h);
    return d;
}

/* A small CUDA problem for the argument checks: bf16, one sequence (cu = {0, len}), 2 heads, d = 64,
 * B = 64, top_k = 3. Returns the workspace bytes of `op`. */
static inline size_t small_cuda_problem(moba_params *p, const int32_t *cu, moba_op op) {
    size_t bytes = 0;
    moba_params_init(p);
    p->backend = MOBA_BACKEND_CUDA;
    ref_set_problem(p, MOBA_DTYPE_BF16, 1, cu, 2, 2, 64, 64, 3);
    CHECK_FATAL(moba_workspace_size(p, op, &bytes) == MOBA_OK, "moba_workspace_size: %s", moba_last_error());
    return bytes;
}

/* dir/name/file of a golden case, or the test fails. */
static inline npy_array golden_load(const char *dir, const char *name, const char *file) {
    char path[1024], err[256];
    npy_array a;
    snprintf(path, sizeof path, "%s/%s/%s", dir, name, file);
    CHECK_FATAL(npy_load(path, &a, err, sizeof err) == 0, "%s: %s", path, err);
    return a;
}

#endif
