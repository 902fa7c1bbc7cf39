/*
 * The CUDA decode path (moba_cache_append / moba_cache_attend on MOBA_BACKEND_CUDA) against the CPU's.
 *
 * Every case keeps two copies of one cache, a host one driven by the CPU backend and a device one driven
 * by the CUDA backend, both starting as the same poison (contiguous, or paged with pages handed out in a
 * shuffled order). Keys are appended in random pieces (none, one token, a few, a block, more). After
 * every append the device k, v and centroid buffers must equal the host ones byte for byte: the new rows
 * land where the CPU puts them, nothing else is written, and the centroids are bitwise the CPU's (fp32
 * sum in key order, / B, rounded). Then 0..3 queries per sequence are decoded (outputs poisoned first),
 * MoBA and full_attention, with and without a caller workspace, and compared with the CPU's o and lse:
 *   |o_gpu - o_cpu| / |o_cpu| < 1.5e-2 (bf16) or 2e-3 (f16) over the call, and per (query, head) row
 *   under 4x that (a misrouted row fails), |lse_gpu - lse_cpu| / |lse_cpu| < 1e-4.
 * The GPU scores blocks with the CPU's summation order, so both route identically; the CPU decode is
 * bitwise prefill (tests/decode), which is checked against the float64 reference (tests/test_random.c).
 * Last, a page id out of range in the device block table: append and attend must neither crash nor
 * touch memory out of bounds; the other sequence's output stays right.
 * The attend calls take turns through the variants of src/cuda/cache.cu (switches read per call): the
 * default (route_kernel, or score + select past 512 blocks; the combine folded into attend; tiles dealt
 * round robin to a unit's warps; programmatic dependent launch on sm_90), and every combination of
 * MOBA_CUDA_DECODE_NO_PDL, MOBA_CUDA_DECODE_SPLIT (four kernels) and MOBA_CUDA_DECODE_CHUNKS (a contiguous
 * chunk per warp), MoBA and full attention alike.
 * Exit 77 (ctest SKIP_RETURN_CODE) when there is no CUDA device.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "npy.h"
#include "ref64.h"

#include "gpu_util.h"

enum { MAX_SEQS = 4 };

typedef struct {
    moba_dtype dt;
    int num_seqs, lens[MAX_SEQS];
    int hq, hkv, d, block_size, top_k, page_size;
    uint64_t seed;
} gcase;

static double worst_rel = 0.0, worst_row = 0.0, worst_lse = 0.0;
static long long attend_calls = 0;

static int rand_int(ref_rng *r, int lo, int hi) { return lo + (int)(ref_rng_next(r) % (uint64_t)(hi - lo + 1)); }

static void up(void *d, const void *h, size_t bytes) { CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice)); }
static void down(void *h, const void *d, size_t bytes) { CUDA_OK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost)); }

/* Variant of the next CUDA attend calls: bit 0 no PDL, bit 1 the four-kernel split, bit 2 chunks. */
static void set_pipeline(int mode) {
    setenv("MOBA_CUDA_DECODE_NO_PDL", mode & 1 ? "1" : "0", 1);
    setenv("MOBA_CUDA_DECODE_SPLIT", mode & 2 ? "1" : "0", 1);
    setenv("MOBA_CUDA_DECODE_CHUNKS", mode & 4 ? "1" : "0", 1);
}

/* Device buffer equals host buffer, byte for byte. */
static void same_bytes(const char *what, const char *name, const void *dev, const void *host, size_t bytes) {
    unsigned char *got = check_malloc(bytes);
    down(got, dev, bytes);
    size_t first = bytes;
    for (size_t i = 0; i < bytes && first == bytes; i++)
        if (got[i] != ((const unsigned char *)host)[i]) first = i;
    CHECK(first == bytes, "%s: %s: device differs from the CPU at byte %zu of %zu", name, what, first, bytes);
    free(got);
}

