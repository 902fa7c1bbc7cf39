/*
 * A float64 reference of MoBA for the tests, written from the semantics in moba.h / DESIGN.md and
 * sharing no code with the library (only its public types), plus the tests' helpers: storage
 * conversions (own round-to-nearest-even fp32 <-> f16 / bf16), a seeded RNG, relative error and
 * output poisoning.
 *
 * Tensors of the reference are double arrays in the library's layouts:
 *   q, o, dout, dq [total, Hq, d];  k, v, dk, dv [total, Hkv, d];  lse [Hq, total];
 *   sel [Hq, total, top_k] int32, the format of moba_route (ascending block indices counted from
 *   the sequence start, the row's own block the last valid entry, -1 padding).
 * Only these moba_params fields are read: dtype (routing centroids are rounded to it), num_seqs,
 * total_tokens, cu_seqlens, num_q_heads, num_kv_heads, head_dim, block_size, top_k, softmax_scale.
 * Plain O(N^2) loops: fine for test sizes (a few thousand tokens).
 */
#ifndef MOBA_REF64_H
#define MOBA_REF64_H

#include <stddef.h>
#include <stdint.h>

#include "moba.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- storage dtypes (round to nearest even, NaN stays NaN, overflow -> inf) ---- */
float ref_f16_to_f32(uint16_t h);
uint16_t ref_f32_to_f16(float f);
float ref_bf16_to_f32(uint16_t h);
uint16_t ref_f32_to_bf16(float f);
size_t ref_dtype_size(moba_dtype dt);                  /* 4, 2, 2; 0 if unknown */
double ref_round_to_storage(moba_dtype dt, double x);  /* x rounded to fp32 then to the dtype */
void ref_to_double(moba_dtype dt, const void *src, size_t n, double *dst);
void ref_from_double(moba_dtype dt, const double *src, size_t n, void *dst);
double *ref_load(moba_dtype dt, const void *src, size_t n); /* malloc'd copy as double */

/* ---- random inputs ---- */
typedef struct {
    uint64_t state;
} ref_rng;
void ref_rng_seed(ref_rng *r, uint64_t seed);
uint64_t ref_rng_next(ref_rng *r);     /* splitmix64 */
double ref_rng_uniform(ref_rng *r);    /* [0, 1) */
double ref_rng_normal(ref_rng *r);     /* standard normal (Box-Muller) */
/* n storage elements of N(0, stddev^2), rounded to the dtype; never all zero */
void ref_fill_normal(ref_rng *r, moba_dtype dt, void *dst, size_t n, double stddev);

/* ---- comparison ---- */
/* |x - ref| / |ref| in the Frobenius norm (|x - ref| if ref is all zero); NaN anywhere -> inf. */
double ref_rel_err(const double *x, const double *ref, size_t n);
double ref_rel_err_storage(moba_dtype dt, const void *x, const double *ref, size_t n);
double ref_rel_err_f32(const float *x, const double *ref, size_t n);

/* ---- poison: a NaN bit pattern no computation produces, to see unwritten outputs ---- */
void ref_poison(moba_dtype dt, void *buf, size_t n);          /* F32 poison is also for lse */
size_t ref_count_poison(moba_dtype dt, const void *buf, size_t n);
void ref_poison_i32(int32_t *buf, size_t n);
size_t ref_count_poison_i32(const int32_t *buf, size_t n);

/* Sets the problem fields of p (the rest, e.g. from moba_params_init, stays): dtype, num_seqs,
 * cu_seqlens, total_tokens = cu[num_seqs], heads, head_dim, block_size, top_k. */
void ref_set_problem(moba_params *p, moba_dtype dt, int num_seqs, const int32_t *cu, int hq, int hkv, int d,
                     int block_size, int top_k);

/* ---- the reference ---- */
double ref_scale(const moba_params *p);  /* softmax_scale, or 1/sqrt(d) when it is 0 */

/* Routing: writes sel. If margin != NULL, margin[h * total + t] = the gap between the worst kept
 * and the best dropped history score of that row (+inf when nothing was dropped): rows with a tiny
 * margin may legitimately route differently in fp32. */
void ref_route(const moba_params *p, const double *q, const double *k, int32_t *sel, double *margin);

/* Checks that sel is well formed for p (entries ascending, in range, own block last, -1 padded, as
 * many entries as min(top_k, own block + 1)). 0 if so; else -1 with a description in why. */
int ref_check_selection(const moba_params *p, const int32_t *sel, char *why, size_t whylen);

/* A uniformly random selection that passes ref_check_selection: per row min(top_k - 1, own block) distinct
 * history blocks, ascending, then the own block, then -1 (a routing the library would not choose). */
void ref_random_selection(const moba_params *p, ref_rng *r, int32_t *sel);

/* Rows (head, token) where selections a and b differ. A row whose margin (from ref_route, may be
 * NULL) is below tie_margin counts in *near_ties instead (an fp32 near-tie, not a bug). */
size_t ref_selection_mismatches(const moba_params *p, const int32_t *a, const int32_t *b, const double *margin,
                                double tie_margin, size_t *near_ties);

/* Forward / backward over a given selection (e.g. a GPU's own routing). lse may be NULL. A selection
 * that fails ref_check_selection is reported on stderr and exits the process. */
void ref_forward_sel(const moba_params *p, const int32_t *sel, const double *q, const double *k,
                     const double *v, double *o, double *lse);
void ref_backward_sel(const moba_params *p, const int32_t *sel, const double *q, const double *k,
                      const double *v, const double *dout, double *dq, double *dk, double *dv);

/* The same, routing by themselves (ref_route). */
void ref_forward(const moba_params *p, const double *q, const double *k, const double *v,
                 double *o, double *lse);
void ref_backward(const moba_params *p, const double *q, const double *k, const double *v,
                  const double *dout, double *dq, double *dk, double *dv);

/* Plain causal attention, no blocks at all: what top_k >= number of blocks must equal. */
void ref_causal_forward(const moba_params *p, const double *q, const double *k, const double *v,
                        double *o, double *lse);
void ref_causal_backward(const moba_params *p, const double *q, const double *k, const double *v,
                         const double *dout, double *dq, double *dk, double *dv);

#ifdef __cplusplus
}
#endif

#endif
