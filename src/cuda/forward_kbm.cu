/*
 * Key-block-major forward (Hopper), for routing without locality.
 *
 * The query-tile-major kernel (forward_sm90.cu) loads every block that any row of its 128-row tile
 * selected and masks the rest; when neighbouring queries route independently that union is about
 * the whole history and MoBA does dense work. Here every history selection (row, block) is a pair;
 * pairs are grouped by (kv head, block) and a CTA takes up to 128 pairs of one group, so K/V of a
 * block are loaded once per 128 queries that chose it and no MMA is wasted:
 *     o_p = softmax(q K_b^T * scale) V_b,   lse_p = log sum exp(q K_b^T * scale)
 * A row then merges the own-block result left in (o, lse) - by the query-tile-major kernel, or with the
 * warp-specialised kernel by an own-block tile of that kernel - with its partials by their LSEs:
 *     o = sum_x exp(lse_x - L) o_x,   L = log sum_x exp(lse_x).
 * The tiles that go this way are the ones whose union has more than kbm_min_union history blocks
 * (forward.h: kbm_decide); the others never come here.
 *
 * Partials (storage dtype + fp32 lse) cost memory, so pairs go in passes of at most plan->kcap,
 * in unit order u = h * num_ftiles + f. Only handed-off units have pairs, and which they are is known
 * on the device only, so the passes are cut there (kbm_passes_kernel): the handed-off units are listed
 * in order (ulist); entry x's pairs are numbered from cbase[x] (the pairs of the entries before it),
 * pair (entry x, row i, slot s) is cbase[x] + i * nh + s (nh = min(block, slots - 1) history blocks
 * per row of the tile), and the entry belongs to pass cbase[x] / kstep, whose partial slots start at
 * pass * kstep. The host launches the passes that handing off every unit would need; the ones the
 * device finds empty end at once (routing with locality hands off few units or none), and the others
 * never look at a unit that was not handed off. Per pass: count (pairs per group) -> scan
 * (offsets and the tile list) -> scatter (the pair list) -> attend -> merge. The order of rows inside a
 * group comes from atomics, but a row's arithmetic is its own: the output is bitwise reproducible.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h> /* CUtensorMap and its enums only: the library does not link libcuda */
#include <cudaTypedefs.h>

#include "forward.h"
#include "kbm_passes.h"
#include "sm90.h"

#define KBM_ROWS 128                            /* pairs per CTA: two warpgroups of 64 */
#define KBM_SCAN_THREADS 1024
#define KBM_UNITS_PER_CTA 4                     /* count / scatter */
#define KBM_HIST_MAX 12288                      /* their shared histogram: 48 KiB */
#define KBM_MIN_BUDGET ((int64_t)256 << 20)     /* partials may always take this many bytes */
#define KBM_UNION_MAX 64                        /* union tiles: at most this many history blocks stay */

struct KbmArgs {
    const void *q, *k, *v;
    void *o;
    float *lse;                 /* [Hq][total]: the own block's lse in, the merged lse out */
    const int32_t *sel;         /* [Hq][total][stride] */
    const moba_tile *ftiles;
    const int32_t *cu_seqlens, *full_base;
    const int64_t *fpairs;      /* [nf + 1] pairs before each tile (of one head, every tile handed off) */
    int64_t *ulist, *cbase;     /* [units]: the handed-off units in order, and each one's first pair */
    int64_t *pstart;            /* [npasses + 1]: each pass's first entry of ulist */
    const int32_t *flags;       /* [Hq][nf]: tile handed off */
    int32_t *cnt, *off;         /* [ng]: pairs per group (0 between passes), first pair (then a cursor) */
    int32_t *ntiles;            /* [1] tiles of this pass */
    int4 *tiles;                /* {kv head, first key row, first pair, pairs} */
    /* union tiles (a.ublk set, forward.h: kbm_ulist): the units not handed off, in order, and how many */
    const int32_t *ublk;        /* [units][ustride]: union count, own block, the union's history blocks */
    int64_t *qlist;
    int32_t *nuq;
    int ustride;
    int2 *plist;                /* {t * Hq + h, partial slot} grouped */
    float *part_lse;            /* [kcap] */
    void *part_o;               /* [kcap][D] storage dtype */
    int64_t total, nf, ptot, tfb, ng;
    int64_t pass, s0;           /* this pass and its first pair (pass * kstep) */
    int Hq, Hkv, group, B, stride, k1, num_seqs;
    int ws_ctas;                /* persistent CTAs of the warp-specialised kernel (SMs); 0: the plain one */
    int own;                    /* handed-off tiles' own blocks are items of the warp-specialised kernel */
    int pingpong;               /* its two consumer warpgroups take turns to issue their products */
    int qregs;                  /* its consumers hold Q in registers (S = Q K^T with A from registers) */
    int qbufs;                  /* with qregs: tiles whose Q the producer holds at once (1: a sixth K/V stage instead) */
    float scale_log2;
};

/* fn(pair index in the pass, token t, q head h, group g) for each history pair of ulist entry x (all threads). */
template <class Fn>
__device__ __forceinline__ void for_each_pair(const KbmArgs &a, int64_t x0, Fn &&fn) {
    const int64_t u = a.ulist[x0];
    const int h = (int)(u / a.nf);
    const int64_t f = u % a.nf;
    const moba_tile tile = a.ftiles[f];
    const int nh = min(tile.block, a.k1), rows = (int)(tile.row_end - tile.row_begin);
    const int64_t base = a.cbase[x0] - a.s0;
    const int64_t gbase = (int64_t)(h / a.group) * a.tfb + a.full_base[tile.seq];
    const int32_t *tsel = a.sel + ((int64_t)h * a.total + tile.row_begin) * a.stride;
    for (int x = threadIdx.x; x < rows * nh; x += blockDim.x) {
        const int i = x / nh, s = x % nh;
        fn(base + x, tile.row_begin + i, h, gbase + __ldg(tsel + (int64_t)i * a.stride + s));
    }
}

/* Two inclusive prefix sums over the CTA's KBM_SCAN_THREADS threads at once, in shared arrays sa and sb
 * (thread tid's values in, its sums out): the two one-CTA kernels below each need a pair of them. */
__device__ __forceinline__ void kbm_block_scan2(int64_t *sa, int64_t *sb, int64_t a, int64_t b) {
    const int tid = threadIdx.x;
    sa[tid] = a;
    sb[tid] = b;
    __syncthreads();
    for (int o = 1; o < KBM_SCAN_THREADS; o *= 2) {
        const int64_t va = tid >= o ? sa[tid - o] : 0, vb = tid >= o ? sb[tid - o] : 0;
        __syncthreads();
        sa[tid] += va;
        sb[tid] += vb;
        __syncthreads();
    }
}

/* One CTA, before the passes: the handed-off units in order (ulist, nl of them), each entry's first pair
 * (cbase: exclusive prefix sums of their pairs) and pstart, pass q being the entries with
 * kbm_pass_of(cbase) == q (kbm_passes.h: why a pass fits kcap). */
__global__ void __launch_bounds__(KBM_SCAN_THREADS) kbm_passes_kernel(KbmArgs a, int64_t units, int64_t kstep,
                                                                      int64_t npasses) {
    __shared__ int64_t sp[KBM_SCAN_THREADS], sn[KBM_SCAN_THREADS];
    const int tid = threadIdx.x;
    auto pairs_of = [&](int64_t u) { return a.fpairs[u % a.nf + 1] - a.fpairs[u % a.nf]; };
    const int64_t per = (units + KBM_SCAN_THREADS - 1) / KBM_SCAN_THREADS;
    const int64_t u0 = min(units, tid * per), u1 = min(units, u0 + per);
    int64_t n = 0, m = 0; /* this thread's pairs and handed-off units */
    for (int64_t u = u0; u < u1; u++)
        if (a.flags[u]) n += pairs_of(u), m++;
    kbm_block_scan2(sp, sn, n, m);
    const int64_t nl = sn[KBM_SCAN_THREADS - 1];
    int64_t cb = sp[tid] - n, x = sn[tid] - m;
    for (int64_t u = u0; u < u1; u++)
        if (a.flags[u]) {
            a.ulist[x] = u;
            a.cbase[x++] = cb;
            cb += pairs_of(u);
        }
    if (a.qlist) { /* the others, in order: the union tiles (u0 - x of them come before u0) */
        int64_t y = u0 - (sn[tid] - m);
        for (int64_t u = u0; u < u1; u++)
            if (!a.flags[u]) a.qlist[y++] = u;
        if (tid == KBM_SCAN_THREADS - 1) *a.nuq = (int32_t)(units - nl);
    }
    __syncthreads(); /* the block's global writes are visible to the block */
    /* pstart[q] = the first entry of pass >= q; entries split among the threads anew */
    auto pass_of = [&](int64_t c) { return kbm_pass_of(c, kstep, npasses); };
    const int64_t xper = (nl + KBM_SCAN_THREADS - 1) / KBM_SCAN_THREADS;
    const int64_t x0 = min(nl, tid * xper), x1 = min(nl, x0 + xper);
    if (x0 < x1) {
        int64_t q = x0 == 0 ? -1 : pass_of(a.cbase[x0 - 1]); /* the pass of the entry before */
        for (int64_t e = x0; e < x1; e++)
            for (const int64_t qe = pass_of(a.cbase[e]); q < qe;) a.pstart[++q] = e;
        if (x1 == nl)
            while (q < npasses) a.pstart[++q] = nl;
    }
    if (nl == 0 && tid == 0)
        for (int64_t q = 0; q <= npasses; q++) a.pstart[q] = 0;
}

