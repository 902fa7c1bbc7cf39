/*
 * GPU backward (mma.sync m16n8k16, any GPU >= sm_80). With p_tc = exp(s <q_t,k_c> - lse_t) over the
 * keys c row t attends:
 *   D_t   = <do_t, o_t>
 *   dv_c  = sum_t p_tc do_t
 *   ds_tc = p_tc (<do_t, v_c> - D_t)
 *   dq_t  = s sum_c ds_tc k_c,      dk_c = s sum_t ds_tc q_t
 * Steps (all on the caller's stream):
 *   0. routing, recomputed exactly as the forward does (route.cu) into sel [Hq][total][slots], or the
 *      forward's selection (moba_params.block_idx) copied there, which saves that pass;
 *   1. D per (q head, row): one warp per row, a fixed reduction order;
 *   2. (routed calls only) an inverted index block -> rows: the selection entries as keys
 *      (q head, global block) with the row as value, stably radix-sorted (CUB), so each key's rows
 *      come out ascending; offsets by binary search. Full attention (every later row of the sequence)
 *      and top_k = 1 (the rows of the block) need no index: the rows are one contiguous range;
 *   3. (deterministic mode only) dq: one CTA per (64-row query tile, q head) walks the union of its
 *      rows' selected blocks in chunks of BN keys (forward.h's ChunkWalk), recomputes P from lse,
 *      dS = P (dP - D), dq += dS K;
 *   4. dk, dv: one CTA per (64-key tile of one block, kv head) loops over the group's q heads and the
 *      rows that selected the block, RC rows at a time gathered into shared memory (double-buffered),
 *      and accumulates dv += P^T dO, dk += dS^T Q in registers. In the default mode it also adds the
 *      gathered rows' dq += dS K over its 64 keys to an fp32 buffer with atomics (then scaled and
 *      rounded by dq_convert_kernel): no second walk, and no union of selections (the dq pass walks
 *      the union of a 64-row tile's blocks, 3-5x the work on inputs without routing locality).
 * deterministic = 1: every dq/dk/dv element is summed by one thread in a fixed order and nothing uses
 * atomics, so the results are bitwise reproducible. dk and dv are the same code in both modes.
 */
#include <math.h>

#include <cub/device/device_radix_sort.cuh>

#include "backward.h"

/* ---- workspace (after the forward's pieces; offsets in bytes, 256-aligned) ---- */

struct BwdPlan {
    size_t delta, dq_acc, block_base, keys_in, vals_in, keys_out, vals_out, row_off, cub_temp, cub_bytes, total;
    int64_t items;  /* selection entries sorted (mode 0) */
    int key_bits;   /* radix-sort bits (>= 1): keys are < 2^key_bits */
};

static size_t a256(size_t x) { return (x + 255) & ~(size_t)255; }

static int bwd_mode(const moba_call *c) { return c->full_attention ? 1 : (c->p->top_k == 1 ? 2 : 0); }

/* The default mode sums dq with atomics in the dk/dv pass (faster: no second walk over the keys);
 * deterministic = 1 runs the separate dq pass, which sums in a fixed order. */
static bool bwd_fuse_dq(const moba_call *c) { return !c->p->deterministic; }

