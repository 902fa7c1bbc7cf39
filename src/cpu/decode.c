/*
 * Decode attention on the CPU: the newest tokens of each sequence attend to its KV cache.
 *
 * A query at position t (own block j = t / B) routes like prefill: scores s_i = <q, centroid_i> (fp32)
 * for the cached centroids of blocks i < j, keeps the top_k - 1 best (topk.h's ranking), adds j
 * (full_attention: every block <= j). Then the online softmax of forward.c (cpu_row_chunk) over the
 * selected blocks in ascending order, each block in chunks of CPU_KEY_CHUNK keys starting at the
 * block start, the own block's last chunk ending at key t:
 *   m = max s<q,k>,  l = sum exp(s<q,k> - m),  o = (1/l) sum exp(s<q,k> - m) v,  lse = m + log l.
 * Those are exactly the operations, in exactly the order, that moba_forward does for the row at t, so
 * the output is bitwise the prefill's.
 *
 * Work unit: up to R rows (q head of one kv group x query) of one (sequence, kv head); the unit walks
 * the union of its rows' blocks and loads each key chunk once for every row that takes it (GQA heads
 * share the K/V traffic). R only groups rows; each row's arithmetic is the same whatever R or the
 * thread count. Key ranges of one sequence are not split across threads: a split would combine
 * partial softmaxes by LSE, a different order of operations, and lose the bitwise equality.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../cache_backend.h"
#include "../error.h"
#include "../half.h"
#include "cpu.h"
#include "topk.h"

enum { DECODE_MAX_ROWS = 64 };

typedef struct {
    float *q, *acc, *m, *l; /* per row: query (fp32), running output, max, sum            */
    float *k, *v, *s, *cen; /* a key chunk's K and V (fp32), its scores, one centroid      */
    cpu_ranked *heap;       /* per row: the top_k - 1 best history blocks                  */
    int32_t *sel;           /* per row: its selection, ascending, own block last           */
    int *heap_size, *cursor, *takes, *own, *head, *query;
    int64_t *pos;
} dec_scratch;

/* Scratch of one thread, carved (carve != NULL) or sized (carve == NULL) in one pass. */
static size_t dec_scratch_layout(char *at, int d, int R, int heap_m, int slots, dec_scratch *S) {
    size_t off = 0, f = sizeof(float), I = sizeof(int);
#define PART(field, type, bytes)                                                                   \
    do {                                                                                           \
        if (S) S->field = (type *)(at + off);                                                      \
        off += cpu_align64(bytes);                                                                 \
    } while (0)
    PART(q, float, (size_t)R * d * f);
    PART(acc, float, (size_t)R * d * f);
    PART(m, float, (size_t)R * f);
    PART(l, float, (size_t)R * f);
    PART(k, float, (size_t)CPU_KEY_CHUNK * d * f);
    PART(v, float, (size_t)CPU_KEY_CHUNK * d * f);
    PART(s, float, (size_t)CPU_KEY_CHUNK * f);
    PART(cen, float, (size_t)d * f);
    PART(heap, cpu_ranked, (size_t)R * heap_m * sizeof(cpu_ranked));
    PART(sel, int32_t, (size_t)R * slots * sizeof(int32_t));
    PART(heap_size, int, R * I);
    PART(cursor, int, R * I);
    PART(takes, int, R * I);
    PART(own, int, R * I);
    PART(head, int, R * I);
    PART(query, int, R * I);
    PART(pos, int64_t, (size_t)R * sizeof(int64_t));
#undef PART
    return off;
}

size_t moba_cpu_cache_workspace_size(const moba_cache_call *c) {
    (void)c;
    return 0;
}

/* Sorts a row's kept blocks ascending (m is small: top_k - 1). */
static void sort_blocks(cpu_ranked *h, int m) {
    for (int i = 1; i < m; i++) {
        cpu_ranked x = h[i];
        int j = i - 1;
        for (; j >= 0 && h[j].block > x.block; j--) h[j + 1] = h[j];
        h[j + 1] = x;
    }
}

