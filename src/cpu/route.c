/*
 * Routing on the CPU: block centroids, then each query's top_k - 1 history blocks plus its own.
 *
 *   centroid[hk][slot(s,i)] = round_to_dtype( (sum_{t in block i} k[t, hk]) / B )   (fp32 sum, ascending t)
 *   score_i(t, h)           = <q[t, h], centroid[h / group][slot(s, i)]>              (fp32)
 *   keep the top_k - 1 best i < j (higher score first, then lower i; NaN ranks lowest), add j.
 */
#include <omp.h>
#include <string.h>

#include "../error.h"
#include "../half.h"
#include "cpu.h"
#include "topk.h"

moba_status cpu_centroids(const char *fn, const moba_call *c, const void *k, const int64_t *full_block_base,
                          float *centroids) {
    const moba_params *p = c->p;
    const int d = p->head_dim, Hkv = p->num_kv_heads, B = p->block_size;
    const int64_t nfull = c->L.total_full_blocks;
    const int threads = cpu_threads(c);
    char *scratch = cpu_scratch_alloc(fn, threads, sizeof(float) * (size_t)d);
    if (!scratch) return MOBA_ERR_OUT_OF_MEMORY;
    /* one work item per (kv head, centroid slot); slot -> sequence by a walk over full_block_base */
#pragma omp parallel num_threads(threads)
    {
        float *row = (float *)(scratch + cpu_align64(sizeof(float) * (size_t)d) * (size_t)omp_get_thread_num());
        int seq = 0;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < (int64_t)Hkv * nfull; item++) {
            int hk = (int)(item / nfull);
            int64_t slot = item % nfull;
            if (slot < full_block_base[seq] || slot >= full_block_base[seq + 1]) {
                seq = 0;
                while (slot >= full_block_base[seq + 1]) seq++;
            }
            int64_t first = c->L.cu_seqlens[seq] + (slot - full_block_base[seq]) * (int64_t)B;
            float *cen = centroids + ((int64_t)hk * nfull + slot) * d;
            memset(cen, 0, sizeof(float) * (size_t)d);
            for (int t = 0; t < B; t++) {
                moba_load_f32(p->dtype, k, ((first + t) * Hkv + hk) * d, d, row);
                for (int x = 0; x < d; x++) cen[x] += row[x];
            }
            for (int x = 0; x < d; x++) cen[x] = moba_round_to(p->dtype, cen[x] / (float)B);
        }
    }
    cpu_scratch_free(scratch);
    return MOBA_OK;
}

/* One row: writes its selection (ascending, own block j last, -1 padded to `stride`). */
static void select_row(const moba_call *c, const float *qrow, const float *cen_head, int j, int32_t *out,
                       int stride, cpu_ranked *heap, unsigned char *chosen) {
    const int d = c->p->head_dim, m = c->p->top_k - 1;
    int n = 0;
    if (m >= j) { /* every history block fits */
        for (int i = 0; i < j; i++) out[n++] = i;
    } else if (m > 0) {
        int size = 0;
        for (int i = 0; i < j; i++) cpu_heap_offer(heap, &size, m, cpu_dot(qrow, cen_head + (int64_t)i * d, d), i);
        for (int x = 0; x < m; x++) chosen[heap[x].block] = 1;
        for (int i = 0; i < j; i++)
            if (chosen[i]) {
                out[n++] = i;
                chosen[i] = 0;
            }
    }
    out[n++] = j;
    while (n < stride) out[n++] = -1;
}

