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
#define MOBA_VERSION_MINOR 2
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
/* CUDA pointers: tensors (q, k, v, o, dout, dq, dk, dv, caches, centroids) 16-byte aligned, lse and block_idx 4-byte, a
 * caller's workspace 256-byte (cudaMalloc gives 256); others: MOBA_ERR_INVALID_ARGUMENT naming it. */

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

    int deterministic;          /* backward: 1 = bitwise reproducible dq/dk/dv. The CPU always is; CUDA
                                   with 0 sums dq with atomics (faster, more workspace: docs/cuda-backward.md) */

    int32_t *block_idx;         /* optional, NULL = not used. [num_q_heads, total, top_k] int32 in moba_route's
                                   format, in the backend's memory (device memory for CUDA). moba_forward
                                   writes the selection it used there; moba_backward then reads it instead of
                                   recomputing the routing (saves the routing pass; docs/design.md). Pass what
                                   moba_forward or moba_route wrote for the same q, k and params. Not read when
                                   routing is trivial (top_k == 1 or top_k >= every sequence's blocks).
                                   moba_route ignores this field (it has its own output). */
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
 * keys the routing selects: p->block_idx when set (the forward's selection), else recomputed from q
 * and k (identical to the forward's). For GQA, dk/dv of a kv head are summed over the q heads that
 * share it. A p->block_idx that is not a valid selection (rows: ascending history blocks < the own
 * block, the own block, -1 padding) is refused by the CPU backend (MOBA_ERR_INVALID_ARGUMENT, naming
 * the entry); the CUDA backend cannot read it without a synchronisation, so there its invalid entries
 * are skipped (wrong gradients, never an out-of-bounds access). */
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

/* ---- Decode: KV caches and attention for new tokens (serving) ------------------------------------
 *
 * Caches are caller-owned buffers in the storage dtype, laid out in one of two ways:
 *   contiguous (page_size = 0):  k_cache, v_cache [num_seqs, capacity, Hkv, d]
 *   paged      (page_size > 0):  k_cache, v_cache [num_pages, page_size, Hkv, d], and
 *                                block_table int32 [num_seqs, max_pages_per_seq] (page ids, host memory for
 *                                the CPU backend, device memory for CUDA); token t of sequence s lives in page
 *                                block_table[s][t / page_size], row t % page_size. block_size % page_size == 0,
 *                                capacity == max_pages_per_seq * page_size. The pages a call touches must hold
 *                                ids in [0, num_pages) (checked on the CPU backend), and no two sequences may
 *                                share a page (not checked).
 *   centroids [num_seqs, capacity / block_size, Hkv, d] (storage dtype): slot i holds the centroid of block i
 *   of the sequence once that block is full (written by moba_cache_append, exactly as prefill computes it).
 * seq_lens int32 [num_seqs] (host memory) is how many tokens each sequence's cache holds; the caller owns
 * it and adds what it appended. */
typedef struct {
    moba_backend backend;       /* as in moba_params */
    void *cuda_stream;
    int num_threads;

    moba_dtype dtype;
    int num_seqs;               /* >= 1 */
    int num_q_heads;            /* a multiple of num_kv_heads */
    int num_kv_heads;
    int head_dim;

    int block_size;             /* >= 1 */
    int top_k;                  /* >= 1, counts the own block */
    float softmax_scale;        /* 0 = 1/sqrt(head_dim) */
    int full_attention;         /* 1: attend every cached key up to the query (dense decode), top_k ignored */

    int page_size;              /* 0 = contiguous caches; else tokens per page, dividing block_size */
    int capacity;               /* tokens per sequence: contiguous rows, or max_pages_per_seq * page_size */
    int max_pages_per_seq;      /* paged: columns of block_table */
    int64_t num_pages;          /* paged: pages in the pool */
} moba_cache_params;

MOBA_API void moba_cache_params_init(moba_cache_params *p);

/* Appends new_lens[s] = cu_new[s+1] - cu_new[s] tokens to each sequence s: k_new, v_new [cu_new[num_seqs],
 * Hkv, d] are written at positions seq_lens[s] .. seq_lens[s] + new_lens[s] - 1, and the centroid of every
 * block that becomes full is written to its slot. Nothing already in the cache is rewritten. cu_new is host
 * memory. seq_lens[s] + new_lens[s] must fit in capacity (and, paged, in valid pages of block_table).
 * Append reads only the layout fields of p (dtype, heads, head_dim, block_size, page geometry); top_k,
 * softmax_scale and full_attention matter to moba_cache_attend alone. */
MOBA_API moba_status moba_cache_append(const moba_cache_params *p, const int32_t *seq_lens, const int32_t *cu_new,
                                       const void *k_new, const void *v_new,
                                       void *k_cache, void *v_cache, const int32_t *block_table, void *centroids);

/* Attention for the newest tokens: q [cu_q[num_seqs], Hq, d] holds, for sequence s, the queries of its last
 * cu_q[s+1] - cu_q[s] positions (seq_lens[s] - n .. seq_lens[s] - 1; their keys already appended). Each query
 * routes like prefill (cached centroids of the full blocks before its own block, top_k - 1 best, plus its own
 * block) unless full_attention, and attends causally. Writes o like q and, if lse != NULL, lse [Hq, cu_q[num_seqs]].
 * The output equals moba_forward's at those positions for the same q, k, v (bitwise on the CPU). */
MOBA_API moba_status moba_cache_attend(const moba_cache_params *p, const int32_t *seq_lens, const int32_t *cu_q,
                                       const void *q, const void *k_cache, const void *v_cache,
                                       const int32_t *block_table, const void *centroids,
                                       void *o, float *lse, void *workspace, size_t workspace_bytes);

/* Workspace bytes of moba_cache_attend for these params and lengths (NULL workspace: the library allocates).
 * 0 on the CPU backend. On CUDA the size depends on full_attention too: a workspace shared by MoBA and
 * full-attention calls must have the larger of the two sizes. */
MOBA_API moba_status moba_cache_workspace_size(const moba_cache_params *p, const int32_t *seq_lens,
                                               const int32_t *cu_q, size_t *bytes);

/* Human-readable name of a status ("invalid argument", ...). Never NULL. */
MOBA_API const char *moba_strerror(moba_status status);

/* The message of the last failed call on this thread, e.g.
 * "moba_forward: num_q_heads (6) is not a multiple of num_kv_heads (4)". Every call that returns a
 * moba_status clears it on entry, so after a successful call it is "". Valid until the next such call on
 * the same thread. */
MOBA_API const char *moba_last_error(void);

/* 1 if this build has the backend and (for CUDA) a usable device is present, else 0. */
MOBA_API int moba_backend_available(moba_backend backend);

/* Whether `backend` supports these dtype/head_dim/block_size settings: MOBA_OK, or
 * MOBA_ERR_UNSUPPORTED with a message saying what is not supported (MOBA_ERR_INVALID_ARGUMENT for an
 * unknown backend or dtype, or block_size < 1). CUDA without a usable device is unsupported too. */
MOBA_API moba_status moba_backend_supports(moba_backend backend, moba_dtype dtype, int head_dim, int block_size);

/* "major.minor.patch" of the library that is linked. */
MOBA_API const char *moba_version(void);

/* Size in bytes of one element of a storage dtype (0 for an unknown dtype). */
MOBA_API size_t moba_dtype_size(moba_dtype dtype);

#ifdef __cplusplus
}
#endif

#endif /* MOBA_H */
