/*
 * Hopper (sm_90a) dk/dv kernel of the backward: backward.cu's dkdv_kernel with the products on
 * wgmma. One CTA = KW warpgroups = KW x 64 keys of one block (64 per warpgroup: the M of its
 * products), one kv head: KW = 1 takes the 64-row layout tiles, KW = 2 the 128-row ones. The rows
 * that selected the block come in gathered chunks of 64 (double-buffered cp.async into the
 * 128-byte-swizzled layout of sm90.h), shared by the warpgroups. Per chunk, with P^T and dS^T held as
 * register fragments:
 *   S^T = K Q^T, dP^T = V dO^T            (A and B from shared memory)
 *   P^T = exp(s S^T - lse) masked, dS^T = P^T (dP^T - D)
 *   dV += P^T dO, dK += dS^T Q            (A from registers, B = the gathered rows, transposed)
 *   FUSE_DQ: dS [rows x keys] via shared memory, dq_acc[rows] += dS K in 64-column pieces, over all
 *            KW x 64 keys (atomics, backward.h) — the default, non-deterministic mode. With KW = 2,
 *            warpgroup w takes columns 64w.., so the atomics and the gathers per FLOP are halved.
 * The order of every dk/dv sum is fixed (heads ascending, rows ascending), as in the portable kernel.
 */
#include <stdlib.h>

#include "backward.h"
#include "sm90.h"

/* The shared-memory carve-up, used by the kernel and (bytes) by the host: K, V [64 KW keys x D], two
 * stages of gathered q and dO [64 rows x D], dS [64 rows][64 KW + 8], two stages of lse, D, tokens and
 * positions [64]; plus 1 KiB to align the start to 1024. */
template <typename T, int D, int KW> struct Bsm90Layout {
    static constexpr size_t tb = 64 * D * 2, ds_ld = 64 * KW + 8;
    static constexpr size_t k = 0, v = k + KW * tb, q = v + KW * tb, o = q + 2 * tb, ds = o + 2 * tb;
    static constexpr size_t lse = ds + 64 * ds_ld * sizeof(T), dlt = lse + 2 * 64 * sizeof(float);
    static constexpr size_t rows = dlt + 2 * 64 * sizeof(float), pos = rows + 2 * 64 * sizeof(int32_t);
    static constexpr size_t bytes = 1024 + pos + 2 * 64 * sizeof(int32_t);
};

