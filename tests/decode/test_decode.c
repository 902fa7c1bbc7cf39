/*
 * Decode (moba_cache_append / moba_cache_attend) against prefill (moba_forward).
 *
 * For each case: random q, k, v of a varlen batch, packed as for prefill, and moba_forward's o and lse
 * over them (MoBA, and full attention with top_k >= every block count). The keys are then appended
 * to a cache (contiguous, or paged with pages handed out in a shuffled order) in random pieces: none,
 * one token, a few, a whole block, more than a block. After every append:
 *   - the cache buffers equal what they were, plus exactly the new rows and the centroids of the
 *     blocks just completed, recomputed here (fp32 sum in position order, / B, rounded): bitwise;
 *   - attending for the last 0..4 tokens of every sequence gives moba_forward's o and lse rows at
 *     those positions, bitwise (prefill row t depends only on tokens <= t, so the full-length prefill
 *     is the reference for every prefix), with MoBA routing and with full_attention = 1, and writes
 *     nothing past them.
 * Then bad arguments: the right status, a message naming the argument, and nothing written.
 */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "ref64.h"

enum { MAX_SEQS = 4 };

typedef struct {
    const char *name;
    moba_dtype dt;
    int num_seqs;
    int lens[MAX_SEQS];
    int hq, hkv, d, block_size, top_k;
    int page_size; /* 0: contiguous */
    uint64_t seed;
    int ties_and_nan; /* blocks 3, 5, 7 of sequence 0 copy block 1 (tied gate scores); a NaN key in block 6 */
} dcase;

static float to_f32(moba_dtype dt, const void *base, size_t i) {
    if (dt == MOBA_DTYPE_F32) return ((const float *)base)[i];
    uint16_t h = ((const uint16_t *)base)[i];
    return dt == MOBA_DTYPE_F16 ? ref_f16_to_f32(h) : ref_bf16_to_f32(h);
}

static void from_f32(moba_dtype dt, void *base, size_t i, float x) {
    if (dt == MOBA_DTYPE_F32) ((float *)base)[i] = x;
    else if (dt == MOBA_DTYPE_F16) ((uint16_t *)base)[i] = ref_f32_to_f16(x);
    else ((uint16_t *)base)[i] = ref_f32_to_bf16(x);
}

