/*
 * Every golden case (made by the published reference, MoonshotAI/MoBA moba_attn_varlen_naive) through
 * moba_forward and moba_backward (do.npy given; o and lse from our own forward), and through the
 * float64 reference ref64 on the same inputs. Prints a table of relative Frobenius errors:
 *   lib-golden   the library against the published reference (the contract)
 *   ref-golden   our float64 reference against it (checks ref64 and the golden data both)
 *   lib-ref      the library against ref64, including lse (the golden data has no lse)
 *
 * usage: test_golden GOLDEN_DIR. A missing directory or one without cases is a failure: the
 * golden data is part of the contract.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "moba.h"
#include "npy.h"
#include "ref64.h"

static const double tol_o[3] = {1e-5, 2e-3, 1.5e-2};
static const double tol_grad[3] = {1e-5, 4e-3, 2.5e-2};
static const char *storage_descr[3] = {"<f4", "<f2", "<u2"};

typedef struct {
    char name[128];
    moba_params p;
    int32_t *cu;
    int hq, hkv, d;
    npy_array q, k, v, dout, o, dq, dk, dv, cu_arr;
} golden_case;

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = check_malloc(65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* The value after "key": in a flat JSON object (enough for case.json). */
static const char *json_value(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *s = strstr(json, pat);
    if (!s) return NULL;
    s = strchr(s + strlen(pat), ':');
    if (!s) return NULL;
    s++;
    while (*s == ' ' || *s == '\n' || *s == '\t') s++;
    return s;
}

static int json_int(const char *json, const char *key, int *out) {
    const char *s = json_value(json, key);
    char *end;
    if (!s) return -1;
    long v = strtol(s, &end, 10);
    if (end == s) return -1;
    *out = (int)v;
    return 0;
}

