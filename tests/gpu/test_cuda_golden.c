/*
 * The CUDA forward on the bf16 golden case(s) made by the published reference (../shared/golden):
 * o and the reference's o must agree to 1.5e-2 relative (both are rounded to bf16), o must be fully
 * written. Usage: test_cuda_golden GOLDEN_DIR. Exit 77 without a CUDA device.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "npy.h"
#include "ref64.h"

#include "gpu_util.h"

/* One bf16 case; the parameters are those of its case.json (see ../shared/golden). */
static void run_golden(const char *dir, const char *name, int hq, int hkv, int d, int block, int topk) {
    npy_array q = golden_load(dir, name, "q.npy"), k = golden_load(dir, name, "k.npy");
    npy_array v = golden_load(dir, name, "v.npy");
    npy_array o_ref = golden_load(dir, name, "o.npy"), cu = golden_load(dir, name, "cu_seqlens.npy");
    CHECK_FATAL(strcmp(q.descr, "<u2") == 0 && strcmp(cu.descr, "<i4") == 0, "%s: unexpected dtypes", name);
    moba_params p;
    moba_params_init(&p);
    p.backend = MOBA_BACKEND_CUDA;
    ref_set_problem(&p, MOBA_DTYPE_BF16, (int)cu.count - 1, (const int32_t *)cu.data, hq, hkv, d, block, topk);
    CHECK_FATAL(q.count == (size_t)p.total_tokens * hq * d, "%s: q has %zu elements", name, q.count);

    size_t nq = q.count, nk = k.count, nl = (size_t)hq * p.total_tokens;
    void *dq = to_device(q.data, nq * 2), *dk = to_device(k.data, nk * 2), *dv = to_device(v.data, nk * 2);
    void *dout = poisoned_device(MOBA_DTYPE_BF16, nq);
    float *dlse = (float *)to_device(NULL, nl * 4);

    moba_status st = moba_forward(&p, dq, dk, dv, dout, dlse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward: %s", name, moba_last_error());
    CUDA_OK(cudaDeviceSynchronize());
    uint16_t *o = from_device(dout, nq * 2);
    CHECK(ref_count_poison(MOBA_DTYPE_BF16, o, nq) == 0, "%s: o not fully written", name);
    double *ref = ref_load(MOBA_DTYPE_BF16, o_ref.data, nq);
    double err = ref_rel_err_storage(MOBA_DTYPE_BF16, o, ref, nq);
    printf("golden %s: o relative error vs the reference %.3e\n", name, err);
    CHECK(err < 1.5e-2, "%s: o relative error %.3e >= 1.5e-2", name, err);
    free(ref), free(o);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse);
    npy_free(&q), npy_free(&k), npy_free(&v), npy_free(&o_ref), npy_free(&cu);
}

int main(int argc, char **argv) {
    if (!moba_backend_available(MOBA_BACKEND_CUDA)) {
        printf("SKIP: no CUDA device (or libmoba built without CUDA)\n");
        return 77;
    }
    CHECK_FATAL(argc == 2, "usage: test_cuda_golden GOLDEN_DIR");
    run_golden(argv[1], "bf16_d128", 1, 1, 128, 128, 3); /* the only bf16 case; its case.json */
    return check_done("test_cuda_golden");
}
