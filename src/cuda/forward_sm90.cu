/*
 * GPU forward on Hopper (sm_90a): the same query-tile-major walk as forward.cu, with the two
 * products on wgmma. A CTA of two warpgroups takes a tile of 128 query rows (64 per warpgroup)
 * and shares each K/V chunk between them; a warpgroup none of whose rows needs a chunk skips it:
 *     S = Q K^T   wgmma m64n64k16, Q and K from shared memory (both K-major)
 *     O += P V    wgmma m64nDk16,  P from registers (the S accumulators, as in FA3), V from shared
 *                 memory read MN-major (transposed), so V needs no transpose on the way in.
 * Shared tiles and wgmma wrappers: sm90.h. A tile whose union is much larger than top_k (routing
 * without locality) only does its own block here and hands its history to forward_kbm.cu.
 */
#include <math.h>
#include <stdlib.h>

#include "forward.h"
#include "sm90.h"

/* MINB: CTAs per SM the registers are budgeted for (2: 128 registers, a few spills for d = 128;
 * 1: no spills, half the warps). */
template <typename T, int D, int MINB>
__global__ void __launch_bounds__(SM90_THREADS, MINB) moba_fwd_sm90_kernel(FwdArgs a) {
#ifdef MOBA_WGMMA
    constexpr int BN = SM90_BN, ROWS = 64; /* rows per warpgroup */
    constexpr int Q_BYTES = ROWS * D * 2, KV_BYTES = BN * D * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    char *smem = moba_smem_align1024(smem_raw); /* swizzle atoms: 1 KiB aligned */
    char *sQ = smem, *sK = sQ + SM90_WGS * Q_BYTES, *sV = sK + 2 * KV_BYTES;
    uint32_t *need = reinterpret_cast<uint32_t *>(sV + 2 * KV_BYTES); /* [warps] does a warp need the chunk */
    uint32_t *bitmap = need + SM90_WGS * 4;

    const moba_tile tile = a.dl.ftiles[blockIdx.x];
    const int h = blockIdx.y, hk = h / a.group, tid = threadIdx.x;
    const int wgi = __shfl_sync(0xffffffffu, tid / 128, 0), warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const int j = tile.block;
    const int64_t seq0 = a.dl.cu_seqlens[tile.seq];
    const int len = (int)(a.dl.cu_seqlens[tile.seq + 1] - seq0);
    const int rows = (int)(tile.row_end - tile.row_begin);
    const int qpos0 = (int)(tile.row_begin - seq0);
    const T *kg = reinterpret_cast<const T *>(a.k), *vg = reinterpret_cast<const T *>(a.v);
    const int64_t kv_stride = (int64_t)a.Hkv * D;
    /* decided ahead (kbm_decide_kernel): a handed-off tile has nothing left here, not even its own block */
    if (a.kbm_pre && a.kbm_flags[(int64_t)h * a.dl.num_ftiles + blockIdx.x]) return;

    for (int w = 0; w < SM90_WGS; w++) /* one swizzled 64-row Q tile per warpgroup */
        load_sw128<D, ROWS>(sQ + w * Q_BYTES,
                            reinterpret_cast<const T *>(a.q) + ((tile.row_begin + w * ROWS) * a.Hq + h) * D,
                            (int64_t)a.Hq * D, rows - w * ROWS, tid);
    moba_cp_async_commit();
    build_union(a, tile, h, bitmap, tid, SM90_THREADS);
    if (a.kbm_flags && !a.kbm_pre && kbm_decide(a, tile, blockIdx.x, h, bitmap, tid, SM90_THREADS) && a.kbm_own) {
        moba_cp_async_wait<0>(); /* nothing left here: the own block goes key-block-major as well */
        return;
    }

    /* this lane's rows: warp*16 + g (r = 0) and + 8 (r = 1); its warpgroup's last row */
    const int row0 = warp * 16 + g; /* warps 4..7 (second warpgroup) hold rows 64..127 */
    const int32_t *tsel = a.mode == 0 ? a.sel + ((int64_t)h * a.total + tile.row_begin) * a.stride : NULL;
    int pos[2], nxt[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        pos[r] = (row0 + 8 * r) * a.stride;
        nxt[r] = (a.mode == 0 && row0 + 8 * r < rows) ? __ldg(tsel + pos[r]) : INT_MAX;
    }

    float m[2], l[2], acc[D / 8][4];
    attn_state_init(m, l, acc);

    ChunkWalk walk;
    walk.init(bitmap, j, a.B, BN, len, qpos0 + rows - 1);
    auto load_item = [&](int stage) {
        int64_t off = ((seq0 + walk.key0()) * a.Hkv + hk) * D;
        load_sw128<D, BN>(sK + stage * KV_BYTES, kg + off, kv_stride, walk.valid_keys(), tid);
        load_sw128<D, BN>(sV + stage * KV_BYTES, vg + off, kv_stride, walk.valid_keys(), tid);
        moba_cp_async_commit();
    };
    walk.next();
    load_item(0);
    const int wg_last = qpos0 + min(wgi * ROWS + ROWS, rows) - 1; /* position of the warpgroup's last row */
    /* wgmma descriptors of the Q tile and of stage 0's K and V, moved per product (sm90.h: desc_add) */
    const uint64_t q_desc = sw128_desc(sQ + wgi * Q_BYTES, 16, 1024), k_desc0 = sw128_desc(sK, 16, 1024),
                   v_desc0 = sw128_desc(sV, BN * 128, 1024);
    for (int it = 0;; it++) {
        const int cb = walk.b, kp0 = walk.key0(), stage = it & 1;
        const bool more = prefetch_next(walk, load_item, stage);
        bool take[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            take[r] = row0 + 8 * r < rows;
            if (a.mode == 0) {
                advance_row(tsel, (row0 + 8 * r + 1) * a.stride, pos[r], nxt[r], cb);
                take[r] = take[r] && nxt[r] == cb;
            }
        }
        const bool any = __any_sync(0xffffffffu, take[0] || take[1]);
        if (lane == 0) need[warp] = any;
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        /* the warpgroup works on the chunk if any of its rows selected the block and, on the
         * diagonal, the chunk starts at or before its last query (wgmma needs all 4 warps) */
        const uint32_t *wn = need + wgi * 4;
        const bool work = (wn[0] | wn[1] | wn[2] | wn[3]) && !(cb == j && kp0 > wg_last);
        if (work) {
        /* sm90_attend_chunk (sm90.h) written out: as a call, inlined all the same, this kernel spills
         * twice as much (88 vs 44 bytes at d = 128, nvcc 13.0), and this is its inner loop.
         * S = Q K^T: D/16 k-steps; k-step kk is 32 bytes into panel kk / 4 */
        const uint64_t k_desc = desc_add(k_desc0, stage * (KV_BYTES >> 4));
        float s[BN / 8][4];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            wg<T>::ss64(&s[0][0], desc_add(q_desc, ((kk / 4) * (ROWS * 128) + (kk % 4) * 32) >> 4),
                        desc_add(k_desc, ((kk / 4) * (BN * 128) + (kk % 4) * 32) >> 4), kk > 0);
        wg_commit_wait();
        fence_regs<BN / 2>(&s[0][0]);

        online_softmax(s, acc, m, l, take[0], take[1], cb == j, kp0 + 2 * c, qpos0 + row0, a.scale_log2);
        uint32_t pa[BN / 16][4];
        pack_p<T>(s, pa);

        /* O += P V: k-step kk = keys 16kk..16kk+15 = 2048 bytes into the tile; panels of 64
         * columns of V are BN * 128 bytes apart (leading offset), 8-key groups 1024 (stride). */
        fence_regs<D / 2>(&acc[0][0]);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const uint64_t dv = desc_add(v_desc0, (stage * KV_BYTES + kk * 2048) >> 4);
            if (D == 128) wg<T>::rs128(&acc[0][0], pa[kk], dv);
            else wg<T>::rs64(&acc[0][0], pa[kk], dv);
        }
        wg_commit_wait();
        fence_regs<D / 2>(&acc[0][0]);
        }
        __syncthreads(); /* the stage is free for the load after next */
        if (!more) break;
    }
    store_rows<T>(a, h, tile.row_begin + row0, row0 < rows, row0 + 8 < rows, acc, m, l, c);
