/*
 * tools/npy.{h,c}: round trips for every supported descr and shape rank, files in the forms NumPy
 * writes (versions 1.0, 2.0, 3.0), and one test per kind of bad file. Each bad file is written here
 * into a temporary directory, loaded both from disk and from memory, and must fail with a message
 * that names the problem.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "npy.h"

static char tmpdir[256];

static void path_in_tmp(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", tmpdir, name); }

static void write_bytes(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK_FATAL(f != NULL, "cannot write %s", path);
    CHECK_FATAL(fwrite(buf, 1, n, f) == n, "short write");
    fclose(f);
}

/* A .npy image: magic, version, header length field, header text as given, then data_len bytes
 * of 0x5a. Returns the length. */
static size_t make_npy(unsigned char *buf, size_t cap, int major, int minor, const char *header, size_t data_len) {
    size_t h = strlen(header), n = 0;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = (unsigned char)minor;
    if (major == 1) {
        buf[8] = (unsigned char)(h & 0xff);
        buf[9] = (unsigned char)(h >> 8);
        n = 10;
    } else {
        for (int i = 0; i < 4; i++) buf[8 + i] = (unsigned char)(h >> (8 * i));
        n = 12;
    }
    CHECK_FATAL(n + h + data_len <= cap, "test buffer too small");
    memcpy(buf + n, header, h);
    n += h;
    memset(buf + n, 0x5a, data_len);
    return n + data_len;
}

/* Loads the image from disk and from memory; both must fail with `want` in the message. */
static void expect_bad(const char *what, const unsigned char *buf, size_t n, const char *want) {
    char path[512], err[256] = "";
    path_in_tmp(path, sizeof path, "bad.npy");
    write_bytes(path, buf, n);
    npy_array a;
    int rc = npy_load(path, &a, err, sizeof err);
    CHECK(rc == -1, "%s: npy_load accepted a bad file", what);
    CHECK(strstr(err, want) != NULL, "%s: message '%s' lacks '%s'", what, err, want);
    CHECK(a.data == NULL && a.count == 0, "%s: output not cleared on failure", what);
    CHECK(strstr(err, path) == NULL, "%s: message names the path", what);
    printf("  %-34s -> %s\n", what, err);

    unsigned char *copy = check_malloc(n); /* exact size so ASan sees any over-read */
    memcpy(copy, buf, n);
    err[0] = 0;
    rc = npy_load_mem(copy, n, &a, err, sizeof err);
    CHECK(rc == -1, "%s: npy_load_mem accepted a bad buffer", what);
    CHECK(strstr(err, want) != NULL, "%s: mem message '%s' lacks '%s'", what, err, want);
    free(copy);
    unlink(path);
}

static void bad_header(const char *what, int major, const char *header, size_t data_len, const char *want) {
    unsigned char buf[4096];
    size_t n = make_npy(buf, sizeof buf, major, 0, header, data_len);
    expect_bad(what, buf, n, want);
}

