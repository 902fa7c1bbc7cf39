/*
 * Decode on the GPU: appending to KV caches, and attention of the newest tokens over them
 * (flash-decoding). The semantics are the CPU's (src/cpu/cache.c, src/cpu/decode.c, docs/decode.md).
 *
 * Append:
 *   copy_kernel      one thread per 16 bytes of a new K/V row -> its cache row (contiguous or paged);
 *   centroid_kernel  one CTA per (completed block, kv head), one thread per dim:
 *                    centroid = round_to_T( (sum_{r=0..B-1} k[block * B + r]) / B ), fp32 sum in key order,
 *                    bit-identical to the CPU append and to route.cu's centroid kernel.
 * Attend, per unit = (query, kv head, tile of up to 16 q heads of its group), two kernels:
 *   route_kernel     one CTA per unit: s_i = <q, centroid_i> for the history blocks i < j of its q heads,
 *                    fp32 with the 8 partial sums of cpu_dot, so the scores (and the routing) are the CPU's
 *                    bit for bit (a product of two bf16/f16 values is exact in fp32, so fma or not does not
 *                    matter); per q head the top_k - 1 best (higher score, then lower block, NaN lowest:
 *                    route.cu's 64-bit keys), found as the k-th largest key by k rounds of a warp max; the
 *                    union of the unit's heads' blocks, ascending, each with the mask of heads that take it,
 *                    own block last. full_attention (or top_k - 1 >= j): every block 0..j, no list. The
 *                    scores live in shared memory, so past DEC_FUSE_BLOCKS blocks per sequence the pair
 *                    score_kernel (one thread per block) + select_kernel (one CTA per unit) does the same;
 *   attend_kernel    the unit's keys (union blocks in order; full: 0..t) in 16-key tiles, dealt round robin
 *                    to nw warps (flash-decoding: batch 1 at 1M keys still fills every SM). A warp streams
 *                    its tiles of K and V through a cp.async ring (16-byte loads, STAGES tiles in flight),
 *                    S = Q K^T and O += P V on the tensor cores with the 16 heads as the M rows, so K/V are
 *                    read once per kv head. Each warp keeps a partial (m, l, acc),
 *                        m = max s,  l = sum 2^(s - m),  acc = sum 2^(s - m) v   (s in log2 units),
 *                    the CTA's 4 warps merge theirs in shared memory into one partial in the workspace, and
 *                    the unit's last CTA (a ticket per unit) combines them:
 *                        o = sum_c 2^(m_c - M) acc_c / L,  L = sum_c 2^(m_c - M) l_c,  lse = (M + log2 L) ln 2
 *                    (a unit of one CTA writes o directly). Units with many partials leave that to
 *                    combine_kernel, one CTA per (unit, q head).
 * The kernels are chained by programmatic dependent launch on sm_90 (dec_wait_prev / dec_launch_next).
 * The split changes the order of the softmax sums (and P is rounded to bf16/f16 for the tensor cores),
 * so the output matches prefill within bf16 tolerance, not bitwise (the CPU is the bitwise path).
 *
 * Page ids: the core does not check them on CUDA (block_table is device memory). A key row in a page
 * outside 0..num_pages-1 is never read or written: append skips the row (and leaves the centroid of its
 * block unwritten), attend treats the key as absent (masked out of the softmax).
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

extern "C" {
#include "../cache_backend.h"
}

#define DEC_ROWS 16       /* q heads per unit: the M of the mma tiles            */
#define DEC_WARPS 4       /* warps (chunks) per CTA of the attend kernel          */
#define DEC_STAGES 3      /* 16-key K/V tiles in flight per warp                  */
#define DEC_TARGET_WARPS 1024 /* chunks over all units: one wave of 2 CTAs x 4 warps on 132 SMs */
#define DEC_MIN_CHUNK 128
#define DEC_INLINE_Q 96       /* up to this many queries: (sequence, position) ride in the kernel arguments */

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* ---- shared device helpers ---- */

/* Cache row (in tokens) of token t of sequence s, or -1 when its page id is out of range. */
struct CacheGeom {
    const int32_t *table; /* NULL: contiguous */
    int64_t num_pages;
    int capacity, page_size, max_pages;
};
__device__ __forceinline__ int64_t cache_row(const CacheGeom &g, int s, int64_t t) {
    if (!g.table) return (int64_t)s * g.capacity + t;
    int64_t page = g.table[(int64_t)s * g.max_pages + t / g.page_size];
    if (page < 0 || page >= g.num_pages) return -1;
    return page * g.page_size + t % g.page_size;
}

static CacheGeom geom_of(const moba_cache_call *c) {
    const moba_cache_params *p = c->p;
    CacheGeom g;
    g.table = p->page_size > 0 ? c->block_table : NULL;
    g.num_pages = p->num_pages;
    g.capacity = p->capacity;
    g.page_size = p->page_size;
    g.max_pages = p->max_pages_per_seq;
    return g;
}

/* ---- append ---- */

/* meta: cu_new [n + 1] int32, seq_lens [n] int32 (before the append), done_base [n + 1] int64. */
__global__ void copy_kernel(const uint4 *__restrict__ k_new, const uint4 *__restrict__ v_new, uint4 *k_cache,
                            uint4 *v_cache, const int32_t *__restrict__ cu, const int32_t *__restrict__ lens, int n,
                            CacheGeom g, int pieces, int64_t total_pieces) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total_pieces;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t tok = i / pieces;
        int x = (int)(i % pieces);
        int s = moba_seg_of(cu, n + 1, tok);
        int64_t row = cache_row(g, s, lens[s] + tok - cu[s]);
        if (row < 0) continue; /* bad page id: skipped */
        k_cache[row * pieces + x] = k_new[i];
        v_cache[row * pieces + x] = v_new[i];
    }
}

template <typename T>
__global__ void centroid_kernel(const T *__restrict__ k_cache, T *cent, const int32_t *__restrict__ lens,
                                const int64_t *__restrict__ done_base, int n, CacheGeom g, int Hkv, int d, int B,
                                int slots) {
    const int64_t item = blockIdx.x;
    const int hk = blockIdx.y, x = threadIdx.x;
    const int s = moba_seg_of(done_base, n + 1, item);
    const int64_t block = lens[s] / B + (item - done_base[s]);
    /* sequential fp32 sum (the CPU's order); 16 loads in flight before they are added */
    float sum = 0.0f;
    bool bad = false;
    for (int r = 0; r < B; r += 16) {
        T v[16];
#pragma unroll
        for (int u = 0; u < 16; u++) {
            int64_t row = cache_row(g, s, block * B + r + u);
            bad |= row < 0;
            v[u] = row < 0 ? moba_pack<T>::from_f32(0.0f) : k_cache[(row * Hkv + hk) * d + x];
        }
#pragma unroll
        for (int u = 0; u < 16; u++) sum += moba_pack<T>::to_f32(v[u]);
    }
    if (bad) return; /* a key in a bad page: no centroid */
    cent[(((int64_t)s * slots + block) * Hkv + hk) * d + x] = moba_pack<T>::from_f32(__fdiv_rn(sum, (float)B));
}

