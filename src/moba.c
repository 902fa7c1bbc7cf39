/*
 * The core: checks every argument, builds the block layout, sizes and provides the workspace, and
 * hands the call to a backend. Backends can trust what arrives here.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "error.h"
#include "overflow.h"

#define STR_(x) #x
#define STR(x) STR_(x)

#define MOBA_CPU_MAX_HEAD_DIM 256

void moba_params_init(moba_params *p) {
    if (!p) return;
    *p = (moba_params){0};
    p->backend = MOBA_BACKEND_CPU;
    p->dtype = MOBA_DTYPE_F32;
}

const char *moba_version(void) {
    return STR(MOBA_VERSION_MAJOR) "." STR(MOBA_VERSION_MINOR) "." STR(MOBA_VERSION_PATCH);
}

size_t moba_dtype_size(moba_dtype dtype) {
    switch (dtype) {
    case MOBA_DTYPE_F32: return 4;
    case MOBA_DTYPE_F16: return 2;
    case MOBA_DTYPE_BF16: return 2;
    }
    return 0;
}

int moba_backend_available(moba_backend backend) {
    if (backend == MOBA_BACKEND_CPU) return 1;
#ifdef MOBA_WITH_CUDA
    if (backend == MOBA_BACKEND_CUDA) return moba_cuda_available();
#endif
    return 0;
}

static moba_status supports(const char *fn, moba_backend backend, moba_dtype dtype, int head_dim,
                            int block_size) {
    if (backend == MOBA_BACKEND_CPU) {
        if (head_dim < 1 || head_dim > MOBA_CPU_MAX_HEAD_DIM)
            return moba_fail(MOBA_ERR_INVALID_ARGUMENT,
                             "%s: head_dim (%d) must be in 1..%d on the CPU backend", fn, head_dim,
                             MOBA_CPU_MAX_HEAD_DIM);
        return MOBA_OK;
    }
#ifdef MOBA_WITH_CUDA
    if (backend == MOBA_BACKEND_CUDA) {
        moba_status st = moba_cuda_supports(dtype, head_dim, block_size);
        if (st != MOBA_OK) {
            /* prefix the backend's message with the function name */
            char msg[400];
            snprintf(msg, sizeof msg, "%s", moba_last_error());
            return moba_fail(st, "%s: %s", fn, msg);
        }
        return MOBA_OK;
    }
#endif
    (void)dtype; (void)block_size;
    return moba_fail(MOBA_ERR_UNSUPPORTED, "%s: backend MOBA_BACKEND_CUDA is not available: %s", fn,
#ifdef MOBA_WITH_CUDA
                     "no usable CUDA device"
#else
                     "libmoba was built without CUDA"
#endif
    );
}

moba_status moba_backend_supports(moba_backend backend, moba_dtype dtype, int head_dim, int block_size) {
    moba_clear_error();
    if (backend != MOBA_BACKEND_CPU && backend != MOBA_BACKEND_CUDA)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "moba_backend_supports: backend (%d) is not a known moba_backend", (int)backend);
    if (moba_dtype_size(dtype) == 0)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "moba_backend_supports: dtype (%d) is not a known moba_dtype", (int)dtype);
    if (block_size < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "moba_backend_supports: block_size (%d) must be >= 1", block_size);
    moba_status st = supports("moba_backend_supports", backend, dtype, head_dim, block_size);
    if (st != MOBA_ERR_INVALID_ARGUMENT) return st;
    char msg[400]; /* the message lives in the buffer moba_fail writes: copy it first */
    snprintf(msg, sizeof msg, "%s", moba_last_error());
    return moba_fail(MOBA_ERR_UNSUPPORTED, "%s", msg);
}

