/*
 * Warp-specialised Hopper dk/dv kernel of the backward, dq fused (the default mode) - the default for
 * d = 128 and blocks of >= 128 keys; MOBA_CUDA_BWD_WS=0 gives backward_sm90.cu's kernel instead.
 * One CTA = 128 keys of one block (a 128-row layout tile) and one kv head; three warpgroups:
 *   warpgroup 0, the producer, walks the rows that selected the block (BwdRowCursor, over the q heads
 *     of the group) and gathers each chunk of 64 rows - q and dO in sm90.h's swizzled layout, token,
 *     position, lse, D - into a ring of BWS_STAGES stages by cp.async. Once a stage's copies have
 *     landed it arrives on the stage's "full" mbarrier; after the last chunk it publishes a stage with
 *     head -1. It waits for the consumers only for a free stage ("empty") and, as the dq writer (below),
 *     for a finished dq tile.
 *   warpgroups 1 and 2, the consumers, hold dk and dv of 64 keys each in registers. Per chunk:
 *     S^T = K Q^T, dP^T = V dO^T                  (both operands from shared memory)
 *     P^T = exp(s S^T - lse) masked                (after both: computing P^T while dP^T runs, with
 *     dS^T = P^T (dP^T - D)                         dV issued early, spilled ~350 bytes more)
 *     dV += P^T dO, dK += dS^T Q                   (A from registers)
 *     dS^T -> shared memory as [keys][rows] (one buffer: a named barrier before it is overwritten,
 *     one after both halves are in)
 *     dq[:, 64 w ..] = dS K[:, 64 w ..]            (both operands from shared memory, transposed: no
 *                                                   fragments, no spills)
 *     wait, release the stage; put dq into one shared [64 rows][128] tile (after the producer has sent
 *     the previous one) and arrive on its mbarrier - or, in the other forms, add each warp's rows to
 *     dq_acc with the consumers' own bulk reductions, or float2 atomics as backward_sm90.cu.
 *   the producer warpgroup also sends the dq tiles: one bulk reduction (cp.reduce.async.bulk .add.f32,
 *     512 bytes) per row into dq_acc, then releases the tile.
 * What it changes against backward_sm90.cu: the gathers run on their own warps, up to two chunks
 * ahead, instead of between the products; no CTA-wide barrier in the loop; the consumers get 232
 * registers (setmaxnreg). Every product, weight and sum is the one that kernel computes, in the same
 * order (heads, then rows ascending), so dk and dv stay bitwise equal to the deterministic mode's.
 */
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "sm90.h"

#define BWS_THREADS 384
#define BWS_STAGES 3           /* 3 x 32 KiB of gathered q / dO beside 64 KiB of K, V, 16 KiB of dS^T and
                                  34-36 KiB of dq tiles */
#define BWS_DQ_LD 72           /* row stride (floats) of the bulk form's dq tiles: 64-bit stores without conflicts */
#define BWS_DQ_LDW 136         /* the same for the writer's one [64 rows][128] tile (136 = 8 mod 32 as 72) */
#define BWS_PRODUCER_REGS 40   /* 40 * 128 + 232 * 256 = the 168 * 384 registers of the launch */
#define BWS_CONSUMER_REGS 232

/* A stage's per-row data (the chunk's 64 rows), and its q head (-1: no chunk left). */
struct BwsMeta {
    int32_t rows[64], pos[64];
    float lse[64], dlt[64];
    int32_t head, pad[3];
};

/* How dq leaves the kernel (the kernel's comment below says more): float2 atomics; bulk reductions of
 * 256 bytes per row and warpgroup, issued by the consumers; one of 512 bytes per row from a shared tile,
 * issued by the producer warpgroup (the default). */
enum { DQ_ATOMIC = 0, DQ_BULK = 1, DQ_WRITER = 2 };

/* The shared-memory carve-up, used by the kernel and (bytes) by the host: K, V [128 keys x D], NS
 * stages of gathered q and dO [64 rows x D], NDS dS^T buffers [128 x 64], the full and empty mbarriers
 * (the writer: and the dq tile's full and empty), NS stages of row data, the dq tiles of the bulk
 * forms (the writer: then the tile's 64 tokens and its head); plus 1 KiB to align the start to 1024. */
