/*
 * Decode timings over a KV cache of random tokens, shared by `moba decode-bench` (tools/cmd_decode_bench.c) and
 * bench/decode_bench.c: the cache is filled through moba_cache_append in pieces, then moba_cache_attend is timed
 * with one new query per sequence, each step with new queries and (CPU) cold caches.
 *
 * Keys a query at position t attends (the bound of a decode step is context / this):
 *   min(top_k - 1, t / B) history blocks of B keys, plus the t % B + 1 keys of its own block.
 */
#ifndef MOBA_TOOLS_DECODE_CACHE_H
#define MOBA_TOOLS_DECODE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "moba.h"

/* Tokens per sequence appended by one moba_cache_append call while filling. */
#define DECODE_PIECE 65536

/* The buffers of one cache: k, v, centroids and block_table where the backend reads them (device memory
 * for CUDA); seq_lens on the host. table_host is the host copy of block_table (NULL when contiguous). */
typedef struct {
    moba_cache_params p;
    void *k, *v, *centroids;
    int32_t *block_table, *table_host, *seq_lens;
} decode_cache;

/* Copies bytes from host src to dst where the backend reads (cudaMemcpy for CUDA); 0 or -1 with a message. */
typedef int (*decode_upload_fn)(void *dst, const void *src, size_t bytes, char *err, size_t errlen);
/* Waits for the backend's queued work; 0 or -1 with a message. */
typedef int (*decode_sync_fn)(char *err, size_t errlen);

int64_t decode_attended_keys(int64_t t, int block_size, int top_k);

/* n uniform values of variance ~1 in the storage dtype, from the xorshift state *st (rounded by truncation:
 * fine for timing, not for checking numbers). */
void decode_random_fill(void *x, size_t n, moba_dtype dt, uint64_t *st);

/* Page ids in a scattered order, as a pool would hand them out: a permutation of 0 .. num_pages - 1. */
void decode_scatter_pages(int32_t *table, int64_t num_pages);

/* Element counts of one cache tensor (k or v) and of one centroid buffer for block size B. */
size_t decode_cache_elems(const moba_cache_params *p);
size_t decode_centroid_elems(const moba_cache_params *p, int block_size);

/* Appends `ctx` random tokens to every sequence of c (seq_lens from 0 to ctx), DECODE_PIECE per sequence per
 * call. Each piece is appended once per centroid set i (block size block_sizes[i], written into centroids[i]);
 * the K/V rows are the same each time. upload (NULL on the CPU) stages each piece from the host into
 * k_stage, v_stage (DECODE_PIECE * num_seqs rows each) first.
 * 0; a moba_status > 0 (the message in moba_last_error()); or -1 with a message in err. */
int decode_fill(decode_cache *c, int ctx, int nsets, const int *block_sizes, void *const *centroids, uint64_t *st,
                decode_upload_fn upload, void *k_stage, void *v_stage, char *err, size_t errlen);

/* Seconds of one decode step, one query per sequence (cu_q = 0, 1, ..., num_seqs): the best of reps after one
 * warm-up, step r reading query set r + 1 of q (q_set_bytes each, reps + 1 sets). evict: read 128 MiB before
 * each step (the other layers of a model run between two steps of this one). sync: NULL on the CPU.
 * Returns 0; a moba_status > 0; or -1 with a message in err. */
int decode_time_attend(const decode_cache *c, const char *q, size_t q_set_bytes, void *o, int reps, int evict,
                       decode_sync_fn sync, double *best, char *err, size_t errlen);

#endif
