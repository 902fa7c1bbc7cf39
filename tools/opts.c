/*
 * Flag tables, defaults, cross-flag checks and --help text of every subcommand (see opts.h).
 * A table is built over the options struct it fills, so the same table drives parsing and help.
 */
#include "opts.h"

#include "args.h"

#include <string.h>

#define MAX_FLAGS 32
#define BIG 2147483647.0 /* INT32_MAX: no size flag may exceed it */

const char *device_name(device_kind d) {
    return d == DEVICE_CPU ? "cpu" : d == DEVICE_CUDA ? "cuda" : "auto";
}

const char *dtype_choice_name(dtype_choice t) {
    return t == DTYPE_F32 ? "f32" : t == DTYPE_F16 ? "f16" : t == DTYPE_BF16 ? "bf16" : "auto";
}

static int parse_device(const char *name, int allow_auto, device_kind *out, char *err, size_t errlen) {
    if (!name) { *out = allow_auto ? DEVICE_AUTO : DEVICE_CPU; return ARGS_OK; }
    if (!strcmp(name, "cpu")) *out = DEVICE_CPU;
    else if (!strcmp(name, "cuda")) *out = DEVICE_CUDA;
    else if (allow_auto && !strcmp(name, "auto")) *out = DEVICE_AUTO;
    else return args_error(err, errlen, "--device must be %s, got '%.40s'", allow_auto ? "auto, cpu or cuda" : "cpu or cuda", name);
    return ARGS_OK;
}

static int parse_dtype(const char *name, dtype_choice *out, char *err, size_t errlen) {
    if (!name || !strcmp(name, "auto")) *out = DTYPE_AUTO;
    else if (!strcmp(name, "f32")) *out = DTYPE_F32;
    else if (!strcmp(name, "f16")) *out = DTYPE_F16;
    else if (!strcmp(name, "bf16")) *out = DTYPE_BF16;
    else return args_error(err, errlen, "--dtype must be auto, f32, f16 or bf16, got '%.40s'", name);
    return ARGS_OK;
}

/* Two output flags naming one file would silently lose one of the outputs. */
static int distinct_outputs(const char *const *names, const char *const *paths, int n, char *err, size_t errlen) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (paths[i] && paths[j] && !strcmp(paths[i], paths[j]))
                return args_error(err, errlen, "%s and %s name the same file '%.40s'", names[i], names[j], paths[i]);
    return ARGS_OK;
}

/* A comma-separated list of sizes in [1, max]; errors say which flag. */
static int parse_list(const char *flag, const char *text, int64_t max, int64_t *out, int cap, int *n, char *err, size_t errlen) {
    if (!args_parse_int_list(text, 1, max, out, cap, n, err, errlen)) return ARGS_OK;
    char inner[200];
    snprintf(inner, sizeof inner, "%s", err);
    return args_error(err, errlen, "%s: %s", flag, inner);
}

/* ---- attn ---- */

