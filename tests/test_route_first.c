/*
 * Routing's first chunk by 32-bit keys (src/cuda/route_first.h), checked on the CPU:
 * 1. Exact where it says so: whenever route_first32 returns 1, its list equals the 64-bit path's (the
 *    32 scores sorted by score, ties to the lower block, the best 16 shifted down by 16 - k1 slots with
 *    padding), on rows of random, near-equal (a few units in the last place apart), tied, tiny,
 *    NaN / +-inf / +-0 scores, every n in 0..32 and k1 in 1..16.
 * 2. It declines where the 32-bit order is wrong: rows built so that two of the best 17 differ only in
 *    their low 5 bits, in the order the slot bits reverse, must return 0.
 * 3. What it is for: on random rows it must take the fast path almost always (>= 99%).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/cuda/route_first.h" /* internal to the CUDA backend, plain C */
#include "check.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static double uniform(void) { return (next_u32() + 0.5) / 4294967296.0; }
static float normal(void) { return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform())); }

/* An independent order key (not the header's): the float's bits made monotonic, NaN lowest, -0 == +0. */
static int ref_key(float s) {
    if (isnan(s)) return INT_MIN + 1;
    if (s == 0.0f) return 0;
    int32_t b;
    memcpy(&b, &s, sizeof b);
    return b >= 0 ? b : b ^ 0x7fffffff;
}

typedef struct {
    int key, blk;
} cand;
static int cand_desc(const void *x, const void *y) {
    const cand *a = (const cand *)x, *b = (const cand *)y;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return a->blk < b->blk ? -1 : (a->blk > b->blk);
}

/* The 64-bit path's list (route.cu, first chunk with a.sort_first). */
static void ref_list(const float *s, int n, int blk0, int k1, int *sok, int *sbl) {
    cand c[ROUTE_FIRST_N];
    for (int i = 0; i < n; i++) c[i].key = ref_key(s[i]), c[i].blk = blk0 + i;
    qsort(c, (size_t)n, sizeof(cand), cand_desc);
    const int p = ROUTE_FIRST_KR - k1;
    for (int i = 0; i < ROUTE_FIRST_KR; i++) {
        if (i < p) {
            sok[i] = INT_MAX, sbl[i] = 0;
        } else if (i - p < n) {
            sok[i] = c[i - p].key, sbl[i] = c[i - p].blk;
        } else {
            sok[i] = INT_MIN, sbl[i] = -1; /* empty */
        }
    }
}

static float ulps(float x, int d) { /* d units in the last place above x (towards +inf) */
    for (int i = 0; i < d; i++) x = nextafterf(x, INFINITY);
    return x;
}

enum { RANDOM, NEAR, TIED, TINY, SPECIAL, KINDS };

static void make_row(int kind, float *s) {
    switch (kind) {
    case RANDOM:
        for (int i = 0; i < ROUTE_FIRST_N; i++) s[i] = normal() * 4.0f;
        break;
    case NEAR: { /* clusters of scores a few ulps apart, in both orders */
        const float base = normal();
        for (int i = 0; i < ROUTE_FIRST_N; i++)
            s[i] = next_u32() % 2 ? ulps(base, (int)(next_u32() % 64)) : normal() * 0.01f + base;
        break;
    }
    case TIED:
        for (int i = 0; i < ROUTE_FIRST_N; i++) s[i] = (float)(int)(next_u32() % 5) - 2.0f;
        break;
    case TINY:
        for (int i = 0; i < ROUTE_FIRST_N; i++) s[i] = normal() * 1e-42f; /* subnormal */
        break;
    default: {
        static const float sp[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1.0f, -1.0f};
        for (int i = 0; i < ROUTE_FIRST_N; i++)
            s[i] = next_u32() % 3 ? normal() : sp[next_u32() % (sizeof sp / sizeof sp[0])];
        break;
    }
    }
}

int main(void) {
    static const char *names[KINDS] = {"random", "near-equal", "tied", "subnormal", "NaN/inf/0"};
    long fast[KINDS] = {0}, rows[KINDS] = {0};
    float s[ROUTE_FIRST_N];
    int sok[ROUTE_FIRST_KR], sbl[ROUTE_FIRST_KR], rok[ROUTE_FIRST_KR], rbl[ROUTE_FIRST_KR];

    /* 1. exact where it says so */
    for (int it = 0; it < 400000; it++) {
        const int kind = it % KINDS;
        make_row(kind, s);
        const int n = it % 7 == 0 ? (int)(next_u32() % (ROUTE_FIRST_N + 1)) : ROUTE_FIRST_N;
        const int k1 = 1 + (int)(next_u32() % ROUTE_FIRST_KR), blk0 = (int)(next_u32() % 2) * ROUTE_FIRST_N;
        const int ok = route_first32(s, n, blk0, k1, sok, sbl);
        rows[kind] += n == ROUTE_FIRST_N;
        fast[kind] += ok && n == ROUTE_FIRST_N;
        if (!ok) continue;
        CHECK(n > ROUTE_FIRST_KR, "fast path taken with %d scores", n);
        ref_list(s, n, blk0, k1, rok, rbl);
        for (int i = 0; i < ROUTE_FIRST_KR; i++)
            CHECK(sok[i] == rok[i] && sbl[i] == rbl[i], "%s row %d (n %d, k1 %d), slot %d: (%d, %d) vs (%d, %d)",
                  names[kind], it, n, k1, i, sok[i], sbl[i], rok[i], rbl[i]);
    }
    for (int k = 0; k < KINDS; k++)
        printf("%-11s rows of 32 scores: fast path %.4f of %ld\n", names[k], (double)fast[k] / rows[k], rows[k]);

    /* 2. it declines where the 32-bit order would be wrong: two scores among the best 17 one ulp apart,
     * the larger in the later slot (its slot bits are lower), the rest well below */
    long declined = 0, built = 0;
    for (int it = 0; it < 20000; it++) {
        for (int i = 0; i < ROUTE_FIRST_N; i++) s[i] = -10.0f - (float)i; /* distinct, low */
        float x;
        do x = 1.0f + (float)uniform(); /* low 5 bits of its key below 31: x and the next float share the rest */
        while ((ref_key(x) & 31) == 31);
        const int a = (int)(next_u32() % 31), b = a + 1 + (int)(next_u32() % (31 - a));
        s[a] = x, s[b] = nextafterf(x, INFINITY);
        for (int i = 0; i < 15; i++) { /* up to 15 more scores above them: the pair stays in the best 17 */
            const int c = (int)(next_u32() % ROUTE_FIRST_N);
            if (c != a && c != b && next_u32() % 2) s[c] = 3.0f + (float)i;
        }
        const int k1 = 1 + (int)(next_u32() % ROUTE_FIRST_KR);
        built++;
        declined += !route_first32(s, ROUTE_FIRST_N, 0, k1, sok, sbl);
    }
    CHECK(declined == built, "declined %ld of %ld rows whose 32-bit order is wrong", declined, built);
    printf("rows with a reversed near-equal pair in the best 17: declined %ld of %ld\n", declined, built);

    /* 3. what it is for */
    CHECK((double)fast[RANDOM] / rows[RANDOM] >= 0.99, "fast path on %.4f of random rows, want >= 0.99",
          (double)fast[RANDOM] / rows[RANDOM]);

    return check_done("test_route_first");
}
