/*
 * The CUDA backward against the float64 reference, given the GPU's own routing.
 *
 * For every head dim x dtype x (one sequence | varlen with partial blocks and a length-1 sequence)
 * x (MHA | GQA | MQA) x block size, top_k 3 (routed), plus top_k 1 (own block only), 7, 40 and
 * "more than every block" (full causal attention), plus d = 128 with blocks of several 128-key tiles
 * (256, and 208: not a multiple of 128), on fresh random inputs:
 *   sel = moba_route, (o, lse) = moba_forward, then dq, dk, dv = moba_backward on the GPU with the
 *   outputs poisoned first (every element must be written);
 *   |x - ref_backward_sel(sel)| / |ref| < 2.5e-2 (bf16) or 4e-3 (f16) for x = dq, dk, dv, both for the
 *   default mode (dq summed with atomics in the dk/dv pass) and for deterministic = 1 (a separate dq pass);
 *   two deterministic runs are bitwise equal, and dk, dv are bitwise equal across the modes (the same
 *   products in the same order, also where the two modes use different kernels).
 * The forward's selection kept in moba_params.block_idx: the forward writes moba_route's selection, and the
 * backward reading it gives the bits of one that routes again; a random given selection against the reference
 * over it; entries that are no selection are survived (no out-of-bounds access, every element written).
 * Then the bf16 golden case (argv[1]; ../shared/golden, made by the published reference): its dq, dk,
 * dv against the GPU's (lse from the GPU forward), 2.5e-2.
 * Exit 77 (ctest SKIP_RETURN_CODE) when there is no CUDA device.
 * MOBA_GPU_TEST_QUICK=1 runs a small subset (for compute-sanitizer).
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "npy.h"
#include "ref64.h"

#include "gpu_util.h"

static double worst[2][3];      /* [dtype f16?][dq dk dv], default mode */
static double worst_dq_det[2]; /* [dtype f16?] dq of the deterministic mode */

/* moba_backward into fresh poisoned buffers; returns them on the host. */
static moba_status backward_once(const moba_params *p, void *d_do, void *d_q, void *d_k, void *d_v, void *d_o,
                                 float *d_lse, void **dq, void **dk, void **dv) {
    size_t es = ref_dtype_size(p->dtype), nq = (size_t)p->total_tokens * p->num_q_heads * p->head_dim;
    size_t nk = (size_t)p->total_tokens * p->num_kv_heads * p->head_dim;
    void *gq = poisoned_device(p->dtype, nq), *gk = poisoned_device(p->dtype, nk), *gv = poisoned_device(p->dtype, nk);
    moba_status st = moba_backward(p, d_do, d_q, d_k, d_v, d_o, d_lse, gq, gk, gv, NULL, 0);
    CUDA_OK(cudaDeviceSynchronize());
    *dq = from_device(gq, nq * es), *dk = from_device(gk, nk * es), *dv = from_device(gv, nk * es);
    cudaFree(gq), cudaFree(gk), cudaFree(gv);
    return st;
}

/* One case's params and fresh N(0, 1) inputs q, k, v, dout on the host (rng goes on from there). P must
 * stay where it is: P->p.cu_seqlens points into it. */
typedef struct {
    moba_params p;
    int32_t cu[16];
    int64_t total;
    size_t es, nq, nk, nsel, nl;
    void *q, *k, *v, *dout;
    ref_rng rng;
} problem;

static void problem_make(problem *P, moba_dtype dt, int d, const int *lens, int nseq, int hq, int hkv, int block,
                         int topk, uint64_t seed) {
    P->cu[0] = 0;
    for (int s = 0; s < nseq; s++) P->cu[s + 1] = P->cu[s] + lens[s];
    P->total = P->cu[nseq];
    moba_params_init(&P->p);
    P->p.backend = MOBA_BACKEND_CUDA;
    ref_set_problem(&P->p, dt, nseq, P->cu, hq, hkv, d, block, topk);
    P->es = ref_dtype_size(dt), P->nq = (size_t)P->total * hq * d, P->nk = (size_t)P->total * hkv * d;
    P->nsel = (size_t)hq * P->total * topk, P->nl = (size_t)hq * P->total;
    ref_rng_seed(&P->rng, seed);
    P->q = check_malloc(P->nq * P->es), P->k = check_malloc(P->nk * P->es), P->v = check_malloc(P->nk * P->es);
    P->dout = check_malloc(P->nq * P->es);
    ref_fill_normal(&P->rng, dt, P->q, P->nq, 1.0);
    ref_fill_normal(&P->rng, dt, P->k, P->nk, 1.0);
    ref_fill_normal(&P->rng, dt, P->v, P->nk, 1.0);
    ref_fill_normal(&P->rng, dt, P->dout, P->nq, 1.0);
}