static int rand_int(ref_rng *r, int lo, int hi) { /* lo..hi inclusive */
    return lo + (int)(ref_rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* The cache row holding token t of sequence s (written independently of the library). */
static int64_t row_of(const moba_cache_params *cp, const int32_t *table, int s, int t) {
    if (cp->page_size == 0) return (int64_t)s * cp->capacity + t;
    return (int64_t)table[s * cp->max_pages_per_seq + t / cp->page_size] * cp->page_size + t % cp->page_size;
}

/* Prefill o and lse of the whole problem with top_k (a huge top_k: full causal attention). */
static void prefill(const dcase *c, const int32_t *cu, int top_k, const void *q, const void *k, const void *v,
                    void *o, float *lse) {
    moba_params P;
    moba_params_init(&P);
    ref_set_problem(&P, c->dt, c->num_seqs, cu, c->hq, c->hkv, c->d, c->block_size, top_k);
    CHECK_FATAL(moba_forward(&P, q, k, v, o, lse, NULL, 0) == MOBA_OK, "%s: prefill: %s", c->name, moba_last_error());
}

static void run_case(const dcase *c) {
    const moba_dtype dt = c->dt;
    const size_t es = moba_dtype_size(dt);
    const int n = c->num_seqs, Hq = c->hq, Hkv = c->hkv, d = c->d, B = c->block_size;
    ref_rng rng;
    ref_rng_seed(&rng, c->seed);

    int32_t cu[MAX_SEQS + 1] = {0};
    int max_len = 0, max_blocks = 0;
    for (int s = 0; s < n; s++) {
        cu[s + 1] = cu[s] + c->lens[s];
        if (c->lens[s] > max_len) max_len = c->lens[s];
        if ((c->lens[s] + B - 1) / B > max_blocks) max_blocks = (c->lens[s] + B - 1) / B;
    }
    const int total = cu[n];
    const size_t qrow = (size_t)Hq * d, kvrow = (size_t)Hkv * d; /* elements per token */
    void *q = check_malloc(total * qrow * es), *k = check_malloc(total * kvrow * es),
         *v = check_malloc(total * kvrow * es);
    ref_fill_normal(&rng, dt, q, total * qrow, 1.0);
    ref_fill_normal(&rng, dt, k, total * kvrow, 1.0);
    ref_fill_normal(&rng, dt, v, total * kvrow, 1.0);
    if (c->ties_and_nan) {
        for (int b = 3; b <= 7; b += 2)
            memcpy((char *)k + (size_t)b * B * kvrow * es, (char *)k + (size_t)B * kvrow * es, (size_t)B * kvrow * es);
        from_f32(dt, k, (size_t)(6 * B + 5) * kvrow, NAN);
    }
    void *o_moba = check_malloc(total * qrow * es), *o_full = check_malloc(total * qrow * es);
    float *lse_moba = check_malloc(sizeof(float) * Hq * total), *lse_full = check_malloc(sizeof(float) * Hq * total);
    prefill(c, cu, c->top_k, q, k, v, o_moba, lse_moba);
    prefill(c, cu, max_blocks + 1, q, k, v, o_full, lse_full);

    /* the cache */
    moba_cache_params cp;
    moba_cache_params_init(&cp);
    cp.dtype = dt;
    cp.num_seqs = n;
    cp.num_q_heads = Hq;
    cp.num_kv_heads = Hkv;
    cp.head_dim = d;
    cp.block_size = B;
    cp.top_k = c->top_k;
    cp.page_size = c->page_size;
    int32_t *table = NULL;
    int64_t rows;
    if (c->page_size == 0) {
        cp.capacity = max_len + 3;
        rows = (int64_t)n * cp.capacity;
    } else {
        cp.max_pages_per_seq = (max_len + c->page_size - 1) / c->page_size + 1;
        cp.capacity = cp.max_pages_per_seq * c->page_size;
        cp.num_pages = (int64_t)n * cp.max_pages_per_seq + 3;
        int32_t *perm = check_malloc(sizeof(int32_t) * cp.num_pages);
        for (int i = 0; i < cp.num_pages; i++) perm[i] = i;
        for (int i = (int)cp.num_pages - 1; i > 0; i--) { /* shuffled pool */
            int j = rand_int(&rng, 0, i);
            int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        table = check_malloc(sizeof(int32_t) * n * cp.max_pages_per_seq);
        memcpy(table, perm, sizeof(int32_t) * n * cp.max_pages_per_seq);
        free(perm);
        rows = cp.num_pages * c->page_size;
    }
    const int slots = cp.capacity / B;
    const size_t kv_bytes = (size_t)rows * kvrow * es, cen_bytes = (size_t)n * slots * kvrow * es;
    char *kc = check_malloc(kv_bytes), *vc = check_malloc(kv_bytes), *cen = check_malloc(cen_bytes);
    char *want_k = check_malloc(kv_bytes), *want_v = check_malloc(kv_bytes), *want_c = check_malloc(cen_bytes);
    ref_poison(dt, kc, kv_bytes / es);
    ref_poison(dt, vc, kv_bytes / es);
    ref_poison(dt, cen, cen_bytes / es);

    void *k_new = check_malloc(total * kvrow * es), *v_new = check_malloc(total * kvrow * es);
    void *q_dec = check_malloc(total * qrow * es), *o_dec = check_malloc(total * qrow * es);
    float *lse_dec = check_malloc(sizeof(float) * Hq * total), *cen_row = check_malloc(sizeof(float) * d);
    int32_t seq_lens[MAX_SEQS] = {0}, cu_new[MAX_SEQS + 1], cu_q[MAX_SEQS + 1];
    long appends = 0, rows_checked = 0, cache_bad = 0, o_bad = 0, lse_bad = 0, full_bad = 0;

    for (int round = 0;; round++) {
        int left = 0;
        for (int s = 0; s < n; s++) left += c->lens[s] - seq_lens[s];
        if (!left) break;
        /* pieces: none, one, a few, a block, a block and a bit, anything */
        cu_new[0] = 0;
        for (int s = 0; s < n; s++) {
            int rem = c->lens[s] - seq_lens[s], kind = rand_int(&rng, 0, 6);
            int take = kind == 0 ? 0 : kind <= 2 ? 1 : kind == 3 ? rand_int(&rng, 2, 5) : kind == 4 ? B
                       : kind == 5 ? B + rand_int(&rng, 1, 3) : rand_int(&rng, 1, 2 * B);
            if (take > rem) take = rem;
            cu_new[s + 1] = cu_new[s] + take;
            memcpy((char *)k_new + cu_new[s] * kvrow * es, (char *)k + (cu[s] + seq_lens[s]) * kvrow * es, take * kvrow * es);
            memcpy((char *)v_new + cu_new[s] * kvrow * es, (char *)v + (cu[s] + seq_lens[s]) * kvrow * es, take * kvrow * es);
        }
        /* what the cache must hold afterwards */
        memcpy(want_k, kc, kv_bytes);
        memcpy(want_v, vc, kv_bytes);
        memcpy(want_c, cen, cen_bytes);
        for (int s = 0; s < n; s++) {
            int old = seq_lens[s], end = old + cu_new[s + 1] - cu_new[s];
            for (int t = old; t < end; t++) {
                int64_t r = row_of(&cp, table, s, t);
                memcpy(want_k + r * kvrow * es, (char *)k + (cu[s] + t) * kvrow * es, kvrow * es);
                memcpy(want_v + r * kvrow * es, (char *)v + (cu[s] + t) * kvrow * es, kvrow * es);
            }
            for (int i = old / B; i < end / B; i++)
                for (int hk = 0; hk < Hkv; hk++) {
                    for (int x = 0; x < d; x++) cen_row[x] = 0.0f;
                    for (int t = i * B; t < (i + 1) * B; t++)
                        for (int x = 0; x < d; x++) cen_row[x] += to_f32(dt, k, ((size_t)(cu[s] + t) * Hkv + hk) * d + x);
                    for (int x = 0; x < d; x++)
                        from_f32(dt, want_c, (((size_t)s * slots + i) * Hkv + hk) * d + x, cen_row[x] / (float)B);
                }
        }
        cp.num_threads = round % 3 + 1;
        moba_status st = moba_cache_append(&cp, seq_lens, cu_new, k_new, v_new, kc, vc, table, cen);
        CHECK_FATAL(st == MOBA_OK, "%s: append: %s", c->name, moba_last_error());
        appends++;
        cache_bad += memcmp(kc, want_k, kv_bytes) != 0;
        cache_bad += memcmp(vc, want_v, kv_bytes) != 0;
        cache_bad += memcmp(cen, want_c, cen_bytes) != 0;
        for (int s = 0; s < n; s++) seq_lens[s] += cu_new[s + 1] - cu_new[s];

        /* attend for the last 0..4 tokens of every sequence, MoBA and full */
        cu_q[0] = 0;
        for (int s = 0; s < n; s++) {
            int nq = seq_lens[s] == 0 ? 0 : rand_int(&rng, 0, seq_lens[s] < 4 ? seq_lens[s] : 4); /* 0: no query */
            cu_q[s + 1] = cu_q[s] + nq;
            memcpy((char *)q_dec + cu_q[s] * qrow * es, (char *)q + (cu[s] + seq_lens[s] - nq) * qrow * es, nq * qrow * es);
        }
        for (int full = 0; full <= 1; full++) {
            cp.full_attention = full;
            ref_poison(dt, o_dec, total * qrow);
            ref_poison(MOBA_DTYPE_F32, lse_dec, (size_t)Hq * total);
            st = moba_cache_attend(&cp, seq_lens, cu_q, q_dec, kc, vc, table, cen, o_dec, lse_dec, NULL, 0);
            CHECK_FATAL(st == MOBA_OK, "%s: attend: %s", c->name, moba_last_error());
            /* nothing written past the queries */
            cache_bad += ref_count_poison(dt, (char *)o_dec + cu_q[n] * qrow * es, (total - cu_q[n]) * qrow) !=
                         (total - cu_q[n]) * qrow;
            cache_bad += ref_count_poison(MOBA_DTYPE_F32, lse_dec + (size_t)Hq * cu_q[n], (size_t)Hq * (total - cu_q[n])) !=
                         (size_t)Hq * (total - cu_q[n]);
            const char *o_ref = full ? o_full : o_moba;
            const float *lse_ref = full ? lse_full : lse_moba;
            for (int s = 0; s < n; s++)
                for (int i = cu_q[s]; i < cu_q[s + 1]; i++) {
                    int t = cu[s] + seq_lens[s] - (cu_q[s + 1] - i); /* packed prefill row */
                    int bad = memcmp((char *)o_dec + i * qrow * es, o_ref + t * qrow * es, qrow * es) != 0;
                    for (int h = 0; h < Hq; h++)
                        bad |= (memcmp(&lse_dec[h * cu_q[n] + i], &lse_ref[h * total + t], 4) != 0) << 1;
                    if (full) full_bad += bad != 0;
                    else o_bad += bad & 1, lse_bad += bad >> 1;
                    if (bad && o_bad + lse_bad + full_bad <= 3)
                        fprintf(stderr, "%s: round %d seq %d pos %d (full %d): decode differs from prefill (%s)\n",
                                c->name, round, s, t - cu[s], full, bad & 1 ? "o" : "lse");
                    rows_checked++;
                }
        }
        cp.full_attention = 0;
    }
    CHECK(cache_bad == 0, "%s: %ld times a call wrote other than expected (cache after append, or o/lse past the queries)",
          c->name, cache_bad);
    CHECK(o_bad == 0 && lse_bad == 0, "%s: MoBA decode differs from prefill: o in %ld rows, lse in %ld rows", c->name,
          o_bad, lse_bad);
    CHECK(full_bad == 0, "%s: full-attention decode differs from full prefill in %ld rows", c->name, full_bad);

    /* and prefill, which decode reproduces bitwise, against the float64 reference */
    if (dt == MOBA_DTYPE_F32 && !c->ties_and_nan) {
        moba_params P;
        moba_params_init(&P);
        ref_set_problem(&P, dt, n, cu, Hq, Hkv, d, B, c->top_k);
        double *q64 = ref_load(dt, q, total * qrow), *k64 = ref_load(dt, k, total * kvrow),
               *v64 = ref_load(dt, v, total * kvrow), *o64 = check_malloc(sizeof(double) * total * qrow);
        ref_forward(&P, q64, k64, v64, o64, NULL);
        double err = ref_rel_err_storage(dt, o_moba, o64, total * qrow);
        CHECK(err < 1e-5, "%s: prefill vs float64 reference: rel err %.2e", c->name, err);
        printf("  %-44s %4ld appends, %5ld row checks bitwise = prefill; prefill vs f64 rel err %.1e\n", c->name, appends,
               rows_checked, err);
        free(q64), free(k64), free(v64), free(o64);
    } else {
        printf("  %-44s %4ld appends, %5ld row checks bitwise = prefill\n", c->name, appends, rows_checked);
    }
    free(q), free(k), free(v), free(o_moba), free(o_full), free(lse_moba), free(lse_full), free(table);
    free(kc), free(vc), free(cen), free(want_k), free(want_v), free(want_c), free(k_new), free(v_new);
    free(q_dec), free(o_dec), free(lse_dec), free(cen_row);
}

/* ---- bad arguments -------------------------------------------------------------------------- */

enum { BN = 2, BHQ = 4, BHKV = 2, BD = 8, BB = 8, BPS = 4, BPAGES = 4, BCAP = BPAGES * BPS, PATTERN = 0x5a };

/* A valid paged setup: 2 sequences of 10 and 5 tokens, 4 pages of 4 tokens per sequence. */
static float b_knew[3 * BHKV * BD], b_vnew[3 * BHKV * BD], b_q[4 * BHQ * BD];
static float b_kc[BN * BPAGES * BPS * BHKV * BD], b_vc[BN * BPAGES * BPS * BHKV * BD],
    b_cen[BN * (BCAP / BB) * BHKV * BD], b_o[4 * BHQ * BD], b_lse[BHQ * 4];
static size_t b_bytes;
static int32_t b_table[BN * BPAGES], b_lens[BN], b_cu_new[BN + 1], b_cu_q[BN + 1];

static struct { void *ptr; size_t bytes; } b_outputs[] = {
    {b_kc, sizeof b_kc}, {b_vc, sizeof b_vc}, {b_cen, sizeof b_cen}, {b_o, sizeof b_o}, {b_lse, sizeof b_lse},
    {&b_bytes, sizeof b_bytes},
};
enum { B_NUM_OUTPUTS = sizeof b_outputs / sizeof b_outputs[0] };

static void b_reset(moba_cache_params *p) {
    moba_cache_params_init(p);
    p->num_seqs = BN;
    p->num_q_heads = BHQ;
    p->num_kv_heads = BHKV;
    p->head_dim = BD;
    p->block_size = BB;
    p->top_k = 2;
    p->page_size = BPS;
    p->max_pages_per_seq = BPAGES;
    p->capacity = BCAP;
    p->num_pages = BN * BPAGES;
    for (int i = 0; i < BN * BPAGES; i++) b_table[i] = BN * BPAGES - 1 - i;
    b_lens[0] = 10, b_lens[1] = 5;
    b_cu_new[0] = 0, b_cu_new[1] = 2, b_cu_new[2] = 3; /* 10 + 2 and 5 + 1 */
    b_cu_q[0] = 0, b_cu_q[1] = 3, b_cu_q[2] = 4;
}

static void b_fill(void) {
    for (int i = 0; i < B_NUM_OUTPUTS; i++) memset(b_outputs[i].ptr, PATTERN, b_outputs[i].bytes);
}

static int b_untouched(void) {
    for (int i = 0; i < B_NUM_OUTPUTS; i++)
        for (size_t j = 0; j < b_outputs[i].bytes; j++)
            if (((unsigned char *)b_outputs[i].ptr)[j] != PATTERN) return 0;
    return 1;
}

typedef enum { FN_APPEND, FN_ATTEND, FN_WS, NUM_FN } fn_id;
static const char *fn_names[NUM_FN] = {"moba_cache_append", "moba_cache_attend", "moba_cache_workspace_size"};

/* Pointer arguments set to NULL by name ("" = none). */
static moba_status b_call(fn_id fn, const moba_cache_params *p, const char *null) {
#define ARG(name, value) (strcmp(null, #name) == 0 ? NULL : (value))
    switch (fn) {
    case FN_APPEND:
        return moba_cache_append(p, ARG(seq_lens, b_lens), ARG(cu_new, b_cu_new), ARG(k_new, b_knew),
                                 ARG(v_new, b_vnew), ARG(k_cache, b_kc), ARG(v_cache, b_vc), ARG(block_table, b_table),
                                 ARG(centroids, b_cen));
    case FN_ATTEND:
        return moba_cache_attend(p, ARG(seq_lens, b_lens), ARG(cu_q, b_cu_q), ARG(q, b_q), ARG(k_cache, b_kc),
                                 ARG(v_cache, b_vc), ARG(block_table, b_table), ARG(centroids, b_cen), ARG(o, b_o),
                                 b_lse, NULL, 0);
    default:
        return moba_cache_workspace_size(p, ARG(seq_lens, b_lens), ARG(cu_q, b_cu_q), ARG(bytes, &b_bytes));
    }
#undef ARG
}

static void expect(const char *what, fn_id fn, const moba_cache_params *p, const char *null, moba_status want,
                   const char *names) {
    b_fill();
    moba_forward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0); /* a stale message of another function */
    moba_status got = b_call(fn, p, null);
    const char *msg = moba_last_error();
    CHECK(got == want, "%s / %s: status %d (%s), want %d; message '%s'", what, fn_names[fn], got, moba_strerror(got),
          want, msg);
    CHECK(strstr(msg, fn_names[fn]) != NULL, "%s: message '%s' does not name %s", what, msg, fn_names[fn]);
    int named = 0;
    char list[128];
    snprintf(list, sizeof list, "%s", names);
    for (char *tok = strtok(list, "|"); tok; tok = strtok(NULL, "|")) named |= has_word(msg, tok);
    CHECK(named, "%s / %s: message '%s' does not name '%s'", what, fn_names[fn], msg, names);
    CHECK(b_untouched(), "%s / %s: an output was written on failure", what, fn_names[fn]);
    if (fn == FN_ATTEND || (fn == FN_APPEND && strstr(what, "append"))) printf("  %-40s %s\n", what, msg);
}

static void expect_all(const char *what, const moba_cache_params *p, moba_status want, const char *names) {
    for (int fn = 0; fn < NUM_FN; fn++) expect(what, (fn_id)fn, p, "", want, names);
}

static void test_bad_arguments(void) {
    moba_cache_params p;
    const moba_status BAD = MOBA_ERR_INVALID_ARGUMENT;
    ref_rng rng;
    ref_rng_seed(&rng, 7);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, b_knew, sizeof b_knew / 4, 1.0);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, b_vnew, sizeof b_vnew / 4, 1.0);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, b_q, sizeof b_q / 4, 1.0);

    /* the valid calls work (on a cache whose contents do not matter here) */
    b_reset(&p);
    for (int fn = 0; fn < NUM_FN; fn++) {
        b_fill();
        CHECK(b_call((fn_id)fn, &p, "") == MOBA_OK, "valid %s: %s", fn_names[fn], moba_last_error());
    }
    CHECK(b_bytes == 0, "the CPU decode needs no workspace, got %zu bytes", b_bytes);
    b_reset(&p);
    p.full_attention = 1;
    p.top_k = 0; /* ignored with full attention */
    CHECK(b_call(FN_ATTEND, &p, "") == MOBA_OK, "full attention with top_k 0: %s", moba_last_error());
    b_reset(&p);
    b_table[BPAGES - 1] = 99; /* sequence 0's last page is never touched by these calls */
    CHECK(b_call(FN_APPEND, &p, "") == MOBA_OK && b_call(FN_ATTEND, &p, "") == MOBA_OK,
          "a bad page id in a page no call touches: %s", moba_last_error());

