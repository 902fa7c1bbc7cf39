/*
 * GPU routing: centroids, then each query row's top (top_k - 1) history blocks, fused.
 *
 *   centroid[hk][slot] = round_to_T( (sum_{r=0..B-1} k[t0 + r][hk]) / B )   fp32 sum in key order,
 *                        exactly like the CPU, so both backends score the same centroids;
 *   s_i = <q_t, centroid_i>  for history blocks i < j (fp32 accumulate on the tensor cores; the
 *         products of two bf16/f16 numbers are exact in fp32, only the summation order differs
 *         from the CPU, so the two can disagree on near-ties);
 *   keep the best top_k - 1 (ties -> lower i, NaN lowest), add j, write them in increasing order.
 *
 * One CTA scores a tile of 64 query rows (all in block j) against 64 centroids at a time (the next
 * 64 loading meanwhile); the 64 x 64 scores go to shared memory only, never to global memory.
 * Candidate lists: for top_k <= 17 two threads per row each keep a sorted list in registers. Per
 * chunk a thread marks which of its 32 scores reach the higher of the two lists' thresholds (a bit
 * mask, no branches) and inserts only those (the first chunk, where nearly every score would enter, is
 * sorted instead); the two lists are merged at the end as 64-bit keys (score order, then lower block)
 * and the chosen blocks put in order by a sorting network. Larger top_k: one thread per row, a list in
 * shared memory (or in the workspace when top_k - 1 > 192).
 */
#include <limits.h>

#include "cuda.h"
#include "route_first.h"
#include "route_lists.h"

#define ROUTE_CHUNK 64                      /* centroids scored per step           */
static_assert(ROUTE_CHUNK / 2 == ROUTE_FIRST_N, "route_first.h sorts one half-chunk");
#define ROUTE_SMEM_LIST_MAX (96 * 1024)     /* candidate lists above this: global  */

/* One thread per (centroid slot, dim) column; blocks of `d` threads, one CTA per (slot, kv head). */
template <typename T>
__global__ void centroid_kernel(const T *__restrict__ k, T *__restrict__ cent, const int32_t *__restrict__ cu,
                                const int32_t *__restrict__ full_base, int num_seqs, int Hkv, int d, int B,
                                int64_t total_full) {
    int64_t slot = blockIdx.x;
    int hk = blockIdx.y, x = threadIdx.x;
    int64_t t0 = moba_slot_key0(cu, full_base, num_seqs, slot, B);
    const T *src = k + (t0 * Hkv + hk) * d + x;
    int64_t step = (int64_t)Hkv * d;
    /* The sum must stay sequential (bit-equal to the CPU); what is slow is the load latency, so
     * 32 keys are loaded before they are added (B is a multiple of 16; the tail loop takes the rest). */
    float sum = 0.0f;
    int r = 0;
    for (; r + 32 <= B; r += 32) {
        T x[32];
#pragma unroll
        for (int u = 0; u < 32; u++) x[u] = src[(int64_t)(r + u) * step];
#pragma unroll
        for (int u = 0; u < 32; u++) sum += moba_pack<T>::to_f32(x[u]);
    }
    for (; r < B; r++) sum += moba_pack<T>::to_f32(src[(int64_t)r * step]);
    cent[((int64_t)hk * total_full + slot) * d + x] = moba_pack<T>::from_f32(__fdiv_rn(sum, (float)B));
}

/* A float as an int that orders like the float, NaN lowest, -0 == +0. */
__device__ __forceinline__ int order_key(float s) {
    if (s != s) return INT_MIN;
    if (s == 0.0f) return 0;
    int b = __float_as_int(s);
    return b >= 0 ? b : b ^ 0x7fffffff;
}

struct RouteArgs {
    const void *q, *cent;
    moba_cuda_layout dl;
    int32_t *sel;
    int64_t total, total_full;
    int Hq, Hkv, group, k1, stride;
    int2 *glists;     /* NULL: lists in shared memory */
    int sort_first;   /* 16-entry lists: the first chunk by a sorting network (MOBA_CUDA_ROUTE_SORT=0: off) */
};

/* Writes row `t`'s selection when every history block fits: 0..min(j,k1)-1, j, then -1. */
__device__ __forceinline__ void write_all(int32_t *out, int j, int k1, int stride) {
    int n = j < k1 ? j : k1;
    for (int e = 0; e < stride; e++) out[e] = e < n ? e : (e == n ? j : -1);
}

