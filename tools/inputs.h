/*
 * The .npy inputs of `moba attn` and `moba route`, loaded and checked against each other before any
 * work: dtypes agree, shapes agree, cu_seqlens is int32 0 = c[0] <= ... <= c[n] = total.
 */
#ifndef MOBA_TOOLS_INPUTS_H
#define MOBA_TOOLS_INPUTS_H

#include <stddef.h>
#include <stdint.h>

#include "moba.h"
#include "npy.h"

typedef struct {
    npy_array q, k, v, cu_seqlens, dout;  /* v, dout: empty when not asked for */
    moba_dtype dtype;
    int64_t total;
    int num_q_heads, num_kv_heads, head_dim, num_seqs;
} attn_inputs;

/* Loads the files (v_path, dout_path may be NULL). 0, or -1 with "--flag PATH: problem" in err. */
int inputs_load(attn_inputs *in, const char *q_path, const char *k_path, const char *v_path,
                const char *cu_path, const char *dout_path, char *err, size_t errlen);
void inputs_free(attn_inputs *in);

/* The library call's description of these inputs (backend, threads, block_size, top_k, scale set by the caller). */
void inputs_params(const attn_inputs *in, moba_params *p);

#endif
