/*
 * What the two dk/dv kernels share (backward.cu: mma.sync, any GPU >= sm_80; backward_sm90.cu:
 * wgmma, Hopper): the launch arguments, the cursor over the rows that selected a key block (in
 * chunks, over the q heads of a kv head's group), the per-chunk row data in shared memory, and the
 * atomic dq update of the default mode.
 */
#ifndef MOBA_CUDA_BACKWARD_H
#define MOBA_CUDA_BACKWARD_H

#include "forward.h"

#define BWD_THREADS 128
#define BWD_TILE 64 /* query rows per dq tile, keys per dk/dv tile: the 64-row layout tiles */
#define BWD_DS_LD (BWD_TILE + 8) /* row stride of the fused dq's dS tile [rows][64 keys] in shared memory */

struct BwdArgs {
    FwdArgs f;              /* q, k, v, sel, stride, mode, dl, sizes, scale_log2 (build_union reads it) */
    const void *dout, *o;
    const float *lse;
    void *dq, *dk, *dv;
    float *dq_acc;          /* [total][Hq][D] fp32 (the fused, non-deterministic mode) */
    float *delta;           /* [Hq][total] */
    const int32_t *row_off; /* [Hq * total_blocks + 1] (mode 0) */
    const int32_t *rows;    /* rows of each (q head, block), ascending (mode 0) */
    const int32_t *block_base; /* [num_seqs + 1] first global block of each sequence */
    int64_t total_blocks;
    float scale;
};

/* Hopper dk/dv kernel (backward_sm90.cu), with dq fused (atomics) when fuse_dq; only where
 * moba_cuda_hopper() (forward.h) says so. */
moba_status moba_cuda_dkdv_sm90(const moba_call *c, const BwdArgs &a, bool fuse_dq);
/* The warp-specialised Hopper dk/dv kernel with dq fused (backward_ws.cu), for the fused mode only:
 * applies to d = 128 and blocks of >= 128 keys, unless MOBA_CUDA_BWD_WS=0 or MOBA_CUDA_BWD_KW=1; only
 * where moba_cuda_hopper() says so. */
bool moba_cuda_dkdv_ws_applies(const moba_call *c);
moba_status moba_cuda_dkdv_ws(const moba_call *c, const BwdArgs &a);

#ifdef __CUDACC__

/* 4 bytes global -> shared, zero-filled when !valid. */
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(moba_smem_addr(dst)), "l"(src),
                 "r"(valid ? 4 : 0));
}

/* Row-major A fragment (16 rows from row0, k columns kk*16..) from shared memory of stride D + 8. */
template <int D, typename T>
__device__ __forceinline__ void a_frag_smem(uint32_t *f, const T *base, int row0, int kk, int lane) {
    moba_ldmatrix_x4(f, base + (row0 + (lane % 8) + ((lane / 8) & 1) * 8) * (D + 8) + kk * 16 + (lane / 16) * 8);
}

/* One dk/dv CTA's keys: the layout tile whose rows they are, and where it lies in its sequence. The
 * tiles are sorted heaviest-for-the-forward (latest block) first; here the earliest blocks carry the
 * most rows (every later row may select them), so CTA x takes tile count - 1 - x. The heads stay on the
 * grid's y axis (head-major): CTAs that run together then gather one head's q and dO, which stay in L2;
 * tile-major order (every head's heaviest tiles first) made the dk/dv kernel 9-40% slower (docs/cuda-backward.md). */
struct BwdKeyTile {
    moba_tile tile;
    int64_t seq0;  /* first token of the sequence */
    int len;       /* its length */
    int nkeys;     /* keys in the tile */
    int kpos0;     /* position of the first key in the sequence */
};
__device__ __forceinline__ BwdKeyTile bwd_key_tile(const FwdArgs &f, const moba_tile *tiles) {
    BwdKeyTile k;
    k.tile = tiles[gridDim.x - 1 - blockIdx.x];
    k.seq0 = f.dl.cu_seqlens[k.tile.seq];
    k.len = (int)(f.dl.cu_seqlens[k.tile.seq + 1] - k.seq0);
    k.nkeys = (int)(k.tile.row_end - k.tile.row_begin);
    k.kpos0 = (int)(k.tile.row_begin - k.seq0);
    return k;
}

/* The rows whose selection holds one key tile's block, walked in chunks of RC: for each q head gi of
 * the group in order, a list (routed: the inverted index) or a range (full attention: every later
 * row; top_k 1: the block's own rows). Rows before the tile's first key see none of its keys and are
 * left out: in a list they are its first entries (every row selects its own block, and the rows
 * of later blocks come after them), tile.row_begin - block start of them. gi == group: none left. */
