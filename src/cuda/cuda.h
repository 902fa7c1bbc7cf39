/*
 * Small helpers shared by the CUDA backend: error checks, the workspace plan, tensor-core fragments.
 *
 * Tensor-core tiles use mma.sync m16n8k16 (bf16/f16 in, fp32 accumulate). Fragment layout, with
 * g = lane / 4 and c = lane % 4:
 *   A 16x16 (row major): a0 (g, 2c..2c+1)  a1 (g+8, 2c..)  a2 (g, 2c+8..)  a3 (g+8, 2c+8..)
 *   B 16x8  (col major): b0 (k 2c..2c+1, n g)  b1 (k 2c+8.., n g)
 *   C 16x8            : c0,c1 (g, 2c..2c+1)  c2,c3 (g+8, 2c..2c+1)
 */
#ifndef MOBA_CUDA_H
#define MOBA_CUDA_H

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../layout.h" /* a C header without its own extern "C" */
#ifdef __cplusplus
}
#endif
#include "../backend.h"
#include "../error.h"

/* Returns MOBA_ERR_CUDA with the call's text and cudaGetErrorString from the enclosing function. */
#define MOBA_CUDA_TRY(call)                                                                        \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess)                                                                   \
            return moba_fail(MOBA_ERR_CUDA, "%s:%d: %s: %s", __FILE__, __LINE__, #call,            \
                             cudaGetErrorString(err_));                                            \
    } while (0)

/* After a launch: the launch error, if any (does not wait for the kernel). */
#define MOBA_CUDA_LAUNCHED() MOBA_CUDA_TRY(cudaGetLastError())

/* Query rows per tile of the routing kernel (4 warps x 16 rows) and of the forward kernel
 * (4 warps x 2 x 16 rows); tiles never cross a key block. */
#define MOBA_TILE_ROWS 64
#define MOBA_FWD_TILE_ROWS 128

/* Device copy of what the host knows about the varlen layout. */
typedef struct {
    const moba_tile *tiles;       /* [num_tiles] of MOBA_TILE_ROWS rows, heaviest (highest block) first */
    const moba_tile *ftiles;      /* [num_ftiles] of MOBA_FWD_TILE_ROWS rows, likewise */
    const int32_t *cu_seqlens;    /* [num_seqs + 1]                              */
    const int32_t *full_base;     /* [num_seqs + 1] first centroid slot of each sequence */
    int64_t num_tiles, num_ftiles;
} moba_cuda_layout;

/* Where everything lives inside the device workspace of one call (offsets in bytes). */
typedef struct {
    size_t tiles, ftiles, cu_seqlens, full_base, centroids, sel, topk_lists, total;
    int64_t num_tiles, num_ftiles;
    int sel_stride;            /* int32 entries per (head, token) in sel          */
    int lists_in_global;       /* top-k candidate lists do not fit shared memory */
    size_t upload_end;         /* the layout upload covers [0, upload_end)        */
    /* key-block-major forward (forward_kbm.cu); kbm = 0: none of these exist */
    int kbm;
    size_t fpairs;             /* int64 [num_ftiles + 1] (uploaded): history pairs before each 128-row tile */
    size_t kflags, kulist, kcbase, kpstart, klse, kcnt, koff, kntiles, ktiles, kplist, kpart_lse, kpart_o;
    int64_t kptot;             /* history pairs of one head (fpairs[num_ftiles])                 */
    int64_t kcap;              /* pairs one pass holds (partials)                                 */
    int64_t kstep, knpasses;   /* pass q: the units whose first pair is in [q * kstep, + kstep)  */
    int64_t ktile_cap, kng;    /* tile list entries; groups = Hkv * total_full_blocks             */
    int kunion;                /* union tiles possible: the ints per unit of kublk (0: none)      */
    size_t kublk, kqlist, knuq;
} moba_cuda_plan;