/* The pairs of a group are counted per CTA in shared memory first: a group's global counter is hot
 * (thousands of pairs per pass, and same-address atomics serialise), so one global atomic per
 * (CTA, group) instead of one per pair. A CTA takes KBM_UNITS_PER_CTA consecutive ulist entries of the pass
 * at a time (grid-stride); its histogram covers the centroid slots of their first unit's kv head; pairs of
 * another kv head (at a head boundary), or every pair when tfb > KBM_HIST_MAX, go to the global counters
 * directly. */
struct KbmHist {
    int *hist;
    int64_t g0, ub, ue;
    bool on;
    /* the ulist entries [ub, ue) of chunk `chunk` of the pass (ub >= ue: past its end); the caller syncs
     * before reuse */
    __device__ __forceinline__ KbmHist(const KbmArgs &a, int64_t chunk, int *smem) {
        const int64_t pe = a.pstart[a.pass + 1];
        ub = a.pstart[a.pass] + chunk * KBM_UNITS_PER_CTA;
        ue = min(ub + KBM_UNITS_PER_CTA, pe);
        g0 = ub < ue ? (int64_t)((int)(a.ulist[ub] / a.nf) / a.group) * a.tfb : 0;
        on = a.tfb <= KBM_HIST_MAX && ub < ue;
        hist = smem;
        if (on) {
            for (int i = threadIdx.x; i < a.tfb; i += blockDim.x) hist[i] = 0;
            __syncthreads();
        }
    }
    __device__ __forceinline__ int *slot(const KbmArgs &a, int64_t g) const {
        return on && g >= g0 && g < g0 + a.tfb ? hist + (g - g0) : NULL;
    }
};

__global__ void __launch_bounds__(256) kbm_count_kernel(KbmArgs a) {
    extern __shared__ int smem_hist[];
    for (int64_t chunk = blockIdx.x;; chunk += gridDim.x) {
        KbmHist H(a, chunk, smem_hist);
        if (H.ub >= H.ue) return;
        for (int64_t x = H.ub; x < H.ue; x++)
            for_each_pair(a, x, [&](int64_t, int64_t, int, int64_t g) {
                int *c = H.slot(a, g);
                atomicAdd(c ? c : &a.cnt[g], 1);
            });
        if (!H.on) continue;
        __syncthreads();
        for (int i = threadIdx.x; i < a.tfb; i += blockDim.x)
            if (H.hist[i]) atomicAdd(&a.cnt[H.g0 + i], H.hist[i]);
        __syncthreads(); /* the histogram is read before the next chunk clears it */
    }
}

/* The same count again, then one global atomic per (CTA, group) reserves the CTA's range of the
 * group's pair list, and each pair takes the next place in it (shared atomics). */
__global__ void __launch_bounds__(256) kbm_scatter_kernel(KbmArgs a) {
    extern __shared__ int smem_hist[];
    for (int64_t chunk = blockIdx.x;; chunk += gridDim.x) {
        KbmHist H(a, chunk, smem_hist);
        if (H.ub >= H.ue) return;
        if (H.on) {
            for (int64_t x = H.ub; x < H.ue; x++)
                for_each_pair(a, x, [&](int64_t, int64_t, int, int64_t g) {
                    if (int *c = H.slot(a, g)) atomicAdd(c, 1);
                });
            __syncthreads();
            for (int i = threadIdx.x; i < a.tfb; i += blockDim.x)
                if (H.hist[i]) H.hist[i] = atomicAdd(&a.off[H.g0 + i], H.hist[i]);
            __syncthreads();
        }
        for (int64_t x = H.ub; x < H.ue; x++)
            for_each_pair(a, x, [&](int64_t p, int64_t t, int h, int64_t g) {
                int *c = H.slot(a, g);
                const int at = atomicAdd(c ? c : &a.off[g], 1);
                a.plist[at] = make_int2((int)(t * a.Hq + h), (int)p);
            });
        __syncthreads(); /* the histogram is read before the next chunk clears it */
    }
}

/* One CTA: exclusive prefix sums of the group counts (pair offsets) and of their tile counts, the
 * tile list, and the counts reset to 0 for the next pass (the scatter's cursors are the offsets). With
 * a.own, the list goes on with one own-block item per entry of the pass: {-1 - q head, block's first
 * key, first row, rows}. */
__global__ void __launch_bounds__(KBM_SCAN_THREADS) kbm_scan_kernel(KbmArgs a) {
    __shared__ int64_t sp[KBM_SCAN_THREADS], st[KBM_SCAN_THREADS];
    const int tid = threadIdx.x;
    const int64_t ub = a.pstart[a.pass], units = a.pstart[a.pass + 1] - ub; /* its ulist entries */
    if (units == 0) { /* an empty pass: nothing was counted */
        if (tid == 0) *a.ntiles = 0;
        return;
    }
    const int64_t per = (a.ng + KBM_SCAN_THREADS - 1) / KBM_SCAN_THREADS;
    const int64_t g0 = min(a.ng, tid * per), g1 = min(a.ng, g0 + per);
    int64_t np = 0, nt = 0;
    for (int64_t g = g0; g < g1; g++) {
        const int n = a.cnt[g];
        np += n;
        nt += (n + KBM_ROWS - 1) / KBM_ROWS;
    }
    kbm_block_scan2(sp, st, np, nt);
    int64_t p = sp[tid] - np, t = st[tid] - nt;
    for (int64_t g = g0; g < g1; g++) {
        const int n = a.cnt[g];
        a.off[g] = (int)p;
        a.cnt[g] = 0;
        if (n > 0) {
            const int hk = (int)(g / a.tfb);
            const int64_t slot = g % a.tfb;
            const int key0 = (int)moba_slot_key0(a.cu_seqlens, a.full_base, a.num_seqs, slot, a.B);
            for (int k = 0; k * KBM_ROWS < n; k++)
                a.tiles[t++] = make_int4(hk, key0, (int)p + k * KBM_ROWS, min(KBM_ROWS, n - k * KBM_ROWS));
        }
        p += n;
    }
    const int64_t hist_tiles = st[KBM_SCAN_THREADS - 1];
    if (a.own) /* each entry of the pass, in order after the history tiles */
        for (int64_t x = tid; x < units; x += KBM_SCAN_THREADS) {
            const int64_t u = a.ulist[ub + x];
            const int h = (int)(u / a.nf);
            const moba_tile tile = a.ftiles[u % a.nf];
            const int64_t key0 = a.cu_seqlens[tile.seq] + (int64_t)tile.block * a.B;
            a.tiles[hist_tiles + x] =
                make_int4(-1 - h, (int)key0, (int)tile.row_begin, (int)(tile.row_end - tile.row_begin));
        }
    if (tid == 0) *a.ntiles = (int)(hist_tiles + (a.own ? units : 0));
}

/* The rows row0 and row0 + 8 (of a tile's n pairs) to their partial slots slot0 and slot1: o / l in the
 * storage dtype, lse in fp32. */
template <typename T, int D>
__device__ __forceinline__ void store_partials_at(const KbmArgs &a, int row0, int n, int slot0, int slot1,
                                                  const float (&acc)[D / 8][4], const float (&m)[2],
                                                  const float (&l)[2], int c) {
    const bool v0 = row0 < n, v1 = row0 + 8 < n;
    T *po = reinterpret_cast<T *>(a.part_o);
    T *const orow[2] = {v0 ? po + (int64_t)slot0 * D : NULL, v1 ? po + (int64_t)slot1 * D : NULL};
    float *const lse_at[2] = {v0 ? a.part_lse + slot0 : NULL, v1 ? a.part_lse + slot1 : NULL};
    store_rows_to<T, D / 8>(orow, lse_at, acc, m, l, c, a.scale_log2);
}
/* The partial slots of rows row0 and row0 + 8 (0 for rows past n). */
__device__ __forceinline__ void partial_slots(const int2 *pl, int row0, int n, int &slot0, int &slot1) {
    slot0 = row0 < n ? pl[row0].y : 0;
    slot1 = row0 + 8 < n ? pl[row0 + 8].y : 0;
}
template <typename T, int D>
__device__ __forceinline__ void store_partials(const KbmArgs &a, const int2 *pl, int row0, int n,
                                               const float (&acc)[D / 8][4], const float (&m)[2], const float (&l)[2],
                                               int c) {
    int slot0, slot1;
    partial_slots(pl, row0, n, slot0, slot1);
    store_partials_at<T, D>(a, row0, n, slot0, slot1, acc, m, l, c);
}

/* One CTA per tile: up to 128 gathered query rows (64 per warpgroup) against the B keys of one
 * history block (no mask: the block is full and before every row's own block). */