template <typename T, int D, bool FUSE_DQ, int KW>
__global__ void __launch_bounds__(128 * KW, 2 / KW) dkdv_sm90_kernel(BwdArgs a) {
#ifdef MOBA_WGMMA
    /* rows per chunk; keys per CTA; threads; bytes of a 64-row tile; row stride of dS */
    constexpr int RC = 64, KN = 64 * KW, THREADS = 128 * KW, TB = 64 * D * 2, DS_LD = KN + 8;
    static_assert(KW == 1 || D == 64 * KW, "KW = 2 (d = 128): one 64-column piece of dq per warpgroup");
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    char *smem = moba_smem_align1024(smem_raw);
    using L = Bsm90Layout<T, D, KW>;
    static_assert(L::tb == TB && L::ds_ld == DS_LD, "one layout");
    char *sK = smem + L::k, *sV = smem + L::v, *sQ = smem + L::q, *sO = smem + L::o; /* sQ, sO: [2 stages] */
    T *sDS = reinterpret_cast<T *>(smem + L::ds);                                      /* dS [RC][DS_LD] */
    float *s_lse = reinterpret_cast<float *>(smem + L::lse), *s_dlt = reinterpret_cast<float *>(smem + L::dlt);
    int32_t *s_rows = reinterpret_cast<int32_t *>(smem + L::rows), *s_pos = reinterpret_cast<int32_t *>(smem + L::pos);

    const FwdArgs &f = a.f;
    const BwdKeyTile kt = bwd_key_tile(f, KW == 2 ? f.dl.ftiles : f.dl.tiles);
    const moba_tile &tile = kt.tile;
    const int64_t seq0 = kt.seq0;
    const int len = kt.len, nkeys = kt.nkeys, kpos0 = kt.kpos0;
    const int hk = blockIdx.y, tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4; /* warp w: keys 16w.. */
    const int wgi = tid / 128, wwarp = warp % 4; /* warpgroup; warp within it */
    const int64_t kv_off = (tile.row_begin * f.Hkv + hk) * D;

    load_sw128<D, KN, T, THREADS>(sK, reinterpret_cast<const T *>(f.k) + kv_off, (int64_t)f.Hkv * D, nkeys, tid);
    load_sw128<D, KN, T, THREADS>(sV, reinterpret_cast<const T *>(f.v) + kv_off, (int64_t)f.Hkv * D, nkeys, tid);
    moba_cp_async_commit();

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nt][e] = dv[nt][e] = 0.0f;
    const T *qg = reinterpret_cast<const T *>(f.q), *og = reinterpret_cast<const T *>(a.dout);

    BwdRowCursor cur = {};
    cur.start<RC>(a, tile, hk, seq0, len);
    auto load = [&](int stage) { /* the cursor's chunk into `stage` (cp.async, one commit group) */
        const int h = hk * f.group + cur.gi;
        bwd_row_meta<RC>(a, cur, h, seq0, s_rows + stage * RC, s_pos + stage * RC, s_lse + stage * RC,
                         s_dlt + stage * RC, tid);
        gather_sw128<D, RC, THREADS>(sQ + stage * TB, sO + stage * TB, qg + (int64_t)h * D, og + (int64_t)h * D,
                                     [&](int r) { return cur.row(r); }, (int64_t)f.Hq * D, tid);
        moba_cp_async_commit();
    };
    int h_next = hk * f.group + cur.gi;
    if (cur.gi < f.group) load(0);
    for (int it = 0; cur.gi < f.group; it++) {
        const int stage = it & 1, h = h_next;
        bwd_prefetch_next<RC>(cur, a, tile, hk, seq0, len, stage ^ 1, h_next, load);
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* cp.async wrote what wgmma reads */
        __syncthreads();
        const char *q_s = sQ + stage * TB, *o_s = sO + stage * TB;
        const float *lse_s = s_lse + stage * RC, *dlt_s = s_dlt + stage * RC;
        const int *pos_s = s_pos + stage * RC;

        float s[RC / 8][4], dp[RC / 8][4]; /* keys (this warp's 16) x rows */
        sm90_issue_s<T, D, RC, KN>(sK + wgi * 64 * 128, q_s, s); /* this warpgroup's 64 keys */
        sm90_issue_s<T, D, RC, KN>(sV + wgi * 64 * 128, o_s, dp);
        wg_wait<0>();
        fence_regs<RC / 2>(&s[0][0]);
        fence_regs<RC / 2>(&dp[0][0]);
        float pr[RC / 8][4];
        bwd_p_ds<RC>(s, dp, pr, lse_s, dlt_s, warp * 16, lane, f.scale_log2,
                     [&](int m, int kl) { return pos_s[m] >= kpos0 + kl && kl < nkeys; }); /* s: dS^T */
        uint32_t pa[RC / 16][4], dsa[RC / 16][4];
        pack_p<T>(pr, pa);
        pack_p<T>(s, dsa);
        sm90_issue_pv<T, D, RC>(o_s, dv, pa);
        sm90_issue_pv<T, D, RC>(q_s, dk, dsa);
        if (FUSE_DQ) bwd_store_ds<T, RC>(sDS, DS_LD, s, warp * 16, lane); /* for the dq product, under the GEMMs */
        if (!FUSE_DQ) { /* (fused: the dq product's wait covers dV and dK, which complete first) */
            wg_wait<0>();
            fence_regs<D / 2>(&dv[0][0]);
            fence_regs<D / 2>(&dk[0][0]);
        }
        if (FUSE_DQ) {
            __syncthreads(); /* sDS complete */
            uint32_t af[KN / 16][4]; /* this warp's 16 rows x KN keys of dS */
#pragma unroll
            for (int kk = 0; kk < KN / 16; kk++) a_frag_smem<KN>(af[kk], sDS, wwarp * 16, kk, lane);
            const int32_t t[2] = {s_rows[stage * RC + wwarp * 16 + g], s_rows[stage * RC + wwarp * 16 + g + 8]};
#pragma unroll
            for (int pc = 0; pc < D / 64 / KW; pc++) {
                const int half = KW == 1 ? pc : wgi; /* dq columns 64 half .. 64 half + 63 */
                float q[8][4];
#pragma unroll
                for (int nt = 0; nt < 8; nt++) q[nt][0] = q[nt][1] = q[nt][2] = q[nt][3] = 0.0f;
                fence_regs<32>(&q[0][0]);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < KN / 16; kk++)
                    wg<T>::rs64(&q[0][0], af[kk], sw128_desc(sK + half * (KN * 128) + kk * 2048, KN * 128, 1024));
                wg_commit_wait();
                fence_regs<32>(&q[0][0]);
                if (pc == 0) {
                    fence_regs<D / 2>(&dv[0][0]);
                    fence_regs<D / 2>(&dk[0][0]);
                }
                dq_atomic_add<D>(a, q, t, h, half * 64, c);
            }
        }
        __syncthreads(); /* `stage` and sDS are free for the next loads */
    }
    moba_cp_async_wait<0>(); /* (a CTA with no rows at all still waits for its K/V copies) */
    store_dkdv<T, D>(a, tile, hk, nkeys, dk, dv, warp, lane);
