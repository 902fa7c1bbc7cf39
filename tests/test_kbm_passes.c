/*
 * The CUDA forward's pass cut (src/cuda/kbm_passes.h) on the CPU: for random units (pairs per unit, which
 * are handed off) and budgets, number the handed-off units' pairs as the device does and check what the
 * kernels rely on: every pass index is in [0, npasses), passes come in unit order, a pass's pairs fit its
 * cap partial slots counted from pass * step, and the plan never asks for fewer than the pairs of a unit.
 */
#include <stdio.h>
#include <stdlib.h>

#include "../src/cuda/kbm_passes.h" /* internal to the CUDA backend, plain C */
#include "check.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static int64_t next_in(int64_t n) { /* 0 .. n - 1 */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int64_t)(rng % (uint64_t)n);
}

/* One configuration: units with pairs[u] (0 .. unit_max), handed off with probability share / 4. */
static void check_case(int units, int64_t unit_max, int64_t budget, int share, int *cases) {
    int64_t *pairs = check_malloc(sizeof(int64_t) * (size_t)units);
    int *flag = check_malloc(sizeof(int) * (size_t)units);
    int64_t all = 0;
    for (int u = 0; u < units; u++) {
        pairs[u] = next_in(8) == 0 ? 0 : 1 + next_in(unit_max); /* some own-block-only units */
        flag[u] = next_in(4) < share;
        all += pairs[u];
    }
    const kbm_passes p = kbm_passes_plan(budget, all, unit_max);
    CHECK(p.cap >= 1 && p.step >= 1 && p.npasses >= 1, "plan: cap %lld step %lld passes %lld",
          (long long)p.cap, (long long)p.step, (long long)p.npasses);
    CHECK(p.cap >= (all < 2 * unit_max ? all : 2 * unit_max), "cap %lld below a unit's pairs (all %lld, unit %lld)",
          (long long)p.cap, (long long)all, (long long)unit_max);
    CHECK(p.npasses == 1 || (p.npasses - 1) * p.step < all, "pass %lld would start past every pair",
          (long long)(p.npasses - 1));
    int64_t cbase = 0, prev = -1;
    int64_t lo = -1, hi = -1, q_open = -1; /* the open pass's first pair and end */
    for (int u = 0; u < units; u++) {
        if (!flag[u]) continue;
        const int64_t q = kbm_pass_of(cbase, p.step, p.npasses);
        CHECK(q >= 0 && q < p.npasses, "unit %d: pass %lld of %lld", u, (long long)q, (long long)p.npasses);
        CHECK(q >= prev, "unit %d: pass %lld after pass %lld", u, (long long)q, (long long)prev);
        if (q != q_open) lo = cbase, q_open = q;
        hi = cbase + pairs[u];
        /* its partial slots, counted from the pass's first pair q * step */
        CHECK(cbase >= q * p.step && hi - q * p.step <= p.cap,
              "unit %d (pairs %lld..%lld) outside pass %lld's slots [%lld, %lld)", u, (long long)cbase, (long long)hi,
              (long long)q, (long long)(q * p.step), (long long)(q * p.step + p.cap));
        CHECK(hi - lo <= p.cap, "pass %lld spans %lld pairs > cap %lld", (long long)q, (long long)(hi - lo),
              (long long)p.cap);
        prev = q;
        cbase = hi;
    }
    (*cases)++;
    free(pairs);
    free(flag);
}

int main(void) {
    int cases = 0;
    for (int round = 0; round < 400; round++) {
        const int units = 1 + (int)next_in(3000);
        const int64_t unit_max = 128 * (1 + next_in(20));
        /* budgets from "everything in one pass" down to the smallest (tests' MOBA_CUDA_KBM_PAIRS=1) */
        const int64_t budget = next_in(3) == 0 ? 1 : 1 + next_in((int64_t)units * unit_max);
        check_case(units, unit_max, budget, (int)next_in(5), &cases);
    }
    /* edges: nothing handed off, no pairs at all, one unit */
    check_case(1, 128, 1, 4, &cases);
    check_case(50, 128, 1, 0, &cases);
    const kbm_passes none = kbm_passes_plan(1000, 0, 128);
    CHECK(none.npasses == 1 && none.cap == 1 && kbm_pass_of(0, none.step, none.npasses) == 0,
          "no pairs: %lld passes, cap %lld", (long long)none.npasses, (long long)none.cap);
    printf("test_kbm_passes: %d configurations\n", cases);
    return check_done("test_kbm_passes");
}