template <typename T, int D>
__global__ void __launch_bounds__(SM90_THREADS, 2) kbm_attend_kernel(KbmArgs a) {
#ifdef MOBA_WGMMA
    constexpr int BN = SM90_BN, ROWS = 64;
    constexpr int Q_BYTES = ROWS * D * 2, KV_BYTES = BN * D * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    char *smem = moba_smem_align1024(smem_raw);
    char *sQ = smem, *sK = sQ + SM90_WGS * Q_BYTES, *sV = sK + 2 * KV_BYTES;
    if ((int)blockIdx.x >= *a.ntiles) return; /* the grid is an upper bound */
    const int4 tile = a.tiles[blockIdx.x];
    const int hk = tile.x, n = tile.w;
    const int2 *pl = a.plist + tile.z;
    const int tid = threadIdx.x, wgi = tid / 128, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const T *kg = reinterpret_cast<const T *>(a.k), *vg = reinterpret_cast<const T *>(a.v);
    const int64_t kv_stride = (int64_t)a.Hkv * D;

    for (int w = 0; w < SM90_WGS; w++)
        load_sw128_gather<D, ROWS>(sQ + w * Q_BYTES, reinterpret_cast<const T *>(a.q), pl + w * ROWS, n - w * ROWS,
                                   tid);
    moba_cp_async_commit();
    auto load_chunk = [&](int ci, int stage) {
        const int64_t off = ((int64_t)(tile.y + ci * BN) * a.Hkv + hk) * D;
        load_sw128<D, BN>(sK + stage * KV_BYTES, kg + off, kv_stride, BN, tid);
        load_sw128<D, BN>(sV + stage * KV_BYTES, vg + off, kv_stride, BN, tid);
        moba_cp_async_commit();
    };
    load_chunk(0, 0);

    const int row0 = warp * 16 + g; /* this lane's rows row0 and row0 + 8; warps 4..7 hold 64..127 */
    const bool take0 = row0 < n, take1 = row0 + 8 < n, work = wgi * ROWS < n;
    float m[2], l[2], acc[D / 8][4];
    attn_state_init(m, l, acc);

    const int nch = a.B / BN;
    for (int ci = 0; ci < nch; ci++) {
        const int stage = ci & 1;
        if (ci + 1 < nch) {
            load_chunk(ci + 1, stage ^ 1);
            moba_cp_async_wait<1>();
        } else {
            moba_cp_async_wait<0>();
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        if (work)
            sm90_attend_chunk<T, D, BN, ROWS>(sQ + wgi * Q_BYTES, sK + stage * KV_BYTES, sV + stage * KV_BYTES, acc, m,
                                              l, take0, take1, false, 0, 0, a.scale_log2);
        __syncthreads(); /* the stage is free for the load after next */
    }
    store_partials<T, D>(a, pl, row0, n, acc, m, l, c);
#else
    __trap(); /* built for another target: the host never launches it there */
#endif
}

/* Warp-specialised version (the default for B >= 128; MOBA_CUDA_KBM_WS=1/0 forces it on/off). A persistent CTA of three
 * warpgroups per SM walks its tiles' chunks as one stream of items: warpgroup 0 only loads (K/V into a KBM_WS_STAGES ring, a
 * tile's Q with its first chunk into one of NQ Q buffers), waits for its own copies one item behind,
 * fences them to the async proxy and arrives on the stage's "full" mbarrier; warpgroups 1 and 2 take 64
 * rows each and, per item, wait "full", rescale O, issue S(s) and O += P(s-1) V(s-1), wait for S(s)
 * only, run the softmax while P V runs (FA3's order; the first item of a tile peeled so that no wgmma
 * is under a branch), then release the stage of item s-1 on its "empty" mbarrier. No CTA barrier in
 * the loop: the consumers are tied to each other only through the stages. With QR (the default) a
 * consumer loads its Q rows into registers at a tile's first item and S takes A from them: with
 * 64-key chunks, S with both operands in shared memory reads as much per step as shared memory gives
 * in the step's tensor time; this way it reads only K (docs/cuda.md, v14).
 * Two kinds of tile: a history tile (x = kv head >= 0: up to 128 gathered pairs against a whole block,
 * results to the partials) and, with a.own, an own-block tile (x = -1 - q head: up to 128 consecutive
 * rows of one block against its keys up to the last row, causal, results straight to o and lse; the
 * query-tile-major kernel did this part at ~260 TFLOP/s, this one at ~357). A warpgroup stops at its diagonal
 * chunk and only waits out / releases the stages after it.
 * UN: every tile is a union tile (a unit that was not handed off, a.qlist): its 128 consecutive rows
 * against the union of their selections - each union block whole, then the own block as in an own-block
 * tile - results straight to o and lse, no partials. A row's weights are 0 on the union blocks it did not
 * select: each consumer lane walks its two rows' selections (ascending, like the union) one block ahead.
 * This is the query-tile-major kernel's work (forward_sm90.cu) in this kernel's pipeline. */
#define KBM_WS_THREADS 384
/* K/V stages beside NQ tiles' Q (two 64-row buffers each): 2 x 32 KiB + 5 x 32 KiB, or with Q in registers
 * 1 x 32 KiB + 6 x 32 KiB, of the 227 KiB of shared memory at D = 128 */
#define KBM_WS_STAGES(NQ) ((NQ) == 1 ? 6 : 5)
#define KBM_WS_PRODUCER_REGS 80  /* with Q in registers (setmaxnreg): 80 * 128 + 208 * 256 <= the 168 * 384 of the launch */
#define KBM_WS_CONSUMER_REGS 208
/* TMA variant: the producer's one loading thread and its Q copies need few registers: 40 * 128 + 232 * 256
 * = the 168 * 384 of the launch (24 / 240: the Q copies spill) */
#define KBM_TMA_PRODUCER_REGS 40
#define KBM_TMA_CONSUMER_REGS 232
#define KBM_SMEM_MAX 232448 /* dynamic shared memory a CTA may have (sm_90) */

/* Shared memory of the warp-specialised kernel past its 1024-byte alignment, for the kernel and the
 * launch alike: NQ Q buffers (two 64-row tiles each), NS K stages, NS V stages of BN keys, then the
 * mbarriers full[NS], empty[NS], qempty[NQ] and, with TMA, qfull. Every tile starts 1024-aligned (the
 * 128-byte swizzle's atom, and TMA's destination alignment for it). */
template <int D, int BN, int NQ, int NS, bool TMA>
struct KbmWsLayout {
    static constexpr int Q_BYTES = 64 * D * 2, KV_BYTES = BN * D * 2;
    static constexpr int k = NQ * 2 * Q_BYTES, v = k + NS * KV_BYTES, bars = v + NS * KV_BYTES;
    static constexpr int nbars = 2 * NS + NQ + (TMA ? 1 : 0);
    static constexpr size_t bytes = 1024 + (size_t)bars + 8 * nbars;
    static_assert(Q_BYTES % 1024 == 0 && KV_BYTES % 1024 == 0 && k % 1024 == 0, "1024-byte aligned tiles");
    static_assert(bytes <= KBM_SMEM_MAX, "shared memory");
};
/* TMA variant (one Q buffer): as many stages of BN keys as fit beside the layout's other pieces, at most 6
 * (64-key stages: the same ring as the cp.async kernel's; 128-key stages: 3 at D = 128, where a consumer
 * step holds two of them and leaves one of look-ahead, as in v12 (docs/cuda.md); 6 at D = 64). A stage is
 * its K and V tiles and its two mbarriers. */
template <int D, int BN> constexpr int kbm_tma_stages() {
    using L0 = KbmWsLayout<D, BN, 1, 0, true>;
    constexpr size_t fit = (KBM_SMEM_MAX - L0::bytes) / (2 * L0::KV_BYTES + 2 * sizeof(uint64_t));
    return fit < 6 ? (int)fit : 6;
}

/* The TMA producer's copy of a tile's Q (128 rows, n valid; rows >= n -> 0, any: an address for them) into
 * the two swizzled 64-row buffers at sq, by its 128 threads: load_sw128(_gather)'s layout and per-thread
 * piece, but the rows walked in a loop of 4 (row r: row(r), the address of its first element), so that it
 * fits the producer's few registers (unrolled, the row offsets are kept across the tile loop and spill). */
template <int D, typename T, class Row>
__device__ __forceinline__ void kbm_load_q_lean(char *sq, int n, int tid, const T *any, Row &&row) {
    constexpr int chunks = D / 8, step = 128 / chunks, Q_BYTES = 64 * D * 2;
    static_assert(step % 8 == 0 && 64 % step == 0, "tile shape");
    const int col8 = tid % chunks, r0 = tid / chunks;
    char *dst = sq + (col8 / 8) * (64 * 128) + (((col8 % 8) ^ (r0 & 7)) << 4);
#pragma unroll 4
    for (int r = r0; r < 128; r += step) {
        const bool ok = r < n;
        moba_cp_async16(dst + (r / 64) * Q_BYTES + (r % 64) * 128, ok ? row(r) + col8 * 8 : any, ok);
    }
}

/* The kernel body; TMA (only with QR, NQ = 1, no PP): K/V by TMA, see the producer below. tmk / tmv: the
 * tensor maps of K and V (TMA only), [total rows][Hkv * D] boxes of {64 columns, BN rows}, 128-byte swizzle. */
template <typename T, int D, int BN, bool PP, bool QR, int NQ, bool TMA, bool UN = false>
__device__ __forceinline__ void kbm_attend_ws(const KbmArgs &a, const CUtensorMap *tmk, const CUtensorMap *tmv) {
#ifdef MOBA_WGMMA
    /* LAG: the producer signals an item once the copies of the next one are issued. Not 2: with a
     * one-chunk tile n+1, signalling tile n's last chunk would wait for the first chunk of tile n+2,
     * whose Q buffer frees only when tile n's last S is done - a hang (tests: the large-block cases
     * in multi-tile passes). With 1, that chunk is tile n+1's, whose Q buffer tile n-1 freed.
     * NQ = 1 (one Q buffer, Q in registers): tile n+1's Q may go in only once both consumers have read
     * tile n's, which they do at its first item; so before waiting for that the producer signals every
     * item it has issued (else tile n's first item could be the one still unsignalled: a hang). */
    static_assert(NQ == 2 || (NQ == 1 && QR), "one Q buffer needs Q in registers");
    static_assert(!TMA || (QR && NQ == 1 && !PP), "the TMA variant: Q in registers, one Q buffer, no ping-pong");
    static_assert(TMA || BN == SM90_BN, "128-key stages only with TMA");
    static_assert(!UN || (!TMA && QR && NQ == 1 && !PP), "union tiles: the default cp.async configuration");
    constexpr int ROWS = 64, NS = TMA ? kbm_tma_stages<D, BN>() : KBM_WS_STAGES(NQ), LAG = 1;
    using L = KbmWsLayout<D, BN, NQ, NS, TMA>;
    constexpr int Q_BYTES = L::Q_BYTES, KV_BYTES = L::KV_BYTES;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    char *smem = moba_smem_align1024(smem_raw);
    char *sQ = smem, *sK = smem + L::k, *sV = smem + L::v;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + L::bars), *empty = full + NS, *qempty = empty + NS,
             *qfull = qempty + NQ;
    const int ntiles = UN ? *a.nuq : *a.ntiles;
    const int mine = ntiles > (int)blockIdx.x ? (ntiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x : 0;
    if (mine == 0) return;
    /* the warpgroup index through a shuffle: the compiler then knows it is warp-uniform and keeps what is
     * derived from it (stage indices, descriptors) in uniform registers */
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid / 128, 0);
    if (tid == 0) {
        for (int i = 0; i < NS; i++) {
            mbar_init(&full[i], TMA ? 1 : 128);
            mbar_init(&empty[i], 256);
        }
        for (int i = 0; i < NQ; i++) mbar_init(&qempty[i], 256);
        if (TMA) mbar_init(qfull, 128);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    /* UN: a union tile as an own-block tile {-1 - q head, own block's first key row, first row, rows};
     * union_of(n): its list in ublk */
    auto union_of = [&](int n) { return a.ublk + a.qlist[blockIdx.x + n * gridDim.x] * a.ustride; };
    auto tile_of = [&](int n) {
        if (!UN) return a.tiles[blockIdx.x + n * gridDim.x];
        const int64_t u = a.qlist[blockIdx.x + n * gridDim.x];
        const moba_tile f = a.ftiles[u % a.nf];
        const int64_t key0 = a.cu_seqlens[f.seq] + (int64_t)f.block * a.B;
        return make_int4(-1 - (int)(u / a.nf), (int)key0, (int)f.row_begin, (int)(f.row_end - f.row_begin));
    };
    /* chunks of a tile: the whole block, or (nu union blocks first) the own block's keys up to the tile's
     * last row */
    auto chunks_of = [&](const int4 &t, int nu) {
        return t.x >= 0 ? a.B / BN : nu * (a.B / BN) + (t.z + t.w - t.y + BN - 1) / BN;
    };
    /* a position in the ring: stage and the parity of its current use (no divisions in the loops) */
    struct Ring {
        int st, ph;
        __device__ __forceinline__ void next() {
            if (++st == NS) st = 0, ph ^= 1;
        }
    };

    if (wg == 0 && TMA) {
        /* TMA producer. All 128 threads copy each tile's Q with cp.async (gathered rows) and arrive on
         * qfull when their copies land (cp.async.mbarrier.arrive.noinc: nobody waits here); thread 0
         * alone then loads the tile's K/V chunks by TMA, each chunk one arrive.expect_tx on its stage's
         * full barrier (count 1) plus 2 * D / 64 boxes that complete it as their bytes land.
         * Why this cannot hang: a K/V stage completes by itself once issued (no signalling by the
         * producer, so no LAG question), and thread 0 issues in order: its part of Q(n), then every
         * chunk of tile n, and only then waits for qempty of tile n before Q(n + 1). The consumers
         * need, per item, its full and, at a tile's first item, the tile's qfull; by induction over
         * the items, each wait of the producer is on things that need only what is already issued:
         * (a) empty of item s - NS (before item s): both consumers release it after their item
         *     s - NS + 1 (or at the end of its tile), whose full thread 0 has issued, as it has its
         *     part of that tile's Q; the other threads issued theirs after qempty of the tile before,
         *     which is (b) one tile earlier;
         * (b) qempty of tile n (all threads, before Q(n + 1)): both consumers arrive at tile n's
         *     first item once its full (issued) and qfull (Q(n): issued by every thread, thread 0
         *     before tile n's chunks) complete. Tile 0's Q waits for nothing.
         * Own-block tiles: rows past the tile's last key are real tokens here (past `total` TMA writes
         * zeros), unlike the cp.async path's zeros; the consumers mask those keys by select (S = -inf,
         * P = 0), so they change nothing as long as K / V are finite, like the tokens inside the tile
         * that the causal mask drops on either path. The transaction count is always the whole box. */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(KBM_TMA_PRODUCER_REGS));
        const T *qg = reinterpret_cast<const T *>(a.q);
        Ring put = {0, 0};
        int s = 0;
        /* mine read again (> 0): kept in a register across the setmaxnreg split, it spilled at D = 64 */
        const int mine_p = (*a.ntiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
        for (int n = 0; n < mine_p; n++) {
            if (n >= 1) mbar_wait(qempty, (n - 1) & 1); /* both consumers have tile n - 1's Q in registers */
            const int4 tile = tile_of(n);
            const int h = -1 - tile.x;
            if (tile.x >= 0) {
                const int2 *pl = a.plist + tile.z;
                kbm_load_q_lean<D>(sQ, tile.w, tid, qg, [&](int r) { return qg + (int64_t)__ldg(&pl[r].x) * D; });
            } else {
                const T *q0 = qg + ((int64_t)tile.z * a.Hq + h) * D;
                kbm_load_q_lean<D>(sQ, tile.w, tid, qg, [&](int r) { return q0 + (int64_t)r * a.Hq * D; });
            }
            mbar_arrive_cp_async(qfull);
            if (tid != 0) continue;
            const int nch = chunks_of(tile, 0), x0 = (tile.x >= 0 ? tile.x : h / a.group) * D;
            for (int ci = 0; ci < nch; ci++, s++, put.next()) {
                if (s >= NS) mbar_wait(&empty[put.st], put.ph ^ 1);
                const int key = tile.y + ci * BN;
                mbar_arrive_expect_tx(&full[put.st], 2 * KV_BYTES);
#pragma unroll
                for (int p = 0; p < D / 64; p++) { /* 64-column panels, BN * 128 bytes apart */
                    tma_load_2d(sK + put.st * KV_BYTES + p * (BN * 128), tmk, x0 + p * 64, key, &full[put.st]);
                    tma_load_2d(sV + put.st * KV_BYTES + p * (BN * 128), tmv, x0 + p * 64, key, &full[put.st]);
                }
            }
        }
        moba_cp_async_wait<0>(); /* no copies of this thread outstanding at its exit (the last Q's) */
        return;
    }
    if (wg == 0 && !TMA) { /* producer */
        if (QR) asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(KBM_WS_PRODUCER_REGS));
        const int ptid = tid;
        const T *qg = reinterpret_cast<const T *>(a.q), *kg = reinterpret_cast<const T *>(a.k),
                *vg = reinterpret_cast<const T *>(a.v);
        const int64_t kv_stride = (int64_t)a.Hkv * D;
        Ring put = {0, 0}, done = {0, 0}; /* the stage being filled; the next one to signal */
        int s = 0, sig = 0;               /* items issued, items signalled */
        auto signal = [&]() { /* this thread's copies of the oldest unsignalled item have landed */
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            mbar_arrive(&full[done.st]);
            done.next();
            sig++;
        };
        for (int n = 0; n < mine; n++) {
            if (NQ == 1 && n >= 1) { /* signal everything: tile n - 1's first item among it */
                moba_cp_async_wait<0>();
                while (sig < s) signal();
            }
            /* Q buffer n % NQ free: both consumers have read tile n - NQ's Q */
            if (n >= NQ) mbar_wait(&qempty[n % NQ], (n / NQ - 1) & 1);
            const int4 tile = tile_of(n);
            const int32_t *ub = UN ? union_of(n) : NULL;
            const int nu = UN ? ub[0] : 0, cpb = a.B / BN, hch = nu * cpb;
            const int nch = chunks_of(tile, nu), h = -1 - tile.x, hk = tile.x >= 0 ? tile.x : h / a.group;
            for (int ci = 0; ci < nch; ci++, s++, put.next()) {
                if (s >= NS) mbar_wait(&empty[put.st], put.ph ^ 1);
                if (ci == 0) {
                    for (int w = 0; w < 2; w++) {
                        char *dst = sQ + (n % NQ * 2 + w) * Q_BYTES;
                        if (tile.x >= 0)
                            load_sw128_gather<D, ROWS, T, 128>(dst, qg, a.plist + tile.z + w * ROWS, tile.w - w * ROWS, ptid);
                        else
                            load_sw128<D, ROWS, T, 128>(dst, qg + ((int64_t)(tile.z + w * ROWS) * a.Hq + h) * D,
                                                        (int64_t)a.Hq * D, tile.w - w * ROWS, ptid);
                    }
                }
                /* UN: chunk ci < hch is chunk ci % cpb of union block ub[2 + ci / cpb] (whole: it is history) */
                const int key = UN && ci < hch ? tile.y + (ub[2 + ci / cpb] - ub[1]) * a.B + ci % cpb * BN
                                               : tile.y + (ci - hch) * BN;
                const int valid = tile.x >= 0 || ci < hch ? BN : min(BN, tile.z + tile.w - key);
                const int64_t off = ((int64_t)key * a.Hkv + hk) * D;
                load_sw128<D, BN, T, 128>(sK + put.st * KV_BYTES, kg + off, kv_stride, valid, ptid);
                load_sw128<D, BN, T, 128>(sV + put.st * KV_BYTES, vg + off, kv_stride, valid, ptid);
                moba_cp_async_commit();
                if (s - LAG >= sig) { /* item s - LAG, unless already signalled */
                    moba_cp_async_wait<LAG>();
                    signal();
                }
            }
        }
        moba_cp_async_wait<0>();
        while (sig < s) signal();
        return;
    }

    /* consumers: warpgroup cw takes rows cw*64 .. of each tile. With PP the two take turns to issue
     * their products (FA3's ping-pong): named barrier 1 + cw is "cw's turn"; a warpgroup syncs on its
     * own, issues, and arrives on the other's, so one's softmax runs while the other's GEMMs do. Each
     * takes exactly chunks + 1 turns per tile (empty ones where it skips), so the two stay paired. */
    const int cw = wg - 1, ltid = tid % 128, warp = ltid / 32, lane = ltid % 32, g = lane / 4, c = lane % 4;
    const int row0 = cw * 64 + warp * 16 + g;
    auto turn_begin = [&]() {
        if (PP) asm volatile("bar.sync %0, 256;\n" ::"r"(1 + cw) : "memory");
    };
    auto turn_end = [&]() {
        if (PP) asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - cw) : "memory");
    };
    if (PP && cw == 1) asm volatile("bar.arrive 1, 256;\n" ::: "memory"); /* warpgroup 0 goes first */
    if (QR)
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(TMA ? KBM_TMA_CONSUMER_REGS : KBM_WS_CONSUMER_REGS));
    uint32_t qa[D / 16][4]; /* QR: this warpgroup's Q rows as A fragments, loaded at a tile's first item */
    /* descriptors of stage 0's K and V and of this warpgroup's two Q buffers; stage st is st * KV_BYTES on */
    const uint64_t k_desc0 = sw128_desc(sK, 16, 1024), v_desc0 = sw128_desc(sV, BN * 128, 1024);
    const uint64_t q_desc0 = sw128_desc(sQ + cw * Q_BYTES, 16, 1024);
    constexpr uint32_t KV16 = KV_BYTES >> 4, Q16 = 2 * Q_BYTES >> 4;
    float m[2], l[2], alpha[2], acc[D / 8][4];
    uint32_t pa[BN / 16][4];
    auto issue_s = [&](uint64_t q_desc, uint64_t k_desc, float(&sc)[BN / 8][4]) {
        if (QR) sm90_issue_s_rs<T, D, BN>(qa, k_desc, sc);
        else sm90_issue_s_desc<T, D, BN, ROWS>(q_desc, k_desc, sc);
    };
    Ring r = {0, 0};
    /* What a tile's epilogue needs from global memory - its rows' partial slots - and the next tile's
     * descriptor are loaded when the tile starts, so their latency passes under the tile's chunks (the
     * 32K profile of docs/cuda.md: ~6% of the stall samples waited on them at the tile's edges). */
    int4 tile = mine > 0 ? tile_of(0) : make_int4(0, 0, 0, 0);
    for (int n = 0; n < mine; n++) {
        const int4 next = n + 1 < mine ? tile_of(n + 1) : tile;
        int slot0 = 0, slot1 = 0;
        if (tile.x >= 0) partial_slots(a.plist + tile.z, row0, tile.w, slot0, slot1);
        const bool own = tile.x < 0;
        /* UN: nu union blocks (hch chunks) before the own block. Lane state for its two rows r: the next
         * entry of the row's selection (snxt, at spos) and whether it took the current union block (tk);
         * bnext is the next union block. The loads for a block are issued at the block before it. */
        const int32_t *ub = UN ? union_of(n) : NULL;
        const int nu = UN ? ub[0] : 0, cpb = a.B / BN, hch = nu * cpb;
        const int32_t *tsel[2] = {NULL, NULL};
        int spos[2] = {0, 0}, snxt[2] = {INT_MAX, INT_MAX}, bnext = -1;
        bool tk[2] = {false, false};
        if (UN) {
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                tsel[rr] = a.sel + ((int64_t)(-1 - tile.x) * a.total + tile.z + row0 + 8 * rr) * a.stride;
                snxt[rr] = row0 + 8 * rr < tile.w ? __ldg(tsel[rr]) : INT_MAX;
            }
            bnext = nu > 0 ? ub[2] : -1;
        }
        const int nch = chunks_of(tile, nu);
        /* own-block tile: this lane's rows sit at block positions qpos, qpos + 8; the warpgroup's first
         * row at wpos; chunks past its last row are skipped, those reaching past its first are masked.
         * A warpgroup with no rows in the tile (64 or fewer) skips every chunk. */
        const int wpos = tile.z - tile.y + cw * ROWS, qpos = tile.z - tile.y + row0;
        const int last = cw * ROWS >= tile.w ? -1 : !own ? nch - 1 : min(nch - 1, hch + (wpos + ROWS - 1) / BN);
        /* item k's row masks (take), causal mask (diag) and first key column in its block (kcol) */
        auto item = [&](int k, bool &t0, bool &t1, bool &dg, int &kcol) {
            if (UN && k < hch) {
                if (k % cpb == 0) { /* a new union block: who takes it, and the loads for the next one */
                    const int b = bnext, bi = k / cpb;
#pragma unroll
                    for (int rr = 0; rr < 2; rr++) {
                        tk[rr] = snxt[rr] == b;
                        if (tk[rr]) snxt[rr] = __ldg(tsel[rr] + ++spos[rr]);
                    }
                    bnext = bi + 1 < nu ? ub[3 + bi] : -1;
                }
                t0 = tk[0], t1 = tk[1], dg = false, kcol = 0;
            } else {
                kcol = (k - hch) * BN;
                t0 = t1 = true, dg = own && kcol + BN - 1 > wpos;
            }
        };
        const uint64_t q_desc = desc_add(q_desc0, (n % NQ) * Q16);
        attn_state_init(m, l, acc);
        if (last >= 0) {
            mbar_wait(&full[r.st], r.ph);
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            if (QR) {
                /* TMA: the full barrier says nothing about Q, which has its own. Every consumer waits for
                 * each tile's qfull (also one that skips the tile, below), so the parity n & 1 names the
                 * phase: the consumer has seen tile n - 1's, and tile n + 1's Q cannot start before its
                 * arrival on qempty for tile n */
                if (TMA) mbar_wait(qfull, n & 1);
                load_q_frags<D>(qa, sQ + (n % NQ * 2 + cw) * Q_BYTES, warp, lane);
                mbar_arrive(&qempty[n % NQ]); /* Q is in registers: its buffer may take tile n + NQ's */
            }
            {
                float sc[BN / 8][4];
                turn_begin();
                issue_s(q_desc, desc_add(k_desc0, r.st * KV16), sc);
                turn_end();
                wg_wait<0>();
                fence_regs<BN / 2>(&sc[0][0]);
                bool t0, t1, dg;
                int kcol;
                item(0, t0, t1, dg, kcol);
                softmax_update(sc, m, l, alpha, t0, t1, dg, kcol + 2 * c, qpos, a.scale_log2);
                pack_p<T>(sc, pa);
            }
            int prev = r.st; /* the stage whose P V is still to be issued */
            r.next();
            for (int k = 1; k <= last; k++) {
                mbar_wait(&full[r.st], r.ph);
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                float sc[BN / 8][4];
                rescale_acc(acc, alpha);
                turn_begin();
                issue_s(q_desc, desc_add(k_desc0, r.st * KV16), sc);
                sm90_issue_pv_desc<T, D, BN>(desc_add(v_desc0, prev * KV16), acc, pa); /* runs under the softmax */
                turn_end();
                wg_wait<1>();
                fence_regs<BN / 2>(&sc[0][0]);
                bool t0, t1, dg;
                int kcol;
                item(k, t0, t1, dg, kcol);
                softmax_update(sc, m, l, alpha, t0, t1, dg, kcol + 2 * c, qpos, a.scale_log2);
                wg_wait<0>();
                fence_regs<D / 2>(&acc[0][0]);
                pack_p<T>(sc, pa);
                mbar_arrive(&empty[prev]); /* S and P V of that stage done */
                prev = r.st;
                r.next();
            }
            if (!QR) mbar_arrive(&qempty[n % NQ]); /* every S of the tile is done */
            rescale_acc(acc, alpha);
            turn_begin();
            sm90_issue_pv_desc<T, D, BN>(desc_add(v_desc0, prev * KV16), acc, pa);
            turn_end();
            wg_wait<0>();
            fence_regs<D / 2>(&acc[0][0]);
            mbar_arrive(&empty[prev]);
        } else {
            turn_begin(); /* the turn of the last P V */
            turn_end();
        }
        /* stages this warpgroup does not need: wait until they are full (so that an arrival cannot count
         * towards the stage's next use), then release them. A warpgroup with no rows in the tile gives
         * its Q buffer back once the tile's first item is full, not before: an earlier arrival could
         * complete the barrier's phase of the previous tile, before the other warpgroup read that Q */
        for (int k = last + 1; k < nch; k++, r.next()) {
            mbar_wait(&full[r.st], r.ph);
            if (k == 0) {
                if (TMA) mbar_wait(qfull, n & 1); /* the Q of this tile, landed: the arrival is this tile's */
                mbar_arrive(&qempty[n % NQ]);
            }
            turn_begin();
            turn_end();
            mbar_arrive(&empty[r.st]);
        }
        if (own) {
            const int h = -1 - tile.x;
            const bool v0 = row0 < tile.w, v1 = row0 + 8 < tile.w;
            const int64_t t0 = (int64_t)tile.z + row0;
            T *o = reinterpret_cast<T *>(a.o);
            T *const orow[2] = {v0 ? o + (t0 * a.Hq + h) * D : NULL, v1 ? o + ((t0 + 8) * a.Hq + h) * D : NULL};
            float *const lse_at[2] = {v0 ? a.lse + (int64_t)h * a.total + t0 : NULL,
                                      v1 ? a.lse + (int64_t)h * a.total + t0 + 8 : NULL};
            store_rows_to<T, D / 8>(orow, lse_at, acc, m, l, c, a.scale_log2);
        } else {
            store_partials_at<T, D>(a, row0, tile.w, slot0, slot1, acc, m, l, c);
        }
        tile = next;
    }
    if (PP && cw == 0) asm volatile("bar.sync 1, 256;\n" ::: "memory"); /* warpgroup 1's last arrival */
