/*
 * The ranking of history blocks, shared by prefill routing and decode routing so both keep the same
 * blocks: a beats b when its score is higher, or equal with a lower block index; NaN scores rank
 * lowest (as -inf). This is a strict total order, so the m best blocks are one definite set whatever
 * order they are offered in.
 */
#ifndef MOBA_CPU_TOPK_H
#define MOBA_CPU_TOPK_H

#include <math.h>
#include <stdint.h>

typedef struct {
    float score;
    int32_t block;
} cpu_ranked;

static inline int cpu_beats(cpu_ranked a, cpu_ranked b) {
    return a.score > b.score || (a.score == b.score && a.block < b.block);
}

/* Min-heap (the worst kept block at the root) of the m best blocks seen so far. */
static inline void cpu_heap_sift_down(cpu_ranked *h, int m, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < m && cpu_beats(h[w], h[l])) w = l;
        if (r < m && cpu_beats(h[w], h[r])) w = r;
        if (w == i) return;
        cpu_ranked t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Offers block `block` with `score` to a heap of *size <= m entries (m >= 1). */
static inline void cpu_heap_offer(cpu_ranked *h, int *size, int m, float score, int32_t block) {
    cpu_ranked r = {score == score ? score : -INFINITY, block};
    if (*size < m) { /* fill, then heapify once full */
        h[(*size)++] = r;
        if (*size == m)
            for (int x = m / 2 - 1; x >= 0; x--) cpu_heap_sift_down(h, m, x);
    } else if (cpu_beats(r, h[0])) {
        h[0] = r;
        cpu_heap_sift_down(h, m, 0);
    }
}

#endif
