/*
 * The CUDA backend's entry points (src/backend.h) other than the forward kernel: availability,
 * what is supported, the workspace plan, the layout upload, routing, allocation.
 *
 * Workspace of a call (device memory, each piece 256-byte aligned):
 *   tiles      [num_tiles] moba_tile   query tiles of 64 rows (routing), heaviest first
 *   ftiles     [num_ftiles] moba_tile  query tiles of 128 rows (forward), heaviest first
 *   cu_seqlens [num_seqs + 1] int32
 *   full_base  [num_seqs + 1] int32    first centroid slot of each sequence
 *   centroids  [Hkv][total_full_blocks][d]  storage dtype      (routing only)
 *   sel        [Hq][total][top_k] int32                       (forward / backward with routing only)
 *   fpairs     [num_ftiles + 1] int64   history pairs before each forward tile (key-block-major only)
 *   topk_lists [tiles][Hq][64][top_k - 1] int2   only when top_k is too large for shared memory
 *   key-block-major forward only, then: its flags, pass plan, lse, groups, tiles, pairs and partials (kbm_plan)
 *   backward only, then: D, the inverted index and its sort's scratch (backward.cu: bwd_plan)
 */
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

int moba_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n > 0;
}

moba_status moba_cuda_supports(moba_dtype dtype, int head_dim, int block_size) {
    if (!moba_cuda_available())
        return moba_fail(MOBA_ERR_UNSUPPORTED, "CUDA backend: no usable CUDA device");
    if (dtype != MOBA_DTYPE_BF16 && dtype != MOBA_DTYPE_F16)
        return moba_fail(MOBA_ERR_UNSUPPORTED, "CUDA backend: dtype %d is not supported (bf16 and f16 are; use the CPU "
                         "backend for f32)", (int)dtype);
    if (head_dim != 64 && head_dim != 128)
        return moba_fail(MOBA_ERR_UNSUPPORTED, "CUDA backend: head_dim %d is not supported (64 and 128 are)", head_dim);
    if (block_size <= 0 || block_size % 16 != 0)
        return moba_fail(MOBA_ERR_UNSUPPORTED, "CUDA backend: block_size %d is not supported (a multiple of 16 is)",
                         block_size);
    return MOBA_OK;
}

moba_status moba_cuda_check_call(const moba_call *c, const char *fn) {
    const moba_params *p = c->p;
    moba_status st = moba_cuda_supports(p->dtype, p->head_dim, p->block_size);
    if (st != MOBA_OK) return st;
    if ((size_t)(c->L.max_blocks / 32 + 1) * 4 > 64 * 1024)
        return moba_fail(MOBA_ERR_UNSUPPORTED, "%s: CUDA backend: a sequence of %d blocks is too long for the block "
                         "bitmap (at most %d blocks)", fn, c->L.max_blocks, 64 * 1024 * 8);
    return MOBA_OK;
}

/* The kernels move q, k, v, o (and the gradients) in 16-byte pieces (cp.async, vector loads and
 * stores) and lay the workspace out in 256-byte-aligned pieces, so a pointer off those boundaries is
 * refused here, by name, instead of faulting in a kernel. NULL (no lse, a library-owned workspace)
 * passes; the core has already refused the NULLs that are not allowed. */
moba_status moba_cuda_check_aligned(const char *fn, int n, const char *const *names, const void *const *ptrs,
                                    const int *align) {
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] % (uintptr_t)align[i] != 0)
            return moba_fail(MOBA_ERR_INVALID_ARGUMENT, "%s: CUDA backend: %s (%p) is not %d-byte aligned", fn,
                             names[i], ptrs[i], align[i]);
    return MOBA_OK;
}

/* Does this call need routing (centroids + top-k)? Not when every row attends all its history
 * (top_k >= blocks) or only its own block (top_k == 1). */
static int needs_routing(const moba_call *c) { return !c->full_attention && c->p->top_k > 1; }

