/*
 * The library against the float64 reference (ref64) on fresh random inputs, every dtype:
 * varlen with partial blocks, empty and length-1 sequences, GQA and MQA, top_k = 1, top_k >= the
 * number of blocks (must equal plain causal attention), block sizes 1, 7, 100, head dims 1, 3, 64,
 * 128, 256. Outputs are poisoned (signalling-NaN bit patterns) before every call and every element
 * must be written. Then determinism across thread counts, the caller-workspace path, and the
 * tie-break rule of routing (equal scores -> lower block index).
 *
 * Seed: MOBA_TEST_SEED in the environment, else a fixed one; printed either way.
 */
#include <math.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "ref64.h"

/* Relative Frobenius error bounds (the numbers): o / lse / gradients by dtype. */
static const double tol_o[3] = {1e-5, 2e-3, 1.5e-2};
static const double tol_grad[3] = {1e-5, 4e-3, 2.5e-2};
static const double tol_lse = 1e-5; /* fp32 whatever the storage: it is computed from the stored inputs */
static const char *dtype_name[3] = {"f32", "f16", "bf16"};

typedef struct {
    const char *name;
    int num_seqs;
    int lens[8];
    int hq, hkv, d, block, top_k;
    float scale;   /* 0 = default */
    double std_qk; /* spread of q and k; 0 = 1. Large values make logits of hundreds */
} config;

static const config configs[] = {
    {"varlen partial/empty/len-1", 6, {1, 37, 0, 64, 50, 0}, 2, 2, 16, 16, 3, 0, 0},
    {"gqa 4:2", 2, {130, 67}, 4, 2, 32, 16, 3, 0, 0},
    {"mqa 3:1", 2, {100, 1}, 3, 1, 64, 8, 4, 0, 0},
    {"top_k 1 (block-local)", 2, {90, 33}, 2, 1, 16, 10, 1, 0, 0},
    {"top_k = #blocks (full)", 3, {70, 45, 1}, 2, 2, 32, 8, 9, 0, 0},
    {"top_k 100 > #blocks (full)", 2, {61, 17}, 2, 1, 16, 8, 100, 0, 0},
    {"block 7, d 3", 2, {60, 23}, 2, 1, 3, 7, 3, 0, 0},
    {"block 100", 2, {450, 120}, 1, 1, 8, 100, 2, 0, 0},
    {"block 1", 2, {20, 7}, 2, 2, 8, 1, 4, 0, 0},
    {"d 1", 1, {40}, 2, 1, 1, 4, 3, 0, 0},
    {"d 64, scale 0.3", 1, {96}, 2, 2, 64, 16, 3, 0.3f, 0},
    {"d 128", 2, {160, 33}, 2, 1, 128, 32, 2, 0, 0},
    {"d 256", 1, {150}, 1, 1, 256, 32, 3, 0, 0},
    {"large logits (q, k std 8)", 2, {80, 41}, 2, 1, 16, 8, 3, 0, 8.0},
};
enum { NUM_CONFIGS = sizeof configs / sizeof configs[0] };

/* One problem: params, storage tensors, their double copies, and the reference's answers. */
typedef struct {
    moba_params p;
    int32_t cu[9]; /* up to 8 sequences */
    size_t nq, nkv, nlse, nsel, esz;
    void *q, *k, *v, *dout;   /* storage inputs */
    double *qd, *kd, *vd, *doutd;
} problem;

