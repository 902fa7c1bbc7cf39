/*
 * Decode benchmark (CPU): tokens per second of MoBA decode vs full-attention decode over the same
 * KV cache. Each step decodes one new token per sequence at the end of a cache of `ctx` tokens
 * (moba_cache_attend with one query per sequence); tokens/s = batch / seconds per step (best of --reps).
 *
 * The bound a memory- or compute-bound decode can reach is context / attended keys, where a token at
 * position t attends min(top_k - 1, t / B) history blocks of B keys plus the t % B + 1 keys of its own
 * block (routing adds t / B centroid dot products, counted apart).
 *
 * usage: moba_bench_decode [--ctx 131072] [--batch 1] [--block 4096] [--topk 12] [--hq 8] [--hkv 1]
 *                          [--d 128] [--dtype bf16|f16|f32] [--page 0] [--reps 5] [--threads 0]
 * Every step has new queries and starts with cold caches (a 128 MiB buffer is read in between), as in
 * serving, where the other layers run between two steps of one layer.
 * --ctx without --block/--topk runs both routings of the matrix at that (ctx, batch).
 * With no --ctx it runs the matrix of docs/decode.md: ctx 128K and 1M, batch 1 and 16, (B 4096, top_k 12)
 * and (B 512, top_k 3). The cache is filled once per (ctx, batch) through moba_cache_append for both
 * block sizes; full decode does not depend on B (blocks are multiples of the 64-key chunk), so it is
 * timed once per cache.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moba.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "moba_bench_decode: %s: %s\n", what, moba_last_error());
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "moba_bench_decode: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* Uniform values of variance ~1 in the storage dtype (rounded by truncation: fine for timing). */
static void fill(void *x, size_t n, moba_dtype dt, uint64_t *st) {
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

typedef struct {
    int ctx, batch, hq, hkv, d, page, reps, threads;
    moba_dtype dt;
} setup;

typedef struct {
    int block, top_k;
} routing;

/* A cache of `batch` sequences of ctx tokens, with centroids for each routing's block size. */
typedef struct {
    moba_cache_params p;
    void *k, *v, *cen[2];
    int32_t *table, *seq_lens;
} cache;

static size_t mul(size_t a, size_t b) { return a * b; }

static void cache_fill(const setup *S, const routing *R, int nr, cache *c) {
    const size_t es = moba_dtype_size(S->dt), row = (size_t)S->hkv * S->d;
    moba_cache_params_init(&c->p);
    c->p.dtype = S->dt;
    c->p.num_threads = S->threads;
    c->p.num_seqs = S->batch;
    c->p.num_q_heads = S->hq;
    c->p.num_kv_heads = S->hkv;
    c->p.head_dim = S->d;
    c->p.capacity = S->ctx;
    c->p.page_size = S->page;
    size_t rows = mul(S->batch, S->ctx);
    c->table = NULL;
    if (S->page > 0) { /* pages in a scattered order, as a pool would hand them out */
        c->p.max_pages_per_seq = S->ctx / S->page;
        c->p.num_pages = (int64_t)S->batch * c->p.max_pages_per_seq;
        c->table = xmalloc(sizeof(int32_t) * (size_t)c->p.num_pages);
        for (int64_t i = 0; i < c->p.num_pages; i++) c->table[i] = (int32_t)((i * 7919) % c->p.num_pages);
    }
    c->k = xmalloc(rows * row * es);
    c->v = xmalloc(rows * row * es);
    for (int r = 0; r < nr; r++) c->cen[r] = xmalloc(mul(rows / R[r].block, row) * es);
    c->seq_lens = calloc((size_t)S->batch, sizeof(int32_t));

    /* append in pieces of 64K tokens per sequence, once per block size (the second call writes the
     * same rows again and its own centroids) */
    const int piece = S->ctx < 65536 ? S->ctx : 65536;
    void *kn = xmalloc(mul((size_t)S->batch * piece, row) * es), *vn = xmalloc(mul((size_t)S->batch * piece, row) * es);
    int32_t *cu = xmalloc(sizeof(int32_t) * (S->batch + 1));
    uint64_t st = 0x9e3779b97f4a7c15ull;
    for (int at = 0; at < S->ctx; at += piece) {
        for (int s = 0; s <= S->batch; s++) cu[s] = s * piece;
        fill(kn, mul((size_t)S->batch * piece, row), S->dt, &st);
        fill(vn, mul((size_t)S->batch * piece, row), S->dt, &st);
        for (int r = 0; r < nr; r++) {
            c->p.block_size = R[r].block;
            if (moba_cache_append(&c->p, c->seq_lens, cu, kn, vn, c->k, c->v, c->table, c->cen[r]) != MOBA_OK)
                die("append");
        }
        for (int s = 0; s < S->batch; s++) c->seq_lens[s] += piece;
    }
    free(kn), free(vn), free(cu);
}

static void cache_free(cache *c, int nr) {
    free(c->k), free(c->v), free(c->table), free(c->seq_lens);
    for (int r = 0; r < nr; r++) free(c->cen[r]);
}

/* Evicts the caches: in serving, the other layers run between two steps of this one. */
static volatile float evict_sink;
static void evict_caches(void) {
    enum { EVICT_FLOATS = 32 << 20 }; /* 128 MiB, 4x the L3 of the measured machine */
    static float *junk;
    if (!junk) {
        junk = xmalloc(sizeof(float) * EVICT_FLOATS);
        for (size_t i = 0; i < EVICT_FLOATS; i++) junk[i] = (float)i;
    }
    float s = 0.0f;
    for (size_t i = 0; i < EVICT_FLOATS; i += 16) s += junk[i] += 1.0f;
    evict_sink = s;
}

/* Seconds of one decode step (one query per sequence): the best of reps, after one warm-up, each step
 * with new queries (q holds reps + 1 sets) and cold caches. The best, not the median: on a shared
 * machine the other tenants only ever add time. */
static double time_step(const setup *S, cache *c, int centroid_set, const char *q, size_t q_set_bytes, void *o) {
    int32_t *cu = xmalloc(sizeof(int32_t) * (S->batch + 1));
    for (int s = 0; s <= S->batch; s++) cu[s] = s;
    double best = INFINITY;
    for (int r = -1; r < S->reps; r++) { /* one warm-up */
        evict_caches();
        double t0 = now();
        if (moba_cache_attend(&c->p, c->seq_lens, cu, q + (size_t)(r + 1) * q_set_bytes, c->k, c->v, c->table,
                              c->cen[centroid_set], o, NULL, NULL, 0) != MOBA_OK)
            die("attend");
        double t = now() - t0;
        if (r >= 0 && t < best) best = t;
    }
    free(cu);
    return best;
}

/* Keys a token at position ctx - 1 attends under this routing. */
static int64_t attended(int ctx, routing R) {
    int64_t t = ctx - 1, j = t / R.block, hist = R.top_k - 1 < j ? R.top_k - 1 : j;
    return hist * R.block + t % R.block + 1;
}

static void run(const setup *S, const routing *R, int nr) {
    const size_t es = moba_dtype_size(S->dt), qrow = (size_t)S->hq * S->d;
    cache c;
    double t0 = now();
    cache_fill(S, R, nr, &c);
    double fill_s = now() - t0;
    const size_t q_set = S->batch * qrow; /* elements of one step's queries */
    char *q = xmalloc((S->reps + 1) * q_set * es);
    void *o = xmalloc(q_set * es);
    uint64_t st = 12345;
    fill(q, (S->reps + 1) * q_set, S->dt, &st);
    c.p.full_attention = 1;
    c.p.block_size = R[0].block;
    c.p.top_k = R[0].top_k;
    double full = time_step(S, &c, 0, q, q_set * es, o);
    c.p.full_attention = 0;
    for (int r = 0; r < nr; r++) {
        c.p.block_size = R[r].block;
        c.p.top_k = R[r].top_k;
        double moba = time_step(S, &c, r, q, q_set * es, o);
        int64_t keys = attended(S->ctx, R[r]);
        printf("| %5dK | %5d | %4d | %3d | %8.2f | %9.1f | %8.2f | %10.1f | %7.1fx | %7.1fx | %5.1fs |\n", S->ctx / 1024,
               S->batch, R[r].block, R[r].top_k, full * 1e3, S->batch / full, moba * 1e3, S->batch / moba,
               full / moba, (double)S->ctx / keys, fill_s);
        fflush(stdout);
    }
    free(q), free(o);
    cache_free(&c, nr);
}

int main(int argc, char **argv) {
    setup S = {0, 1, 8, 1, 128, 0, 5, 0, MOBA_DTYPE_BF16};
    routing one = {4096, 12};
    int single = 0, one_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) {
            fprintf(stderr, "usage: see the comment at the top of bench/decode_bench.c\n");
            return 2;
        }
        i++;
        if (!strcmp(a, "--ctx")) S.ctx = atoi(val), single = 1;
        else if (!strcmp(a, "--batch")) S.batch = atoi(val);
        else if (!strcmp(a, "--block")) one.block = atoi(val), one_given = 1;
        else if (!strcmp(a, "--topk")) one.top_k = atoi(val), one_given = 1;
        else if (!strcmp(a, "--hq")) S.hq = atoi(val);
        else if (!strcmp(a, "--hkv")) S.hkv = atoi(val);
        else if (!strcmp(a, "--d")) S.d = atoi(val);
        else if (!strcmp(a, "--page")) S.page = atoi(val);
        else if (!strcmp(a, "--reps")) S.reps = atoi(val);
        else if (!strcmp(a, "--threads")) S.threads = atoi(val);
        else if (!strcmp(a, "--dtype"))
            S.dt = !strcmp(val, "f32") ? MOBA_DTYPE_F32 : !strcmp(val, "f16") ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16;
        else {
            fprintf(stderr, "moba_bench_decode: unknown option %s\n", a);
            return 2;
        }
    }
    if (S.reps < 1) S.reps = 1;
    printf("decode, %s, Hq %d, Hkv %d, d %d, %s cache, one new token per sequence, best of %d steps\n\n",
           S.dt == MOBA_DTYPE_F32 ? "f32" : S.dt == MOBA_DTYPE_F16 ? "f16" : "bf16", S.hq, S.hkv, S.d,
           S.page ? "paged" : "contiguous", S.reps);
    printf("| ctx | batch | B | top_k | full ms/step | full tok/s | MoBA ms/step | MoBA tok/s | speedup | "
           "ctx/attended | fill |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    if (single) { /* one (ctx, batch): the given routing, or both of the matrix */
        if (one_given) run(&S, &one, 1);
        else run(&S, (const routing[2]){{4096, 12}, {512, 3}}, 2);
        return 0;
    }
    const routing both[2] = {{4096, 12}, {512, 3}};
    const int ctxs[2] = {131072, 1048576}, batches[2] = {1, 16};
    for (int i = 0; i < 2; i++)
        for (int b = 0; b < 2; b++) {
            S.ctx = ctxs[i];
            S.batch = batches[b];
            run(&S, both, 2);
        }
    return 0;
}
