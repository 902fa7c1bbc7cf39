/*
 * The CUDA forward against the float64 reference, given the GPU's own routing.
 *
 * For every head dim x dtype x (one sequence | varlen) x (MHA | GQA | MQA) x block size, on fresh
 * random inputs with the outputs poisoned first:
 *   sel  = moba_route on the GPU          (must be well formed; share differing from the CPU's route
 *                                          is reported, and rows that differ from the float64
 *                                          route must be near-ties)
 *   o, lse = moba_forward on the GPU      (every element written)
 *   |o - ref(sel)| / |ref(sel)| < 1e-2 (bf16) or 2e-3 (f16), lse to 1e-4.
 * Exit 77 (ctest SKIP_RETURN_CODE) when there is no CUDA device.
 * Routing with exact ties (integer scores) must equal the CPU's and float64's route row for row.
 * MOBA_GPU_TEST_QUICK=1 runs a small subset (for compute-sanitizer).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "npy.h"
#include "ref64.h"

#include "gpu_util.h"

static long long rows_total = 0, rows_diff_cpu = 0, rows_diff_ref = 0;

static int same_row(const int32_t *a, const int32_t *b, int n) { return memcmp(a, b, (size_t)n * 4) == 0; }

/* A CUDA call's params for sequences of the given lengths (cu: the caller's, at least nseq + 1 entries,
 * which p points to); returns the total tokens. */
static int64_t cuda_problem(moba_params *p, int32_t *cu, moba_dtype dt, int d, const int *lens, int nseq, int hq,
                            int hkv, int block, int topk) {
    cu[0] = 0;
    for (int s = 0; s < nseq; s++) cu[s + 1] = cu[s] + lens[s];
    moba_params_init(p);
    p->backend = MOBA_BACKEND_CUDA;
    ref_set_problem(p, dt, nseq, cu, hq, hkv, d, block, topk);
    return cu[nseq];
}

