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

#include "decode_cache.h" /* tools/: filling a cache through appends, timing attend steps (shared with moba decode-bench) */
#include "moba.h"
#include "timer.h"

static void die(const char *what, int rc, const char *err) {
    fprintf(stderr, "moba_bench_decode: %s: %s\n", what, rc > 0 ? moba_last_error() : err);
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

typedef struct {
    int ctx, batch, hq, hkv, d, page, reps, threads;
    moba_dtype dt;
} setup;

typedef struct {
    int block, top_k;
} routing;

/* A cache of `batch` sequences of ctx tokens, with centroids for each routing's block size (cen[r]). */
typedef struct {
    decode_cache c;
    void *cen[2];
} cache;

static void cache_fill(const setup *S, const routing *R, int nr, cache *b) {
    const size_t es = moba_dtype_size(S->dt);
    decode_cache *c = &b->c;
    memset(c, 0, sizeof *c);
    moba_cache_params_init(&c->p);
    c->p.dtype = S->dt;
    c->p.num_threads = S->threads;
    c->p.num_seqs = S->batch;
    c->p.num_q_heads = S->hq;
    c->p.num_kv_heads = S->hkv;
    c->p.head_dim = S->d;
    c->p.capacity = S->ctx;
    c->p.page_size = S->page;
    if (S->page > 0) { /* pages in a scattered order, as a pool would hand them out */
        c->p.max_pages_per_seq = S->ctx / S->page;
        c->p.num_pages = (int64_t)S->batch * c->p.max_pages_per_seq;
        c->block_table = xmalloc(sizeof(int32_t) * (size_t)c->p.num_pages);
        decode_scatter_pages(c->block_table, c->p.num_pages);
    }
    c->k = xmalloc(decode_cache_elems(&c->p) * es);
    c->v = xmalloc(decode_cache_elems(&c->p) * es);
    int blocks[2];
    for (int r = 0; r < nr; r++) b->cen[r] = xmalloc(decode_centroid_elems(&c->p, blocks[r] = R[r].block) * es);
    c->seq_lens = xmalloc(sizeof(int32_t) * S->batch);
    /* appended once per block size: the second append writes the same rows again and its own centroids */
    uint64_t st = 0x9e3779b97f4a7c15ull;
    char err[256];
    int rc = decode_fill(c, S->ctx, nr, blocks, b->cen, &st, NULL, NULL, NULL, err, sizeof err);
    if (rc) die("append", rc, err);
}

static void cache_free(cache *b, int nr) {
    free(b->c.k), free(b->c.v), free(b->c.block_table), free(b->c.seq_lens);
    for (int r = 0; r < nr; r++) free(b->cen[r]);
}

/* Seconds of one decode step with the centroid set of routing r: best of reps, cold caches, new queries. */
static double time_step(const setup *S, cache *b, int r, const char *q, size_t q_set_bytes, void *o) {
    char err[256];
    double best;
    b->c.centroids = b->cen[r];
    int rc = decode_time_attend(&b->c, q, q_set_bytes, o, S->reps, 1, NULL, &best, err, sizeof err);
    if (rc) die("attend", rc, err);
    return best;
}

static void run(const setup *S, const routing *R, int nr) {
    const size_t es = moba_dtype_size(S->dt), qrow = (size_t)S->hq * S->d;
    cache c;
    double t0 = timer_now();
    cache_fill(S, R, nr, &c);
    double fill_s = timer_now() - t0;
    const size_t q_set = S->batch * qrow; /* elements of one step's queries */
    char *q = xmalloc((S->reps + 1) * q_set * es);
    void *o = xmalloc(q_set * es);
    uint64_t st = 12345;
    decode_random_fill(q, (S->reps + 1) * q_set, S->dt, &st);
    c.c.p.full_attention = 1;
    c.c.p.block_size = R[0].block;
    c.c.p.top_k = R[0].top_k;
    double full = time_step(S, &c, 0, q, q_set * es, o);
    c.c.p.full_attention = 0;
    for (int r = 0; r < nr; r++) {
        c.c.p.block_size = R[r].block;
        c.c.p.top_k = R[r].top_k;
        double moba = time_step(S, &c, r, q, q_set * es, o);
        int64_t keys = decode_attended_keys(S->ctx - 1, R[r].block, R[r].top_k);
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