/* Decode n_q[s] queries per sequence on both backends and compare. */
static void attend_both(const char *name, moba_cache_params *cp, moba_cache_params *gp, const int32_t *lens,
                        const int *nq, void *hk, void *hv, const int32_t *htable, void *hc, void *dk, void *dv,
                        const int32_t *dtable, void *dc, ref_rng *rng, int use_ws) {
    const int n = cp->num_seqs, hq = cp->num_q_heads, d = cp->head_dim;
    int32_t cu[MAX_SEQS + 1];
    cu[0] = 0;
    for (int s = 0; s < n; s++) cu[s + 1] = cu[s] + nq[s];
    const int64_t total = cu[n];
    if (total == 0) return;
    const size_t es = ref_dtype_size(cp->dtype), nel = (size_t)total * hq * d, nl = (size_t)hq * total;
    void *q = check_malloc(nel * es), *o_cpu = check_malloc(nel * es), *o_gpu = check_malloc(nel * es);
    float *lse_cpu = check_malloc(nl * 4), *lse_gpu = check_malloc(nl * 4);
    ref_fill_normal(rng, cp->dtype, q, nel, 1.0);
    ref_poison(cp->dtype, o_cpu, nel);
    ref_poison(cp->dtype, o_gpu, nel);
    ref_poison(MOBA_DTYPE_F32, lse_cpu, nl);
    ref_poison(MOBA_DTYPE_F32, lse_gpu, nl);
    void *dq = to_device(NULL, nel * es), *dout = to_device(NULL, nel * es), *dlse = to_device(NULL, nl * 4);
    up(dq, q, nel * es);
    up(dout, o_gpu, nel * es);
    up(dlse, lse_gpu, nl * 4);

    moba_status st = moba_cache_attend(cp, lens, cu, q, hk, hv, htable, hc, o_cpu, lse_cpu, NULL, 0);
    CHECK_FATAL(st == MOBA_OK, "%s: CPU attend: %s", name, moba_last_error());
    size_t ws_bytes = 0;
    void *ws = NULL;
    if (use_ws) {
        st = moba_cache_workspace_size(gp, lens, cu, &ws_bytes);
        CHECK_FATAL(st == MOBA_OK, "%s: workspace size: %s", name, moba_last_error());
        CHECK(ws_bytes > 0, "%s: CUDA decode workspace is %zu bytes", name, ws_bytes);
        ws = to_device(NULL, ws_bytes);
        CUDA_OK(cudaMemset(ws, 0xff, ws_bytes)); /* garbage in the workspace must not matter */
    }
    static long long turn = 0; /* MoBA and full calls alternate: every variant comes to both */
    set_pipeline((int)((turn + turn / 8) % 8));
    turn++;
    st = moba_cache_attend(gp, lens, cu, dq, dk, dv, dtable, dc, dout, dlse, ws, ws_bytes);
    CHECK_FATAL(st == MOBA_OK, "%s: CUDA attend: %s", name, moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    down(o_gpu, dout, nel * es);
    down(lse_gpu, dlse, nl * 4);
    attend_calls++;

    double *ref = ref_load(cp->dtype, o_cpu, nel), *lref = ref_load(MOBA_DTYPE_F32, lse_cpu, nl);
    double *got = ref_load(cp->dtype, o_gpu, nel);
    double tol = cp->dtype == MOBA_DTYPE_BF16 ? 1.5e-2 : 2e-3;
    double e = ref_rel_err(got, ref, nel), el = ref_rel_err_f32(lse_gpu, lref, nl), er = 0.0;
    for (size_t r = 0; r < (size_t)total * hq; r++) {
        double x = ref_rel_err(got + r * d, ref + r * d, (size_t)d);
        if (!(x <= er)) er = x; /* NaN sticks */
    }
    const char *mode = cp->full_attention ? "full" : "moba";
    CHECK(e < tol, "%s %s: o relative error %.3g >= %.3g", name, mode, e, tol);
    CHECK(er < 4 * tol, "%s %s: worst row relative error %.3g >= %.3g", name, mode, er, 4 * tol);
    CHECK(el < 1e-4, "%s %s: lse relative error %.3g", name, mode, el);
    CHECK(ref_count_poison(cp->dtype, o_gpu, nel) == 0, "%s %s: o not fully written", name, mode);
    if (e > worst_rel || e != e) worst_rel = e;
    if (er > worst_row || er != er) worst_row = er;
    if (el > worst_lse || el != el) worst_lse = el;
    free(ref);
    free(lref);
    free(got);
    free(q);
    free(o_cpu);
    free(o_gpu);
    free(lse_cpu);
    free(lse_gpu);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(ws);
}

static void run_case(const gcase *g) {
    char name[200];
    snprintf(name, sizeof name, "%s d=%d hq=%d hkv=%d B=%d top_k=%d page=%d seqs=%d", g->dt == MOBA_DTYPE_BF16 ? "bf16" : "f16",
             g->d, g->hq, g->hkv, g->block_size, g->top_k, g->page_size, g->num_seqs);
    ref_rng rng;
    ref_rng_seed(&rng, g->seed);
    const int n = g->num_seqs;
    int cap = 0;
    for (int s = 0; s < n; s++)
        if (g->lens[s] > cap) cap = g->lens[s];
    moba_cache_params cp;
    moba_cache_params_init(&cp);
    cp.dtype = g->dt;
    cp.num_seqs = n;
    cp.num_q_heads = g->hq;
    cp.num_kv_heads = g->hkv;
    cp.head_dim = g->d;
    cp.block_size = g->block_size;
    cp.top_k = g->top_k;
    cp.num_threads = 2;
    if (g->page_size) {
        cp.page_size = g->page_size;
        cp.max_pages_per_seq = (cap + g->page_size - 1) / g->page_size;
        cp.capacity = cp.max_pages_per_seq * g->page_size;
        cp.num_pages = (int64_t)n * cp.max_pages_per_seq + 3; /* a few spare pages stay poison */
    } else {
        cp.capacity = cap + rand_int(&rng, 0, 40);
    }
    moba_cache_params gp = cp;
    gp.backend = MOBA_BACKEND_CUDA;

    const size_t es = ref_dtype_size(g->dt), row = (size_t)g->hkv * g->d;
    const size_t rows = g->page_size ? (size_t)cp.num_pages * g->page_size : (size_t)n * cp.capacity;
    const size_t cache_el = rows * row, cent_el = (size_t)n * (cp.capacity / g->block_size) * row;
    void *hk = check_malloc(cache_el * es), *hv = check_malloc(cache_el * es), *hc = check_malloc(cent_el * es);
    ref_poison(g->dt, hk, cache_el);
    ref_poison(g->dt, hv, cache_el);
    ref_poison(g->dt, hc, cent_el);
    void *dk = to_device(NULL, cache_el * es), *dv = to_device(NULL, cache_el * es);
    void *dc = to_device(NULL, cent_el * es);
    up(dk, hk, cache_el * es);
    up(dv, hv, cache_el * es);
    up(dc, hc, cent_el * es);
    int32_t *htable = NULL, *dtable = NULL;
    size_t tbytes = 0;
    if (g->page_size) { /* a shuffled permutation of the pool */
        int64_t np = cp.num_pages, used = (int64_t)n * cp.max_pages_per_seq;
        int32_t *perm = check_malloc(sizeof(int32_t) * (size_t)np);
        for (int64_t i = 0; i < np; i++) perm[i] = (int32_t)i;
        for (int64_t i = np - 1; i > 0; i--) {
            int64_t j = (int64_t)(ref_rng_next(&rng) % (uint64_t)(i + 1));
            int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        tbytes = sizeof(int32_t) * (size_t)used;
        htable = check_malloc(tbytes);
        memcpy(htable, perm, tbytes);
        free(perm);
        dtable = to_device(NULL, tbytes);
        up(dtable, htable, tbytes);
    }

    int32_t lens[MAX_SEQS] = {0};
    int steps = 0;
    for (;;) {
        int done = 1, cu[MAX_SEQS + 1];
        cu[0] = 0;
        for (int s = 0; s < n; s++) {
            int left = g->lens[s] - lens[s], k = 0;
            if (left > 0) {
                switch (rand_int(&rng, 0, 5)) {
                case 0: k = 0; break;
                case 1: k = 1; break;
                case 2: k = rand_int(&rng, 2, 5); break;
                case 3: k = g->block_size; break;
                default: k = rand_int(&rng, 1, 3 * g->block_size); break;
                }
                if (k > left) k = left;
                done = 0;
            }
            cu[s + 1] = cu[s] + k;
        }
        if (done) break;
        size_t nn = (size_t)cu[n] * row;
        void *kn = check_malloc(nn * es + 1), *vn = check_malloc(nn * es + 1);
        ref_fill_normal(&rng, g->dt, kn, nn, 1.0);
        ref_fill_normal(&rng, g->dt, vn, nn, 1.0);
        void *dkn = to_device(NULL, nn * es), *dvn = to_device(NULL, nn * es);
        up(dkn, kn, nn * es);
        up(dvn, vn, nn * es);
        moba_status st = moba_cache_append(&cp, lens, cu, kn, vn, hk, hv, htable, hc);
        CHECK_FATAL(st == MOBA_OK, "%s: CPU append: %s", name, moba_last_error());
        st = moba_cache_append(&gp, lens, cu, dkn, dvn, dk, dv, dtable, dc);
        CHECK_FATAL(st == MOBA_OK, "%s: CUDA append: %s", name, moba_last_error());
        CUDA_OK(cudaDeviceSynchronize());
        same_bytes("k_cache", name, dk, hk, cache_el * es);
        same_bytes("v_cache", name, dv, hv, cache_el * es);
        same_bytes("centroids", name, dc, hc, cent_el * es);
        free(kn);
        free(vn);
        cudaFree(dkn);
        cudaFree(dvn);
        for (int s = 0; s < n; s++) lens[s] += cu[s + 1] - cu[s];

        steps++;
        { /* decode after every append */
            int nq[MAX_SEQS];
            for (int s = 0; s < n; s++) nq[s] = lens[s] < 3 ? rand_int(&rng, 0, lens[s]) : rand_int(&rng, 0, 3);
            for (int full = 0; full <= 1; full++) {
                cp.full_attention = gp.full_attention = full;
                attend_both(name, &cp, &gp, lens, nq, hk, hv, htable, hc, dk, dv, dtable, dc, &rng, steps % 3 == 0);
            }
            cp.full_attention = gp.full_attention = 0;
        }
    }

    /* A bad page id (device table only: the core cannot check device memory) must not crash. */
    if (g->page_size && n >= 2) {
        int32_t *bad = check_malloc(tbytes);
        memcpy(bad, htable, tbytes);
        bad[(n - 1) * cp.max_pages_per_seq] = (int32_t)(cp.num_pages + 1000); /* first page of the last sequence */
        if (cp.max_pages_per_seq > 1) bad[(n - 1) * cp.max_pages_per_seq + 1] = -7;
        up(dtable, bad, tbytes);
        int nq[MAX_SEQS] = {0};
        nq[0] = lens[0] > 0 ? 1 : 0;
        nq[n - 1] = lens[n - 1] > 0 ? 1 : 0;
        int32_t cu[MAX_SEQS + 1] = {0};
        for (int s = 0; s < n; s++) cu[s + 1] = cu[s] + nq[s];
        const size_t nel = (size_t)cu[n] * g->hq * g->d;
        void *dq = to_device(NULL, nel * es + 16), *dout = to_device(NULL, nel * es + 16);
        CUDA_OK(cudaMemset(dq, 0, nel * es + 16));
        for (int mode = 0; mode < 16; mode++) { /* MoBA and full, each variant */
            gp.full_attention = mode & 1;
            set_pipeline(mode / 2);
            moba_status st = moba_cache_attend(&gp, lens, cu, dq, dk, dv, dtable, dc, dout, NULL, NULL, 0);
            CHECK(st == MOBA_OK, "%s: attend with a bad page id: %s", name, moba_last_error());
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s: attend with a bad page id faulted", name);
        }
        set_pipeline(0);
        gp.full_attention = 0;
        free(bad);
        up(dtable, htable, tbytes);
        cudaFree(dq);
        cudaFree(dout);
    }

    free(hk);
    free(hv);
    free(hc);
    free(htable);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dc);
    cudaFree(dtable);
    printf("%-60s ok after %d appends\n", name, steps);
}

/* Appending into a page id out of range: the row is skipped, nothing faults. */
static void bad_page_append(void) {
    moba_cache_params p;
    moba_cache_params_init(&p);
    p.backend = MOBA_BACKEND_CUDA;
    p.dtype = MOBA_DTYPE_BF16;
    p.num_seqs = 1;
    p.num_q_heads = p.num_kv_heads = 1;
    p.head_dim = 64;
    p.block_size = 16;
    p.top_k = 2;
    p.page_size = 16;
    p.max_pages_per_seq = 2;
    p.capacity = 32;
    p.num_pages = 2;
    int32_t table[2] = {1, 1 << 30}, lens[1] = {0}, cu[2] = {0, 32};
    size_t bytes = 32 * 64 * 2;
    void *k = to_device(NULL, bytes), *v = to_device(NULL, bytes), *c = to_device(NULL, bytes);
    void *dk = to_device(NULL, bytes), *dv = to_device(NULL, bytes);
    int32_t *dt = to_device(NULL, sizeof table);
    up(dt, table, sizeof table);
    CUDA_OK(cudaMemset(k, 0x11, bytes));
    CUDA_OK(cudaMemset(v, 0x22, bytes));
    moba_status st = moba_cache_append(&p, lens, cu, k, v, dk, dv, dt, c);
    CHECK(st == MOBA_OK, "append with a bad page id: %s", moba_last_error());
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "append with a bad page id faulted");
    cudaFree(k);
    cudaFree(v);
    cudaFree(c);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dt);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    int dev_count = 0;
    if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
        printf("test_cuda_decode: no CUDA device, skipped\n");
        return 77;
    }
    const int quick = getenv("MOBA_GPU_TEST_QUICK") != NULL;
    const moba_dtype BF = MOBA_DTYPE_BF16, F16 = MOBA_DTYPE_F16;
    const gcase cases[] = {
        /* dt, seqs, lens, hq, hkv, d, B, top_k, page, seed */
        {BF, 1, {700}, 8, 1, 128, 32, 3, 0, 1},
        {F16, 3, {300, 1, 517}, 4, 2, 64, 16, 2, 0, 2},
        {BF, 2, {450, 333}, 8, 1, 128, 64, 4, 16, 3},
        {F16, 4, {200, 130, 0, 260}, 2, 2, 128, 32, 3, 8, 4},
        {BF, 2, {400, 290}, 40, 2, 64, 48, 5, 16, 5},  /* group of 20: two head tiles */
        {BF, 1, {333}, 2, 1, 64, 16, 1, 0, 6},          /* top_k 1: own block only      */
        {F16, 2, {260, 190}, 4, 4, 128, 16, 100, 4, 7}, /* top_k >= every block: all     */
        {BF, 1, {2100}, 16, 2, 128, 128, 6, 32, 8},
        {BF, 1, {8300}, 2, 1, 64, 16, 40, 0, 9}, /* 519 blocks: score + select, not route_kernel */
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < (quick ? 2 : ncases); i++) run_case(&cases[i]);
    bad_page_append();
    set_pipeline(0);
    printf("attend calls %lld: worst o relative error %.3g (row %.3g), lse %.3g\n", attend_calls, worst_rel, worst_row,
           worst_lse);
    return check_done("test_cuda_decode");
}
