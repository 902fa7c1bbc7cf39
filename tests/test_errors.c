/*
 * Bad input -> the right status, a message that names the bad argument, and nothing the caller
 * owns written. Each case changes one thing in a valid call; the valid call itself is run first
 * (and must succeed) so no case fails for some other reason.
 *
 * Before every bad call a sentinel failure of a different function is left in moba_last_error(),
 * so a message is only accepted if this very call wrote it (it must name this call's function).
 */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "ref64.h"

enum { T = 12, HQ = 4, HKV = 2, D = 8, K_TOP = 2, PATTERN = 0xa5 };

/* Tensors of the valid call; outputs are refilled with PATTERN before each bad call. */
static float q[T * HQ * D], k[T * HKV * D], v[T * HKV * D], dout[T * HQ * D];
static float o[T * HQ * D], lse[HQ * T], dq[T * HQ * D], dk[T * HKV * D], dv[T * HKV * D];
static int32_t block_idx[HQ * T * K_TOP];
static size_t ws_bytes_out;
static float o_good[T * HQ * D], lse_good[HQ * T];

static struct { void *ptr; size_t bytes; } outputs[] = {
    {o, sizeof o}, {lse, sizeof lse}, {dq, sizeof dq}, {dk, sizeof dk}, {dv, sizeof dv},
    {block_idx, sizeof block_idx}, {&ws_bytes_out, sizeof ws_bytes_out},
};
enum { NUM_OUTPUTS = sizeof outputs / sizeof outputs[0] };

static void fill_outputs(void) {
    for (int i = 0; i < NUM_OUTPUTS; i++) memset(outputs[i].ptr, PATTERN, outputs[i].bytes);
}

static int outputs_untouched(void) {
    for (int i = 0; i < NUM_OUTPUTS; i++) {
        const unsigned char *b = outputs[i].ptr;
        for (size_t j = 0; j < outputs[i].bytes; j++)
            if (b[j] != PATTERN) return 0;
    }
    return 1;
}

static int32_t cu_good[3] = {0, 5, T};

static void valid_params(moba_params *p, int32_t *cu) {
    memcpy(cu, cu_good, sizeof cu_good);
    moba_params_init(p);
    ref_set_problem(p, MOBA_DTYPE_F32, 2, cu, HQ, HKV, D, 4, K_TOP);
}

typedef enum { FN_FORWARD, FN_BACKWARD, FN_ROUTE, FN_WORKSPACE, NUM_FN } fn_id;
static const char *fn_names[NUM_FN] = {"moba_forward", "moba_backward", "moba_route", "moba_workspace_size"};

/* A failure of another function, so a stale message can't pass for this call's. */
static void leave_sentinel(fn_id fn) {
    if (fn == FN_WORKSPACE) moba_route(NULL, q, k, block_idx, NULL, 0);
    else moba_workspace_size(NULL, MOBA_OP_FORWARD, &ws_bytes_out);
}

/* Null-pointer switches for the tensor arguments. */
typedef struct {
    int q, k, v, o, dout, lse, dq, dk, dv, block_idx, bytes;
} nulls;

static moba_status call(fn_id fn, const moba_params *p, nulls n, moba_op op) {
    switch (fn) {
    case FN_FORWARD:
        return moba_forward(p, n.q ? NULL : q, n.k ? NULL : k, n.v ? NULL : v, n.o ? NULL : o, lse, NULL, 0);
    case FN_BACKWARD:
        return moba_backward(p, n.dout ? NULL : dout, n.q ? NULL : q, n.k ? NULL : k, n.v ? NULL : v,
                             o_good, n.lse ? NULL : lse_good, n.dq ? NULL : dq, n.dk ? NULL : dk,
                             n.dv ? NULL : dv, NULL, 0);
    case FN_ROUTE:
        return moba_route(p, n.q ? NULL : q, n.k ? NULL : k, n.block_idx ? NULL : block_idx, NULL, 0);
    default:
        return moba_workspace_size(p, op, n.bytes ? NULL : &ws_bytes_out);
    }
}

/* Runs fn on p (with the NULLs in n) and checks status, message and untouched outputs. `names` is
 * a '|'-separated list of acceptable argument names: the message must hold one as a word. */