template <int D, int NS, int NDS, int DQ> struct BwsLayout {
    static constexpr size_t kv = 128 * D * 2, stage = 64 * D * 2, ds = 128 * 64 * 2;
    static constexpr size_t k = 0, v = k + kv, q = v + kv, o = q + NS * stage, dS = o + NS * stage;
    static constexpr size_t bars = dS + NDS * ds, meta = bars + (2 * NS + (DQ == DQ_WRITER ? 2 : 0)) * sizeof(uint64_t);
    static constexpr size_t dq = meta + NS * sizeof(BwsMeta), dq_rows = dq + 64 * BWS_DQ_LDW * sizeof(float);
    static constexpr size_t dq_bytes = DQ == DQ_ATOMIC ? 0
                                       : DQ == DQ_BULK ? 128 * BWS_DQ_LD * sizeof(float)
                                                       : dq_rows - dq + 65 * sizeof(int32_t);
    static constexpr size_t bytes = 1024 + dq + dq_bytes;
    static_assert(dq % 16 == 0, "bulk copies read 16-byte aligned rows");
};

/* A consumer thread's dq fragment (rows g and g + 8, columns nt * 8 + 2c and + 1 of its warp's 16 x 64)
 * into a row-major fp32 tile of row stride ld, at the fragment's first row and column. */
__device__ __forceinline__ void store_dq_frag(float *tile, int ld, const float (&q)[8][4], int g, int c) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
            *reinterpret_cast<float2 *>(tile + (g + 8 * r) * ld + nt * 8 + 2 * c) = make_float2(q[nt][2 * r], q[nt][2 * r + 1]);
}
/* dst[0 .. BYTES/4) += src[...] (shared memory), one bulk reduction in a bulk group of its own. */
template <int BYTES> __device__ __forceinline__ void bulk_add_f32(float *dst, const float *src) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                 "cp.async.bulk.commit_group;\n" ::"l"(dst), "r"(moba_smem_addr(src)), "n"(BYTES)
                 : "memory");
}

/* NS stages; NDS dS^T buffers (1: the consumers sync once more per chunk, before overwriting it);
 * DQ: DQ_ATOMIC, float2 atomics from the consumers' registers. DQ_BULK: each warp puts its 16 rows x 64
 * columns of dq into shared memory and its lanes add them to dq_acc with one bulk reduction
 * (cp.reduce.async.bulk) of 256 bytes per row; issuing them (a loop over the lanes: the operands must
 * be uniform) held about a fifth of the consumers' stall samples in the profile of 2026-12-07.
 * DQ_WRITER (NDS 1): the consumers only store both halves into one [64][128] tile (and its tokens) and
 * arrive on an mbarrier; the producer warpgroup, which waits on free stages most of the time, sends
 * each row as one 512-byte reduction and releases the tile: the backward call 9-11% faster than with
 * DQ_BULK at 128K and 1M (H100, 2026-12-07, two runs; 32K and 64K: -2% .. +14%). Sending chunk k's
 * tile right after its stage is freed, before gathering the next chunk, was -7% at 32K and +2% at 128K
 * (measured, removed). */