/* Lays out the backward's own pieces from offset `off`; returns the end. */
static size_t bwd_plan(const moba_call *c, size_t off, BwdPlan *bp) {
    const moba_params *p = c->p;
    memset(bp, 0, sizeof *bp);
    bp->delta = off;
    off = a256(off + (size_t)p->num_q_heads * c->L.total_tokens * sizeof(float));
    if (bwd_fuse_dq(c)) {
        bp->dq_acc = off;
        off = a256(off + (size_t)c->L.total_tokens * p->num_q_heads * p->head_dim * sizeof(float));
    }
    if (bwd_mode(c) != 0) return bp->total = off;
    bp->items = (int64_t)p->num_q_heads * c->L.total_tokens * c->slots;
    int64_t keys = (int64_t)p->num_q_heads * c->L.total_blocks + 1; /* + the sentinel of empty slots */
    bp->key_bits = 1;
    while (bp->key_bits < 31 && ((int64_t)1 << bp->key_bits) < keys) bp->key_bits++;
    size_t n = (size_t)bp->items * sizeof(int32_t);
    bp->block_base = off;
    off = a256(off + (size_t)(p->num_seqs + 1) * sizeof(int32_t));
    bp->keys_in = off, off = a256(off + n);
    bp->vals_in = off, off = a256(off + n);
    bp->keys_out = off, off = a256(off + n);
    bp->vals_out = off, off = a256(off + n);
    bp->row_off = off;
    off = a256(off + (size_t)keys * sizeof(int32_t));
    size_t temp = 0;
    if (bp->items > 0 && bp->items <= INT32_MAX &&
        cub::DeviceRadixSort::SortPairs(NULL, temp, (const int32_t *)NULL, (int32_t *)NULL, (const int32_t *)NULL,
                                        (int32_t *)NULL, (int)bp->items, 0, bp->key_bits) != cudaSuccess) {
        cudaGetLastError(); /* no device: the call itself will say so */
        temp = 0;
    }
    bp->cub_temp = off, bp->cub_bytes = temp;
    off = a256(off + temp);
    return bp->total = off;
}

size_t moba_cuda_backward_workspace_end(const moba_call *c, size_t off) {
    BwdPlan bp;
    return bwd_plan(c, off, &bp);
}

/* ---- step 1: D ---- */

template <typename T>
__global__ void delta_kernel(const T *__restrict__ dout, const T *__restrict__ o, float *__restrict__ delta,
                             int64_t total, int Hq, int d) {
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; /* (t, h) packed: t*Hq + h */
    const int lane = threadIdx.x % 32;
    if (row >= total * Hq) return;
    const T *a = dout + row * d, *b = o + row * d;
    float s = 0.0f;
    for (int x = lane; x < d; x += 32) s += moba_pack<T>::to_f32(a[x]) * moba_pack<T>::to_f32(b[x]);
#pragma unroll
    for (int w = 16; w > 0; w /= 2) s += __shfl_xor_sync(0xffffffffu, s, w);
    if (lane == 0) delta[(row % Hq) * total + row / Hq] = s;
}

/* ---- step 2: the inverted index ---- */

/* Entry i of sel ([Hq][total][stride]) -> key (h * total_blocks + global block), value t. */
__global__ void index_keys_kernel(const int32_t *__restrict__ sel, const int32_t *__restrict__ cu,
                                  const int32_t *__restrict__ block_base, int num_seqs, int64_t total, int stride,
                                  int64_t total_blocks, int64_t items, int32_t sentinel, int32_t *keys,
                                  int32_t *vals) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= items) return;
    const int64_t ht = i / stride, t = ht % total, h = ht / total;
    const int e = sel[i];
    const int lo = moba_seg_of(cu, num_seqs, t); /* the sequence of row t (a non-empty one) */
    keys[i] = e < 0 ? sentinel : (int32_t)(h * total_blocks + block_base[lo] + e); /* empty slots sort last */
    vals[i] = (int32_t)t;
}

/* row_off[key] = first sorted position with a key >= key. */
__global__ void index_offsets_kernel(const int32_t *__restrict__ keys, int64_t items, int64_t nkeys,
                                     int32_t *row_off) {
    const int64_t kidx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (kidx >= nkeys) return;
    int64_t lo = 0, hi = items;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (keys[mid] < kidx) lo = mid + 1;
        else hi = mid;
    }
    row_off[kidx] = (int32_t)lo;
}

/* ---- shared pieces of the two gradient kernels ---- */

/* Copies rows row_of(0..ROWS) (packed token indices, -1 = none: zero-filled) of one head of two
 * [total][H][D] tensors (q and dO) into shared memory of row stride D + 8. */
template <int D, int ROWS, typename T, class RowOf>
__device__ __forceinline__ void gather_rows(T *sa, T *sb, const T *ga, const T *gb, RowOf &&row_of,
                                            int64_t row_stride, int tid) {
    constexpr int per_row = D / 8, step = BWD_THREADS / per_row;
    static_assert(BWD_THREADS % per_row == 0 && ROWS % step == 0, "tile shape");
    const int c = (tid % per_row) * 8, r0 = tid / per_row;
#pragma unroll
    for (int p = 0; p < ROWS / step; p++) {
        const int r = r0 + p * step, t = row_of(r);
        const int64_t off = t >= 0 ? (int64_t)t * row_stride + c : 0;
        moba_cp_async16(sa + r * (D + 8) + c, ga + off, t >= 0);
        moba_cp_async16(sb + r * (D + 8) + c, gb + off, t >= 0);
    }
}