static void expect(const char *what, fn_id fn, const moba_params *p, nulls n, moba_op op, moba_status want,
                   const char *names) {
    fill_outputs();
    leave_sentinel(fn);
    moba_status got = call(fn, p, n, op);
    const char *msg = moba_last_error();
    CHECK(got == want, "%s / %s: status %d (%s), want %d; message '%s'", what, fn_names[fn], got, moba_strerror(got),
          want, msg ? msg : "(null)");
    CHECK_FATAL(msg != NULL, "moba_last_error() returned NULL");
    CHECK(strstr(msg, fn_names[fn]) != NULL, "%s: message '%s' does not name %s", what, msg, fn_names[fn]);
    int named = 0;
    char list[128];
    snprintf(list, sizeof list, "%s", names);
    for (char *tok = strtok(list, "|"); tok; tok = strtok(NULL, "|")) named |= has_word(msg, tok);
    CHECK(named, "%s: message '%s' does not name '%s'", what, msg, names);
    CHECK(outputs_untouched(), "%s / %s: an output was written on failure", what, fn_names[fn]);
    if (fn == FN_FORWARD) printf("  %-36s %s\n", what, msg);
}

static const nulls none = {0};

/* A params change is bad for every entry point alike. */
static void expect_all(const char *what, const moba_params *p, moba_status want, const char *names) {
    for (int fn = 0; fn < NUM_FN; fn++) expect(what, (fn_id)fn, p, none, MOBA_OP_FORWARD, want, names);
}

static void test_valid_call_works(void) {
    moba_params p;
    int32_t cu[3];
    valid_params(&p, cu);
    CHECK(moba_forward(&p, q, k, v, o_good, lse_good, NULL, 0) == MOBA_OK, "valid forward: %s", moba_last_error());
    float o2[T * HQ * D];
    fill_outputs();
    CHECK(moba_forward(&p, q, k, v, o2, NULL, NULL, 0) == MOBA_OK, "forward with lse NULL: %s", moba_last_error());
    CHECK(!memcmp(o2, o_good, sizeof o2), "forward with lse NULL gives another o");
    CHECK(outputs_untouched(), "forward with lse NULL touched lse (or another output)");
    CHECK(moba_backward(&p, dout, q, k, v, o_good, lse_good, dq, dk, dv, NULL, 0) == MOBA_OK, "valid backward: %s",
          moba_last_error());
    CHECK(moba_route(&p, q, k, block_idx, NULL, 0) == MOBA_OK, "valid route: %s", moba_last_error());
    for (int op = 0; op < 3; op++)
        CHECK(moba_workspace_size(&p, (moba_op)op, &ws_bytes_out) == MOBA_OK, "valid workspace_size(%d): %s", op,
              moba_last_error());
}

