/*
 * What the two forward kernels share (forward.cu: mma.sync, any GPU >= sm_80; forward_sm90.cu:
 * wgmma, Hopper): the launch arguments, the union bitmap of a tile's selections, the walk over
 * its (block, chunk) work items, and each row's walk over its own sorted selection.
 */
#ifndef MOBA_CUDA_FORWARD_H
#define MOBA_CUDA_FORWARD_H

#include <limits.h>

#include "cuda.h"

struct FwdArgs {
    const void *q, *k, *v;
    void *o;
    float *lse;
    const int32_t *sel; /* [Hq][total][stride]; NULL with mode != 0 */
    moba_cuda_layout dl;
    int64_t total;
    int Hq, Hkv, group, B, stride;
    int mode;           /* 0: routed selection, 1: every history block, 2: own block only */
    float scale_log2;   /* softmax scale * log2(e) */
    /* key-block-major hand-off (Hopper, mode 0): a tile whose union has more than kbm_min_union
     * history blocks does only its own block and sets kbm_flags[h * num_ftiles + tile]; the
     * flags are written for every tile. NULL: never. */
    int32_t *kbm_flags;
    int kbm_min_union;
    int kbm_ws_ctas;    /* the warp-specialised key-block-major kernel's CTAs; 0: the plain kernel */
    int kbm_own;        /* a handed-off tile's own block is done key-block-major too (forward_kbm.cu) */
    int kbm_pre;        /* with kbm_own: kbm_decide_kernel decides before the query-tile-major kernel runs */
    /* with kbm_pre: the tiles not handed off are union tiles of the warp-specialised kernel
     * (forward_kbm.cu), not the query-tile-major kernel's; kbm_decide_kernel writes each one's union to
     * kbm_ulist[(h * num_ftiles + f) * kbm_ustride]: history blocks n, own block j, the n blocks
     * ascending (set where min_union is at most 64, unless MOBA_CUDA_KBM_UNION=0). NULL: the
     * query-tile-major kernel does those tiles. */
    int32_t *kbm_ulist;
    int kbm_ustride;
};

/* Hopper path (forward_sm90.cu): does it apply to this call (sm_90, B % 64 == 0, not switched off), and
 * its launch (only where it applies). */
int moba_cuda_sm90_applies(const moba_call *c);
int moba_cuda_hopper(void); /* the device is sm_90 and MOBA_CUDA_NO_WGMMA is not set */
moba_status moba_cuda_forward_sm90(const moba_call *c, const FwdArgs &a);
/* Key-block-major second half (forward_kbm.cu), after forward_sm90 ran with a.kbm_flags set:
 * the history of every handed-off tile, merged into o and a.lse. */
void moba_cuda_kbm_setup(const moba_call *c, FwdArgs *a); /* kbm_min_union, kbm_ws_ctas, kbm_own */
moba_status moba_cuda_forward_kbm(const moba_call *c, const moba_cuda_plan *plan, void *ws, const FwdArgs &a);

#ifdef __CUDACC__

/* Next selected entry >= b of a row (pos indexes the tile's selection array, end = row's end). */
__device__ __forceinline__ void advance_row(const int32_t *tsel, int end, int &pos, int &nxt, int b) {
    while (nxt < b) {
        pos++;
        int e = pos < end ? __ldg(tsel + pos) : -1;
        nxt = e < 0 ? INT_MAX : e;
    }
}

/* The union of the tile's selections as a bitmap over blocks 0..j (all threads; ends synced). */
__device__ __forceinline__ void build_union(const FwdArgs &a, const moba_tile &tile, int h, uint32_t *bitmap,
                                            int tid, int threads) {
    const int j = tile.block, words = j / 32 + 1, rows = (int)(tile.row_end - tile.row_begin);
    for (int w = tid; w < words; w += threads) bitmap[w] = 0;
    __syncthreads();
    if (a.mode == 0) {
        const int32_t *tsel = a.sel + ((int64_t)h * a.total + tile.row_begin) * a.stride;
        for (int i = tid; i < rows * a.stride; i += threads) {
            int e = __ldg(tsel + i);
            if (e >= 0) atomicOr(&bitmap[e >> 5], 1u << (e & 31));
        }
    } else if (tid == 0) {
        if (a.mode == 1) {
            for (int w = 0; w < j / 32; w++) bitmap[w] = 0xffffffffu;
            bitmap[j / 32] = (j % 32 == 31) ? 0xffffffffu : ((1u << (j % 32 + 1)) - 1u);
        } else {
            bitmap[j / 32] = 1u << (j % 32);
        }
    }
    __syncthreads();
}

