/*
 * moba attn: forward (and backward with --do) on .npy files.
 *   o, lse = MoBA(q, k, v);  with do: dq, dk, dv = gradients of sum(o * do).
 * Order: parse flags, load and cross-check every input, let the library validate the call, run,
 * and only then write the outputs (all or nothing, see outputs.h).
 */
#include "cli.h"
#include "device.h"
#include "dtype.h"
#include "inputs.h"
#include "opts.h"
#include "outputs.h"
#include "args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T_Q, T_K, T_V, T_DO, T_O, T_LSE, T_DQ, T_DK, T_DV, T_COUNT };

int cmd_attn(int argc, char **argv) {
    const char *cmd = "attn";
    char err[512];
    attn_opts o;
    int rc = attn_opts_parse(&o, argc, argv, err, sizeof err);
    if (rc == ARGS_HELP) return opts_print_help(stdout, "attn"), EXIT_OK;
    if (rc) return cli_error(cmd, EXIT_USAGE, "%s", err);
    device_kind dev;
    if (device_resolve(o.device, &dev, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);

    attn_inputs in;
    if (inputs_load(&in, o.q, o.k, o.v, o.cu_seqlens, o.dout, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);

    moba_params p;
    inputs_params(&in, &p);
    p.backend = device_backend(dev);
    p.num_threads = (int)o.threads;
    p.block_size = (int)o.block_size;
    p.top_k = (int)o.top_k;
    p.softmax_scale = (float)o.softmax_scale;

    /* the library's own validation, before any memory is spent */
    size_t ws_bytes = 0;
    moba_status st = moba_workspace_size(&p, o.backward ? MOBA_OP_BACKWARD : MOBA_OP_FORWARD, &ws_bytes);
    if (st) { inputs_free(&in); return cli_library_error(cmd, NULL, st); }

    size_t es = moba_dtype_size(in.dtype);
    size_t q_bytes = (size_t)in.total * in.num_q_heads * in.head_dim * es;
    size_t kv_bytes = (size_t)in.total * in.num_kv_heads * in.head_dim * es;
    size_t lse_bytes = (size_t)in.total * in.num_q_heads * sizeof(float);
    size_t bytes[T_COUNT] = {q_bytes, kv_bytes, kv_bytes, o.backward ? q_bytes : 0, q_bytes, lse_bytes,
                             o.backward ? q_bytes : 0, o.backward ? kv_bytes : 0, o.backward ? kv_bytes : 0};
    void *d[T_COUNT] = {0};
    void *host[T_COUNT] = {0};
    output_set outs;
    outputs_init(&outs);
    int code = EXIT_RUNTIME;

    for (int t = 0; t < T_COUNT; t++) {
        if (!bytes[t]) continue;
        if (device_alloc(dev, bytes[t], &d[t], err, sizeof err)) { cli_error(cmd, EXIT_RUNTIME, "%s", err); goto done; }
        if (t >= T_O && !(host[t] = malloc(bytes[t]))) { cli_error(cmd, EXIT_RUNTIME, "out of memory"); goto done; }
    }
    const void *src[T_O] = {in.q.data, in.k.data, in.v.data, in.dout.data};
    for (int t = 0; t < T_O; t++)
        if (bytes[t] && device_upload(dev, d[t], src[t], bytes[t], err, sizeof err)) { cli_error(cmd, EXIT_RUNTIME, "%s", err); goto done; }

    st = moba_forward(&p, d[T_Q], d[T_K], d[T_V], d[T_O], d[T_LSE], NULL, 0);
    if (st) { code = cli_library_error(cmd, NULL, st); goto done; }
    if (o.backward) {
        st = moba_backward(&p, d[T_DO], d[T_Q], d[T_K], d[T_V], d[T_O], d[T_LSE], d[T_DQ], d[T_DK], d[T_DV], NULL, 0);
        if (st) { code = cli_library_error(cmd, NULL, st); goto done; }
    }
    for (int t = T_O; t < T_COUNT; t++)
        if (bytes[t] && device_download(dev, host[t], d[t], bytes[t], err, sizeof err)) { cli_error(cmd, EXIT_RUNTIME, "%s", err); goto done; }

    const char *descr = dtype_descr(in.dtype);
    int64_t q_shape[3] = {in.total, in.num_q_heads, in.head_dim};
    int64_t kv_shape[3] = {in.total, in.num_kv_heads, in.head_dim};
    int64_t lse_shape[2] = {in.num_q_heads, in.total};
    if (outputs_save_npy(&outs, o.out, descr, 3, q_shape, host[T_O], err, sizeof err)) goto write_failed;
    if (o.lse && outputs_save_npy(&outs, o.lse, "<f4", 2, lse_shape, host[T_LSE], err, sizeof err)) goto write_failed;
    if (o.backward) {
        if (outputs_save_npy(&outs, o.dq, descr, 3, q_shape, host[T_DQ], err, sizeof err)) goto write_failed;
        if (outputs_save_npy(&outs, o.dk, descr, 3, kv_shape, host[T_DK], err, sizeof err)) goto write_failed;
        if (outputs_save_npy(&outs, o.dv, descr, 3, kv_shape, host[T_DV], err, sizeof err)) goto write_failed;
    }
    if (outputs_commit(&outs, err, sizeof err)) goto write_failed;
    code = EXIT_OK;
    goto done;
write_failed: /* an output path that cannot be written is the caller's to fix */
    code = cli_error(cmd, EXIT_USAGE, "%s", err);
done:
    outputs_discard(&outs);
    for (int t = 0; t < T_COUNT; t++) {
        device_free(dev, d[t]);
        free(host[t]);
    }
    inputs_free(&in);
    return code;
}