void moba_cuda_make_plan(const moba_call *c, moba_op op, moba_cuda_plan *plan) {
    const moba_params *p = c->p;
    size_t es = moba_dtype_size(p->dtype), off = 0;
    memset(plan, 0, sizeof *plan);
    plan->num_tiles = moba_layout_num_tiles(&c->L, MOBA_TILE_ROWS);
    plan->tiles = off;
    off = align256(off + (size_t)plan->num_tiles * sizeof(moba_tile));
    plan->num_ftiles = moba_layout_num_tiles(&c->L, MOBA_FWD_TILE_ROWS);
    plan->ftiles = off;
    off = align256(off + (size_t)plan->num_ftiles * sizeof(moba_tile));
    plan->cu_seqlens = off;
    off = align256(off + (size_t)(p->num_seqs + 1) * sizeof(int32_t));
    plan->full_base = off;
    off = align256(off + (size_t)(p->num_seqs + 1) * sizeof(int32_t));
    plan->kbm = op == MOBA_OP_FORWARD && moba_cuda_kbm_enabled(c);
    plan->fpairs = off;
    if (plan->kbm) off = align256(off + (size_t)(plan->num_ftiles + 1) * sizeof(int64_t));
    plan->upload_end = off;
    /* the backward recomputes the forward's routing, so it needs the same pieces */
    int fwd = op == MOBA_OP_FORWARD || op == MOBA_OP_BACKWARD;
    int route = op == MOBA_OP_ROUTE || (fwd && needs_routing(c));
    plan->centroids = off;
    if (route && needs_routing(c))
        off = align256(off + (size_t)p->num_kv_heads * (size_t)c->L.total_full_blocks * p->head_dim * es);
    plan->sel = off;
    plan->sel_stride = c->slots;
    if (fwd && route)
        off = align256(off + (size_t)p->num_q_heads * (size_t)c->L.total_tokens * c->slots * sizeof(int32_t));
    plan->topk_lists = off;
    int k1 = p->top_k - 1;
    if (route && needs_routing(c) && !moba_cuda_topk_list_fits_smem(k1)) {
        plan->lists_in_global = 1;
        off = align256(off + (size_t)plan->num_tiles * p->num_q_heads * MOBA_TILE_ROWS * k1 * 2 * sizeof(int32_t));
    }
    if (plan->kbm) off = moba_cuda_kbm_plan(c, plan, off);
    plan->total = off; /* the backward's own pieces follow (backward.cu) */
}

/* backward.cu: the end of the backward's pieces laid out from `off`, and the backward itself */
size_t moba_cuda_backward_workspace_end(const moba_call *c, size_t off);
moba_status moba_cuda_backward_run(const moba_call *c, const moba_cuda_plan *plan, void *ws,
                                   const moba_cuda_layout *dl, const void *dout, const void *q, const void *k,
                                   const void *v, const void *o, const float *lse, void *dq, void *dk, void *dv);

size_t moba_cuda_workspace_size(const moba_call *c, moba_op op) {
    moba_cuda_plan plan;
    moba_cuda_make_plan(c, op, &plan);
    return op == MOBA_OP_BACKWARD ? moba_cuda_backward_workspace_end(c, plan.total) : plan.total;
}

moba_status moba_cuda_alloc(const moba_call *c, size_t bytes, void **ptr) {
    cudaError_t err = cudaMallocAsync(ptr, bytes, (cudaStream_t)c->p->cuda_stream);
    if (err != cudaSuccess) {
        *ptr = NULL;
        return moba_fail(err == cudaErrorMemoryAllocation ? MOBA_ERR_OUT_OF_MEMORY : MOBA_ERR_CUDA,
                         "CUDA backend: could not allocate a workspace of %zu bytes: %s", bytes, cudaGetErrorString(err));
    }
    return MOBA_OK;
}

void moba_cuda_free(const moba_call *c, void *ptr) {
    if (ptr) cudaFreeAsync(ptr, (cudaStream_t)c->p->cuda_stream);
}

/* Tiles with the most work (highest block index) go first, so the long ones do not finish last. */
static int heavier_first(const void *x, const void *y) {
    const moba_tile *a = (const moba_tile *)x, *b = (const moba_tile *)y;
    if (a->block != b->block) return a->block > b->block ? -1 : 1;
    return a->row_begin < b->row_begin ? -1 : (a->row_begin > b->row_begin);
}

