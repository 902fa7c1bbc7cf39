/*
 * GPU forward, portable kernel (any GPU >= sm_80; on Hopper forward_sm90.cu is used when the block
 * size is a multiple of 64): query-tile-major sparse flash attention, FA2 style, mma.sync m16n8k16.
 *
 * One CTA (4 warps, 32 rows each) takes a tile of 128 query rows of one block j of one sequence,
 * for one q head. The tile walks the UNION of the key blocks its rows selected, in increasing
 * order, in chunks of BN keys (BN divides block_size, so a chunk never crosses a block); for each
 * chunk every row keeps the FlashAttention running state
 *     m = max score so far,  l = sum exp(score - m),  acc = sum exp(score - m) v,
 * scores s = scale * <q, k>, masked to -inf where the row did not select the chunk's block or (own
 * block) the key lies after the query (forward.h: online_softmax). A warp none of whose rows
 * selected the block skips the math. At the end o = acc / l, lse = m + ln l.
 *
 * Cost: wasted work grows with the union of a tile's selections (small when neighbouring queries
 * route alike, large on random inputs). See docs/cuda.md.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"

#define FWD_THREADS 128
#define FWD_MT (MOBA_FWD_TILE_ROWS / 64) /* m16 tiles per warp */

template <typename T, int D, int BN, int MT>
__global__ void __launch_bounds__(FWD_THREADS, 2) moba_fwd_kernel(FwdArgs a) {
    constexpr int ROWS = 4 * 16 * MT; /* tile rows: 4 warps x MT m16 tiles */
    extern __shared__ __align__(16) unsigned char smem[];
    T *sQ = reinterpret_cast<T *>(smem);
    T *sK = sQ + ROWS * (D + 8);   /* [2][BN][D + 8] */
    T *sV = sK + 2 * BN * (D + 8); /* [2][BN][D + 8] */
    uint32_t *bitmap = reinterpret_cast<uint32_t *>(sV + 2 * BN * (D + 8));

    const moba_tile tile = a.dl.ftiles[blockIdx.x];
    const int h = blockIdx.y, hk = h / a.group, tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const int j = tile.block, B = a.B;
    const int64_t seq0 = a.dl.cu_seqlens[tile.seq];
    const int len = (int)(a.dl.cu_seqlens[tile.seq + 1] - seq0);
    const int rows = (int)(tile.row_end - tile.row_begin);
    const int qpos0 = (int)(tile.row_begin - seq0); /* position of the tile's first row */
    const int qlast = qpos0 + rows - 1;
    const T *q = reinterpret_cast<const T *>(a.q), *kg = reinterpret_cast<const T *>(a.k),
            *vg = reinterpret_cast<const T *>(a.v);
    const int64_t kv_stride = (int64_t)a.Hkv * D;

    moba_load_tile<D, ROWS, FWD_THREADS>(sQ, q + (tile.row_begin * a.Hq + h) * D, (int64_t)a.Hq * D, rows, tid);
    moba_cp_async_commit();

    build_union(a, tile, h, bitmap, tid, FWD_THREADS);
    moba_cp_async_wait<0>();
    __syncthreads();

    /* Q fragments: m-tile mt of this warp covers tile rows (warp*MT + mt)*16 .. +15. Kept in
     * registers when they fit (QREG), else re-read from shared memory for every chunk. */
    constexpr bool QREG = D * MT <= 128;
    uint32_t qf[QREG ? MT : 1][QREG ? D / 16 : 1][4];
    auto q_frag = [&](uint32_t *f, int mt, int kk) {
        moba_ldmatrix_x4(f, sQ + ((warp * MT + mt) * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * (D + 8) + kk * 16 +
                                (lane / 16) * 8);
    };
    if (QREG) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) q_frag(qf[QREG ? mt : 0][QREG ? kk : 0], mt, kk);
    }

    /* This lane's rows: (mt, r) -> tile row (warp*MT + mt)*16 + g + 8r; each walks its sorted
     * selection: pos = index into the tile's selection array, nxt = the entry there. */
    const int32_t *tsel = a.mode == 0 ? a.sel + ((int64_t)h * a.total + tile.row_begin) * a.stride : NULL;
    int pos[MT][2], nxt[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int row = (warp * MT + mt) * 16 + g + 8 * r;
            pos[mt][r] = row * a.stride;
            nxt[mt][r] = (a.mode == 0 && row < rows) ? __ldg(tsel + pos[mt][r]) : INT_MAX;
        }
    const int warp_last = min(qpos0 + (warp + 1) * 16 * MT - 1, qlast);

    float m[MT][2], l[MT][2];
    float acc[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) attn_state_init(m[mt], l[mt], acc[mt]);

    ChunkWalk walk;
    walk.init(bitmap, j, B, BN, len, qlast);
    auto load_item = [&](int stage) {
        int64_t off = ((seq0 + walk.key0()) * a.Hkv + hk) * D;
        moba_load_tile<D, BN, FWD_THREADS>(sK + stage * BN * (D + 8), kg + off, kv_stride, walk.valid_keys(), tid);
        moba_load_tile<D, BN, FWD_THREADS>(sV + stage * BN * (D + 8), vg + off, kv_stride, walk.valid_keys(), tid);
        moba_cp_async_commit();
    };

    walk.next(); /* the own block j is always in the union */
    load_item(0);
    for (int it = 0;; it++) {
        const int cb = walk.b, kp0 = walk.key0(), stage = it & 1;
        const bool more = prefetch_next(walk, load_item, stage);
        __syncthreads();

        const bool diag = cb == j;
        bool take[MT][2], any = false;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int row = (warp * MT + mt) * 16 + g + 8 * r;
                take[mt][r] = row < rows;
                if (a.mode == 0) {
                    advance_row(tsel, (row + 1) * a.stride, pos[mt][r], nxt[mt][r], cb);
                    take[mt][r] = take[mt][r] && nxt[mt][r] == cb;
                }
                any = any || take[mt][r];
            }
        const bool work = __any_sync(0xffffffffu, any) && !(diag && kp0 > warp_last);
        if (work) {
            const T *k_s = sK + stage * BN * (D + 8), *v_s = sV + stage * BN * (D + 8);
            float s[MT][BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t qs[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    if (QREG) {
#pragma unroll
                        for (int x = 0; x < 4; x++) qs[mt][x] = qf[QREG ? mt : 0][QREG ? kk : 0][x];
                    } else {
                        q_frag(qs[mt], mt, kk);
                    }
                }
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    uint32_t bk[4];
                    moba_ldmatrix_x4(bk, k_s + (np * 16 + (lane % 8) + (lane / 16) * 8) * (D + 8) + kk * 16 +
                                             ((lane / 8) & 1) * 8);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        moba_mma<T>(s[mt][2 * np], qs[mt], bk);
                        moba_mma<T>(s[mt][2 * np + 1], qs[mt], bk + 2);
                    }
                }
            }
            uint32_t pa[MT][BN / 16][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                online_softmax(s[mt], acc[mt], m[mt], l[mt], take[mt][0], take[mt][1], diag, kp0 + 2 * c,
                               qpos0 + (warp * MT + mt) * 16 + g, a.scale_log2);
                pack_p<T>(s[mt], pa[mt]); /* the S accumulators are already the A fragments of P */
            }
            /* acc += P V, each V fragment serving every m-tile of the warp */
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t bv[4];
                    moba_ldmatrix_x4_trans(bv, v_s + (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * (D + 8) +
                                                   dp * 16 + (lane / 16) * 8);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        moba_mma<T>(acc[mt][2 * dp], pa[mt][kk], bv);
                        moba_mma<T>(acc[mt][2 * dp + 1], pa[mt][kk], bv + 2);
                    }
                }
            }
        }
        __syncthreads(); /* the stage is free for the load after next */
        if (!more) break;
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const int row = (warp * MT + mt) * 16 + g;
        store_rows<T>(a, h, tile.row_begin + row, row < rows, row + 8 < rows, acc[mt], m[mt], l[mt], c);
    }
}

