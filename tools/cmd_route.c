/*
 * moba route: the router alone. For each q head h and token t, the blocks of t's sequence it
 * attends: the top_k - 1 history blocks i < t/B with the largest <q_t, centroid_i>, plus its own
 * block, ascending, -1 padded; written as int32 [Hq, total, top_k].
 */
#include "args.h"
#include "cli.h"
#include "device.h"
#include "inputs.h"
#include "opts.h"
#include "outputs.h"

#include <stdio.h>
#include <stdlib.h>

/* a route output beyond this many int32 entries (16 GiB) is surely a mistaken --top-k */
#define ROUTE_MAX_ENTRIES ((int64_t)1 << 32)

int cmd_route(int argc, char **argv) {
    const char *cmd = "route";
    char err[512];
    route_opts o;
    int rc = route_opts_parse(&o, argc, argv, err, sizeof err);
    if (rc == ARGS_HELP) return opts_print_help(stdout, "route"), EXIT_OK;
    if (rc) return cli_error(cmd, EXIT_USAGE, "%s", err);
    device_kind dev;
    if (device_resolve(o.device, &dev, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);

    attn_inputs in;
    if (inputs_load(&in, o.q, o.k, NULL, o.cu_seqlens, NULL, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);
    int64_t entries = in.num_q_heads * in.total;
    if (o.top_k > ROUTE_MAX_ENTRIES / entries) {
        inputs_free(&in);
        return cli_error(cmd, EXIT_USAGE, "--top-k %lld: the output [%d, %lld, %lld] would be over 2^32 entries",
                         (long long)o.top_k, in.num_q_heads, (long long)in.total, (long long)o.top_k);
    }
    entries *= o.top_k;

    moba_params p;
    inputs_params(&in, &p);
    p.backend = device_backend(dev);
    p.num_threads = (int)o.threads;
    p.block_size = (int)o.block_size;
    p.top_k = (int)o.top_k;
    size_t ws_bytes;
    moba_status st = moba_workspace_size(&p, MOBA_OP_ROUTE, &ws_bytes);
    if (st) { inputs_free(&in); return cli_library_error(cmd, NULL, st); }

    size_t es = moba_dtype_size(in.dtype);
    size_t q_bytes = (size_t)in.total * in.num_q_heads * in.head_dim * es;
    size_t k_bytes = (size_t)in.total * in.num_kv_heads * in.head_dim * es;
    size_t idx_bytes = (size_t)entries * sizeof(int32_t);
    void *dq = NULL, *dk = NULL, *didx = NULL;
    int32_t *idx = malloc(idx_bytes);
    output_set outs;
    outputs_init(&outs);
    int code = EXIT_RUNTIME;
    if (!idx) { cli_error(cmd, EXIT_RUNTIME, "out of memory (%zu bytes)", idx_bytes); goto done; }
    if (device_alloc(dev, q_bytes, &dq, err, sizeof err) || device_alloc(dev, k_bytes, &dk, err, sizeof err) ||
        device_alloc(dev, idx_bytes, &didx, err, sizeof err) ||
        device_upload(dev, dq, in.q.data, q_bytes, err, sizeof err) ||
        device_upload(dev, dk, in.k.data, k_bytes, err, sizeof err)) {
        cli_error(cmd, EXIT_RUNTIME, "%s", err);
        goto done;
    }
    st = moba_route(&p, dq, dk, didx, NULL, 0);
    if (st) { code = cli_library_error(cmd, NULL, st); goto done; }
    if (device_download(dev, idx, didx, idx_bytes, err, sizeof err)) { cli_error(cmd, EXIT_RUNTIME, "%s", err); goto done; }

    int64_t shape[3] = {in.num_q_heads, in.total, o.top_k};
    if (outputs_save_npy(&outs, o.out, "<i4", 3, shape, idx, err, sizeof err) || outputs_commit(&outs, err, sizeof err)) {
        code = cli_error(cmd, EXIT_USAGE, "%s", err);
        goto done;
    }
    code = EXIT_OK;
done:
    outputs_discard(&outs);
    device_free(dev, dq);
    device_free(dev, dk);
    device_free(dev, didx);
    free(idx);
    inputs_free(&in);
    return code;
}