#define CASE(what, change, want, names) \
    do {                                \
        b_reset(&p);                    \
        change;                         \
        expect_all(what, &p, want, names); \
    } while (0)
    for (int fn = 0; fn < NUM_FN; fn++) expect("params NULL", (fn_id)fn, NULL, "", BAD, "params");
    CASE("backend 7", p.backend = (moba_backend)7, BAD, "backend");
    CASE("dtype 9", p.dtype = (moba_dtype)9, BAD, "dtype");
    CASE("num_threads -1", p.num_threads = -1, BAD, "num_threads");
    CASE("num_seqs 0", p.num_seqs = 0, BAD, "num_seqs");
    CASE("num_q_heads 0", p.num_q_heads = 0, BAD, "num_q_heads");
    CASE("num_kv_heads 0", p.num_kv_heads = 0, BAD, "num_kv_heads");
    CASE("num_q_heads 6 % num_kv_heads 4", (p.num_q_heads = 6, p.num_kv_heads = 4), BAD, "num_q_heads");
    CASE("head_dim 0", p.head_dim = 0, BAD, "head_dim");
    CASE("head_dim 257", p.head_dim = 257, BAD, "head_dim");
    CASE("block_size 0", p.block_size = 0, BAD, "block_size");
    CASE("capacity 0", (p.page_size = 0, p.capacity = 0), BAD, "capacity");
    CASE("page_size -1", p.page_size = -1, BAD, "page_size");
    CASE("page_size 3 does not divide block_size 8", (p.page_size = 3, p.capacity = 3 * BPAGES), BAD, "page_size");
    CASE("max_pages_per_seq 0", p.max_pages_per_seq = 0, BAD, "max_pages_per_seq");
    CASE("num_pages 0", p.num_pages = 0, BAD, "num_pages");
    CASE("capacity != max_pages_per_seq x page_size", p.capacity = BCAP - 1, BAD, "capacity");
    CASE("cache sizes overflow", (p.num_pages = INT64_MAX / 2), BAD, "overflow");
    CASE("contiguous cache sizes overflow",
         (p.page_size = 0, p.capacity = INT32_MAX, p.num_q_heads = p.num_kv_heads = INT32_MAX, p.head_dim = 256), BAD,
         "overflow");
    CASE("seq_lens[1] > capacity", b_lens[1] = BCAP + 1, BAD, "seq_lens");
    CASE("seq_lens[0] negative", b_lens[0] = -1, BAD, "seq_lens");
    if (!moba_backend_available(MOBA_BACKEND_CUDA))
        CASE("backend CUDA", p.backend = MOBA_BACKEND_CUDA, MOBA_ERR_UNSUPPORTED, "MOBA_BACKEND_CUDA");
    /* attend's own settings (append ignores them) */
    const fn_id attenders[2] = {FN_ATTEND, FN_WS};
    for (int a = 0; a < 2; a++) {
        fn_id fn = attenders[a];
#define ACASE(what, change, names) \
    do {                           \
        b_reset(&p);               \
        change;                    \
        expect(what, fn, &p, "", BAD, names); \
    } while (0)
        ACASE("top_k 0", p.top_k = 0, "top_k");
        ACASE("full_attention 2", p.full_attention = 2, "full_attention");
        ACASE("softmax_scale -1", p.softmax_scale = -1.0f, "softmax_scale");
        ACASE("softmax_scale NaN", p.softmax_scale = NAN, "softmax_scale");
        ACASE("softmax_scale inf", p.softmax_scale = INFINITY, "softmax_scale");
        ACASE("cu_q[0] 1", b_cu_q[0] = 1, "cu_q");
        ACASE("cu_q decreasing", b_cu_q[2] = 2, "cu_q");
        ACASE("n_q 6 > seq_lens[1] 5", b_cu_q[2] = 9, "cu_q|seq_lens");
        expect("seq_lens NULL", fn, &p, "seq_lens", BAD, "seq_lens");
        expect("cu_q NULL", fn, &p, "cu_q", BAD, "cu_q");
    }
    b_reset(&p);
    expect("bytes NULL", FN_WS, &p, "bytes", BAD, "bytes");
    const char *attend_ptrs[] = {"q", "k_cache", "v_cache", "block_table", "centroids", "o"};
    for (int i = 0; i < 6; i++) expect("attend NULL pointer", FN_ATTEND, &p, attend_ptrs[i], BAD, attend_ptrs[i]);
    const char *append_ptrs[] = {"seq_lens", "cu_new", "k_new", "v_new", "k_cache", "v_cache", "block_table",
                                 "centroids"};
    for (int i = 0; i < 8; i++) expect("append NULL pointer", FN_APPEND, &p, append_ptrs[i], BAD, append_ptrs[i]);
    /* append's lengths and pages */