/* Candidate of a row's list as one int64: score order key high, ~block low, so a larger value is a
 * better candidate and equal scores rank the lower block first; every value is distinct. */
__device__ __forceinline__ long long cand_key(int okey, int blk) {
    return (long long)okey * 4294967296LL + (long long)(0xffffffffu - (unsigned)blk);
}
__device__ __forceinline__ int cand_block(long long key) { return (int)(0xffffffffu - (unsigned)(key & 0xffffffffLL)); }

/* Sorts N (a power of two) registers, ascending or (DESC) descending: a bitonic network, every index
 * a compile-time constant, so it stays in registers as N log2(N) (log2(N) + 1) / 4 min/max pairs. */
template <bool DESC, typename V, int N>
__device__ __forceinline__ void sort_net(V (&v)[N]) {
#pragma unroll
    for (int k = 2; k <= N; k <<= 1)
#pragma unroll
        for (int m = k >> 1; m > 0; m >>= 1)
#pragma unroll
            for (int i = 0; i < N; i++) {
                const int l = i ^ m;
                if (l > i) {
                    const V a = v[i], b = v[l], lo = a < b ? a : b, hi = a < b ? b : a;
                    const bool low_first = ((i & k) == 0) != DESC;
                    v[i] = low_first ? lo : hi;
                    v[l] = low_first ? hi : lo;
                }
            }
}

/* A thread's own list while it scans: the scores' order keys and their blocks as two int arrays. The
 * first KMAX - k1 slots hold INT_MAX (never displaced), so only k1 entries are live, every index is a
 * compile-time constant (the list stays in registers) and the threshold is always the last slot.
 * A thread sees its blocks in increasing order, so a new candidate ranks below every equal score
 * already listed (the lower block wins): it goes in before the first slot whose key it beats
 * strictly, and every slot from there on moves down one. Each slot's test is against the new key
 * (the list is sorted, so the tests flip from false to true once), not against the entry a bubble
 * would carry: that one must pass its equals too, and all the tests are independent. NaN is
 * INT_MIN + 1 here (so it still beats an empty slot, INT_MIN); padding slots hold INT_MAX. */
__device__ __forceinline__ int scan_key(float s) {
    int k = order_key(s);
    return k == INT_MIN ? INT_MIN + 1 : k;
}
template <int KMAX>
__device__ __forceinline__ void reg_insert32(int (&ok)[KMAX], int (&bl)[KMAX], int key, int blk) {
    bool take[KMAX];
#pragma unroll
    for (int i = 0; i < KMAX; i++) take[i] = key > ok[i];
#pragma unroll
    for (int i = KMAX - 1; i > 0; i--) { /* slot i: the entry above it, the new one, or its own */
        ok[i] = max(ok[i], min(ok[i - 1], key));
        bl[i] = take[i - 1] ? bl[i - 1] : (take[i] ? blk : bl[i]);
    }
    ok[0] = max(ok[0], key);
    bl[0] = take[0] ? blk : bl[0];
}
/* The score a scan-list key stands for, as a threshold: -inf for an empty slot or a NaN (nothing may be
 * rejected by a float compare then), else the float whose order key it is (order_key inverted). A key
 * cut to its high bits (route_lists.h) below -inf's comes out as a NaN, which rejects nothing either. */
__device__ __forceinline__ float scan_key_score(int key) {
    return key == INT_MIN || key == INT_MIN + 1 ? -INFINITY : __int_as_float(key >= 0 ? key : key ^ 0x7fffffff);
}
/* The 64-bit candidate key of a scan-list entry (for the merge of the two halves). */
__device__ __forceinline__ long long scan_to_cand(int ok, int blk) {
    if (ok == INT_MAX) return LLONG_MAX;
    if (ok == INT_MIN) return LLONG_MIN;
    return cand_key(ok == INT_MIN + 1 ? INT_MIN : ok, blk);
}

/* Shared memory: the Q tile, then two centroid chunks, then the list thresholds (RT: the lists as
 * published, 4 KiB) and the lists, if in shared memory. The scores [64][65] floats lie over the Q tile: Q
 * is in registers before the first scores are stored (a barrier in between), and the smaller footprint
 * (52 KiB at D = 128; RT 55 KiB) with <= 128 registers fits 4 CTAs per SM, not 3. */