extern "C" moba_status moba_cuda_cache_append(const moba_cache_call *c, const void *k_new, const void *v_new,
                                              void *k_cache, void *v_cache, void *centroids) {
    const moba_cache_params *p = c->p;
    const int n = p->num_seqs, Hkv = p->num_kv_heads, d = p->head_dim, B = p->block_size;
    cudaStream_t stream = (cudaStream_t)p->cuda_stream;
    static const char *const names[] = {"k_new", "v_new", "k_cache", "v_cache"};
    const void *const ptrs[] = {k_new, v_new, k_cache, v_cache};
    static const int align[] = {16, 16, 16, 16};
    moba_status st = moba_cuda_check_aligned("moba_cache_append", 4, names, ptrs, align);
    if (st != MOBA_OK) return st;

    /* host bookkeeping, uploaded in one piece */
    size_t meta_bytes = sizeof(int32_t) * (size_t)(2 * n + 1) + sizeof(int64_t) * (size_t)(n + 1) + 8;
    char *meta = (char *)malloc(meta_bytes);
    if (!meta) return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "moba_cache_append: out of host memory");
    size_t off_lens = sizeof(int32_t) * (size_t)(n + 1), off_done = (off_lens + sizeof(int32_t) * n + 7) & ~(size_t)7;
    int32_t *cu = (int32_t *)meta, *lens = (int32_t *)(meta + off_lens);
    int64_t *done = (int64_t *)(meta + off_done);
    done[0] = 0;
    for (int s = 0; s < n; s++) {
        cu[s] = c->cu[s];
        lens[s] = c->seq_lens[s];
        int64_t len = c->seq_lens[s], end = len + c->cu[s + 1] - c->cu[s];
        done[s + 1] = done[s] + end / B - len / B;
    }
    cu[n] = c->cu[n];
    const int64_t num_done = done[n];

    void *dmeta = NULL;
    cudaError_t e = cudaMallocAsync(&dmeta, meta_bytes, stream);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dmeta, meta, meta_bytes, cudaMemcpyHostToDevice, stream);
    free(meta); /* pageable source: the copy has staged it */
    if (e != cudaSuccess) {
        if (dmeta) cudaFreeAsync(dmeta, stream);
        return moba_fail(MOBA_ERR_CUDA, "moba_cache_append: uploading the lengths: %s", cudaGetErrorString(e));
    }
    const int32_t *dcu = (const int32_t *)dmeta, *dlens = (const int32_t *)((char *)dmeta + off_lens);
    const int64_t *ddone = (const int64_t *)((char *)dmeta + off_done);
    CacheGeom g = geom_of(c);

    const int pieces = (int)((size_t)Hkv * d * moba_dtype_size(p->dtype) / 16);
    const int64_t total_pieces = c->total * pieces;
    int64_t want = (total_pieces + 255) / 256;
    unsigned blocks = (unsigned)(want < 65536 * 8 ? want : 65536 * 8);
    copy_kernel<<<blocks, 256, 0, stream>>>((const uint4 *)k_new, (const uint4 *)v_new, (uint4 *)k_cache,
                                            (uint4 *)v_cache, dcu, dlens, n, g, pieces, total_pieces);
    e = cudaGetLastError();
    if (e == cudaSuccess && num_done > 0) {
        dim3 grid((unsigned)num_done, Hkv);
        if (p->dtype == MOBA_DTYPE_BF16)
            centroid_kernel<__nv_bfloat16><<<grid, d, 0, stream>>>((const __nv_bfloat16 *)k_cache,
                                                                   (__nv_bfloat16 *)centroids, dlens, ddone, n, g, Hkv,
                                                                   d, B, c->slots_per_seq);
        else
            centroid_kernel<__half><<<grid, d, 0, stream>>>((const __half *)k_cache, (__half *)centroids, dlens, ddone,
                                                            n, g, Hkv, d, B, c->slots_per_seq);
        e = cudaGetLastError();
    }
    cudaFreeAsync(dmeta, stream);
    if (e != cudaSuccess) return moba_fail(MOBA_ERR_CUDA, "moba_cache_append: launch: %s", cudaGetErrorString(e));
    return MOBA_OK;
}

/* ---- attend: the plan ---- */

#define DEC_FUSE_BLOCKS 512   /* up to this many blocks per sequence, one kernel scores and selects (route_kernel) */
/* Fold the combine into attend while a unit has at most DEC_FUSE_CTAS partials and CTAs x rows x d stays
 * below DEC_FUSE_PARTIALS: one CTA merging more is slower than combine_kernel (256 partials of one row:
 * 65 us against 33 us for full attention, batch 1, 128K, docs/decode.md). */
#define DEC_FUSE_CTAS 32
#define DEC_FUSE_PARTIALS 32768
#define ROUTE_THREADS 128 /* small enough to sit beside two attend CTAs on an SM (PDL launches attend early) */

typedef struct {
    int G, HT, Gt;        /* group size, head tiles per kv head, rows of a full tile (min(G, 16)) */
    int routed;           /* top_k - 1 > 0 and not full attention: scores and lists are needed */
    int k1;               /* top_k - 1, at most max_blocks                                      */
    int ucap;             /* union entries per unit                                              */
    int chunk, wmax, ctas; /* keys per warp, warps and CTAs (partials) per unit                   */
    int64_t units;
    size_t qinfo, scores, lists, uni, umask, uinfo, tickets, pml, pacc, total;
} dec_plan;

static void make_plan(const moba_cache_call *c, dec_plan *P) {
    const moba_cache_params *p = c->p;
    memset(P, 0, sizeof *P);
    P->G = c->group;
    P->HT = (P->G + DEC_ROWS - 1) / DEC_ROWS;
    P->Gt = P->G < DEC_ROWS ? P->G : DEC_ROWS;
    P->units = c->total * p->num_kv_heads * P->HT;
    int k1 = p->top_k - 1;
    P->k1 = k1 < c->max_blocks ? k1 : c->max_blocks;
    P->routed = !p->full_attention && P->k1 > 0;
    int64_t u = P->routed ? (int64_t)P->Gt * P->k1 + 1 : 1;
    P->ucap = (int)(u < c->max_blocks ? u : c->max_blocks);
    if (P->ucap < 1) P->ucap = 1;
    /* keys one unit can attend at most: the longest sequence, or its selected blocks */
    int64_t max_len = 0;
    for (int s = 0; s < p->num_seqs; s++)
        if (c->cu[s + 1] > c->cu[s] && c->seq_lens[s] > max_len) max_len = c->seq_lens[s];
    int64_t ub = max_len;
    if (!p->full_attention) {
        int64_t sel = (int64_t)P->ucap * p->block_size;
        if (sel < ub) ub = sel;
    }
    if (ub < 1) ub = 1;
    int64_t per_unit = DEC_TARGET_WARPS / (P->units > 0 ? P->units : 1);
    if (per_unit < 1) per_unit = 1;
    int64_t ch = (ub + per_unit - 1) / per_unit;
    ch = (ch + 15) / 16 * 16;
    if (ch < DEC_MIN_CHUNK) ch = DEC_MIN_CHUNK;
    if (ch > (int64_t)1 << 30) ch = (int64_t)1 << 30;
    P->chunk = (int)ch;
    P->wmax = (int)((ub + ch - 1) / ch);
    P->ctas = (P->wmax + DEC_WARPS - 1) / DEC_WARPS;

    size_t off = 0;
    const int64_t rows_all = c->total * p->num_q_heads;
    P->qinfo = off;
    off = align256(off + sizeof(int2) * (size_t)c->total);
    P->scores = off;
    if (P->routed) off = align256(off + sizeof(float) * (size_t)rows_all * c->max_blocks);
    P->lists = off;
    if (P->routed) off = align256(off + sizeof(int32_t) * (size_t)P->units * DEC_ROWS * P->k1);
    P->uni = off;
    off = align256(off + sizeof(int32_t) * (size_t)P->units * P->ucap);
    P->umask = off;
    off = align256(off + sizeof(uint32_t) * (size_t)P->units * P->ucap);
    P->uinfo = off;
    off = align256(off + sizeof(int4) * (size_t)P->units);
    P->tickets = off;
    off = align256(off + sizeof(unsigned) * (size_t)P->units);
    P->pml = off;
    off = align256(off + sizeof(float2) * (size_t)P->units * P->ctas * DEC_ROWS);
    P->pacc = off;
    off = align256(off + sizeof(float) * (size_t)P->units * P->ctas * DEC_ROWS * p->head_dim);
    P->total = off;
}