static void problem_init(problem *P, const config *c, moba_dtype dt, ref_rng *rng) {
    memset(P, 0, sizeof *P);
    P->cu[0] = 0;
    for (int s = 0; s < c->num_seqs; s++) P->cu[s + 1] = P->cu[s] + c->lens[s];
    moba_params *p = &P->p;
    moba_params_init(p);
    ref_set_problem(p, dt, c->num_seqs, P->cu, c->hq, c->hkv, c->d, c->block, c->top_k);
    p->softmax_scale = c->scale;
    P->esz = ref_dtype_size(dt);
    P->nq = (size_t)p->total_tokens * c->hq * c->d;
    P->nkv = (size_t)p->total_tokens * c->hkv * c->d;
    P->nlse = (size_t)c->hq * p->total_tokens;
    P->nsel = P->nlse * c->top_k;
    P->q = check_malloc(P->nq * P->esz);
    P->k = check_malloc(P->nkv * P->esz);
    P->v = check_malloc(P->nkv * P->esz);
    P->dout = check_malloc(P->nq * P->esz);
    double std_qk = c->std_qk > 0 ? c->std_qk : 1.0;
    ref_fill_normal(rng, dt, P->q, P->nq, std_qk);
    ref_fill_normal(rng, dt, P->k, P->nkv, std_qk);
    ref_fill_normal(rng, dt, P->v, P->nkv, 1.0);
    ref_fill_normal(rng, dt, P->dout, P->nq, 1.0);
    P->qd = ref_load(dt, P->q, P->nq);
    P->kd = ref_load(dt, P->k, P->nkv);
    P->vd = ref_load(dt, P->v, P->nkv);
    P->doutd = ref_load(dt, P->dout, P->nq);
}

static void problem_free(problem *P) {
    free(P->q), free(P->k), free(P->v), free(P->dout);
    free(P->qd), free(P->kd), free(P->vd), free(P->doutd);
}

static int max_blocks(const problem *P) {
    int m = 0;
    for (int s = 0; s < P->p.num_seqs; s++) {
        int nb = (P->cu[s + 1] - P->cu[s] + P->p.block_size - 1) / P->p.block_size;
        if (nb > m) m = nb;
    }
    return m;
}

/* Library outputs of one problem (storage dtype; lse fp32; block_idx int32). */
typedef struct {
    void *o, *dq, *dk, *dv;
    float *lse;
    int32_t *sel;
} outputs;

static void outputs_alloc(outputs *X, const problem *P) {
    X->o = check_malloc(P->nq * P->esz);
    X->dq = check_malloc(P->nq * P->esz);
    X->dk = check_malloc(P->nkv * P->esz);
    X->dv = check_malloc(P->nkv * P->esz);
    X->lse = check_malloc(P->nlse * sizeof(float));
    X->sel = check_malloc(P->nsel * sizeof(int32_t));
}

static void outputs_free(outputs *X) {
    free(X->o), free(X->dq), free(X->dk), free(X->dv), free(X->lse), free(X->sel);
}

static void outputs_poison(outputs *X, const problem *P) {
    moba_dtype dt = P->p.dtype;
    ref_poison(dt, X->o, P->nq);
    ref_poison(dt, X->dq, P->nq);
    ref_poison(dt, X->dk, P->nkv);
    ref_poison(dt, X->dv, P->nkv);
    ref_poison(MOBA_DTYPE_F32, X->lse, P->nlse);
    ref_poison_i32(X->sel, P->nsel);
}

/* route, forward, backward with the given workspaces (NULL = the library allocates). */
static moba_status run_all(const problem *P, outputs *X, void *ws[3], const size_t ws_bytes[3]) {
    const moba_params *p = &P->p;
    moba_status st = moba_route(p, P->q, P->k, X->sel, ws[2], ws_bytes[2]);
    if (st == MOBA_OK) st = moba_forward(p, P->q, P->k, P->v, X->o, X->lse, ws[0], ws_bytes[0]);
    if (st == MOBA_OK)
        st = moba_backward(p, P->dout, P->q, P->k, P->v, X->o, X->lse, X->dq, X->dk, X->dv, ws[1], ws_bytes[1]);
    return st;
}

static int same_bits(const outputs *A, const outputs *B, const problem *P) {
    return !memcmp(A->o, B->o, P->nq * P->esz) && !memcmp(A->dq, B->dq, P->nq * P->esz) &&
           !memcmp(A->dk, B->dk, P->nkv * P->esz) && !memcmp(A->dv, B->dv, P->nkv * P->esz) &&
           !memcmp(A->lse, B->lse, P->nlse * sizeof(float)) && !memcmp(A->sel, B->sel, P->nsel * sizeof(int32_t));
}

/* Near-ties in routing: rows whose best dropped score is within this of the worst kept one may
 * route differently in fp32 (or with a centroid rounded one ulp apart in f16/bf16). */
static double tie_margin(moba_dtype dt) { return dt == MOBA_DTYPE_F32 ? 1e-4 : 2e-2; }

