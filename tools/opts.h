/*
 * The flags of every moba subcommand: one options struct each, parsed and cross-checked here
 * (no file is opened, no library call is made, so the fuzzer can drive all of it).
 */
#ifndef MOBA_TOOLS_OPTS_H
#define MOBA_TOOLS_OPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { DEVICE_AUTO = 0, DEVICE_CPU = 1, DEVICE_CUDA = 2 } device_kind;
typedef enum { DTYPE_AUTO = -1, DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2 } dtype_choice; /* = moba_dtype */

typedef struct {
    const char *q, *k, *v, *cu_seqlens, *out, *lse;
    const char *dout, *dq, *dk, *dv;
    int64_t block_size, top_k, threads;
    double softmax_scale; /* 0 = 1/sqrt(d) */
    const char *device_name;
    device_kind device;
    int backward;         /* --do given */
} attn_opts;

typedef struct {
    const char *q, *k, *cu_seqlens, *out;
    int64_t block_size, top_k, threads;
    const char *device_name;
    device_kind device;
} route_opts;

typedef struct {
    int64_t seqlen, heads, head_dim, block_size, top_k, needles, threads, seed;
    double needle_snr, locality;
    const char *device_name, *dtype_name, *svg;
    device_kind device;
    dtype_choice dtype;
} demo_opts;

#define BENCH_MAX_LENGTHS 32
typedef struct {
    const char *lengths_text, *device_name, *dtype_name, *json;
    int64_t lengths[BENCH_MAX_LENGTHS];
    int num_lengths;
    int64_t heads, kv_heads, head_dim, block_size, top_k, reps, threads, seed;
    int forward_only;
    device_kind device;
    dtype_choice dtype;
} bench_opts;

#define DECODE_MAX_CONTEXTS 32
typedef struct {
    const char *contexts_text, *device_name, *dtype_name, *json;
    int64_t contexts[DECODE_MAX_CONTEXTS];
    int num_contexts;
    int64_t batch, heads, kv_heads, head_dim, block_size, top_k, page_size, reps, threads, seed;
    device_kind device;
    dtype_choice dtype; /* auto = bf16, the serving dtype */
} decode_bench_opts;

/* Each returns ARGS_OK, ARGS_HELP or ARGS_ERROR (message in err); defaults are filled first. */
int attn_opts_parse(attn_opts *o, int argc, char **argv, char *err, size_t errlen);
int route_opts_parse(route_opts *o, int argc, char **argv, char *err, size_t errlen);
int demo_opts_parse(demo_opts *o, int argc, char **argv, char *err, size_t errlen);
int bench_opts_parse(bench_opts *o, int argc, char **argv, char *err, size_t errlen);
int decode_bench_opts_parse(decode_bench_opts *o, int argc, char **argv, char *err, size_t errlen);

/* Full --help text of a subcommand ("attn", "route", "demo", "bench", "decode-bench"); 0 if there is no such one. */
int opts_print_help(FILE *f, const char *command);

/* "cpu", "cuda", "f32", "bf16", ... */
const char *device_name(device_kind d);
const char *dtype_choice_name(dtype_choice t);

#endif