extern "C" size_t moba_cuda_cache_workspace_size(const moba_cache_call *c) {
    dec_plan P;
    make_plan(c, &P);
    return P.total;
}

struct DecArgs {
    const void *q, *k, *v, *cent;
    void *o;
    float *lse;
    const int2 *qinfo; /* per query: sequence, position t (in the workspace) ... */
    int2 qinline[DEC_INLINE_Q]; /* ... or here, when total <= DEC_INLINE_Q (no upload per call) */
    float *scores;     /* [total * Hq][max_blocks] */
    int32_t *lists;    /* [units][16][k1] */
    int32_t *uni;      /* [units][ucap] */
    uint32_t *umask;   /* [units][ucap] */
    int4 *uinfo;       /* per unit: all (every block 0..j), union entries, position t, keys */
    unsigned *tickets; /* per unit: attend CTAs done (zeroed by the routing kernel of the same call) */
    float2 *pml;       /* [units][ctas][16]: m, l of each CTA's keys */
    float *pacc;       /* [units][ctas][16][d] */
    CacheGeom g;
    int64_t total, units;
    int Hq, Hkv, G, HT, B, k1, ucap, chunk, wmax, ctas, max_blocks, slots, full;
    int select_smem; /* select_kernel keeps each row's scores in shared memory (max_blocks small enough) */
    int fuse;        /* the last attend CTA of a unit combines its partials (no combine_kernel) */
    int chunked;     /* each warp takes one contiguous chunk of the unit's tiles (else every nw-th tile) */
    float scale_log2;
};

/* Programmatic dependent launch (sm_90+; the host asks for it only when these kernels were built for it):
 * every decode kernel waits for the previous kernel of the stream before it touches the workspace or
 * anything the previous work wrote, and only then lets the next kernel launch, so a kernel that starts
 * early (its prologue reads only what existed before the call: q, the kernel arguments) is safe. */
__device__ __forceinline__ void dec_wait_prev() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void dec_launch_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* (.cg: attend reads it before its wait; a stale L1 line of the last call's table must not answer) */
__device__ __forceinline__ int2 query_info(const DecArgs &a, int64_t tq) {
    return a.total <= DEC_INLINE_Q ? a.qinline[tq] : __ldcg(a.qinfo + tq);
}

/* unit u -> query, kv head, head tile */
__device__ __forceinline__ void unit_of(const DecArgs &a, int64_t u, int64_t &tq, int &hk, int &ht) {
    ht = (int)(u % a.HT);
    int64_t r = u / a.HT;
    hk = (int)(r % a.Hkv);
    tq = r / a.Hkv;
}

/* What the routing kernels know of unit u before reading anything of the call's own making. */
struct DecUnit {
    int64_t tq;          /* query */
    int hk, ht, s, t, j; /* kv head, head tile, sequence, position, own block */
    int rows;            /* q heads of the tile */
    uint32_t all_rows;
};
__device__ __forceinline__ DecUnit dec_unit(const DecArgs &a, int64_t u) {
    DecUnit x;
    unit_of(a, u, x.tq, x.hk, x.ht);
    const int2 qi = query_info(a, x.tq);
    x.s = qi.x;
    x.t = qi.y;
    x.j = x.t / a.B;
    x.rows = min(DEC_ROWS, a.G - x.ht * DEC_ROWS);
    x.all_rows = (1u << x.rows) - 1;
    return x;
}
/* Zeroes the unit's ticket (attend's last-CTA count; the workspace starts as anything) and, when the unit
 * attends every block 0..j (full attention, or top_k - 1 >= j), says so in uinfo: true = nothing to rank. */
__device__ __forceinline__ bool dec_route_start(const DecArgs &a, int64_t u, const DecUnit &x) {
    if (threadIdx.x == 0) a.tickets[u] = 0;
    if (!a.full && !(a.k1 > 0 && a.k1 >= x.j)) return false;
    if (threadIdx.x == 0) a.uinfo[u] = make_int4(1, x.j + 1, x.t, x.t + 1);
    return true;
}

/* A float as an int that orders like the float, NaN lowest, -0 == +0 (route.cu). */
__device__ __forceinline__ int order_key(float s) {
    if (s != s) return INT_MIN;
    if (s == 0.0f) return 0;
    int b = __float_as_int(s);
    return b >= 0 ? b : b ^ 0x7fffffff;
}
/* Larger = better: score order, then the lower block; all distinct. */
__device__ __forceinline__ long long cand_key(float s, int blk) {
    return (long long)order_key(s) * 4294967296LL + (long long)(0xffffffffu - (unsigned)blk);
}
/* Largest key of the warp: two redux.sync (signed high word, then the unsigned low word among the lanes
 * that hold the largest high word) instead of five 64-bit shuffle rounds. */
__device__ __forceinline__ long long warp_max_key(long long k) {
    const int hi = (int)(k >> 32);
    const unsigned lo = (unsigned)k;
    const int mh = __reduce_max_sync(0xffffffffu, hi);
    const unsigned ml = __reduce_max_sync(0xffffffffu, hi == mh ? lo : 0u);
    return (long long)mh * 4294967296LL + (long long)ml;
}
/* The k-th largest of the row's keys cand_key(sc[i], i), i < j (j > k >= 1), by k rounds of "largest
 * below the last": one warp. */
__device__ __forceinline__ long long kth_key(const float *sc, int j, int k, int lane) {
    long long prev = LLONG_MAX;
    for (int round = 0; round < k; round++) {
        long long best = LLONG_MIN;
#pragma unroll 4
        for (int i = lane; i < j; i += 32) {
            long long key = cand_key(sc[i], i);
            if (key < prev && key > best) best = key;
        }
        prev = warp_max_key(best);
    }
    return prev;
}

/* kth_key for j <= 32 * PER: each lane keeps its keys in registers, and a round is a tree of maxima over
 * them (no chain of dependent compares), then warp_max_key. */
template <int PER>
__device__ __forceinline__ long long kth_key_regs(const float *sc, int j, int k, int lane) {
    long long key[PER];
#pragma unroll
    for (int x = 0; x < PER; x++) {
        const int i = lane + 32 * x;
        key[x] = i < j ? cand_key(sc[i], i) : LLONG_MIN;
    }
    long long prev = LLONG_MAX;
    for (int round = 0; round < k; round++) {
        long long v[PER];
#pragma unroll
        for (int x = 0; x < PER; x++) v[x] = key[x] < prev ? key[x] : LLONG_MIN;
#pragma unroll
        for (int h = 1; h < PER; h *= 2)
#pragma unroll
            for (int x = 0; x < PER; x += 2 * h) v[x] = v[x] > v[x + h] ? v[x] : v[x + h];
        prev = warp_max_key(v[0]);
    }
    return prev;
}

/* <q, centroid> with cpu_dot's 8 partial sums (element x into x % 8) and its final tree: the CPU's bits. */
template <typename T, int D>
__device__ __forceinline__ float route_dot(const float *qg, const uint4 *cv) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int x = 0; x < D / 8; x++) {
        const T *e = reinterpret_cast<const T *>(&cv[x]);
#pragma unroll
        for (int l = 0; l < 8; l++) acc[l] = fmaf(qg[x * 8 + l], moba_pack<T>::to_f32(e[l]), acc[l]);
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* One thread per (history block i, query, kv head): the scores of the group's q heads. */
template <typename T, int D>
__global__ void __launch_bounds__(128) score_kernel(DecArgs a) {
    extern __shared__ float qs[]; /* [G][D] */
    dec_wait_prev();
    dec_launch_next();
    const int64_t tq = blockIdx.x / a.Hkv;
    const int hk = (int)(blockIdx.x % a.Hkv);
    const int2 qi = query_info(a, tq);
    const int j = qi.y / a.B;
    if (a.k1 >= j) return; /* every history block is taken: nothing to rank */
    const T *q = (const T *)a.q + (tq * a.Hq + (int64_t)hk * a.G) * D;
    for (int x = threadIdx.x; x < a.G * D; x += blockDim.x) qs[x] = moba_pack<T>::to_f32(q[x]);
    __syncthreads();
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= j) return;
    const uint4 *cen = (const uint4 *)((const T *)a.cent + (((int64_t)qi.x * a.slots + i) * a.Hkv + hk) * D);
    uint4 cv[D / 8];
#pragma unroll
    for (int x = 0; x < D / 8; x++) cv[x] = cen[x];
    for (int gq = 0; gq < a.G; gq++)
        a.scores[(tq * a.Hq + (int64_t)hk * a.G + gq) * a.max_blocks + i] = route_dot<T, D>(qs + gq * D, cv);
}