static int attn_specs(attn_opts *o, arg_spec *s) {
    int n = 0;
    s[n++] = (arg_spec){"--q", ARG_STRING, "FILE", "queries [total, Hq, d]: <f4 float32, <f2 float16 or <u2 bfloat16 bits", &o->q, 0, 0, 1};
    s[n++] = (arg_spec){"--k", ARG_STRING, "FILE", "keys [total, Hkv, d], same dtype as q", &o->k, 0, 0, 1};
    s[n++] = (arg_spec){"--v", ARG_STRING, "FILE", "values [total, Hkv, d], same dtype as q", &o->v, 0, 0, 1};
    s[n++] = (arg_spec){"--cu-seqlens", ARG_STRING, "FILE", "sequence boundaries [num_seqs + 1], <i4 int32, 0 .. total", &o->cu_seqlens, 0, 0, 1};
    s[n++] = (arg_spec){"--block-size", ARG_INT, "B", "tokens per key block", &o->block_size, 1, BIG, 1};
    s[n++] = (arg_spec){"--top-k", ARG_INT, "K", "blocks per query, counting its own block", &o->top_k, 1, BIG, 1};
    s[n++] = (arg_spec){"--out", ARG_STRING, "FILE", "writes o [total, Hq, d] in q's dtype", &o->out, 0, 0, 1};
    s[n++] = (arg_spec){"--lse", ARG_STRING, "FILE", "also writes lse [Hq, total] as float32 (natural log)", &o->lse, 0, 0, 0};
    s[n++] = (arg_spec){"--do", ARG_STRING, "FILE", "output gradient [total, Hq, d]: runs the backward too (needs --dq --dk --dv)", &o->dout, 0, 0, 0};
    s[n++] = (arg_spec){"--dq", ARG_STRING, "FILE", "writes dq [total, Hq, d] (with --do)", &o->dq, 0, 0, 0};
    s[n++] = (arg_spec){"--dk", ARG_STRING, "FILE", "writes dk [total, Hkv, d] (with --do)", &o->dk, 0, 0, 0};
    s[n++] = (arg_spec){"--dv", ARG_STRING, "FILE", "writes dv [total, Hkv, d] (with --do)", &o->dv, 0, 0, 0};
    s[n++] = (arg_spec){"--softmax-scale", ARG_REAL, "S", "softmax scale > 0 (default 1/sqrt(d))", &o->softmax_scale, 0, 1e30, 0};
    s[n++] = (arg_spec){"--device", ARG_STRING, "DEV", "cpu (default) or cuda (needs a CUDA build and a GPU)", &o->device_name, 0, 0, 0};
    s[n++] = (arg_spec){"--threads", ARG_INT, "N", "CPU threads, 0 = OpenMP's default (default 0)", &o->threads, 0, 4096, 0};
    return n;
}

int attn_opts_parse(attn_opts *o, int argc, char **argv, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->softmax_scale = -1; /* "not given": 0 is refused below, the library's 0 means default */
    arg_spec s[MAX_FLAGS];
    int n = attn_specs(o, s);
    int rc = args_parse(s, n, argc, argv, err, errlen);
    if (rc) return rc;
    if (o->softmax_scale == 0) return args_error(err, errlen, "--softmax-scale must be > 0, got 0");
    if (o->softmax_scale < 0) o->softmax_scale = 0;
    o->backward = o->dout != NULL;
    int grads = (o->dq != NULL) + (o->dk != NULL) + (o->dv != NULL);
    if (o->backward && grads != 3) return args_error(err, errlen, "--do needs all of --dq, --dk and --dv");
    if (!o->backward && grads) return args_error(err, errlen, "--dq, --dk and --dv need --do (the output gradient)");
    const char *names[] = {"--out", "--lse", "--dq", "--dk", "--dv"};
    const char *paths[] = {o->out, o->lse, o->dq, o->dk, o->dv};
    if (distinct_outputs(names, paths, 5, err, errlen)) return ARGS_ERROR;
    return parse_device(o->device_name, 0, &o->device, err, errlen);
}

/* ---- route ---- */

static int route_specs(route_opts *o, arg_spec *s) {
    int n = 0;
    s[n++] = (arg_spec){"--q", ARG_STRING, "FILE", "queries [total, Hq, d]: <f4, <f2 or <u2 (bfloat16 bits)", &o->q, 0, 0, 1};
    s[n++] = (arg_spec){"--k", ARG_STRING, "FILE", "keys [total, Hkv, d], same dtype as q", &o->k, 0, 0, 1};
    s[n++] = (arg_spec){"--cu-seqlens", ARG_STRING, "FILE", "sequence boundaries [num_seqs + 1], <i4 int32", &o->cu_seqlens, 0, 0, 1};
    s[n++] = (arg_spec){"--block-size", ARG_INT, "B", "tokens per key block", &o->block_size, 1, BIG, 1};
    s[n++] = (arg_spec){"--top-k", ARG_INT, "K", "blocks per query, counting its own block", &o->top_k, 1, BIG, 1};
    s[n++] = (arg_spec){"--out", ARG_STRING, "FILE", "writes int32 [Hq, total, K]: selected blocks ascending, -1 padded", &o->out, 0, 0, 1};
    s[n++] = (arg_spec){"--device", ARG_STRING, "DEV", "cpu (default) or cuda", &o->device_name, 0, 0, 0};
    s[n++] = (arg_spec){"--threads", ARG_INT, "N", "CPU threads, 0 = OpenMP's default (default 0)", &o->threads, 0, 4096, 0};
    return n;
}

