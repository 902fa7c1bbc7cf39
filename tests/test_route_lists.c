/*
 * Routing's row threshold (src/cuda/route_lists.h) on the CPU.
 *
 * 1. The bound itself: for random lists A and B (k1 live keys each, descending), the threshold must be
 *    <= the k1-th best key of their union (no chosen score lies below it) and equal to the k1-th best of
 *    the union with B's keys cut as published (exact up to the cut).
 * 2. The scan it serves: a model of route.cu's two half-row lists over 64-centroid chunks (each half keeps
 *    its best k1 of 32 scores per chunk by insertion in block order, candidates filtered by the
 *    threshold, the lists merged at the end) must choose the same blocks as a brute-force top k1 (score
 *    order, ties to the lower block, NaN lowest) on random rows, rows of small integers (long runs of
 *    exact ties), tiny scores, rising scores and rows with NaN, +-inf and +-0. Both thresholds are
 *    modelled: the row's (the default since v26) and the higher of the two halves' own (ROWTHR=0).
 * 3. What it is for: on random rows of the 64K target (k1 = 15, 256..511 history blocks) the row's
 *    threshold must let at most 80% of the halves' insertions through (a model; ~69% expected).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/cuda/route_lists.h" /* internal to the CUDA backend, plain C */
#include "check.h"

#define CHUNK 64
#define HALF 32
#define PUB_STRIDE 3 /* any row stride; the kernel's is 64 */

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static int next_in(int n) { return (int)(next_u64() % (uint64_t)n); } /* 0 .. n - 1 */
static double next_unit(void) { return ((next_u64() >> 11) + 0.5) / 9007199254740992.0; }
static float next_normal(void) { return (float)(sqrt(-2.0 * log(next_unit())) * cos(6.283185307179586 * next_unit())); }

static int float_bits(float x) {
    int b;
    memcpy(&b, &x, sizeof b);
    return b;
}
static float bits_float(int b) {
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}
/* route.cu's order key (NaN lowest, -0 == +0), scan key (NaN above an empty slot) and threshold score */
static int order_key(float s) {
    if (s != s) return INT_MIN;
    if (s == 0.0f) return 0;
    int b = float_bits(s);
    return b >= 0 ? b : b ^ 0x7fffffff;
}
static int scan_key(float s) {
    int k = order_key(s);
    return k == INT_MIN ? INT_MIN + 1 : k;
}
static float key_score(int key) {
    if (key == INT_MIN || key == INT_MIN + 1) return -INFINITY;
    return bits_float(key >= 0 ? key : key ^ 0x7fffffff);
}

/* Inserts (key, blk) before the first slot it beats strictly (the kernel's rule: a thread sees its blocks
 * in increasing order, so an equal key already listed keeps its place above). */
static void insert(int *ok, int *bl, int kr, int key, int blk) {
    int pos = 0;
    while (!(key > ok[pos])) pos++;
    for (int i = kr - 1; i > pos; i--) ok[i] = ok[i - 1], bl[i] = bl[i - 1];
    ok[pos] = key;
    bl[pos] = blk;
}

typedef struct {
    long long key;
    int blk;
} cand;
static int cand_desc(const void *a, const void *b) {
    long long x = ((const cand *)a)->key, y = ((const cand *)b)->key;
    return x < y ? 1 : x > y ? -1 : 0;
}
static int int_asc(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
/* The merge's 64-bit key: score order, then the lower block; NaN back to lowest */
static long long merge_key(int ok, int blk) {
    return (long long)(ok == INT_MIN + 1 ? INT_MIN : ok) * 4294967296LL + (long long)(0xffffffffu - (unsigned)blk);
}

/* Brute force: the best k1 of j scores, ties to the lower block, ascending. */
static void reference(const float *s, int j, int k1, int *out) {
    cand *c = check_malloc(sizeof(cand) * (size_t)j);
    for (int i = 0; i < j; i++) c[i].key = merge_key(order_key(s[i]), i), c[i].blk = i;
    qsort(c, (size_t)j, sizeof(cand), cand_desc);
    for (int e = 0; e < k1; e++) out[e] = c[e].blk;
    qsort(out, (size_t)k1, sizeof(int), int_asc);
    free(c);
}

/* The kernel's scan of one row (j scores, k1 < j): returns the insertions it made after the first chunk
 * (the model inserts that chunk's scores too: the same list as the kernel's sorting network). */
static long scan_row(const float *s, int j, int k1, int row_thr, int *out) {
    const int kr = k1 <= 4 ? 4 : 16, p = kr - k1;
    int ok[2][16], bl[2][16];
    uint16_t pub[2][16 * PUB_STRIDE];
    long inserts = 0;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < kr; i++) ok[h][i] = i < p ? INT_MAX : INT_MIN, bl[h][i] = 0;
    for (int c0 = 0; c0 < j; c0 += CHUNK) {
        float thr[2] = {-INFINITY, -INFINITY};
        if (c0 > 0) { /* both lists as they were after the chunk before */
            for (int h = 0; h < 2; h++) route_publish(ok[h], kr, pub[h], PUB_STRIDE);
            for (int h = 0; h < 2; h++)
                thr[h] = row_thr ? key_score(route_row_threshold_key(ok[h], kr, pub[1 - h], PUB_STRIDE, k1))
                                 : fmaxf(key_score(ok[h][kr - 1]), key_score(ok[1 - h][kr - 1]));
        }
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < HALF; i++) {
                const int b = c0 + h * HALF + i;
                if (b >= j || s[b] < thr[h]) continue;
                const int key = scan_key(s[b]);
                if (key > ok[h][kr - 1]) {
                    insert(ok[h], bl[h], kr, key, b);
                    inserts += c0 > 0; /* the first chunk is sorted (16-entry lists), not inserted */
                }
            }
    }
    cand c[32];
    int n = 0;
    for (int h = 0; h < 2; h++)
        for (int i = p; i < kr; i++)
            if (ok[h][i] != INT_MIN) c[n].key = merge_key(ok[h][i], bl[h][i]), c[n++].blk = bl[h][i];
    qsort(c, (size_t)n, sizeof(cand), cand_desc);
    for (int e = 0; e < k1; e++) out[e] = e < n ? c[e].blk : -1;
    qsort(out, (size_t)k1, sizeof(int), int_asc);
    return inserts;
}