#else
    __trap(); /* built for another target: the host never launches it there */
#endif
}

template <typename T, int D, int MINB>
static moba_status launch_sm90_occ(const moba_call *c, const FwdArgs &a) {
    const moba_params *p = c->p;
    size_t smem = 1024 + (size_t)(64 * SM90_WGS + 4 * SM90_BN) * D * 2 +
                  (size_t)(SM90_WGS * 4 + c->L.max_blocks / 32 + 1) * sizeof(uint32_t);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(moba_fwd_sm90_kernel<T, D, MINB>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)a.dl.num_ftiles, p->num_q_heads);
    moba_fwd_sm90_kernel<T, D, MINB><<<grid, SM90_THREADS, smem, (cudaStream_t)p->cuda_stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

/* The key-block-major hand-off of every (tile, q head), decided before the query-tile-major kernel runs
 * (a.kbm_pre: with kbm_own a handed-off tile leaves that kernel nothing to do). Deciding inside it cost
 * a CTA of ~100 KiB of shared memory per tile, two per SM, each loading its Q tile and waiting for it
 * before it could end: 0.115 ms of a 32K call on random inputs, where every tile is handed off (0.074 ms
 * since; docs/cuda.md, v22). Here a CTA is 128 threads and a bitmap of the tile's blocks. */