struct BwdRowCursor {
    int gi, i0, count;
    const int32_t *list;
    int64_t first;

    template <int RC>
    __device__ __forceinline__ void start(const BwdArgs &a, const moba_tile &tile, int hk, int64_t seq0, int len) {
        gi = -1, i0 = -RC, count = 0, list = NULL, first = tile.row_begin;
        next<RC>(a, tile, hk, seq0, len);
    }
    template <int RC>
    __device__ __forceinline__ void next(const BwdArgs &a, const moba_tile &tile, int hk, int64_t seq0, int len) {
        const FwdArgs &f = a.f;
        i0 += RC;
        while (i0 >= count && ++gi < f.group) {
            i0 = 0;
            const int h = hk * f.group + gi;
            if (f.mode == 0) {
                const int64_t key = (int64_t)h * a.total_blocks + a.block_base[tile.seq] + tile.block;
                list = a.rows + a.row_off[key];
                count = a.row_off[key + 1] - a.row_off[key];
                i0 = min(count, (int)(tile.row_begin - seq0) - tile.block * f.B);
            } else {
                const int end = f.mode == 1 ? len : min(len, tile.block * f.B + f.B);
                count = (int)(seq0 + end - first);
            }
        }
    }
    /* packed token index of the chunk's row r, -1 past the head's rows */
    __device__ __forceinline__ int32_t row(int r) const {
        const int i = i0 + r;
        return i < count ? (list ? __ldg(list + i) : (int32_t)(first + i)) : -1;
    }
};

/* The step between two chunks of the dk/dv kernels' double-buffered walk: moves the cursor past the
 * chunk about to be computed; if one is left, starts loading it into next_stage (load, one commit
 * group) and waits for the older groups only, else for all. Either way the current chunk's copies
 * are complete after it. h_next: set to the next chunk's q head when there is one. */
template <int RC, class Load>
__device__ __forceinline__ void bwd_prefetch_next(BwdRowCursor &cur, const BwdArgs &a, const moba_tile &tile, int hk,
                                                  int64_t seq0, int len, int next_stage, int &h_next, Load &&load) {
    cur.next<RC>(a, tile, hk, seq0, len);
    if (cur.gi < a.f.group) {
        h_next = hk * a.f.group + cur.gi;
        load(next_stage);
        moba_cp_async_wait<1>();
    } else {
        moba_cp_async_wait<0>();
    }
}

/* The chunk's per-row data into shared memory [RC] (threads tid < RC): token, position in the
 * sequence (-1: none), lse and D (by cp.async, in the caller's commit group). */
template <int RC>
__device__ __forceinline__ void bwd_row_meta(const BwdArgs &a, const BwdRowCursor &cur, int h, int64_t seq0,
                                             int32_t *s_rows, int32_t *s_pos, float *s_lse, float *s_dlt, int tid) {
    if (tid < RC) {
        const int32_t t = cur.row(tid);
        const int64_t at = (int64_t)h * a.f.total + (t >= 0 ? t : 0);
        s_rows[tid] = t;
        s_pos[tid] = t >= 0 ? (int)(t - seq0) : -1;
        cp_async4(s_lse + tid, a.lse + at, t >= 0);
        cp_async4(s_dlt + tid, a.delta + at, t >= 0);
    }
}

/* Gathers rows row_of(0..R) of one head of q and dO ([total][H][D], row stride `stride`) into two
 * swizzled [R x D] tiles (sm90.h's layout, which
 * both Hopper dk/dv kernels read); row -1 -> zeros. */
template <int D, int R, int THREADS, typename T, class RowOf>
__device__ __forceinline__ void gather_sw128(char *sa, char *sb, const T *ga, const T *gb, RowOf &&row_of,
                                             int64_t stride, int tid) {
    constexpr int chunks = D / 8, step = THREADS / chunks;
    static_assert(step % 8 == 0 && R % step == 0, "tile shape");
    const int col8 = tid % chunks, r0 = tid / chunks;
    const int off = (col8 / 8) * (R * 128) + r0 * 128 + (((col8 % 8) ^ (r0 & 7)) << 4);
#pragma unroll
    for (int p = 0; p < R / step; p++) {
        const int t = row_of(r0 + p * step);
        const int64_t g = t >= 0 ? (int64_t)t * stride + col8 * 8 : 0;
        moba_cp_async16(sa + off + p * step * 128, ga + g, t >= 0);
        moba_cp_async16(sb + off + p * step * 128, gb + g, t >= 0);
    }
}

