/*
 * Hopper (sm_90a) pieces the wgmma forward kernels share (forward_sm90.cu: query-tile-major,
 * forward_kbm.cu: key-block-major): the 128-byte-swizzled shared tiles the tensor cores read,
 * their descriptors, and the wgmma wrappers.
 * A shared tile of R rows x D columns is D/64 panels of R rows x 128 bytes; the 16-byte chunk ch
 * of row r sits at chunk ch ^ (r % 8). cp.async fills them (generic proxy), so each thread fences
 * to the async proxy before the barrier that precedes the wgmma that reads them.
 */
#ifndef MOBA_CUDA_SM90_H
#define MOBA_CUDA_SM90_H

#include "forward.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOBA_WGMMA 1
#include "wgmma_ops.inc"
#endif

#define SM90_WGS 2 /* warpgroups per CTA: MOBA_FWD_TILE_ROWS / 64 */
#define SM90_THREADS (128 * SM90_WGS)
#define SM90_BN 64

/* Copies a [R x D] tile (global row stride `stride`) into the swizzled layout; rows >= valid -> 0.
 * Thread t always copies 16-byte chunk t % (D/8) of rows t / (D/8) + p * (256 / (D/8)); that row step
 * is a multiple of 8, so the swizzle (row % 8) and all offsets are fixed per thread: the address
 * arithmetic is done once, not per copy (it was the kernel's busiest pipe, with spills). */
template <int D, int R, typename T, int THREADS = SM90_THREADS>
__device__ __forceinline__ void load_sw128(char *base, const T *g, int64_t stride, int valid, int tid) {
    constexpr int chunks = D / 8, step = THREADS / chunks;
    static_assert(step % 8 == 0 && R % step == 0, "tile shape");
    const int col8 = tid % chunks, r0 = tid / chunks;
    char *dst = base + (col8 / 8) * (R * 128) + r0 * 128 + (((col8 % 8) ^ (r0 & 7)) << 4);
    const T *src = g + (int64_t)r0 * stride + col8 * 8;
    const int64_t src_step = (int64_t)step * stride;
#pragma unroll
    for (int p = 0; p < R / step; p++) {
        bool ok = r0 + p * step < valid;
        moba_cp_async16(dst + p * step * 128, ok ? src + p * src_step : g, ok);
    }
}

/* wgmma shared-memory descriptor, 128-byte swizzle: start address, leading and stride byte offsets. */
__device__ __forceinline__ uint64_t sw128_desc(const char *p, uint32_t lbo, uint32_t sbo) {
    uint32_t addr = moba_smem_addr(p);
    return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
           (1ull << 62);
}

/* A descriptor moved by off16 * 16 bytes: only the low word changes (no carry, see sm90_issue_s_desc). */
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t off16) {
    return (d & 0xffffffff00000000ull) | (uint32_t)((uint32_t)d + off16);
}

/* mbarrier helpers (shared::cta): init by one thread, arrive, and wait for the phase of a given parity. */
__device__ __forceinline__ void mbar_init(uint64_t *bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(moba_smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(moba_smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *bar, int parity) {
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=;\n"
                 "}\n" ::"r"(moba_smem_addr(bar)), "r"(parity) : "memory");
}

#ifdef MOBA_WGMMA
/* TMA: one arrival that also expects `bytes` more bytes to land (complete_tx) before the phase completes. */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(moba_smem_addr(bar)), "r"(bytes)
                 : "memory");
}
/* TMA 2D tile load: the box at element coordinates {x (inner), y (row)} of the tensor map (a __grid_constant__
 * kernel parameter) into dst; the box's bytes (zero-filled rows included) count towards the mbarrier's
 * expected transactions as they land. */
__device__ __forceinline__ void tma_load_2d(void *dst, const void *tmap, int x, int y, uint64_t *bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"(moba_smem_addr(dst)), "l"(reinterpret_cast<uint64_t>(tmap)), "r"(x), "r"(y),
                 "r"(moba_smem_addr(bar))
                 : "memory");
}
/* An arrival on bar once this thread's cp.async copies issued so far have landed (noinc: it counts
 * towards the barrier's expected arrivals); the thread does not wait. */