template <typename T, int D, bool RT> struct RouteSmem {
    static constexpr size_t q = (size_t)MOBA_TILE_ROWS * (D + 8) * sizeof(T);
    static constexpr size_t s = (size_t)MOBA_TILE_ROWS * 65 * sizeof(float);
    static constexpr size_t cent = q > s ? q : s;
    static constexpr size_t thr = cent + (size_t)2 * ROUTE_CHUNK * (D + 8) * sizeof(T);
    static constexpr size_t bytes = thr + (RT ? (size_t)2 * 16 * MOBA_TILE_ROWS * sizeof(uint16_t)
                                              : (size_t)MOBA_TILE_ROWS * 4 * sizeof(float)); /* lists after */
};

/* KMAX > 0: lists of up to KMAX entries in registers, two threads per row (halves of each chunk),
 * merged at the end; RT: the scan's threshold is the row's (route_lists.h), not the higher of the two
 * halves' own (the default since v26, 7-9% faster at 64K; MOBA_CUDA_ROUTE_ROWTHR=0: the halves' own);
 * F32: the first chunk sorted by 32-bit keys where their order is exact (route_first.h; the default since
 * v28). KMAX == 0: one thread per row, lists in shared or global memory (any top_k). */
template <typename T, int D, int KMAX, bool RT, bool F32 = false>
__global__ void __launch_bounds__(128, 4) route_kernel(RouteArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    const moba_tile tile = a.dl.tiles[blockIdx.x];
    const int h = blockIdx.y, hk = h / a.group, tid = threadIdx.x;
    const int j = tile.block, rows = (int)(tile.row_end - tile.row_begin), k1 = a.k1;
    int32_t *out = a.sel + ((int64_t)h * a.total + tile.row_begin) * a.stride;

    if (k1 == 0 || k1 >= j) { /* nothing to choose: every history block (or none) */
        for (int r = tid; r < rows; r += blockDim.x) write_all(out + (int64_t)r * a.stride, j, k1, a.stride);
        return;
    }

    T *sQ = reinterpret_cast<T *>(smem);
    float *sS = reinterpret_cast<float *>(smem);                               /* [64][65], over sQ */
    T *sC = reinterpret_cast<T *>(smem + RouteSmem<T, D, RT>::cent);          /* [2][64][D + 8] */
    /* [2][2][64]: (chunk parity, half, row) list thresholds; RT: [2][KR][64] (half, slot, row) the
     * register lists as published */
    float *sThr = reinterpret_cast<float *>(smem + RouteSmem<T, D, RT>::thr);
    uint16_t *sPub = reinterpret_cast<uint16_t *>(sThr);
    int2 *list = a.glists ? a.glists + ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * MOBA_TILE_ROWS * k1
                          : reinterpret_cast<int2 *>(smem + RouteSmem<T, D, RT>::bytes);
    /* list[i * 64 + row] = (order key, block): row fastest, so the row threads hit distinct banks */

    const T *q = reinterpret_cast<const T *>(a.q);
    const T *cent = reinterpret_cast<const T *>(a.cent) +
                    ((int64_t)hk * a.total_full + a.dl.full_base[tile.seq]) * D;
    const int nchunks = (j + ROUTE_CHUNK - 1) / ROUTE_CHUNK;
    auto load_chunk = [&](int ci) { /* centroids ci*64 .. into buffer ci % 2 */
        int c0 = ci * ROUTE_CHUNK;
        moba_load_tile<D, ROUTE_CHUNK, 128>(sC + (ci & 1) * ROUTE_CHUNK * (D + 8), cent + (int64_t)c0 * D, D,
                                            min(ROUTE_CHUNK, j - c0), tid);
        moba_cp_async_commit();
    };
    moba_load_tile<D, MOBA_TILE_ROWS, 128>(sQ, q + (tile.row_begin * a.Hq + h) * D, (int64_t)a.Hq * D, rows, tid);
    moba_cp_async_commit();
    load_chunk(0);
    moba_cp_async_wait<0>();
    __syncthreads();

    const int warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        moba_ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * (D + 8) + kk * 16 +
                                     (lane / 16) * 8);

    int n = 0, thr = INT_MIN; /* memory lists: fill and (when full) the key of its last entry */
    constexpr int KR = KMAX > 0 ? KMAX : 1;
    int sok[KR], sbl[KR]; /* register lists while scanning (scan_key order), then rl for the merge */