#define PCASE(what, change, names) \
    do {                           \
        b_reset(&p);               \
        change;                    \
        expect(what, FN_APPEND, &p, "", BAD, names); \
    } while (0)
    PCASE("append: cu_new[0] 1", b_cu_new[0] = 1, "cu_new");
    PCASE("append: cu_new decreasing", b_cu_new[2] = 1, "cu_new");
    PCASE("append: seq_lens + new > capacity", b_lens[0] = BCAP - 1, "capacity|seq_lens");
    PCASE("append: page id >= num_pages", b_table[2] = BN * BPAGES, "block_table");
    PCASE("append: page id -1", b_table[BPAGES + 1] = -1, "block_table");
    PCASE("append: page id of the block it completes", (b_lens[0] = 7, b_cu_new[1] = 1, b_table[0] = 123),
          "block_table");
    b_reset(&p);
    b_table[BPAGES + 0] = 8;
    expect("attend: page id >= num_pages", FN_ATTEND, &p, "", BAD, "block_table");
#undef CASE
#undef ACASE
#undef PCASE
}

int main(void) {
    static const dcase cases[] = {
        {"f32 contiguous B16 top3 GQA 4/2", MOBA_DTYPE_F32, 3, {300, 77, 1}, 4, 2, 16, 16, 3, 0, 1, 0},
        {"bf16 paged ps=B=128 top3 (2 chunks/block)", MOBA_DTYPE_BF16, 2, {700, 260}, 2, 1, 32, 128, 3, 128, 2, 0},
        {"f16 paged ps8 B32 top4 d24 GQA 6/2", MOBA_DTYPE_F16, 3, {200, 150, 90}, 6, 2, 24, 32, 4, 8, 3, 0},
        {"f32 paged ps4 B96 top2 d40 (chunks span pages)", MOBA_DTYPE_F32, 2, {500, 333}, 3, 3, 40, 96, 2, 4, 4, 0},
        {"bf16 contiguous B8 top1 (own block only)", MOBA_DTYPE_BF16, 2, {90, 41}, 2, 2, 8, 8, 1, 0, 5, 0},
        {"f32 paged ps16 B64 top>=blocks (= full)", MOBA_DTYPE_F32, 4, {200, 64, 3, 129}, 4, 1, 16, 64, 9, 16, 6, 0},
        {"f16 contiguous B200 top2 d129 (odd)", MOBA_DTYPE_F16, 1, {650}, 1, 1, 129, 200, 2, 0, 8, 0},
        {"bf16 paged ps8 B16 top3, tied gates, a NaN key", MOBA_DTYPE_BF16, 2, {250, 40}, 2, 1, 16, 16, 3, 8, 9, 1},
    };
    printf("decode vs prefill:\n");
    for (int rep = 0; rep < 3; rep++) /* other seeds: other pieces, other query counts */
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            dcase c = cases[i];
            c.seed += 1000 * (uint64_t)rep;
            run_case(&c);
        }
    printf("bad arguments:\n");
    test_bad_arguments();
    return check_done("test_decode");
}
