/*
 * Appending to KV caches on the CPU: copy the new rows in, then the centroid of every block the
 * append completes, exactly as prefill routing computes it (route.c, cpu_centroids):
 *
 *   centroid[s][i][hk] = round_to_dtype( (sum_{t = i*B}^{i*B + B - 1} k[s][t][hk]) / B )   (fp32 sum, ascending t)
 *
 * Rows below seq_lens[s] and the centroids of blocks that were already full are never written.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../cache_backend.h"
#include "../error.h"
#include "../half.h"
#include "cpu.h"

moba_status moba_cpu_cache_append(const moba_cache_call *c, const void *k_new, const void *v_new, void *k_cache,
                                  void *v_cache, void *centroids) {
    const char *fn = "moba_cache_append";
    const moba_cache_params *p = c->p;
    const int d = p->head_dim, Hkv = p->num_kv_heads, B = p->block_size, n = p->num_seqs;
    const size_t row_bytes = moba_dtype_size(p->dtype) * (size_t)Hkv * (size_t)d; /* one token, every kv head */
    const int threads = p->num_threads > 0 ? p->num_threads : omp_get_max_threads();

    /* completed blocks of sequence s: i in [seq_lens[s] / B, (seq_lens[s] + new) / B); numbered
     * across sequences from done_base[s] */
    int64_t *done_base = malloc(sizeof(int64_t) * (size_t)(n + 1));
    char *scratch = cpu_scratch_alloc(fn, threads, sizeof(float) * (size_t)d * 2);
    if (!done_base || !scratch) {
        free(done_base);
        cpu_scratch_free(scratch);
        return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "%s: could not allocate %d sequences' bookkeeping", fn, n);
    }
    done_base[0] = 0;
    for (int s = 0; s < n; s++) {
        int64_t len = c->seq_lens[s], end = len + c->cu[s + 1] - c->cu[s];
        done_base[s + 1] = done_base[s] + end / B - len / B;
    }
    const int64_t done = done_base[n];

#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n; s++)
            for (int64_t i = c->cu[s]; i < c->cu[s + 1]; i++) {
                int64_t row = moba_cache_row(c, s, c->seq_lens[s] + i - c->cu[s]);
                memcpy((char *)k_cache + row * row_bytes, (const char *)k_new + i * row_bytes, row_bytes);
                memcpy((char *)v_cache + row * row_bytes, (const char *)v_new + i * row_bytes, row_bytes);
            }
        /* the implicit barrier: every new key is in the cache before its block's centroid is taken */
        float *row = (float *)(scratch + cpu_align64(sizeof(float) * (size_t)d * 2) * (size_t)omp_get_thread_num());
        float *cen = row + d;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < (int64_t)Hkv * done; item++) {
            int hk = (int)(item / done);
            int64_t slot = item % done;
            int s = moba_segment_of(done_base, n, slot);
            int64_t block = c->seq_lens[s] / B + (slot - done_base[s]);
            memset(cen, 0, sizeof(float) * (size_t)d);
            for (int t = 0; t < B; t++) {
                moba_load_f32(p->dtype, k_cache, moba_cache_at(c, s, block * B + t, hk), d, row);
                for (int x = 0; x < d; x++) cen[x] += row[x];
            }
            for (int x = 0; x < d; x++) cen[x] = moba_round_to(p->dtype, cen[x] / (float)B);
            moba_store_f32(p->dtype, centroids, moba_cache_centroid(c, s, block, hk), d, cen);
        }
    }
    free(done_base);
    cpu_scratch_free(scratch);
    return MOBA_OK;
}