#pragma unroll
    for (int i = 0; i < KR; i++) sok[i] = i < KR - k1 ? INT_MAX : INT_MIN, sbl[i] = 0;
    long long rl[KR];
    float thr_f = -INFINITY; /* register lists: scores below this cannot enter */
    for (int ci = 0; ci < nchunks; ci++) {
        const int c0 = ci * ROUTE_CHUNK, valid = min(ROUTE_CHUNK, j - c0);
        moba_cp_async_wait<0>();
        __syncthreads(); /* chunk ci has landed; the last scan of sS (at ci = 0: the Q loads from the same
                          * bytes) and reads of the other buffer are done */
        if (ci + 1 < nchunks) load_chunk(ci + 1); /* lands while this chunk is scored and scanned */
        if (RT && KMAX > 0 && ci > 0 && tid % MOBA_TILE_ROWS < rows) /* the lists after chunk ci - 1 */
            route_publish(sok, KR, sPub + (tid / MOBA_TILE_ROWS) * KR * MOBA_TILE_ROWS + tid % MOBA_TILE_ROWS,
                          MOBA_TILE_ROWS);
        const T *cbuf = sC + (ci & 1) * ROUTE_CHUNK * (D + 8);

        float s[ROUTE_CHUNK / 8][4];
#pragma unroll
        for (int nt = 0; nt < ROUTE_CHUNK / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < ROUTE_CHUNK / 16; np++) {
                uint32_t b[4];
                moba_ldmatrix_x4(b, cbuf + (np * 16 + (lane % 8) + (lane / 16) * 8) * (D + 8) + kk * 16 +
                                        ((lane / 8) & 1) * 8);
                moba_mma<T>(s[2 * np], qf[kk], b);
                moba_mma<T>(s[2 * np + 1], qf[kk], b + 2);
            }
        }