__device__ __forceinline__ void mbar_arrive_cp_async(uint64_t *bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(moba_smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit_wait() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
/* Keeps the compiler from moving accumulator reads across the asynchronous wgmma. */
template <int N> __device__ __forceinline__ void fence_regs(float *r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <typename T> struct wg;
template <> struct wg<__nv_bfloat16> {
    static __device__ __forceinline__ void ss64(float *d, uint64_t a, uint64_t b, int acc) { wgmma_ss_n64_bf16(d, a, b, acc); }
    static __device__ __forceinline__ void sst64(float *d, uint64_t a, uint64_t b, int acc) { wgmma_sst_n64_bf16(d, a, b, acc); }
    static __device__ __forceinline__ void rs64(float *d, const uint32_t *a, uint64_t b) { wgmma_rs_n64_bf16(d, a, b); }
    static __device__ __forceinline__ void rs128(float *d, const uint32_t *a, uint64_t b) { wgmma_rs_n128_bf16(d, a, b); }
    static __device__ __forceinline__ void rsk64(float *d, const uint32_t *a, uint64_t b, int acc) { wgmma_rsk_n64_bf16(d, a, b, acc); }
    static __device__ __forceinline__ void rsk128(float *d, const uint32_t *a, uint64_t b, int acc) { wgmma_rsk_n128_bf16(d, a, b, acc); }
};
template <> struct wg<__half> {
    static __device__ __forceinline__ void ss64(float *d, uint64_t a, uint64_t b, int acc) { wgmma_ss_n64_f16(d, a, b, acc); }
    static __device__ __forceinline__ void sst64(float *d, uint64_t a, uint64_t b, int acc) { wgmma_sst_n64_f16(d, a, b, acc); }
    static __device__ __forceinline__ void rs64(float *d, const uint32_t *a, uint64_t b) { wgmma_rs_n64_f16(d, a, b); }
    static __device__ __forceinline__ void rs128(float *d, const uint32_t *a, uint64_t b) { wgmma_rs_n128_f16(d, a, b); }
    static __device__ __forceinline__ void rsk64(float *d, const uint32_t *a, uint64_t b, int acc) { wgmma_rsk_n64_f16(d, a, b, acc); }
    static __device__ __forceinline__ void rsk128(float *d, const uint32_t *a, uint64_t b, int acc) { wgmma_rsk_n128_f16(d, a, b, acc); }
};
#endif

#ifdef MOBA_WGMMA
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
#endif

/* Issues (does not wait for) S = Q K^T for a warpgroup's 64 rows: D/16 k-steps of m64nBNk16, k-step kk
 * 32 bytes into panel kk / 4 of the swizzled tiles q_s [64 x D] and k_s [BN x D]. One wgmma group.
 * The _desc form takes the tiles' descriptors (sw128_desc(tile, 16, 1024)): an offset into a tile is
 * added to the descriptor's address field (bytes / 16; a shared address fits its 14 bits, so nothing
 * carries out), which loops that reuse one base keep to an add per product instead of a conversion. */
template <typename T, int D, int BN, int ROWS>
__device__ __forceinline__ void sm90_issue_s_desc(uint64_t q_desc, uint64_t k_desc, float (&s)[BN / 8][4]) {
#ifdef MOBA_WGMMA
    fence_regs<BN / 2>(&s[0][0]);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wg<T>::ss64(&s[0][0], desc_add(q_desc, ((kk / 4) * (ROWS * 128) + (kk % 4) * 32) >> 4),
                    desc_add(k_desc, ((kk / 4) * (BN * 128) + (kk % 4) * 32) >> 4), kk > 0);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
/* The same with Q as register fragments (qa from load_q_frags): the tensor cores then read only K from
 * shared memory. With 64-key chunks the SS form moves 4 KiB per k-step through shared memory, as much as
 * its bandwidth allows in the step's tensor time; this form moves half of that. BN = 64 or 128 keys
 * (m64n64k16 / m64n128k16). */
template <typename T, int D, int BN>
__device__ __forceinline__ void sm90_issue_s_rs(const uint32_t (&qa)[D / 16][4], uint64_t k_desc, float (&s)[BN / 8][4]) {
#ifdef MOBA_WGMMA
    static_assert(BN == 64 || BN == 128, "key chunk");
    fence_regs<BN / 2>(&s[0][0]);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const uint64_t dk = desc_add(k_desc, ((kk / 4) * (BN * 128) + (kk % 4) * 32) >> 4);
        if (BN == 128) wg<T>::rsk128(&s[0][0], qa[kk], dk, kk > 0);
        else wg<T>::rsk64(&s[0][0], qa[kk], dk, kk > 0);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

/* A warpgroup's 64 rows of a swizzled [64 x D] tile as wgmma A fragments (the mma.sync A layout per
 * warp, rows 16 warp ..): ldmatrix x4 per 16 columns; lane l addresses row (l % 8) + 8 ((l / 8) % 2) of
 * its warp's 16 and the 16-byte chunk 2 kk + l / 16, found in its panel at chunk ^ (row % 8). */
template <int D>
__device__ __forceinline__ void load_q_frags(uint32_t (&qa)[D / 16][4], const char *q_s, int warp, int lane) {
    const int row = warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8;
    const char *base = q_s + row * 128;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const int ch = 2 * kk + lane / 16;
        moba_ldmatrix_x4(qa[kk], base + (ch / 8) * (64 * 128) + (((ch % 8) ^ (row % 8)) << 4));
    }
}

template <typename T, int D, int BN, int ROWS>
__device__ __forceinline__ void sm90_issue_s(const char *q_s, const char *k_s, float (&s)[BN / 8][4]) {
    sm90_issue_s_desc<T, D, BN, ROWS>(sw128_desc(q_s, 16, 1024), sw128_desc(k_s, 16, 1024), s);
}

/* Issues O += P V: BN/16 k-steps, P from registers; k-step kk = keys 16kk.. = 2048 bytes into v_s; V's
 * panels of 64 columns are BN * 128 bytes apart (leading offset), 8-key groups 1024 (stride).
 * v_desc = sw128_desc(v_s, BN * 128, 1024). */
template <typename T, int D, int BN>
__device__ __forceinline__ void sm90_issue_pv_desc(uint64_t v_desc, float (&acc)[D / 8][4],
                                                   const uint32_t (&pa)[BN / 16][4]) {
#ifdef MOBA_WGMMA
    fence_regs<D / 2>(&acc[0][0]);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        const uint64_t dv = desc_add(v_desc, (kk * 2048) >> 4);
        if (D == 128) wg<T>::rs128(&acc[0][0], pa[kk], dv);
        else wg<T>::rs64(&acc[0][0], pa[kk], dv);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <typename T, int D, int BN>
__device__ __forceinline__ void sm90_issue_pv(const char *v_s, float (&acc)[D / 8][4], const uint32_t (&pa)[BN / 16][4]) {
    sm90_issue_pv_desc<T, D, BN>(sw128_desc(v_s, BN * 128, 1024), acc, pa);
}

/* One K/V chunk of the FlashAttention update for a warpgroup's 64 rows, each product waited for:
 * S = Q K^T, online softmax (forward.h's arguments), O += P V. */
template <typename T, int D, int BN, int ROWS>
__device__ __forceinline__ void sm90_attend_chunk(const char *q_s, const char *k_s, const char *v_s,
                                                  float (&acc)[D / 8][4], float (&m)[2], float (&l)[2], bool take0,
                                                  bool take1, bool diag, int kcol0, int qpos0, float sl2) {
#ifdef MOBA_WGMMA
    float s[BN / 8][4];
    sm90_issue_s<T, D, BN, ROWS>(q_s, k_s, s);
    wg_wait<0>();
    fence_regs<BN / 2>(&s[0][0]);
    online_softmax(s, acc, m, l, take0, take1, diag, kcol0, qpos0, sl2);
    uint32_t pa[BN / 16][4];
    pack_p<T>(s, pa);
    sm90_issue_pv<T, D, BN>(v_s, acc, pa);
    wg_wait<0>();
    fence_regs<D / 2>(&acc[0][0]);
#endif
}

/* Like load_sw128, rows gathered: row r of the tile is src + rows[r].x * D (rows >= valid -> 0). */
template <int D, int R, typename T, int THREADS = SM90_THREADS>
__device__ __forceinline__ void load_sw128_gather(char *base, const T *src, const int2 *rows, int valid, int tid) {
    constexpr int chunks = D / 8, step = THREADS / chunks;
    static_assert(step % 8 == 0 && R % step == 0, "tile shape");
    const int col8 = tid % chunks, r0 = tid / chunks;
    char *dst = base + (col8 / 8) * (R * 128) + r0 * 128 + (((col8 % 8) ^ (r0 & 7)) << 4);
#pragma unroll
    for (int p = 0; p < R / step; p++) {
        const int r = r0 + p * step;
        const bool ok = r < valid;
        const T *s = ok ? src + (int64_t)__ldg(&rows[r].x) * D + col8 * 8 : src;
        moba_cp_async16(dst + p * step * 128, s, ok);
    }
}

#endif
