/*
 * Routing's first chunk by 32-bit keys (route.cu, 16-slot lists; the default since v28,
 * MOBA_CUDA_ROUTE_FIRST32=0 turns it off), in plain C so that a CPU test (tests/test_route_first.c)
 * checks it against the 64-bit sort it shortcuts.
 *
 * A half-row thread's first chunk passes every score (its list is empty), so the kernel sorts its 32
 * scores and keeps the best 16. As 64-bit keys (scan key high, ~block low) that is 240 compare-exchanges
 * of two compares and four selects each; the code run once per warp was 28% of the 64K route kernel's
 * instructions (profile of 2026-12-07, docs/cuda.md). Here each score's scan key has its low 5 bits
 * replaced by 31 - slot: the keys are distinct, a compare-exchange is one min and one max, and a key's
 * slot comes back from its low bits. Where neighbours in that order differ in their high 27 bits, their
 * exact order (score, then the lower block) is the same; so if the best 17 do, the best 16 and their order
 * are exact, and their exact keys are re-read by slot. Otherwise (scores equal or within 32 units in the
 * last place of each other, fewer than 17 scores) it returns 0 and the kernel sorts the 64-bit keys.
 */
#ifndef MOBA_ROUTE_FIRST_H
#define MOBA_ROUTE_FIRST_H

#include <limits.h>
#include <string.h>

#include "route_lists.h" /* ROUTE_HD, ROUTE_UNROLL */

#define ROUTE_FIRST_N 32  /* scores per half-row thread and chunk */
#define ROUTE_FIRST_KR 16 /* list slots */

/* The scan key of a score (route.cu's scan_key): ordered like the floats, -0 == +0, NaN just above an
 * empty slot (INT_MIN). */
ROUTE_HD int route_scan_key(float s) {
    if (s != s) return INT_MIN + 1;
    if (s == 0.0f) return 0;
    int b;
#ifdef __CUDA_ARCH__
    b = __float_as_int(s);
#else
    memcpy(&b, &s, sizeof b);
#endif
    return b >= 0 ? b : b ^ 0x7fffffff;
}

/* scores[0..n) of blocks blk0.. -> the list (sok, sbl): slots 0..15 - k1 padding (INT_MAX, block 0),
 * then the best k1 descending, ties to the lower block. Returns 0 (list unspecified) where the 32-bit
 * order may not be exact. */
ROUTE_HD int route_first32(const float *scores, int n, int blk0, int k1, int *sok, int *sbl) {
    int t[ROUTE_FIRST_N];
    ROUTE_UNROLL
    for (int i = 0; i < ROUTE_FIRST_N; i++)
        t[i] = i < n ? (int)(((unsigned)route_scan_key(scores[i]) & ~31u) | (unsigned)(31 - i)) : INT_MIN;
    /* descending bitonic network: every index a compile-time constant once unrolled */
    ROUTE_UNROLL
    for (int k = 2; k <= ROUTE_FIRST_N; k <<= 1)
        ROUTE_UNROLL
        for (int m = k >> 1; m > 0; m >>= 1)
            ROUTE_UNROLL
            for (int i = 0; i < ROUTE_FIRST_N; i++) {
                const int l = i ^ m;
                if (l > i) {
                    const int a = t[i], b = t[l], lo = a < b ? a : b, hi = a < b ? b : a;
                    t[i] = (i & k) ? lo : hi;
                    t[l] = (i & k) ? hi : lo;
                }
            }
    int exact = n > ROUTE_FIRST_KR;
    ROUTE_UNROLL
    for (int r = 0; r < ROUTE_FIRST_KR; r++) exact &= ((unsigned)(t[r] ^ t[r + 1]) >> 5) != 0;
    /* shift down by p = 16 - k1 slots, padding in at the top (a barrel shift: p is known at run time) */
    const int p = ROUTE_FIRST_KR - k1;
    ROUTE_UNROLL
    for (int b = 0; b < 4; b++) {
        const int sh = 1 << b;
        if (p & sh)
            ROUTE_UNROLL
            for (int i = ROUTE_FIRST_KR - 1; i >= 0; i--) t[i] = i >= sh ? t[i - sh] : INT_MAX;
    }
    ROUTE_UNROLL
    for (int i = 0; i < ROUTE_FIRST_KR; i++) {
        const int slot = 31 - (t[i] & 31); /* INT_MAX (padding) gives slot 0: read, not used */
        const int pad = t[i] == INT_MAX;
        sok[i] = pad ? INT_MAX : route_scan_key(scores[slot]);
        sbl[i] = pad ? 0 : blk0 + slot;
    }
    return exact;
}

#endif
