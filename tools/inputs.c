/* Loading and cross-checking the inputs of attn / route (see inputs.h). */
#include "inputs.h"

#include "args.h"
#include "dtype.h"

#include <stdio.h>
#include <string.h>

static void shape_text(const npy_array *a, char *out, size_t outlen) {
    size_t n = (size_t)snprintf(out, outlen, "(");
    for (int i = 0; i < a->ndim && n < outlen; i++)
        n += (size_t)snprintf(out + n, outlen - n, i ? ", %lld" : "%lld", (long long)a->shape[i]);
    if (n < outlen) snprintf(out + n, outlen - n, a->ndim == 1 ? ",)" : ")");
}

static int load(const char *flag, const char *path, npy_array *a, char *err, size_t errlen) {
    char why[256];
    if (npy_load(path, a, why, sizeof why)) return args_error(err, errlen, "%s %s: %s", flag, path, why);
    return 0;
}

/* a must be 3-D, of q's dtype, with the given token count and head dim */
static int check_3d(const char *flag, const char *path, const npy_array *a, const npy_array *q,
                    int64_t total, int64_t d, char *err, size_t errlen) {
    char s[128];
    shape_text(a, s, sizeof s);
    if (strcmp(a->descr, q->descr))
        return args_error(err, errlen, "%s %s: dtype %s does not match q's %s", flag, path, a->descr, q->descr);
    if (a->ndim != 3) return args_error(err, errlen, "%s %s: shape %s is not 3-D [total, heads, head_dim]", flag, path, s);
    if (a->shape[0] != total)
        return args_error(err, errlen, "%s %s: shape %s has %lld tokens, q has %lld", flag, path, s, (long long)a->shape[0], (long long)total);
    if (a->shape[2] != d)
        return args_error(err, errlen, "%s %s: shape %s has head_dim %lld, q has %lld", flag, path, s, (long long)a->shape[2], (long long)d);
    if (a->shape[1] < 1 || a->shape[1] > 65536) return args_error(err, errlen, "%s %s: shape %s has a bad head count", flag, path, s);
    return 0;
}

static int check_cu(const char *path, const npy_array *cu, int64_t total, char *err, size_t errlen) {
    char s[128];
    shape_text(cu, s, sizeof s);
    if (strcmp(cu->descr, "<i4")) return args_error(err, errlen, "--cu-seqlens %s: dtype %s, want <i4 (int32)", path, cu->descr);
    if (cu->ndim != 1 || cu->shape[0] < 2)
        return args_error(err, errlen, "--cu-seqlens %s: shape %s, want 1-D [num_seqs + 1] with num_seqs >= 1", path, s);
    if (cu->shape[0] - 1 > INT32_MAX) return args_error(err, errlen, "--cu-seqlens %s: too many sequences", path);
    const int32_t *c = cu->data;
    if (c[0] != 0) return args_error(err, errlen, "--cu-seqlens %s: first entry is %d, want 0", path, c[0]);
    for (int64_t i = 1; i < cu->shape[0]; i++)
        if (c[i] < c[i - 1])
            return args_error(err, errlen, "--cu-seqlens %s: entry %lld (%d) is below entry %lld (%d)", path, (long long)i, c[i], (long long)(i - 1), c[i - 1]);
    if (c[cu->shape[0] - 1] != total)
        return args_error(err, errlen, "--cu-seqlens %s: last entry is %d, q has %lld tokens", path, c[cu->shape[0] - 1], (long long)total);
    return 0;
}

int inputs_load(attn_inputs *in, const char *q_path, const char *k_path, const char *v_path,
                const char *cu_path, const char *dout_path, char *err, size_t errlen) {
    memset(in, 0, sizeof *in);
    if (load("--q", q_path, &in->q, err, errlen)) goto fail;
    char s[128];
    shape_text(&in->q, s, sizeof s);
    if (dtype_from_descr(in->q.descr, &in->dtype)) {
        args_error(err, errlen, "--q %s: dtype %s is not a storage dtype (want <f4, <f2 or <u2 = bfloat16 bits)", q_path, in->q.descr);
        goto fail;
    }
    if (in->q.ndim != 3 || in->q.shape[0] < 1 || in->q.shape[1] < 1 || in->q.shape[2] < 1) {
        args_error(err, errlen, "--q %s: shape %s, want [total, Hq, head_dim] with every size >= 1", q_path, s);
        goto fail;
    }
    if (in->q.shape[0] > INT32_MAX || in->q.shape[1] > 65536 || in->q.shape[2] > 65536) {
        args_error(err, errlen, "--q %s: shape %s is too large", q_path, s);
        goto fail;
    }
    in->total = in->q.shape[0];
    in->num_q_heads = (int)in->q.shape[1];
    in->head_dim = (int)in->q.shape[2];

    if (load("--k", k_path, &in->k, err, errlen)) goto fail;
    if (check_3d("--k", k_path, &in->k, &in->q, in->total, in->head_dim, err, errlen)) goto fail;
    in->num_kv_heads = (int)in->k.shape[1];
    if (in->num_q_heads % in->num_kv_heads) {
        args_error(err, errlen, "--k %s: %d kv heads do not divide q's %d heads", k_path, in->num_kv_heads, in->num_q_heads);
        goto fail;
    }
    if (v_path) {
        if (load("--v", v_path, &in->v, err, errlen)) goto fail;
        if (check_3d("--v", v_path, &in->v, &in->q, in->total, in->head_dim, err, errlen)) goto fail;
        if (in->v.shape[1] != in->num_kv_heads) {
            args_error(err, errlen, "--v %s: %lld heads, k has %d", v_path, (long long)in->v.shape[1], in->num_kv_heads);
            goto fail;
        }
    }
    if (load("--cu-seqlens", cu_path, &in->cu_seqlens, err, errlen)) goto fail;
    if (check_cu(cu_path, &in->cu_seqlens, in->total, err, errlen)) goto fail;
    in->num_seqs = (int)(in->cu_seqlens.shape[0] - 1);
    if (dout_path) {
        if (load("--do", dout_path, &in->dout, err, errlen)) goto fail;
        if (check_3d("--do", dout_path, &in->dout, &in->q, in->total, in->head_dim, err, errlen)) goto fail;
        if (in->dout.shape[1] != in->num_q_heads) {
            args_error(err, errlen, "--do %s: %lld heads, q has %d", dout_path, (long long)in->dout.shape[1], in->num_q_heads);
            goto fail;
        }
    }
    return 0;
fail:
    inputs_free(in);
    return -1;
}

void inputs_free(attn_inputs *in) {
    npy_free(&in->q);
    npy_free(&in->k);
    npy_free(&in->v);
    npy_free(&in->cu_seqlens);
    npy_free(&in->dout);
}

void inputs_params(const attn_inputs *in, moba_params *p) {
    moba_params_init(p);
    p->dtype = in->dtype;
    p->num_seqs = in->num_seqs;
    p->total_tokens = in->total;
    p->cu_seqlens = in->cu_seqlens.data;
    p->num_q_heads = in->num_q_heads;
    p->num_kv_heads = in->num_kv_heads;
    p->head_dim = in->head_dim;
}
