/*
 * Routing's row threshold (route.cu; the default since v26, MOBA_CUDA_ROUTE_ROWTHR=0 turns it off), in
 * plain C so that a CPU test (tests/test_route_lists.c) checks it.
 *
 * A row's scores are scanned by two threads, one per half of each 64-centroid chunk; each keeps its best
 * k1 = top_k - 1 as a list of scan keys (ints ordered like the scores), descending in slots p..KR-1 of a
 * KR-slot array (p = KR - k1; slots below p are padding). A score below the row's k1-th best so far can
 * never be chosen, so it need not be looked at. The threshold a thread uses is that k1-th best of the
 * union of its own list A and the other half's list B as B was after the chunk before:
 *   with s of the union's best k1 taken from B, it is min(B[s-1], A[k1-1-s]); B's best s and A's best
 *   k1 - s are k1 distinct scores of the row at least that large, so every s gives a threshold no chosen
 *   score lies below, and the max over s = 0..k1 is the exact k1-th best (s = 0: A's last key alone;
 *   s = k1: B's last).
 * B comes through shared memory with each key cut to its high 16 bits (2 bytes a slot, so both halves'
 * lists fit beside the rest at 4 CTAs per SM); a cut key is <= the key, so the result stays a bound.
 * A[k1-1-s] is slot KR-1-s: with KR a compile-time constant the kernel's list stays in registers.
 */
#ifndef MOBA_ROUTE_LISTS_H
#define MOBA_ROUTE_LISTS_H

#include <limits.h>
#include <stdint.h>

#ifdef __CUDACC__
#define ROUTE_HD __host__ __device__ __forceinline__
#define ROUTE_UNROLL _Pragma("unroll")
#else
#define ROUTE_HD static inline
#define ROUTE_UNROLL
#endif

/* A scan key as published: its high 16 bits, and back (the low bits zero: <= the key). */
ROUTE_HD uint16_t route_pub_cut(int key) { return (uint16_t)((uint32_t)key >> 16); }
ROUTE_HD int route_pub_key(uint16_t cut) { return (int)((uint32_t)cut << 16); }

/* Publishes list A (kr slots) at pub[i * stride], slot i. */
ROUTE_HD void route_publish(const int *sok, int kr, uint16_t *pub, int stride) {
    ROUTE_UNROLL
    for (int i = 0; i < kr; i++) pub[i * stride] = route_pub_cut(sok[i]);
}

/* The row's threshold as a scan key: this thread's list sok (kr slots, k1 live) and the other half's as
 * published at pub_other[i * stride]. */
ROUTE_HD int route_row_threshold_key(const int *sok, int kr, const uint16_t *pub_other, int stride, int k1) {
    const uint16_t *b = pub_other + (kr - k1) * stride; /* B's rank 0 */
    int tk = sok[kr - 1];
    ROUTE_UNROLL
    for (int s = 1; s <= kr; s++)
        if (s <= k1) {
            const int b_best = route_pub_key(b[(s - 1) * stride]); /* B's s-th best */
            const int a_rest = s < kr ? sok[kr - 1 - s] : INT_MAX; /* A's (k1 - s)-th best, or none */
            const int bound = b_best < a_rest ? b_best : a_rest;
            tk = bound > tk ? bound : tk;
        }
    return tk;
}

#endif