static void test_params(void) {
    moba_params p;
    int32_t cu[3];
    const moba_status BAD = MOBA_ERR_INVALID_ARGUMENT;
#define CASE(what, change, want, names) \
    do {                                \
        valid_params(&p, cu);           \
        change;                         \
        expect_all(what, &p, want, names); \
    } while (0)
    for (int fn = 0; fn < NUM_FN; fn++) expect("params NULL", (fn_id)fn, NULL, none, MOBA_OP_FORWARD, BAD, "params|p");
    CASE("num_seqs 0", p.num_seqs = 0, BAD, "num_seqs");
    CASE("num_seqs -1", p.num_seqs = -1, BAD, "num_seqs");
    CASE("total_tokens 0", p.total_tokens = 0, BAD, "total_tokens");
    CASE("total_tokens -5", p.total_tokens = -5, BAD, "total_tokens");
    CASE("total_tokens > INT32_MAX", p.total_tokens = (int64_t)INT32_MAX + 1, BAD, "total_tokens");
    CASE("num_q_heads 0", p.num_q_heads = 0, BAD, "num_q_heads");
    CASE("num_q_heads -2", p.num_q_heads = -2, BAD, "num_q_heads");
    CASE("num_kv_heads 0", p.num_kv_heads = 0, BAD, "num_kv_heads");
    CASE("num_kv_heads -1", p.num_kv_heads = -1, BAD, "num_kv_heads");
    CASE("num_q_heads 6 % num_kv_heads 4", (p.num_q_heads = 6, p.num_kv_heads = 4), BAD, "num_q_heads");
    CASE("num_kv_heads > num_q_heads", p.num_kv_heads = 8, BAD, "num_q_heads|num_kv_heads");
    CASE("head_dim 0", p.head_dim = 0, BAD, "head_dim");
    CASE("head_dim -1", p.head_dim = -1, BAD, "head_dim");
    CASE("head_dim 257", p.head_dim = 257, BAD, "head_dim");
    CASE("block_size 0", p.block_size = 0, BAD, "block_size");
    CASE("block_size -3", p.block_size = -3, BAD, "block_size");
    CASE("top_k 0", p.top_k = 0, BAD, "top_k");
    CASE("top_k -1", p.top_k = -1, BAD, "top_k");
    CASE("dtype 7", p.dtype = (moba_dtype)7, BAD, "dtype");
    CASE("dtype -1", p.dtype = (moba_dtype)-1, BAD, "dtype");
    CASE("backend 7", p.backend = (moba_backend)7, BAD, "backend");
    CASE("num_threads -1", p.num_threads = -1, BAD, "num_threads");
    CASE("softmax_scale -1", p.softmax_scale = -1.0f, BAD, "softmax_scale");
    CASE("softmax_scale NaN", p.softmax_scale = NAN, BAD, "softmax_scale");
    CASE("softmax_scale inf", p.softmax_scale = INFINITY, BAD, "softmax_scale");
    CASE("softmax_scale -inf", p.softmax_scale = -INFINITY, BAD, "softmax_scale");
    CASE("cu_seqlens NULL", p.cu_seqlens = NULL, BAD, "cu_seqlens");
    CASE("cu_seqlens[0] = 1", cu[0] = 1, BAD, "cu_seqlens");
    CASE("cu_seqlens decreasing", cu[1] = 13, BAD, "cu_seqlens");
    CASE("cu_seqlens[0] negative", cu[0] = -1, BAD, "cu_seqlens");
    CASE("cu_seqlens ends before total", cu[2] = T - 1, BAD, "cu_seqlens|total_tokens");
    CASE("cu_seqlens ends after total", p.total_tokens = T - 1, BAD, "cu_seqlens|total_tokens");

    /* sizes whose byte counts overflow: total x Hq x d x 4 > 2^63, and total x Hq x top_k x 4 */
    int32_t cu_huge[2] = {0, INT32_MAX};
    CASE("q bytes overflow (huge heads)",
         (p.num_seqs = 1, p.cu_seqlens = cu_huge, p.total_tokens = INT32_MAX, p.num_q_heads = p.num_kv_heads = 1 << 30,
          p.head_dim = 256),
         BAD, "num_q_heads|total_tokens|head_dim");
    CASE("block_idx bytes overflow (huge top_k)",
         (p.num_seqs = 1, p.cu_seqlens = cu_huge, p.total_tokens = INT32_MAX, p.num_q_heads = 1 << 20,
          p.num_kv_heads = 1, p.head_dim = 1, p.top_k = 1 << 30),
         BAD, "top_k|num_q_heads|total_tokens");

    if (!moba_backend_available(MOBA_BACKEND_CUDA))
        CASE("CUDA backend not available", p.backend = MOBA_BACKEND_CUDA, MOBA_ERR_UNSUPPORTED, "CUDA|MOBA_BACKEND_CUDA|backend");
    else
        printf("  (CUDA is available: skipping the CUDA-not-available case)\n");
#undef CASE
}