/* acc[DT][4] (+)= A[16 x KN] B[KN x D] with A given as KN/16 packed fragments and B row-major
 * [KN][LD] in shared memory (ldmatrix .trans): the "P V" product of the forward. */
template <typename T, int KN, int D, int LD = D + 8>
__device__ __forceinline__ void mma_a_bsmem(float (&acc)[D / 8][4], const uint32_t (&a)[KN / 16][4], const T *b,
                                            int lane) {
#pragma unroll
    for (int kk = 0; kk < KN / 16; kk++)
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            uint32_t bv[4];
            moba_ldmatrix_x4_trans(bv, b + (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * LD + dp * 16 +
                                           (lane / 16) * 8);
            moba_mma<T>(acc[2 * dp], a[kk], bv);
            moba_mma<T>(acc[2 * dp + 1], a[kk], bv + 2);
        }
}

/* s[N/8][4] = A[16 x D] X^T where A's row-major fragments come from a_frag(kk) and X is [N][D + 8] in
 * shared memory: the "Q K^T" product of the forward. */
template <typename T, int N, int D, class AF>
__device__ __forceinline__ void mma_abt(float (&s)[N / 8][4], AF &&a_frag, const T *x, int lane) {
#pragma unroll
    for (int nt = 0; nt < N / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t a[4];
        a_frag(a, kk);
#pragma unroll
        for (int np = 0; np < N / 16; np++) {
            uint32_t b[4];
            moba_ldmatrix_x4(b, x + (np * 16 + (lane % 8) + (lane / 16) * 8) * (D + 8) + kk * 16 + ((lane / 8) & 1) * 8);
            moba_mma<T>(s[2 * np], a, b);
            moba_mma<T>(s[2 * np + 1], a, b + 2);
        }
    }
}

/* ---- step 3: dq per (query tile, q head) ---- */