static void run_case(moba_dtype dt, int d, const int *lens, int nseq, int hq, int hkv, int block, int topk,
                     uint64_t seed) {
    problem P;
    problem_make(&P, dt, d, lens, nseq, hq, hkv, block, topk, seed);
    moba_params p = P.p; /* its cu_seqlens points into P */
    const int64_t total = P.total;
    const size_t es = P.es, nq = P.nq, nk = P.nk, nsel = P.nsel, nl = P.nl;
    void *q = P.q, *k = P.k, *v = P.v, *dout = P.dout;

    char name[160];
    snprintf(name, sizeof name, "%s d=%d seqs=%d total=%lld hq=%d hkv=%d B=%d topk=%d",
             dt == MOBA_DTYPE_BF16 ? "bf16" : "f16", d, nseq, (long long)total, hq, hkv, block, topk);

    void *gq = to_device(q, nq * es), *gk = to_device(k, nk * es), *gv = to_device(v, nk * es);
    void *gdo = to_device(dout, nq * es), *go = poisoned_device(dt, nq);
    float *glse = (float *)poisoned_device(MOBA_DTYPE_F32, nl);
    int32_t *gsel = (int32_t *)to_device(NULL, nsel * 4);
    moba_status st = moba_route(&p, gq, gk, gsel, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_route: %s", name, moba_last_error());
    st = moba_forward(&p, gq, gk, gv, go, glse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward: %s", name, moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    int32_t *sel = (int32_t *)from_device(gsel, nsel * 4);
    char why[256];
    int sel_ok = ref_check_selection(&p, sel, why, sizeof why) == 0;
    CHECK(sel_ok, "%s: GPU selection malformed: %s", name, why);

    void *dq, *dk, *dv, *dq2, *dk2, *dv2, *dq3, *dk3, *dv3;
    st = backward_once(&p, gdo, gq, gk, gv, go, glse, &dq, &dk, &dv);
    CHECK(st == MOBA_OK, "%s: moba_backward: %s", name, moba_last_error());
    p.deterministic = 1;
    moba_status st2 = backward_once(&p, gdo, gq, gk, gv, go, glse, &dq2, &dk2, &dv2);
    CHECK(st2 == MOBA_OK, "%s: moba_backward (deterministic): %s", name, moba_last_error());
    moba_status st3 = backward_once(&p, gdo, gq, gk, gv, go, glse, &dq3, &dk3, &dv3);
    CHECK(st3 == MOBA_OK, "%s: moba_backward (deterministic, again): %s", name, moba_last_error());
    if (st == MOBA_OK && st2 == MOBA_OK && st3 == MOBA_OK) {
        size_t uq = ref_count_poison(dt, dq, nq), uk = ref_count_poison(dt, dk, nk), uv = ref_count_poison(dt, dv, nk);
        uq += ref_count_poison(dt, dq2, nq);
        CHECK(uq + uk + uv == 0, "%s: unwritten elements: dq %zu dk %zu dv %zu", name, uq, uk, uv);
        int same = memcmp(dq2, dq3, nq * es) == 0 && memcmp(dk2, dk3, nk * es) == 0 && memcmp(dv2, dv3, nk * es) == 0;
        CHECK(same, "%s: two deterministic runs are not bitwise equal", name);
        same = memcmp(dk, dk2, nk * es) == 0 && memcmp(dv, dv2, nk * es) == 0;
        CHECK(same, "%s: dk, dv differ between the default and the deterministic mode", name);
    }
    if (sel_ok && st == MOBA_OK && st2 == MOBA_OK) {
        double *q64 = ref_load(dt, q, nq), *k64 = ref_load(dt, k, nk), *v64 = ref_load(dt, v, nk);
        double *do64 = ref_load(dt, dout, nq);
        double *rq = check_malloc(nq * sizeof(double)), *rk = check_malloc(nk * sizeof(double)),
               *rv = check_malloc(nk * sizeof(double));
        ref_backward_sel(&p, sel, q64, k64, v64, do64, rq, rk, rv);
        double e[3] = {ref_rel_err_storage(dt, dq, rq, nq), ref_rel_err_storage(dt, dk, rk, nk),
                       ref_rel_err_storage(dt, dv, rv, nk)};
        double e_det = ref_rel_err_storage(dt, dq2, rq, nq);
        double tol = dt == MOBA_DTYPE_BF16 ? 2.5e-2 : 4e-3;
        static const char *what[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; i++) {
            CHECK(e[i] < tol, "%s: %s relative error %.3e >= %.1e", name, what[i], e[i], tol);
            int f16 = dt == MOBA_DTYPE_F16;
            if (e[i] > worst[f16][i]) worst[f16][i] = e[i];
        }
        CHECK(e_det < tol, "%s: dq (deterministic) relative error %.3e >= %.1e", name, e_det, tol);
        if (e_det > worst_dq_det[dt == MOBA_DTYPE_F16]) worst_dq_det[dt == MOBA_DTYPE_F16] = e_det;
        printf("%-62s dq %.2e (det %.2e) dk %.2e dv %.2e\n", name, e[0], e_det, e[1], e[2]);
        free(q64), free(k64), free(v64), free(do64), free(rq), free(rk), free(rv);
    }
    /* moba_params.block_idx: the forward writes its selection there (moba_route's, with o and lse bitwise
     * unchanged), and a backward reading it gives the bits of one that routes again (deterministic mode;
     * dk and dv in the default mode too) */
    if (sel_ok && st == MOBA_OK && st2 == MOBA_OK && st3 == MOBA_OK) {
        moba_params pk = p;
        pk.block_idx = (int32_t *)to_device(NULL, nsel * 4);
        CUDA_OK(cudaMemset(pk.block_idx, 0x7f, nsel * 4));
        void *go2 = poisoned_device(dt, nq);
        float *glse2 = (float *)poisoned_device(MOBA_DTYPE_F32, nl);
        st = moba_forward(&pk, gq, gk, gv, go2, glse2, NULL, 0);
        CHECK(st == MOBA_OK, "%s: moba_forward with block_idx: %s", name, moba_last_error());
        CUDA_OK(cudaDeviceSynchronize());
        void *o1 = from_device(go, nq * es), *o2 = from_device(go2, nq * es);
        void *l1 = from_device(glse, nl * 4), *l2 = from_device(glse2, nl * 4), *kept = from_device(pk.block_idx, nsel * 4);
        CHECK(!memcmp(kept, sel, nsel * 4), "%s: the forward's block_idx != moba_route's", name);
        CHECK(!memcmp(o1, o2, nq * es) && !memcmp(l1, l2, nl * 4), "%s: o / lse changed when the forward wrote block_idx",
              name);
        void *xq, *xk, *xv, *yq, *yk, *yv;
        pk.deterministic = 1;
        st = backward_once(&pk, gdo, gq, gk, gv, go, glse, &xq, &xk, &xv);
        CHECK(st == MOBA_OK, "%s: moba_backward (deterministic) with block_idx: %s", name, moba_last_error());
        pk.deterministic = 0;
        st2 = backward_once(&pk, gdo, gq, gk, gv, go, glse, &yq, &yk, &yv);
        CHECK(st2 == MOBA_OK, "%s: moba_backward with block_idx: %s", name, moba_last_error());
        CHECK(!memcmp(xq, dq2, nq * es) && !memcmp(xk, dk2, nk * es) && !memcmp(xv, dv2, nk * es),
              "%s: deterministic backward reading block_idx != routing again", name);
        CHECK(!memcmp(yk, dk, nk * es) && !memcmp(yv, dv, nk * es) && ref_count_poison(dt, yq, nq) == 0,
              "%s: default backward reading block_idx: dk / dv != routing again, or dq unwritten", name);
        free(o1), free(o2), free(l1), free(l2), free(kept), free(xq), free(xk), free(xv), free(yq), free(yk), free(yv);
        cudaFree(pk.block_idx), cudaFree(go2), cudaFree(glse2);
    }
    free(dq), free(dk), free(dv), free(dq2), free(dk2), free(dv2), free(dq3), free(dk3), free(dv3);
    free(q), free(k), free(v), free(dout), free(sel);
    cudaFree(gq), cudaFree(gk), cudaFree(gv), cudaFree(gdo), cudaFree(go), cudaFree(glse), cudaFree(gsel);
}

/* The backward follows the selection it is given (moba_params.block_idx): a random valid one, with o and lse
 * of the float64 reference over it, against ref_backward_sel of it in both modes. Then entries that are no
 * selection at all (random values, unsorted, out of range): the call succeeds, writes every element and
 * reads nothing out of bounds (compute-sanitizer runs this in the quick subset). */
static void run_given(moba_dtype dt, int d, const int *lens, int nseq, int hq, int hkv, int block, int topk,
                      uint64_t seed) {
    problem P;
    problem_make(&P, dt, d, lens, nseq, hq, hkv, block, topk, seed);
    moba_params p = P.p;
    const int64_t total = P.total;
    const size_t es = P.es, nq = P.nq, nk = P.nk, nsel = P.nsel, nl = P.nl;
    void *q = P.q, *k = P.k, *v = P.v, *dout = P.dout, *o = check_malloc(nq * es);
    ref_rng rng = P.rng;
    int32_t *sel = check_malloc(nsel * 4);
    ref_random_selection(&p, &rng, sel);
    double *q64 = ref_load(dt, q, nq), *k64 = ref_load(dt, k, nk), *v64 = ref_load(dt, v, nk), *do64 = ref_load(dt, dout, nq);
    double *ro = check_malloc(nq * sizeof(double)), *rl = check_malloc(nl * sizeof(double));
    double *rq = check_malloc(nq * sizeof(double)), *rk = check_malloc(nk * sizeof(double)),
           *rv = check_malloc(nk * sizeof(double));
    ref_forward_sel(&p, sel, q64, k64, v64, ro, rl);
    ref_backward_sel(&p, sel, q64, k64, v64, do64, rq, rk, rv);
    ref_from_double(dt, ro, nq, o);
    float *lse = check_malloc(nl * sizeof(float));
    for (size_t i = 0; i < nl; i++) lse[i] = (float)rl[i];

    char name[160];
    snprintf(name, sizeof name, "given selection: %s d=%d seqs=%d total=%lld hq=%d hkv=%d B=%d topk=%d",
             dt == MOBA_DTYPE_BF16 ? "bf16" : "f16", d, nseq, (long long)total, hq, hkv, block, topk);
    void *gq = to_device(q, nq * es), *gk = to_device(k, nk * es), *gv = to_device(v, nk * es);
    void *gdo = to_device(dout, nq * es), *go = to_device(o, nq * es);
    float *glse = (float *)to_device(lse, nl * 4);
    p.block_idx = (int32_t *)to_device(sel, nsel * 4);
    double tol = dt == MOBA_DTYPE_BF16 ? 2.5e-2 : 4e-3;
    for (int det = 0; det < 2; det++) {
        p.deterministic = det;
        void *dq, *dk, *dv;
        moba_status st = backward_once(&p, gdo, gq, gk, gv, go, glse, &dq, &dk, &dv);
        CHECK(st == MOBA_OK, "%s: moba_backward: %s", name, moba_last_error());
        double e[3] = {ref_rel_err_storage(dt, dq, rq, nq), ref_rel_err_storage(dt, dk, rk, nk),
                       ref_rel_err_storage(dt, dv, rv, nk)};
        CHECK(e[0] < tol && e[1] < tol && e[2] < tol, "%s%s: dq %.3e dk %.3e dv %.3e (tolerance %.1e)", name,
              det ? " (deterministic)" : "", e[0], e[1], e[2], tol);
        printf("%-78s%s dq %.2e dk %.2e dv %.2e\n", name, det ? " det" : "    ", e[0], e[1], e[2]);
        free(dq), free(dk), free(dv);
    }
    /* not a selection: the rows' entries random in -3 .. blocks + 4 */
    for (size_t i = 0; i < nsel; i++) sel[i] = (int32_t)(ref_rng_next(&rng) % (uint64_t)(total / block + 8)) - 3;
    CUDA_OK(cudaMemcpy(p.block_idx, sel, nsel * 4, cudaMemcpyHostToDevice));
    for (int det = 0; det < 2; det++) {
        p.deterministic = det;
        void *dq, *dk, *dv;
        moba_status st = backward_once(&p, gdo, gq, gk, gv, go, glse, &dq, &dk, &dv);
        CHECK(st == MOBA_OK && ref_count_poison(dt, dq, nq) + ref_count_poison(dt, dk, nk) + ref_count_poison(dt, dv, nk) == 0,
              "%s: with invalid block_idx entries (det %d): status %d (%s), or elements left unwritten", name, det,
              (int)st, moba_last_error());
        free(dq), free(dk), free(dv);
    }
    free(q), free(k), free(v), free(dout), free(o), free(sel), free(lse);
    free(q64), free(k64), free(v64), free(do64), free(ro), free(rl), free(rq), free(rk), free(rv);
    cudaFree(gq), cudaFree(gk), cudaFree(gv), cudaFree(gdo), cudaFree(go), cudaFree(glse), cudaFree(p.block_idx);
}

/* The bf16 golden case (parameters from its case.json): gradients against the published reference's. */
static void run_golden(const char *dir, const char *name, int hq, int hkv, int d, int block, int topk) {
    npy_array q = golden_load(dir, name, "q.npy"), k = golden_load(dir, name, "k.npy");
    npy_array v = golden_load(dir, name, "v.npy"), dout = golden_load(dir, name, "do.npy");
    npy_array cu = golden_load(dir, name, "cu_seqlens.npy"), rq = golden_load(dir, name, "dq.npy");
    npy_array rk = golden_load(dir, name, "dk.npy"), rv = golden_load(dir, name, "dv.npy");
    CHECK_FATAL(strcmp(q.descr, "<u2") == 0 && strcmp(rq.descr, "<u2") == 0 && strcmp(cu.descr, "<i4") == 0,
                "%s: unexpected dtypes", name);
    moba_params p;
    moba_params_init(&p);
    p.backend = MOBA_BACKEND_CUDA;
    ref_set_problem(&p, MOBA_DTYPE_BF16, (int)cu.count - 1, (const int32_t *)cu.data, hq, hkv, d, block, topk);
    CHECK_FATAL(q.count == (size_t)p.total_tokens * hq * d, "%s: q has %zu elements", name, q.count);
    size_t nq = q.count, nk = k.count, nl = (size_t)hq * p.total_tokens;
    void *gq = to_device(q.data, nq * 2), *gk = to_device(k.data, nk * 2), *gv = to_device(v.data, nk * 2);
    void *gdo = to_device(dout.data, nq * 2), *go = poisoned_device(MOBA_DTYPE_BF16, nq);
    float *glse = (float *)poisoned_device(MOBA_DTYPE_F32, nl);
    moba_status st = moba_forward(&p, gq, gk, gv, go, glse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward: %s", name, moba_last_error());
    void *dq, *dk, *dv;
    st = backward_once(&p, gdo, gq, gk, gv, go, glse, &dq, &dk, &dv);
    CHECK(st == MOBA_OK, "%s: moba_backward: %s", name, moba_last_error());
    if (st == MOBA_OK) {
        const npy_array *ref[3] = {&rq, &rk, &rv};
        void *got[3] = {dq, dk, dv};
        static const char *what[3] = {"dq", "dk", "dv"};
        printf("golden %s:", name);
        for (int i = 0; i < 3; i++) {
            double *r = ref_load(MOBA_DTYPE_BF16, ref[i]->data, ref[i]->count);
            double e = ref_rel_err_storage(MOBA_DTYPE_BF16, got[i], r, ref[i]->count);
            printf(" %s %.3e", what[i], e);
            CHECK(e < 2.5e-2, "%s: %s relative error vs the reference %.3e >= 2.5e-2", name, what[i], e);
            free(r);
        }
        printf("\n");
    }
    free(dq), free(dk), free(dv);
    cudaFree(gq), cudaFree(gk), cudaFree(gv), cudaFree(gdo), cudaFree(go), cudaFree(glse);
    npy_free(&q), npy_free(&k), npy_free(&v), npy_free(&dout), npy_free(&cu);
    npy_free(&rq), npy_free(&rk), npy_free(&rv);
}

/* Each gradient pointer (and dout, lse, the workspace) off its boundary: INVALID_ARGUMENT naming it,
 * dq / dk / dv left as they were. */
static void check_misaligned(void) {
    static const int32_t cu[2] = {0, 200};
    moba_params p;
    size_t ws_bytes = small_cuda_problem(&p, cu, MOBA_OP_BACKWARD);
    size_t n = 200 * 2 * 64 + 64, nl = 2 * 200 + 16;
    char *buf[10];
    for (int i = 0; i < 10; i++)
        buf[i] = i == 5 ? poisoned_device(MOBA_DTYPE_F32, nl) : i == 9 ? to_device(NULL, ws_bytes + 512)
                                                                         : poisoned_device(MOBA_DTYPE_BF16, n);
    static const char *const names[] = {"dout", "q", "k", "v", "o", "lse", "dq", "dk", "dv", "workspace"};
    for (int i = 0; i < 10; i++) {
        char *x[10];
        memcpy(x, buf, sizeof x);
        x[i] += i == 9 ? 64 : 2;
        moba_status st = moba_backward(&p, x[0], x[1], x[2], x[3], x[4], (float *)x[5], x[6], x[7], x[8], x[9], ws_bytes);
        char want[64];
        snprintf(want, sizeof want, "backend: %s (", names[i]);
        CHECK(st == MOBA_ERR_INVALID_ARGUMENT && strstr(moba_last_error(), want),
              "moba_backward with %s misaligned: status %d, '%s'", names[i], (int)st, moba_last_error());
    }
    CUDA_OK(cudaDeviceSynchronize());
    for (int i = 6; i < 9; i++) {
        void *h = from_device(buf[i], n * 2);
        CHECK(ref_count_poison(MOBA_DTYPE_BF16, h, n) == n, "a refused moba_backward wrote into %s", names[i]);
        free(h);
    }
    for (int i = 0; i < 10; i++) cudaFree(buf[i]);
}

int main(int argc, char **argv) {
    if (!moba_backend_available(MOBA_BACKEND_CUDA)) {
        printf("SKIP: no CUDA device (or libmoba built without CUDA)\n");
        return 77;
    }
    const char *quick_env = getenv("MOBA_GPU_TEST_QUICK");
    int quick = quick_env && atoi(quick_env) > 0;
    check_misaligned();

    static const int one[] = {777}, var[] = {300, 1, 517, 64, 129, 200};
    static const int heads[3][2] = {{2, 2}, {4, 2}, {3, 1}}; /* MHA, GQA, MQA */
    static const int blocks[] = {16, 48, 64, 128};
    uint64_t seed = 4321;
    for (int di = 0; di < 2; di++)
        for (int ti = 0; ti < 2; ti++)
            for (int vi = 0; vi < 2; vi++)
                for (int hi = 0; hi < 3; hi++)
                    for (int bi = 0; bi < 4; bi++) {
                        if (quick && (hi != vi + 1 || bi % 2 != di || ti)) continue;
                        run_case(ti ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, di ? 128 : 64, vi ? var : one, vi ? 6 : 1,
                                 heads[hi][0], heads[hi][1], blocks[bi], 3, seed++);
                    }
    /* top_k: own block only, more than one, every block (full causal attention), large routed */
    static const int topks[] = {1, 1000, 7, 40};
    for (int di = 0; di < 2; di++)
        for (int ti = 0; ti < 2; ti++)
            for (int bi = 0; bi < 4; bi++)
                for (int ki = 0; ki < 4; ki++) {
                    if (ki >= 2 && bi != 0) continue; /* 7 and 40 routed blocks need small blocks */
                    if (quick && (ti || bi != 1 + di || ki >= 2)) continue;
                    run_case(ti ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, di ? 128 : 64, var, 6, bi % 2 ? 3 : 4,
                             bi % 2 ? 1 : 2, blocks[bi], topks[ki], seed++);
                }
    /* d = 128, blocks of two or more 128-key tiles: the Hopper kernels' 128-row layout tiles, where a tile
     * past a block's start skips the rows before its first key; 208 leaves partial tiles; routed */
    static const int long_lens[] = {900, 400, 1}, big_blocks[] = {256, 208};
    for (int ti = 0; ti < 2; ti++)
        for (int bi = 0; bi < 2; bi++)
            for (int hi = 0; hi < 3; hi++) {
                if (quick && (ti || hi != 1)) continue;
                run_case(ti ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, 128, long_lens, 3, heads[hi][0], heads[hi][1],
                         big_blocks[bi], 3, seed++);
            }
    /* the backward over a caller's selection (moba_params.block_idx), and over entries that are none */
    for (int di = 0; di < 2; di++)
        for (int ti = 0; ti < 2; ti++) {
            if (quick && ti) continue;
            run_given(ti ? MOBA_DTYPE_F16 : MOBA_DTYPE_BF16, di ? 128 : 64, var, 6, 4, 2, di ? 64 : 16, 3 + 4 * di,
                      seed++);
        }
    for (int f16 = 0; f16 < 2; f16++) {
        printf("worst relative error %s: dq %.2e dk %.2e dv %.2e\n", f16 ? "f16" : "bf16", worst[f16][0], worst[f16][1],
               worst[f16][2]);
        printf("worst relative error %s: dq (deterministic mode) %.2e\n", f16 ? "f16" : "bf16", worst_dq_det[f16]);
    }
    if (argc >= 2) run_golden(argv[1], "bf16_d128", 1, 1, 128, 128, 3); /* the bf16 case; its case.json */
    else CHECK(0, "usage: test_cuda_backward GOLDEN_DIR");
    return check_done("test_cuda_backward");
}
