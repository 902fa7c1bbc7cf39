/*
 * libmoba: MoBA (Mixture of Block Attention, arXiv 2502.13189) as a plain C library.
 *
 * The whole public API is this header. Conventions (FlashAttention varlen):
 *   q          [total, num_q_heads,  head_dim]   contiguous, storage dtype
 *   k, v       [total, num_kv_heads, head_dim]   contiguous, storage dtype
 *   o, do, dq  like q;  dk, dv like k
 *   lse        [num_q_heads, total]              float32, natural log
 *   cu_seqlens [num_seqs + 1]                    int32, HOST memory, 0 = c[0] <= c[1] <= ... = total
 *   block_idx  [num_q_heads, total, top_k]       int32 (moba_route output)
 *
 * What is computed, per sequence and q head h (kv head h / (num_q_heads / num_kv_heads)):
 *   keys are cut into blocks of block_size tokens from the sequence start (the last may be partial);
 *   centroid_i = mean of the keys of full block i, rounded to the storage dtype;
 *   a query at position t in block j = t / block_size scores the history blocks i < j by
 *   s_i = <q_t, centroid_i> (fp32), keeps the top_k - 1 best (ties -> lower i; NaN ranks lowest),
 *   adds its own block j, and attends the union with the causal mask (key position <= t):
 *     o_t = sum_c softmax(scale * <q_t, k_c>) v_c,   lse_t = log sum_c exp(scale * <q_t, k_c>).
 *   top_k counts the own block: top_k = 1 is block-local causal attention, and top_k >= number of
 *   blocks of a sequence is exactly full causal attention. Routing is not differentiable.
 *
 * Errors: every function returns a moba_status. On failure nothing the caller owns is written and
 * moba_last_error() names the bad argument and its value. Functions are thread-safe; the library
 * keeps no global state except the per-thread last-error message.
 */
#ifndef MOBA_H
#define MOBA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Symbols the shared library exports (everything else stays hidden). */
#if defined(__GNUC__) && defined(MOBA_BUILDING)
#define MOBA_API __attribute__((visibility("default")))
#else
#define MOBA_API
#endif

#define MOBA_VERSION_MAJOR 0
#define MOBA_VERSION_MINOR 1
#define MOBA_VERSION_PATCH 0

typedef enum {
    MOBA_OK = 0,
    MOBA_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad size, bad cu_seqlens, ...            */
    MOBA_ERR_UNSUPPORTED = 2,      /* valid, but not supported by this backend or build          */
    MOBA_ERR_OUT_OF_MEMORY = 3,    /* an internal allocation failed                              */
    MOBA_ERR_WORKSPACE_TOO_SMALL = 4, /* workspace_bytes < moba_workspace_size(...)              */
    MOBA_ERR_CUDA = 5,             /* a CUDA runtime call failed (message has cudaGetErrorString) */
    MOBA_ERR_INTERNAL = 6          /* a bug: please report it                                     */
} moba_status;

/* Storage dtype of q, k, v, o, do, dq, dk, dv (all the same). The CPU computes in fp32 and rounds
 * f16/bf16 to nearest-even on store. lse is always float32. */
typedef enum {
    MOBA_DTYPE_F32 = 0,
    MOBA_DTYPE_F16 = 1,
    MOBA_DTYPE_BF16 = 2
} moba_dtype;

typedef enum {
    MOBA_BACKEND_CPU = 0,  /* host pointers, OpenMP                                    */
    MOBA_BACKEND_CUDA = 1  /* device pointers (cu_seqlens stays on the host), a stream */
} moba_backend;

/* Which call a workspace is sized for. */
typedef enum {
    MOBA_OP_FORWARD = 0,
    MOBA_OP_BACKWARD = 1,
    MOBA_OP_ROUTE = 2
} moba_op;