int route_opts_parse(route_opts *o, int argc, char **argv, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    arg_spec s[MAX_FLAGS];
    int n = route_specs(o, s);
    int rc = args_parse(s, n, argc, argv, err, errlen);
    if (rc) return rc;
    return parse_device(o->device_name, 0, &o->device, err, errlen);
}

/* ---- demo ---- */

static int demo_specs(demo_opts *o, arg_spec *s) {
    int n = 0;
    s[n++] = (arg_spec){"--seqlen", ARG_INT, "N", "tokens in the sequence (default 16384)", &o->seqlen, 1, 1 << 22, 0};
    s[n++] = (arg_spec){"--heads", ARG_INT, "H", "attention heads (default 8)", &o->heads, 1, 256, 0};
    s[n++] = (arg_spec){"--head-dim", ARG_INT, "D", "head dimension (default 128)", &o->head_dim, 1, 256, 0};
    s[n++] = (arg_spec){"--block-size", ARG_INT, "B", "tokens per block (default 512)", &o->block_size, 1, 1 << 22, 0};
    s[n++] = (arg_spec){"--top-k", ARG_INT, "K", "blocks per query, own block included (default 3)", &o->top_k, 1, 1 << 22, 0};
    s[n++] = (arg_spec){"--needles", ARG_INT, "M", "needle queries planted per head (default 32)", &o->needles, 0, 4096, 0};
    s[n++] = (arg_spec){"--needle-snr", ARG_REAL, "S", "mean needle strength in noise sigmas of the router score (default 3)", &o->needle_snr, 0, 100, 0};
    s[n++] = (arg_spec){"--locality", ARG_REAL, "L", "strength of the background's preference for nearby keys, 0 = none (default 1)", &o->locality, 0, 10, 0};
    s[n++] = (arg_spec){"--seed", ARG_INT, "S", "random seed (default 1)", &o->seed, 0, 9.0e15, 0};
    s[n++] = (arg_spec){"--device", ARG_STRING, "DEV", "auto (default: cuda when available, else cpu), cpu or cuda", &o->device_name, 0, 0, 0};
    s[n++] = (arg_spec){"--dtype", ARG_STRING, "T", "auto (default: f32 on cpu, bf16 on cuda), f32, f16 or bf16", &o->dtype_name, 0, 0, 0};
    s[n++] = (arg_spec){"--threads", ARG_INT, "N", "CPU threads, 0 = OpenMP's default (default 0)", &o->threads, 0, 4096, 0};
    s[n++] = (arg_spec){"--svg", ARG_STRING, "FILE", "writes a picture of the routing (query blocks x key blocks, needles marked)", &o->svg, 0, 0, 0};
    return n;
}

int demo_opts_parse(demo_opts *o, int argc, char **argv, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->seqlen = 16384;
    o->heads = 8;
    o->head_dim = 128;
    o->block_size = 512;
    o->top_k = 3;
    o->needles = 32;
    o->needle_snr = 3.0;
    o->locality = 1.0;
    o->seed = 1;
    arg_spec s[MAX_FLAGS];
    int n = demo_specs(o, s);
    int rc = args_parse(s, n, argc, argv, err, errlen);
    if (rc) return rc;
    if (o->seqlen < 3 * o->block_size)
        return args_error(err, errlen, "--seqlen (%lld) must hold at least 3 blocks of --block-size (%lld) to plant distant needles",
                         (long long)o->seqlen, (long long)o->block_size);
    if (o->seqlen * o->heads * o->head_dim > ((int64_t)1 << 31))
        return args_error(err, errlen, "--seqlen x --heads x --head-dim is over 2^31 elements");
    if (parse_device(o->device_name, 1, &o->device, err, errlen)) return ARGS_ERROR;
    return parse_dtype(o->dtype_name, &o->dtype, err, errlen);
}