static int load_one(const char *dir, const char *file, npy_array *a) {
    char path[2048], err[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (npy_load(path, a, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", path, err);
        return -1;
    }
    return 0;
}

static int shape_is(const npy_array *a, int ndim, int64_t d0, int64_t d1, int64_t d2) {
    int64_t want[3] = {d0, d1, d2};
    if (a->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (a->shape[i] != want[i]) return 0;
    return 1;
}

/* Loads dir into C; 0 on success, else prints why and returns -1. */
static int load_case(const char *dir, const char *name, golden_case *C) {
    memset(C, 0, sizeof *C);
    snprintf(C->name, sizeof C->name, "%s", name);
    char path[2048];
    snprintf(path, sizeof path, "%s/case.json", dir);
    char *json = read_text(path);
    if (!json) {
        fprintf(stderr, "%s: cannot read\n", path);
        return -1;
    }
    int block = 0, topk = 0;
    const char *dts = json_value(json, "dtype");
    moba_dtype dt = (moba_dtype)-1;
    if (dts && !strncmp(dts, "\"float32\"", 9)) dt = MOBA_DTYPE_F32;
    if (dts && !strncmp(dts, "\"float16\"", 9)) dt = MOBA_DTYPE_F16;
    if (dts && !strncmp(dts, "\"bfloat16\"", 10)) dt = MOBA_DTYPE_BF16;
    int bad = json_int(json, "block", &block) || json_int(json, "topk", &topk) || json_int(json, "hq", &C->hq) ||
              json_int(json, "hkv", &C->hkv) || json_int(json, "d", &C->d) || (int)dt < 0;
    free(json);
    if (bad) {
        fprintf(stderr, "%s: missing block/topk/hq/hkv/d or unknown dtype\n", path);
        return -1;
    }
    const char *files[9] = {"q.npy", "k.npy", "v.npy", "do.npy", "o.npy", "dq.npy", "dk.npy", "dv.npy", "cu_seqlens.npy"};
    npy_array *arrs[9] = {&C->q, &C->k, &C->v, &C->dout, &C->o, &C->dq, &C->dk, &C->dv, &C->cu_arr};
    for (int i = 0; i < 9; i++)
        if (load_one(dir, files[i], arrs[i])) return -1;
    if (strcmp(C->cu_arr.descr, "<i4") || C->cu_arr.ndim != 1 || C->cu_arr.count < 2) {
        fprintf(stderr, "%s: cu_seqlens.npy is not int32 [num_seqs + 1]\n", name);
        return -1;
    }
    C->cu = C->cu_arr.data;
    int64_t T = C->cu[C->cu_arr.count - 1];
    for (int i = 0; i < 8; i++) {
        int kv = i == 1 || i == 2 || i == 6 || i == 7;
        if (strcmp(arrs[i]->descr, storage_descr[dt]) || !shape_is(arrs[i], 3, T, kv ? C->hkv : C->hq, C->d)) {
            fprintf(stderr, "%s: %s has descr %s / the wrong shape for T=%lld\n", name, files[i], arrs[i]->descr, (long long)T);
            return -1;
        }
    }
    moba_params *p = &C->p;
    moba_params_init(p);
    ref_set_problem(p, dt, (int)C->cu_arr.count - 1, C->cu, C->hq, C->hkv, C->d, block, topk);
    return 0;
}

static void free_case(golden_case *C) {
    npy_array *arrs[9] = {&C->q, &C->k, &C->v, &C->dout, &C->o, &C->dq, &C->dk, &C->dv, &C->cu_arr};
    for (int i = 0; i < 9; i++) npy_free(arrs[i]);
}

static void run_case(golden_case *C) {
    const moba_params *p = &C->p;
    moba_dtype dt = p->dtype;
    size_t esz = ref_dtype_size(dt), nq = C->q.count, nkv = C->k.count, nlse = (size_t)C->hq * p->total_tokens;

    /* the library */
    void *o = check_malloc(nq * esz), *dq = check_malloc(nq * esz), *dk = check_malloc(nkv * esz),
         *dv = check_malloc(nkv * esz);
    float *lse = check_malloc(nlse * sizeof(float));
    ref_poison(dt, o, nq);
    ref_poison(MOBA_DTYPE_F32, lse, nlse);
    ref_poison(dt, dq, nq);
    ref_poison(dt, dk, nkv);
    ref_poison(dt, dv, nkv);
    moba_status st = moba_forward(p, C->q.data, C->k.data, C->v.data, o, lse, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_forward: %s", C->name, moba_last_error());
    st = moba_backward(p, C->dout.data, C->q.data, C->k.data, C->v.data, o, lse, dq, dk, dv, NULL, 0);
    CHECK(st == MOBA_OK, "%s: moba_backward: %s", C->name, moba_last_error());
    CHECK(ref_count_poison(dt, o, nq) + ref_count_poison(MOBA_DTYPE_F32, lse, nlse) + ref_count_poison(dt, dq, nq) +
                  ref_count_poison(dt, dk, nkv) + ref_count_poison(dt, dv, nkv) == 0,
          "%s: outputs left unwritten", C->name);

    /* golden values and the float64 reference as double */
    double *g_o = ref_load(dt, C->o.data, nq), *g_dq = ref_load(dt, C->dq.data, nq),
           *g_dk = ref_load(dt, C->dk.data, nkv), *g_dv = ref_load(dt, C->dv.data, nkv);
    double *qd = ref_load(dt, C->q.data, nq), *kd = ref_load(dt, C->k.data, nkv), *vd = ref_load(dt, C->v.data, nkv),
           *dod = ref_load(dt, C->dout.data, nq);
    double *r_o = check_malloc(nq * sizeof(double)), *r_lse = check_malloc(nlse * sizeof(double)),
           *r_dq = check_malloc(nq * sizeof(double)), *r_dk = check_malloc(nkv * sizeof(double)),
           *r_dv = check_malloc(nkv * sizeof(double));
    ref_forward(p, qd, kd, vd, r_o, r_lse);
    ref_backward(p, qd, kd, vd, dod, r_dq, r_dk, r_dv);

    /* routing: the library's equals ref64's (up to fp32 near-ties) */
    int32_t *sel = check_malloc((size_t)nlse * p->top_k * sizeof(int32_t)),
            *r_sel = check_malloc((size_t)nlse * p->top_k * sizeof(int32_t));
    double *margin = check_malloc(nlse * sizeof(double));
    ref_poison_i32(sel, nlse * p->top_k);
    CHECK(moba_route(p, C->q.data, C->k.data, sel, NULL, 0) == MOBA_OK, "%s: moba_route: %s", C->name, moba_last_error());
    ref_route(p, qd, kd, r_sel, margin);
    size_t ties = 0, diff = ref_selection_mismatches(p, sel, r_sel, margin, dt == MOBA_DTYPE_F32 ? 1e-4 : 2e-2, &ties);
    CHECK(diff == 0, "%s: %zu rows route differently from ref64 (%zu near-ties)", C->name, diff, ties);

    double lg[4] = {ref_rel_err_storage(dt, o, g_o, nq), ref_rel_err_storage(dt, dq, g_dq, nq),
                    ref_rel_err_storage(dt, dk, g_dk, nkv), ref_rel_err_storage(dt, dv, g_dv, nkv)};
    double rg[4] = {ref_rel_err(r_o, g_o, nq), ref_rel_err(r_dq, g_dq, nq), ref_rel_err(r_dk, g_dk, nkv),
                    ref_rel_err(r_dv, g_dv, nkv)};
    double lr[5] = {ref_rel_err_storage(dt, o, r_o, nq), ref_rel_err_f32(lse, r_lse, nlse),
                    ref_rel_err_storage(dt, dq, r_dq, nq), ref_rel_err_storage(dt, dk, r_dk, nkv),
                    ref_rel_err_storage(dt, dv, r_dv, nkv)};
    static const char *dn[3] = {"f32", "f16", "bf16"};
    printf("%-18s %-4s | %.1e %.1e %.1e %.1e | %.1e %.1e %.1e %.1e | %.1e %.1e %.1e %.1e %.1e\n", C->name, dn[dt], lg[0],
           lg[1], lg[2], lg[3], rg[0], rg[1], rg[2], rg[3], lr[0], lr[1], lr[2], lr[3], lr[4]);
    const char *what[4] = {"o", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        double tol = i == 0 ? tol_o[dt] : tol_grad[dt];
        CHECK(lg[i] <= tol, "%s: library %s vs golden %.3g > %.3g", C->name, what[i], lg[i], tol);
        CHECK(rg[i] <= tol, "%s: ref64 %s vs golden %.3g > %.3g", C->name, what[i], rg[i], tol);
        CHECK(lr[i == 0 ? 0 : i + 1] <= tol, "%s: library %s vs ref64 %.3g > %.3g", C->name, what[i], lr[i == 0 ? 0 : i + 1], tol);
    }
    CHECK(lr[1] <= 1e-5, "%s: library lse vs ref64 %.3g > 1e-5", C->name, lr[1]);

    free(o), free(dq), free(dk), free(dv), free(lse), free(g_o), free(g_dq), free(g_dk), free(g_dv);
    free(qd), free(kd), free(vd), free(dod), free(r_o), free(r_lse), free(r_dq), free(r_dk), free(r_dv);
    free(sel), free(r_sel), free(margin);
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s GOLDEN_DIR\n", argv[0]);
        return 2;
    }
    const char *root = argv[1];
    DIR *d = opendir(root);
    if (!d) {
        fprintf(stderr, "FAILED: golden directory '%s' is missing; it is part of the contract "
                        "(set MOBA_GOLDEN_DIR at configure time to point at shared/golden)\n", root);
        return 1;
    }
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        char path[1024];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s/case.json", root, e->d_name);
        if (e->d_name[0] != '.' && stat(path, &st) == 0) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], by_name);
    CHECK_FATAL(n > 0, "no golden cases (folders with case.json) in '%s'", root);

    printf("golden cases in %s: relative Frobenius errors\n", root);
    printf("%-18s %-4s | lib-golden: o dq dk dv         | ref-golden: o dq dk dv         | lib-ref: o lse dq dk dv\n",
           "case", "type");
    for (int i = 0; i < n; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        golden_case C;
        int ok = load_case(dir, names[i], &C) == 0;
        CHECK(ok, "golden case %s could not be loaded", names[i]);
        if (ok) run_case(&C);
        free_case(&C);
        free(names[i]);
    }
    return check_done("test_golden");
}
