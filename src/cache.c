/*
 * The decode core: checks every argument of moba_cache_append / moba_cache_attend /
 * moba_cache_workspace_size and hands the call to a backend (cache_backend.h). Backends can trust
 * what arrives here; on any failure nothing the caller owns has been written.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cache_backend.h"
#include "error.h"
#include "overflow.h"

void moba_cache_params_init(moba_cache_params *p) {
    if (!p) return;
    *p = (moba_cache_params){0};
    p->backend = MOBA_BACKEND_CPU;
    p->dtype = MOBA_DTYPE_F32;
}

#define FAIL(...) return moba_fail(MOBA_ERR_INVALID_ARGUMENT, __VA_ARGS__)

/* The fields append and attend share: shapes and the cache layout. */
static moba_status check_layout(const char *fn, const moba_cache_params *p) {
    if (!p) FAIL("%s: params is NULL", fn);
    if (p->backend != MOBA_BACKEND_CPU && p->backend != MOBA_BACKEND_CUDA)
        FAIL("%s: backend (%d) is not a known moba_backend", fn, (int)p->backend);
    size_t elem = moba_dtype_size(p->dtype);
    if (elem == 0) FAIL("%s: dtype (%d) is not a known moba_dtype", fn, (int)p->dtype);
    if (p->num_threads < 0) FAIL("%s: num_threads (%d) must be >= 0 (0 = OpenMP default)", fn, p->num_threads);
    if (p->num_seqs < 1) FAIL("%s: num_seqs (%d) must be >= 1", fn, p->num_seqs);
    if (p->num_q_heads < 1) FAIL("%s: num_q_heads (%d) must be >= 1", fn, p->num_q_heads);
    if (p->num_kv_heads < 1) FAIL("%s: num_kv_heads (%d) must be >= 1", fn, p->num_kv_heads);
    if (p->num_q_heads % p->num_kv_heads != 0)
        FAIL("%s: num_q_heads (%d) is not a multiple of num_kv_heads (%d)", fn, p->num_q_heads, p->num_kv_heads);
    if (p->head_dim < 1) FAIL("%s: head_dim (%d) must be >= 1", fn, p->head_dim);
    if (p->block_size < 1) FAIL("%s: block_size (%d) must be >= 1", fn, p->block_size);
    if (p->capacity < 1) FAIL("%s: capacity (%d) must be >= 1", fn, p->capacity);
    if (p->page_size < 0) FAIL("%s: page_size (%d) must be >= 0 (0 = contiguous caches)", fn, p->page_size);
    size_t kv_elems; /* elements of k_cache (and of v_cache) */
    if (p->page_size > 0) {
        if (p->block_size % p->page_size != 0)
            FAIL("%s: page_size (%d) must divide block_size (%d)", fn, p->page_size, p->block_size);
        if (p->max_pages_per_seq < 1)
            FAIL("%s: max_pages_per_seq (%d) must be >= 1 for a paged cache", fn, p->max_pages_per_seq);
        if (p->num_pages < 1) FAIL("%s: num_pages (%lld) must be >= 1 for a paged cache", fn, (long long)p->num_pages);
        if ((int64_t)p->max_pages_per_seq * p->page_size != p->capacity)
            FAIL("%s: capacity (%d) must equal max_pages_per_seq (%d) x page_size (%d) for a paged cache", fn,
                 p->capacity, p->max_pages_per_seq, p->page_size);
        kv_elems = moba_mul4((size_t)p->num_pages, (size_t)p->page_size, (size_t)p->num_kv_heads, (size_t)p->head_dim);
        if (!moba_mul4((size_t)p->num_seqs, (size_t)p->max_pages_per_seq, sizeof(int32_t), 1))
            FAIL("%s: sizes overflow: num_seqs (%d) x max_pages_per_seq (%d) is too large to address", fn, p->num_seqs,
                 p->max_pages_per_seq);
    } else {
        kv_elems = moba_mul4((size_t)p->num_seqs, (size_t)p->capacity, (size_t)p->num_kv_heads, (size_t)p->head_dim);
    }
    if (!kv_elems || !moba_mul4(kv_elems, elem, 1, 1))
        FAIL("%s: sizes overflow: the k/v caches (%s x %d kv heads x head_dim %d) are too large to address", fn,
             p->page_size > 0 ? "num_pages x page_size" : "num_seqs x capacity", p->num_kv_heads, p->head_dim);
    /* centroid slots: capacity / block_size per sequence (<= capacity, so no new overflow) */

    if (p->backend == MOBA_BACKEND_CPU) {
        if (p->head_dim > 256)
            FAIL("%s: head_dim (%d) must be in 1..256 on the CPU backend", fn, p->head_dim); /* as moba_forward */
        return MOBA_OK;
    }
#ifdef MOBA_WITH_CUDA
    if (!moba_backend_available(p->backend))
        return moba_fail(MOBA_ERR_UNSUPPORTED, "%s: backend MOBA_BACKEND_CUDA is not available: no usable CUDA device", fn);
    moba_status st = moba_backend_supports(p->backend, p->dtype, p->head_dim, p->block_size);
    if (st != MOBA_OK) {
        char msg[400]; /* the message lives in the buffer moba_fail writes: copy it first */
        snprintf(msg, sizeof msg, "%s", moba_last_error());
        return moba_fail(st, "%s: %s", fn, msg);
    }
    return MOBA_OK;
#else
    return moba_fail(MOBA_ERR_UNSUPPORTED, "%s: backend MOBA_BACKEND_CUDA: libmoba was built without CUDA", fn);
#endif
}

