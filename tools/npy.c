/*
 * Strict .npy reader and atomic writer (see npy.h).
 *
 * File layout (NumPy format spec, versions 1.0 / 2.0 / 3.0):
 *   "\x93NUMPY" major minor | header length (uint16 LE for 1.0, uint32 LE for 2.0 and 3.0) |
 *   header: a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 *   padded with spaces and ending in '\n' | the data, C order, exactly prod(shape) * itemsize bytes.
 * The header parser reads a small subset of Python literal syntax with a bounded cursor: strings
 * without escapes, True/False, tuples of non-negative decimal integers.
 */
#define _POSIX_C_SOURCE 200809L
#include "npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header longer than this is refused before it is read (NumPy itself refuses > 10000 bytes). */
#define NPY_MAX_HEADER_LEN (1u << 20)

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int host_is_little_endian(void) {
    uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

size_t npy_descr_itemsize(const char *descr) {
    if (!descr) return 0;
    if (!strcmp(descr, "<f4") || !strcmp(descr, "<i4")) return 4;
    if (!strcmp(descr, "<f2") || !strcmp(descr, "<u2")) return 2;
    return 0;
}

/* Copies at most 16 characters of s[0..n) into out, printable ASCII only ('?' otherwise), so a
 * message never carries control bytes from a hostile file. */
static void printable(const char *s, size_t n, char *out, size_t outlen) {
    size_t j = 0;
    for (size_t i = 0; i < n && i < 16 && j + 1 < outlen; i++)
        out[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (n > 16 && j + 4 < outlen) { memcpy(out + j, "...", 3); j += 3; }
    out[j] = 0;
}

/* ---- the header dict parser: a cursor over [p, end) ---- */

typedef struct {
    const char *p, *end;
} cursor;

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int eat(cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) { c->p++; return 1; }
    return 0;
}

/* A quoted string without escapes: sets *s, *n to its contents. */
static int parse_string(cursor *c, const char **s, size_t *n) {
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    char q = *c->p++;
    const char *start = c->p;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || *c->p == '\n') return 0;
        c->p++;
    }
    if (c->p >= c->end) return 0;
    *s = start;
    *n = (size_t)(c->p - start);
    c->p++;
    return 1;
}

static int match_word(cursor *c, const char *w) {
    size_t n = strlen(w);
    skip_ws(c);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n)) return 0;
    const char *after = c->p + n;
    if (after < c->end && ((*after >= 'a' && *after <= 'z') || (*after >= 'A' && *after <= 'Z') ||
                           (*after >= '0' && *after <= '9') || *after == '_'))
        return 0;
    c->p = after;
    return 1;
}

/* shape: '(' [int (',' int)* [',']] ')', a 1-tuple needs its comma as in Python. */
static int parse_shape(cursor *c, npy_array *a, char *err, size_t errlen) {
    if (!eat(c, '(')) return fail(err, errlen, "header 'shape' is not a tuple");
    int ndim = 0, commas = 0;
    for (;;) {
        skip_ws(c);
        if (c->p < c->end && *c->p == ')') { c->p++; break; }
        if (ndim > commas) return fail(err, errlen, "header 'shape' is malformed (missing ',')");
        if (c->p < c->end && *c->p == '-') return fail(err, errlen, "shape dimension %d is negative", ndim);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return fail(err, errlen, "header 'shape' holds something other than non-negative integers");
        if (*c->p == '0' && c->p + 1 < c->end && c->p[1] >= '0' && c->p[1] <= '9')
            return fail(err, errlen, "shape dimension %d has a leading zero", ndim);
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            v = v * 10 + (*c->p - '0');
            if (v > NPY_MAX_ELEMENTS) return fail(err, errlen, "shape dimension %d is absurdly large (> 2^40)", ndim);
            c->p++;
        }
        if (c->p < c->end && ((*c->p >= 'a' && *c->p <= 'z') || (*c->p >= 'A' && *c->p <= 'Z') || *c->p == '.'))
            return fail(err, errlen, "shape dimension %d is not a plain integer", ndim);
        if (ndim == NPY_MAX_DIMS) return fail(err, errlen, "shape has more than %d dimensions", NPY_MAX_DIMS);
        a->shape[ndim++] = v;
        if (eat(c, ',')) commas++;
    }
    if (ndim == 1 && commas == 0) return fail(err, errlen, "header 'shape' (n) is not a tuple (needs (n,))");
    a->ndim = ndim;
    /* element count with an overflow-proof bound: every partial product stays <= 2^40 */
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (a->shape[i] == 0) { count = 0; break; }
    }
    if (count) {
        for (int i = 0; i < ndim; i++) {
            if (a->shape[i] > NPY_MAX_ELEMENTS / count)
                return fail(err, errlen, "shape has more than 2^40 elements");
            count *= a->shape[i];
        }
    }
    if ((uint64_t)count > SIZE_MAX / 8) return fail(err, errlen, "shape is too large for this machine");
    a->count = (size_t)count;
    return 0;
}