template <typename T, int D, int BN>
__global__ void __launch_bounds__(BWD_THREADS) dq_kernel(BwdArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    T *sQ = reinterpret_cast<T *>(smem);
    T *sO = sQ + BWD_TILE * (D + 8);      /* dO rows */
    T *sK = sO + BWD_TILE * (D + 8);      /* [2][BN][D + 8] */
    T *sV = sK + 2 * BN * (D + 8);        /* [2][BN][D + 8] */
    uint32_t *bitmap = reinterpret_cast<uint32_t *>(sV + 2 * BN * (D + 8));

    const FwdArgs &f = a.f;
    const moba_tile tile = f.dl.tiles[blockIdx.x];
    const int h = blockIdx.y, hk = h / f.group, tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const int j = tile.block, B = f.B;
    const int64_t seq0 = f.dl.cu_seqlens[tile.seq];
    const int len = (int)(f.dl.cu_seqlens[tile.seq + 1] - seq0);
    const int rows = (int)(tile.row_end - tile.row_begin);
    const int qpos0 = (int)(tile.row_begin - seq0), qlast = qpos0 + rows - 1;
    const T *kg = reinterpret_cast<const T *>(f.k), *vg = reinterpret_cast<const T *>(f.v);
    const int64_t kv_stride = (int64_t)f.Hkv * D, q_off = (tile.row_begin * f.Hq + h) * D;

    moba_load_tile<D, BWD_TILE, BWD_THREADS>(sQ, reinterpret_cast<const T *>(f.q) + q_off, (int64_t)f.Hq * D, rows, tid);
    moba_load_tile<D, BWD_TILE, BWD_THREADS>(sO, reinterpret_cast<const T *>(a.dout) + q_off, (int64_t)f.Hq * D, rows,
                                             tid);
    moba_cp_async_commit();
    build_union(f, tile, h, bitmap, tid, BWD_THREADS);
    moba_cp_async_wait<0>();
    __syncthreads();

    /* this lane's rows: r = 0 -> tile row warp*16 + g, r = 1 -> + 8 */
    const int32_t *tsel = f.mode == 0 ? f.sel + ((int64_t)h * f.total + tile.row_begin) * f.stride : NULL;
    int pos[2], nxt[2];
    float lse2[2], dlt[2];
    for (int r = 0; r < 2; r++) {
        const int row = warp * 16 + g + 8 * r;
        const bool ok = row < rows;
        pos[r] = row * f.stride;
        nxt[r] = (f.mode == 0 && ok) ? __ldg(tsel + pos[r]) : INT_MAX;
        lse2[r] = ok ? a.lse[(int64_t)h * f.total + tile.row_begin + row] * 1.4426950408889634f : 0.0f;
        dlt[r] = ok ? a.delta[(int64_t)h * f.total + tile.row_begin + row] : 0.0f;
    }
    const int warp_last = min(qpos0 + warp * 16 + 15, qlast);
    float acc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

    ChunkWalk walk;
    walk.init(bitmap, j, B, BN, len, qlast);
    auto load_item = [&](int stage) {
        int64_t off = ((seq0 + walk.key0()) * f.Hkv + hk) * D;
        moba_load_tile<D, BN, BWD_THREADS>(sK + stage * BN * (D + 8), kg + off, kv_stride, walk.valid_keys(), tid);
        moba_load_tile<D, BN, BWD_THREADS>(sV + stage * BN * (D + 8), vg + off, kv_stride, walk.valid_keys(), tid);
        moba_cp_async_commit();
    };
    walk.next(); /* the own block j is always in the union */
    load_item(0);
    for (int it = 0;; it++) {
        const int cb = walk.b, kp0 = walk.key0(), stage = it & 1;
        const bool more = prefetch_next(walk, load_item, stage);
        __syncthreads();

        const bool diag = cb == j;
        bool take[2], any = false;
        for (int r = 0; r < 2; r++) {
            const int row = warp * 16 + g + 8 * r;
            take[r] = row < rows;
            if (f.mode == 0) {
                advance_row(tsel, (row + 1) * f.stride, pos[r], nxt[r], cb);
                take[r] = take[r] && nxt[r] == cb;
            }
            any = any || take[r];
        }
        if (__any_sync(0xffffffffu, any) && !(diag && kp0 > warp_last)) {
            const T *k_s = sK + stage * BN * (D + 8), *v_s = sV + stage * BN * (D + 8);
            float s[BN / 8][4], dp[BN / 8][4];
            mma_abt<T, BN, D>(s, [&](uint32_t *fr, int kk) { a_frag_smem<D>(fr, sQ, warp * 16, kk, lane); }, k_s, lane);
            mma_abt<T, BN, D>(dp, [&](uint32_t *fr, int kk) { a_frag_smem<D>(fr, sO, warp * 16, kk, lane); }, v_s, lane);
            /* P from lse, masked where the row did not select the block or (own block) the key is later */
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1, kp = kp0 + nt * 8 + 2 * c + (e & 1);
                    const bool keep = take[r] && (!diag || kp <= qpos0 + warp * 16 + g + 8 * r);
                    const float pr = keep ? moba_exp2(fmaf(s[nt][e], f.scale_log2, -lse2[r])) : 0.0f;
                    s[nt][e] = pr * (dp[nt][e] - dlt[r]); /* dS */
                }
            uint32_t ds[BN / 16][4];
            pack_p<T>(s, ds);
            mma_a_bsmem<T, BN, D>(acc, ds, k_s, lane);
        }
        __syncthreads(); /* the stage is free for the load after next */
        if (!more) break;
    }

    T *dq = reinterpret_cast<T *>(a.dq);
    for (int r = 0; r < 2; r++) {
        const int row = warp * 16 + g + 8 * r;
        if (row >= rows) continue;
        T *out = dq + ((tile.row_begin + row) * f.Hq + h) * D;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
            *reinterpret_cast<uint32_t *>(out + nt * 8 + 2 * c) =
                moba_pack<T>::two(acc[nt][2 * r] * a.scale, acc[nt][2 * r + 1] * a.scale);
    }
}

