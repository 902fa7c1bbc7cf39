/*
 * What the core (moba.c) hands a backend once every argument has been checked. Backends never see
 * unchecked input and never call back into the core; they may set the error message (error.h).
 */
#ifndef MOBA_BACKEND_H
#define MOBA_BACKEND_H

#include "moba.h"
#include "layout.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const moba_params *p;
    moba_layout L;
    float scale;          /* resolved softmax scale                                       */
    int group;            /* num_q_heads / num_kv_heads                                   */
    int slots;            /* selection slots per row actually used: min(top_k, max_blocks) */
    int full_attention;   /* top_k >= max_blocks: every row attends all of its history     */
} moba_call;

/* CPU backend (src/cpu). Workspace pointers are host memory of at least the queried size. */
size_t moba_cpu_workspace_size(const moba_call *c, moba_op op);
moba_status moba_cpu_forward(const moba_call *c, const void *q, const void *k, const void *v,
                             void *o, float *lse, void *ws);
moba_status moba_cpu_backward(const moba_call *c, const void *dout, const void *q, const void *k,
                              const void *v, const void *o, const float *lse,
                              void *dq, void *dk, void *dv, void *ws);
moba_status moba_cpu_route(const moba_call *c, const void *q, const void *k, int32_t *block_idx,
                           void *ws);

/* CUDA backend (src/cuda), compiled when MOBA_WITH_CUDA is defined. Pointers are device memory,
 * c->L.cu_seqlens is host memory; work is queued on c->p->cuda_stream. */
int moba_cuda_available(void);
moba_status moba_cuda_supports(moba_dtype dtype, int head_dim, int block_size);
size_t moba_cuda_workspace_size(const moba_call *c, moba_op op);
moba_status moba_cuda_alloc(const moba_call *c, size_t bytes, void **ptr);
void moba_cuda_free(const moba_call *c, void *ptr);
moba_status moba_cuda_forward(const moba_call *c, const void *q, const void *k, const void *v,
                              void *o, float *lse, void *ws);
moba_status moba_cuda_backward(const moba_call *c, const void *dout, const void *q, const void *k,
                               const void *v, const void *o, const float *lse,
                               void *dq, void *dk, void *dv, void *ws);
moba_status moba_cuda_route(const moba_call *c, const void *q, const void *k, int32_t *block_idx,
                            void *ws);

#ifdef __cplusplus
}
#endif

#endif