/* One flat struct describes a call. Fill it with moba_params_init() and then set the fields. */
typedef struct {
    moba_backend backend;       /* default MOBA_BACKEND_CPU                                      */
    void *cuda_stream;          /* cudaStream_t for MOBA_BACKEND_CUDA; NULL = default stream     */
    int num_threads;            /* CPU: OpenMP threads, 0 = OpenMP's default                     */

    moba_dtype dtype;           /* storage dtype of every tensor but lse; default F32            */
    int num_seqs;               /* >= 1                                                          */
    int64_t total_tokens;       /* = cu_seqlens[num_seqs], >= 1, <= INT32_MAX                     */
    const int32_t *cu_seqlens;  /* [num_seqs + 1], host memory, read only                        */
    int num_q_heads;            /* >= 1, a multiple of num_kv_heads                              */
    int num_kv_heads;           /* >= 1                                                          */
    int head_dim;               /* CPU: 1..256; CUDA: see moba_backend_supports                  */

    int block_size;             /* B >= 1 tokens per block                                       */
    int top_k;                  /* >= 1 blocks per query, counting the query's own block         */
    float softmax_scale;        /* > 0; 0 means 1/sqrt(head_dim)                                 */

    int deterministic;          /* backward: 1 = bitwise reproducible dq/dk/dv (CPU always is)  */
} moba_params;

/* Defaults: CPU backend, F32, softmax_scale 0 (= 1/sqrt(d)), everything else 0/NULL. */
MOBA_API void moba_params_init(moba_params *p);

/* Bytes of scratch memory the call `op` needs for these params (host memory for the CPU backend,
 * device memory for CUDA). Pass a buffer at least that large as `workspace`, or pass workspace =
 * NULL (and workspace_bytes = 0) to let the library allocate and free it inside the call. The size
 * depends only on the params (never on thread count). Validates the params like the call itself. */
MOBA_API moba_status moba_workspace_size(const moba_params *p, moba_op op, size_t *bytes);

/* Forward: writes o [total, Hq, d] and, if lse != NULL, lse [Hq, total] (float32).
 * Every element of o (and lse) is written, for every token of every sequence. */
MOBA_API moba_status moba_forward(const moba_params *p,
                                  const void *q, const void *k, const void *v,
                                  void *o, float *lse,
                                  void *workspace, size_t workspace_bytes);

/* Backward: given dout = dL/do, the forward's inputs, its output o and its lse (both required),
 * OVERWRITES dq [total, Hq, d], dk and dv [total, Hkv, d] with the gradients of attention over the
 * keys the routing selects (recomputed from q and k, identical to the forward's). For GQA, dk/dv of a
 * kv head are summed over the q heads that share it. */
MOBA_API moba_status moba_backward(const moba_params *p,
                                   const void *dout, const void *q, const void *k, const void *v,
                                   const void *o, const float *lse,
                                   void *dq, void *dk, void *dv,
                                   void *workspace, size_t workspace_bytes);

/* Routing only: writes block_idx [Hq, total, top_k] int32. For each (q head, token) the selected
 * blocks (0-based, counted from the start of the token's sequence) in increasing order; the token's
 * own block is always present (it is the last valid entry); the remaining slots hold -1.
 * top_k >= number of blocks of a sequence selects all of its blocks up to the token's own. */
MOBA_API moba_status moba_route(const moba_params *p,
                                const void *q, const void *k,
                                int32_t *block_idx,
                                void *workspace, size_t workspace_bytes);

/* Human-readable name of a status ("invalid argument", ...). Never NULL. */
MOBA_API const char *moba_strerror(moba_status status);

/* The message of the last failed call on this thread ("" if none), e.g.
 * "moba_forward: num_q_heads (6) is not a multiple of num_kv_heads (4)". Valid until the next
 * libmoba call on the same thread. */
MOBA_API const char *moba_last_error(void);

/* 1 if this build has the backend and (for CUDA) a usable device is present, else 0. */
MOBA_API int moba_backend_available(moba_backend backend);

/* Whether `backend` supports these dtype/head_dim/block_size settings: MOBA_OK or
 * MOBA_ERR_UNSUPPORTED with a message saying what is not supported. No other argument is checked. */
MOBA_API moba_status moba_backend_supports(moba_backend backend, moba_dtype dtype, int head_dim, int block_size);

/* "major.minor.patch" of the library that is linked. */
MOBA_API const char *moba_version(void);

/* Size in bytes of one element of a storage dtype (0 for an unknown dtype). */
MOBA_API size_t moba_dtype_size(moba_dtype dtype);

#ifdef __cplusplus
}
#endif

#endif /* MOBA_H */
