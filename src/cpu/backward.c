/*
 * MoBA backward on the CPU. With p_tc = exp(s<q_t,k_c> - lse_t) over the keys c that row t attends:
 *   D_t  = <do_t, o_t>
 *   dv_c = sum_t p_tc do_t
 *   ds_tc = p_tc (<do_t, v_c> - D_t)
 *   dq_t = s sum_c ds_tc k_c,      dk_c = s sum_t ds_tc q_t
 * Two passes, so every output element is summed by one thread in a fixed order (deterministic):
 *   A. per (query tile, q head): D and dq, visiting the row's selected blocks like the forward;
 *   B. per (key tile, kv head): dk and dv, visiting the q heads of the group and, for each, the rows
 *      that selected the key's block, ascending (an inverted index of the selection: block -> rows).
 */
#include <omp.h>
#include <string.h>

#include "../half.h"
#include "cpu.h"

typedef struct {
    float *q, *dout, *acc, *k, *v, *lse, *delta;
    int *cursor, *takes;
} bwd_scratch;

static size_t bwd_scratch_bytes(int d) {
    size_t T = CPU_TILE_ROWS, f = sizeof(float);
    return cpu_align64(T * d * f) * 5 + cpu_align64(T * f) * 2 + cpu_align64(T * sizeof(int)) * 2;
}

/* q, dout, acc: T rows of d; k, v: T keys of d (pass A: a key chunk; pass B: the key tile and
 * acc doubles as dk, v's twin below as dv). */
static bwd_scratch bwd_scratch_carve(char *at, int d, float **dv_acc) {
    size_t T = CPU_TILE_ROWS, f = sizeof(float);
    bwd_scratch s;
    s.q = (float *)at;      at += cpu_align64(T * d * f);
    s.dout = (float *)at;   at += cpu_align64(T * d * f);
    s.acc = (float *)at;    at += cpu_align64(T * d * f);
    s.k = (float *)at;      at += cpu_align64(T * d * f);
    s.v = (float *)at;      at += cpu_align64(T * d * f);
    s.lse = (float *)at;    at += cpu_align64(T * f);
    s.delta = (float *)at;  at += cpu_align64(T * f);
    s.cursor = (int *)at;   at += cpu_align64(T * sizeof(int));
    s.takes = (int *)at;
    *dv_acc = s.dout; /* pass B keeps one row of q/dout at a time in q and q + d */
    return s;
}

/* One row against n keys: dq_acc += sum_x ds_x k_x (pass A). */
MOBA_HOT static void dq_row(const float *qr, const float *dor, const float *K, const float *V, int n, int d,
                            float scale, float lse, float delta, float *dq_acc) {
    for (int x = 0; x < n; x++) {
        float pc = expf(scale * cpu_dot(qr, K + (size_t)x * d, d) - lse);
        float ds = pc * (cpu_dot(dor, V + (size_t)x * d, d) - delta);
        cpu_axpy(dq_acc, ds, K + (size_t)x * d, d);
    }
}

/* One row against n keys: dv_x += p_x do, dk_x += ds_x q (pass B). */
MOBA_HOT static void dkdv_row(const float *qr, const float *dor, const float *K, const float *V, int n, int d,
                              float scale, float lse, float delta, float *dk_acc, float *dv_acc) {
    for (int x = 0; x < n; x++) {
        float pc = expf(scale * cpu_dot(qr, K + (size_t)x * d, d) - lse);
        float ds = pc * (cpu_dot(dor, V + (size_t)x * d, d) - delta);
        cpu_axpy(dv_acc + (size_t)x * d, pc, dor, d);
        cpu_axpy(dk_acc + (size_t)x * d, ds, qr, d);
    }
}