#else
    __trap(); /* built for another target: the host never launches it there */
#endif
}

template <typename T, int D, bool FUSE_DQ, int KW>
static moba_status launch(const moba_call *c, const BwdArgs &a) {
    const moba_params *p = c->p;
    const size_t smem = Bsm90Layout<T, D, KW>::bytes;
    const dim3 grid((unsigned)(KW == 2 ? a.f.dl.num_ftiles : a.f.dl.num_tiles), p->num_kv_heads);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(dkdv_sm90_kernel<T, D, FUSE_DQ, KW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)smem));
    dkdv_sm90_kernel<T, D, FUSE_DQ, KW><<<grid, 128 * KW, smem, (cudaStream_t)p->cuda_stream>>>(a);
    MOBA_CUDA_LAUNCHED();
    return MOBA_OK;
}

/* d = 128 and blocks of >= 128 keys: two warpgroups on 128 keys (MOBA_CUDA_BWD_KW=1: one on 64);
 * otherwise one (smaller blocks would leave a 128-key tile at most half full). */
template <typename T>
static moba_status launch_d(const moba_call *c, const BwdArgs &a, bool fuse_dq) {
    if (c->p->head_dim == 64) return fuse_dq ? launch<T, 64, true, 1>(c, a) : launch<T, 64, false, 1>(c, a);
    const char *e = getenv("MOBA_CUDA_BWD_KW");
    if ((e && *e == '1') || c->p->block_size < 128)
        return fuse_dq ? launch<T, 128, true, 1>(c, a) : launch<T, 128, false, 1>(c, a);
    return fuse_dq ? launch<T, 128, true, 2>(c, a) : launch<T, 128, false, 2>(c, a);
}

moba_status moba_cuda_dkdv_sm90(const moba_call *c, const BwdArgs &a, bool fuse_dq) {
    return c->p->dtype == MOBA_DTYPE_BF16 ? launch_d<__nv_bfloat16>(c, a, fuse_dq) : launch_d<__half>(c, a, fuse_dq);
}