/* One CTA per unit: each warp ranks a head's history blocks, then thread 0 merges the lists. */
__global__ void __launch_bounds__(128) select_kernel(DecArgs a) {
    extern __shared__ float sel_smem[]; /* [4 warps][max_blocks] when a.select_smem */
    dec_wait_prev();
    dec_launch_next();
    const int64_t u = blockIdx.x;
    const DecUnit U = dec_unit(a, u);
    const int64_t tq = U.tq;
    const int hk = U.hk, ht = U.ht, t = U.t, j = U.j, B = a.B, rows = U.rows;
    const uint32_t all_rows = U.all_rows;
    if (dec_route_start(a, u, U)) return;
    int32_t *lists = a.lists + u * DEC_ROWS * (int64_t)a.k1;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k1 = a.k1;
    for (int r = warp; r < rows && k1 > 0; r += blockDim.x / 32) {
        const int h = hk * a.G + ht * DEC_ROWS + r;
        const float *sc = a.scores + (tq * a.Hq + h) * a.max_blocks;
        if (a.select_smem) { /* the row's scores to shared memory: the k rounds below re-read them */
            float *mine = sel_smem + warp * a.max_blocks;
#pragma unroll 8
            for (int i = lane; i < j; i += 32) mine[i] = sc[i];
            __syncwarp();
            sc = mine;
        }
        const long long prev = kth_key(sc, j, k1, lane);
        int n = 0; /* the kept blocks in ascending order */
        for (int base = 0; base < j; base += 32) {
            int i = base + lane;
            bool take = i < j && cand_key(sc[i], i) >= prev;
            unsigned m = __ballot_sync(0xffffffffu, take);
            if (take) lists[r * k1 + n + __popc(m & ((1u << lane) - 1))] = i;
            n += __popc(m);
        }
        __syncwarp(); /* the next row may overwrite this warp's scores */
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    /* union of the rows' ascending lists, each block with the rows that take it; own block last */
    int pos[DEC_ROWS];
    for (int r = 0; r < DEC_ROWS; r++) pos[r] = 0;
    int32_t *uni = a.uni + u * a.ucap;
    uint32_t *umask = a.umask + u * a.ucap;
    int nu = 0;
    for (;;) {
        int lo = INT_MAX;
        for (int r = 0; r < rows; r++)
            if (pos[r] < k1 && lists[r * k1 + pos[r]] < lo) lo = lists[r * k1 + pos[r]];
        if (lo == INT_MAX) break;
        uint32_t m = 0;
        for (int r = 0; r < rows; r++)
            if (pos[r] < k1 && lists[r * k1 + pos[r]] == lo) m |= 1u << r, pos[r]++;
        uni[nu] = lo;
        umask[nu] = m;
        nu++;
    }
    uni[nu] = j;
    umask[nu] = all_rows;
    nu++;
    a.uinfo[u] = make_int4(0, nu, t, (nu - 1) * B + t % B + 1);
}

/* score_kernel + select_kernel in one CTA per unit, for caches of at most DEC_FUSE_BLOCKS blocks (the
 * unit's scores fit shared memory): the same scores (route_dot), the same k-th key per row, and the union
 * built from a mask per block (bit r: row r keeps it) instead of merging lists: the same uni/umask. Also
 * the not-routed calls (full attention, top_k 1, top_k - 1 >= j), whatever the block count. */
template <typename T, int D>
__global__ void __launch_bounds__(ROUTE_THREADS) route_kernel(DecArgs a) {
    extern __shared__ float rsm[]; /* routed: q [rows][D] f32, scores [rows][j], masks [j] */
    const int64_t u = blockIdx.x;
    const DecUnit U = dec_unit(a, u);
    const int64_t tq = U.tq;
    const int hk = U.hk, ht = U.ht, t = U.t, j = U.j, k1 = a.k1, rows = U.rows;
    const uint32_t all_rows = U.all_rows;
    dec_wait_prev();
    dec_launch_next();
    if (dec_route_start(a, u, U)) return;
    int32_t *uni = a.uni + u * a.ucap;
    uint32_t *umask = a.umask + u * a.ucap;
    if (k1 == 0) { /* top_k 1: the own block */
        if (threadIdx.x == 0) {
            uni[0] = j;
            umask[0] = all_rows;
            a.uinfo[u] = make_int4(0, 1, t, t % a.B + 1);
        }
        return;
    }
    float *qs = rsm, *sc = qs + rows * D;
    uint32_t *hm = reinterpret_cast<uint32_t *>(sc + rows * j);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const uint4 *cen0 = (const uint4 *)((const T *)a.cent + ((int64_t)U.s * a.slots * a.Hkv + hk) * D);
    const int64_t cstride = (int64_t)a.Hkv * D / 8; /* uint4 between two blocks' centroids */
    uint4 cv[D / 8];
    if (tid < j) /* the first centroid in flight while q is staged */
#pragma unroll
        for (int x = 0; x < D / 8; x++) cv[x] = cen0[tid * cstride + x];
    const T *q = (const T *)a.q + (tq * a.Hq + (int64_t)hk * a.G + ht * DEC_ROWS) * D;
    for (int x = tid; x < rows * D; x += ROUTE_THREADS) qs[x] = moba_pack<T>::to_f32(q[x]);
    for (int i = tid; i < j; i += ROUTE_THREADS) hm[i] = 0;
    __syncthreads();
    for (int i = tid; i < j; i += ROUTE_THREADS) {
        if (i != tid)
#pragma unroll
            for (int x = 0; x < D / 8; x++) cv[x] = cen0[i * cstride + x];
        for (int r = 0; r < rows; r++) sc[r * j + i] = route_dot<T, D>(qs + r * D, cv);
    }
    __syncthreads();
    for (int r = warp; r < rows; r += ROUTE_THREADS / 32) {
        const float *s = sc + r * j;
        const long long prev = kth_key_regs<DEC_FUSE_BLOCKS / 32>(s, j, k1, lane);
        for (int i = lane; i < j; i += 32)
            if (cand_key(s[i], i) >= prev) atomicOr(&hm[i], 1u << r);
    }
    __syncthreads();
    if (warp != 0) return;
    int nu = 0; /* the union in ascending order, then the own block */
    for (int base = 0; base < j; base += 32) {
        const int i = base + lane;
        const uint32_t m = i < j ? hm[i] : 0u;
        const unsigned bal = __ballot_sync(0xffffffffu, m != 0);
        if (m) {
            const int at = nu + __popc(bal & ((1u << lane) - 1));
            uni[at] = i;
            umask[at] = m;
        }
        nu += __popc(bal);
    }
    if (lane == 0) {
        uni[nu] = j;
        umask[nu] = all_rows;
        a.uinfo[u] = make_int4(0, nu + 1, t, nu * a.B + t % a.B + 1);
    }
}

/* o and lse of row r (q head h0 + r) of query tq from its merged (M, L, sum 2^(s - M) v) */
template <typename T, int D>
__device__ __forceinline__ void dec_store_out(const DecArgs &a, int64_t tq, int h, int x, float o, float M, float L) {
    ((T *)a.o)[(tq * a.Hq + h) * D + x] = moba_pack<T>::from_f32(o / L);
    if (a.lse && x == 0) a.lse[(int64_t)h * a.total + tq] = (M + log2f(L)) * 0.69314718055994531f;
}

/* One warp per chunk of a unit's keys; partial (m, l, acc) of its 16 rows to the workspace. With a.fuse,
 * the unit's last CTA to finish (a ticket per unit) merges the partials and writes o and lse; a unit of
 * one CTA writes them directly. */
template <typename T, int D>
__global__ void __launch_bounds__(DEC_WARPS * 32) attend_kernel(DecArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int LD = D + 8; /* padded row: ldmatrix without bank conflicts */
    T *qs = reinterpret_cast<T *>(smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    T *kv = qs + DEC_ROWS * LD + warp * DEC_STAGES * 2 * 16 * LD; /* this warp's ring: [stage][K, V][16][LD] */

    const int64_t u = blockIdx.x;
    int64_t tq;
    int hk, ht;
    unit_of(a, u, tq, hk, ht);
    const int s = query_info(a, tq).x;
    const int rows = min(DEC_ROWS, a.G - ht * DEC_ROWS);
    const int h0 = hk * a.G + ht * DEC_ROWS;

    /* Q tile (rows >= rows are zero), before the wait: q predates the call. Through L2 (.cg): a CTA that
     * starts early must not see an L1 line of an older q. */
    const T *q = (const T *)a.q + (tq * a.Hq + h0) * (int64_t)D;
    for (int x = threadIdx.x; x < DEC_ROWS * (D / 8); x += blockDim.x) {
        int r = x / (D / 8), p = x % (D / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < rows) v = __ldcg(reinterpret_cast<const uint4 *>(q + (int64_t)r * D) + p);
        *reinterpret_cast<uint4 *>(qs + r * LD + p * 8) = v;
    }
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        moba_ldmatrix_x4(qf[kk], qs + ((lane % 8) + ((lane / 8) & 1) * 8) * LD + kk * 16 + (lane / 16) * 8);

    dec_wait_prev(); /* the unit's blocks (uni, umask, uinfo) and its ticket */
    const int4 info = a.uinfo[u];
    const int all = info.x, t = info.z, keys = info.w;
    const int nw = (keys + a.chunk - 1) / a.chunk; /* warps with keys (keys, chunk < 2^31) */
    const int np = (nw + DEC_WARPS - 1) / DEC_WARPS; /* CTAs with keys */
    if ((int)blockIdx.y >= np) return; /* the whole CTA is past the unit's keys */

    /* The unit's 16-key tiles go to its nw warps round robin: at any time the warps of a unit read one
     * stretch of its keys together, as a streaming copy does (MOBA_CUDA_DECODE_CHUNKS=1: one contiguous
     * chunk per warp instead; docs/decode.md compares them). 0 tiles: the warp only joins the merge. */
    const int w = blockIdx.y * DEC_WARPS + warp, ntu = (keys + 15) / 16, cht = a.chunk / 16;
    int t0, tstep, ntiles;
    if (a.chunked) {
        t0 = w * cht;
        tstep = 1;
        ntiles = w < nw ? min(cht, ntu - t0) : 0;
    } else {
        t0 = w;
        tstep = nw;
        ntiles = w < nw ? (ntu - w + nw - 1) / nw : 0;
    }
    const int32_t *uni = a.uni + u * a.ucap;
    const uint32_t *umask = a.umask + u * a.ucap;
    const uint32_t all_rows = (1u << rows) - 1;
    const T *kc = (const T *)a.k, *vc = (const T *)a.v;

    /* key index k of the unit -> its position in the sequence, and the rows that take it */
    auto tile_pos = [&](int it, int64_t &p0, uint32_t &hm) {
        const int k = (t0 + it * tstep) * 16, ui = k / a.B; /* 32-bit: a 64-bit division per tile cost */
        const int blk = all ? ui : uni[ui];
        hm = all ? all_rows : umask[ui];
        p0 = (int64_t)blk * a.B + (k - ui * a.B);
    };
    /* per lane: piece pc of rows r0, r0 + RS, ... of a tile */
    constexpr int PR = D / 8, RS = 32 / PR, NR = 16 / RS;
    const int pc = lane % PR, r0 = lane / PR;
    auto load_tile = [&](int it) {
        int64_t p0;
        uint32_t hm;
        tile_pos(it, p0, hm);
        T *ks = kv + (it % DEC_STAGES) * 2 * 16 * LD, *vs = ks + 16 * LD;
#pragma unroll
        for (int i = 0; i < NR; i++) {
            int r = r0 + i * RS;
            int64_t pos = p0 + r;
            int64_t row = pos <= t ? cache_row(a.g, s, pos) : -1;
            bool ok = row >= 0;
            int64_t at = ok ? (row * a.Hkv + hk) * D + pc * 8 : 0;
            moba_cp_async16(ks + r * LD + pc * 8, kc + at, ok);
            moba_cp_async16(vs + r * LD + pc * 8, vc + at, ok);
        }
    };

    float acc[D / 8][4];
#pragma unroll
    for (int x = 0; x < D / 8; x++) acc[x][0] = acc[x][1] = acc[x][2] = acc[x][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

#pragma unroll
    for (int i = 0; i < DEC_STAGES - 1; i++) {
        if (i < ntiles) load_tile(i);
        moba_cp_async_commit();
    }
    for (int it = 0; it < ntiles; it++) {
        moba_cp_async_wait<DEC_STAGES - 2>();
        __syncwarp(); /* tile it has landed for every lane; tile it - 1 is consumed */
        if (it + DEC_STAGES - 1 < ntiles) load_tile(it + DEC_STAGES - 1);
        moba_cp_async_commit();

        int64_t p0;
        uint32_t hm;
        tile_pos(it, p0, hm);
        /* keys of the tile present: <= t and in a good page (lane x < 16 checks key x) */
        bool kok = false;
        if (lane < 16) {
            int64_t pos = p0 + lane;
            kok = pos <= t && cache_row(a.g, s, pos) >= 0;
        }
        const uint32_t km = __ballot_sync(0xffffffffu, kok);
        const T *ks = kv + (it % DEC_STAGES) * 2 * 16 * LD, *vs = ks + 16 * LD;

        float sc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t b[4];
            moba_ldmatrix_x4(b, ks + ((lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) & 1) * 8);
            moba_mma<T>(sc[0], qf[kk], b);
            moba_mma<T>(sc[1], qf[kk], b + 2);
        }
        /* online softmax over the tile, rows g (e = 0, 1) and g + 8 (e = 2, 3) */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = nt * 8 + 2 * c + (e & 1), row = g + (e >> 1) * 8;
                bool ok = ((km >> key) & 1) && ((hm >> row) & 1);
                float x = ok ? sc[nt][e] * a.scale_log2 : -INFINITY;
                sc[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float alpha[2], mn[2];
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));
            mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
            mn[rr] = fmaxf(m[rr], mx[rr]);
            alpha[rr] = mn[rr] == -INFINITY ? 1.0f : exp2f(m[rr] - mn[rr]);
            m[rr] = mn[rr];
            l[rr] *= alpha[rr];
        }
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float mr = mn[e >> 1];
                float pv = mr == -INFINITY ? 0.0f : exp2f(sc[nt][e] - mr);
                sc[nt][e] = pv;
                l[e >> 1] += pv;
            }
#pragma unroll
        for (int x = 0; x < D / 8; x++) {
            acc[x][0] *= alpha[0];
            acc[x][1] *= alpha[0];
            acc[x][2] *= alpha[1];
            acc[x][3] *= alpha[1];
        }
        uint32_t pa[4] = {moba_pack<T>::two(sc[0][0], sc[0][1]), moba_pack<T>::two(sc[0][2], sc[0][3]),
                          moba_pack<T>::two(sc[1][0], sc[1][1]), moba_pack<T>::two(sc[1][2], sc[1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            uint32_t bv[4];
            moba_ldmatrix_x4_trans(bv, vs + ((lane % 8) + ((lane / 8) & 1) * 8) * LD + dp * 16 + (lane / 16) * 8);
            moba_mma<T>(acc[2 * dp], pa, bv);
            moba_mma<T>(acc[2 * dp + 1], pa, bv + 2);
        }
    }
    moba_cp_async_wait<0>();
    dec_launch_next(); /* only the merge is left: the next kernel may take the SMs as they free */

#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
        l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
    }
    /* merge the CTA's warps in shared memory (the K/V rings are free now): one partial per CTA */
    __syncthreads();
    float *macc = reinterpret_cast<float *>(qs + DEC_ROWS * LD); /* [warp][16][D] */
    float2 *mml = reinterpret_cast<float2 *>(macc + DEC_WARPS * DEC_ROWS * D); /* [warp][16] */
    float *cm = reinterpret_cast<float *>(mml + DEC_WARPS * DEC_ROWS);      /* [M, L][16] of the unit */
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int row = g + rr * 8;
        if (c == 0) mml[warp * DEC_ROWS + row] = make_float2(m[rr], l[rr]);
        float *dst = macc + (warp * DEC_ROWS + row) * D;
#pragma unroll
        for (int x = 0; x < D / 8; x++)
            *reinterpret_cast<float2 *>(dst + x * 8 + 2 * c) = make_float2(acc[x][2 * rr], acc[x][2 * rr + 1]);
    }
    __syncthreads();
    const bool direct = a.fuse && np == 1; /* the unit's only CTA: o and lse from here */
    const int64_t base = (u * a.ctas + blockIdx.y) * DEC_ROWS;
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D, x = i % D;
        float M = -INFINITY;