#pragma unroll
        for (int nt = 0; nt < ROUTE_CHUNK / 8; nt++) {
            float *r0 = sS + (warp * 16 + g) * 65 + nt * 8 + 2 * c, *r1 = r0 + 8 * 65;
            r0[0] = s[nt][0];
            r0[1] = s[nt][1];
            r1[0] = s[nt][2];
            r1[1] = s[nt][3];
        }
        __syncthreads();

        if (KMAX > 0) {
            /* Which of this thread's 32 scores reach the threshold of the chunk's start (a bit mask, no
             * branches), then only those, in block order, each tested exactly against the current list:
             * the same list as testing every score, but a warp now loops as often as its busiest lane
             * has candidates, not once for every position at which any lane has one.
             * The threshold is the higher of the two halves' (the other half's from the chunk before, in
             * the other parity's slot): a score below the k1-th best of either half is beaten by k1
             * scores of the row and cannot be chosen, so each list sees about the row's candidates, not
             * its half's. A list may then stay short, but the merged one has the row's best k1.
             * RT: the row's (route_lists.h: this list and the other half's as published after the chunk
             * before), which in a model of random rows lets ~30% fewer insertions through. */
            const int row = tid % MOBA_TILE_ROWS, half = tid / MOBA_TILE_ROWS;
            if (row < rows) {
                const float *mine = sS + row * 65 + half * (ROUTE_CHUNK / 2);
                const int nmine = valid - half * (ROUTE_CHUNK / 2); /* scores of this half; may be <= 0 */
                const float thr =
                    ci == 0 ? thr_f
                    : RT    ? scan_key_score(route_row_threshold_key(
                                  sok, KR, sPub + (1 - half) * KR * MOBA_TILE_ROWS + row, MOBA_TILE_ROWS, k1))
                            : fmaxf(thr_f, sThr[((ci - 1) & 1) * 128 + (1 - half) * MOBA_TILE_ROWS + row]);
                uint32_t cand = 0;
                if (KR == 16 && ci == 0 && a.sort_first) {
                    /* F32: the same list by 32-bit keys where their order is exact (route_first.h) */
                    if (!(F32 && route_first32(mine, nmine, c0 + half * (ROUTE_CHUNK / 2), k1, sok, sbl))) {
                        /* The first chunk passes every score (the list is empty): about 26 of 32 would be
                         * inserted, at 16 slots each. Instead sort the 32 as 64-bit keys (scan key high,
                         * ~block low: equal scores rank the lower block first, an empty place lowest), keep
                         * the best 16 and shift them down p = KR - k1 slots, INT_MAX padding coming in at
                         * the top (a 4-step barrel shift: p is known at run time only). */
                        constexpr int N = ROUTE_CHUNK / 2;
                        long long v[N];
#pragma unroll
                        for (int i = 0; i < N; i++)
                            v[i] = i < nmine ? cand_key(scan_key(mine[i]), c0 + half * N + i) : LLONG_MIN;
                        sort_net<true>(v);
                        const int p = KR - k1;
#pragma unroll
                        for (int b = 0; b < 4; b++) {
                            const int sh = 1 << b;
                            if (p & sh)
#pragma unroll
                                for (int i = KR - 1; i >= 0; i--) v[i] = i >= sh ? v[i - sh] : LLONG_MAX;
                        }
#pragma unroll
                        for (int i = 0; i < KR; i++) {
                            sok[i] = (int)(v[i] >> 32); /* cand_key's halves, back to the scan list's form */
                            sbl[i] = cand_block(v[i]);
                        }
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < ROUTE_CHUNK / 2; i++) cand |= (uint32_t)(i < nmine && !(mine[i] < thr)) << i;
                }
                while (cand) {
                    const int i = __ffs(cand) - 1;
                    cand &= cand - 1;
                    const int key = scan_key(mine[i]);
                    if (key > sok[KR - 1]) reg_insert32<KR>(sok, sbl, key, c0 + half * (ROUTE_CHUNK / 2) + i);
                }
                if (!RT) {
                    thr_f = scan_key_score(sok[KR - 1]);
                    sThr[(ci & 1) * 128 + half * MOBA_TILE_ROWS + row] = thr_f;
                }
            }
        } else if (tid < rows) {
            const float *mine = sS + tid * 65;
            for (int i = 0; i < valid; i++) {
                int key = order_key(mine[i]);
                if (n == k1 && key <= thr) continue; /* equal: the earlier block wins */
                int pos = n < k1 ? n++ : k1 - 1;
                while (pos > 0 && list[(pos - 1) * MOBA_TILE_ROWS + tid].x < key) {
                    list[pos * MOBA_TILE_ROWS + tid] = list[(pos - 1) * MOBA_TILE_ROWS + tid];
                    pos--;
                }
                list[pos * MOBA_TILE_ROWS + tid] = make_int2(key, c0 + i);
                if (n == k1) thr = list[(k1 - 1) * MOBA_TILE_ROWS + tid].x;
            }
        }
    }
    __syncthreads(); /* every scan is done before sS is reused below */

    if (KMAX > 0) {
#pragma unroll
        for (int i = 0; i < KR; i++) rl[i] = scan_to_cand(sok[i], sbl[i]);
        /* merge: the second half's lists go through shared memory into the first half's */
        long long *xfer = reinterpret_cast<long long *>(sS);  /* [KMAX][64], sS is free now */
        const int row = tid % MOBA_TILE_ROWS, half = tid / MOBA_TILE_ROWS;
        if (half == 1)
#pragma unroll
            for (int i = 0; i < KR; i++) xfer[i * MOBA_TILE_ROWS + row] = rl[i];
        __syncthreads();
        if (half == 0 && row < rows) {
            /* Both lists hold their k1 live entries descending in slots p..KR-1; the best k1 of the two
             * are max(mine[p + t], other's[KR - 1 - t]), t < k1 (the first step of a bitonic merge; the
             * other's slot is a run-time index, which shared memory takes). Their blocks, padded with
             * INT_MAX, sorted ascending, are the row's selection in order. */
            const int p = KR - k1;
            int blk[KR];
#pragma unroll
            for (int i = 0; i < KR; i++) {
                blk[i] = INT_MAX;
                if (i >= p) {
                    const long long other = xfer[(KR - 1 - i + p) * MOBA_TILE_ROWS + row];
                    blk[i] = cand_block(rl[i] > other ? rl[i] : other);
                }
            }
            sort_net<false>(blk);
            int32_t *o = out + (int64_t)row * a.stride;
#pragma unroll
            for (int e = 0; e < KR; e++)
                if (e < k1) o[e] = blk[e];
            for (int e = k1; e < a.stride; e++) o[e] = e == k1 ? j : -1;
        }
        return;
    }

    if (tid < rows) { /* blocks in increasing order (insertion sort: k1 is small), then j, then -1 */
        for (int i = 1; i < k1; i++) {
            int2 e = list[i * MOBA_TILE_ROWS + tid];
            int p = i;
            while (p > 0 && list[(p - 1) * MOBA_TILE_ROWS + tid].y > e.y) {
                list[p * MOBA_TILE_ROWS + tid] = list[(p - 1) * MOBA_TILE_ROWS + tid];
                p--;
            }
            list[p * MOBA_TILE_ROWS + tid] = e;
        }
        int32_t *o = out + (int64_t)tid * a.stride;
        for (int e = 0; e < a.stride; e++) o[e] = e < k1 ? list[e * MOBA_TILE_ROWS + tid].y : (e == k1 ? j : -1);
    }
}