/* Checks the params (not the tensor pointers) and fills the call a backend receives. */
static moba_status check_params(const char *fn, const moba_params *p, moba_call *c) {
    if (!p) return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: params is NULL", fn);
    if (p->backend != MOBA_BACKEND_CPU && p->backend != MOBA_BACKEND_CUDA)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: backend (%d) is not a known moba_backend", fn, (int)p->backend);
    size_t elem = moba_dtype_size(p->dtype);
    if (elem == 0)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: dtype (%d) is not a known moba_dtype", fn, (int)p->dtype);
    if (p->num_threads < 0)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: num_threads (%d) must be >= 0 (0 = OpenMP default)", fn, p->num_threads);
    if (p->num_seqs < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: num_seqs (%d) must be >= 1", fn, p->num_seqs);
    if (p->total_tokens < 1 || p->total_tokens > INT32_MAX)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: total_tokens (%lld) must be in 1..%d", fn,
                         (long long)p->total_tokens, INT32_MAX);
    if (p->num_q_heads < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: num_q_heads (%d) must be >= 1", fn, p->num_q_heads);
    if (p->num_kv_heads < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: num_kv_heads (%d) must be >= 1", fn, p->num_kv_heads);
    if (p->num_q_heads % p->num_kv_heads != 0)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: num_q_heads (%d) is not a multiple of num_kv_heads (%d)",
                         fn, p->num_q_heads, p->num_kv_heads);
    if (p->head_dim < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: head_dim (%d) must be >= 1", fn, p->head_dim);
    if (p->block_size < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: block_size (%d) must be >= 1", fn, p->block_size);
    if (p->top_k < 1)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: top_k (%d) must be >= 1 (it counts the query's own block)", fn, p->top_k);
    if (!(p->softmax_scale >= 0.0f) || isinf(p->softmax_scale))
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT,
                         "%s: softmax_scale (%g) must be a finite number > 0, or 0 for 1/sqrt(head_dim)", fn,
                         (double)p->softmax_scale);
    /* every tensor's byte size must fit: q/o [total,Hq,d], lse [Hq,total], block_idx [Hq,total,top_k] */
    if (!moba_mul4((size_t)p->total_tokens, (size_t)p->num_q_heads, (size_t)p->head_dim, elem) ||
        !moba_mul4((size_t)p->total_tokens, (size_t)p->num_q_heads, (size_t)p->top_k, sizeof(int32_t)) ||
        !moba_mul4((size_t)p->total_tokens, (size_t)p->num_q_heads, (size_t)p->head_dim, sizeof(float)))
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT,
                         "%s: sizes overflow: total_tokens (%lld) x num_q_heads (%d) x head_dim (%d) x top_k (%d) "
                         "is too large to address", fn, (long long)p->total_tokens, p->num_q_heads, p->head_dim, p->top_k);
    moba_status st = supports(fn, p->backend, p->dtype, p->head_dim, p->block_size);
    if (st != MOBA_OK) return st;
    if (!moba_backend_available(p->backend))
        return moba_fail(MOBA_ERR_UNSUPPORTED, "%s: backend MOBA_BACKEND_CUDA is not available: no usable CUDA device", fn);

    const int32_t *cu = p->cu_seqlens;
    if (!cu) return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: cu_seqlens is NULL", fn);
    if (cu[0] != 0)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: cu_seqlens[0] (%d) must be 0", fn, cu[0]);
    for (int s = 0; s < p->num_seqs; s++)
        if (cu[s + 1] < cu[s])
            return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: cu_seqlens is decreasing: cu_seqlens[%d] (%d) < cu_seqlens[%d] (%d)",
                             fn, s + 1, cu[s + 1], s, cu[s]);
    if (cu[p->num_seqs] != p->total_tokens)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: cu_seqlens[num_seqs] (%d) must equal total_tokens (%lld)", fn,
                         cu[p->num_seqs], (long long)p->total_tokens);

    c->p = p;
    moba_layout_init(&c->L, cu, p->num_seqs, p->block_size);
    c->scale = p->softmax_scale > 0.0f ? p->softmax_scale : 1.0f / sqrtf((float)p->head_dim);
    c->group = p->num_q_heads / p->num_kv_heads;
    c->slots = p->top_k < c->L.max_blocks ? p->top_k : c->L.max_blocks;
    c->full_attention = p->top_k >= c->L.max_blocks;
    return MOBA_OK;
}

static size_t workspace_size(const moba_call *c, moba_op op) {
#ifdef MOBA_WITH_CUDA
    if (c->p->backend == MOBA_BACKEND_CUDA) return moba_cuda_workspace_size(c, op);
#endif
    return moba_cpu_workspace_size(c, op);
}

moba_status moba_workspace_size(const moba_params *p, moba_op op, size_t *bytes) {
    moba_clear_error();
    moba_call c;
    moba_status st = check_params("moba_workspace_size", p, &c);
    if (st != MOBA_OK) return st;
    if (op != MOBA_OP_FORWARD && op != MOBA_OP_BACKWARD && op != MOBA_OP_ROUTE)
        return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "moba_workspace_size: op (%d) is not a known moba_op", (int)op);
    if (!bytes) return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "moba_workspace_size: bytes is NULL");
    *bytes = workspace_size(&c, op);
    return MOBA_OK;
}

