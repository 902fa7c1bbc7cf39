/*
 * Gradients against finite differences of the forward, for L = <do, o>:
 *   d/dh L(X + h u) at h = 0  must equal  <dL/dX, u>   for X in q, k, v and random directions u.
 *
 * 1. ref64 in double: central differences with h = 1e-5 over a fixed selection, against
 *    ref_backward_sel (checks the reference's backward from its own forward; ~1e-9).
 * 2. the library (fp32): inputs on a grid of 2^-16 and directions u in {-1, 0, 1}, so X +- h u is
 *    exact in fp32 for h a power of two; central differences at h and h/2 combined by Richardson
 *    extrapolation, D = (4 D(h/2) - D(h)) / 3, cancel the h^2 term. Routing is not differentiable,
 *    so a direction counts only if moba_route gives the same selection at X + h u and X - h u.
 */
#include <math.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "ref64.h"

/* Step: large enough that fp32 rounding of o (~1e-7 relative) stays small against h, small enough
 * that the routing rarely changes; the bound is relative to |g| |u|. */
#define H_STEP (1.0 / 512)
#define LIB_TOL 1e-4

enum { HQ = 2, HKV = 1, D = 8, TOTAL = 48, DIRECTIONS = 3, MAX_TRIES = 12 };
static int32_t cu[3] = {0, 29, TOTAL};
static const size_t NQ = (size_t)TOTAL * HQ * D, NKV = (size_t)TOTAL * HKV * D;

static void params(moba_params *p) {
    moba_params_init(p);
    ref_set_problem(p, MOBA_DTYPE_F32, 2, cu, HQ, HKV, D, 6, 2);
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- 1. the reference ---- */

static double ref_loss(const moba_params *p, const int32_t *sel, const double *x[3], const double *dout) {
    double *o = check_malloc(NQ * sizeof(double));
    ref_forward_sel(p, sel, x[0], x[1], x[2], o, NULL);
    double L = dot(dout, o, NQ);
    free(o);
    return L;
}

static void check_reference(ref_rng *rng) {
    moba_params p;
    params(&p);
    double *q = check_malloc(NQ * sizeof(double)), *k = check_malloc(NKV * sizeof(double)),
           *v = check_malloc(NKV * sizeof(double)), *dout = check_malloc(NQ * sizeof(double));
    double *dq = check_malloc(NQ * sizeof(double)), *dk = check_malloc(NKV * sizeof(double)),
           *dv = check_malloc(NKV * sizeof(double));
    for (size_t i = 0; i < NQ; i++) q[i] = ref_rng_normal(rng), dout[i] = ref_rng_normal(rng);
    for (size_t i = 0; i < NKV; i++) k[i] = ref_rng_normal(rng), v[i] = ref_rng_normal(rng);
    int32_t *sel = check_malloc((size_t)HQ * TOTAL * p.top_k * sizeof(int32_t));
    ref_route(&p, q, k, sel, NULL);
    ref_backward_sel(&p, sel, q, k, v, dout, dq, dk, dv);
    double *x[3] = {q, k, v}, *g[3] = {dq, dk, dv};
    size_t n[3] = {NQ, NKV, NKV};
    const char *name[3] = {"q", "k", "v"};
    const double h = 1e-5;
    for (int t = 0; t < 3; t++) {
        double *u = check_malloc(n[t] * sizeof(double)), *base = check_malloc(n[t] * sizeof(double));
        for (int r = 0; r < DIRECTIONS; r++) {
            for (size_t i = 0; i < n[t]; i++) u[i] = ref_rng_normal(rng);
            memcpy(base, x[t], n[t] * sizeof(double));
            const double *xs[3] = {q, k, v};
            for (size_t i = 0; i < n[t]; i++) x[t][i] = base[i] + h * u[i];
            double lp = ref_loss(&p, sel, xs, dout);
            for (size_t i = 0; i < n[t]; i++) x[t][i] = base[i] - h * u[i];
            double lm = ref_loss(&p, sel, xs, dout);
            memcpy(x[t], base, n[t] * sizeof(double));
            double fd = (lp - lm) / (2 * h), an = dot(g[t], u, n[t]), err = fabs(fd - an) / fabs(an);
            printf("  ref64   d%s . u: analytic % .10f  finite diff % .10f  rel err        %.1e\n", name[t], an, fd, err);
            CHECK(err < 1e-7, "ref64 d%s disagrees with finite differences: %.3g", name[t], err);
        }
        free(u), free(base);
    }
    free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dv), free(sel);
}

/* ---- 2. the library ---- */

static double lib_loss(const moba_params *p, const float *x[3], const double *dout) {
    float *o = check_malloc(NQ * sizeof(float));
    CHECK_FATAL(moba_forward(p, x[0], x[1], x[2], o, NULL, NULL, 0) == MOBA_OK, "forward: %s", moba_last_error());
    double L = 0;
    for (size_t i = 0; i < NQ; i++) L += dout[i] * o[i];
    free(o);
    return L;
}