moba_status moba_cuda_upload_layout(const moba_call *c, const moba_cuda_plan *plan, void *ws, moba_cuda_layout *dl) {
    const moba_layout *L = &c->L;
    size_t bytes = plan->upload_end;
    char *host = (char *)calloc(1, bytes);
    if (!host) return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "CUDA backend: could not allocate %zu host bytes", bytes);
    moba_tile *tiles = (moba_tile *)(host + plan->tiles), *ftiles = (moba_tile *)(host + plan->ftiles);
    moba_layout_tiles(L, MOBA_TILE_ROWS, tiles);
    qsort(tiles, (size_t)plan->num_tiles, sizeof(moba_tile), heavier_first);
    moba_layout_tiles(L, MOBA_FWD_TILE_ROWS, ftiles);
    qsort(ftiles, (size_t)plan->num_ftiles, sizeof(moba_tile), heavier_first);
    memcpy(host + plan->cu_seqlens, L->cu_seqlens, (size_t)(L->num_seqs + 1) * sizeof(int32_t));
    int32_t *base = (int32_t *)(host + plan->full_base);
    base[0] = 0;
    for (int s = 0; s < L->num_seqs; s++) base[s + 1] = base[s] + moba_seq_full_blocks(L, s);
    if (plan->kbm) { /* tile f's rows each have min(block, slots - 1) history selections */
        int64_t *fp = (int64_t *)(host + plan->fpairs);
        fp[0] = 0;
        for (int64_t f = 0; f < plan->num_ftiles; f++) {
            int nh = ftiles[f].block < c->slots - 1 ? ftiles[f].block : c->slots - 1;
            fp[f + 1] = fp[f] + (ftiles[f].row_end - ftiles[f].row_begin) * nh;
        }
    }
    /* From pageable memory the copy is staged before cudaMemcpyAsync returns: host may be freed. */
    cudaError_t err = cudaMemcpyAsync(ws, host, bytes, cudaMemcpyHostToDevice, (cudaStream_t)c->p->cuda_stream);
    free(host);
    MOBA_CUDA_TRY(err);
    dl->tiles = (const moba_tile *)((char *)ws + plan->tiles);
    dl->cu_seqlens = (const int32_t *)((char *)ws + plan->cu_seqlens);
    dl->full_base = (const int32_t *)((char *)ws + plan->full_base);
    dl->ftiles = (const moba_tile *)((char *)ws + plan->ftiles);
    dl->num_tiles = plan->num_tiles;
    dl->num_ftiles = plan->num_ftiles;
    return MOBA_OK;
}

moba_status moba_cuda_route(const moba_call *c, const void *q, const void *k, int32_t *block_idx, void *ws) {
    moba_status st = moba_cuda_supports(c->p->dtype, c->p->head_dim, c->p->block_size);
    static const char *const names[] = {"q", "k", "block_idx", "workspace"};
    const void *const ptrs[] = {q, k, block_idx, ws};
    static const int align[] = {16, 16, 4, 256};
    if (st == MOBA_OK) st = moba_cuda_check_aligned("moba_route", 4, names, ptrs, align);
    if (st != MOBA_OK) return st;
    moba_cuda_plan plan;
    moba_cuda_make_plan(c, MOBA_OP_ROUTE, &plan);
    moba_cuda_layout dl;
    st = moba_cuda_upload_layout(c, &plan, ws, &dl);
    if (st != MOBA_OK) return st;
    /* nothing to score: no route kernel (whose candidate lists would grow with top_k) */
    if (!needs_routing(c)) return moba_cuda_trivial_selection(c, &dl, block_idx);
    return moba_cuda_route_into(c, &plan, ws, &dl, q, k, block_idx, c->p->top_k);
}

/* Backward: the forward's selection (p.block_idx) or routing recomputed as in the forward, then D, the
 * inverted index and the gradients (backward.cu). Default: dq summed with fp32 atomics (not bitwise
 * reproducible); deterministic = 1: a separate dq pass, bitwise reproducible. */
moba_status moba_cuda_backward(const moba_call *c, const void *dout, const void *q, const void *k, const void *v,
                               const void *o, const float *lse, void *dq, void *dk, void *dv, void *ws) {
    moba_status st = moba_cuda_check_call(c, "moba_backward");
    static const char *const names[] = {"dout", "q", "k", "v", "o", "lse", "dq", "dk", "dv", "workspace",
                                        "block_idx"};
    const void *const ptrs[] = {dout, q, k, v, o, lse, dq, dk, dv, ws, c->p->block_idx};
    static const int align[] = {16, 16, 16, 16, 16, 4, 16, 16, 16, 256, 4};
    if (st == MOBA_OK) st = moba_cuda_check_aligned("moba_backward", 11, names, ptrs, align);
    if (st != MOBA_OK) return st;
    moba_cuda_plan plan;
    moba_cuda_make_plan(c, MOBA_OP_BACKWARD, &plan);
    moba_cuda_layout dl;
    st = moba_cuda_upload_layout(c, &plan, ws, &dl);
    if (st != MOBA_OK) return st;
    return moba_cuda_backward_run(c, &plan, ws, &dl, dout, q, k, v, o, lse, dq, dk, dv);
}
