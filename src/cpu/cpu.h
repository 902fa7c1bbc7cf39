/* Internals shared by the CPU backend's files: workspace plan, routing, inner loops. */
#ifndef MOBA_CPU_H
#define MOBA_CPU_H

#include <math.h>
#include <stdint.h>

#include "../backend.h"

/* Query (and key) rows per unit of work, and keys per inner chunk: small enough that a chunk's K and V
 * (2 x 64 x d floats) stay in L2 while every row of a tile reads them. */
enum { CPU_TILE_ROWS = 64, CPU_KEY_CHUNK = 64 };

/* Byte offsets of the workspace's parts (0-sized parts are unused). The base is aligned to 64 bytes
 * inside the caller's buffer, so results never depend on where the buffer lives. */
typedef struct {
    int64_t num_tiles;
    size_t full_block_base;   /* int64 [num_seqs + 1]                       */
    size_t block_base;        /* int64 [num_seqs + 1]  (backward)           */
    size_t tiles;             /* moba_tile [num_tiles]                      */
    size_t centroids;         /* float [Hkv][total_full_blocks][d]          */
    size_t sel;               /* int32 [Hq][total][slots]                   */
    size_t delta;             /* float [Hq][total]: rowsum(do * o) (backward) */
    size_t inv_offsets;       /* int64 [Hq * total_blocks + 1]  (backward)  */
    size_t inv_rows;          /* int32 [Hq * total * slots]     (backward)  */
    size_t total;
} cpu_plan;

void cpu_plan_make(const moba_call *c, moba_op op, cpu_plan *w);
/* Base of the workspace's aligned area. */
char *cpu_plan_base(void *ws);

/* Threads of this call. */
int cpu_threads(const moba_call *c);

/* Per-thread scratch: one 64-byte aligned slab of `bytes` per thread; NULL on failure (message set). */
char *cpu_scratch_alloc(const char *fn, int threads, size_t bytes);
void cpu_scratch_free(char *scratch);
static inline size_t cpu_align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Routing (route.c): centroids of every (kv head, full block), then for each (q head, token) its
 * selection, ascending, own block last, -1 padded to row_stride entries. */
moba_status cpu_centroids(const char *fn, const moba_call *c, const void *k, const int64_t *full_block_base,
                          float *centroids);
moba_status cpu_select(const char *fn, const moba_call *c, const void *q, const float *centroids,
                       const int64_t *full_block_base, const moba_tile *tiles, int64_t num_tiles,
                       int32_t *sel, int row_stride);
/* Fills the plan's full_block_base and tiles and, when sel != NULL, the centroids (unless the call is full
 * attention) and the selection (sel may be the plan's or the caller's array). */
moba_status cpu_route(const char *fn, const moba_call *c, const void *q, const void *k, const cpu_plan *w,
                      char *base, int32_t *sel, int row_stride);

/* moba_params.block_idx (moba_route's format, [Hq][total][top_k]): a caller's selection checked row by row
 * (MOBA_ERR_INVALID_ARGUMENT naming the first bad entry), and a call's selection (sel: the plan's, slots
 * entries per row) copied there, padded with -1. */
moba_status cpu_check_selection(const char *fn, const moba_call *c, const int32_t *block_idx);
void cpu_copy_selection(const moba_call *c, const int32_t *sel, int32_t *block_idx);

/* The hot loops are compiled twice on x86-64 Linux, for AVX2 and for the baseline, and picked at load
 * time. Same operations in the same order (no FMA: contraction is off in ISO C), so the same bits. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && !defined(MOBA_NO_CLONES)
#define MOBA_HOT __attribute__((target_clones("avx2", "default")))
#else
#define MOBA_HOT
#endif

/* Inner loops. Eight partial sums in a fixed order: the same bits whatever the alignment or thread. */
static inline float cpu_dot(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    for (; i < n; i++) acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* y += a * x */
static inline void cpu_axpy(float *restrict y, float a, const float *restrict x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static inline void cpu_scale(float *y, float a, int n) {
    for (int i = 0; i < n; i++) y[i] *= a;
}

/* One query row against n keys (rows of K, V): the online-softmax update of (m, l, acc); s is scratch
 * for n scores. Shared by prefill and decode so both give the same bits. (forward.c) */
void cpu_row_chunk(const float *q, const float *K, const float *V, int n, int d, float scale, float *s, float *m,
                   float *l, float *acc);

/* The cursor walk over a row's ascending selection: does the row select block b (visited in
 * ascending order)? Advances the cursor when it does. */
static inline int cpu_selects(const int32_t *row_sel, int *cursor, int b) {
    if (row_sel[*cursor] != b) return 0;
    (*cursor)++;
    return 1;
}

/* A query tile visiting block b of its sequence (blocks in ascending order): marks in takes[r] the rows
 * that selected b (every row when sel is NULL: full attention), advancing their cursors, and gives the keys
 * [*k0, *k1) of b the tile can see (the own block ends at the tile's last row: causal). Returns whether
 * any row takes b. */
static inline int cpu_tile_takes_block(const moba_call *c, const moba_tile *tile, int h, const int32_t *sel, int b,
                                       int *cursor, int *takes, int64_t *k0, int64_t *k1) {
    const int nrows = (int)(tile->row_end - tile->row_begin);
    int any = 0;
    for (int r = 0; r < nrows; r++) {
        const int32_t *row_sel = sel ? sel + ((int64_t)h * c->L.total_tokens + tile->row_begin + r) * c->slots : NULL;
        takes[r] = !row_sel || cpu_selects(row_sel, &cursor[r], b);
        any |= takes[r];
    }
    const int64_t seq_start = c->L.cu_seqlens[tile->seq], seq_end = c->L.cu_seqlens[tile->seq + 1];
    *k0 = seq_start + (int64_t)b * c->p->block_size;
    *k1 = *k0 + c->p->block_size < seq_end ? *k0 + c->p->block_size : seq_end;
    if (b == tile->block) *k1 = tile->row_end;
    return any;
}

#endif