moba_status cpu_select(const char *fn, const moba_call *c, const void *q, const float *centroids,
                       const int64_t *full_block_base, const moba_tile *tiles, int64_t num_tiles,
                       int32_t *sel, int row_stride) {
    const moba_params *p = c->p;
    const int d = p->head_dim, Hq = p->num_q_heads;
    const int64_t total = c->L.total_tokens, nfull = c->L.total_full_blocks;
    const int threads = cpu_threads(c);
    /* per thread: a q row, the heap, and the chosen-block flags */
    size_t per = cpu_align64(sizeof(float) * (size_t)d) + cpu_align64(sizeof(cpu_ranked) * (size_t)c->slots) +
                 cpu_align64((size_t)c->L.max_blocks);
    char *scratch = cpu_scratch_alloc(fn, threads, per);
    if (!scratch) return MOBA_ERR_OUT_OF_MEMORY;
    memset(scratch, 0, cpu_align64(per) * (size_t)threads);
#pragma omp parallel num_threads(threads)
    {
        char *mine = scratch + cpu_align64(per) * (size_t)omp_get_thread_num();
        float *qrow = (float *)mine;
        cpu_ranked *heap = (cpu_ranked *)(mine + cpu_align64(sizeof(float) * (size_t)d));
        unsigned char *chosen = (unsigned char *)heap + cpu_align64(sizeof(cpu_ranked) * (size_t)c->slots);
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int h = 0; h < Hq; h++)
            for (int64_t t = 0; t < num_tiles; t++) {
                const moba_tile *tile = &tiles[t];
                const float *cen_head =
                    centroids ? centroids + ((int64_t)(h / c->group) * nfull + full_block_base[tile->seq]) * d : NULL;
                for (int64_t r = tile->row_begin; r < tile->row_end; r++) {
                    if (!c->full_attention) moba_load_f32(p->dtype, q, (r * Hq + h) * d, d, qrow);
                    select_row(c, qrow, cen_head, tile->block, sel + ((int64_t)h * total + r) * row_stride,
                               row_stride, heap, chosen);
                }
            }
    }
    cpu_scratch_free(scratch);
    return MOBA_OK;
}

moba_status cpu_route(const char *fn, const moba_call *c, const void *q, const void *k, const cpu_plan *w,
                      char *base, int32_t *sel, int row_stride) {
    int64_t *full_block_base = (int64_t *)(base + w->full_block_base);
    moba_tile *tiles = (moba_tile *)(base + w->tiles);
    moba_layout_full_block_base(&c->L, full_block_base);
    moba_layout_tiles(&c->L, CPU_TILE_ROWS, tiles);
    float *centroids = NULL;
    if (!sel) return MOBA_OK;
    if (!c->full_attention) {
        centroids = (float *)(base + w->centroids);
        moba_status st = cpu_centroids(fn, c, k, full_block_base, centroids);
        if (st != MOBA_OK) return st;
    }
    return cpu_select(fn, c, q, centroids, full_block_base, tiles, w->num_tiles, sel, row_stride);
}

/* Checks a row of a caller's selection against moba_route's format: ascending history blocks below the
 * own block j, then j, then -1. Returns the first entry that breaks it, or -1. */
static int bad_entry(const int32_t *row, int top_k, int j) {
    int e = 0, prev = -1;
    for (; e < top_k && row[e] != j; e++) {
        if (row[e] <= prev || row[e] >= j) return e;
        prev = row[e];
    }
    if (e == top_k) return top_k - 1; /* no own block */
    for (e++; e < top_k; e++)
        if (row[e] != -1) return e;
    return -1;
}

moba_status cpu_check_selection(const char *fn, const moba_call *c, const int32_t *block_idx) {
    const moba_params *p = c->p;
    const int64_t total = c->L.total_tokens;
    for (int s = 0; s < c->L.num_seqs; s++)
        for (int64_t t = c->L.cu_seqlens[s]; t < c->L.cu_seqlens[s + 1]; t++) {
            const int j = (int)((t - c->L.cu_seqlens[s]) / p->block_size);
            for (int h = 0; h < p->num_q_heads; h++) {
                const int32_t *row = block_idx + ((int64_t)h * total + t) * p->top_k;
                const int e = bad_entry(row, p->top_k, j);
                if (e >= 0)
                    return moba_fail(MOBA_ERR_INVALID_ARGUMENT,
                                     "%s: block_idx[%d][%lld][%d] (%d) is not a selection: a row (q head %d, token "
                                     "%lld, own block %d) holds ascending history blocks < %d, then %d, then -1",
                                     fn, h, (long long)t, e, row[e], h, (long long)t, j, j, j);
            }
        }
    return MOBA_OK;
}

void cpu_copy_selection(const moba_call *c, const int32_t *sel, int32_t *block_idx) {
    const int64_t rows = (int64_t)c->p->num_q_heads * c->L.total_tokens;
    for (int64_t r = 0; r < rows; r++) {
        int32_t *out = block_idx + r * c->p->top_k;
        memcpy(out, sel + r * c->slots, sizeof(int32_t) * (size_t)c->slots);
        for (int n = c->slots; n < c->p->top_k; n++) out[n] = -1;
    }
}

moba_status moba_cpu_route(const moba_call *c, const void *q, const void *k, int32_t *block_idx, void *ws) {
    cpu_plan w;
    cpu_plan_make(c, MOBA_OP_ROUTE, &w);
    return cpu_route("moba_route", c, q, k, &w, cpu_plan_base(ws), block_idx, c->p->top_k);
}