#else
    __trap(); /* built for another target: the host never launches it there */
#endif
}

template <typename T, int D, bool PP, bool QR, int NQ>
__global__ void __launch_bounds__(KBM_WS_THREADS, 1) kbm_attend_ws_kernel(KbmArgs a) {
    kbm_attend_ws<T, D, SM90_BN, PP, QR, NQ, false>(a, NULL, NULL);
}
/* Union tiles (forward.h: kbm_ulist): the units that were not handed off, in the default configuration. */
template <typename T, int D>
__global__ void __launch_bounds__(KBM_WS_THREADS, 1) kbm_union_ws_kernel(KbmArgs a) {
    kbm_attend_ws<T, D, SM90_BN, false, true, 1, false, true>(a, NULL, NULL);
}
/* The TMA variant (128-key stages: the default where it applies; 64-key stages: MOBA_CUDA_KBM_TMA=1): Q in
 * registers, one Q buffer, no ping-pong. The tensor maps are kernel parameters (__grid_constant__: TMA reads them in place). */
template <typename T, int D, int BN>
__global__ void __launch_bounds__(KBM_WS_THREADS, 1)
kbm_attend_ws_tma_kernel(KbmArgs a, const __grid_constant__ CUtensorMap tmk, const __grid_constant__ CUtensorMap tmv) {
    kbm_attend_ws<T, D, BN, false, true, 1, true>(a, &tmk, &tmv);
}