/* The dict: exactly the keys descr, fortran_order, shape, in any order, each once. */
static int parse_dict(const char *h, size_t n, npy_array *a, char *err, size_t errlen) {
    cursor c = {h, h + n};
    int have_descr = 0, have_order = 0, have_shape = 0;
    if (!eat(&c, '{')) return fail(err, errlen, "header is not a dict");
    for (;;) {
        if (eat(&c, '}')) break;
        const char *key;
        size_t klen;
        if (!parse_string(&c, &key, &klen)) return fail(err, errlen, "header dict is malformed (expected a quoted key or '}')");
        if (!eat(&c, ':')) return fail(err, errlen, "header dict is malformed (expected ':')");
        if (klen == 5 && !memcmp(key, "descr", 5)) {
            if (have_descr++) return fail(err, errlen, "header has 'descr' twice");
            const char *d;
            size_t dlen;
            if (!parse_string(&c, &d, &dlen)) return fail(err, errlen, "header 'descr' is not a string");
            char shown[24];
            printable(d, dlen, shown, sizeof shown);
            if (dlen >= sizeof a->descr) return fail(err, errlen, "unsupported descr '%s'", shown);
            memcpy(a->descr, d, dlen);
            a->descr[dlen] = 0;
            a->itemsize = npy_descr_itemsize(a->descr);
            if (!a->itemsize) return fail(err, errlen, "unsupported descr '%s' (want <f4, <f2, <u2 or <i4)", shown);
        } else if (klen == 13 && !memcmp(key, "fortran_order", 13)) {
            if (have_order++) return fail(err, errlen, "header has 'fortran_order' twice");
            if (match_word(&c, "True")) return fail(err, errlen, "fortran_order True is not supported (C order only)");
            if (!match_word(&c, "False")) return fail(err, errlen, "header 'fortran_order' is not True or False");
        } else if (klen == 5 && !memcmp(key, "shape", 5)) {
            if (have_shape++) return fail(err, errlen, "header has 'shape' twice");
            if (parse_shape(&c, a, err, errlen)) return -1;
        } else {
            char shown[24];
            printable(key, klen, shown, sizeof shown);
            return fail(err, errlen, "header has an unknown key '%s'", shown);
        }
        if (!eat(&c, ',')) {
            if (eat(&c, '}')) break;
            return fail(err, errlen, "header dict is malformed (expected ',' or '}')");
        }
    }
    skip_ws(&c);
    if (c.p != c.end) return fail(err, errlen, "header has bytes after the dict");
    if (!have_descr) return fail(err, errlen, "header has no 'descr' key");
    if (!have_order) return fail(err, errlen, "header has no 'fortran_order' key");
    if (!have_shape) return fail(err, errlen, "header has no 'shape' key");
    return 0;
}

