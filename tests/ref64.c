/*
 * The float64 MoBA reference and test helpers (see ref64.h). Written from the semantics, not from
 * the library: every row lists the keys it attends (its selected blocks cut by the causal mask, or
 * for the causal reference simply every earlier key of its sequence) and then runs textbook
 * softmax attention and its gradient in double.
 */
#include "ref64.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *xmalloc(size_t n) {
    void *ptr = malloc(n ? n : 1);
    if (!ptr) {
        fprintf(stderr, "ref64: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return ptr;
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- storage dtypes ---- */

/* f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float ref_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in fp32 */
        float f = ldexpf((float)m, -24);
        return bits_f32(f32_bits(f) | sign);
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* Round to nearest even: keep the top bits, look at the dropped remainder against half. */
uint16_t ref_f32_to_f16(float f) {
    uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* NaN stays NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* >= 65520 (halfway past 65504): inf */
    if (ax < 0x38800000u) { /* below 2^-14: an f16 subnormal, in units of 2^-24 */
        uint32_t e = ax >> 23;
        if (e < 102) return (uint16_t)sign; /* < 2^-25: rounds to zero */
        uint32_t m = (ax & 0x7fffff) | 0x800000, shift = 126 - e; /* value = m * 2^(e-150) */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (ax >> 13) - ((127 - 15) << 10), rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

/* bf16: the top 16 bits of an fp32. */
float ref_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ref_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

size_t ref_dtype_size(moba_dtype dt) {
    switch (dt) {
    case MOBA_DTYPE_F32: return 4;
    case MOBA_DTYPE_F16: return 2;
    case MOBA_DTYPE_BF16: return 2;
    }
    return 0;
}

static double load_one(moba_dtype dt, const void *src, size_t i) {
    if (dt == MOBA_DTYPE_F32) return ((const float *)src)[i];
    uint16_t h = ((const uint16_t *)src)[i];
    return dt == MOBA_DTYPE_F16 ? ref_f16_to_f32(h) : ref_bf16_to_f32(h);
}

static void store_one(moba_dtype dt, void *dst, size_t i, double x) {
    float f = (float)x;
    if (dt == MOBA_DTYPE_F32) ((float *)dst)[i] = f;
    else ((uint16_t *)dst)[i] = dt == MOBA_DTYPE_F16 ? ref_f32_to_f16(f) : ref_f32_to_bf16(f);
}

double ref_round_to_storage(moba_dtype dt, double x) {
    unsigned char tmp[4];
    store_one(dt, tmp, 0, x);
    return load_one(dt, tmp, 0);
}

void ref_to_double(moba_dtype dt, const void *src, size_t n, double *dst) {
    for (size_t i = 0; i < n; i++) dst[i] = load_one(dt, src, i);
}

void ref_from_double(moba_dtype dt, const double *src, size_t n, void *dst) {
    for (size_t i = 0; i < n; i++) store_one(dt, dst, i, src[i]);
}

double *ref_load(moba_dtype dt, const void *src, size_t n) {
    double *d = xmalloc(n * sizeof *d);
    ref_to_double(dt, src, n, d);
    return d;
}

/* ---- random ---- */

void ref_rng_seed(ref_rng *r, uint64_t seed) { r->state = seed; }

uint64_t ref_rng_next(ref_rng *r) {
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double ref_rng_uniform(ref_rng *r) { return (double)(ref_rng_next(r) >> 11) * 0x1.0p-53; }

double ref_rng_normal(ref_rng *r) {
    double u1 = 1.0 - ref_rng_uniform(r), u2 = ref_rng_uniform(r); /* u1 in (0, 1] */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

void ref_fill_normal(ref_rng *r, moba_dtype dt, void *dst, size_t n, double stddev) {
    for (size_t i = 0; i < n; i++) {
        double x = stddev * ref_rng_normal(r);
        if (x == 0.0) x = stddev; /* never an all-zero tensor, not even a zero element */
        store_one(dt, dst, i, x);
    }
}

/* ---- comparison ---- */

double ref_rel_err(const double *x, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (isnan(num)) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double ref_rel_err_storage(moba_dtype dt, const void *x, const double *ref, size_t n) {
    double *xd = ref_load(dt, x, n);
    double e = ref_rel_err(xd, ref, n);
    free(xd);
    return e;
}

double ref_rel_err_f32(const float *x, const double *ref, size_t n) {
    return ref_rel_err_storage(MOBA_DTYPE_F32, x, ref, n);
}

/* ---- poison: signalling NaNs (arithmetic only ever makes quiet ones) ---- */

#define POISON_F32 0x7fbadbadu
#define POISON_F16 0x7d5au
#define POISON_BF16 0x7fa5u
#define POISON_I32 0x5eadbeef

void ref_poison(moba_dtype dt, void *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (dt == MOBA_DTYPE_F32) ((uint32_t *)buf)[i] = POISON_F32;
        else ((uint16_t *)buf)[i] = dt == MOBA_DTYPE_F16 ? POISON_F16 : POISON_BF16;
    }
}

size_t ref_count_poison(moba_dtype dt, const void *buf, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (dt == MOBA_DTYPE_F32) c += ((const uint32_t *)buf)[i] == POISON_F32;
        else c += ((const uint16_t *)buf)[i] == (dt == MOBA_DTYPE_F16 ? POISON_F16 : POISON_BF16);
    }
    return c;
}

void ref_poison_i32(int32_t *buf, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] = POISON_I32;
}

size_t ref_count_poison_i32(const int32_t *buf, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += buf[i] == POISON_I32;
    return c;
}

void ref_set_problem(moba_params *p, moba_dtype dt, int num_seqs, const int32_t *cu, int hq, int hkv, int d,
                     int block_size, int top_k) {
    p->dtype = dt;
    p->num_seqs = num_seqs;
    p->cu_seqlens = cu;
    p->total_tokens = cu[num_seqs];
    p->num_q_heads = hq;
    p->num_kv_heads = hkv;
    p->head_dim = d;
    p->block_size = block_size;
    p->top_k = top_k;
}

/* ---- the reference ---- */

double ref_scale(const moba_params *p) {
    return p->softmax_scale == 0.0f ? 1.0 / sqrt((double)p->head_dim) : (double)p->softmax_scale;
}

static int max_seqlen(const moba_params *p) {
    int m = 0;
    for (int s = 0; s < p->num_seqs; s++) {
        int len = p->cu_seqlens[s + 1] - p->cu_seqlens[s];
        if (len > m) m = len;
    }
    return m;
}

static double dot(const double *a, const double *b, int d) {
    double s = 0;
    for (int i = 0; i < d; i++) s += a[i] * b[i];
    return s;
}

typedef struct {
    double score;
    int block;
} scored_block;

/* Best first: higher score, then lower block index; NaN ranks below everything. */
static int by_score(const void *a, const void *b) {
    const scored_block *x = a, *y = b;
    int xn = isnan(x->score), yn = isnan(y->score);
    if (xn != yn) return xn - yn;
    if (!xn && x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->block - y->block;
}

static int ascending(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* centroid_i = mean of the B keys of full block i, rounded to the storage dtype; each q head scores
 * the history blocks i < j of its row's block j and keeps the best top_k - 1, plus block j. */
void ref_route(const moba_params *p, const double *q, const double *k, int32_t *sel, double *margin) {
    const int Hq = p->num_q_heads, Hkv = p->num_kv_heads, d = p->head_dim, B = p->block_size, K = p->top_k;
    const int64_t T = p->total_tokens;
    const int group = Hq / Hkv;
    int maxlen = max_seqlen(p), maxfull = maxlen / B;
    double *cent = xmalloc((size_t)Hkv * (maxfull + 1) * d * sizeof *cent);
    scored_block *cand = xmalloc((size_t)(maxfull + 1) * sizeof *cand);
    int *chosen = xmalloc((size_t)(maxfull + 1) * sizeof *chosen);
    for (int s = 0; s < p->num_seqs; s++) {
        int64_t start = p->cu_seqlens[s];
        int len = p->cu_seqlens[s + 1] - p->cu_seqlens[s], nfull = len / B;
        for (int hk = 0; hk < Hkv; hk++)
            for (int i = 0; i < nfull; i++)
                for (int x = 0; x < d; x++) {
                    double sum = 0;
                    for (int r = 0; r < B; r++) sum += k[((start + (int64_t)i * B + r) * Hkv + hk) * d + x];
                    cent[((size_t)hk * (maxfull + 1) + i) * d + x] = ref_round_to_storage(p->dtype, sum / B);
                }
        for (int h = 0; h < Hq; h++) {
            int hk = h / group;
            for (int t = 0; t < len; t++) {
                int j = t / B;
                const double *qr = q + ((start + t) * Hq + h) * (int64_t)d;
                for (int i = 0; i < j; i++) {
                    cand[i].score = dot(qr, cent + ((size_t)hk * (maxfull + 1) + i) * d, d);
                    cand[i].block = i;
                }
                qsort(cand, (size_t)j, sizeof *cand, by_score);
                int m = K - 1 < j ? K - 1 : j;
                for (int i = 0; i < m; i++) chosen[i] = cand[i].block;
                qsort(chosen, (size_t)m, sizeof *chosen, ascending);
                int32_t *row = sel + ((int64_t)h * T + start + t) * K;
                for (int i = 0; i < K; i++) row[i] = i < m ? chosen[i] : i == m ? j : -1;
                if (margin)
                    margin[(int64_t)h * T + start + t] = (m > 0 && m < j) ? cand[m - 1].score - cand[m].score : INFINITY;
            }
        }
    }
    free(cent);
    free(cand);
    free(chosen);
}

int ref_check_selection(const moba_params *p, const int32_t *sel, char *why, size_t whylen) {
    const int K = p->top_k, B = p->block_size;
    const int64_t T = p->total_tokens;
    for (int h = 0; h < p->num_q_heads; h++)
        for (int s = 0; s < p->num_seqs; s++)
            for (int64_t tok = p->cu_seqlens[s]; tok < p->cu_seqlens[s + 1]; tok++) {
                int j = (int)(tok - p->cu_seqlens[s]) / B, n = K < j + 1 ? K : j + 1;
                const int32_t *row = sel + ((int64_t)h * T + tok) * K;
                for (int i = 0; i < K; i++) {
                    int ok = i < n - 1 ? (row[i] >= 0 && row[i] < j && (i == 0 || row[i] > row[i - 1]))
                                       : i == n - 1 ? row[i] == j : row[i] == -1;
                    if (!ok) {
                        snprintf(why, whylen, "head %d token %lld (block %d): entry %d is %d", h, (long long)tok, j, i, row[i]);
                        return -1;
                    }
                }
            }
    return 0;
}

void ref_random_selection(const moba_params *p, ref_rng *r, int32_t *sel) {
    const int K = p->top_k, B = p->block_size;
    const int64_t T = p->total_tokens;
    for (int h = 0; h < p->num_q_heads; h++)
        for (int s = 0; s < p->num_seqs; s++)
            for (int64_t tok = p->cu_seqlens[s]; tok < p->cu_seqlens[s + 1]; tok++) {
                const int j = (int)(tok - p->cu_seqlens[s]) / B, m = K - 1 < j ? K - 1 : j;
                int32_t *row = sel + ((int64_t)h * T + tok) * K;
                /* m of the j history blocks, each taken with probability (still needed) / (still left) */
                int n = 0;
                for (int i = 0; i < j && n < m; i++)
                    if (ref_rng_uniform(r) * (j - i) < m - n) row[n++] = i;
                row[n++] = j;
                while (n < K) row[n++] = -1;
            }
}

size_t ref_selection_mismatches(const moba_params *p, const int32_t *a, const int32_t *b, const double *margin,
                                double tie_margin, size_t *near_ties) {
    size_t rows = (size_t)p->num_q_heads * p->total_tokens, K = (size_t)p->top_k, bad = 0, ties = 0;
    for (size_t r = 0; r < rows; r++) {
        if (!memcmp(a + r * K, b + r * K, K * sizeof *a)) continue;
        if (margin && margin[r] < tie_margin) ties++;
        else bad++;
    }
    if (near_ties) *near_ties = ties;
    return bad;
}

/* The keys (packed token indices) that token `tok` of sequence s attends under head h: the keys of
 * its selected blocks at positions <= its own (sel != NULL), or every key up to it (sel == NULL). */
static int row_keys(const moba_params *p, const int32_t *sel, int h, int s, int64_t tok, int64_t *keys) {
    const int64_t start = p->cu_seqlens[s], pos = tok - start;
    int n = 0;
    if (!sel) {
        for (int64_t c = 0; c <= pos; c++) keys[n++] = start + c;
        return n;
    }
    const int32_t *row = sel + ((int64_t)h * p->total_tokens + tok) * p->top_k;
    for (int i = 0; i < p->top_k && row[i] >= 0; i++)
        for (int64_t c = (int64_t)row[i] * p->block_size; c < (int64_t)(row[i] + 1) * p->block_size && c <= pos; c++)
            keys[n++] = start + c;
    return n;
}

/* Scaled scores of one row over its keys, turned into probabilities P_c = exp(s_c - lse). */
static double row_probs(const moba_params *p, const double *qr, const double *k, int hk, const int64_t *keys,
                        int n, double *prob) {
    const int d = p->head_dim, Hkv = p->num_kv_heads;
    const double scale = ref_scale(p);
    double mx = -INFINITY;
    for (int c = 0; c < n; c++) {
        prob[c] = scale * dot(qr, k + (keys[c] * Hkv + hk) * d, d);
        if (prob[c] > mx) mx = prob[c];
    }
    double sum = 0;
    for (int c = 0; c < n; c++) sum += exp(prob[c] - mx);
    double lse = mx + log(sum);
    for (int c = 0; c < n; c++) prob[c] = exp(prob[c] - lse);
    return lse;
}

/* o = sum_c P_c v_c; lse = log sum_c exp(s_c). */
static void attend_forward(const moba_params *p, const int32_t *sel, const double *q, const double *k,
                           const double *v, double *o, double *lse) {
    const int Hq = p->num_q_heads, Hkv = p->num_kv_heads, d = p->head_dim, group = Hq / Hkv;
    int maxlen = max_seqlen(p);
    int64_t *keys = xmalloc((size_t)maxlen * sizeof *keys);
    double *prob = xmalloc((size_t)maxlen * sizeof *prob);
    for (int s = 0; s < p->num_seqs; s++)
        for (int64_t tok = p->cu_seqlens[s]; tok < p->cu_seqlens[s + 1]; tok++)
            for (int h = 0; h < Hq; h++) {
                int hk = h / group, n = row_keys(p, sel, h, s, tok, keys);
                const double *qr = q + (tok * Hq + h) * d;
                double l = row_probs(p, qr, k, hk, keys, n, prob);
                double *orow = o + (tok * Hq + h) * d;
                for (int x = 0; x < d; x++) orow[x] = 0;
                for (int c = 0; c < n; c++) {
                    const double *vr = v + (keys[c] * Hkv + hk) * d;
                    for (int x = 0; x < d; x++) orow[x] += prob[c] * vr[x];
                }
                if (lse) lse[(int64_t)h * p->total_tokens + tok] = l;
            }
    free(keys);
    free(prob);
}

/* With D = <do, o> = sum_c P_c <do, v_c> and dS_c = P_c (<do, v_c> - D):
 *   dv_c += P_c do,   dq = scale sum_c dS_c k_c,   dk_c += scale dS_c q. */
static void attend_backward(const moba_params *p, const int32_t *sel, const double *q, const double *k,
                            const double *v, const double *dout, double *dq, double *dk, double *dv) {
    const int Hq = p->num_q_heads, Hkv = p->num_kv_heads, d = p->head_dim, group = Hq / Hkv;
    const int64_t T = p->total_tokens;
    const double scale = ref_scale(p);
    int maxlen = max_seqlen(p);
    int64_t *keys = xmalloc((size_t)maxlen * sizeof *keys);
    double *prob = xmalloc((size_t)maxlen * sizeof *prob), *dp = xmalloc((size_t)maxlen * sizeof *dp);
    memset(dq, 0, (size_t)T * Hq * d * sizeof *dq);
    memset(dk, 0, (size_t)T * Hkv * d * sizeof *dk);
    memset(dv, 0, (size_t)T * Hkv * d * sizeof *dv);
    for (int s = 0; s < p->num_seqs; s++)
        for (int64_t tok = p->cu_seqlens[s]; tok < p->cu_seqlens[s + 1]; tok++)
            for (int h = 0; h < Hq; h++) {
                int hk = h / group, n = row_keys(p, sel, h, s, tok, keys);
                const double *qr = q + (tok * Hq + h) * d, *dor = dout + (tok * Hq + h) * d;
                row_probs(p, qr, k, hk, keys, n, prob);
                double D = 0;
                for (int c = 0; c < n; c++) {
                    dp[c] = dot(dor, v + (keys[c] * Hkv + hk) * d, d);
                    D += prob[c] * dp[c];
                }
                double *dqr = dq + (tok * Hq + h) * d;
                for (int c = 0; c < n; c++) {
                    double ds = prob[c] * (dp[c] - D);
                    const double *kr = k + (keys[c] * Hkv + hk) * d;
                    double *dkr = dk + (keys[c] * Hkv + hk) * d, *dvr = dv + (keys[c] * Hkv + hk) * d;
                    for (int x = 0; x < d; x++) {
                        dqr[x] += scale * ds * kr[x];
                        dkr[x] += scale * ds * qr[x];
                        dvr[x] += prob[c] * dor[x];
                    }
                }
            }
    free(keys);
    free(prob);
    free(dp);
}

/* A malformed selection (say, from a GPU under test) would make row_keys overrun: refuse it. */
static void require_selection(const moba_params *p, const int32_t *sel) {
    char why[160];
    if (ref_check_selection(p, sel, why, sizeof why)) {
        fprintf(stderr, "ref64: malformed selection: %s\n", why);
        exit(1);
    }
}

void ref_forward_sel(const moba_params *p, const int32_t *sel, const double *q, const double *k,
                     const double *v, double *o, double *lse) {
    require_selection(p, sel);
    attend_forward(p, sel, q, k, v, o, lse);
}

void ref_backward_sel(const moba_params *p, const int32_t *sel, const double *q, const double *k,
                      const double *v, const double *dout, double *dq, double *dk, double *dv) {
    require_selection(p, sel);
    attend_backward(p, sel, q, k, v, dout, dq, dk, dv);
}

static int32_t *route_alloc(const moba_params *p, const double *q, const double *k) {
    int32_t *sel = xmalloc((size_t)p->num_q_heads * p->total_tokens * p->top_k * sizeof *sel);
    ref_route(p, q, k, sel, NULL);
    return sel;
}

void ref_forward(const moba_params *p, const double *q, const double *k, const double *v, double *o, double *lse) {
    int32_t *sel = route_alloc(p, q, k);
    attend_forward(p, sel, q, k, v, o, lse);
    free(sel);
}

void ref_backward(const moba_params *p, const double *q, const double *k, const double *v,
                  const double *dout, double *dq, double *dk, double *dv) {
    int32_t *sel = route_alloc(p, q, k);
    attend_backward(p, sel, q, k, v, dout, dq, dk, dv);
    free(sel);
}

void ref_causal_forward(const moba_params *p, const double *q, const double *k, const double *v,
                        double *o, double *lse) {
    attend_forward(p, NULL, q, k, v, o, lse);
}

void ref_causal_backward(const moba_params *p, const double *q, const double *k, const double *v,
                         const double *dout, double *dq, double *dk, double *dv) {
    attend_backward(p, NULL, q, k, v, dout, dq, dk, dv);
}