template <typename T, int D, int NS, int NDS, int DQ>
__global__ void __launch_bounds__(BWS_THREADS, 1) dkdv_ws_kernel(BwdArgs a) {
#ifdef MOBA_WGMMA
    static_assert(D == 128, "two consumers of 64 keys, each 64 of dq's columns");
    /* rows per chunk; keys per CTA; stages; bytes of a gathered [64 x D] tile, of K (or V), of dS^T */
    constexpr int RC = 64, KN = 128, TB = RC * D * 2, DSB = KN * RC * 2;
    constexpr bool BULK = DQ != DQ_ATOMIC, WRITER = DQ == DQ_WRITER;
    using L = BwsLayout<D, NS, NDS, DQ>;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    char *smem = moba_smem_align1024(smem_raw);
    char *sK = smem + L::k, *sV = smem + L::v, *sQ = smem + L::q, *sO = smem + L::o, *sDS = smem + L::dS;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + L::bars), *empty = full + NS;
    BwsMeta *meta = reinterpret_cast<BwsMeta *>(smem + L::meta);
    float *sDQ = reinterpret_cast<float *>(smem + L::dq); /* DQ_BULK: [2 warpgroups][64 rows][BWS_DQ_LD];
                                                              WRITER: [64 rows][BWS_DQ_LDW] */
    /* WRITER: the tile's full (256 consumer arrivals) and empty (128 producer arrivals) mbarriers, and
     * the tokens and head of the tile's rows (the stage's row data may be reused before the tile leaves) */
    uint64_t *dq_full = empty + NS, *dq_empty = dq_full + 1;
    int32_t *dq_rows = reinterpret_cast<int32_t *>(smem + L::dq_rows), *dq_head = dq_rows + 64;

    const FwdArgs &f = a.f;
    const BwdKeyTile kt = bwd_key_tile(f, f.dl.ftiles);
    const int hk = blockIdx.y, tid = threadIdx.x, wgi = __shfl_sync(0xffffffffu, tid / 128, 0);
    if (tid == 0) {
        for (int i = 0; i < NS; i++) {
            mbar_init(&full[i], 128);
            mbar_init(&empty[i], 256);
        }
        if (WRITER) {
            mbar_init(dq_full, 256);
            mbar_init(dq_empty, 128);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wgi == 0) { /* producer */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(BWS_PRODUCER_REGS));
        const int64_t kv_off = (kt.tile.row_begin * f.Hkv + hk) * D;
        load_sw128<D, KN, T, 128>(sK, reinterpret_cast<const T *>(f.k) + kv_off, (int64_t)f.Hkv * D, kt.nkeys, tid);
        load_sw128<D, KN, T, 128>(sV, reinterpret_cast<const T *>(f.v) + kv_off, (int64_t)f.Hkv * D, kt.nkeys, tid);
        moba_cp_async_commit(); /* complete before chunk 0 is signalled */
        const T *qg = reinterpret_cast<const T *>(f.q), *og = reinterpret_cast<const T *>(a.dout);
        auto signal = [&](int st) { /* this thread's copies into stage st have landed */
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            mbar_arrive(&full[st]);
        };
        /* WRITER: chunk k's dq tile goes out, 16 rows per warp, one 512-byte reduction each; once their
         * reads are done the tile is released. Chunk k is written when its stage has just been reused
         * (k = n - NS), so the consumers are at most a chunk from finishing it, and the rest after the
         * last chunk. */
        auto write_dq = [&](int k) {
            mbar_wait(dq_full, k & 1);
            const int r = (tid / 32) * 16 + tid % 32, t = tid % 32 < 16 ? dq_rows[r] : -1;
            if (t >= 0) {
                bulk_add_f32<512>(a.dq_acc + ((int64_t)t * f.Hq + *dq_head) * D, sDQ + r * BWS_DQ_LDW);
                asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
            }
            mbar_arrive(dq_empty);
        };
        BwdRowCursor cur = {};
        cur.start<RC>(a, kt.tile, hk, kt.seq0, kt.len);
        int st = 0, ph = 0, prev = -1, n = 0;
        for (; cur.gi < f.group; n++) {
            if (n >= NS) mbar_wait(&empty[st], ph ^ 1);
            const int h = hk * f.group + cur.gi;
            BwsMeta &m = meta[st];
            bwd_row_meta<RC>(a, cur, h, kt.seq0, m.rows, m.pos, m.lse, m.dlt, tid);
            if (tid == 0) m.head = h;
            gather_sw128<D, RC, 128>(sQ + st * TB, sO + st * TB, qg + (int64_t)h * D, og + (int64_t)h * D,
                                     [&](int r) { return cur.row(r); }, (int64_t)f.Hq * D, tid);
            moba_cp_async_commit();
            if (prev >= 0) { /* the previous chunk (and K, V) have landed */
                moba_cp_async_wait<1>();
                signal(prev);
            }
            prev = st;
            if (++st == NS) st = 0, ph ^= 1;
            cur.next<RC>(a, kt.tile, hk, kt.seq0, kt.len);
            if (WRITER && n >= NS) write_dq(n - NS);
        }
        if (n >= NS) mbar_wait(&empty[st], ph ^ 1);
        if (tid == 0) meta[st].head = -1; /* the end */
        moba_cp_async_wait<0>();
        if (prev >= 0) signal(prev);
        signal(st);
        if (WRITER) {
            for (int k = n >= NS ? n - NS : 0; k < n; k++) write_dq(k);
            asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(BWS_CONSUMER_REGS));
    const int ctid = tid - 128, cw = wgi - 1, warp = ctid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const int wwarp = warp % 4, key0 = warp * 16; /* keys key0 + g (+ 8) of the CTA's 128; rows of dq: 16 wwarp.. */
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nt][e] = dv[nt][e] = 0.0f;
    /* descriptors: this warpgroup's 64 keys of K and V (A of S^T, dP^T), stage 0's q and dO tiles (B of
     * S^T, dP^T; B of dK, dV), dS^T buffer 0 (A of dq), K's columns 64 cw.. (B of dq) */
    const uint64_t kA = sw128_desc(sK + cw * 64 * 128, 16, 1024), vA = sw128_desc(sV + cw * 64 * 128, 16, 1024);
    const uint64_t qB = sw128_desc(sQ, 16, 1024), oB = sw128_desc(sO, 16, 1024);
    const uint64_t qT = sw128_desc(sQ, RC * 128, 1024), oT = sw128_desc(sO, RC * 128, 1024);
    const uint64_t dsA = sw128_desc(sDS, KN * 128, 1024), kT = sw128_desc(sK + cw * (KN * 128), KN * 128, 1024);
    const float sl2 = f.scale_log2, log2e = 1.4426950408889634f;
    const int kq = kt.kpos0 + key0 + g; /* position of this lane's first key */
    const bool kv0 = key0 + g < kt.nkeys, kv1 = key0 + g + 8 < kt.nkeys;
    int st = 0, ph = 0;
    for (int n = 0;; n++) {
        mbar_wait(&full[st], ph);
        const BwsMeta &m = meta[st];
        const int h = m.head;
        if (h < 0) break;
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        const uint32_t so = (uint32_t)(st * TB) >> 4;
        /* the descriptors (and g below) made opaque in every iteration: otherwise the compiler hoists
         * each product step's descriptor and each dS address out of the loop and spills them */
        uint64_t kA_ = kA, vA_ = vA, qB_ = qB, oB_ = oB, qT_ = qT, oT_ = oT, dsA_ = dsA, kT_ = kT;
        int g_ = g;
        asm volatile("" : "+l"(kA_), "+l"(vA_), "+l"(qB_), "+l"(oB_), "+l"(qT_), "+l"(oT_), "+l"(dsA_), "+l"(kT_),
                     "+r"(g_));
        float s[RC / 8][4], dp[RC / 8][4]; /* keys (this warp's 16) x rows */
        sm90_issue_s_desc<T, D, RC, KN>(kA_, desc_add(qB_, so), s);
        sm90_issue_s_desc<T, D, RC, KN>(vA_, desc_add(oB_, so), dp);
        wg_wait<0>();
        fence_regs<RC / 2>(&s[0][0]);
        fence_regs<RC / 2>(&dp[0][0]);
        /* P^T: row m = nt * 8 + 2c + (e & 1), key g + 8 (e >> 1) of this warp's 16 */
#pragma unroll
        for (int nt = 0; nt < RC / 8; nt++) {
            const int m0 = nt * 8 + 2 * c;
            const float2 l2 = *reinterpret_cast<const float2 *>(m.lse + m0);
            const int2 p2 = *reinterpret_cast<const int2 *>(m.pos + m0);
            const float nl[2] = {-l2.x * log2e, -l2.y * log2e};
            const int pos[2] = {p2.x, p2.y};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const bool keep = (e >> 1 ? kv1 : kv0) && pos[e & 1] >= kq + 8 * (e >> 1);
                s[nt][e] = keep ? moba_exp2(fmaf(s[nt][e], sl2, nl[e & 1])) : 0.0f;
            }
        }
        uint32_t pa[RC / 16][4], dsa[RC / 16][4];
        pack_p<T>(s, pa);