/* Routing of the unit's rows: fills sel (ascending, own block last). Centroids are loaded once per
 * unit and scored against every row that needs them. */
static void route_rows(const moba_cache_call *c, int s, int hk, const void *centroids, int rows, int slots,
                       dec_scratch *S) {
    const moba_cache_params *p = c->p;
    const int d = p->head_dim, hm = p->top_k - 1;
    int need = 0; /* the last history block some row must rank */
    for (int r = 0; r < rows; r++) {
        S->heap_size[r] = 0;
        if (!p->full_attention && hm > 0 && hm < S->own[r] && S->own[r] > need) need = S->own[r];
    }
    for (int i = 0; i < need; i++) {
        moba_load_f32(p->dtype, centroids, moba_cache_centroid(c, s, i, hk), d, S->cen);
        for (int r = 0; r < rows; r++)
            if (hm < S->own[r] && i < S->own[r])
                cpu_heap_offer(S->heap + (size_t)r * hm, &S->heap_size[r], hm,
                               cpu_dot(S->q + (size_t)r * d, S->cen, d), i);
    }
    for (int r = 0; r < rows; r++) {
        int32_t *out = S->sel + (size_t)r * slots;
        int j = S->own[r], n = 0;
        if (p->full_attention || hm >= j) { /* every history block */
            for (int i = 0; i < j; i++) out[n++] = i;
        } else {
            cpu_ranked *h = S->heap + (size_t)r * hm;
            sort_blocks(h, hm);
            for (int x = 0; x < hm; x++) out[n++] = h[x].block;
        }
        out[n] = j;
    }
}

/* One unit: rows first_row .. first_row + rows - 1 of (sequence s, kv head hk), numbered head-major
 * (row x is q head hk * group + x / n_q, query x % n_q). */
static void attend_unit(const moba_cache_call *c, int s, int hk, int first_row, int rows, const void *q,
                        const void *k_cache, const void *v_cache, const void *centroids, void *o, float *lse,
                        int slots, dec_scratch *S) {
    const moba_cache_params *p = c->p;
    const moba_dtype dt = p->dtype;
    const int d = p->head_dim, Hq = p->num_q_heads, B = p->block_size;
    const int64_t q0 = c->cu[s], n_q = c->cu[s + 1] - c->cu[s], len = c->seq_lens[s];
    int last_block = 0;
    for (int r = 0; r < rows; r++) {
        int x = first_row + r;
        S->head[r] = hk * c->group + x / (int)n_q;
        S->query[r] = x % (int)n_q;
        S->pos[r] = len - n_q + S->query[r];
        S->own[r] = (int)(S->pos[r] / B);
        if (S->own[r] > last_block) last_block = S->own[r];
        moba_load_f32(dt, q, ((q0 + S->query[r]) * Hq + S->head[r]) * d, d, S->q + (size_t)r * d);
        S->m[r] = -INFINITY;
        S->l[r] = 0.0f;
        S->cursor[r] = 0;
    }
    memset(S->acc, 0, sizeof(float) * (size_t)rows * d);
    route_rows(c, s, hk, centroids, rows, slots, S);

    for (int b = 0; b <= last_block; b++) {
        /* which rows take block b, and the last key any of them sees in it */
        int64_t k1 = 0;
        for (int r = 0; r < rows; r++) {
            S->takes[r] = b <= S->own[r] && cpu_selects(S->sel + (size_t)r * slots, &S->cursor[r], b);
            if (S->takes[r]) {
                int64_t end = b < S->own[r] ? (int64_t)(b + 1) * B : S->pos[r] + 1;
                if (end > k1) k1 = end;
            }
        }
        for (int64_t c0 = (int64_t)b * B; c0 < k1; c0 += CPU_KEY_CHUNK) {
            int nk = (int)(k1 - c0 < CPU_KEY_CHUNK ? k1 - c0 : CPU_KEY_CHUNK);
            for (int x = 0; x < nk; x++) {
                int64_t at = moba_cache_at(c, s, c0 + x, hk);
                moba_load_f32(dt, k_cache, at, d, S->k + (size_t)x * d);
                moba_load_f32(dt, v_cache, at, d, S->v + (size_t)x * d);
            }
            for (int r = 0; r < rows; r++) {
                if (!S->takes[r]) continue;
                int n = (int)(S->pos[r] + 1 - c0 < nk ? S->pos[r] + 1 - c0 : nk); /* keys <= pos */
                if (n <= 0) continue;
                cpu_row_chunk(S->q + (size_t)r * d, S->k, S->v, n, d, c->scale, S->s, &S->m[r], &S->l[r],
                              S->acc + (size_t)r * d);
            }
        }
    }

    for (int r = 0; r < rows; r++) {
        int64_t t = q0 + S->query[r];
        float *acc = S->acc + (size_t)r * d;
        cpu_scale(acc, 1.0f / S->l[r], d);
        moba_store_f32(dt, o, (t * Hq + S->head[r]) * d, d, acc);
        if (lse) lse[(int64_t)S->head[r] * c->total + t] = S->m[r] + logf(S->l[r]);
    }
}

