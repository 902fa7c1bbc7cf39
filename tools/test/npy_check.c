/*
 * npy_check: assertions on .npy files for the CLI tests. Exit 0 = holds, 1 = does not, 2 = usage.
 *   npy_check close REF OUT TOL        same descr and shape, |out - ref|_F / |ref|_F <= TOL (in float64)
 *   npy_check shape FILE DESCR D0 ...  exactly this descr and shape
 *   npy_check route IDX CU B K         IDX is a valid routing: per row the selected blocks ascending,
 *                                      min(K, j + 1) of them, the own block j last, then -1 padding
 *   npy_check same A B                 identical descr, shape and bytes
 */
#include "dtype.h"
#include "npy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int load(const char *path, npy_array *a) {
    char err[256];
    if (npy_load(path, a, err, sizeof err)) {
        fprintf(stderr, "npy_check: %s: %s\n", path, err);
        return -1;
    }
    return 0;
}

static int same_shape(const npy_array *a, const npy_array *b) {
    if (strcmp(a->descr, b->descr) || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

static double value(const npy_array *a, size_t i) {
    if (!strcmp(a->descr, "<f4")) return ((const float *)a->data)[i];
    if (!strcmp(a->descr, "<i4")) return ((const int32_t *)a->data)[i];
    uint16_t h = ((const uint16_t *)a->data)[i];
    return !strcmp(a->descr, "<f2") ? f16_to_float(h) : bf16_to_float(h);
}

static int close_enough(const char *ref_path, const char *out_path, double tol) {
    npy_array ref, out;
    if (load(ref_path, &ref)) return 1;
    if (load(out_path, &out)) return npy_free(&ref), 1;
    int rc = 1;
    if (!same_shape(&ref, &out)) {
        fprintf(stderr, "npy_check: %s and %s differ in dtype or shape\n", ref_path, out_path);
    } else {
        double num = 0, den = 0;
        int finite = 1;
        for (size_t i = 0; i < ref.count; i++) {
            double r = value(&ref, i), o = value(&out, i);
            finite &= isfinite(o);
            num += (o - r) * (o - r);
            den += r * r;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        rc = !(finite && rel <= tol);
        printf("%s: rel err %.3e (tol %.1e) %s\n", out_path, rel, tol, rc ? "FAIL" : "ok");
    }
    npy_free(&ref);
    npy_free(&out);
    return rc;
}

static int has_shape(const char *path, const char *descr, int ndim, char **dims) {
    npy_array a;
    if (load(path, &a)) return 1;
    int ok = !strcmp(a.descr, descr) && a.ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = a.shape[i] == atoll(dims[i]);
    if (!ok) fprintf(stderr, "npy_check: %s: descr %s ndim %d is not the expected one\n", path, a.descr, a.ndim);
    npy_free(&a);
    return !ok;
}

static int valid_routing(const char *idx_path, const char *cu_path, int B, int K) {
    npy_array idx, cu;
    if (load(idx_path, &idx)) return 1;
    if (load(cu_path, &cu)) return npy_free(&idx), 1;
    int bad = strcmp(idx.descr, "<i4") || idx.ndim != 3 || idx.shape[2] != K || strcmp(cu.descr, "<i4");
    const int32_t *c = cu.data, *sel = idx.data;
    int64_t total = cu.count ? c[cu.count - 1] : 0;
    bad |= idx.shape[1] != total;
    for (int64_t h = 0; !bad && h < idx.shape[0]; h++)
        for (size_t s = 0; !bad && s + 1 < cu.count; s++)
            for (int64_t t = c[s]; !bad && t < c[s + 1]; t++) {
                const int32_t *row = sel + ((size_t)h * total + t) * K;
                int j = (int)((t - c[s]) / B), want = K < j + 1 ? K : j + 1;
                for (int e = 0; e < K; e++) {
                    if (e < want) bad |= row[e] < 0 || row[e] > j || (e && row[e] <= row[e - 1]);
                    else bad |= row[e] != -1;
                }
                bad |= row[want - 1] != j;
                if (bad) fprintf(stderr, "npy_check: %s: row (head %lld, token %lld) is not a valid routing\n", idx_path, (long long)h, (long long)t);
            }
    if (bad) fprintf(stderr, "npy_check: %s: not a valid routing for K=%d B=%d\n", idx_path, K, B);
    npy_free(&idx);
    npy_free(&cu);
    return bad;
}

static int identical(const char *a_path, const char *b_path) {
    npy_array a, b;
    if (load(a_path, &a)) return 1;
    if (load(b_path, &b)) return npy_free(&a), 1;
    int same = same_shape(&a, &b) && !memcmp(a.data, b.data, a.count * a.itemsize);
    if (!same) fprintf(stderr, "npy_check: %s and %s differ\n", a_path, b_path);
    npy_free(&a);
    npy_free(&b);
    return !same;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "close")) return close_enough(argv[2], argv[3], atof(argv[4]));
    if (argc >= 4 && !strcmp(argv[1], "shape")) return has_shape(argv[2], argv[3], argc - 4, argv + 4);
    if (argc == 6 && !strcmp(argv[1], "route")) return valid_routing(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 4 && !strcmp(argv[1], "same")) return identical(argv[2], argv[3]);
    fprintf(stderr, "usage: npy_check close REF OUT TOL | shape FILE DESCR D... | route IDX CU B K | same A B\n");
    return 2;
}