static int same_routing(const moba_params *p, const float *q, const float *k, const int32_t *want) {
    size_t n = (size_t)HQ * TOTAL * p->top_k;
    int32_t *sel = check_malloc(n * sizeof(int32_t));
    CHECK_FATAL(moba_route(p, q, k, sel, NULL, 0) == MOBA_OK, "route: %s", moba_last_error());
    int same = !memcmp(sel, want, n * sizeof(int32_t));
    free(sel);
    return same;
}

static float on_grid(double x) { return (float)(nearbyint(x * 65536.0) / 65536.0); }

static void check_library(ref_rng *rng) {
    moba_params p;
    params(&p);
    float *q = check_malloc(NQ * sizeof(float)), *k = check_malloc(NKV * sizeof(float)),
          *v = check_malloc(NKV * sizeof(float)), *dout = check_malloc(NQ * sizeof(float));
    float *o = check_malloc(NQ * sizeof(float)), *lse = check_malloc((size_t)HQ * TOTAL * sizeof(float));
    float *dq = check_malloc(NQ * sizeof(float)), *dk = check_malloc(NKV * sizeof(float)),
          *dv = check_malloc(NKV * sizeof(float));
    for (size_t i = 0; i < NQ; i++) q[i] = on_grid(ref_rng_normal(rng)), dout[i] = on_grid(ref_rng_normal(rng));
    for (size_t i = 0; i < NKV; i++) k[i] = on_grid(ref_rng_normal(rng)), v[i] = on_grid(ref_rng_normal(rng));
    double *doutd = ref_load(MOBA_DTYPE_F32, dout, NQ);
    CHECK_FATAL(moba_forward(&p, q, k, v, o, lse, NULL, 0) == MOBA_OK, "forward: %s", moba_last_error());
    CHECK_FATAL(moba_backward(&p, dout, q, k, v, o, lse, dq, dk, dv, NULL, 0) == MOBA_OK, "backward: %s", moba_last_error());
    size_t nsel = (size_t)HQ * TOTAL * p.top_k;
    int32_t *sel = check_malloc(nsel * sizeof(int32_t));
    CHECK_FATAL(moba_route(&p, q, k, sel, NULL, 0) == MOBA_OK, "route: %s", moba_last_error());

    float *x[3] = {q, k, v}, *g[3] = {dq, dk, dv};
    size_t n[3] = {NQ, NKV, NKV};
    const char *name[3] = {"q", "k", "v"};
    const double h = H_STEP; /* X +- h u and X +- h/2 u stay exact on the 2^-16 grid */
    for (int t = 0; t < 3; t++) {
        float *base = check_malloc(n[t] * sizeof(float));
        double *u = check_malloc(n[t] * sizeof(double));
        memcpy(base, x[t], n[t] * sizeof(float));
        int done = 0, tries = 0;
        while (done < DIRECTIONS && tries++ < MAX_TRIES) {
            for (size_t i = 0; i < n[t]; i++) u[i] = (double)(int)(ref_rng_next(rng) % 3) - 1.0;
            double Dh[2];
            int stable = 1;
            for (int s = 0; s < 2 && stable; s++) {
                double step = s == 0 ? h : h / 2, L[2];
                for (int sign = 0; sign < 2; sign++) {
                    for (size_t i = 0; i < n[t]; i++) x[t][i] = (float)(base[i] + (sign ? -step : step) * u[i]);
                    stable &= same_routing(&p, q, k, sel);
                    const float *xs[3] = {q, k, v};
                    L[sign] = lib_loss(&p, xs, doutd);
                }
                Dh[s] = (L[0] - L[1]) / (2 * step);
            }
            memcpy(x[t], base, n[t] * sizeof(float));
            if (!stable) {
                printf("  library d%s: direction %d changes the routing, another one\n", name[t], tries);
                continue;
            }
            /* error relative to |g| |u|, the size <g, u> has when g and u line up: a direction
             * nearly orthogonal to g must not turn fp32 noise into a large relative error */
            double fd = (4 * Dh[1] - Dh[0]) / 3, an = 0, gg = 0, uu = 0;
            for (size_t i = 0; i < n[t]; i++) an += g[t][i] * u[i], gg += (double)g[t][i] * g[t][i], uu += u[i] * u[i];
            double err = fabs(fd - an) / (sqrt(gg) * sqrt(uu));
            printf("  library d%s . u: analytic % .7f  finite diff % .7f  err / (|g| |u|) %.1e\n", name[t], an, fd, err);
            CHECK(err < LIB_TOL, "library d%s disagrees with finite differences: %.3g", name[t], err);
            done++;
        }
        CHECK(done == DIRECTIONS, "library d%s: only %d directions kept the routing", name[t], done);
        free(base), free(u);
    }
    free(q), free(k), free(v), free(dout), free(o), free(lse), free(dq), free(dk), free(dv), free(sel), free(doutd);
}

int main(void) {
    ref_rng rng;
    ref_rng_seed(&rng, 777);
    printf("finite differences, L = <do, o>, routing fixed:\n");
    check_reference(&rng);
    check_library(&rng);
    return check_done("test_gradcheck");
}