/* ---- bench ---- */

static int bench_specs(bench_opts *o, arg_spec *s) {
    int n = 0;
    s[n++] = (arg_spec){"--lengths", ARG_STRING, "LIST", "comma-separated sequence lengths (default 2048,4096,8192,16384)", &o->lengths_text, 0, 0, 0};
    s[n++] = (arg_spec){"--heads", ARG_INT, "H", "query heads (default 2)", &o->heads, 1, 256, 0};
    s[n++] = (arg_spec){"--kv-heads", ARG_INT, "H", "key/value heads, divides --heads (default = --heads)", &o->kv_heads, 1, 256, 0};
    s[n++] = (arg_spec){"--head-dim", ARG_INT, "D", "head dimension (default 128)", &o->head_dim, 1, 256, 0};
    s[n++] = (arg_spec){"--block-size", ARG_INT, "B", "tokens per block (default 512)", &o->block_size, 1, 1 << 22, 0};
    s[n++] = (arg_spec){"--top-k", ARG_INT, "K", "blocks per query, own block included (default 3)", &o->top_k, 1, 1 << 22, 0};
    s[n++] = (arg_spec){"--reps", ARG_INT, "R", "timed repetitions per point, the best is kept (default 1)", &o->reps, 1, 1000, 0};
    s[n++] = (arg_spec){"--forward-only", ARG_SWITCH, NULL, "skip the forward+backward measurements", &o->forward_only, 0, 0, 0};
    s[n++] = (arg_spec){"--device", ARG_STRING, "DEV", "auto (default), cpu or cuda", &o->device_name, 0, 0, 0};
    s[n++] = (arg_spec){"--dtype", ARG_STRING, "T", "auto (default: f32 on cpu, bf16 on cuda), f32, f16 or bf16", &o->dtype_name, 0, 0, 0};
    s[n++] = (arg_spec){"--threads", ARG_INT, "N", "CPU threads, 0 = OpenMP's default (default 0)", &o->threads, 0, 4096, 0};
    s[n++] = (arg_spec){"--seed", ARG_INT, "S", "random seed of the inputs (default 1)", &o->seed, 0, 9.0e15, 0};
    s[n++] = (arg_spec){"--json", ARG_STRING, "FILE", "also writes the results as JSON", &o->json, 0, 0, 0};
    return n;
}

int bench_opts_parse(bench_opts *o, int argc, char **argv, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->heads = 2;
    o->head_dim = 128;
    o->block_size = 512;
    o->top_k = 3;
    o->reps = 1;
    o->seed = 1;
    arg_spec s[MAX_FLAGS];
    int n = bench_specs(o, s);
    int rc = args_parse(s, n, argc, argv, err, errlen);
    if (rc) return rc;
    if (!o->kv_heads) o->kv_heads = o->heads;
    if (o->heads % o->kv_heads)
        return args_error(err, errlen, "--heads (%lld) must be a multiple of --kv-heads (%lld)", (long long)o->heads, (long long)o->kv_heads);
    const char *text = o->lengths_text ? o->lengths_text : "2048,4096,8192,16384";
    if (parse_list("--lengths", text, 1 << 22, o->lengths, BENCH_MAX_LENGTHS, &o->num_lengths, err, errlen)) return ARGS_ERROR;
    for (int i = 0; i < o->num_lengths; i++)
        if (o->lengths[i] * o->heads * o->head_dim > ((int64_t)1 << 31))
            return args_error(err, errlen, "--lengths item %lld x --heads x --head-dim is over 2^31 elements", (long long)o->lengths[i]);
    if (parse_device(o->device_name, 1, &o->device, err, errlen)) return ARGS_ERROR;
    return parse_dtype(o->dtype_name, &o->dtype, err, errlen);
}

/* ---- decode-bench ---- */