/* dq_acc[rows] += dS [RC x 64] K [64 x D] for one gathered row chunk: warp w takes row group
 * w % (RC/16) and a 1/(4/(RC/16)) share of the columns; 16 or 32 fp32 atomics per thread. */
template <typename T, int D, int RC>
__device__ __forceinline__ void fused_dq(const BwdArgs &a, const T *sDS, const T *sK, const int32_t *s_rows, int h,
                                         int warp, int lane) {
    constexpr int RG = RC / 16, CS = 4 / RG, DW = D / CS;
    static_assert(RG * CS == 4, "4 warps over the dq tile");
    const int rg = warp % RG, col0 = (warp / RG) * DW, g = lane / 4, c = lane % 4;
    uint32_t af[BWD_TILE / 16][4];
#pragma unroll
    for (int kk = 0; kk < BWD_TILE / 16; kk++) a_frag_smem<BWD_TILE>(af[kk], sDS, rg * 16, kk, lane);
    float acc[DW / 8][4];
#pragma unroll
    for (int nt = 0; nt < DW / 8; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    mma_a_bsmem<T, BWD_TILE, DW, D + 8>(acc, af, sK + col0, lane);
    const int32_t t[2] = {s_rows[rg * 16 + g], s_rows[rg * 16 + g + 8]};
    dq_atomic_add<D>(a, acc, t, h, col0, c);
}

/* ---- step 4: dk, dv per (key tile, kv head); with FUSE_DQ also dq ----
 * FUSE_DQ (the default, non-deterministic mode): the gathered rows' dq = s dS K over this tile's 64
 * keys is added to an fp32 accumulator [total][Hq][D] with atomics (the order of the additions
 * varies), and dq_convert_kernel scales and rounds it; the dq pass (step 3) is not run. */

template <typename T, int D, int RC, bool FUSE_DQ>
__global__ void __launch_bounds__(BWD_THREADS) dkdv_kernel(BwdArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem);
    T *sV = sK + BWD_TILE * (D + 8);
    T *sQ = sV + BWD_TILE * (D + 8); /* [2 stages][RC gathered rows] of q */
    T *sO = sQ + 2 * RC * (D + 8);   /* and of dO */
    float *s_lse = reinterpret_cast<float *>(sO + 2 * RC * (D + 8)), *s_dlt = s_lse + 2 * RC; /* [2][RC] */
    int32_t *s_rows = reinterpret_cast<int32_t *>(s_dlt + 2 * RC), *s_pos = s_rows + 2 * RC;     /* [2][RC] */
    T *sDS = reinterpret_cast<T *>(s_pos + 2 * RC); /* (FUSE_DQ) dS [RC][BWD_DS_LD] */

    const FwdArgs &f = a.f;
    const BwdKeyTile kt = bwd_key_tile(f, f.dl.tiles);
    const moba_tile &tile = kt.tile;
    const int64_t seq0 = kt.seq0;
    const int len = kt.len, nkeys = kt.nkeys, kpos0 = kt.kpos0;
    const int hk = blockIdx.y, tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int64_t kv_off = (tile.row_begin * f.Hkv + hk) * D;

    moba_load_tile<D, BWD_TILE, BWD_THREADS>(sK, reinterpret_cast<const T *>(f.k) + kv_off, (int64_t)f.Hkv * D, nkeys,
                                             tid);
    moba_load_tile<D, BWD_TILE, BWD_THREADS>(sV, reinterpret_cast<const T *>(f.v) + kv_off, (int64_t)f.Hkv * D, nkeys,
                                             tid);
    moba_cp_async_commit();

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nt][e] = dv[nt][e] = 0.0f;
    const bool warp_keys = warp * 16 < nkeys; /* warps past the tile's keys only help load (and dq) */
    const T *qg = reinterpret_cast<const T *>(f.q), *og = reinterpret_cast<const T *>(a.dout);
    if (FUSE_DQ) /* keys past the tile's end keep dS = 0: their warps never write it */
        for (int i = tid; i < RC * BWD_DS_LD; i += BWD_THREADS) sDS[i] = moba_pack<T>::from_f32(0.0f);

    /* Chunk n + 1 of the rows is gathered into the other stage while chunk n is computed. */
    BwdRowCursor cur = {};
    cur.start<RC>(a, tile, hk, seq0, len);
    auto load = [&](int stage) { /* the cursor's chunk into `stage` (cp.async, one commit group) */
        const int h = hk * f.group + cur.gi;
        bwd_row_meta<RC>(a, cur, h, seq0, s_rows + stage * RC, s_pos + stage * RC, s_lse + stage * RC,
                         s_dlt + stage * RC, tid);
        gather_rows<D, RC>(sQ + stage * RC * (D + 8), sO + stage * RC * (D + 8), qg + (int64_t)h * D,
                           og + (int64_t)h * D, [&](int r) { return cur.row(r); }, (int64_t)f.Hq * D, tid);
        moba_cp_async_commit();
    };
    int h_next = hk * f.group + cur.gi;
    if (cur.gi < f.group) load(0);
    for (int it = 0; cur.gi < f.group; it++) {
        const int stage = it & 1, h = h_next;
        bwd_prefetch_next<RC>(cur, a, tile, hk, seq0, len, stage ^ 1, h_next, load);
        __syncthreads(); /* this chunk's rows are in `stage` */
        const T *q_s = sQ + stage * RC * (D + 8), *o_s = sO + stage * RC * (D + 8);
        const float *lse_s = s_lse + stage * RC, *dlt_s = s_dlt + stage * RC;
        const int *pos_s = s_pos + stage * RC;
        if (warp_keys) {
            /* S^T and dP^T: this warp's 16 keys x RC rows */
            float s[RC / 8][4], dp[RC / 8][4];
            mma_abt<T, RC, D>(s, [&](uint32_t *fr, int kk) { a_frag_smem<D>(fr, sK, warp * 16, kk, lane); }, q_s, lane);
            mma_abt<T, RC, D>(dp, [&](uint32_t *fr, int kk) { a_frag_smem<D>(fr, sV, warp * 16, kk, lane); }, o_s, lane);
            float pr[RC / 8][4];
            bwd_p_ds<RC>(s, dp, pr, lse_s, dlt_s, warp * 16, lane, f.scale_log2,
                         [&](int m, int kl) { return pos_s[m] >= kpos0 + kl; }); /* s: dS^T */
            uint32_t pa[RC / 16][4], dsa[RC / 16][4];
            pack_p<T>(pr, pa);
            pack_p<T>(s, dsa);
            mma_a_bsmem<T, RC, D>(dv, pa, o_s, lane);
            mma_a_bsmem<T, RC, D>(dk, dsa, q_s, lane);
            if (FUSE_DQ) bwd_store_ds<T, RC>(sDS, BWD_DS_LD, s, warp * 16, lane); /* for the dq product */
        }
        if (FUSE_DQ) {
            __syncthreads();
            fused_dq<T, D, RC>(a, sDS, sK, s_rows + stage * RC, h, warp, lane);
        }
        __syncthreads(); /* `stage` (and sDS) are free for the next loads */
    }
    moba_cp_async_wait<0>(); /* (a CTA with no rows at all still waits for its K/V copies) */

    store_dkdv<T, D>(a, tile, hk, nkeys, dk, dv, warp, lane);
}

