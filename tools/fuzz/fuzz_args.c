/*
 * libFuzzer target for the moba command's flag parsing: the input is split at NUL bytes into an
 * argv; its first byte picks the subcommand (attn, route, demo, bench, decode-bench). Parsing must never crash,
 * and an error must come with a one-line message.
 */
#include "args.h"
#include "opts.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 5;
    char *buf = malloc(size); /* data[1..size) plus a final NUL */
    if (!buf) return 0;
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = 0;
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    for (size_t i = 0; i < size - 1 && argc < MAX_ARGS;) {
        argv[argc++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    argv[argc] = NULL;

    char err[512];
    err[0] = 0;
    int rc;
    attn_opts ao;
    route_opts ro;
    demo_opts dm;
    bench_opts bo;
    decode_bench_opts db;
    switch (which) {
    case 0: rc = attn_opts_parse(&ao, argc, argv, err, sizeof err); break;
    case 1: rc = route_opts_parse(&ro, argc, argv, err, sizeof err); break;
    case 2: rc = demo_opts_parse(&dm, argc, argv, err, sizeof err); break;
    case 3: rc = bench_opts_parse(&bo, argc, argv, err, sizeof err); break;
    default: rc = decode_bench_opts_parse(&db, argc, argv, err, sizeof err); break;
    }
    if (rc == ARGS_ERROR && (!err[0] || !memchr(err, 0, sizeof err))) abort();
    if (rc == ARGS_OK && which == 0 && (!ao.q || !ao.k || !ao.v || !ao.cu_seqlens || !ao.out || ao.block_size < 1 || ao.top_k < 1)) abort();
    if (rc == ARGS_OK && which == 3 && (bo.num_lengths < 1 || bo.heads % bo.kv_heads)) abort();
    if (rc == ARGS_OK && which == 4 && (db.num_contexts < 1 || db.heads % db.kv_heads || (db.page_size && db.block_size % db.page_size) ||
                                       db.dtype == DTYPE_AUTO)) abort();
    free(buf);
    return 0;
}