#pragma unroll
        for (int v = 0; v < DEC_WARPS; v++) M = fmaxf(M, mml[v * DEC_ROWS + r].x);
        float L = 0.0f, o = 0.0f;
        if (M != -INFINITY)
#pragma unroll
            for (int v = 0; v < DEC_WARPS; v++) {
                float2 ml = mml[v * DEC_ROWS + r];
                float f = ml.x == -INFINITY ? 0.0f : exp2f(ml.x - M);
                L += f * ml.y;
                o += f * macc[(v * DEC_ROWS + r) * D + x];
            }
        if (direct) {
            dec_store_out<T, D>(a, tq, h0 + r, x, o, M, L);
        } else {
            a.pacc[(base + r) * D + x] = o;
            if (x == 0) a.pml[base + r] = make_float2(M, L);
        }
    }
    if (!a.fuse || direct) return;

    /* the last CTA of the unit to get here merges the np partials (the classic last-block reduction):
     * each thread's partial writes are fenced before the ticket is taken */
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(a.tickets + u, 1u) == (unsigned)np - 1;
        if (last) __threadfence();
    }
    __syncthreads();
    if (!last) return;
    const float2 *pml = a.pml + u * a.ctas * DEC_ROWS;
    const float *pacc = a.pacc + u * a.ctas * DEC_ROWS * D;
    if ((int)threadIdx.x < rows) { /* per row: M = max m, L = sum 2^(m - M) l (other SMs wrote these: .cg) */
        const int r = threadIdx.x;
        float M = -INFINITY, L = 0.0f;
#pragma unroll 8
        for (int p = 0; p < np; p++) M = fmaxf(M, __ldcg(pml + p * DEC_ROWS + r).x);
        if (M != -INFINITY)
#pragma unroll 8
            for (int p = 0; p < np; p++) {
                float2 ml = __ldcg(pml + p * DEC_ROWS + r);
                L += (ml.x == -INFINITY ? 0.0f : exp2f(ml.x - M)) * ml.y;
            }
        cm[r] = M;
        cm[DEC_ROWS + r] = L;
    }
    __syncthreads();
    /* items = (row, 4 columns); few items: ng groups of threads split the partials, then add up */
    constexpr int C4 = D / 4;
    const int items = rows * C4, nthr = blockDim.x;
    int ng = items >= nthr ? 1 : nthr / items;
    if (ng > np) ng = np;
    float4 *red = reinterpret_cast<float4 *>(macc); /* [ng][items] */
    for (int it = threadIdx.x; it < items * ng; it += nthr) {
        const int grp = it / items, item = it % items, r = item / C4, col = (item % C4) * 4;
        const float M = cm[r];
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (M != -INFINITY)
#pragma unroll 4
            for (int p = grp; p < np; p += ng) {
                float2 ml = __ldcg(pml + p * DEC_ROWS + r);
                float f = ml.x == -INFINITY ? 0.0f : exp2f(ml.x - M);
                float4 v = __ldcg(reinterpret_cast<const float4 *>(pacc + (p * DEC_ROWS + r) * D + col));
                o.x += f * v.x;
                o.y += f * v.y;
                o.z += f * v.z;
                o.w += f * v.w;
            }
        if (ng == 1) {
            const float L = cm[DEC_ROWS + r];
            dec_store_out<T, D>(a, tq, h0 + r, col, o.x, M, L);
            dec_store_out<T, D>(a, tq, h0 + r, col + 1, o.y, M, L);
            dec_store_out<T, D>(a, tq, h0 + r, col + 2, o.z, M, L);
            dec_store_out<T, D>(a, tq, h0 + r, col + 3, o.w, M, L);
        } else {
            red[grp * items + item] = o;
        }
    }
    if (ng == 1) return;
    __syncthreads();
    for (int item = threadIdx.x; item < items; item += nthr) {
        const int r = item / C4, col = (item % C4) * 4;
        float4 o = red[item];
        for (int gI = 1; gI < ng; gI++) {
            float4 v = red[gI * items + item];
            o.x += v.x;
            o.y += v.y;
            o.z += v.z;
            o.w += v.w;
        }
        const float M = cm[r], L = cm[DEC_ROWS + r];
        dec_store_out<T, D>(a, tq, h0 + r, col, o.x, M, L);
        dec_store_out<T, D>(a, tq, h0 + r, col + 1, o.y, M, L);
        dec_store_out<T, D>(a, tq, h0 + r, col + 2, o.z, M, L);
        dec_store_out<T, D>(a, tq, h0 + r, col + 3, o.w, M, L);
    }
}