/* dq = scale * dq_acc, rounded to the storage type; 4 elements per thread. */
template <typename T>
__global__ void dq_convert_kernel(const float4 *__restrict__ acc, T *__restrict__ dq, int64_t n4, float scale) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 x = acc[i];
    uint2 w;
    w.x = moba_pack<T>::two(x.x * scale, x.y * scale);
    w.y = moba_pack<T>::two(x.z * scale, x.w * scale);
    reinterpret_cast<uint2 *>(dq)[i] = w;
}

/* ---- launches ---- */

template <typename T, int D>
static moba_status launch_grads(const moba_call *c, const BwdArgs &a, int64_t num_tiles) {
    const moba_params *p = c->p;
    cudaStream_t stream = (cudaStream_t)p->cuda_stream;
    /* dk, dv (and dq when fused): RC gathered rows per step (register budget: dk and dv accumulators of
     * d columns) */
    constexpr int RC = D == 128 ? 32 : 64;
    size_t kv_smem = (size_t)(2 * BWD_TILE + 4 * RC) * (D + 8) * sizeof(T) + (size_t)2 * RC * 4 * sizeof(int32_t);
    const dim3 kv_grid((unsigned)num_tiles, p->num_kv_heads);
    const bool hopper = moba_cuda_hopper(); /* dk/dv on wgmma (backward_sm90.cu) */
    if (bwd_fuse_dq(c)) {
        const int64_t n = c->L.total_tokens * p->num_q_heads * D; /* a multiple of 4 */
        MOBA_CUDA_TRY(cudaMemsetAsync(a.dq_acc, 0, (size_t)n * sizeof(float), stream));
        if (hopper) {
            moba_status st = moba_cuda_dkdv_ws_applies(c) ? moba_cuda_dkdv_ws(c, a) : moba_cuda_dkdv_sm90(c, a, true);
            if (st != MOBA_OK) return st;
        } else {
            kv_smem += (size_t)RC * BWD_DS_LD * sizeof(T);
            MOBA_CUDA_TRY(cudaFuncSetAttribute(dkdv_kernel<T, D, RC, true>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kv_smem));
            dkdv_kernel<T, D, RC, true><<<kv_grid, BWD_THREADS, kv_smem, stream>>>(a);
            MOBA_CUDA_LAUNCHED();
        }
        if (n > 0)
            dq_convert_kernel<T><<<(unsigned)((n / 4 + 255) / 256), 256, 0, stream>>>(
                reinterpret_cast<const float4 *>(a.dq_acc), reinterpret_cast<T *>(a.dq), n / 4, a.scale);
        MOBA_CUDA_LAUNCHED();
        return MOBA_OK;
    }
    /* dq: key chunks of 64 (d = 64) or 32 (d = 128) keys, 16 when the block size is not a multiple */
    constexpr int BN = D == 128 ? 32 : 64;
    const bool big = p->block_size % BN == 0;
    size_t bitmap = (size_t)(c->L.max_blocks / 32 + 1) * sizeof(uint32_t);
    size_t smem = (size_t)(2 * BWD_TILE + 4 * (big ? BN : 16)) * (D + 8) * sizeof(T) + bitmap;
    dim3 grid((unsigned)num_tiles, p->num_q_heads);
    if (big) {
        MOBA_CUDA_TRY(cudaFuncSetAttribute(dq_kernel<T, D, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        dq_kernel<T, D, BN><<<grid, BWD_THREADS, smem, stream>>>(a);
    } else {
        MOBA_CUDA_TRY(cudaFuncSetAttribute(dq_kernel<T, D, 16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        dq_kernel<T, D, 16><<<grid, BWD_THREADS, smem, stream>>>(a);
    }
    MOBA_CUDA_LAUNCHED();
    if (hopper) return moba_cuda_dkdv_sm90(c, a, false);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(dkdv_kernel<T, D, RC, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)kv_smem));
    dkdv_kernel<T, D, RC, false><<<kv_grid, BWD_THREADS, kv_smem, stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

moba_status moba_cuda_backward_run(const moba_call *c, const moba_cuda_plan *plan, void *ws,
                                   const moba_cuda_layout *dl, const void *dout, const void *q, const void *k,
                                   const void *v, const void *o, const float *lse, void *dq, void *dk, void *dv) {
    const moba_params *p = c->p;
    cudaStream_t stream = (cudaStream_t)p->cuda_stream;
    char *w = (char *)ws;
    BwdPlan bp;
    bwd_plan(c, plan->total, &bp);
    const int64_t total = c->L.total_tokens;

    BwdArgs a;
    memset(&a, 0, sizeof a);
    FwdArgs &f = a.f;
    f.q = q, f.k = k, f.v = v, f.o = NULL, f.lse = NULL;
    f.dl = *dl;
    f.total = total;
    f.Hq = p->num_q_heads, f.Hkv = p->num_kv_heads, f.group = c->group, f.B = p->block_size;
    f.scale_log2 = c->scale * 1.4426950408889634f;
    f.mode = bwd_mode(c);
    f.sel = NULL, f.stride = 0;
    a.dout = dout, a.o = o, a.lse = lse, a.dq = dq, a.dk = dk, a.dv = dv;
    a.delta = (float *)(w + bp.delta);
    a.dq_acc = bwd_fuse_dq(c) ? (float *)(w + bp.dq_acc) : NULL;
    a.total_blocks = c->L.total_blocks;
    a.scale = c->scale;

    moba_status st;
    if (f.mode == 0) {
        if (bp.items > INT32_MAX || (int64_t)p->num_q_heads * c->L.total_blocks + 1 > INT32_MAX)
            return moba_fail(MOBA_ERR_UNSUPPORTED, "moba_backward: CUDA backend: %lld selection entries are too many "
                             "for the inverted index (at most %d)", (long long)bp.items, INT32_MAX);
        int32_t *sel = (int32_t *)(w + plan->sel);
        st = p->block_idx ? moba_cuda_import_selection(c, dl, p->block_idx, sel, plan->sel_stride)
                          : moba_cuda_route_into(c, plan, ws, dl, q, k, sel, plan->sel_stride);
        if (st != MOBA_OK) return st;
        f.sel = sel, f.stride = plan->sel_stride;
        /* global block numbers of each sequence's first block */
        int32_t *base = (int32_t *)malloc((size_t)(p->num_seqs + 1) * sizeof(int32_t));
        if (!base) return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "moba_backward: out of host memory");
        base[0] = 0;
        for (int s = 0; s < p->num_seqs; s++) base[s + 1] = base[s] + moba_seq_blocks(&c->L, s);
        cudaError_t err = cudaMemcpyAsync(w + bp.block_base, base, (size_t)(p->num_seqs + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, stream);
        free(base); /* pageable: staged before the call returns */
        MOBA_CUDA_TRY(err);
        int32_t *keys_in = (int32_t *)(w + bp.keys_in), *vals_in = (int32_t *)(w + bp.vals_in);
        int32_t *keys_out = (int32_t *)(w + bp.keys_out), *vals_out = (int32_t *)(w + bp.vals_out);
        const int64_t nkeys = (int64_t)p->num_q_heads * c->L.total_blocks + 1;
        index_keys_kernel<<<(unsigned)((bp.items + 255) / 256), 256, 0, stream>>>(
            sel, dl->cu_seqlens, (const int32_t *)(w + bp.block_base), p->num_seqs, total, f.stride,
            c->L.total_blocks, bp.items, (int32_t)(nkeys - 1), keys_in, vals_in);
        MOBA_CUDA_LAUNCHED();
        size_t temp = bp.cub_bytes;
        MOBA_CUDA_TRY(cub::DeviceRadixSort::SortPairs(w + bp.cub_temp, temp, keys_in, keys_out, vals_in, vals_out,
                                                      (int)bp.items, 0, bp.key_bits, stream));
        index_offsets_kernel<<<(unsigned)((nkeys + 255) / 256), 256, 0, stream>>>(keys_out, bp.items, nkeys,
                                                                                (int32_t *)(w + bp.row_off));
        MOBA_CUDA_LAUNCHED();
        a.row_off = (const int32_t *)(w + bp.row_off);
        a.rows = vals_out;
        a.block_base = (const int32_t *)(w + bp.block_base);
    }

    const int d = p->head_dim;
    const int64_t nrows = total * p->num_q_heads;
    if (p->dtype == MOBA_DTYPE_BF16) {
        if (nrows > 0)
            delta_kernel<__nv_bfloat16><<<(unsigned)((nrows + 7) / 8), 256, 0, stream>>>(
                (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)o, a.delta, total, p->num_q_heads, d);
        MOBA_CUDA_LAUNCHED();
        return d == 64 ? launch_grads<__nv_bfloat16, 64>(c, a, plan->num_tiles)
                       : launch_grads<__nv_bfloat16, 128>(c, a, plan->num_tiles);
    }
    if (nrows > 0)
        delta_kernel<__half><<<(unsigned)((nrows + 7) / 8), 256, 0, stream>>>((const __half *)dout, (const __half *)o,
                                                                              a.delta, total, p->num_q_heads, d);
    MOBA_CUDA_LAUNCHED();
    return d == 64 ? launch_grads<__half, 64>(c, a, plan->num_tiles) : launch_grads<__half, 128>(c, a, plan->num_tiles);
}
