/*
 * CPU benchmark: MoBA forward vs the library's own full causal attention (top_k >= #blocks) on the
 * same inputs, one sequence. Prints medians, their ratio and effective GFLOP/s.
 *
 * Useful FLOPs of attention: 4 d per (query, attended key) pair (q.k and p.v, a multiply and an add
 * each). MoBA's pairs are counted from its own routing (moba_route); full causal has N(N+1)/2 pairs
 * per head. Routing adds 2 d per (query, history block) for the gate scores, reported apart.
 *
 * usage: moba_bench_cpu [--n 16384] [--heads 8] [--d 128] [--block 512] [--topk 3] [--dtype f32|f16|bf16]
 *                       [--reps 5] [--full-reps 1] [--threads 0] [--backward]
 */
#include <math.h>
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

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void fill(void *x, size_t n, moba_dtype dt, unsigned long long *st) {
    for (size_t i = 0; i < n; i++) {
        *st ^= *st << 13, *st ^= *st >> 7, *st ^= *st << 17;
        float f = (float)((*st >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0) * 1.7f; /* uniform, var ~1 */
        if (dt == MOBA_DTYPE_F32) ((float *)x)[i] = f;
        else { /* bf16/f16 by truncation is fine for timing inputs */
            unsigned u; memcpy(&u, &f, 4);
            ((unsigned short *)x)[i] = dt == MOBA_DTYPE_BF16 ? (unsigned short)(u >> 16) : (unsigned short)0x3c00;
        }
    }
}

/* Median seconds of `reps` forward (and backward) runs. */
static double time_call(moba_params *p, int reps, int backward, void *q, void *k, void *v, void *o, float *lse,
                        void *dq, void *dk, void *dv) {
    double t[64];
    if (reps > 64) reps = 64;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (moba_forward(p, q, k, v, o, lse, NULL, 0) != MOBA_OK ||
            (backward && moba_backward(p, o, q, k, v, o, lse, dq, dk, dv, NULL, 0) != MOBA_OK)) {
            fprintf(stderr, "moba: %s\n", moba_last_error());
            exit(1);
        }
        t[r] = now() - t0;
    }
    return median(t, reps);
}

int main(int argc, char **argv) {
    int n = 16384, heads = 8, d = 128, block = 512, topk = 3, reps = 5, full_reps = 1, threads = 0, backward = 0;
    moba_dtype dt = MOBA_DTYPE_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int *target = !strcmp(a, "--n") ? &n : !strcmp(a, "--heads") ? &heads : !strcmp(a, "--d") ? &d
                    : !strcmp(a, "--block") ? &block : !strcmp(a, "--topk") ? &topk : !strcmp(a, "--reps") ? &reps
                    : !strcmp(a, "--full-reps") ? &full_reps : !strcmp(a, "--threads") ? &threads : NULL;
        if (!strcmp(a, "--backward")) { backward = 1; continue; }
        if (!strcmp(a, "--dtype") && val) {
            dt = !strcmp(val, "bf16") ? MOBA_DTYPE_BF16 : !strcmp(val, "f16") ? MOBA_DTYPE_F16 : MOBA_DTYPE_F32;
            i++;
            continue;
        }
        if (!target || !val) { fprintf(stderr, "usage: see the comment at the top of bench/cpu_bench.c\n"); return 2; }
        *target = atoi(val);
        i++;
    }
    size_t count = (size_t)n * heads * d, es = moba_dtype_size(dt);
    void *q = malloc(count * es), *k = malloc(count * es), *v = malloc(count * es), *o = malloc(count * es);
    void *dq = malloc(count * es), *dk = malloc(count * es), *dv = malloc(count * es);
    float *lse = malloc(sizeof(float) * (size_t)n * heads);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)n * heads * topk);
    if (!q || !k || !v || !o || !dq || !dk || !dv || !lse || !sel) { fprintf(stderr, "out of memory\n"); return 1; }
    unsigned long long st = 0x9e3779b97f4a7c15ull;
    fill(q, count, dt, &st), fill(k, count, dt, &st), fill(v, count, dt, &st);

    int32_t cu[2] = {0, n};
    moba_params p;
    moba_params_init(&p);
    p.dtype = dt, p.num_seqs = 1, p.total_tokens = n, p.cu_seqlens = cu, p.num_q_heads = heads;
    p.num_kv_heads = heads, p.head_dim = d, p.block_size = block, p.top_k = topk, p.num_threads = threads;

    /* useful FLOPs from MoBA's own selection */
    if (moba_route(&p, q, k, sel, NULL, 0) != MOBA_OK) { fprintf(stderr, "moba: %s\n", moba_last_error()); return 1; }
    double pairs = 0, gate = 0;
    for (int h = 0; h < heads; h++)
        for (int t = 0; t < n; t++) {
            int j = t / block;
            gate += j;
            for (int x = 0; x < topk; x++) {
                int b = sel[((size_t)h * n + t) * topk + x];
                if (b < 0) break;
                pairs += b < j ? block : t - (double)j * block + 1;
            }
        }
    double full_pairs = (double)heads * n * (n + 1) / 2.0;
    double mult = backward ? 3.5 : 1.0; /* backward does 2.5x the forward's matrix work */

    time_call(&p, 1, backward, q, k, v, o, lse, dq, dk, dv); /* warm up */
    double t_moba = time_call(&p, reps, backward, q, k, v, o, lse, dq, dk, dv);
    p.top_k = n; /* >= #blocks: full causal attention */
    double t_full = time_call(&p, full_reps, backward, q, k, v, o, lse, dq, dk, dv);

    printf("libmoba %s CPU benchmark: N=%d heads=%d d=%d B=%d top_k=%d dtype=%s threads=%d %s\n", moba_version(), n,
           heads, d, block, topk, dt == MOBA_DTYPE_F32 ? "f32" : dt == MOBA_DTYPE_F16 ? "f16" : "bf16",
           threads, backward ? "forward+backward" : "forward");
    printf("attended keys: MoBA %.3g pairs, full %.3g pairs (FLOP ratio %.2fx); routing %.3g GFLOP\n", pairs,
           full_pairs, full_pairs / pairs, 2.0 * d * gate / 1e9);
    printf("%-22s %12s %14s\n", "", "median s", "GFLOP/s");
    printf("%-22s %12.4f %14.2f   (%d reps)\n", "MoBA", t_moba, mult * 4.0 * d * pairs / t_moba / 1e9, reps);
    printf("%-22s %12.4f %14.2f   (%d reps)\n", "full causal attention", t_full, mult * 4.0 * d * full_pairs / t_full / 1e9,
           full_reps);
    printf("speedup full / MoBA: %.2fx\n", t_full / t_moba);
    free(q), free(k), free(v), free(o), free(dq), free(dk), free(dv), free(lse), free(sel);
    return 0;
}