/* One warp per (unit, row) of a handed-off tile: the own-block result and the row's partials merged
 * by their LSEs, in fp32, back into o and lse. Memory-bound (the partials are read once): each lane
 * loads 16 bytes, D / 8 lanes cover one partial, so a warp reads 32 / (D / 8) partials per load and
 * keeps several loads in flight; the lane groups' sums are added by shuffles at the end. */
template <typename T, int D>
__device__ __forceinline__ void kbm_merge_row(const KbmArgs &a, int64_t x, int i) {
    constexpr int V = 16 / sizeof(T), LP = D / V, PW = 32 / LP; /* elements per load; lanes per row; rows per load */
    static_assert(PW >= 1 && 32 % LP == 0, "head dim");
    const int64_t u = a.ulist[x];
    const int h = (int)(u / a.nf);
    const moba_tile tile = a.ftiles[u % a.nf];
    const int lane = threadIdx.x % 32, grp = lane / LP, col = lane % LP * V;
    const int nh = min(tile.block, a.k1);
    if (i >= (int)(tile.row_end - tile.row_begin) || nh == 0) return;
    const int64_t t = tile.row_begin + i;
    const int64_t p0 = a.cbase[x] - a.s0 + (int64_t)i * nh;
    float *lse_at = a.lse + (int64_t)h * a.total + t;
    T *orow = reinterpret_cast<T *>(a.o) + (t * a.Hq + h) * D + col;
    const T *part = reinterpret_cast<const T *>(a.part_o) + p0 * D + col;
    /* The first values this lane adds (the own block's in group 0, partial grp) do not depend on M: their
     * loads go out with the LSEs', so a row with at most PW partials (32K: 2) waits for one round of loads
     * after its tile's entry, not two (measured: the merge kernel 6% faster at 32K, docs/cuda.md v21). */
    uint4 first_own = make_uint4(0, 0, 0, 0), first_part = make_uint4(0, 0, 0, 0);
    if (grp == 0) first_own = *reinterpret_cast<const uint4 *>(orow);
    if (grp < nh) first_part = *reinterpret_cast<const uint4 *>(part + (int64_t)grp * D);
    /* M = max(own, the partials' LSEs): each lane reads every 32nd of them (one coalesced load for up to
     * 32 partials), then a warp max - the same M as a sequential max (fmaxf drops NaN either way) */
    const float own = *lse_at;
    float M = own;
    for (int s = lane; s < nh; s += 32) M = fmaxf(M, a.part_lse[p0 + s]);
#pragma unroll
    for (int o = 1; o < 32; o *= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float W = 0.0f, acc[V];
#pragma unroll
    for (int e = 0; e < V; e++) acc[e] = 0.0f;
    auto add = [&](float w, const uint4 &x) {
        const T *xs = reinterpret_cast<const T *>(&x);
        W += w;
#pragma unroll
        for (int e = 0; e < V; e++) acc[e] += w * moba_pack<T>::to_f32(xs[e]);
    };
    /* each lane group adds its own values in the order it always has: own (group 0), then s = grp,
     * grp + PW, ... (the output is bitwise the same as with the loads in that order) */
    if (grp == 0) add(expf(own - M), first_own);
    if (grp < nh) add(expf(a.part_lse[p0 + grp] - M), first_part);
#pragma unroll 2
    for (int s = grp + PW; s < nh; s += PW)
        add(expf(a.part_lse[p0 + s] - M), *reinterpret_cast<const uint4 *>(part + (int64_t)s * D));
#pragma unroll
    for (int o = LP; o < 32; o *= 2) {
        W += __shfl_xor_sync(0xffffffffu, W, o);
#pragma unroll
        for (int e = 0; e < V; e++) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
    }
    if (grp == 0) {
        uint4 y;
        uint32_t *ys = reinterpret_cast<uint32_t *>(&y);
#pragma unroll
        for (int e = 0; e < V / 2; e++) ys[e] = moba_pack<T>::two(acc[2 * e] / W, acc[2 * e + 1] / W);
        *reinterpret_cast<uint4 *>(orow) = y;
    }
    __syncwarp();
    if (lane == 0) *lse_at = M + logf(W);
}

/* The pass's entries, grid-stride (the host does not know how many a pass has): CTA (x, y) takes entries
 * x, x + gridDim.x, ... and in each the rows y * 4 + warp, + 4 * gridDim.y, ... A grid of one CTA per
 * possible entry and row group made every empty pass launch that many CTAs (~0.7 ns each); one CTA
 * per item of the pass's entries, looked up through ulist, added a dependent load to every row. */
#define KBM_MERGE_ROW_GROUPS 8
template <typename T, int D>
__global__ void __launch_bounds__(128) kbm_merge_kernel(KbmArgs a) {
    const int64_t xe = a.pstart[a.pass + 1];
    for (int64_t x = a.pstart[a.pass] + blockIdx.x; x < xe; x += gridDim.x)
#pragma unroll 1
        for (int i = blockIdx.y * 4 + threadIdx.x / 32; i < MOBA_FWD_TILE_ROWS; i += KBM_MERGE_ROW_GROUPS * 4)
            kbm_merge_row<T, D>(a, x, i);
}

/* ---- host ---- */

int moba_cuda_kbm_enabled(const moba_call *c) {
    const moba_params *p = c->p;
    if (c->full_attention || p->top_k <= 1 || p->block_size % SM90_BN != 0) return 0;
    if (c->L.total_tokens * p->num_q_heads >= INT_MAX) return 0; /* pair rows are int32 */
    if ((int64_t)MOBA_FWD_TILE_ROWS * 4 * (c->slots - 1) > INT_MAX / 2) return 0; /* so are partial slots */
    const char *e = getenv("MOBA_CUDA_KBM");
    return !(e && *e == '0');
}

/* A tile goes key-block-major when its union has more than ratio * (top_k - 1) history blocks. The
 * ratio is what a pair costs key-block-major against a (row, block) of the query-tile-major kernel,
 * measured on an H200 (docs/cuda.md): about 2 at B = 128 (short tiles, partials), 1.2 at B = 512,
 * below 1 at B = 4096 (full unmasked tiles beat the masked union walk even without waste): so
 * B >= 2048 always, 256..1024 above 1.25, smaller above 4 (2 until the H100 runs of 2026-12-07: at
 * 64K B = 128, local inputs 4.68 -> 3.76 ms, random 6.34 -> 5.95; v19 in docs/cuda.md).
 * MOBA_CUDA_KBM=1: every tile (tests); MOBA_CUDA_KBM_RATIO: another ratio. */
static int kbm_min_union(const moba_call *c) {
    const char *e = getenv("MOBA_CUDA_KBM");
    if (e && *e == '1') return -1;
    const int B = c->p->block_size;
    const char *r = getenv("MOBA_CUDA_KBM_RATIO");
    double ratio = r && *r ? atof(r) : (B >= 2048 ? -1.0 : B >= 256 ? 1.25 : 4.0);
    if (ratio < 0) return -1;
    double u = ratio * (c->slots - 1);
    return u >= INT_MAX ? INT_MAX : (int)u;
}

/* The key-block-major switches of one forward call (a.kbm_flags set by the caller):
 * - kbm_min_union (above);
 * - kbm_ws_ctas: the warp-specialised attend kernel, one persistent CTA per SM, for block sizes >= 128
 *   (7-8% faster at B = 4096; at B = 512 and 128 the same as the plain kernel on random inputs and 5-8%
 *   faster on local ones since shared memory is reached as such, v18 in docs/cuda.md); MOBA_CUDA_KBM_WS=1 / 0
 *   forces it on / off (tests run both); 0: the plain kernel;
 * - kbm_own: with it, a handed-off tile's own block is an item of that kernel too, not the query-tile-major
 *   kernel's (MOBA_CUDA_KBM_OWN=0: the query-tile-major kernel's, as before, for measurements);
 * - kbm_pre: with kbm_own, the hand-off is decided by a small kernel of its own before the query-tile-major
 *   kernel, whose CTAs of handed-off tiles then end at once (MOBA_CUDA_KBM_DECIDE=0: decided in it). */
void moba_cuda_kbm_setup(const moba_call *c, FwdArgs *a) {
    a->kbm_min_union = kbm_min_union(c);
    const char *e = getenv("MOBA_CUDA_KBM_WS");
    const int use_ws = e && *e ? *e == '1' : c->p->block_size >= 128;
    int dev = 0, sms = 0;
    a->kbm_ws_ctas = 0;
    if (use_ws && cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
        a->kbm_ws_ctas = sms;
    cudaGetLastError();
    e = getenv("MOBA_CUDA_KBM_OWN");
    a->kbm_own = a->kbm_ws_ctas > 0 && !(e && *e == '0');
    e = getenv("MOBA_CUDA_KBM_DECIDE");
    a->kbm_pre = a->kbm_own && !(e && *e == '0');
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

size_t moba_cuda_kbm_plan(const moba_call *c, moba_cuda_plan *plan, size_t off) {
    const moba_params *p = c->p;
    const moba_layout *L = &c->L;
    const int64_t es = (int64_t)moba_dtype_size(p->dtype), D = p->head_dim, k1 = c->slots - 1;
    int64_t ptot = 0; /* history pairs of one head: each row of block j has min(j, k1) */
    for (int s = 0; s < L->num_seqs; s++) {
        const int len = moba_seq_len(L, s);
        for (int j = 0; j * L->block_size < len; j++) {
            const int64_t rows = len - (int64_t)j * L->block_size < L->block_size ? len - (int64_t)j * L->block_size
                                                                                  : L->block_size;
            ptot += rows * (j < k1 ? j : k1);
        }
    }
    plan->kptot = ptot;
    const int64_t all = ptot * p->num_q_heads, per_pair = D * es + (int64_t)sizeof(float) + (int64_t)sizeof(int2);
    /* partials: 10% of what dense attention's q, k, v, o, lse take, or at least KBM_MIN_BUDGET */
    const int64_t dense = L->total_tokens * (2 * p->num_q_heads + 2 * p->num_kv_heads) * D * es +
                          L->total_tokens * p->num_q_heads * (int64_t)sizeof(float);
    int64_t cap = (dense / 10 > KBM_MIN_BUDGET ? dense / 10 : KBM_MIN_BUDGET) / per_pair;
    const char *e = getenv("MOBA_CUDA_KBM_PAIRS"); /* tests: force many passes */
    if (e && atoll(e) > 0) cap = atoll(e);
    /* moba_cuda_kbm_enabled: 2 * unit_max <= INT_MAX / 2 */
    const kbm_passes passes = kbm_passes_plan(cap, all, (int64_t)MOBA_FWD_TILE_ROWS * k1);
    cap = passes.cap;
    plan->kcap = cap;
    plan->kstep = passes.step;
    plan->knpasses = passes.npasses;
    plan->kng = (int64_t)p->num_kv_heads * L->total_full_blocks;
    /* history tiles, plus one own-block tile per unit (warp-specialised kernel) */
    plan->ktile_cap = cap / KBM_ROWS + (plan->kng < cap ? plan->kng : cap) + 1 + p->num_q_heads * plan->num_ftiles;

    plan->kflags = off;
    off = align256(off + sizeof(int32_t) * (size_t)(p->num_q_heads * plan->num_ftiles));
    plan->kulist = off;
    off = align256(off + sizeof(int64_t) * (size_t)(p->num_q_heads * plan->num_ftiles));
    plan->kcbase = off;
    off = align256(off + sizeof(int64_t) * (size_t)(p->num_q_heads * plan->num_ftiles));
    plan->kpstart = off;
    off = align256(off + sizeof(int64_t) * (size_t)(plan->knpasses + 1));
    plan->klse = off;
    off = align256(off + sizeof(float) * (size_t)(p->num_q_heads * L->total_tokens));
    plan->kcnt = off;
    off = align256(off + sizeof(int32_t) * (size_t)plan->kng);
    plan->koff = off;
    off = align256(off + sizeof(int32_t) * (size_t)plan->kng);
    plan->kntiles = off;
    off = align256(off + sizeof(int32_t));
    plan->ktiles = off;
    off = align256(off + sizeof(int4) * (size_t)plan->ktile_cap);
    plan->kplist = off;
    off = align256(off + sizeof(int2) * (size_t)cap);
    plan->kpart_lse = off;
    off = align256(off + sizeof(float) * (size_t)cap);
    plan->kpart_o = off;
    off = align256(off + (size_t)(es * D) * (size_t)cap);
    /* union tiles (forward.h: kbm_ulist; v24's default, MOBA_CUDA_KBM_UNION=0 leaves the tiles to the
     * query-tile-major kernel as before - docs/cuda.md): where a tile may stay (0 <= kbm_min_union <=
     * KBM_UNION_MAX) */
    const int mu = kbm_min_union(c);
    const char *ue = getenv("MOBA_CUDA_KBM_UNION");
    plan->kunion = !(ue && *ue == '0') && mu >= 0 && mu <= KBM_UNION_MAX ? mu + 2 : 0;
    if (plan->kunion) {
        const size_t units = (size_t)(p->num_q_heads * plan->num_ftiles);
        plan->kublk = off;
        off = align256(off + sizeof(int32_t) * units * (size_t)plan->kunion);
        plan->kqlist = off;
        off = align256(off + sizeof(int64_t) * units);
        plan->knuq = off;
        off = align256(off + sizeof(int32_t));
    }
    return off;
}

/* The TMA variant's tensor maps (MOBA_CUDA_KBM_TMA): mode 0 = off, 1 = 64-key stages, 2 = 128-key stages. */
struct KbmTma {
    CUtensorMap k, v;
    int mode;
};

/* cuTensorMapEncodeTiled from the driver, through the runtime (the library does not link libcuda); NULL when
 * the driver has none. Looked up once. */
static PFN_cuTensorMapEncodeTiled_v12000 kbm_encode_tiled() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = []() -> PFN_cuTensorMapEncodeTiled_v12000 {
        void *f = NULL;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
        const cudaError_t e =
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
        const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
        if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            return NULL;
        }
        return (PFN_cuTensorMapEncodeTiled_v12000)f;
    }();
    return fn;
}

/* K or V [total][Hkv][D] as a 2D tensor {Hkv * D columns, total rows} (row stride Hkv * D * 2 bytes, a
 * multiple of 16; the base is 16-byte aligned, checked by the API) in boxes of {64 columns, rows} written
 * with the 128-byte swizzle: one box is one 64-column panel of a swizzled shared tile. Rows past `total`
 * come in as zeros. False when the driver cannot encode it. */
static bool kbm_tensor_map(CUtensorMap *m, const void *base, int64_t total, int Hkv, int D, int rows, bool bf16) {
    const PFN_cuTensorMapEncodeTiled_v12000 encode = kbm_encode_tiled();
    if (!encode || total < 1 || ((uintptr_t)base & 15)) return false;
    const cuuint64_t dims[2] = {(cuuint64_t)Hkv * D, (cuuint64_t)total}, strides[1] = {(cuuint64_t)Hkv * D * 2};
    const cuuint32_t box[2] = {64, (cuuint32_t)rows}, estrides[2] = {1, 1};
    const CUtensorMapDataType type = bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    return encode(m, type, 2, const_cast<void *>(base), dims, strides, box, estrides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* A second stream for the passes (the default since v27; MOBA_CUDA_KBM_FORK=0: none): created per call
 * and destroyed at once after the join is enqueued (CUDA frees a stream's and an event's resources when
 * their work is done), so nothing outlives the call. open() forks: the side stream waits for what the
 * caller's stream has so far. */
struct KbmFork {
    cudaStream_t side = NULL;
    cudaEvent_t ev = NULL;
    bool open(cudaStream_t main) {
        cudaStreamCaptureStatus cap;
        if (cudaStreamIsCapturing(main, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) {
            (void)cudaGetLastError(); /* a graph being captured keeps one stream: no stream made or destroyed */
            return false;
        }
        if (cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess ||
            cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess ||
            cudaEventRecord(ev, main) != cudaSuccess || cudaStreamWaitEvent(side, ev, 0) != cudaSuccess) {
            close();
            (void)cudaGetLastError(); /* no stream: the passes go to the caller's, as without the switch */
            return false;
        }
        return true;
    }
    moba_status join(cudaStream_t main) {
        const bool ok = cudaEventRecord(ev, side) == cudaSuccess && cudaStreamWaitEvent(main, ev, 0) == cudaSuccess;
        close();
        return ok ? MOBA_OK : moba_fail(MOBA_ERR_CUDA, "kbm_run: joining the passes' stream failed");
    }
    void close() {
        if (ev) cudaEventDestroy(ev);
        if (side) cudaStreamDestroy(side);
        ev = NULL;
        side = NULL;
    }
    ~KbmFork() { close(); }
};

/* One pass (a.pass, a.s0 set). Its units are known on the device only; units: all of them, for the
 * grids, which are grid-stride and end at once past the pass's units. */
template <typename T, int D>
static moba_status kbm_pass(const moba_cuda_plan *plan, KbmArgs &a, const KbmTma &tma, int64_t units,
                            cudaStream_t stream) {
    const int64_t chunks = (units + KBM_UNITS_PER_CTA - 1) / KBM_UNITS_PER_CTA;
    const unsigned hist_ctas = (unsigned)(chunks < 1024 ? chunks : 1024);
    const size_t hist_bytes = a.tfb <= KBM_HIST_MAX ? sizeof(int) * (size_t)a.tfb : 0;
    kbm_count_kernel<<<hist_ctas, 256, hist_bytes, stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    kbm_scan_kernel<<<1, KBM_SCAN_THREADS, 0, stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    kbm_scatter_kernel<<<hist_ctas, 256, hist_bytes, stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    const int64_t bound = plan->ktile_cap; /* the tiles a pass can have */
    if (a.ws_ctas > 0 && !tma.mode) {
        const int nq = a.qregs && a.qbufs == 1 ? 1 : 2;
        const size_t smem = nq == 1 ? KbmWsLayout<D, SM90_BN, 1, KBM_WS_STAGES(1), false>::bytes
                                    : KbmWsLayout<D, SM90_BN, 2, KBM_WS_STAGES(2), false>::bytes;
        const int64_t ctas = bound < a.ws_ctas ? bound : a.ws_ctas;
        auto kernel = !a.qregs ? (a.pingpong ? kbm_attend_ws_kernel<T, D, true, false, 2> : kbm_attend_ws_kernel<T, D, false, false, 2>)
                      : nq == 2 ? (a.pingpong ? kbm_attend_ws_kernel<T, D, true, true, 2> : kbm_attend_ws_kernel<T, D, false, true, 2>)
                                : (a.pingpong ? kbm_attend_ws_kernel<T, D, true, true, 1> : kbm_attend_ws_kernel<T, D, false, true, 1>);
        MOBA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        kernel<<<(unsigned)ctas, KBM_WS_THREADS, smem, stream>>>(a);
    } else if (a.ws_ctas > 0) { /* the TMA variant */
        const int64_t ctas = bound < a.ws_ctas ? bound : a.ws_ctas;
        constexpr int BN2 = 2 * SM90_BN;
        auto kernel = tma.mode == 2 ? kbm_attend_ws_tma_kernel<T, D, BN2> : kbm_attend_ws_tma_kernel<T, D, SM90_BN>;
        const size_t smem = tma.mode == 2 ? KbmWsLayout<D, BN2, 1, kbm_tma_stages<D, BN2>(), true>::bytes
                                          : KbmWsLayout<D, SM90_BN, 1, kbm_tma_stages<D, SM90_BN>(), true>::bytes;
        MOBA_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        kernel<<<(unsigned)ctas, KBM_WS_THREADS, smem, stream>>>(a, tma.k, tma.v);
    } else {
        const size_t smem = 1024 + (size_t)(64 * SM90_WGS + 4 * SM90_BN) * D * 2;
        MOBA_CUDA_TRY(cudaFuncSetAttribute(kbm_attend_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)smem));
        kbm_attend_kernel<T, D><<<(unsigned)bound, SM90_THREADS, smem, stream>>>(a);
    }
    MOBA_CUDA_LAUNCHED();
    /* as many entries at once as a pass has on average when every unit is handed off */
    const int64_t per_pass = (units + plan->knpasses - 1) / plan->knpasses + 1;
    kbm_merge_kernel<T, D><<<dim3((unsigned)(per_pass < units ? per_pass : units), KBM_MERGE_ROW_GROUPS), 128, 0,
                             stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

template <typename T, int D>
static moba_status kbm_run(const moba_call *c, const moba_cuda_plan *plan, KbmArgs &a, int tma_mode) {
    KbmTma tma;
    tma.mode = 0;
    /* tma_mode 2 (128-key stages) only comes for blocks of a multiple of 128 keys */
    if (tma_mode && a.ws_ctas > 0 && a.qregs && a.qbufs == 1 && !a.pingpong) {
        const bool bf16 = c->p->dtype == MOBA_DTYPE_BF16;
        const int rows = tma_mode * SM90_BN; /* a box: one stage's keys */
        if (kbm_tensor_map(&tma.k, a.k, a.total, a.Hkv, D, rows, bf16) &&
            kbm_tensor_map(&tma.v, a.v, a.total, a.Hkv, D, rows, bf16))
            tma.mode = tma_mode;
    }
    const int64_t units = (int64_t)c->p->num_q_heads * plan->num_ftiles;
    cudaStream_t stream = (cudaStream_t)c->p->cuda_stream;
    kbm_passes_kernel<<<1, KBM_SCAN_THREADS, 0, stream>>>(a, units, plan->kstep, plan->knpasses);
    MOBA_CUDA_LAUNCHED();
    /* The passes on a second stream (the default since v27; MOBA_CUDA_KBM_FORK=0: on the caller's), forked
     * here and joined at the end, beside the union tiles (they share no rows; both read only what
     * kbm_passes_kernel wrote before the fork). The host launches the passes that handing off every unit
     * would need, empty ones included (Design, passes cut on the device): their launches, and with routing
     * locality the little work they have, then run under the union kernel and its tail instead of after it. */
    KbmFork fork;
    const char *fe = getenv("MOBA_CUDA_KBM_FORK");
    const bool forked = a.ublk && !(fe && *fe == '0') && fork.open(stream);
    cudaStream_t pass_stream = forked ? fork.side : stream;
    if (a.ublk) { /* the units not handed off, as union tiles (before the passes: they share no rows) */
        const size_t smem = KbmWsLayout<D, SM90_BN, 1, KBM_WS_STAGES(1), false>::bytes;
        const int64_t ctas = units < a.ws_ctas ? units : a.ws_ctas;
        MOBA_CUDA_TRY(cudaFuncSetAttribute(kbm_union_ws_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)smem));
        kbm_union_ws_kernel<T, D><<<(unsigned)ctas, KBM_WS_THREADS, smem, stream>>>(a);
        MOBA_CUDA_LAUNCHED();
    }
    /* zero once: a pass leaves the counts at 0 (the scan resets them, the scatter's cursors are off) */
    moba_status st = MOBA_OK;
    const cudaError_t me = cudaMemsetAsync(a.cnt, 0, sizeof(int32_t) * (size_t)a.ng, pass_stream);
    if (me != cudaSuccess)
        st = moba_fail(MOBA_ERR_CUDA, "%s:%d: cudaMemsetAsync (pass counts): %s", __FILE__, __LINE__,
                       cudaGetErrorString(me));
    for (int64_t q = 0; q < plan->knpasses && st == MOBA_OK; q++) {
        a.pass = q;
        a.s0 = q * plan->kstep;
        st = kbm_pass<T, D>(plan, a, tma, units, pass_stream);
    }
    if (forked) { /* joined even after a failed launch: the caller's stream must not run ahead of the side's */
        const moba_status js = fork.join(stream);
        if (st == MOBA_OK) st = js;
    }
    return st;
}

moba_status moba_cuda_forward_kbm(const moba_call *c, const moba_cuda_plan *plan, void *ws, const FwdArgs &f) {
    const moba_params *p = c->p;
    char *w = (char *)ws;
    KbmArgs a;
    memset(&a, 0, sizeof a);
    a.q = f.q;
    a.k = f.k;
    a.v = f.v;
    a.o = f.o;
    a.lse = f.lse;
    a.sel = f.sel;
    a.ftiles = f.dl.ftiles;
    a.cu_seqlens = f.dl.cu_seqlens;
    a.full_base = f.dl.full_base;
    a.fpairs = (const int64_t *)(w + plan->fpairs);
    a.ulist = (int64_t *)(w + plan->kulist);
    a.cbase = (int64_t *)(w + plan->kcbase);
    a.pstart = (int64_t *)(w + plan->kpstart);
    a.flags = (const int32_t *)(w + plan->kflags);
    a.cnt = (int32_t *)(w + plan->kcnt);
    a.off = (int32_t *)(w + plan->koff);
    a.ntiles = (int32_t *)(w + plan->kntiles);
    a.tiles = (int4 *)(w + plan->ktiles);
    a.plist = (int2 *)(w + plan->kplist);
    a.part_lse = (float *)(w + plan->kpart_lse);
    a.part_o = w + plan->kpart_o;
    a.total = f.total;
    a.nf = plan->num_ftiles;
    a.ptot = plan->kptot;
    a.tfb = c->L.total_full_blocks;
    a.ng = plan->kng;
    a.Hq = f.Hq;
    a.Hkv = f.Hkv;
    a.group = f.group;
    a.B = f.B;
    a.stride = f.stride;
    a.k1 = c->slots - 1;
    a.num_seqs = p->num_seqs;
    a.scale_log2 = f.scale_log2;
    a.ws_ctas = f.kbm_ws_ctas;
    a.own = f.kbm_own;
    if (f.kbm_ulist) {
        a.ublk = f.kbm_ulist;
        a.ustride = f.kbm_ustride;
        a.qlist = (int64_t *)(w + plan->kqlist);
        a.nuq = (int32_t *)(w + plan->knuq);
    }
    /* ping-pong consumers (MOBA_CUDA_KBM_PP=1): off by default, 1-4% slower in every same-run
     * comparison on the H200 (docs/cuda.md, v10b and v13) */
    const char *e = getenv("MOBA_CUDA_KBM_PP");
    a.pingpong = e && *e == '1';
    /* the warp-specialised kernel's consumers keep Q in registers (v14) and its one Q buffer leaves room for
     * a sixth K/V stage (v15); switches for measurements and tests: MOBA_CUDA_KBM_QREG=0 (Q from shared
     * memory, two Q buffers, five stages), MOBA_CUDA_KBM_STAGES=5 (Q in registers, two Q buffers, five stages) */
    e = getenv("MOBA_CUDA_KBM_QREG");
    a.qregs = !(e && *e == '0');
    e = getenv("MOBA_CUDA_KBM_STAGES");
    a.qbufs = e && *e == '5' ? 2 : 1;
    /* The warp-specialised kernel's K/V by TMA in 128-key stages (v18, docs/cuda.md: 3-4% faster calls at
     * 128K and 1M on the H100) where it applies: the default configuration (Q in registers, one Q buffer, no
     * ping-pong) and blocks of >= 1024 keys, a multiple of 128 (at B = 128 and 512 its three stages, two held
     * by a consumer step, made the calls 13-27% slower); elsewhere, or when the driver cannot encode a
     * tensor map, the cp.async kernel. Switches for measurements and tests: MOBA_CUDA_KBM_TMA=0 (cp.async), =1 (TMA in
     * 64-key stages: no faster than cp.async), =2 (the default). */
    e = getenv("MOBA_CUDA_KBM_TMA");
    const int tma = e && (*e == '0' || *e == '1') ? *e - '0' : a.B >= 1024 && a.B % (2 * SM90_BN) == 0 ? 2 : 0;
    if (!a.own && (a.ng == 0 || a.ptot == 0)) return MOBA_OK; /* no history anywhere */
    if (p->dtype == MOBA_DTYPE_BF16)
        return p->head_dim == 64 ? kbm_run<__nv_bfloat16, 64>(c, plan, a, tma)
                                 : kbm_run<__nv_bfloat16, 128>(c, plan, a, tma);
    return p->head_dim == 64 ? kbm_run<__half, 64>(c, plan, a, tma)
                             : kbm_run<__half, 128>(c, plan, a, tma);
}