static int files_in_tmp(void) {
    DIR *d = opendir(tmpdir);
    CHECK_FATAL(d != NULL, "opendir");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void test_round_trips(void) {
    const char *descrs[] = {"<f4", "<f2", "<u2", "<i4"};
    const int64_t shapes[][8] = {{0}, {5}, {0}, {2, 3, 4}, {1, 2, 1, 2, 1, 2, 1, 3}, {7, 0, 3}};
    const int ndims[] = {0, 1, 1, 3, 8, 3};
    char path[512], err[256];
    path_in_tmp(path, sizeof path, "rt.npy");
    for (int di = 0; di < 4; di++) {
        for (int si = 0; si < 6; si++) {
            size_t count = 1;
            for (int i = 0; i < ndims[si]; i++) count *= (size_t)shapes[si][i];
            size_t isz = npy_descr_itemsize(descrs[di]);
            unsigned char *data = check_malloc(count * isz);
            for (size_t i = 0; i < count * isz; i++) data[i] = (unsigned char)(i * 37 + di * 11 + 1);
            int rc = npy_save(path, descrs[di], ndims[si], shapes[si], data, err, sizeof err);
            CHECK(rc == 0, "save %s ndim %d: %s", descrs[di], ndims[si], err);
            npy_array a;
            rc = npy_load(path, &a, err, sizeof err);
            CHECK(rc == 0, "load %s ndim %d: %s", descrs[di], ndims[si], err);
            if (rc == 0) {
                CHECK(!strcmp(a.descr, descrs[di]), "descr %s != %s", a.descr, descrs[di]);
                CHECK(a.ndim == ndims[si], "ndim %d != %d", a.ndim, ndims[si]);
                for (int i = 0; i < ndims[si]; i++)
                    CHECK(a.shape[i] == shapes[si][i], "shape[%d] %lld", i, (long long)a.shape[i]);
                CHECK(a.count == count && a.itemsize == isz, "count %zu itemsize %zu", a.count, a.itemsize);
                CHECK(a.data != NULL && !memcmp(a.data, data, count * isz), "data differs");
            }
            npy_free(&a);
            CHECK(a.data == NULL, "npy_free leaves data");

            /* the header is what NumPy writes: 64-byte aligned data, '\n' last */
            FILE *f = fopen(path, "rb");
            unsigned char head[10];
            CHECK_FATAL(f && fread(head, 1, 10, f) == 10, "reread");
            size_t hlen = head[8] | (size_t)head[9] << 8;
            CHECK((10 + hlen) % 64 == 0, "header not 64-aligned (%zu)", hlen);
            fclose(f);
            free(data);
        }
    }
    unlink(path);
    CHECK(files_in_tmp() == 0, "round trips left %d files behind", files_in_tmp());
}

/* Forms other writers produce: versions 2.0 and 3.0, keys in another order, double quotes, no
 * trailing comma, 16-byte padding of old NumPy. */
static void test_good_variants(void) {
    struct {
        const char *what;
        int major;
        const char *header;
        size_t data;
        int ndim;
        int64_t d0;
    } cases[] = {
        {"version 2.0", 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }    \n", 12, 1, 3},
        {"version 3.0", 3, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }\n", 16, 2, 2},
        {"keys reordered", 1, "{'shape': (4,), 'fortran_order': False, 'descr': '<f2'}  \n", 8, 1, 4},
        {"double quotes", 1, "{\"descr\": \"<u2\", \"fortran_order\": False, \"shape\": (1, 3)}\n", 6, 2, 1},
        {"scalar", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n", 4, 0, 0},
        {"zero-size", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }\n", 0, 2, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char buf[512];
        size_t n = make_npy(buf, sizeof buf, cases[i].major, 0, cases[i].header, cases[i].data);
        npy_array a;
        char err[256] = "";
        int rc = npy_load_mem(buf, n, &a, err, sizeof err);
        CHECK(rc == 0, "%s: %s", cases[i].what, err);
        if (rc == 0) {
            CHECK(a.ndim == cases[i].ndim, "%s: ndim %d", cases[i].what, a.ndim);
            if (a.ndim) CHECK(a.shape[0] == cases[i].d0, "%s: shape[0] %lld", cases[i].what, (long long)a.shape[0]);
            CHECK(a.count * a.itemsize == cases[i].data, "%s: %zu bytes", cases[i].what, a.count * a.itemsize);
        }
        npy_free(&a);
    }
}

static void test_bad_files(void) {
    unsigned char buf[4096];
    size_t n;
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";

    n = make_npy(buf, sizeof buf, 1, 0, good, 24);
    buf[1] = 'X';
    expect_bad("wrong magic", buf, n, "magic");
    expect_bad("empty file", buf, 0, "too short");
    n = make_npy(buf, sizeof buf, 1, 0, good, 24);
    expect_bad("preamble cut at 7 bytes", buf, 7, "truncated");
    expect_bad("preamble cut at 9 bytes", buf, 9, "truncated");
    expect_bad("header cut short", buf, 40, "truncated header");
    expect_bad("data one byte short", buf, n - 1, "truncated data");
    n = make_npy(buf, sizeof buf, 1, 0, good, 25);
    expect_bad("data one byte long", buf, n, "longer");
    n = make_npy(buf, sizeof buf, 1, 0, good, 24 + 4096 - 200);
    expect_bad("data much longer", buf, n, "longer");
    n = make_npy(buf, sizeof buf, 4, 0, good, 24);
    expect_bad("version 4.0", buf, n, "version 4.0");
    n = make_npy(buf, sizeof buf, 1, 1, good, 24);
    expect_bad("version 1.1", buf, n, "version 1.1");
    n = make_npy(buf, sizeof buf, 2, 0, good, 24);
    buf[8] = buf[9] = buf[10] = buf[11] = 0xff;
    expect_bad("absurd header length", buf, n, "header length");

    bad_header("header not a dict", 1, "[1, 2, 3]\n", 0, "not a dict");
    bad_header("header empty", 1, "\n", 0, "not a dict");
    bad_header("header unterminated dict", 1, "{'descr': '<f4', \n", 0, "malformed");
    bad_header("header unterminated string", 1, "{'descr: '<f4'}\n", 0, "malformed");
    bad_header("header without newline", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24, "newline");
    bad_header("bytes after the dict", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } x\n", 24, "after the dict");
    bad_header("missing descr", 1, "{'fortran_order': False, 'shape': (2, 3), }\n", 24, "no 'descr'");
    bad_header("missing fortran_order", 1, "{'descr': '<f4', 'shape': (2, 3), }\n", 24, "no 'fortran_order'");
    bad_header("missing shape", 1, "{'descr': '<f4', 'fortran_order': False, }\n", 24, "no 'shape'");
    bad_header("unknown key", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}\n", 24, "unknown key 'x'");
    bad_header("duplicate key", 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n", 24, "twice");
    bad_header("fortran_order True", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", 24, "fortran_order True");
    bad_header("fortran_order 1", 1, "{'descr': '<f4', 'fortran_order': 1, 'shape': (2, 3), }\n", 24, "fortran_order");
    bad_header("descr <f8", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n", 48, "unsupported descr '<f8'");
    bad_header("descr >f4 (big endian)", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }\n", 24, "unsupported descr '>f4'");
    bad_header("descr |u1", 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }\n", 6, "unsupported descr '|u1'");
    bad_header("descr very long", 1, "{'descr': '<f4xxxxxxxxxxxxxxxxxxxxxxx', 'fortran_order': False, 'shape': (2,), }\n", 8, "unsupported descr");
    bad_header("descr a list (structured)", 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }\n", 8, "descr");
    bad_header("shape negative", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }\n", 24, "negative");
    bad_header("shape dim > 2^40", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2199023255553,), }\n", 0, "large");
    bad_header("shape dim > 2^64", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }\n", 0, "large");
    bad_header("shape product > 2^40", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576, 2), }\n", 0, "2^40");
    bad_header("shape product overflows 64 bits", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 1099511627776), }\n", 0, "2^40");
    bad_header("shape (3) not a tuple", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }\n", 12, "not a tuple");
    bad_header("shape a list", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': [3], }\n", 12, "not a tuple");
    bad_header("shape float", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3.0,), }\n", 12, "not a plain integer");
    bad_header("shape 9 dims", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }\n", 4, "more than 8");
    bad_header("shape missing comma", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }\n", 24, "missing ','");

    /* a NUL byte in the middle of an otherwise good header */
    n = make_npy(buf, sizeof buf, 1, 0, good, 24);
    buf[10 + 3] = 0;
    expect_bad("NUL byte in header", buf, n, "NUL");

    char path[512], err[256] = "";
    npy_array a;
    path_in_tmp(path, sizeof path, "does-not-exist.npy");
    CHECK(npy_load(path, &a, err, sizeof err) == -1 && strstr(err, "cannot open"), "missing file: '%s'", err);
    CHECK(npy_load(tmpdir, &a, err, sizeof err) == -1, "a directory loaded");
    printf("  %-34s -> %s\n", "a directory", err);
    CHECK(files_in_tmp() == 0, "bad-file tests left files behind");
}

static void test_save_errors(void) {
    char path[512], err[256] = "";
    float data[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3}, neg[2] = {2, -3}, huge[3] = {1 << 20, 1 << 20, 2};
    path_in_tmp(path, sizeof path, "out.npy");
    CHECK(npy_save(path, "<f8", 2, shape, data, err, sizeof err) == -1 && strstr(err, "unsupported descr"), "%s", err);
    CHECK(npy_save(path, "<f4", 2, neg, data, err, sizeof err) == -1 && strstr(err, "negative"), "%s", err);
    CHECK(npy_save(path, "<f4", 3, huge, data, err, sizeof err) == -1 && strstr(err, "2^40"), "%s", err);
    CHECK(npy_save(path, "<f4", 9, shape, data, err, sizeof err) == -1 && strstr(err, "ndim"), "%s", err);
    CHECK(npy_save(path, "<f4", 2, shape, NULL, err, sizeof err) == -1 && strstr(err, "data"), "%s", err);
    CHECK(files_in_tmp() == 0, "failed saves left files behind");

    char nodir[512];
    path_in_tmp(nodir, sizeof nodir, "no-such-dir/out.npy");
    CHECK(npy_save(nodir, "<f4", 2, shape, data, err, sizeof err) == -1, "save into a missing directory");
    printf("  %-34s -> %s\n", "save into a missing directory", err);

    /* overwriting: the new content replaces the old one whole, and no temporary file remains */
    CHECK(npy_save(path, "<f4", 2, shape, data, err, sizeof err) == 0, "%s", err);
    int64_t one = 1;
    CHECK(npy_save(path, "<i4", 1, &one, data, err, sizeof err) == 0, "%s", err);
    npy_array a;
    CHECK(npy_load(path, &a, err, sizeof err) == 0 && a.count == 1 && !strcmp(a.descr, "<i4"), "overwrite: %s", err);
    npy_free(&a);
    CHECK(files_in_tmp() == 1, "%d files after overwriting, want 1", files_in_tmp());
    unlink(path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/moba_test_npy.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    CHECK_FATAL(mkdtemp(tmpdir) != NULL, "mkdtemp");
    test_round_trips();
    test_good_variants();
    printf("bad files (each must be refused):\n");
    test_bad_files();
    test_save_errors();
    rmdir(tmpdir);
    return check_done("test_npy");
}