static int decode_bench_specs(decode_bench_opts *o, arg_spec *s) {
    int n = 0;
    s[n++] = (arg_spec){"--contexts", ARG_STRING, "LIST", "comma-separated tokens in each sequence's cache (default 16384,131072)", &o->contexts_text, 0, 0, 0};
    s[n++] = (arg_spec){"--batch", ARG_INT, "N", "sequences decoded together, one new token each per step (default 4)", &o->batch, 1, 65536, 0};
    s[n++] = (arg_spec){"--heads", ARG_INT, "H", "query heads (default 8)", &o->heads, 1, 256, 0};
    s[n++] = (arg_spec){"--kv-heads", ARG_INT, "H", "key/value heads, divides --heads (default 1)", &o->kv_heads, 1, 256, 0};
    s[n++] = (arg_spec){"--head-dim", ARG_INT, "D", "head dimension (default 128)", &o->head_dim, 1, 256, 0};
    s[n++] = (arg_spec){"--block-size", ARG_INT, "B", "tokens per block (default 512)", &o->block_size, 1, 1 << 30, 0};
    s[n++] = (arg_spec){"--top-k", ARG_INT, "K", "blocks per query, own block included (default 3)", &o->top_k, 1, 1 << 30, 0};
    s[n++] = (arg_spec){"--page-size", ARG_INT, "P", "tokens per page of a paged cache, dividing --block-size; 0 = contiguous (default 0)", &o->page_size, 0, 1 << 30, 0};
    s[n++] = (arg_spec){"--dtype", ARG_STRING, "T", "auto (default: bf16, the serving dtype), f32, f16 or bf16", &o->dtype_name, 0, 0, 0};
    s[n++] = (arg_spec){"--reps", ARG_INT, "R", "timed decode steps per point, the best is kept (default 5)", &o->reps, 1, 1000, 0};
    s[n++] = (arg_spec){"--device", ARG_STRING, "DEV", "cpu (default) or cuda", &o->device_name, 0, 0, 0};
    s[n++] = (arg_spec){"--threads", ARG_INT, "N", "CPU threads, 0 = OpenMP's default (default 0)", &o->threads, 0, 4096, 0};
    s[n++] = (arg_spec){"--seed", ARG_INT, "S", "random seed of the cache and the queries (default 1)", &o->seed, 0, 9.0e15, 0};
    s[n++] = (arg_spec){"--json", ARG_STRING, "FILE", "also writes the results as JSON", &o->json, 0, 0, 0};
    return n;
}

int decode_bench_opts_parse(decode_bench_opts *o, int argc, char **argv, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->batch = 4;
    o->heads = 8;
    o->kv_heads = 1;
    o->head_dim = 128;
    o->block_size = 512;
    o->top_k = 3;
    o->reps = 5;
    o->seed = 1;
    arg_spec s[MAX_FLAGS];
    int n = decode_bench_specs(o, s);
    int rc = args_parse(s, n, argc, argv, err, errlen);
    if (rc) return rc;
    if (o->heads % o->kv_heads)
        return args_error(err, errlen, "--heads (%lld) must be a multiple of --kv-heads (%lld)", (long long)o->heads, (long long)o->kv_heads);
    if (o->page_size > 0 && o->block_size % o->page_size)
        return args_error(err, errlen, "--page-size (%lld) must divide --block-size (%lld)", (long long)o->page_size, (long long)o->block_size);
    const char *text = o->contexts_text ? o->contexts_text : "16384,131072";
    if (parse_list("--contexts", text, 1 << 30, o->contexts, DECODE_MAX_CONTEXTS, &o->num_contexts, err, errlen)) return ARGS_ERROR;
    for (int i = 0; i < o->num_contexts; i++) /* a paged cache rounds each sequence up to whole pages */
        if ((double)o->batch * (double)(o->contexts[i] + o->page_size) * (double)(o->kv_heads * o->head_dim) > 0x1p33)
            return args_error(err, errlen, "--contexts item %lld x --batch x --kv-heads x --head-dim is over 2^33 elements",
                              (long long)o->contexts[i]);
    if (parse_device(o->device_name, 0, &o->device, err, errlen)) return ARGS_ERROR;
    if (parse_dtype(o->dtype_name, &o->dtype, err, errlen)) return ARGS_ERROR;
    if (o->dtype == DTYPE_AUTO) o->dtype = DTYPE_BF16;
    return ARGS_OK;
}