int moba_cuda_topk_list_fits_smem(int k1) { return (size_t)MOBA_TILE_ROWS * k1 * sizeof(int2) <= ROUTE_SMEM_LIST_MAX; }

template <typename T, int D, int KMAX, bool RT, bool F32 = false>
static moba_status launch_route_k(const RouteArgs &a, dim3 grid, size_t smem, cudaStream_t stream) {
    smem += RouteSmem<T, D, RT>::bytes;
    MOBA_CUDA_TRY(cudaFuncSetAttribute(route_kernel<T, D, KMAX, RT, F32>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    route_kernel<T, D, KMAX, RT, F32><<<grid, 128, smem, stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

template <typename T, int D>
static moba_status launch_route(const moba_call *c, const moba_cuda_plan *plan, void *ws, const moba_cuda_layout *dl,
                                const void *q, const void *k, int32_t *sel, int stride) {
    const moba_params *p = c->p;
    cudaStream_t stream = (cudaStream_t)p->cuda_stream;
    int k1 = p->top_k - 1;
    T *cent = reinterpret_cast<T *>((char *)ws + plan->centroids);
    int need_centroids = !c->full_attention && k1 > 0 && c->L.total_full_blocks > 0;
    if (need_centroids) {
        dim3 grid((unsigned)c->L.total_full_blocks, p->num_kv_heads);
        centroid_kernel<T><<<grid, D, 0, stream>>>(reinterpret_cast<const T *>(k), cent, dl->cu_seqlens, dl->full_base,
                                                   p->num_seqs, p->num_kv_heads, D, p->block_size,
                                                   c->L.total_full_blocks);
        MOBA_CUDA_LAUNCHED();
    }
    RouteArgs a;
    a.q = q;
    a.cent = cent;
    a.dl = *dl;
    a.sel = sel;
    a.total = c->L.total_tokens;
    a.total_full = c->L.total_full_blocks;
    a.Hq = p->num_q_heads;
    a.Hkv = p->num_kv_heads;
    a.group = c->group;
    a.k1 = k1 < c->L.max_blocks ? k1 : c->L.max_blocks; /* more than every block: "all" */
    a.stride = stride;
    a.glists = plan->lists_in_global ? reinterpret_cast<int2 *>((char *)ws + plan->topk_lists) : NULL;
    const char *e = getenv("MOBA_CUDA_ROUTE_SORT");
    a.sort_first = !(e && e[0] == '0');
    e = getenv("MOBA_CUDA_ROUTE_ROWTHR");
    const bool row_thr = !(e && e[0] == '0');
    /* the first chunk's sort by 32-bit keys where their order is exact (route_first.h; the default since
     * v28, with the row threshold only; MOBA_CUDA_ROUTE_FIRST32=0: 64-bit keys throughout) */
    e = getenv("MOBA_CUDA_ROUTE_FIRST32");
    const bool first32 = !(e && e[0] == '0') && row_thr && a.sort_first;
    dim3 grid((unsigned)plan->num_tiles, p->num_q_heads);
    if (a.k1 <= 4)
        return row_thr ? launch_route_k<T, D, 4, true>(a, grid, 0, stream)
                       : launch_route_k<T, D, 4, false>(a, grid, 0, stream);
    if (a.k1 <= 16)
        return first32   ? launch_route_k<T, D, 16, true, true>(a, grid, 0, stream)
               : row_thr ? launch_route_k<T, D, 16, true>(a, grid, 0, stream)
                         : launch_route_k<T, D, 16, false>(a, grid, 0, stream);
    size_t lists = a.glists ? 0 : (size_t)MOBA_TILE_ROWS * a.k1 * sizeof(int2);
    return launch_route_k<T, D, 0, false>(a, grid, lists, stream);
}

/* Row i of a [Hq][total] selection: its token's own block. */
__device__ __forceinline__ int row_own_block(int64_t i, const int32_t *__restrict__ cu, int num_seqs, int64_t total,
                                             int B) {
    const int64_t t = i % total;
    return (int)((t - cu[moba_seg_of(cu, num_seqs, t)]) / B);
}

/* The selections no score decides, in moba_route's format (top_k == 1: the own block; top_k >= every
 * sequence's blocks: all blocks up to the own), one thread per (q head, token) row. */
__global__ void trivial_selection_kernel(int32_t *out, const int32_t *__restrict__ cu, int num_seqs, int64_t total,
                                         int B, int k1, int stride, int64_t rows) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    write_all(out + i * stride, row_own_block(i, cu, num_seqs, total, B), k1, stride);
}

/* A caller's selection (moba_params.block_idx, in_stride entries per row) as the backward's sel (stride
 * entries per row). The kernels trust sel (ascending history blocks below the own block, the own block,
 * -1), so a row keeps only its entries that ascend strictly and lie below its own block, at most
 * stride - 1 of them: a valid selection comes through unchanged, and an invalid entry, which the host
 * cannot see without a synchronisation, is dropped instead of being read out of bounds. */
__global__ void import_selection_kernel(const int32_t *__restrict__ in, int in_stride, int32_t *sel, int stride,
                                        const int32_t *__restrict__ cu, int num_seqs, int64_t total, int B,
                                        int64_t rows) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    const int j = row_own_block(i, cu, num_seqs, total, B);
    const int32_t *row = in + i * in_stride;
    int32_t *o = sel + i * stride;
    int n = 0, prev = -1;
    for (int e = 0; e < in_stride && n < stride - 1; e++) {
        const int b = __ldg(row + e);
        if (b > prev && b < j) o[n++] = prev = b;
    }
    o[n++] = j;
    while (n < stride) o[n++] = -1;
}

/* in == NULL: the trivial selection into sel (stride top_k); else in (stride top_k) imported into sel. */
static moba_status selection_rows(const moba_call *c, const moba_cuda_layout *dl, const int32_t *in, int32_t *sel,
                                  int stride) {
    const moba_params *p = c->p;
    const int64_t rows = (int64_t)p->num_q_heads * c->L.total_tokens;
    const unsigned grid = (unsigned)((rows + 255) / 256);
    cudaStream_t stream = (cudaStream_t)p->cuda_stream;
    if (in)
        import_selection_kernel<<<grid, 256, 0, stream>>>(in, p->top_k, sel, stride, dl->cu_seqlens, p->num_seqs,
                                                          c->L.total_tokens, p->block_size, rows);
    else
        trivial_selection_kernel<<<grid, 256, 0, stream>>>(sel, dl->cu_seqlens, p->num_seqs, c->L.total_tokens,
                                                           p->block_size, p->top_k - 1, stride, rows);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

moba_status moba_cuda_trivial_selection(const moba_call *c, const moba_cuda_layout *dl, int32_t *out) {
    return selection_rows(c, dl, NULL, out, c->p->top_k);
}

moba_status moba_cuda_import_selection(const moba_call *c, const moba_cuda_layout *dl, const int32_t *block_idx,
                                       int32_t *sel, int stride) {
    return selection_rows(c, dl, block_idx, sel, stride);
}

moba_status moba_cuda_route_into(const moba_call *c, const moba_cuda_plan *plan, void *ws, const moba_cuda_layout *dl,
                                 const void *q, const void *k, int32_t *sel, int stride) {
    int d = c->p->head_dim;
    if (c->p->dtype == MOBA_DTYPE_BF16)
        return d == 64 ? launch_route<__nv_bfloat16, 64>(c, plan, ws, dl, q, k, sel, stride)
                       : launch_route<__nv_bfloat16, 128>(c, plan, ws, dl, q, k, sel, stride);
    return d == 64 ? launch_route<__half, 64>(c, plan, ws, dl, q, k, sel, stride)
                   : launch_route<__half, 128>(c, plan, ws, dl, q, k, sel, stride);
}