/* Key-block-major hand-off (a.kbm_flags set): counts the union's history blocks; a tile with more
 * than a.kbm_min_union keeps only its own block here, the rest is done key-block-major
 * (forward_kbm.cu), and kbm_flags[h * num_ftiles + f] says which. Returns whether it was handed off.
 * All threads; ends synced. */
__device__ __forceinline__ bool kbm_decide(const FwdArgs &a, const moba_tile &tile, int64_t f, int h,
                                           uint32_t *bitmap, int tid, int threads) {
    __shared__ int handed_off;
    const int j = tile.block, words = j / 32 + 1;
    if (tid < 32) {
        int n = 0;
        for (int w = tid; w < words; w += 32) n += __popc(bitmap[w]);
#pragma unroll
        for (int o = 16; o > 0; o /= 2) n += __shfl_xor_sync(0xffffffffu, n, o);
        if (tid == 0) {
            handed_off = n - 1 > a.kbm_min_union; /* n - 1: the own block is always in the union */
            a.kbm_flags[(int64_t)h * a.dl.num_ftiles + f] = handed_off;
        }
    }
    __syncthreads();
    const bool off = handed_off;
    if (off) {
        for (int w = tid; w < words; w += threads) bitmap[w] = w == j / 32 ? 1u << (j % 32) : 0u;
        __syncthreads();
    }
    return off;
}

/* Work items (block b, chunk ci of BN keys) over the bitmap in increasing order; the own block
 * stops at the tile's last query. Every thread walks the same items. */
struct ChunkWalk {
    const uint32_t *bitmap;
    int words, j, B, BN, len, qlast;
    int wi, b, ci, nch;
    uint32_t bits;

    __device__ __forceinline__ void init(const uint32_t *bm, int j_, int B_, int BN_, int len_, int qlast_) {
        bitmap = bm, j = j_, B = B_, BN = BN_, len = len_, qlast = qlast_;
        words = j / 32 + 1, wi = 0, b = -1, ci = 0, nch = 0, bits = bm[0];
    }
    __device__ __forceinline__ bool next() {
        if (ci + 1 < nch) {
            ci++;
            return true;
        }
        while (bits == 0) {
            if (++wi >= words) return false;
            bits = bitmap[wi];
        }
        b = wi * 32 + __ffs(bits) - 1;
        bits &= bits - 1;
        ci = 0;
        int kend = min(b * B + B, len);
        if (b == j) kend = min(kend, qlast + 1);
        nch = (kend - b * B + BN - 1) / BN;
        return true;
    }
    /* first key position of the current chunk, and how many of its BN keys exist */
    __device__ __forceinline__ int key0() const { return b * B + ci * BN; }
    __device__ __forceinline__ int valid_keys() const { return min(BN, min(b * B + B, len) - key0()); }
};

/* Steps the walk and, if there is a next chunk, starts loading it into the other stage; then waits
 * until the current chunk's copies (this thread's) have landed. Returns whether there is a next. */
template <class Load>
__device__ __forceinline__ bool prefetch_next(ChunkWalk &walk, Load &&load_item, int stage) {
    const bool more = walk.next();
    if (more) {
        load_item(stage ^ 1);
        moba_cp_async_wait<1>();
    } else {
        moba_cp_async_wait<0>();
    }
    return more;
}

/* One chunk of the FlashAttention update for this lane's two rows (r = 0: row g, r = 1: row g + 8)
 * of a 16-row fragment: s [NT][4] holds raw scores <q, k> in the mma accumulator layout (column
 * kcol0 + nt*8 + (e & 1), row r = e >> 1) and leaves with P = exp2(s*sl2 - m*sl2); m (the running raw
 * max, moved lazily: see below) and l (this lane's partial row sums) are updated, and alpha is the
 * factor the output accumulators must be scaled by (rescale_acc) before P V is added. take_r: the row selected the chunk's block;
 * diag: it is the rows' own block, so keys after the query (qpos0 + 8r) are masked. */