/* Without a.fuse (many partials per unit): one CTA per (unit, row), the LSE-weighted sum of the unit's CTA
 * partials. 256 threads = NG groups of D / 4 threads, group x taking partials x, x + NG, ... (float4
 * columns), then summed across groups. */
#define COMBINE_THREADS 256
template <typename T, int D>
__global__ void __launch_bounds__(COMBINE_THREADS) combine_kernel(DecArgs a) {
    constexpr int TPR = D / 4, NG = COMBINE_THREADS / TPR;
    __shared__ float red[NG][D];
    __shared__ float redl[NG], redm[COMBINE_THREADS / 32];
    dec_wait_prev();
    dec_launch_next();
    const int64_t u = blockIdx.x;
    const int r = blockIdx.y;
    int64_t tq;
    int hk, ht;
    unit_of(a, u, tq, hk, ht);
    const int rows = min(DEC_ROWS, a.G - ht * DEC_ROWS);
    if (r >= rows) return;
    const int64_t nw = (a.uinfo[u].w + a.chunk - 1) / a.chunk;
    const int np = (int)((nw + DEC_WARPS - 1) / DEC_WARPS);
    const int tid = threadIdx.x;
    const float2 *pml = a.pml + u * a.ctas * DEC_ROWS + r;
    float M = -INFINITY;
    for (int p = tid; p < np; p += COMBINE_THREADS) M = fmaxf(M, pml[(int64_t)p * DEC_ROWS].x);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    if (tid % 32 == 0) redm[tid / 32] = M;
    __syncthreads();
    M = redm[0];
#pragma unroll
    for (int i = 1; i < COMBINE_THREADS / 32; i++) M = fmaxf(M, redm[i]);

    const int grp = tid / TPR, col = (tid % TPR) * 4;
    float L = 0.0f;
    float4 o = make_float4(0, 0, 0, 0);
#pragma unroll 4
    for (int p = grp; p < np; p += NG) {
        float2 ml = pml[(int64_t)p * DEC_ROWS];
        float f = ml.x == -INFINITY ? 0.0f : exp2f(ml.x - M);
        float4 v = *reinterpret_cast<const float4 *>(a.pacc + ((u * a.ctas + p) * DEC_ROWS + r) * D + col);
        L += f * ml.y;
        o.x += f * v.x;
        o.y += f * v.y;
        o.z += f * v.z;
        o.w += f * v.w;
    }
    red[grp][col] = o.x;
    red[grp][col + 1] = o.y;
    red[grp][col + 2] = o.z;
    red[grp][col + 3] = o.w;
    if (tid % TPR == 0) redl[grp] = L;
    __syncthreads();
    if (tid >= D) return;
    float sum = 0.0f, Lt = 0.0f;
#pragma unroll
    for (int gI = 0; gI < NG; gI++) sum += red[gI][tid], Lt += redl[gI];
    dec_store_out<T, D>(a, tq, hk * a.G + ht * DEC_ROWS + r, tid, sum, M, Lt);
}