static int key_desc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}
/* A random list of k1 live keys (descending; some equal, some empty slots) in kr slots. */
static void random_list(int *ok, int kr, int k1) {
    int v[16];
    for (int i = 0; i < k1; i++) {
        const int r = next_in(16);
        v[i] = r == 0 ? INT_MIN : r == 1 ? INT_MIN + 1 : r < 4 ? (next_in(5) - 2) * 65536 : (int)next_u64();
    }
    qsort(v, (size_t)k1, sizeof(int), key_desc);
    for (int i = 0; i < kr; i++) ok[i] = i < kr - k1 ? INT_MAX : v[i - (kr - k1)];
}
static int kth_of_union(const int *a, const int *b, int kr, int k1) { /* live slots of both, k1-th best */
    int v[32], n = 0;
    for (int i = kr - k1; i < kr; i++) v[n++] = a[i], v[n++] = b[i];
    qsort(v, (size_t)n, sizeof(int), key_desc);
    return v[k1 - 1];
}

static void check_bound(void) {
    int bad_low = 0, inexact = 0, cases = 0;
    for (int t = 0; t < 200000; t++) {
        const int k1 = 1 + next_in(16), kr = k1 <= 4 ? 4 : 16;
        int a[16], b[16], b_cut[16];
        uint16_t pub[16 * PUB_STRIDE];
        random_list(a, kr, k1);
        random_list(b, kr, k1);
        route_publish(b, kr, pub, PUB_STRIDE);
        for (int i = 0; i < kr; i++) b_cut[i] = i < kr - k1 ? INT_MAX : route_pub_key(route_pub_cut(b[i]));
        const int tk = route_row_threshold_key(a, kr, pub, PUB_STRIDE, k1);
        bad_low += tk > kth_of_union(a, b, kr, k1);     /* would reject a score the row may choose */
        inexact += tk != kth_of_union(a, b_cut, kr, k1); /* not exact up to the cut */
        cases++;
    }
    CHECK(bad_low == 0, "threshold above the union's k1-th best in %d of %d cases", bad_low, cases);
    CHECK(inexact == 0, "threshold != the cut union's k1-th best in %d of %d cases", inexact, cases);
    printf("bound: %d random list pairs (k1 1..16): above the union's k1-th best %d, not its k1-th best with "
           "B cut %d\n", cases, bad_low, inexact);
}

static float random_score(int kind, int i, int j) {
    switch (kind) {
    case 0: return next_normal();
    case 1: return (float)(next_in(7) - 3); /* long runs of exact ties */
    case 2: return next_normal() * 1e-38f;  /* subnormal range */
    case 3: return next_normal() + 4.0f * (float)i / (float)j; /* rising: many insertions */
    default: {
        const int r = next_in(12);
        return r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : r == 3 ? -0.0f : r == 4 ? 0.0f : next_normal();
    }
    }
}

static void check_scan(void) {
    enum { JMAX = 700 };
    float *s = check_malloc(sizeof(float) * JMAX);
    int want[16], got[16];
    int rows = 0, bad[2] = {0, 0};
    for (int t = 0; t < 6000; t++) {
        const int kind = t % 5, j = 2 + next_in(JMAX - 1), k1 = 1 + next_in(16);
        if (k1 >= j) continue; /* every block: the kernel writes them without a scan */
        for (int i = 0; i < j; i++) s[i] = random_score(kind, i, j);
        reference(s, j, k1, want);
        for (int m = 0; m < 2; m++) {
            scan_row(s, j, k1, m, got);
            if (memcmp(got, want, sizeof(int) * (size_t)k1)) {
                if (bad[m]++ < 3)
                    fprintf(stderr, "row %d (kind %d, j %d, k1 %d, %s threshold): selection differs\n", t, kind, j,
                            k1, m ? "row" : "halves'");
            }
        }
        rows++;
    }
    CHECK(bad[1] == 0, "the row's threshold: %d of %d rows differ from brute force", bad[1], rows);
    CHECK(bad[0] == 0, "the halves' threshold: %d of %d rows differ from brute force", bad[0], rows);
    printf("scan: %d rows (random, ties, tiny, rising, NaN/inf/0), selections differing from brute force: "
           "row threshold %d, halves' threshold %d\n", rows, bad[1], bad[0]);

    long ins[2] = {0, 0};
    for (int t = 0; t < 2000; t++) { /* the 64K target: top_k 16, blocks 256..511 before the own one */
        const int j = 256 + next_in(256);
        for (int i = 0; i < j; i++) s[i] = next_normal();
        for (int m = 0; m < 2; m++) ins[m] += scan_row(s, j, 15, m, got);
    }
    const double ratio = (double)ins[1] / (double)ins[0];
    CHECK(ratio <= 0.8, "the row's threshold lets %.3f of the halves' insertions through", ratio);
    printf("insertions per row after the first chunk at k1 = 15, j = 256..511 (random): halves' threshold %.1f, "
           "row threshold %.1f (%.3f)\n", ins[0] / 2000.0, ins[1] / 2000.0, ratio);
    free(s);
}

int main(void) {
    check_bound();
    check_scan();
    return check_done("test_route_lists");
}