/* Pass A: D_t and dq_t for the rows of a query tile and one q head. */
static void dq_tile(const moba_call *c, const moba_tile *tile, int h, const void *dout, const void *q, const void *k,
                    const void *v, const void *o, const float *lse, void *dq, const int32_t *sel, float *delta,
                    bwd_scratch *S) {
    const moba_params *p = c->p;
    const moba_dtype dt = p->dtype;
    const int d = p->head_dim, Hq = p->num_q_heads, Hkv = p->num_kv_heads;
    const int hk = h / c->group, j = tile->block;
    const int nrows = (int)(tile->row_end - tile->row_begin);
    const int64_t total = c->L.total_tokens;
    float *orow = S->acc; /* acc is free until the rows' o are reduced into D */

    for (int r = 0; r < nrows; r++) {
        int64_t t = tile->row_begin + r;
        moba_load_f32(dt, q, (t * Hq + h) * d, d, S->q + (size_t)r * d);
        moba_load_f32(dt, dout, (t * Hq + h) * d, d, S->dout + (size_t)r * d);
        moba_load_f32(dt, o, (t * Hq + h) * d, d, orow);
        S->delta[r] = cpu_dot(S->dout + (size_t)r * d, orow, d);
        delta[(int64_t)h * total + t] = S->delta[r];
        S->lse[r] = lse[(int64_t)h * total + t];
        S->cursor[r] = 0;
    }
    memset(S->acc, 0, sizeof(float) * (size_t)nrows * d);

    for (int b = 0; b <= j; b++) {
        int64_t k0, k1;
        if (!cpu_tile_takes_block(c, tile, h, sel, b, S->cursor, S->takes, &k0, &k1)) continue;
        for (int64_t c0 = k0; c0 < k1; c0 += CPU_TILE_ROWS) {
            int nk = (int)(k1 - c0 < CPU_TILE_ROWS ? k1 - c0 : CPU_TILE_ROWS);
            for (int x = 0; x < nk; x++) {
                moba_load_f32(dt, k, ((c0 + x) * Hkv + hk) * d, d, S->k + (size_t)x * d);
                moba_load_f32(dt, v, ((c0 + x) * Hkv + hk) * d, d, S->v + (size_t)x * d);
            }
            for (int r = 0; r < nrows; r++) {
                if (!S->takes[r]) continue;
                int64_t pos = tile->row_begin + r;
                int n = (int)(pos + 1 - c0 < nk ? pos + 1 - c0 : nk);
                dq_row(S->q + (size_t)r * d, S->dout + (size_t)r * d, S->k, S->v, n, d, c->scale, S->lse[r],
                       S->delta[r], S->acc + (size_t)r * d);
            }
        }
    }
    for (int r = 0; r < nrows; r++) {
        float *acc = S->acc + (size_t)r * d;
        cpu_scale(acc, c->scale, d);
        moba_store_f32(dt, dq, ((tile->row_begin + r) * Hq + h) * d, d, acc);
    }
}

/* The inverted index: for each (q head, block) the rows that selected it, ascending.
 * off[x] ends as the start of list x and off[x + 1] as its end (x = h * total_blocks + global block). */
static void invert_selection(const moba_call *c, const int32_t *sel, const int64_t *block_base, int64_t *off,
                             int32_t *rows) {
    const int Hq = c->p->num_q_heads, slots = c->slots;
    const int64_t total = c->L.total_tokens, nb = c->L.total_blocks, n = (int64_t)Hq * nb;
    memset(off, 0, sizeof(int64_t) * (size_t)(n + 1));
#pragma omp parallel for schedule(static) num_threads(cpu_threads(c))
    for (int h = 0; h < Hq; h++)
        for (int s = 0; s < c->L.num_seqs; s++)
            for (int64_t t = c->L.cu_seqlens[s]; t < c->L.cu_seqlens[s + 1]; t++)
                for (int x = 0; x < slots; x++) {
                    int32_t b = sel[((int64_t)h * total + t) * slots + x];
                    if (b >= 0) off[(int64_t)h * nb + block_base[s] + b]++;
                }
    for (int64_t x = 1; x < n; x++) off[x] += off[x - 1]; /* inclusive: off[x] = end of list x */
    off[n] = n ? off[n - 1] : 0;
    /* fill backwards, decrementing each end to its start; rows come out ascending */
#pragma omp parallel for schedule(static) num_threads(cpu_threads(c))
    for (int h = 0; h < Hq; h++)
        for (int s = c->L.num_seqs - 1; s >= 0; s--)
            for (int64_t t = c->L.cu_seqlens[s + 1] - 1; t >= c->L.cu_seqlens[s]; t--)
                for (int x = slots - 1; x >= 0; x--) {
                    int32_t b = sel[((int64_t)h * total + t) * slots + x];
                    if (b >= 0) rows[--off[(int64_t)h * nb + block_base[s] + b]] = (int32_t)t;
                }
}