template <int NT>
__device__ __forceinline__ void softmax_update(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               bool take0, bool take1, bool diag, int kcol0, int qpos0, float sl2) {
    if (diag || !(take0 && take1)) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1, kp = kcol0 + nt * 8 + (e & 1);
                bool keep = (r ? take1 : take0) && (!diag || kp <= qpos0 + 8 * r);
                if (!keep) s[nt][e] = -INFINITY;
            }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        float mnew = fmaxf(m[r], mx[r]);
        /* The running max only moves when the chunk's exceeds it by more than 2^8 in the exponent
         * (FlashAttention 4's lazy rescale): weights are then <= 256, which fp32 sums and bf16/f16 P hold
         * exactly as well, o = acc / l is the same, and O is rarely rescaled after the first chunk. */
        if (m[r] != -INFINITY && (mnew - m[r]) * sl2 <= 8.0f) mnew = m[r];
        /* rows with nothing yet keep m = -inf: subtract 0 then, so exp2 gives 0, not NaN */
        alpha[r] = mnew == -INFINITY ? 1.0f : moba_exp2((m[r] - mnew) * sl2);
        m[r] = mnew;
        base[r] = mnew == -INFINITY ? 0.0f : mnew * sl2;
    }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[nt][e] = moba_exp2(fmaf(s[nt][e], sl2, -base[e >> 1]));
            sum[e >> 1] += s[nt][e];
        }
    l[0] = l[0] * alpha[0] + sum[0];
    l[1] = l[1] * alpha[1] + sum[1];
}

template <int DT>
__device__ __forceinline__ void rescale_acc(float (&acc)[DT][4], const float (&alpha)[2]) {
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
        for (int nt = 0; nt < DT; nt++) {
            acc[nt][0] *= alpha[0];
            acc[nt][1] *= alpha[0];
            acc[nt][2] *= alpha[1];
            acc[nt][3] *= alpha[1];
        }
    }
}

/* Both: the update with the accumulators rescaled at once. */
template <int NT, int DT>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], float (&acc)[DT][4], float (&m)[2], float (&l)[2],
                                               bool take0, bool take1, bool diag, int kcol0, int qpos0, float sl2) {
    float alpha[2];
    softmax_update(s, m, l, alpha, take0, take1, diag, kcol0, qpos0, sl2);
    rescale_acc(acc, alpha);
}

/* The empty FlashAttention state of this lane's two rows: m = -inf, l = 0, acc = 0. */
template <int DT>
__device__ __forceinline__ void attn_state_init(float (&m)[2], float (&l)[2], float (&acc)[DT][4]) {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
#pragma unroll
    for (int nt = 0; nt < DT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
}

/* Packs P (the S accumulators after online_softmax) into the A fragments of the P V product. */
template <typename T, int NT>
__device__ __forceinline__ void pack_p(const float (&s)[NT][4], uint32_t (&pa)[NT / 2][4]) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
        pa[kk][0] = moba_pack<T>::two(s[2 * kk][0], s[2 * kk][1]);
        pa[kk][1] = moba_pack<T>::two(s[2 * kk][2], s[2 * kk][3]);
        pa[kk][2] = moba_pack<T>::two(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[kk][3] = moba_pack<T>::two(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

/* Epilogue for this lane's rows r = 0, 1: o = acc / l (l summed over the 4 lanes of a row) to orow[r],
 * lse = m*scale + ln l to lse_at[r] (natural log); a NULL orow[r] skips the row, a NULL lse_at[r] its lse. */
template <typename T, int DT>
__device__ __forceinline__ void store_rows_to(T *const (&orow)[2], float *const (&lse_at)[2], const float (&acc)[DT][4],
                                              const float (&m)[2], const float (&l)[2], int c, float scale_log2) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float lt = l[r];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        if (!orow[r]) continue;
        const float inv = 1.0f / lt;
#pragma unroll
        for (int nt = 0; nt < DT; nt++)
            *reinterpret_cast<uint32_t *>(orow[r] + nt * 8 + 2 * c) =
                moba_pack<T>::two(acc[nt][2 * r] * inv, acc[nt][2 * r + 1] * inv);
        if (lse_at[r] && c == 0) *lse_at[r] = (m[r] * scale_log2 + log2f(lt)) * 0.69314718055994531f;
    }
}

/* The same for rows t0 and t0 + 8 of head h of the output tensors. */
template <typename T, int DT>
__device__ __forceinline__ void store_rows(const FwdArgs &a, int h, int64_t t0, bool valid0, bool valid1,
                                           const float (&acc)[DT][4], const float (&m)[2], const float (&l)[2],
                                           int c) {
    T *o = reinterpret_cast<T *>(a.o);
    T *const orow[2] = {valid0 ? o + (t0 * a.Hq + h) * (DT * 8) : NULL,
                        valid1 ? o + ((t0 + 8) * a.Hq + h) * (DT * 8) : NULL};
    float *const lse_at[2] = {a.lse ? a.lse + (int64_t)h * a.total + t0 : NULL,
                              a.lse ? a.lse + (int64_t)h * a.total + t0 + 8 : NULL};
    store_rows_to<T, DT>(orow, lse_at, acc, m, l, c, a.scale_log2);
}

#endif /* __CUDACC__ */
#endif