/* Reads the preamble (magic, version, header length) from buf[0..len): sets its length and the
 * header length, or returns -1 with a message. */
static int preamble(const unsigned char *buf, size_t len, size_t *pre, size_t *hlen, char *err, size_t errlen) {
    if (len < 6) return fail(err, errlen, "file too short to be a .npy (%zu bytes)", len);
    if (memcmp(buf, npy_magic, 6)) return fail(err, errlen, "bad magic (not a .npy file)");
    if (len < 8) return fail(err, errlen, "truncated version");
    unsigned major = buf[6], minor = buf[7];
    if (major == 1 && minor == 0) {
        *pre = 10;
        if (len < 10) return fail(err, errlen, "truncated header length");
        *hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0) {
        *pre = 12;
        if (len < 12) return fail(err, errlen, "truncated header length");
        *hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    } else {
        return fail(err, errlen, "unsupported .npy version %u.%u", major, minor);
    }
    if (*hlen > NPY_MAX_HEADER_LEN) return fail(err, errlen, "header length %zu is absurd", *hlen);
    return 0;
}

/* Parses preamble + header from buf[0..len) of a file of file_size bytes; sets the data offset. */
static int parse_header(const unsigned char *buf, size_t len, size_t file_size, npy_array *a,
                        size_t *data_off, char *err, size_t errlen) {
    size_t pre = 0, hlen = 0;
    if (!host_is_little_endian()) return fail(err, errlen, "big-endian hosts are not supported");
    if (preamble(buf, len, &pre, &hlen, err, errlen)) return -1;
    if (len < pre + hlen)
        return fail(err, errlen, "truncated header (%zu bytes announced, %zu present)", hlen, len - pre);
    const char *h = (const char *)buf + pre;
    if (hlen == 0 || h[hlen - 1] != '\n') return fail(err, errlen, "header does not end with a newline");
    for (size_t i = 0; i < hlen; i++)
        if (h[i] == 0) return fail(err, errlen, "header holds a NUL byte");
    if (parse_dict(h, hlen, a, err, errlen)) return -1;
    size_t off = pre + hlen;
    size_t nbytes = a->count * a->itemsize; /* count <= 2^40, itemsize <= 4: no overflow */
    if (file_size < off + nbytes)
        return fail(err, errlen, "truncated data (header says %zu bytes, file has %zu)", nbytes, file_size - off);
    if (file_size > off + nbytes)
        return fail(err, errlen, "file is longer than its header says (%zu extra bytes)", file_size - off - nbytes);
    *data_off = off;
    return 0;
}

static void *alloc_data(const npy_array *a) {
    size_t n = a->count * a->itemsize;
    return malloc(n ? n : 1);
}

int npy_load_mem(const void *buf, size_t len, npy_array *out, char *err, size_t errlen) {
    npy_array a;
    memset(&a, 0, sizeof a);
    memset(out, 0, sizeof *out);
    size_t off;
    if (!buf) return fail(err, errlen, "no buffer");
    if (parse_header(buf, len, len, &a, &off, err, errlen)) return -1;
    a.data = alloc_data(&a);
    if (!a.data) return fail(err, errlen, "out of memory for %zu bytes of data", a.count * a.itemsize);
    memcpy(a.data, (const unsigned char *)buf + off, a.count * a.itemsize);
    *out = a;
    return 0;
}