/* What attend reads beyond the layout: the routing and softmax settings. */
static moba_status check_attend_params(const char *fn, const moba_cache_params *p) {
    if (p->full_attention != 0 && p->full_attention != 1)
        FAIL("%s: full_attention (%d) must be 0 or 1", fn, p->full_attention);
    if (!p->full_attention && p->top_k < 1)
        FAIL("%s: top_k (%d) must be >= 1 (it counts the query's own block)", fn, p->top_k);
    if (!(p->softmax_scale >= 0.0f) || isinf(p->softmax_scale))
        FAIL("%s: softmax_scale (%g) must be a finite number > 0, or 0 for 1/sqrt(head_dim)", fn,
             (double)p->softmax_scale);
    return MOBA_OK;
}

/* Page ids of the pages holding positions [t0, t1) of sequence s must be in [0, num_pages). */
static moba_status check_pages(const char *fn, const moba_cache_params *p, const int32_t *block_table, int s,
                               int64_t t0, int64_t t1) {
    if (p->page_size == 0 || t1 <= t0 || p->backend != MOBA_BACKEND_CPU) return MOBA_OK; /* CUDA: device memory */
    for (int64_t g = t0 / p->page_size; g <= (t1 - 1) / p->page_size; g++) {
        int32_t page = block_table[(int64_t)s * p->max_pages_per_seq + g];
        if (page < 0 || page >= p->num_pages)
            FAIL("%s: block_table[%d][%lld] (%d) is not a page id in 0..num_pages-1 (0..%lld)", fn, s, (long long)g,
                 page, (long long)(p->num_pages - 1));
    }
    return MOBA_OK;
}

/* seq_lens and cu (named cu_name: "cu_new" or "cu_q") for append (appending = 1) or attend, then the
 * pages the call touches. Fills the call. */
static moba_status check_lengths(const char *fn, const moba_cache_params *p, const int32_t *seq_lens,
                                 const int32_t *cu, const char *cu_name, const int32_t *block_table, int appending,
                                 moba_cache_call *c) {
    if (!seq_lens) FAIL("%s: seq_lens is NULL", fn);
    if (!cu) FAIL("%s: %s is NULL", fn, cu_name);
    if (p->page_size > 0 && !block_table) FAIL("%s: block_table is NULL (page_size is %d)", fn, p->page_size);
    if (cu[0] != 0) FAIL("%s: %s[0] (%d) must be 0", fn, cu_name, cu[0]);
    int max_blocks = 0;
    for (int s = 0; s < p->num_seqs; s++) {
        int64_t len = seq_lens[s], n = (int64_t)cu[s + 1] - cu[s];
        if (len < 0 || len > p->capacity)
            FAIL("%s: seq_lens[%d] (%lld) must be in 0..capacity (%d)", fn, s, (long long)len, p->capacity);
        if (n < 0)
            FAIL("%s: %s is decreasing: %s[%d] (%d) < %s[%d] (%d)", fn, cu_name, cu_name, s + 1, cu[s + 1], cu_name, s,
                 cu[s]);
        if (appending && len + n > p->capacity)
            FAIL("%s: seq_lens[%d] (%lld) + new tokens %s[%d] - %s[%d] (%lld) exceeds capacity (%d)", fn, s,
                 (long long)len, cu_name, s + 1, cu_name, s, (long long)n, p->capacity);
        if (!appending && n > len)
            FAIL("%s: %s[%d] - %s[%d] (%lld queries) exceeds seq_lens[%d] (%lld): a query's key must be in the cache",
                 fn, cu_name, s + 1, cu_name, s, (long long)n, s, (long long)len);
        int blocks = (int)((len + p->block_size - 1) / p->block_size);
        if (blocks > max_blocks) max_blocks = blocks;
    }
    for (int s = 0; s < p->num_seqs; s++) {
        int64_t len = seq_lens[s], n = (int64_t)cu[s + 1] - cu[s];
        /* append reads the start of the block it completes and writes the new rows; attend reads all */
        int64_t t0 = appending ? len / p->block_size * p->block_size : 0, t1 = appending ? len + n : len;
        if (appending && n == 0) continue;
        moba_status st = check_pages(fn, p, block_table, s, t0, t1);
        if (st != MOBA_OK) return st;
    }
    *c = (moba_cache_call){0};
    c->p = p;
    c->seq_lens = seq_lens;
    c->cu = cu;
    c->block_table = p->page_size > 0 ? block_table : NULL;
    c->total = cu[p->num_seqs];
    c->slots_per_seq = p->capacity / p->block_size;
    c->max_blocks = max_blocks;
    c->group = p->num_q_heads / p->num_kv_heads;
    c->scale = p->softmax_scale > 0.0f ? p->softmax_scale : 1.0f / sqrtf((float)p->head_dim);
    /* q, o [total, Hq, d] and lse [Hq, total] must be addressable (k_new/v_new are smaller) */
    if (c->total > 0 && !moba_mul4((size_t)c->total, (size_t)p->num_q_heads, (size_t)p->head_dim, sizeof(float)))
        FAIL("%s: sizes overflow: %s[num_seqs] (%lld) x num_q_heads (%d) x head_dim (%d) is too large to address", fn,
             cu_name, (long long)c->total, p->num_q_heads, p->head_dim);
    return MOBA_OK;
}