#pragma unroll
        for (int nt = 0; nt < RC / 8; nt++) {
            const float2 d2 = *reinterpret_cast<const float2 *>(m.dlt + nt * 8 + 2 * c);
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] *= dp[nt][e] - (e & 1 ? d2.y : d2.x);
        }
        pack_p<T>(s, dsa);
        sm90_issue_pv_desc<T, D, RC>(desc_add(oT_, so), dv, pa);  /* dV += P^T dO */
        sm90_issue_pv_desc<T, D, RC>(desc_add(qT_, so), dk, dsa); /* dK += dS^T Q */
        /* dS^T into buffer n % NDS as [128 keys][64 rows], 128-byte lines swizzled like every tile here:
         * dsa[kk][j] holds key g + 8 (j & 1), rows 16 kk + 8 (j >> 1) + 2c, +1 - one 4-byte word.
         * One buffer: both consumers' dq products of the previous chunk must be done with it. */
        const int dsb = NDS == 1 ? 0 : n & 1;
        char *ds_buf = sDS + dsb * DSB;
        if (NDS == 1 && n > 0) asm volatile("bar.sync 2, 256;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < RC / 16; kk++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int line = key0 + g_ + 8 * (j & 1);
                *reinterpret_cast<uint32_t *>(ds_buf + line * 128 + (((2 * kk + (j >> 1)) ^ g_) << 4) + 4 * c) =
                    dsa[kk][j];
            }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* generic writes, read by wgmma */
        asm volatile("bar.sync 1, 256;\n" ::: "memory");               /* both halves of dS^T written */
        float q[8][4];
        {
            const uint64_t da = desc_add(dsA_, (uint32_t)(dsb * DSB) >> 4);
            fence_regs<32>(&q[0][0]);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < KN / 16; kk++)
                wg<T>::sst64(&q[0][0], desc_add(da, (kk * 2048) >> 4), desc_add(kT_, (kk * 2048) >> 4), kk > 0);
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        }
        const int32_t t[2] = {m.rows[wwarp * 16 + g], m.rows[wwarp * 16 + g + 8]};
        const int32_t t_lane = WRITER ? (lane < 8 ? m.rows[(cw * 4 + wwarp) * 8 + lane] : -1)
                                      : (BULK && lane < 16 ? m.rows[wwarp * 16 + lane] : -1);
        wg_wait<0>();
        fence_regs<32>(&q[0][0]);
        fence_regs<D / 2>(&dv[0][0]);
        fence_regs<D / 2>(&dk[0][0]);
        mbar_arrive(&empty[st]); /* q, dO and the row data of this stage are no longer read */
        if (!BULK) {
            dq_atomic_add<D>(a, q, t, h, cw * 64, c);
        } else if (WRITER) {
            if (n > 0) mbar_wait(dq_empty, (n - 1) & 1); /* the writer has read the previous chunk's tile */
            store_dq_frag(sDQ + wwarp * 16 * BWS_DQ_LDW + cw * 64, BWS_DQ_LDW, q, g, c);
            if (lane < 8) dq_rows[(cw * 4 + wwarp) * 8 + lane] = t_lane;
            if (ctid == 0) *dq_head = h;
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* read by the bulk copies */
            mbar_arrive(dq_full);
        } else {
            float *rows = sDQ + (cw * 64 + wwarp * 16) * BWS_DQ_LD; /* this warp's 16 rows */
            if (n > 0 && lane < 16) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
            __syncwarp(); /* the previous chunk's reductions have read the tile */
            store_dq_frag(rows, BWS_DQ_LD, q, g, c);
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* read by the bulk copies */
            __syncwarp();
            if (t_lane >= 0)
                bulk_add_f32<256>(a.dq_acc + ((int64_t)t_lane * f.Hq + h) * D + cw * 64, rows + lane * BWS_DQ_LD);
        }
        if (++st == NS) st = 0, ph ^= 1;
    }
    if (BULK && !WRITER) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    store_dkdv<T, D>(a, kt.tile, hk, kt.nkeys, dk, dv, warp, lane);
