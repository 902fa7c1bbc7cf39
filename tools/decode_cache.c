/* A KV cache of random tokens and timed decode steps over it (see decode_cache.h). */
#include "decode_cache.h"

#include "timer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t decode_attended_keys(int64_t t, int block_size, int top_k) {
    int64_t j = t / block_size, history = top_k - 1 < j ? top_k - 1 : j;
    return history * block_size + t % block_size + 1;
}

void decode_random_fill(void *x, size_t n, moba_dtype dt, uint64_t *st) {
    for (size_t i = 0; i < n; i++) {
        *st ^= *st << 13, *st ^= *st >> 7, *st ^= *st << 17;
        float f = (float)((*st >> 40) * (1.0 / 16777216.0) * 2.0 - 1.0) * 1.7f;
        uint32_t u;
        memcpy(&u, &f, 4);
        if (dt == MOBA_DTYPE_F32) ((float *)x)[i] = f;
        else if (dt == MOBA_DTYPE_BF16) ((uint16_t *)x)[i] = (uint16_t)(u >> 16);
        else ((uint16_t *)x)[i] = (uint16_t)(((u >> 16) & 0x8000u) | (0x3800u + ((u >> 13) & 0x3ffu))); /* |x| in [0.5, 1) */
    }
}

void decode_scatter_pages(int32_t *table, int64_t num_pages) {
    /* i -> i * 7919 mod n is a permutation when the prime 7919 does not divide n */
    int64_t stride = num_pages % 7919 ? 7919 : 1;
    for (int64_t i = 0; i < num_pages; i++) table[i] = (int32_t)((i * stride) % num_pages);
}

size_t decode_cache_elems(const moba_cache_params *p) {
    size_t rows = p->page_size > 0 ? (size_t)p->num_pages * (size_t)p->page_size : (size_t)p->num_seqs * (size_t)p->capacity;
    return rows * (size_t)p->num_kv_heads * (size_t)p->head_dim;
}

size_t decode_centroid_elems(const moba_cache_params *p, int block_size) {
    return (size_t)p->num_seqs * (size_t)(p->capacity / block_size) * (size_t)p->num_kv_heads * (size_t)p->head_dim;
}

int decode_fill(decode_cache *c, int ctx, int nsets, const int *block_sizes, void *const *centroids, uint64_t *st,
                decode_upload_fn upload, void *k_stage, void *v_stage, char *err, size_t errlen) {
    moba_cache_params p = c->p;
    const int n = p.num_seqs, piece = ctx < DECODE_PIECE ? ctx : DECODE_PIECE;
    const size_t es = moba_dtype_size(p.dtype), elems = (size_t)n * piece * p.num_kv_heads * p.head_dim;
    void *kn = malloc(elems * es), *vn = malloc(elems * es);
    int32_t *cu = malloc(sizeof(int32_t) * (n + 1));
    int rc = 0;
    if (!kn || !vn || !cu) {
        snprintf(err, errlen, "out of memory (%zu bytes for the appended keys)", 2 * elems * es);
        rc = -1;
        goto done;
    }
    memset(c->seq_lens, 0, sizeof(int32_t) * n);
    for (int at = 0; at < ctx; at += piece) {
        const int len = ctx - at < piece ? ctx - at : piece; /* the last piece may be shorter */
        const size_t bytes = (size_t)n * len * p.num_kv_heads * p.head_dim * es;
        for (int s = 0; s <= n; s++) cu[s] = s * len;
        decode_random_fill(kn, bytes / es, p.dtype, st);
        decode_random_fill(vn, bytes / es, p.dtype, st);
        const void *k_new = kn, *v_new = vn;
        if (upload) {
            if (upload(k_stage, kn, bytes, err, errlen) || upload(v_stage, vn, bytes, err, errlen)) { rc = -1; goto done; }
            k_new = k_stage, v_new = v_stage;
        }
        for (int i = 0; i < nsets; i++) {
            p.block_size = block_sizes[i];
            moba_status s = moba_cache_append(&p, c->seq_lens, cu, k_new, v_new, c->k, c->v, c->block_table, centroids[i]);
            if (s) { rc = (int)s; goto done; }
        }
        for (int s = 0; s < n; s++) c->seq_lens[s] += len;
    }
done:
    free(kn), free(vn), free(cu);
    return rc;
}

/* Reads a buffer larger than the last-level cache, so that the next step starts with cold caches. */
static volatile float evict_sink;
static int evict_caches(void) {
    enum { EVICT_FLOATS = 32 << 20 }; /* 128 MiB, 4x the L3 of the measured machine */
    static float *junk;
    if (!junk) {
        if (!(junk = malloc(sizeof(float) * EVICT_FLOATS))) return -1;
        for (size_t i = 0; i < EVICT_FLOATS; i++) junk[i] = (float)i;
    }
    float s = 0.0f;
    for (size_t i = 0; i < EVICT_FLOATS; i += 16) s += junk[i] += 1.0f;
    evict_sink = s;
    return 0;
}

int decode_time_attend(const decode_cache *c, const char *q, size_t q_set_bytes, void *o, int reps, int evict,
                       decode_sync_fn sync, double *best, char *err, size_t errlen) {
    const int n = c->p.num_seqs;
    int32_t *cu = malloc(sizeof(int32_t) * (n + 1));
    if (!cu) return snprintf(err, errlen, "out of memory"), -1;
    for (int s = 0; s <= n; s++) cu[s] = s;
    int rc = 0;
    /* The best, not the median: on a shared machine the other tenants only ever add time. */
    *best = INFINITY;
    for (int r = -1; r < reps && !rc; r++) { /* r = -1: the warm-up */
        if (evict && evict_caches()) { rc = -1; snprintf(err, errlen, "out of memory (evicting caches)"); break; }
        double t0 = timer_now();
        moba_status s = moba_cache_attend(&c->p, c->seq_lens, cu, q + (size_t)(r + 1) * q_set_bytes, c->k, c->v,
                                          c->block_table, c->centroids, o, NULL, NULL, 0);
        if (s) rc = (int)s;
        else if (sync && sync(err, errlen)) rc = -1;
        double t = timer_now() - t0;
        if (!rc && r >= 0 && t < *best) *best = t;
    }
    free(cu);
    return rc;
}
