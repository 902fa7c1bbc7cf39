/* A build without CUDA: every CUDA memory call says so. */
#include "device.h"

#include <stdio.h>

static int no_cuda(char *err, size_t errlen) {
    snprintf(err, errlen, "not built with CUDA");
    return -1;
}

int cuda_built(void) { return 0; }
int cuda_mem_alloc(size_t bytes, void **ptr, char *err, size_t errlen) { *ptr = NULL; return no_cuda(err, errlen); }
int cuda_mem_copy(void *dst, const void *src, size_t bytes, int to_device, char *err, size_t errlen) { return no_cuda(err, errlen); }
int cuda_mem_sync(char *err, size_t errlen) { return no_cuda(err, errlen); }
void cuda_mem_free(void *ptr) {}