static void check_case(const config *c, moba_dtype dt, ref_rng *rng) {
    problem P;
    problem_init(&P, c, dt, rng);
    const moba_params *p = &P.p;
    outputs X;
    outputs_alloc(&X, &P);
    outputs_poison(&X, &P);
    char label[96];
    snprintf(label, sizeof label, "%s [%s]", c->name, dtype_name[dt]);

    /* routing: exact agreement except at near-ties */
    int32_t *ref_sel = check_malloc(P.nsel * sizeof(int32_t));
    double *margin = check_malloc(P.nlse * sizeof(double));
    ref_route(p, P.qd, P.kd, ref_sel, margin);
    char why[160];
    CHECK(ref_check_selection(p, ref_sel, why, sizeof why) == 0, "%s: reference selection malformed: %s", label, why);
    moba_status st = moba_route(p, P.q, P.k, X.sel, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_route: %s", label, moba_last_error());
    CHECK(ref_count_poison_i32(X.sel, P.nsel) == 0, "%s: route left %zu entries unwritten", label,
          ref_count_poison_i32(X.sel, P.nsel));
    int lib_sel_ok = ref_check_selection(p, X.sel, why, sizeof why) == 0;
    CHECK(lib_sel_ok, "%s: moba_route output malformed: %s", label, why);
    size_t near_ties = 0, mismatched = ref_selection_mismatches(p, X.sel, ref_sel, margin, tie_margin(dt), &near_ties);
    for (size_t r = 0, shown = 0; r < P.nlse && mismatched && shown < 3; r++) {
        if (!memcmp(X.sel + r * c->top_k, ref_sel + r * c->top_k, c->top_k * sizeof(int32_t)) || margin[r] < tie_margin(dt))
            continue;
        shown++;
        fprintf(stderr, "  %s: row %zu (head %zu, token %zu) routes differently, margin %.3g:", label, r,
                r / p->total_tokens, r % p->total_tokens, margin[r]);
        for (int i = 0; i < c->top_k && i < 8; i++) fprintf(stderr, " %d/%d", X.sel[r * c->top_k + i], ref_sel[r * c->top_k + i]);
        fprintf(stderr, " (lib/ref)\n");
    }
    CHECK(mismatched == 0, "%s: %zu rows route differently from the reference", label, mismatched);
    CHECK(near_ties * 100 <= P.nlse, "%s: %zu near-tie rows differ (more than 1%%)", label, near_ties);

    /* the reference over the library's own selection, so near-ties don't blur the attention check */
    const int32_t *sel = lib_sel_ok ? X.sel : ref_sel;
    double *o = check_malloc(P.nq * sizeof(double)), *lse = check_malloc(P.nlse * sizeof(double));
    double *dq = check_malloc(P.nq * sizeof(double)), *dk = check_malloc(P.nkv * sizeof(double)),
           *dv = check_malloc(P.nkv * sizeof(double));
    ref_forward_sel(p, sel, P.qd, P.kd, P.vd, o, lse);
    ref_backward_sel(p, sel, P.qd, P.kd, P.vd, P.doutd, dq, dk, dv);

    st = moba_forward(p, P.q, P.k, P.v, X.o, X.lse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward: %s", label, moba_last_error());
    CHECK(ref_count_poison(dt, X.o, P.nq) == 0, "%s: forward left %zu of o unwritten", label, ref_count_poison(dt, X.o, P.nq));
    CHECK(ref_count_poison(MOBA_DTYPE_F32, X.lse, P.nlse) == 0, "%s: forward left lse unwritten", label);
    st = moba_backward(p, P.dout, P.q, P.k, P.v, X.o, X.lse, X.dq, X.dk, X.dv, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_backward: %s", label, moba_last_error());
    CHECK(ref_count_poison(dt, X.dq, P.nq) + ref_count_poison(dt, X.dk, P.nkv) + ref_count_poison(dt, X.dv, P.nkv) == 0,
          "%s: backward left gradients unwritten", label);

    double e_o = ref_rel_err_storage(dt, X.o, o, P.nq), e_lse = ref_rel_err_f32(X.lse, lse, P.nlse);
    double e_dq = ref_rel_err_storage(dt, X.dq, dq, P.nq), e_dk = ref_rel_err_storage(dt, X.dk, dk, P.nkv),
           e_dv = ref_rel_err_storage(dt, X.dv, dv, P.nkv);
    printf("  %-36s o %.2e lse %.2e dq %.2e dk %.2e dv %.2e  route ties %zu\n", label, e_o, e_lse, e_dq, e_dk, e_dv,
           near_ties);
    CHECK(e_o <= tol_o[dt], "%s: o rel err %.3g > %.3g", label, e_o, tol_o[dt]);
    CHECK(e_lse <= tol_lse, "%s: lse rel err %.3g > %.3g", label, e_lse, tol_lse);
    CHECK(e_dq <= tol_grad[dt], "%s: dq rel err %.3g > %.3g", label, e_dq, tol_grad[dt]);
    CHECK(e_dk <= tol_grad[dt], "%s: dk rel err %.3g > %.3g", label, e_dk, tol_grad[dt]);
    CHECK(e_dv <= tol_grad[dt], "%s: dv rel err %.3g > %.3g", label, e_dv, tol_grad[dt]);

    /* top_k >= number of blocks: exactly causal attention (the reference and the library) */
    if (c->top_k >= max_blocks(&P)) {
        double *oc = check_malloc(P.nq * sizeof(double)), *lc = check_malloc(P.nlse * sizeof(double));
        double *dqc = check_malloc(P.nq * sizeof(double)), *dkc = check_malloc(P.nkv * sizeof(double)),
               *dvc = check_malloc(P.nkv * sizeof(double));
        ref_causal_forward(p, P.qd, P.kd, P.vd, oc, lc);
        ref_causal_backward(p, P.qd, P.kd, P.vd, P.doutd, dqc, dkc, dvc);
        double r_o = ref_rel_err(o, oc, P.nq), r_g = ref_rel_err(dq, dqc, P.nq) + ref_rel_err(dk, dkc, P.nkv) +
                                                     ref_rel_err(dv, dvc, P.nkv);
        CHECK(r_o < 1e-13 && r_g < 1e-12, "%s: reference with all blocks != causal reference (%.3g, %.3g)", label, r_o, r_g);
        double c_o = ref_rel_err_storage(dt, X.o, oc, P.nq), c_dq = ref_rel_err_storage(dt, X.dq, dqc, P.nq);
        double c_dk = ref_rel_err_storage(dt, X.dk, dkc, P.nkv), c_dv = ref_rel_err_storage(dt, X.dv, dvc, P.nkv);
        printf("  %-36s vs plain causal: o %.2e dq %.2e dk %.2e dv %.2e\n", "", c_o, c_dq, c_dk, c_dv);
        CHECK(c_o <= tol_o[dt] && c_dq <= tol_grad[dt] && c_dk <= tol_grad[dt] && c_dv <= tol_grad[dt],
              "%s: library != plain causal attention", label);
        free(oc), free(lc), free(dqc), free(dkc), free(dvc);
    }
    free(o), free(lse), free(dq), free(dk), free(dv), free(ref_sel), free(margin);
    outputs_free(&X);
    problem_free(&P);
}

/* Same bits with 1, 2 and 3 threads; same bits with a caller workspace of exactly the asked size;
 * one byte less is refused. */
static void check_determinism_and_workspace(const config *c, moba_dtype dt, ref_rng *rng) {
    problem P;
    problem_init(&P, c, dt, rng);
    outputs base, X;
    outputs_alloc(&base, &P);
    outputs_alloc(&X, &P);
    void *no_ws[3] = {NULL, NULL, NULL};
    size_t zero[3] = {0, 0, 0};
    char label[96];
    snprintf(label, sizeof label, "%s [%s]", c->name, dtype_name[dt]);

    P.p.num_threads = 1;
    outputs_poison(&base, &P);
    CHECK(run_all(&P, &base, no_ws, zero) == MOBA_OK, "%s: 1 thread: %s", label, moba_last_error());
    CHECK(ref_count_poison(dt, base.o, P.nq) + ref_count_poison(dt, base.dq, P.nq) == 0, "%s: unwritten output", label);
    for (int threads = 0; threads <= 3; threads++) { /* 0 = OpenMP's default */
        if (threads == 1) continue;
        P.p.num_threads = threads;
        outputs_poison(&X, &P);
        CHECK(run_all(&P, &X, no_ws, zero) == MOBA_OK, "%s: %d threads: %s", label, threads, moba_last_error());
        CHECK(same_bits(&base, &X, &P), "%s: %d threads give other bits than 1 thread", label, threads);
    }
    P.p.deterministic = 1;
    outputs_poison(&X, &P);
    CHECK(run_all(&P, &X, no_ws, zero) == MOBA_OK && same_bits(&base, &X, &P), "%s: deterministic=1 differs", label);
    P.p.deterministic = 0;

    /* caller workspace: exactly the size asked for (malloc'd to that size: ASan sees any overrun) */
    void *ws[3];
    size_t bytes[3];
    const moba_op ops[3] = {MOBA_OP_FORWARD, MOBA_OP_BACKWARD, MOBA_OP_ROUTE};
    for (int i = 0; i < 3; i++) {
        CHECK(moba_workspace_size(&P.p, ops[i], &bytes[i]) == MOBA_OK, "%s: workspace_size: %s", label, moba_last_error());
        size_t bytes_again = 0;
        P.p.num_threads = 1;
        moba_workspace_size(&P.p, ops[i], &bytes_again);
        CHECK(bytes_again == bytes[i], "%s: workspace size depends on num_threads (%zu vs %zu)", label, bytes_again, bytes[i]);
        P.p.num_threads = 3;
        ws[i] = check_malloc(bytes[i]);
        memset(ws[i], 0xcd, bytes[i]); /* garbage: the library must not rely on zeroed scratch */
    }
    printf("  %-36s workspace bytes: forward %zu backward %zu route %zu\n", label, bytes[0], bytes[1], bytes[2]);
    outputs_poison(&X, &P);
    CHECK(run_all(&P, &X, ws, bytes) == MOBA_OK, "%s: with workspace: %s", label, moba_last_error());
    CHECK(same_bits(&base, &X, &P), "%s: a caller workspace gives other bits than workspace=NULL", label);
    for (int i = 0; i < 3; i++) {
        if (bytes[i] == 0) continue;
        size_t short_bytes[3] = {bytes[0], bytes[1], bytes[2]};
        short_bytes[i]--;
        outputs_poison(&X, &P);
        moba_status st = run_all(&P, &X, ws, short_bytes);
        CHECK(st == MOBA_ERR_WORKSPACE_TOO_SMALL, "%s: op %d workspace one byte short: status %d", label, i, st);
    }
    for (int i = 0; i < 3; i++) free(ws[i]);
    outputs_free(&base);
    outputs_free(&X);
    problem_free(&P);
}

/* Every full block holds the same keys, so all history scores tie: a row in block j must select
 * blocks 0 .. top_k-2 (the lowest indices) and j. */
static void check_tie_break(moba_dtype dt, ref_rng *rng) {
    const config c = {"ties", 2, {53, 30}, 2, 1, 8, 6, 3, 0, 0};
    problem P;
    problem_init(&P, &c, dt, rng);
    size_t row = (size_t)c.hkv * c.d * P.esz;
    for (int s = 0; s < c.num_seqs; s++)
        for (int t = c.block; t < c.lens[s]; t++)
            memcpy((char *)P.k + (P.cu[s] + t) * row, (char *)P.k + (P.cu[s] + t % c.block) * row, row);
    int32_t *sel = check_malloc(P.nsel * sizeof(int32_t)), *want = check_malloc(P.nsel * sizeof(int32_t));
    for (int h = 0; h < c.hq; h++)
        for (int s = 0; s < c.num_seqs; s++)
            for (int t = 0; t < c.lens[s]; t++) {
                int j = t / c.block, m = c.top_k - 1 < j ? c.top_k - 1 : j;
                int32_t *w = want + ((size_t)h * P.p.total_tokens + P.cu[s] + t) * c.top_k;
                for (int i = 0; i < c.top_k; i++) w[i] = i < m ? i : i == m ? j : -1;
            }
    ref_poison_i32(sel, P.nsel);
    CHECK(moba_route(&P.p, P.q, P.k, sel, NULL, 0) == MOBA_OK, "ties: %s", moba_last_error());
    CHECK(!memcmp(sel, want, P.nsel * sizeof(int32_t)), "ties [%s]: the library does not break ties toward lower blocks",
          dtype_name[dt]);
    double *kd = ref_load(dt, P.k, P.nkv);
    ref_route(&P.p, P.qd, kd, sel, NULL);
    CHECK(!memcmp(sel, want, P.nsel * sizeof(int32_t)), "ties [%s]: the reference does not break ties toward lower blocks",
          dtype_name[dt]);
    free(kd), free(sel), free(want);
    problem_free(&P);
}

/* A NaN key in block 0 makes centroid 0 NaN; NaN ranks lowest, so every row that has another
 * history block to choose must not pick block 0, and its output stays finite. */
static void check_nan_ranks_lowest(moba_dtype dt, ref_rng *rng) {
    const config c = {"NaN centroid", 1, {40}, 1, 1, 4, 8, 2, 0, 0};
    problem P;
    problem_init(&P, &c, dt, rng);
    double nan = NAN;
    ref_from_double(dt, &nan, 1, (char *)P.k + 3 * P.esz); /* token 0, element 3 */
    P.kd[3] = NAN;
    int32_t *sel = check_malloc(P.nsel * sizeof(int32_t)), *ref_sel = check_malloc(P.nsel * sizeof(int32_t));
    ref_poison_i32(sel, P.nsel);
    CHECK(moba_route(&P.p, P.q, P.k, sel, NULL, 0) == MOBA_OK, "NaN: %s", moba_last_error());
    ref_route(&P.p, P.qd, P.kd, ref_sel, NULL);
    CHECK(!memcmp(sel, ref_sel, P.nsel * sizeof(int32_t)), "NaN [%s]: routing differs from the reference", dtype_name[dt]);
    int picked = 0;
    for (int t = 2 * c.block; t < c.lens[0]; t++) picked += sel[t * c.top_k] == 0;
    CHECK(picked == 0, "NaN [%s]: %d rows in blocks >= 2 selected the NaN block 0", dtype_name[dt], picked);
    void *o = check_malloc(P.nq * P.esz);
    CHECK(moba_forward(&P.p, P.q, P.k, P.v, o, NULL, NULL, 0) == MOBA_OK, "NaN: %s", moba_last_error());
    double *od = ref_load(dt, o, P.nq);
    int nonfinite = 0;
    for (size_t i = (size_t)2 * c.block * c.d; i < P.nq; i++) nonfinite += !isfinite(od[i]);
    CHECK(nonfinite == 0, "NaN [%s]: %d outputs of rows in blocks >= 2 are not finite", dtype_name[dt], nonfinite);
    free(sel), free(ref_sel), free(o), free(od);
    problem_free(&P);
}

/* moba_params.block_idx. (1) The forward writes the selection it used there: moba_route's output, with
 * o and lse bitwise those of a forward without it; the backward that reads it gives the bits of one that
 * routes again. (2) The backward follows the selection it is given: a random one (not the routing's),
 * with o and lse of the reference over it, against ref_backward_sel of that selection. */
static void check_given_selection(const config *c, moba_dtype dt, ref_rng *rng) {
    problem P;
    problem_init(&P, c, dt, rng);
    moba_params *p = &P.p;
    outputs A, X;
    outputs_alloc(&A, &P), outputs_alloc(&X, &P);
    outputs_poison(&A, &P), outputs_poison(&X, &P);
    char label[96];
    snprintf(label, sizeof label, "%s [%s]", c->name, dtype_name[dt]);
    int32_t *given = check_malloc(P.nsel * sizeof(int32_t));
    ref_poison_i32(given, P.nsel);

    moba_status st = run_all(&P, &A, (void *[3]){NULL, NULL, NULL}, (size_t[3]){0, 0, 0});
    CHECK(st == MOBA_OK, "%s: route/forward/backward: %s", label, moba_last_error());
    p->block_idx = given;
    st = moba_forward(p, P.q, P.k, P.v, X.o, X.lse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward with block_idx: %s", label, moba_last_error());
    CHECK(!memcmp(given, A.sel, P.nsel * sizeof(int32_t)), "%s: the forward's block_idx != moba_route's", label);
    CHECK(!memcmp(X.o, A.o, P.nq * P.esz) && !memcmp(X.lse, A.lse, P.nlse * sizeof(float)),
          "%s: o / lse changed when the forward also wrote block_idx", label);
    st = moba_backward(p, P.dout, P.q, P.k, P.v, X.o, X.lse, X.dq, X.dk, X.dv, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_backward with block_idx: %s", label, moba_last_error());
    CHECK(!memcmp(X.dq, A.dq, P.nq * P.esz) && !memcmp(X.dk, A.dk, P.nkv * P.esz) &&
              !memcmp(X.dv, A.dv, P.nkv * P.esz),
          "%s: the backward reading the forward's block_idx != the one routing again", label);

    if (c->top_k > 1 && c->top_k < max_blocks(&P)) { /* routed: another selection changes the gradients */
        ref_random_selection(p, rng, given);
        double *o = check_malloc(P.nq * sizeof(double)), *lse = check_malloc(P.nlse * sizeof(double));
        double *dq = check_malloc(P.nq * sizeof(double)), *dk = check_malloc(P.nkv * sizeof(double)),
               *dv = check_malloc(P.nkv * sizeof(double));
        ref_forward_sel(p, given, P.qd, P.kd, P.vd, o, lse);
        ref_backward_sel(p, given, P.qd, P.kd, P.vd, P.doutd, dq, dk, dv);
        outputs_poison(&X, &P);
        ref_from_double(dt, o, P.nq, X.o);
        for (size_t i = 0; i < P.nlse; i++) X.lse[i] = (float)lse[i];
        st = moba_backward(p, P.dout, P.q, P.k, P.v, X.o, X.lse, X.dq, X.dk, X.dv, NULL, 0);
        CHECK(st == MOBA_OK, "%s: moba_backward with a random block_idx: %s", label, moba_last_error());
        double e_dq = ref_rel_err_storage(dt, X.dq, dq, P.nq), e_dk = ref_rel_err_storage(dt, X.dk, dk, P.nkv),
               e_dv = ref_rel_err_storage(dt, X.dv, dv, P.nkv);
        /* the routing's gradients are another function: far from these */
        double e_routed = ref_rel_err_storage(dt, A.dk, dk, P.nkv);
        printf("  %-36s given selection: dq %.2e dk %.2e dv %.2e (routed dk vs it %.2e)\n", label, e_dq, e_dk, e_dv,
               e_routed);
        CHECK(e_dq <= tol_grad[dt] && e_dk <= tol_grad[dt] && e_dv <= tol_grad[dt],
              "%s: backward over a given selection: dq %.3g dk %.3g dv %.3g > %.3g", label, e_dq, e_dk, e_dv,
              tol_grad[dt]);
        CHECK(e_routed > 10 * tol_grad[dt], "%s: the random selection did not change dk (%.3g): a weak test", label,
              e_routed);
        free(o), free(lse), free(dq), free(dk), free(dv);
    }
    free(given);
    outputs_free(&A), outputs_free(&X);
    problem_free(&P);
}

int main(void) {
    uint64_t seed = 20260101;
    const char *env = getenv("MOBA_TEST_SEED");
    if (env && *env) seed = strtoull(env, NULL, 0);
    printf("test_random: seed %llu (set MOBA_TEST_SEED to change)\n", (unsigned long long)seed);
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    printf("library vs float64 reference (relative Frobenius error):\n");
    for (int i = 0; i < NUM_CONFIGS; i++)
        for (int dt = 0; dt < 3; dt++) check_case(&configs[i], (moba_dtype)dt, &rng);
    printf("determinism and workspace:\n");
    check_determinism_and_workspace(&configs[1], MOBA_DTYPE_F32, &rng);
    check_determinism_and_workspace(&configs[0], MOBA_DTYPE_BF16, &rng);
    check_determinism_and_workspace(&configs[4], MOBA_DTYPE_F16, &rng);
    printf("the forward's selection kept for the backward (moba_params.block_idx):\n");
    for (int i = 0; i < NUM_CONFIGS; i++) check_given_selection(&configs[i], (moba_dtype)(i % 3), &rng);
    for (int dt = 0; dt < 3; dt++) check_tie_break((moba_dtype)dt, &rng);
    for (int dt = 0; dt < 3; dt++) check_nan_ranks_lowest((moba_dtype)dt, &rng);
    return check_done("test_random");
}