#ifdef __cplusplus
extern "C" {
#endif
/* Forward / backward: a supported call whose longest sequence fits the block bitmap (fn names the entry point). */
moba_status moba_cuda_check_call(const moba_call *c, const char *fn);
/* MOBA_ERR_INVALID_ARGUMENT naming the first of the n pointers that is not a multiple of its align. */
moba_status moba_cuda_check_aligned(const char *fn, int n, const char *const *names, const void *const *ptrs,
                                    const int *align);
void moba_cuda_make_plan(const moba_call *c, moba_op op, moba_cuda_plan *plan);
/* Uploads tiles / cu_seqlens / full_base (/ fpairs) into the workspace; fills *dl. */
moba_status moba_cuda_upload_layout(const moba_call *c, const moba_cuda_plan *plan, void *ws,
                                    moba_cuda_layout *dl);
/* Centroids then top-k selection into sel (stride sel_stride per row). */
moba_status moba_cuda_route_into(const moba_call *c, const moba_cuda_plan *plan, void *ws,
                                 const moba_cuda_layout *dl, const void *q, const void *k,
                                 int32_t *sel, int sel_stride);
/* moba_params.block_idx: the trivial selections (top_k == 1 or full attention) written in moba_route's
 * format, and a caller's selection copied into sel (stride entries per row) with invalid entries dropped. */
moba_status moba_cuda_trivial_selection(const moba_call *c, const moba_cuda_layout *dl, int32_t *out);
moba_status moba_cuda_import_selection(const moba_call *c, const moba_cuda_layout *dl, const int32_t *block_idx,
                                       int32_t *sel, int stride);
int moba_cuda_topk_list_fits_smem(int k1);
/* forward_kbm.cu: does this forward call take the key-block-major path where routing is spread out,
 * and its workspace pieces laid out from `off` (returns the end). */
int moba_cuda_kbm_enabled(const moba_call *c);
size_t moba_cuda_kbm_plan(const moba_call *c, moba_cuda_plan *plan, size_t off);
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__

/* Last index s < n with base[s] <= x (base non-decreasing, base[0] <= x): the segment holding x, the
 * last of several empty ones ending there skipped. */
template <typename I>
__device__ __forceinline__ int moba_seg_of(const I *base, int n, int64_t x) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (base[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* First key row (packed token index) of centroid slot `slot`: its sequence s is the last one whose
 * first slot full_base[s] is <= slot, and the slot is block slot - full_base[s] of it. */
__device__ __forceinline__ int64_t moba_slot_key0(const int32_t *cu, const int32_t *full_base, int num_seqs,
                                                  int64_t slot, int B) {
    const int s = moba_seg_of(full_base, num_seqs, slot);
    return cu[s] + (slot - full_base[s]) * (int64_t)B;
}

/* Storage type traits: bf16 and f16 share all code. */
template <typename T> struct moba_pack;
template <> struct moba_pack<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t two(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    static __device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 from_f32(float x) { return __float2bfloat16_rn(x); }
};
template <> struct moba_pack<__half> {
    static __device__ __forceinline__ uint32_t two(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    static __device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half from_f32(float x) { return __float2half_rn(x); }
};

/* d += a * b for one m16n8k16 tile. */
template <typename T> __device__ __forceinline__ void moba_mma(float *d, const uint32_t *a, const uint32_t *b);
template <> __device__ __forceinline__ void moba_mma<__nv_bfloat16>(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void moba_mma<__half>(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t moba_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* The first 1024-byte aligned byte at or after p (dynamic shared memory; 128-byte swizzle atoms), reached
 * by pointer arithmetic so that the compiler still knows the result is shared: through an integer round
 * trip every C++ access through it compiled to a generic ST.E / LD.E (queued like global memory) instead
 * of STS / LDS - 38 stores and 39 loads in the backward's dk/dv kernel. */
__device__ __forceinline__ char *moba_smem_align1024(unsigned char *p) {
    return reinterpret_cast<char *>(p) + ((0u - moba_smem_addr(p)) & 1023u);
}
__device__ __forceinline__ void moba_ldmatrix_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(moba_smem_addr(p)));
}
__device__ __forceinline__ void moba_ldmatrix_x4_trans(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(moba_smem_addr(p)));
}
/* 2^x on the special-function unit alone (ex2.approx.ftz: about 2 ulp, subnormal results flushed to 0).
 * exp2f adds a range check and two multiplies per call, which were a fifth of the attention kernels'
 * instructions per chunk; softmax weights below 2^-126 are 0 in any case. */
__device__ __forceinline__ float moba_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
/* 16-byte global -> shared copy; valid == 0 writes zeros instead (nothing is read). */
__device__ __forceinline__ void moba_cp_async16(void *dst, const void *src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(moba_smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void moba_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void moba_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Copies a [ROWS x D] tile (global row stride `stride` elements) into shared memory of row stride
 * D + 8 (the pad keeps ldmatrix free of bank conflicts); rows >= valid are zero-filled. All THREADS
 * threads take part; thread t always copies 16-byte piece t % (D/8) of rows t / (D/8) + p * step,
 * so its offsets are computed once (per-copy index arithmetic was a kernel's busiest pipe). */
template <int D, int ROWS, int THREADS, typename T>
__device__ __forceinline__ void moba_load_tile(T *smem, const T *gmem, int64_t stride, int valid, int tid) {
    constexpr int per_row = D / 8, step = THREADS / per_row;
    static_assert(THREADS % per_row == 0 && ROWS % step == 0, "tile shape");
    const int c = (tid % per_row) * 8, r0 = tid / per_row;
    T *dst = smem + r0 * (D + 8) + c;
    const T *src = gmem + (int64_t)r0 * stride + c;
    const int64_t src_step = (int64_t)step * stride;
#pragma unroll
    for (int p = 0; p < ROWS / step; p++) {
        bool ok = r0 + p * step < valid;
        moba_cp_async16(dst + p * step * (D + 8), ok ? src + p * src_step : gmem, ok);
    }
}

#endif /* __CUDACC__ */

#endif
