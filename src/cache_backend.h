/*
 * What the decode core (cache.c) hands a backend once every argument of moba_cache_append /
 * moba_cache_attend has been checked: the params, the host arrays, and where rows live.
 *
 *   contiguous: token t of sequence s, kv head hk  ->  element ((s * capacity + t) * Hkv + hk) * d
 *   paged:      page = block_table[s * max_pages_per_seq + t / page_size]
 *                                                  ->  element ((page * page_size + t % page_size) * Hkv + hk) * d
 *   centroid of block i of sequence s, kv head hk  ->  element ((s * slots_per_seq + i) * Hkv + hk) * d
 * Either way the Hkv * d elements of one token are contiguous.
 */
#ifndef MOBA_CACHE_BACKEND_H
#define MOBA_CACHE_BACKEND_H

#include "moba.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const moba_cache_params *p;
    const int32_t *seq_lens;     /* host [num_seqs]: tokens in each cache (before the append)     */
    const int32_t *cu;           /* host [num_seqs + 1]: cu_new (append) or cu_q (attend)        */
    const int32_t *block_table;  /* [num_seqs, max_pages_per_seq] when paged, else NULL          */
    int64_t total;               /* cu[num_seqs]: new tokens (append) or queries (attend)        */
    int slots_per_seq;           /* capacity / block_size: centroid slots per sequence            */
    int max_blocks;              /* attend: max over s of ceil(seq_lens[s] / block_size)          */
    int group;                   /* num_q_heads / num_kv_heads                                    */
    float scale;                 /* resolved softmax scale                                        */
} moba_cache_call;

/* Row of the cache (counted in tokens: its kv head hk starts at element (row * Hkv + hk) * d) that
 * holds token t of sequence s. */
static inline int64_t moba_cache_row(const moba_cache_call *c, int s, int64_t t) {
    const moba_cache_params *p = c->p;
    if (p->page_size == 0) return (int64_t)s * p->capacity + t;
    int64_t page = c->block_table[(int64_t)s * p->max_pages_per_seq + t / p->page_size];
    return page * p->page_size + t % p->page_size;
}

/* Element index of kv head hk of token t of sequence s. */
static inline int64_t moba_cache_at(const moba_cache_call *c, int s, int64_t t, int hk) {
    return (moba_cache_row(c, s, t) * c->p->num_kv_heads + hk) * c->p->head_dim;
}

/* Element index of the centroid of block i of sequence s, kv head hk. */
static inline int64_t moba_cache_centroid(const moba_cache_call *c, int s, int64_t i, int hk) {
    return (((int64_t)s * c->slots_per_seq + i) * c->p->num_kv_heads + hk) * c->p->head_dim;
}

/* Index of the segment holding item: the s with base[s] <= item < base[s + 1] (base non-decreasing,
 * base[0] <= item < base[n]); empty segments are skipped. */
static inline int moba_segment_of(const int64_t *base, int n, int64_t item) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (base[mid] <= item) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* CPU backend (src/cpu/cache.c, src/cpu/decode.c): host pointers. The CPU needs no workspace (size 0):
 * its per-thread scratch is allocated inside the call. */
moba_status moba_cpu_cache_append(const moba_cache_call *c, const void *k_new, const void *v_new, void *k_cache,
                                  void *v_cache, void *centroids);
size_t moba_cpu_cache_workspace_size(const moba_cache_call *c);
moba_status moba_cpu_cache_attend(const moba_cache_call *c, const void *q, const void *k_cache, const void *v_cache,
                                  const void *centroids, void *o, float *lse, void *ws);

/* CUDA backend (src/cuda/cache.cu), compiled when MOBA_WITH_CUDA is defined.
 * Device pointers; seq_lens and cu stay on the host, block_table is device memory (its page ids are not
 * checked by the core). ws may be NULL (the caller passed none): the backend allocates what it needs. */
moba_status moba_cuda_cache_append(const moba_cache_call *c, const void *k_new, const void *v_new, void *k_cache,
                                   void *v_cache, void *centroids);
size_t moba_cuda_cache_workspace_size(const moba_cache_call *c);
moba_status moba_cuda_cache_attend(const moba_cache_call *c, const void *q, const void *k_cache, const void *v_cache,
                                   const void *centroids, void *o, float *lse, void *ws);

#ifdef __cplusplus
}
#endif

#endif