__global__ void __launch_bounds__(128) kbm_decide_kernel(FwdArgs a) {
    extern __shared__ uint32_t decide_bitmap[];
    const moba_tile tile = a.dl.ftiles[blockIdx.x];
    build_union(a, tile, (int)blockIdx.y, decide_bitmap, (int)threadIdx.x, 128);
    const bool off = kbm_decide(a, tile, blockIdx.x, (int)blockIdx.y, decide_bitmap, (int)threadIdx.x, 128);
    if (a.kbm_ulist && !off && threadIdx.x == 0) { /* a union tile's list: n <= kbm_min_union history blocks */
        int32_t *out = a.kbm_ulist + ((int64_t)blockIdx.y * a.dl.num_ftiles + blockIdx.x) * a.kbm_ustride;
        const int j = tile.block;
        int n = 0;
        for (int w = 0; w <= j / 32; w++)
            for (uint32_t bits = decide_bitmap[w]; bits; bits &= bits - 1) {
                const int b = w * 32 + __ffs(bits) - 1;
                if (b < j) out[2 + n++] = b;
            }
        out[0] = n;
        out[1] = j;
    }
}

static moba_status launch_kbm_decide(const moba_call *c, const FwdArgs &a) {
    const size_t smem = (size_t)(c->L.max_blocks / 32 + 1) * sizeof(uint32_t);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(kbm_decide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)a.dl.num_ftiles, c->p->num_q_heads);
    kbm_decide_kernel<<<grid, 128, smem, (cudaStream_t)c->p->cuda_stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

/* MOBA_CUDA_SM90_MINB=1 picks the one-CTA-per-SM build (measured against the default in docs/cuda.md). */
template <typename T, int D>
static moba_status launch_sm90(const moba_call *c, const FwdArgs &a) {
    const char *e = getenv("MOBA_CUDA_SM90_MINB");
    if (e && atoi(e) == 1) return launch_sm90_occ<T, D, 1>(c, a);
    return launch_sm90_occ<T, D, 2>(c, a);
}

/* MOBA_CUDA_NO_WGMMA=1 forces the portable kernel (tests and benchmarks compare the two). */
static int getenv_disabled(void) {
    const char *e = getenv("MOBA_CUDA_NO_WGMMA");
    return e && *e && *e != '0';
}

/* The current device is sm_90 (the sm_90a code runs there) and wgmma is not switched off. */
int moba_cuda_hopper(void) {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return major == 9 && minor == 0 && !getenv_disabled();
}

int moba_cuda_sm90_applies(const moba_call *c) { return c->p->block_size % SM90_BN == 0 && moba_cuda_hopper(); }

moba_status moba_cuda_forward_sm90(const moba_call *c, const FwdArgs &a) {
    if (a.kbm_pre) {
        moba_status st = launch_kbm_decide(c, a);
        if (st != MOBA_OK || a.kbm_ulist) return st; /* union tiles: forward_kbm.cu does every tile */
    }
    int d = c->p->head_dim;
    if (c->p->dtype == MOBA_DTYPE_BF16)
        return d == 64 ? launch_sm90<__nv_bfloat16, 64>(c, a) : launch_sm90<__nv_bfloat16, 128>(c, a);
    return d == 64 ? launch_sm90<__half, 64>(c, a) : launch_sm90<__half, 128>(c, a);
}