/* Diagnostic switches, read per call (docs/decode.md measures with them; the test runs every combination):
 * MOBA_CUDA_DECODE_NO_PDL=1 launches the kernels plainly, MOBA_CUDA_DECODE_SPLIT=1 runs the four-kernel
 * pipeline (score, select, attend, combine) instead of route_kernel and the combine folded into attend,
 * MOBA_CUDA_DECODE_CHUNKS=1 gives each attend warp a contiguous chunk of keys. All three: the old path. */
static int dec_env(const char *name) {
    const char *e = getenv(name);
    return e && *e && *e != '0';
}

/* Programmatic dependent launch only where the kernels carry griddepcontrol: code built for sm_90+ (the
 * compute_80 PTX, JIT-compiled on a newer GPU, has none; launched early it would race). */
static int dec_use_pdl(void) {
    if (dec_env("MOBA_CUDA_DECODE_NO_PDL")) return 0;
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, select_kernel) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return fa.ptxVersion >= 90;
}

static cudaError_t dec_launch(void (*kernel)(DecArgs), dim3 grid, int threads, size_t smem, cudaStream_t stream,
                              int pdl, const DecArgs &a) {
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = grid;
    cfg.blockDim = dim3((unsigned)threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, a);
}

template <typename T, int D>
static moba_status launch_attend(const moba_cache_call *c, const dec_plan &P, DecArgs &a, cudaStream_t stream) {
    const moba_cache_params *p = c->p;
    const int split = dec_env("MOBA_CUDA_DECODE_SPLIT"), pdl = dec_use_pdl();
    a.fuse = !split && P.ctas <= DEC_FUSE_CTAS && (int64_t)P.ctas * P.Gt * D <= DEC_FUSE_PARTIALS;
    a.chunked = dec_env("MOBA_CUDA_DECODE_CHUNKS");
    if (!split && (!P.routed || c->max_blocks <= DEC_FUSE_BLOCKS)) {
        size_t smem = P.routed ? sizeof(float) * ((size_t)P.Gt * D + (size_t)(P.Gt + 1) * c->max_blocks) : 0;
        MOBA_CUDA_TRY(dec_launch(route_kernel<T, D>, dim3((unsigned)P.units), ROUTE_THREADS, smem, stream, pdl, a));
    } else {
        if (P.routed) {
            int hist = c->max_blocks > 1 ? c->max_blocks - 1 : 1;
            dim3 grid((unsigned)(c->total * p->num_kv_heads), (unsigned)((hist + 127) / 128));
            size_t smem = sizeof(float) * (size_t)P.G * D;
            if (smem > 48 * 1024)
                MOBA_CUDA_TRY(cudaFuncSetAttribute(score_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   (int)smem));
            MOBA_CUDA_TRY(dec_launch(score_kernel<T, D>, grid, 128, smem, stream, pdl, a));
        }
        a.select_smem = P.routed && c->max_blocks <= 3072;
        MOBA_CUDA_TRY(dec_launch(select_kernel, dim3((unsigned)P.units), 128,
                                 a.select_smem ? sizeof(float) * 4 * c->max_blocks : 0, stream, pdl, a));
    }
    size_t smem = sizeof(T) * (size_t)(D + 8) * (DEC_ROWS + DEC_WARPS * DEC_STAGES * 2 * 16);
    MOBA_CUDA_TRY(cudaFuncSetAttribute(attend_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    MOBA_CUDA_TRY(dec_launch(attend_kernel<T, D>, dim3((unsigned)P.units, (unsigned)P.ctas), DEC_WARPS * 32, smem,
                             stream, pdl, a));
    if (!a.fuse)
        MOBA_CUDA_TRY(dec_launch(combine_kernel<T, D>, dim3((unsigned)P.units, DEC_ROWS), COMBINE_THREADS, 0, stream,
                                 pdl, a));
    return MOBA_OK;
}

extern "C" moba_status moba_cuda_cache_attend(const moba_cache_call *c, const void *q, const void *k_cache,
                                              const void *v_cache, const void *centroids, void *o, float *lse,
                                              void *ws) {
    const moba_cache_params *p = c->p;
    cudaStream_t stream = (cudaStream_t)p->cuda_stream;
    static const char *const names[] = {"q", "k_cache", "v_cache", "centroids", "o", "workspace"};
    const void *const ptrs[] = {q, k_cache, v_cache, centroids, o, ws};
    static const int align[] = {16, 16, 16, 16, 16, 256};
    moba_status st = moba_cuda_check_aligned("moba_cache_attend", 6, names, ptrs, align);
    if (st != MOBA_OK) return st;
    dec_plan P;
    make_plan(c, &P);

    DecArgs a;
    memset(&a, 0, sizeof a);
    /* per query: its sequence and position, in the kernel arguments or (many queries) uploaded */
    int2 *qinfo = a.qinline;
    if (c->total > DEC_INLINE_Q && !(qinfo = (int2 *)malloc(sizeof(int2) * (size_t)c->total)))
        return moba_fail(MOBA_ERR_OUT_OF_MEMORY, "moba_cache_attend: out of host memory");
    for (int s = 0; s < p->num_seqs; s++) {
        int n = c->cu[s + 1] - c->cu[s];
        for (int i = 0; i < n; i++) qinfo[c->cu[s] + i] = make_int2(s, c->seq_lens[s] - n + i);
    }
    void *mine = NULL;
    cudaError_t e = cudaSuccess;
    if (!ws) {
        e = cudaMallocAsync(&mine, P.total, stream);
        ws = mine;
    }
    if (e == cudaSuccess && c->total > DEC_INLINE_Q)
        e = cudaMemcpyAsync((char *)ws + P.qinfo, qinfo, sizeof(int2) * (size_t)c->total, cudaMemcpyHostToDevice,
                            stream);
    if (qinfo != a.qinline) free(qinfo); /* pageable source: the copy has staged it */
    if (e != cudaSuccess) {
        if (mine) cudaFreeAsync(mine, stream);
        return moba_fail(MOBA_ERR_CUDA, "moba_cache_attend: workspace of %zu bytes: %s", P.total, cudaGetErrorString(e));
    }
    char *w = (char *)ws;
    a.q = q;
    a.k = k_cache;
    a.v = v_cache;
    a.cent = centroids;
    a.o = o;
    a.lse = lse;
    a.qinfo = (const int2 *)(w + P.qinfo);
    a.scores = (float *)(w + P.scores);
    a.lists = (int32_t *)(w + P.lists);
    a.uni = (int32_t *)(w + P.uni);
    a.umask = (uint32_t *)(w + P.umask);
    a.uinfo = (int4 *)(w + P.uinfo);
    a.tickets = (unsigned *)(w + P.tickets);
    a.pml = (float2 *)(w + P.pml);
    a.pacc = (float *)(w + P.pacc);
    a.g = geom_of(c);
    a.total = c->total;
    a.units = P.units;
    a.Hq = p->num_q_heads;
    a.Hkv = p->num_kv_heads;
    a.G = P.G;
    a.HT = P.HT;
    a.B = p->block_size;
    a.k1 = P.routed ? P.k1 : 0;
    a.ucap = P.ucap;
    a.chunk = P.chunk;
    a.wmax = P.wmax;
    a.ctas = P.ctas;
    a.max_blocks = c->max_blocks;
    a.slots = c->slots_per_seq;
    a.full = p->full_attention;
    a.scale_log2 = c->scale * 1.4426950408889634f;
    if (p->dtype == MOBA_DTYPE_BF16)
        st = p->head_dim == 64 ? launch_attend<__nv_bfloat16, 64>(c, P, a, stream)
                               : launch_attend<__nv_bfloat16, 128>(c, P, a, stream);
    else
        st = p->head_dim == 64 ? launch_attend<__half, 64>(c, P, a, stream) : launch_attend<__half, 128>(c, P, a, stream);
    if (mine) cudaFreeAsync(mine, stream);
    return st;
}