/* Pass B: dk and dv of one key tile (keys of one block) and one kv head. */
static void dkdv_tile(const moba_call *c, const moba_tile *tile, int hk, const void *dout, const void *q,
                      const void *k, const void *v, const float *lse, const float *delta, void *dk, void *dv,
                      const int64_t *block_base, const int64_t *off, const int32_t *rows, bwd_scratch *S,
                      float *dv_acc) {
    const moba_params *p = c->p;
    const moba_dtype dt = p->dtype;
    const int d = p->head_dim, Hq = p->num_q_heads, Hkv = p->num_kv_heads;
    const int nkeys = (int)(tile->row_end - tile->row_begin);
    const int64_t total = c->L.total_tokens, seq_end = c->L.cu_seqlens[tile->seq + 1];
    float *dk_acc = S->acc, *qr = S->q, *dor = S->q + d; /* dv_acc is S->dout */

    for (int x = 0; x < nkeys; x++) {
        int64_t key = tile->row_begin + x;
        moba_load_f32(dt, k, (key * Hkv + hk) * d, d, S->k + (size_t)x * d);
        moba_load_f32(dt, v, (key * Hkv + hk) * d, d, S->v + (size_t)x * d);
    }
    memset(dk_acc, 0, sizeof(float) * (size_t)nkeys * d);
    memset(dv_acc, 0, sizeof(float) * (size_t)nkeys * d);

    for (int h = hk * c->group; h < (hk + 1) * c->group; h++) {
        /* rows taking this block: all later rows of the sequence (full attention) or the index's list */
        int64_t n_list, first = 0;
        const int32_t *list = NULL;
        if (rows) {
            int64_t x = (int64_t)h * c->L.total_blocks + block_base[tile->seq] + tile->block;
            list = rows + off[x];
            n_list = off[x + 1] - off[x];
        } else {
            first = tile->row_begin;
            n_list = seq_end - first;
        }
        for (int64_t i = 0; i < n_list; i++) {
            int64_t t = list ? list[i] : first + i;
            if (t < tile->row_begin) continue; /* a row of this block before every key of the tile */
            int n = (int)(t + 1 - tile->row_begin < nkeys ? t + 1 - tile->row_begin : nkeys);
            moba_load_f32(dt, q, (t * Hq + h) * d, d, qr);
            moba_load_f32(dt, dout, (t * Hq + h) * d, d, dor);
            dkdv_row(qr, dor, S->k, S->v, n, d, c->scale, lse[(int64_t)h * total + t], delta[(int64_t)h * total + t],
                     dk_acc, dv_acc);
        }
    }
    for (int x = 0; x < nkeys; x++) {
        int64_t key = tile->row_begin + x;
        cpu_scale(dk_acc + (size_t)x * d, c->scale, d);
        moba_store_f32(dt, dk, (key * Hkv + hk) * d, d, dk_acc + (size_t)x * d);
        moba_store_f32(dt, dv, (key * Hkv + hk) * d, d, dv_acc + (size_t)x * d);
    }
}

moba_status moba_cpu_backward(const moba_call *c, const void *dout, const void *q, const void *k, const void *v,
                              const void *o, const float *lse, void *dq, void *dk, void *dv, void *ws) {
    const char *fn = "moba_backward";
    cpu_plan w;
    cpu_plan_make(c, MOBA_OP_BACKWARD, &w);
    char *base = cpu_plan_base(ws);
    /* the forward's selection when the caller kept it (routed calls: slots == top_k, so it is sel as is) */
    const int routed = !c->full_attention && c->p->top_k > 1, given = routed && c->p->block_idx;
    if (given) {
        moba_status st = cpu_check_selection(fn, c, c->p->block_idx);
        if (st != MOBA_OK) return st;
    }
    const int32_t *sel = c->full_attention ? NULL : given ? c->p->block_idx : (int32_t *)(base + w.sel);
    const int threads = cpu_threads(c);
    const int d = c->p->head_dim, Hq = c->p->num_q_heads, Hkv = c->p->num_kv_heads;
    size_t per = bwd_scratch_bytes(d);
    char *scratch = cpu_scratch_alloc(fn, threads, per);
    if (!scratch) return MOBA_ERR_OUT_OF_MEMORY;
    /* given: only the plan's layout (NULL: no centroids, no selection) */
    moba_status st = cpu_route(fn, c, q, k, &w, base, given ? NULL : (int32_t *)sel, c->slots);
    if (st != MOBA_OK) {
        cpu_scratch_free(scratch);
        return st;
    }
    const moba_tile *tiles = (const moba_tile *)(base + w.tiles);
    float *delta = (float *)(base + w.delta);
    int64_t *block_base = (int64_t *)(base + w.block_base);
    int64_t *off = NULL;
    int32_t *rows = NULL;
    block_base[0] = 0;
    for (int s = 0; s < c->L.num_seqs; s++) block_base[s + 1] = block_base[s] + moba_seq_blocks(&c->L, s);
    if (sel) {
        off = (int64_t *)(base + w.inv_offsets);
        rows = (int32_t *)(base + w.inv_rows);
        invert_selection(c, sel, block_base, off, rows);
    }
#pragma omp parallel num_threads(threads)
    {
        float *dv_acc;
        bwd_scratch S = bwd_scratch_carve(scratch + cpu_align64(per) * (size_t)omp_get_thread_num(), d, &dv_acc);
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t t = 0; t < w.num_tiles; t++)
            for (int h = 0; h < Hq; h++) dq_tile(c, &tiles[t], h, dout, q, k, v, o, lse, dq, sel, delta, &S);
        /* the implicit barrier above: every D_t is in place before pass B reads it */
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t t = 0; t < w.num_tiles; t++)
            for (int hk = 0; hk < Hkv; hk++)
                dkdv_tile(c, &tiles[t], hk, dout, q, k, v, lse, delta, dk, dv, block_base, off, rows, &S, dv_acc);
    }
    cpu_scratch_free(scratch);
    return MOBA_OK;
}
