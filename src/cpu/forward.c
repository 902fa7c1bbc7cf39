/*
 * MoBA forward on the CPU: flash-style online softmax over the blocks each query selected.
 *
 * For a query row t (scale s, selected key set K_t, causal):
 *   m = max_c s<q,k_c>,  l = sum_c exp(s<q,k_c> - m),  o = (1/l) sum_c exp(s<q,k_c> - m) v_c,
 *   lse = m + log l,
 * accumulated chunk by chunk (m rescales what came before), so memory stays O(tile) and no N x N
 * matrix exists. Work unit: (tile of <= 64 query rows inside one block, q head). A tile visits the
 * union of its rows' blocks in ascending order; each row only takes the blocks it selected. Every row
 * is computed by one thread in a fixed order: the same bits for any thread count.
 */
#include <omp.h>
#include <string.h>

#include "../half.h"
#include "cpu.h"

typedef struct {
    float *q, *acc, *k, *v, *s, *m, *l;
    int *cursor, *takes;
} fwd_scratch;

static size_t fwd_scratch_bytes(int d) {
    size_t T = CPU_TILE_ROWS, KC = CPU_KEY_CHUNK, f = sizeof(float);
    return cpu_align64(T * d * f) * 2 + cpu_align64(KC * d * f) * 2 + cpu_align64(KC * f) +
           cpu_align64(T * f) * 2 + cpu_align64(T * sizeof(int)) * 2;
}

static fwd_scratch fwd_scratch_carve(char *at, int d) {
    size_t T = CPU_TILE_ROWS, KC = CPU_KEY_CHUNK, f = sizeof(float);
    fwd_scratch s;
    s.q = (float *)at;       at += cpu_align64(T * d * f);
    s.acc = (float *)at;     at += cpu_align64(T * d * f);
    s.k = (float *)at;       at += cpu_align64(KC * d * f);
    s.v = (float *)at;       at += cpu_align64(KC * d * f);
    s.s = (float *)at;       at += cpu_align64(KC * f);
    s.m = (float *)at;       at += cpu_align64(T * f);
    s.l = (float *)at;       at += cpu_align64(T * f);
    s.cursor = (int *)at;    at += cpu_align64(T * sizeof(int));
    s.takes = (int *)at;
    return s;
}

MOBA_HOT void cpu_row_chunk(const float *q, const float *K, const float *V, int n, int d, float scale, float *s,
                      float *m, float *l, float *acc) {
    float mx = -INFINITY;
    for (int c = 0; c < n; c++) {
        s[c] = scale * cpu_dot(q, K + (size_t)c * d, d);
        if (s[c] > mx) mx = s[c];
    }
    float m_new = mx > *m ? mx : *m;
    if (m_new == -INFINITY) return; /* every score -inf: nothing to add */
    float corr = expf(*m - m_new);  /* 0 on the first chunk (m = -inf) */
    if (corr != 1.0f) {
        *l *= corr;
        cpu_scale(acc, corr, d);
    }
    for (int c = 0; c < n; c++) {
        float pc = expf(s[c] - m_new);
        *l += pc;
        cpu_axpy(acc, pc, V + (size_t)c * d, d);
    }
    *m = m_new;
}

static void forward_tile(const moba_call *c, const moba_tile *tile, int h, const void *q, const void *k,
                         const void *v, void *o, float *lse, const int32_t *sel, fwd_scratch *S) {
    const moba_params *p = c->p;
    const moba_dtype dt = p->dtype;
    const int d = p->head_dim, Hq = p->num_q_heads, Hkv = p->num_kv_heads;
    const int hk = h / c->group, j = tile->block;
    const int nrows = (int)(tile->row_end - tile->row_begin);

    for (int r = 0; r < nrows; r++) {
        moba_load_f32(dt, q, ((tile->row_begin + r) * Hq + h) * d, d, S->q + (size_t)r * d);
        S->m[r] = -INFINITY;
        S->l[r] = 0.0f;
        S->cursor[r] = 0;
    }
    memset(S->acc, 0, sizeof(float) * (size_t)nrows * d);

    for (int b = 0; b <= j; b++) {
        int64_t k0, k1;
        if (!cpu_tile_takes_block(c, tile, h, sel, b, S->cursor, S->takes, &k0, &k1)) continue;
        for (int64_t c0 = k0; c0 < k1; c0 += CPU_KEY_CHUNK) {
            int nk = (int)(k1 - c0 < CPU_KEY_CHUNK ? k1 - c0 : CPU_KEY_CHUNK);
            for (int x = 0; x < nk; x++) {
                moba_load_f32(dt, k, ((c0 + x) * Hkv + hk) * d, d, S->k + (size_t)x * d);
                moba_load_f32(dt, v, ((c0 + x) * Hkv + hk) * d, d, S->v + (size_t)x * d);
            }
            for (int r = 0; r < nrows; r++) {
                if (!S->takes[r]) continue;
                int64_t pos = tile->row_begin + r;
                int n = (int)(pos + 1 - c0 < nk ? pos + 1 - c0 : nk); /* keys <= pos */
                if (n <= 0) continue;
                cpu_row_chunk(S->q + (size_t)r * d, S->k, S->v, n, d, c->scale, S->s, &S->m[r], &S->l[r],
                          S->acc + (size_t)r * d);
            }
        }
    }

    for (int r = 0; r < nrows; r++) {
        int64_t t = tile->row_begin + r;
        float *acc = S->acc + (size_t)r * d;
        cpu_scale(acc, 1.0f / S->l[r], d);
        moba_store_f32(dt, o, (t * Hq + h) * d, d, acc);
        if (lse) lse[(int64_t)h * c->L.total_tokens + t] = S->m[r] + logf(S->l[r]);
    }
}

moba_status moba_cpu_forward(const moba_call *c, const void *q, const void *k, const void *v, void *o, float *lse,
                             void *ws) {
    const char *fn = "moba_forward";
    cpu_plan w;
    cpu_plan_make(c, MOBA_OP_FORWARD, &w);
    char *base = cpu_plan_base(ws);
    int32_t *sel = c->full_attention ? NULL : (int32_t *)(base + w.sel);
    const int threads = cpu_threads(c);
    size_t per = fwd_scratch_bytes(c->p->head_dim);
    char *scratch = cpu_scratch_alloc(fn, threads, per);
    if (!scratch) return MOBA_ERR_OUT_OF_MEMORY;
    moba_status st = cpu_route(fn, c, q, k, &w, base, sel, c->slots);
    if (st != MOBA_OK) {
        cpu_scratch_free(scratch);
        return st;
    }
    const moba_tile *tiles = (const moba_tile *)(base + w.tiles);
    const int Hq = c->p->num_q_heads;
#pragma omp parallel num_threads(threads)
    {
        fwd_scratch S = fwd_scratch_carve(scratch + cpu_align64(per) * (size_t)omp_get_thread_num(), c->p->head_dim);
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t t = 0; t < w.num_tiles; t++)
            for (int h = 0; h < Hq; h++) forward_tile(c, &tiles[t], h, q, k, v, o, lse, sel, &S);
    }
    cpu_scratch_free(scratch);
    if (!c->p->block_idx) return MOBA_OK;
    if (sel) { /* the selection it used, for the backward */
        cpu_copy_selection(c, sel, c->p->block_idx);
        return MOBA_OK;
    } /* full attention: every block up to the own, as moba_route writes it */
    return cpu_select(fn, c, q, NULL, (const int64_t *)(base + w.full_block_base), tiles, w.num_tiles,
                      c->p->block_idx, c->p->top_k);
}