template <typename T, int D, int BN, int MT>
static moba_status launch_forward(const moba_call *c, const FwdArgs &a, int64_t num_tiles) {
    const moba_params *p = c->p;
    size_t smem = (size_t)(64 * MT + 4 * BN) * (D + 8) * sizeof(T) + (size_t)(c->L.max_blocks / 32 + 1) * sizeof(uint32_t);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(moba_fwd_kernel<T, D, BN, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)smem));
    dim3 grid((unsigned)num_tiles, p->num_q_heads);
    moba_fwd_kernel<T, D, BN, MT><<<grid, FWD_THREADS, smem, (cudaStream_t)p->cuda_stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

/* Key chunk: 64 keys for d = 64, 32 for d = 128 (register budget: S, O and P of two m-tiles per
 * warp); 16 when the block size is not a multiple of that. */
template <typename T, int D>
static moba_status launch_forward_d(const moba_call *c, const FwdArgs &a, int64_t num_tiles) {
    constexpr int BN = D == 128 ? 32 : 64;
    if (c->p->block_size % BN == 0) return launch_forward<T, D, BN, FWD_MT>(c, a, num_tiles);
    return launch_forward<T, D, 16, FWD_MT>(c, a, num_tiles);
}

/* Routing, then the query-tile-major kernel, then (Hopper, spread-out routing) the key-block-major passes. */
static moba_status forward_with_layout(const moba_call *c, const moba_cuda_plan *plan, const moba_cuda_layout *dl,
                                       const void *q, const void *k, const void *v, void *o,
                                       float *lse, void *ws) {
    const moba_params *p = c->p;
    FwdArgs a;
    memset(&a, 0, sizeof a);
    a.q = q;
    a.k = k;
    a.v = v;
    a.o = o;
    a.lse = lse;
    a.dl = *dl;
    a.total = c->L.total_tokens;
    a.Hq = p->num_q_heads;
    a.Hkv = p->num_kv_heads;
    a.group = c->group;
    a.B = p->block_size;
    a.scale_log2 = c->scale * 1.4426950408889634f;
    a.mode = c->full_attention ? 1 : (p->top_k == 1 ? 2 : 0);
    const int sm90 = moba_cuda_sm90_applies(c); /* Hopper: wgmma */
    if (a.mode == 0) {
        /* routed calls have slots == top_k, so the caller's block_idx (moba_route's format) can be sel itself */
        int32_t *sel = p->block_idx ? p->block_idx : (int32_t *)((char *)ws + plan->sel);
        moba_status st = moba_cuda_route_into(c, plan, ws, dl, q, k, sel, plan->sel_stride);
        if (st != MOBA_OK) return st;
        a.sel = sel;
        a.stride = plan->sel_stride;
        if (plan->kbm && plan->kptot > 0 && sm90) {
            a.kbm_flags = (int32_t *)((char *)ws + plan->kflags);
            moba_cuda_kbm_setup(c, &a);
            /* the tiles that stay as union tiles of the warp-specialised kernel (forward.h; the default
             * since v24, MOBA_CUDA_KBM_UNION=0 switches them off, read by the plan: docs/cuda.md) */
            if (a.kbm_pre && plan->kunion) {
                a.kbm_ulist = (int32_t *)((char *)ws + plan->kublk);
                a.kbm_ustride = plan->kunion;
            }
            if (!a.lse) a.lse = (float *)((char *)ws + plan->klse); /* the merge needs the own block's lse */
        }
    } else if (p->block_idx) {
        moba_status st = moba_cuda_trivial_selection(c, dl, p->block_idx);
        if (st != MOBA_OK) return st;
    }
    if (sm90) {
        moba_status st = moba_cuda_forward_sm90(c, a);
        if (st == MOBA_OK && a.kbm_flags) st = moba_cuda_forward_kbm(c, plan, ws, a);
        return st;
    }
    int d = p->head_dim;
    if (p->dtype == MOBA_DTYPE_BF16)
        return d == 64 ? launch_forward_d<__nv_bfloat16, 64>(c, a, plan->num_ftiles)
                       : launch_forward_d<__nv_bfloat16, 128>(c, a, plan->num_ftiles);
    return d == 64 ? launch_forward_d<__half, 64>(c, a, plan->num_ftiles)
                   : launch_forward_d<__half, 128>(c, a, plan->num_ftiles);
}

moba_status moba_cuda_forward(const moba_call *c, const void *q, const void *k, const void *v, void *o, float *lse,
                              void *ws) {
    moba_status st = moba_cuda_check_call(c, "moba_forward");
    static const char *const names[] = {"q", "k", "v", "o", "lse", "workspace", "block_idx"};
    const void *const ptrs[] = {q, k, v, o, lse, ws, c->p->block_idx};
    static const int align[] = {16, 16, 16, 16, 4, 256, 4};
    if (st == MOBA_OK) st = moba_cuda_check_aligned("moba_forward", 7, names, ptrs, align);
    if (st != MOBA_OK) return st;
    moba_cuda_plan plan;
    moba_cuda_make_plan(c, MOBA_OP_FORWARD, &plan);
    moba_cuda_layout dl;
    st = moba_cuda_upload_layout(c, &plan, ws, &dl);
    if (st == MOBA_OK) st = forward_with_layout(c, &plan, &dl, q, k, v, o, lse, ws);
    return st;
}