static void run_case(moba_dtype dt, int d, const int *lens, int nseq, int hq, int hkv, int block, int topk,
                     uint64_t seed) {
    int32_t cu[16];
    moba_params p;
    const int64_t total = cuda_problem(&p, cu, dt, d, lens, nseq, hq, hkv, block, topk);

    size_t es = ref_dtype_size(dt), nq = (size_t)total * hq * d, nk = (size_t)total * hkv * d;
    size_t nsel = (size_t)hq * total * topk, nl = (size_t)hq * total;
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    void *q = check_malloc(nq * es), *k = check_malloc(nk * es), *v = check_malloc(nk * es);
    ref_fill_normal(&rng, dt, q, nq, 1.0);
    ref_fill_normal(&rng, dt, k, nk, 1.0);
    ref_fill_normal(&rng, dt, v, nk, 1.0);
    void *o = check_malloc(nq * es);
    float *lse = check_malloc(nl * 4);
    int32_t *sel = check_malloc(nsel * 4), *sel_cpu = check_malloc(nsel * 4), *sel_ref = check_malloc(nsel * 4);
    ref_poison(dt, o, nq);
    ref_poison(MOBA_DTYPE_F32, lse, nl);
    ref_poison_i32(sel, nsel);

    void *dq = to_device(q, nq * es), *dk = to_device(k, nk * es), *dv = to_device(v, nk * es);
    void *dout = to_device(o, nq * es), *dlse = to_device(lse, nl * 4), *dsel = to_device(sel, nsel * 4);

    char name[160];
    snprintf(name, sizeof name, "%s d=%d seqs=%d total=%lld hq=%d hkv=%d B=%d topk=%d",
             dt == MOBA_DTYPE_BF16 ? "bf16" : "f16", d, nseq, (long long)total, hq, hkv, block, topk);

    moba_status st = moba_route(&p, dq, dk, (int32_t *)dsel, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_route: %s", name, moba_last_error());
    st = moba_forward(&p, dq, dk, dv, dout, (float *)dlse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward: %s", name, moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(o, dout, nq * es, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(lse, dlse, nl * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(sel, dsel, nsel * 4, cudaMemcpyDeviceToHost));

    char why[256];
    int sel_ok = ref_check_selection(&p, sel, why, sizeof why) == 0;
    CHECK(sel_ok, "%s: GPU selection malformed: %s", name, why);
    size_t unwritten = ref_count_poison(dt, o, nq), unwritten_lse = ref_count_poison(MOBA_DTYPE_F32, lse, nl);
    CHECK(unwritten == 0, "%s: %zu elements of o not written", name, unwritten);
    CHECK(unwritten_lse == 0, "%s: %zu elements of lse not written", name, unwritten_lse);

    double *q64 = ref_load(dt, q, nq), *k64 = ref_load(dt, k, nk), *v64 = ref_load(dt, v, nk);
    double *o_ref = check_malloc(nq * sizeof(double)), *lse_ref = check_malloc(nl * sizeof(double));
    double *margin = check_malloc(nl * sizeof(double));
    if (sel_ok) {
        ref_forward_sel(&p, sel, q64, k64, v64, o_ref, lse_ref);
        double eo = ref_rel_err_storage(dt, o, o_ref, nq), el = ref_rel_err_f32(lse, lse_ref, nl);
        double tol = dt == MOBA_DTYPE_BF16 ? 1e-2 : 2e-3;
        CHECK(eo < tol, "%s: o relative error %.3e >= %.1e", name, eo, tol);
        CHECK(el < 1e-4, "%s: lse relative error %.3e >= 1e-4", name, el);
        printf("%-62s o err %.2e  lse err %.2e\n", name, eo, el);
    }

    /* routing agreement: with the CPU backend, and with float64 (where differing rows must be ties) */
    moba_params pc = p;
    pc.backend = MOBA_BACKEND_CPU;
    st = moba_route(&pc, q, k, sel_cpu, NULL, 0);
    CHECK(st == MOBA_OK, "%s: CPU moba_route: %s", name, moba_last_error());
    ref_route(&p, q64, k64, sel_ref, margin);
    int bad_ties = 0;
    for (size_t r = 0; r < nl; r++) {
        rows_total++;
        if (st == MOBA_OK && !same_row(sel + r * topk, sel_cpu + r * topk, topk)) rows_diff_cpu++;
        if (!same_row(sel + r * topk, sel_ref + r * topk, topk)) {
            rows_diff_ref++;
            if (margin[r] > 1e-3) bad_ties++;
        }
    }
    CHECK(bad_ties == 0, "%s: %d rows route differently from float64 with a margin > 1e-3", name, bad_ties);

    free(q64), free(k64), free(v64), free(o_ref), free(lse_ref), free(margin);
    free(q), free(k), free(v), free(o), free(lse), free(sel), free(sel_cpu), free(sel_ref);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse), cudaFree(dsel);
}

/* Routing with exact ties: q in {-1, 0, 1}, and every block's keys one of npat patterns in {-1, 0, 1}
 * (so its centroid is the pattern itself), so every score is a small integer, computed exactly in any
 * order, and a row has at most npat distinct scores. The GPU must then choose exactly the CPU's and the
 * float64 reference's blocks: the best top_k - 1, the lower block first among equal scores, also when
 * a better score arrives after a run of equal ones and pushes one of them out. */
static void check_route_ties(moba_dtype dt, int d, const int *lens, int nseq, int hq, int hkv, int block, int topk,
                             int npat, uint64_t seed) {
    int32_t cu[16];
    moba_params p;
    const int64_t total = cuda_problem(&p, cu, dt, d, lens, nseq, hq, hkv, block, topk);
    const size_t nq = (size_t)total * hq * d, nk = (size_t)total * hkv * d, nsel = (size_t)hq * total * topk;
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    double *q64 = check_malloc(nq * sizeof(double)), *k64 = check_malloc(nk * sizeof(double));
    double *pat = check_malloc((size_t)npat * hkv * d * sizeof(double));
    for (size_t i = 0; i < nq; i++) q64[i] = (double)(int)(ref_rng_next(&rng) % 3) - 1.0;
    for (size_t i = 0; i < (size_t)npat * hkv * d; i++) pat[i] = (double)(int)(ref_rng_next(&rng) % 3) - 1.0;
    for (int s = 0; s < nseq; s++)
        for (int64_t t0 = cu[s]; t0 < cu[s + 1]; t0 += block)
            for (int hk = 0; hk < hkv; hk++) {
                const double *src = pat + ((size_t)(ref_rng_next(&rng) % (uint64_t)npat) * hkv + hk) * d;
                for (int64_t t = t0; t < t0 + block && t < cu[s + 1]; t++)
                    memcpy(k64 + ((size_t)t * hkv + hk) * d, src, (size_t)d * sizeof(double));
            }
    const size_t es = ref_dtype_size(dt);
    void *q = check_malloc(nq * es), *k = check_malloc(nk * es);
    ref_from_double(dt, q64, nq, q);
    ref_from_double(dt, k64, nk, k);
    int32_t *sel = check_malloc(nsel * 4), *sel_cpu = check_malloc(nsel * 4), *sel_ref = check_malloc(nsel * 4);
    double *margin = check_malloc((size_t)hq * total * sizeof(double));
    ref_poison_i32(sel, nsel);
    void *dq = to_device(q, nq * es), *dk = to_device(k, nk * es), *dsel = to_device(sel, nsel * 4);
    char name[160];
    snprintf(name, sizeof name, "ties %s d=%d seqs=%d total=%lld hq=%d hkv=%d B=%d topk=%d patterns=%d",
             dt == MOBA_DTYPE_BF16 ? "bf16" : "f16", d, nseq, (long long)total, hq, hkv, block, topk, npat);
    moba_status st = moba_route(&p, dq, dk, (int32_t *)dsel, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_route: %s", name, moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(sel, dsel, nsel * 4, cudaMemcpyDeviceToHost));
    moba_params pc = p;
    pc.backend = MOBA_BACKEND_CPU;
    st = moba_route(&pc, q, k, sel_cpu, NULL, 0);
    CHECK(st == MOBA_OK, "%s: CPU moba_route: %s", name, moba_last_error());
    ref_route(&p, q64, k64, sel_ref, margin);
    size_t diff_cpu = 0, diff_ref = 0, rows = (size_t)hq * total;
    for (size_t r = 0; r < rows; r++) {
        diff_cpu += !same_row(sel + r * topk, sel_cpu + r * topk, topk);
        diff_ref += !same_row(sel + r * topk, sel_ref + r * topk, topk);
    }
    CHECK(diff_cpu == 0 && diff_ref == 0, "%s: %zu of %zu rows differ from the CPU's route, %zu from float64's", name,
          diff_cpu, rows, diff_ref);
    printf("%-62s %zu rows, %zu differ from the CPU, %zu from float64\n", name, rows, diff_cpu, diff_ref);
    free(q64), free(k64), free(pat), free(q), free(k), free(sel), free(sel_cpu), free(sel_ref), free(margin);
    cudaFree(dq), cudaFree(dk), cudaFree(dsel);
}

static void check_unsupported(void) {
    moba_status st = moba_backend_supports(MOBA_BACKEND_CUDA, MOBA_DTYPE_F32, 128, 64);
    CHECK(st == MOBA_ERR_UNSUPPORTED && strlen(moba_last_error()) > 0, "f32 must be UNSUPPORTED with a message");
    st = moba_backend_supports(MOBA_BACKEND_CUDA, MOBA_DTYPE_BF16, 96, 64);
    CHECK(st == MOBA_ERR_UNSUPPORTED && strstr(moba_last_error(), "96"), "head_dim 96: %s", moba_last_error());
    st = moba_backend_supports(MOBA_BACKEND_CUDA, MOBA_DTYPE_F16, 64, 24);
    CHECK(st == MOBA_ERR_UNSUPPORTED && strstr(moba_last_error(), "24"), "block 24: %s", moba_last_error());
    st = moba_backend_supports(MOBA_BACKEND_CUDA, MOBA_DTYPE_BF16, 128, 48);
    CHECK(st == MOBA_OK, "bf16 d=128 B=48 must be supported: %s", moba_last_error());
}

/* A pointer off the kernels' 16-byte (lse: 4, workspace: 256) boundaries: INVALID_ARGUMENT naming it,
 * and o / lse / block_idx left as they were. */
static void check_misaligned(void) {
    static const int32_t cu[2] = {0, 200};
    moba_params p;
    size_t ws_bytes = small_cuda_problem(&p, cu, MOBA_OP_FORWARD);
    size_t n = 200 * 2 * 64, nl = 2 * 200, nsel = nl * 3;
    char *q = poisoned_device(MOBA_DTYPE_BF16, n + 64), *k = poisoned_device(MOBA_DTYPE_BF16, n + 64);
    char *v = poisoned_device(MOBA_DTYPE_BF16, n + 64), *o = poisoned_device(MOBA_DTYPE_BF16, n + 64);
    char *lse = poisoned_device(MOBA_DTYPE_F32, nl + 16), *sel = poisoned_device(MOBA_DTYPE_F32, nsel + 16);
    char *ws = to_device(NULL, ws_bytes + 512);
    const char *names[] = {"q", "k", "v", "o", "lse", "workspace"};
    for (int i = 0; i < 6; i++) {
        char *x[6] = {q, k, v, o, lse, ws};
        x[i] += i == 5 ? 16 : 2;
        moba_status st = moba_forward(&p, x[0], x[1], x[2], x[3], (float *)x[4], x[5], ws_bytes);
        const char *msg = moba_last_error();
        char want[64];
        snprintf(want, sizeof want, "backend: %s (", names[i]);
        CHECK(st == MOBA_ERR_INVALID_ARGUMENT && strstr(msg, want) && strstr(msg, "aligned"),
              "moba_forward with %s misaligned: status %d, '%s'", names[i], (int)st, msg);
    }
    size_t route_ws = 0;
    CHECK(moba_workspace_size(&p, MOBA_OP_ROUTE, &route_ws) == MOBA_OK, "route workspace: %s", moba_last_error());
    moba_status st = moba_route(&p, q, k, (int32_t *)(sel + 2), NULL, 0);
    CHECK(st == MOBA_ERR_INVALID_ARGUMENT && strstr(moba_last_error(), "backend: block_idx ("), "moba_route, block_idx + 2: %s",
          moba_last_error());
    st = moba_route(&p, q + 8, k, (int32_t *)sel, NULL, 0);
    CHECK(st == MOBA_ERR_INVALID_ARGUMENT && strstr(moba_last_error(), "backend: q ("), "moba_route, q + 8: %s",
          moba_last_error());
    st = moba_route(&p, q, k, (int32_t *)sel, ws + 128, route_ws);
    CHECK(st == MOBA_ERR_INVALID_ARGUMENT && strstr(moba_last_error(), "backend: workspace ("), "moba_route, workspace + 128: %s",
          moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    void *ho = from_device(o, (n + 64) * 2), *hl = from_device(lse, (nl + 16) * 4), *hs = from_device(sel, (nsel + 16) * 4);
    CHECK(ref_count_poison(MOBA_DTYPE_BF16, ho, n + 64) == n + 64, "a refused moba_forward wrote into o");
    CHECK(ref_count_poison(MOBA_DTYPE_F32, hl, nl + 16) == nl + 16, "a refused moba_forward wrote into lse");
    CHECK(ref_count_poison(MOBA_DTYPE_F32, hs, nsel + 16) == nsel + 16, "a refused moba_route wrote into block_idx");
    /* the same buffers, aligned: accepted */
    st = moba_forward(&p, q, k, v, o, (float *)lse, ws, ws_bytes);
    CHECK(st == MOBA_OK, "moba_forward, aligned: %s", moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    free(ho), free(hl), free(hs);
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(lse), cudaFree(sel), cudaFree(ws);
}

int main(void) {
    if (!moba_backend_available(MOBA_BACKEND_CUDA)) {
        printf("SKIP: no CUDA device (or libmoba built without CUDA)\n");
        return 77;
    }
    const char *quick_env = getenv("MOBA_GPU_TEST_QUICK");
    int quick = quick_env && atoi(quick_env) > 0;
    check_unsupported();
    check_misaligned();

    static const int one[] = {777}, var[] = {300, 1, 517, 64, 129, 200};
    static const int heads[3][2] = {{2, 2}, {4, 2}, {3, 1}}; /* MHA, GQA, MQA */
    static const int blocks[] = {16, 48, 64, 128};
    uint64_t seed = 1234;
    for (int di = 0; di < 2; di++)
        for (int ti = 0; ti < 2; ti++)
            for (int vi = 0; vi < 2; vi++)
                for (int hi = 0; hi < 3; hi++)
                    for (int bi = 0; bi < 4; bi++) {
                        if (quick && (hi != vi || bi % 2 != di)) continue;
                        run_case(ti ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, di ? 128 : 64, vi ? var : one, vi ? 6 : 1,
                                 heads[hi][0], heads[hi][1], blocks[bi], 3, seed++);
                    }
    /* top_k edge cases: own block only, more than half, every block (full causal attention) */
    static const int topks[] = {1, 2, 7, 1000, 40}; /* 40: candidate lists in shared memory */
    for (int i = 0; i < 5; i++)
        run_case(i % 2 ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, 128, var, 6, 4, 2, i == 4 ? 16 : 64, topks[i], seed++);
    /* large blocks: 4, 6 and 16 chunks of 64 keys per block, own-block tiles of several chunks (the
     * warp-specialised kernel takes B >= 1024 by default, the others with MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1) */
    static const int big[] = {1500, 700, 2100}, one_long[] = {3000};
    run_case(MOBA_DTYPE_BF16, 128, big, 3, 4, 2, 256, 3, seed++);
    run_case(MOBA_DTYPE_F16, 64, big, 3, 2, 2, 384, 4, seed++);
    run_case(MOBA_DTYPE_BF16, 128, one_long, 1, 2, 1, 1024, 2, seed++);
    /* a longer sequence: many blocks, several chunks of centroids per row */
    if (!quick) {
        static const int longer[] = {5000};
        run_case(MOBA_DTYPE_BF16, 128, longer, 1, 2, 1, 16, 5, seed++);
        run_case(MOBA_DTYPE_F16, 64, longer, 1, 2, 2, 16, 200, seed++); /* lists in global memory */
        /* register lists of 15 over 5 chunks (the 64K target's routing: top_k 16 of up to 512 blocks) */
        run_case(MOBA_DTYPE_BF16, 128, longer, 1, 4, 2, 16, 16, seed++);
    }
    /* exact ties: register lists of 2, 4 (k1 = KMAX), 15 and 16 (k1 = KMAX) entries, lists in shared
     * memory (top_k 40), few patterns (long runs of equal scores) and more (runs pushed out) */
    static const int tie_len[] = {3000}, tie_var[] = {700, 1, 2000, 130};
    static const int tie_topk[] = {3, 5, 16, 17, 40};
    for (int i = 0; i < 5; i++) {
        check_route_ties(i % 2 ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, i % 2 ? 64 : 128, tie_len, 1, 2, 1, 16,
                         tie_topk[i], 3, seed++);
        if (!quick)
            check_route_ties(i % 2 ? MOBA_DTYPE_BF16 : MOBA_DTYPE_F16, 128, tie_var, 4, 4, 2, 16, tie_topk[i], 12,
                             seed++);
    }
    printf("routing: %lld of %lld rows (%.4f%%) differ from the CPU backend, %lld (%.4f%%) from float64\n",
           rows_diff_cpu, rows_total, 100.0 * rows_diff_cpu / (rows_total ? rows_total : 1), rows_diff_ref,
           100.0 * rows_diff_ref / (rows_total ? rows_total : 1));
    return check_done("test_cuda_forward");
}