int npy_load(const char *path, npy_array *out, char *err, size_t errlen) {
    npy_array a;
    memset(&a, 0, sizeof a);
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, errlen, "cannot open: %s", strerror(errno));
    unsigned char *head = NULL;
    int rc = -1;
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) { fail(err, errlen, "not a regular file"); goto done; }
    size_t file_size = (size_t)st.st_size;

    /* preamble first, then exactly the header it announces (bounded by NPY_MAX_HEADER_LEN) */
    unsigned char pre_buf[12];
    size_t got = fread(pre_buf, 1, sizeof pre_buf, f);
    size_t pre = 0, hlen = 0;
    if (preamble(pre_buf, got, &pre, &hlen, err, errlen)) goto done;
    head = malloc(pre + hlen);
    if (!head) { fail(err, errlen, "out of memory for the header"); goto done; }
    memcpy(head, pre_buf, pre);
    if (fseek(f, (long)pre, SEEK_SET)) { fail(err, errlen, "cannot seek: %s", strerror(errno)); goto done; }
    got = pre + fread(head + pre, 1, hlen, f);
    size_t off;
    if (parse_header(head, got, file_size, &a, &off, err, errlen)) goto done;

    size_t nbytes = a.count * a.itemsize;
    a.data = alloc_data(&a);
    if (!a.data) { fail(err, errlen, "out of memory for %zu bytes of data", nbytes); goto done; }
    if (fread(a.data, 1, nbytes, f) != nbytes) { fail(err, errlen, "truncated data (read failed)"); goto done; }
    if (fgetc(f) != EOF) { fail(err, errlen, "file is longer than its header says"); goto done; }
    *out = a;
    a.data = NULL;
    rc = 0;
done:
    free(a.data);
    free(head);
    fclose(f);
    return rc;
}

void npy_free(npy_array *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* Header text exactly as NumPy writes it, padded so that preamble + header is a multiple of 64. */
static size_t format_header(char *h, size_t cap, const char *descr, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(h, cap, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < ndim; i++)
        n += (size_t)snprintf(h + n, cap - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    n += (size_t)snprintf(h + n, cap - n, ndim == 1 ? ",), }" : "), }");
    while ((10 + n + 1) % 64) h[n++] = ' ';
    h[n++] = '\n';
    return n;
}

int npy_save(const char *path, const char *descr, int ndim, const int64_t *shape, const void *data,
             char *err, size_t errlen) {
    if (!host_is_little_endian()) return fail(err, errlen, "big-endian hosts are not supported");
    size_t itemsize = npy_descr_itemsize(descr);
    if (!itemsize) return fail(err, errlen, "unsupported descr '%s'", descr ? descr : "(null)");
    if (ndim < 0 || ndim > NPY_MAX_DIMS) return fail(err, errlen, "ndim %d is not in 0..%d", ndim, NPY_MAX_DIMS);
    if (ndim > 0 && !shape) return fail(err, errlen, "shape is NULL");
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return fail(err, errlen, "shape dimension %d is negative", i);
        if (shape[i] > NPY_MAX_ELEMENTS) return fail(err, errlen, "shape dimension %d is absurdly large", i);
    }
    for (int i = 0; i < ndim && count; i++) {
        if (shape[i] && shape[i] > NPY_MAX_ELEMENTS / count) return fail(err, errlen, "shape has more than 2^40 elements");
        count *= shape[i];
    }
    if (count && !data) return fail(err, errlen, "data is NULL");

    char header[512]; /* 8 dims of at most 13 digits fit with room to spare */
    size_t hlen = format_header(header, sizeof header, descr, ndim, shape);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return fail(err, errlen, "out of memory");
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fail(err, errlen, "cannot create a temporary file beside it: %s", strerror(errno));
        free(tmp);
        return -1;
    }
    fchmod(fd, 0644);
    FILE *f = fdopen(fd, "wb");
    int ok = f != NULL;
    size_t nbytes = (size_t)count * itemsize;
    if (ok) ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre && fwrite(header, 1, hlen, f) == hlen &&
                 (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    int saved = errno;
    if (f) { if (fclose(f)) { ok = 0; saved = errno; } } else close(fd);
    if (ok && rename(tmp, path)) { ok = 0; saved = errno; }
    if (!ok) {
        unlink(tmp);
        fail(err, errlen, "write failed: %s", strerror(saved));
    }
    free(tmp);
    return ok ? 0 : -1;
}