#else
    __trap(); /* built for another target: the host never launches it there */
#endif
}

template <typename T, int NS, int NDS, int DQ>
static moba_status launch(const moba_call *c, const BwdArgs &a) {
    const moba_params *p = c->p;
    constexpr int D = 128;
    const size_t smem = BwsLayout<D, NS, NDS, DQ>::bytes;
    const dim3 grid((unsigned)a.f.dl.num_ftiles, p->num_kv_heads);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(dkdv_ws_kernel<T, D, NS, NDS, DQ>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dkdv_ws_kernel<T, D, NS, NDS, DQ><<<grid, BWS_THREADS, smem, (cudaStream_t)p->cuda_stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

/* The default: three stages, one dS^T buffer, dq sent by the producer warpgroup (H100, 2026-12-07: the
 * backward call 9-11% faster at 128K and 1M than with the consumers' own bulk reductions, which were 2-9%
 * faster than float2 atomics; 512-byte reductions issued by the consumers were -4% .. +4% and are gone,
 * as are four stages, P^T computed while dP^T runs and mask-free chunks). For measurement
 * (docs/cuda-backward.md): MOBA_CUDA_BWD_WS_DQ=atomic, =bulk (the consumers' reductions). */
template <typename T>
static moba_status launch_variant(const moba_call *c, const BwdArgs &a) {
    const char *dq = getenv("MOBA_CUDA_BWD_WS_DQ");
    if (dq && *dq == 'a') return launch<T, BWS_STAGES, 2, DQ_ATOMIC>(c, a);
    if (dq && !strcmp(dq, "bulk")) return launch<T, BWS_STAGES, 1, DQ_BULK>(c, a);
    return launch<T, BWS_STAGES, 1, DQ_WRITER>(c, a);
}

bool moba_cuda_dkdv_ws_applies(const moba_call *c) {
    const char *e = getenv("MOBA_CUDA_BWD_WS"), *kw = getenv("MOBA_CUDA_BWD_KW");
    if ((e && *e == '0') || (kw && *kw == '1')) return false;
    return c->p->head_dim == 128 && c->p->block_size >= 128;
}

moba_status moba_cuda_dkdv_ws(const moba_call *c, const BwdArgs &a) {
    return c->p->dtype == MOBA_DTYPE_BF16 ? launch_variant<__nv_bfloat16>(c, a) : launch_variant<__half>(c, a);
}