static void test_null_tensors(void) {
    moba_params p;
    int32_t cu[3];
    valid_params(&p, cu);
    const moba_status BAD = MOBA_ERR_INVALID_ARGUMENT;
    nulls n;
#define NULL_CASE(fn, field, name)                                                   \
    do {                                                                             \
        n = none;                                                                    \
        n.field = 1;                                                                 \
        expect(#fn ": " name " NULL", fn, &p, n, MOBA_OP_FORWARD, BAD, name);        \
    } while (0)
    NULL_CASE(FN_FORWARD, q, "q");
    NULL_CASE(FN_FORWARD, k, "k");
    NULL_CASE(FN_FORWARD, v, "v");
    NULL_CASE(FN_FORWARD, o, "o");
    NULL_CASE(FN_BACKWARD, dout, "dout");
    NULL_CASE(FN_BACKWARD, q, "q");
    NULL_CASE(FN_BACKWARD, k, "k");
    NULL_CASE(FN_BACKWARD, v, "v");
    NULL_CASE(FN_BACKWARD, lse, "lse");
    NULL_CASE(FN_BACKWARD, dq, "dq");
    NULL_CASE(FN_BACKWARD, dk, "dk");
    NULL_CASE(FN_BACKWARD, dv, "dv");
    NULL_CASE(FN_ROUTE, q, "q");
    NULL_CASE(FN_ROUTE, k, "k");
    NULL_CASE(FN_ROUTE, block_idx, "block_idx");
    NULL_CASE(FN_WORKSPACE, bytes, "bytes");
#undef NULL_CASE
    /* backward's o is its own argument (not switched by `nulls`) */
    fill_outputs();
    leave_sentinel(FN_BACKWARD);
    moba_status st = moba_backward(&p, dout, q, k, v, NULL, lse_good, dq, dk, dv, NULL, 0);
    CHECK(st == BAD && has_word(moba_last_error(), "o") && strstr(moba_last_error(), "moba_backward"),
          "backward o NULL: %d '%s'", st, moba_last_error());
    CHECK(outputs_untouched(), "backward o NULL wrote an output");

    expect("workspace_size op 9", FN_WORKSPACE, &p, none, (moba_op)9, BAD, "op");

    /* a workspace smaller than asked for */
    size_t need = 0;
    for (int op = 0; op < 3; op++) {
        CHECK(moba_workspace_size(&p, (moba_op)op, &need) == MOBA_OK, "workspace_size");
        if (need == 0) continue;
        unsigned char *ws = check_malloc(need);
        fill_outputs();
        st = op == 0 ? moba_forward(&p, q, k, v, o, lse, ws, need - 1)
           : op == 1 ? moba_backward(&p, dout, q, k, v, o_good, lse_good, dq, dk, dv, ws, need - 1)
                     : moba_route(&p, q, k, block_idx, ws, need - 1);
        CHECK(st == MOBA_ERR_WORKSPACE_TOO_SMALL, "op %d: workspace one byte short gives %d", op, st);
        CHECK(strstr(moba_last_error(), "workspace") != NULL, "op %d: message '%s'", op, moba_last_error());
        CHECK(outputs_untouched(), "op %d: too-small workspace wrote an output", op);
        free(ws);
    }
}

/* moba_params.block_idx read by the backward: a row that breaks moba_route's format is refused, naming
 * block_idx, before anything is written. Blocks of 2 tokens and top_k 3 so rows have history to choose. */
static void test_bad_selection(void) {
    moba_params p;
    int32_t cu[3];
    valid_params(&p, cu);
    p.block_size = 2, p.top_k = 3;
    static int32_t good[HQ * T * 3], bad[HQ * T * 3];
    CHECK(moba_route(&p, q, k, good, NULL, 0) == MOBA_OK, "route: %s", moba_last_error());
    p.block_idx = good;
    fill_outputs();
    CHECK(moba_backward(&p, dout, q, k, v, o_good, lse_good, dq, dk, dv, NULL, 0) == MOBA_OK,
          "backward with moba_route's selection: %s", moba_last_error());
    /* token 11 (block 3 of the second sequence, history 0..2) of head 1: entries x, y, 3 */
    const int row = (1 * T + 11) * 3;
    CHECK(good[row + 2] == 3 && good[row] < good[row + 1], "unexpected route row %d %d %d", good[row], good[row + 1],
          good[row + 2]);
    static const struct { const char *what; int slot, value; } cases[] = {
        {"block_idx: history block >= own block", 0, 3},   {"block_idx: block past the sequence", 1, 1000},
        {"block_idx: negative history block", 0, -2},      {"block_idx: own block missing", 2, -1},
        {"block_idx: history not ascending", 0, 2},        {"block_idx: a block twice", 1, -7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(bad, good, sizeof bad);
        bad[row + cases[i].slot] = cases[i].value == -7 ? bad[row] : cases[i].value;
        p.block_idx = bad;
        expect(cases[i].what, FN_BACKWARD, &p, none, MOBA_OP_BACKWARD, MOBA_ERR_INVALID_ARGUMENT, "block_idx");
    }
    /* padding that is not -1: token 0 (block 0) holds 0, -1, -1 */
    memcpy(bad, good, sizeof bad);
    bad[(0 * T + 0) * 3 + 2] = 0;
    p.block_idx = bad;
    expect("block_idx: padding not -1", FN_BACKWARD, &p, none, MOBA_OP_BACKWARD, MOBA_ERR_INVALID_ARGUMENT, "block_idx");
}

static void test_misc(void) {
    const char *seen[8] = {0};
    for (int s = 0; s <= 6; s++) {
        const char *m = moba_strerror((moba_status)s);
        CHECK(m != NULL && m[0] != 0, "moba_strerror(%d) is empty", s);
        for (int t = 0; t < s && m; t++) CHECK(strcmp(m, seen[t]), "moba_strerror(%d) == moba_strerror(%d)", s, t);
        seen[s] = m ? m : "";
        printf("  moba_strerror(%d) = \"%s\"\n", s, m ? m : "(null)");
    }
    CHECK(moba_strerror((moba_status)99) != NULL, "moba_strerror(99) is NULL");
    CHECK(moba_strerror((moba_status)-1) != NULL, "moba_strerror(-1) is NULL");

    moba_params_init(NULL); /* must not crash */
    moba_params p;
    memset(&p, 0x5a, sizeof p);
    moba_params_init(&p);
    CHECK(p.backend == MOBA_BACKEND_CPU && p.dtype == MOBA_DTYPE_F32 && p.softmax_scale == 0.0f && p.num_threads == 0 &&
              p.cu_seqlens == NULL && p.cuda_stream == NULL && p.deterministic == 0 && p.top_k == 0,
          "moba_params_init defaults");

    CHECK(moba_dtype_size(MOBA_DTYPE_F32) == 4 && moba_dtype_size(MOBA_DTYPE_F16) == 2 &&
              moba_dtype_size(MOBA_DTYPE_BF16) == 2 && moba_dtype_size((moba_dtype)7) == 0,
          "moba_dtype_size");
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", MOBA_VERSION_MAJOR, MOBA_VERSION_MINOR, MOBA_VERSION_PATCH);
    CHECK(moba_version() && !strcmp(moba_version(), want), "moba_version '%s' != '%s'", moba_version(), want);

    CHECK(moba_backend_available(MOBA_BACKEND_CPU) == 1, "CPU backend not available");
    CHECK(moba_backend_available((moba_backend)7) == 0, "unknown backend available");
    CHECK(moba_backend_supports(MOBA_BACKEND_CPU, MOBA_DTYPE_BF16, 256, 1) == MOBA_OK, "CPU d=256: %s", moba_last_error());
    moba_status st = moba_backend_supports(MOBA_BACKEND_CPU, MOBA_DTYPE_F32, 257, 64);
    CHECK(st == MOBA_ERR_UNSUPPORTED && has_word(moba_last_error(), "head_dim"), "CPU d=257: %d '%s'", st, moba_last_error());
    st = moba_backend_supports(MOBA_BACKEND_CPU, (moba_dtype)7, 64, 64);
    CHECK(st != MOBA_OK && has_word(moba_last_error(), "dtype"), "unknown dtype: %d '%s'", st, moba_last_error());
    if (!moba_backend_available(MOBA_BACKEND_CUDA)) {
        st = moba_backend_supports(MOBA_BACKEND_CUDA, MOBA_DTYPE_BF16, 128, 128);
        CHECK(st == MOBA_ERR_UNSUPPORTED, "CUDA supports without CUDA: %d '%s'", st, moba_last_error());
    }
}

int main(void) {
    ref_rng rng;
    ref_rng_seed(&rng, 12345);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, q, T * HQ * D, 1.0);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, k, T * HKV * D, 1.0);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, v, T * HKV * D, 1.0);
    ref_fill_normal(&rng, MOBA_DTYPE_F32, dout, T * HQ * D, 1.0);
    float q0[T * HQ * D], k0[T * HKV * D], v0[T * HKV * D], dout0[T * HQ * D];
    memcpy(q0, q, sizeof q);
    memcpy(k0, k, sizeof k);
    memcpy(v0, v, sizeof v);
    memcpy(dout0, dout, sizeof dout);

    test_valid_call_works();
    printf("bad arguments (forward's message shown):\n");
    test_params();
    test_null_tensors();
    test_bad_selection();
    test_misc();
    CHECK(!memcmp(q, q0, sizeof q) && !memcmp(k, k0, sizeof k) && !memcmp(v, v0, sizeof v) &&
              !memcmp(dout, dout0, sizeof dout),
          "an input was modified");
    CHECK(!memcmp(cu_good, (int32_t[]){0, 5, T}, sizeof cu_good), "cu_seqlens modified");
    return check_done("test_errors");
}