/* The caller's workspace if large enough, or one allocated here (*owned = 1) when they passed NULL. */
static moba_status get_workspace(const char *fn, const moba_call *c, moba_op op, void *ws, size_t ws_bytes,
                                 void **out, int *owned) {
    size_t need = workspace_size(c, op);
    *owned = 0;
    *out = ws;
    if (ws) {
        if (ws_bytes < need)
            return moba_fail(MOBA_ERR_WORKSPACE_TOO_SMALL,
                             "%s: workspace_bytes (%zu) is smaller than moba_workspace_size (%zu)", fn, ws_bytes, need);
        return MOBA_OK;
    }
    if (need == 0) return MOBA_OK;
#ifdef MOBA_WITH_CUDA
    if (c->p->backend == MOBA_BACKEND_CUDA) {
        moba_status st = moba_cuda_alloc(c, need, out);
        if (st != MOBA_OK) return st;
        *owned = 1;
        return MOBA_OK;
    }
#endif
    *out = malloc(need);
    if (!*out)
        return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "%s: could not allocate a workspace of %zu bytes", fn, need);
    *owned = 1;
    return MOBA_OK;
}

static void put_workspace(const moba_call *c, void *ws, int owned) {
    if (!owned) return;
#ifdef MOBA_WITH_CUDA
    if (c->p->backend == MOBA_BACKEND_CUDA) {
        moba_cuda_free(c, ws);
        return;
    }
#endif
    free(ws);
}

#define REQUIRE(ptr)                                                                               \
    do {                                                                                           \
        if (!(ptr)) return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: " #ptr " is NULL", fn);      \
    } while (0)

moba_status moba_forward(const moba_params *p, const void *q, const void *k, const void *v, void *o, float *lse,
                         void *workspace, size_t workspace_bytes) {
    const char *fn = "moba_forward";
    moba_clear_error();
    moba_call c;
    moba_status st = check_params(fn, p, &c);
    if (st != MOBA_OK) return st;
    REQUIRE(q);
    REQUIRE(k);
    REQUIRE(v);
    REQUIRE(o);
    void *ws;
    int owned;
    st = get_workspace(fn, &c, MOBA_OP_FORWARD, workspace, workspace_bytes, &ws, &owned);
    if (st != MOBA_OK) return st;
#ifdef MOBA_WITH_CUDA
    if (p->backend == MOBA_BACKEND_CUDA) st = moba_cuda_forward(&c, q, k, v, o, lse, ws);
    else
#endif
        st = moba_cpu_forward(&c, q, k, v, o, lse, ws);
    put_workspace(&c, ws, owned);
    return st;
}

moba_status moba_backward(const moba_params *p, const void *dout, const void *q, const void *k, const void *v,
                          const void *o, const float *lse, void *dq, void *dk, void *dv, void *workspace,
                          size_t workspace_bytes) {
    const char *fn = "moba_backward";
    moba_clear_error();
    moba_call c;
    moba_status st = check_params(fn, p, &c);
    if (st != MOBA_OK) return st;
    REQUIRE(dout);
    REQUIRE(q);
    REQUIRE(k);
    REQUIRE(v);
    REQUIRE(o);
    REQUIRE(lse);
    REQUIRE(dq);
    REQUIRE(dk);
    REQUIRE(dv);
    void *ws;
    int owned;
    st = get_workspace(fn, &c, MOBA_OP_BACKWARD, workspace, workspace_bytes, &ws, &owned);
    if (st != MOBA_OK) return st;
#ifdef MOBA_WITH_CUDA
    if (p->backend == MOBA_BACKEND_CUDA) st = moba_cuda_backward(&c, dout, q, k, v, o, lse, dq, dk, dv, ws);
    else
#endif
        st = moba_cpu_backward(&c, dout, q, k, v, o, lse, dq, dk, dv, ws);
    put_workspace(&c, ws, owned);
    return st;
}

moba_status moba_route(const moba_params *p, const void *q, const void *k, int32_t *block_idx, void *workspace,
                       size_t workspace_bytes) {
    const char *fn = "moba_route";
    moba_clear_error();
    moba_call c;
    moba_status st = check_params(fn, p, &c);
    if (st != MOBA_OK) return st;
    REQUIRE(q);
    REQUIRE(k);
    REQUIRE(block_idx);
    void *ws;
    int owned;
    st = get_workspace(fn, &c, MOBA_OP_ROUTE, workspace, workspace_bytes, &ws, &owned);
    if (st != MOBA_OK) return st;
#ifdef MOBA_WITH_CUDA
    if (p->backend == MOBA_BACKEND_CUDA) st = moba_cuda_route(&c, q, k, block_idx, ws);
    else
#endif
        st = moba_cpu_route(&c, q, k, block_idx, ws);
    put_workspace(&c, ws, owned);
    return st;
}