/* For this lane's entries of a warp's 16 keys (key0.. of the tile) x RC rows of a chunk, in the mma
 * accumulator layout (row m = nt*8 + 2c + (e & 1), key kl = key0 + g + 8 * (e >> 1)):
 *     p = exp(s * scale - lse_m) where keep(m, kl), else 0   -> pr
 *     dS^T = p (dP - D_m)                                      -> s, in place
 * (the dk/dv kernels' step between their two product pairs; lse_s, dlt_s: the chunk's [RC]). */
template <int RC, class Keep>
__device__ __forceinline__ void bwd_p_ds(float (&s)[RC / 8][4], const float (&dp)[RC / 8][4], float (&pr)[RC / 8][4],
                                         const float *lse_s, const float *dlt_s, int key0, int lane, float scale_log2,
                                         Keep &&keep) {
    const int g = lane / 4, c = lane % 4;
#pragma unroll
    for (int nt = 0; nt < RC / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int m = nt * 8 + 2 * c + (e & 1), kl = key0 + g + 8 * (e >> 1);
            const float p = keep(m, kl) ? moba_exp2(fmaf(s[nt][e], scale_log2, -lse_s[m] * 1.4426950408889634f)) : 0.0f;
            pr[nt][e] = p;
            s[nt][e] = p * (dp[nt][e] - dlt_s[m]);
        }
}

/* dS^T of a warp's 16 keys (key0..) x RC rows, as left by bwd_p_ds, into shared dS [RC][ld] (row-major:
 * the A operand of the fused dq product), rounded to the storage type. */
template <typename T, int RC>
__device__ __forceinline__ void bwd_store_ds(T *sDS, int ld, const float (&s)[RC / 8][4], int key0, int lane) {
    const int g = lane / 4, c = lane % 4;
#pragma unroll
    for (int nt = 0; nt < RC / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            sDS[(nt * 8 + 2 * c + (e & 1)) * ld + key0 + g + 8 * (e >> 1)] = moba_pack<T>::from_f32(s[nt][e]);
}

/* dq_acc[token t, head h, columns col0 + nt*8 + 2c, +1] += acc[nt][2r], acc[nt][2r + 1] (an mma
 * accumulator's two rows r = 0, 1 of this lane; t < 0: none). float2 atomics on sm_90. */
template <int D, int NT>
__device__ __forceinline__ void dq_atomic_add(const BwdArgs &a, const float (&acc)[NT][4], const int32_t (&t)[2],
                                              int h, int col0, int c) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (t[r] < 0) continue;
        float *dst = a.dq_acc + ((int64_t)t[r] * a.f.Hq + h) * D + col0 + 2 * c;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2 *>(dst + nt * 8), make_float2(acc[nt][2 * r], acc[nt][2 * r + 1]));
#else
            atomicAdd(dst + nt * 8, acc[nt][2 * r]);
            atomicAdd(dst + nt * 8 + 1, acc[nt][2 * r + 1]);
#endif
        }
    }
}

/* dk = scale * acc, dv = acc for this lane's keys warp*16 + g (+ 8) of the tile (an mma
 * accumulator's two rows), rounded to the storage type; keys >= nkeys are not written. */
template <typename T, int D>
__device__ __forceinline__ void store_dkdv(const BwdArgs &a, const moba_tile &tile, int hk, int nkeys,
                                           const float (&dk)[D / 8][4], const float (&dv)[D / 8][4], int warp,
                                           int lane) {
    const int g = lane / 4, c = lane % 4;
    T *dkg = reinterpret_cast<T *>(a.dk), *dvg = reinterpret_cast<T *>(a.dv);
    for (int r = 0; r < 2; r++) {
        const int key = warp * 16 + g + 8 * r;
        if (key >= nkeys) continue;
        const int64_t off = ((tile.row_begin + key) * a.f.Hkv + hk) * D;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            *reinterpret_cast<uint32_t *>(dkg + off + nt * 8 + 2 * c) =
                moba_pack<T>::two(dk[nt][2 * r] * a.scale, dk[nt][2 * r + 1] * a.scale);
            *reinterpret_cast<uint32_t *>(dvg + off + nt * 8 + 2 * c) = moba_pack<T>::two(dv[nt][2 * r], dv[nt][2 * r + 1]);
        }
    }
}

#endif /* __CUDACC__ */

#endif