/* ---- help ---- */

int opts_print_help(FILE *f, const char *command) {
    arg_spec s[MAX_FLAGS];
    int n;
    if (!strcmp(command, "attn")) {
        attn_opts o;
        n = attn_specs(&o, s);
        fprintf(f, "usage: moba attn --q FILE --k FILE --v FILE --cu-seqlens FILE --block-size B --top-k K --out FILE\n"
                   "                 [--lse FILE] [--do FILE --dq FILE --dk FILE --dv FILE] [--softmax-scale S]\n"
                   "                 [--device cpu|cuda] [--threads N]\n\n"
                   "MoBA attention forward (and backward with --do) on .npy files. The storage dtype comes from q's\n"
                   "file (<f4 float32, <f2 float16, <u2 raw bfloat16 bits); k, v and do must match it. Outputs are\n"
                   "written in that dtype (lse as float32), only after everything succeeded.\n\n");
    } else if (!strcmp(command, "route")) {
        route_opts o;
        n = route_specs(&o, s);
        fprintf(f, "usage: moba route --q FILE --k FILE --cu-seqlens FILE --block-size B --top-k K --out FILE\n"
                   "                  [--device cpu|cuda] [--threads N]\n\n"
                   "The MoBA router alone: for each (q head, token) the selected key blocks, counted from the start of\n"
                   "the token's sequence, in increasing order, own block last, -1 padded; int32 [Hq, total, K].\n\n");
    } else if (!strcmp(command, "demo")) {
        demo_opts o;
        n = demo_specs(&o, s);
        fprintf(f, "usage: moba demo [flags]\n\n"
                   "A synthetic long-context retrieval problem: random queries and keys with a mild preference for\n"
                   "nearby keys, plus planted needles: a query t whose match is a few keys in a distant block i << t/B.\n"
                   "Runs MoBA and full causal attention (the same call with top_k = number of blocks) and reports\n"
                   "sparsity, the router's needle recall, the relative error of MoBA vs full attention on needle\n"
                   "rows and overall, and both times. Default: 16384 tokens, 8 heads, d=128, B=512, top_k=3, 32 needles\n"
                   "per head: about 15-25 s on 2 CPU cores, most of it the full attention.\n\n");
    } else if (!strcmp(command, "bench")) {
        bench_opts o;
        n = bench_specs(&o, s);
        fprintf(f, "usage: moba bench [flags]\n\n"
                   "Times MoBA against full causal attention (top_k = number of blocks) over sequence lengths,\n"
                   "forward and forward+backward, one sequence of random inputs each. Progress on stderr, a table\n"
                   "on stdout, --json FILE for machines. Times are the best of --reps runs.\n\n");
    } else if (!strcmp(command, "decode-bench")) {
        decode_bench_opts o;
        n = decode_bench_specs(&o, s);
        fprintf(f, "usage: moba decode-bench [flags]\n\n"
                   "Decode (serving) throughput: fills a KV cache of --batch sequences of random tokens per context\n"
                   "through moba_cache_append, then times moba_cache_attend with one new query per sequence (the token\n"
                   "at position context - 1), MoBA against full attention over the same cache (full_attention = 1).\n"
                   "tokens/s = batch / seconds per step, the best of --reps steps, each with new queries and (CPU) cold\n"
                   "caches. bound = context / keys MoBA attends: min(top_k - 1, t / B) * B + t %% B + 1 at position t.\n"
                   "Progress on stderr, a table on stdout, --json FILE for machines. Default: about 2 s on 2 cores.\n\n");
    } else {
        return 0;
    }
    fprintf(f, "flags:\n");
    args_print_help(f, s, n);
    fprintf(f, "  %-24s %s\n", "-h, --help", "this help");
    fprintf(f, "\nexit status: 0 success; 2 bad flags, input files or output paths (nothing is written);\n"
               "             1 a failure during the run (library error, out of memory)\n");
    return 1;
}