moba_status moba_cpu_cache_attend(const moba_cache_call *c, const void *q, const void *k_cache, const void *v_cache,
                                  const void *centroids, void *o, float *lse, void *ws) {
    const char *fn = "moba_cache_attend";
    const moba_cache_params *p = c->p;
    const int n = p->num_seqs, Hkv = p->num_kv_heads, d = p->head_dim;
    const int threads = p->num_threads > 0 ? p->num_threads : omp_get_max_threads();
    const int heap_m = p->top_k > 1 ? p->top_k - 1 : 1;
    const int slots = p->full_attention || p->top_k > c->max_blocks ? c->max_blocks : p->top_k;

    /* rows per unit: a whole kv group's queries when there are enough units for every thread,
     * else fewer (R changes only which rows share a key chunk, never a row's result) */
    int64_t all_rows = (int64_t)p->num_q_heads * c->total;
    int64_t R = (all_rows + threads - 1) / threads;
    if (R > DECODE_MAX_ROWS) R = DECODE_MAX_ROWS;
    if (R < 1) R = 1;

    /* units of sequence s: Hkv x parts[s], numbered across sequences from unit_base[s] */
    int64_t *unit_base = malloc(sizeof(int64_t) * (size_t)(n + 1));
    size_t per = dec_scratch_layout(NULL, d, (int)R, heap_m, slots, NULL);
    char *scratch = cpu_scratch_alloc(fn, threads, per);
    if (!unit_base || !scratch) {
        free(unit_base);
        cpu_scratch_free(scratch);
        return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "%s: could not allocate the per-thread scratch", fn);
    }
    unit_base[0] = 0;
    for (int s = 0; s < n; s++) {
        int64_t rows = (int64_t)c->group * (c->cu[s + 1] - c->cu[s]);
        unit_base[s + 1] = unit_base[s] + Hkv * ((rows + R - 1) / R);
    }
    const int64_t units = unit_base[n];
    (void)ws;

#pragma omp parallel num_threads(threads)
    {
        dec_scratch S;
        dec_scratch_layout(scratch + cpu_align64(per) * (size_t)omp_get_thread_num(), d, (int)R, heap_m, slots, &S);
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < units; u++) {
            int s = moba_segment_of(unit_base, n, u);
            int64_t rows_s = (int64_t)c->group * (c->cu[s + 1] - c->cu[s]);
            int64_t parts = (rows_s + R - 1) / R, i = u - unit_base[s];
            int hk = (int)(i / parts), first = (int)((i % parts) * R);
            int rows = (int)(rows_s - first < R ? rows_s - first : R);
            attend_unit(c, s, hk, first, rows, q, k_cache, v_cache, centroids, o, lse, slots, &S);
        }
    }
    free(unit_base);
    cpu_scratch_free(scratch);
    return MOBA_OK;
}