#define REQUIRE(ptr)                                                                               \
    do {                                                                                           \
        if (!(ptr)) FAIL("%s: " #ptr " is NULL", fn);                                             \
    } while (0)

moba_status moba_cache_append(const moba_cache_params *p, const int32_t *seq_lens, const int32_t *cu_new,
                              const void *k_new, const void *v_new, void *k_cache, void *v_cache,
                              const int32_t *block_table, void *centroids) {
    const char *fn = "moba_cache_append";
    moba_clear_error();
    moba_status st = check_layout(fn, p);
    if (st != MOBA_OK) return st;
    moba_cache_call c;
    st = check_lengths(fn, p, seq_lens, cu_new, "cu_new", block_table, 1, &c);
    if (st != MOBA_OK) return st;
    REQUIRE(k_new);
    REQUIRE(v_new);
    REQUIRE(k_cache);
    REQUIRE(v_cache);
    REQUIRE(centroids);
    if (c.total == 0) return MOBA_OK;
#ifdef MOBA_WITH_CUDA
    if (p->backend == MOBA_BACKEND_CUDA) return moba_cuda_cache_append(&c, k_new, v_new, k_cache, v_cache, centroids);
#endif
    return moba_cpu_cache_append(&c, k_new, v_new, k_cache, v_cache, centroids);
}

static size_t workspace_size(const moba_cache_call *c) {
#ifdef MOBA_WITH_CUDA
    if (c->p->backend == MOBA_BACKEND_CUDA) return moba_cuda_cache_workspace_size(c);
#endif
    return moba_cpu_cache_workspace_size(c);
}

moba_status moba_cache_workspace_size(const moba_cache_params *p, const int32_t *seq_lens, const int32_t *cu_q,
                                      size_t *bytes) {
    const char *fn = "moba_cache_workspace_size";
    moba_clear_error();
    moba_status st = check_layout(fn, p);
    if (st == MOBA_OK) st = check_attend_params(fn, p);
    if (st != MOBA_OK) return st;
    moba_cache_call c;
    /* the block table is not an argument here: its page ids are checked by moba_cache_attend */
    moba_cache_params no_pages = *p;
    no_pages.page_size = 0;
    st = check_lengths(fn, &no_pages, seq_lens, cu_q, "cu_q", NULL, 0, &c);
    if (st != MOBA_OK) return st;
    c.p = p;
    REQUIRE(bytes);
    *bytes = workspace_size(&c);
    return MOBA_OK;
}

moba_status moba_cache_attend(const moba_cache_params *p, const int32_t *seq_lens, const int32_t *cu_q,
                              const void *q, const void *k_cache, const void *v_cache, const int32_t *block_table,
                              const void *centroids, void *o, float *lse, void *workspace, size_t workspace_bytes) {
    const char *fn = "moba_cache_attend";
    moba_clear_error();
    moba_status st = check_layout(fn, p);
    if (st == MOBA_OK) st = check_attend_params(fn, p);
    if (st != MOBA_OK) return st;
    moba_cache_call c;
    st = check_lengths(fn, p, seq_lens, cu_q, "cu_q", block_table, 0, &c);
    if (st != MOBA_OK) return st;
    REQUIRE(q);
    REQUIRE(k_cache);
    REQUIRE(v_cache);
    REQUIRE(centroids);
    REQUIRE(o);
    if (c.total == 0) return MOBA_OK;

    size_t need = workspace_size(&c);
    void *ws = workspace;
    if (workspace && workspace_bytes < need)
        return moba_fail(MOBA_ERR_WORKSPACE_TOO_SMALL,
                         "%s: workspace_bytes (%zu) is smaller than moba_cache_workspace_size (%zu)", fn,
                         workspace_bytes, need);
#ifdef MOBA_WITH_CUDA
    if (p->backend == MOBA_BACKEND_CUDA) return moba_cuda_cache_attend(&c, q, k_cache, v_cache, centroids, o, lse, ws);
#endif
    if (!workspace && need > 0) {
        ws = malloc(need);
        if (!ws) return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "%s: could not allocate a workspace of %zu bytes", fn, need);
    }
    st = moba_cpu_cache_attend(&c, q, k_cache, v_cache, centroids, o, lse, ws);
    if (ws != workspace) free(ws);
    return st;
}
