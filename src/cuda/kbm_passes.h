/*
 * How the key-block-major forward (forward_kbm.cu) cuts the pairs of its handed-off units into passes, in
 * plain C so that a CPU test (tests/test_kbm_passes.c) checks the arithmetic.
 *
 * The partials buffer holds cap pairs. Which units are handed off is known on the device only, so the host
 * plans for all of them (all pairs) and the device numbers the pairs of the handed-off ones, in unit order,
 * from cbase (their prefix sums); a unit belongs to pass min(cbase / step, npasses - 1). With
 * step = cap - unit_max (unit_max: the most pairs one unit has), the units of a pass start within step
 * pairs of each other, so the pass holds fewer than step + unit_max = cap pairs; the last pass starts at
 * (npasses - 1) step >= all - step, so it holds fewer than step. One pass when everything fits.
 */
#ifndef MOBA_KBM_PASSES_H
#define MOBA_KBM_PASSES_H

#include <limits.h>
#include <stdint.h>

#ifdef __CUDACC__
#define KBM_HD __host__ __device__
#else
#define KBM_HD
#endif

typedef struct {
    int64_t cap;     /* partial slots: a pass's pairs are numbered 0 .. cap - 1 */
    int64_t step;    /* pass q: the units whose first pair is in [q * step, (q + 1) * step) */
    int64_t npasses; /* the passes launched */
} kbm_passes;

/* cap: the pairs the memory budget allows; all: the pairs if every unit is handed off; unit_max > 0. The
 * caller makes sure 2 * unit_max <= INT_MAX / 2 (pair slots are int32). */
static inline kbm_passes kbm_passes_plan(int64_t cap, int64_t all, int64_t unit_max) {
    kbm_passes p;
    if (cap < 2 * unit_max) cap = 2 * unit_max;
    if (cap > INT_MAX / 2) cap = INT_MAX / 2;
    if (cap >= all) cap = all > 0 ? all : 1;
    p.cap = cap;
    p.step = all <= cap ? cap : cap - unit_max;
    p.npasses = all <= cap ? 1 : (all + p.step - 1) / p.step;
    return p;
}

/* The pass of a handed-off unit whose first pair is cbase. */
static inline KBM_HD int64_t kbm_pass_of(int64_t cbase, int64_t step, int64_t npasses) {
    const int64_t q = cbase / step;
    return q < npasses - 1 ? q : npasses - 1;
}

#endif
