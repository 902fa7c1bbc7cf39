/*
 * moba bench: MoBA against full causal attention (the same call with top_k = number of blocks)
 * over sequence lengths, one sequence of N(0, 1) inputs each; forward, and forward + backward.
 * Times are the best of --reps (after a warm-up call on a GPU). The work ratio shown is the ideal
 * speedup: causal (query, key) pairs / pairs MoBA scores when every query has top_k - 1 history
 * blocks to choose (the router's own cost is left out of it).
 */
#include "args.h"
#include "cli.h"
#include "device.h"
#include "dtype.h"
#include "opts.h"
#include "outputs.h"
#include "rng.h"
#include "timer.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t seqlen;
    int blocks;
    double work_ratio;
    double moba_fwd, full_fwd, moba_fb, full_fb; /* seconds; NAN when not measured */
} bench_row;

/* Device tensors of one length: inputs, output, lse, the gradients, and the forward's selection, which
 * MoBA's forward + backward keeps for the backward as a training step does (moba_params.block_idx). */
typedef struct {
    void *q, *k, *v, *dout, *o, *lse, *dq, *dk, *dv, *sel;
} bench_tensors;

static void tensors_free(device_kind dev, bench_tensors *t) {
    void **all[] = {&t->q, &t->k, &t->v, &t->dout, &t->o, &t->lse, &t->dq, &t->dk, &t->dv, &t->sel};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        device_free(dev, *all[i]);
        *all[i] = NULL;
    }
}

static double work_ratio(int64_t N, int B, int top_k) {
    double causal = 0, scored = 0;
    for (int64_t t = 0; t < N; t++) {
        int64_t j = t / B;
        int64_t history = j < top_k - 1 ? j : top_k - 1;
        causal += (double)(t + 1);
        scored += (double)(history * B + (t - j * B + 1));
    }
    return causal / scored;
}

/* Best time of reps runs of forward (backward too when with_backward). */
static moba_status time_call(device_kind dev, const moba_params *p, bench_tensors *t, int with_backward, int reps,
                             double *best) {
    char err[256];
    *best = INFINITY;
    for (int r = dev == DEVICE_CUDA ? -1 : 0; r < reps; r++) {
        double t0 = timer_now();
        moba_status st = moba_forward(p, t->q, t->k, t->v, t->o, t->lse, NULL, 0);
        if (!st && with_backward)
            st = moba_backward(p, t->dout, t->q, t->k, t->v, t->o, t->lse, t->dq, t->dk, t->dv, NULL, 0);
        if (st) return st;
        if (device_sync(dev, err, sizeof err)) return MOBA_ERR_CUDA;
        double dt = timer_now() - t0;
        if (r >= 0 && dt < *best) *best = dt;
    }
    return MOBA_OK;
}

static void progress(int i, int n, int64_t N, const char *what) {
    cli_progress("bench", "[%d/%d] N=%lld %s", i + 1, n, (long long)N, what);
}

typedef struct {
    const bench_opts *o;
    const char *device, *dtype;
    int threads;
    const bench_row *rows;
} bench_report;

static int write_json(FILE *f, const void *report) {
    const bench_report *b = report;
    const bench_opts *o = b->o;
    fprintf(f, "{\n  \"libmoba\": \"%s\",\n  \"device\": \"%s\",\n  \"dtype\": \"%s\",\n  \"threads\": %d,\n", moba_version(),
            b->device, b->dtype, b->threads);
    fprintf(f, "  \"heads\": %lld,\n  \"kv_heads\": %lld,\n  \"head_dim\": %lld,\n  \"block_size\": %lld,\n  \"top_k\": %lld,\n  \"reps\": %lld,\n",
            (long long)o->heads, (long long)o->kv_heads, (long long)o->head_dim, (long long)o->block_size, (long long)o->top_k, (long long)o->reps);
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < o->num_lengths; i++) {
        const bench_row *r = &b->rows[i];
        fprintf(f, "    {\"seqlen\": %lld, \"blocks\": %d, \"work_ratio\": %.4f, \"moba_fwd_s\": %.6g, \"full_fwd_s\": %.6g, \"speedup_fwd\": %.4f",
                (long long)r->seqlen, r->blocks, r->work_ratio, r->moba_fwd, r->full_fwd, r->full_fwd / r->moba_fwd);
        if (!o->forward_only && isfinite(r->full_fb))
            fprintf(f, ", \"moba_fwd_bwd_s\": %.6g, \"full_fwd_bwd_s\": %.6g, \"speedup_fwd_bwd\": %.4f", r->moba_fb, r->full_fb, r->full_fb / r->moba_fb);
        fprintf(f, "}%s\n", i + 1 < o->num_lengths ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return 0;
}

int cmd_bench(int argc, char **argv) {
    const char *cmd = "bench";
    char err[512];
    bench_opts o;
    int rc = bench_opts_parse(&o, argc, argv, err, sizeof err);
    if (rc == ARGS_HELP) return opts_print_help(stdout, "bench"), EXIT_OK;
    if (rc) return cli_error(cmd, EXIT_USAGE, "%s", err);
    device_kind dev;
    moba_dtype dtype;
    if ((rc = cli_pick_device(cmd, o.device, o.dtype, (int)o.head_dim, (int)o.block_size, &dev, &dtype))) return rc;
    moba_status st;
    if (o.json && outputs_probe(o.json, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "--json %s: %s", o.json, err);

    int threads = o.threads ? (int)o.threads : omp_get_max_threads();
    bench_row rows[BENCH_MAX_LENGTHS];
    bench_tensors t = {0};
    float *host = NULL;
    int code = EXIT_RUNTIME;
    rng r = {(uint64_t)o.seed * 0x9E3779B97F4A7C15ull + 7};
    int no_backward = 0; /* set when the backend refuses the backward */
    char no_backward_why[256] = "";

    for (int i = 0; i < o.num_lengths; i++) {
        int64_t N = o.lengths[i];
        size_t nq = (size_t)N * o.heads * o.head_dim, nkv = (size_t)N * o.kv_heads * o.head_dim;
        size_t es = moba_dtype_size(dtype);
        int32_t cu[2] = {0, (int32_t)N};
        moba_params p;
        moba_params_init(&p);
        p.backend = device_backend(dev);
        p.num_threads = (int)o.threads;
        p.dtype = dtype;
        p.num_seqs = 1;
        p.total_tokens = N;
        p.cu_seqlens = cu;
        p.num_q_heads = (int)o.heads;
        p.num_kv_heads = (int)o.kv_heads;
        p.head_dim = (int)o.head_dim;
        p.block_size = (int)o.block_size;
        p.top_k = (int)o.top_k;
        moba_params full = p;
        bench_row *row = &rows[i];
        row->seqlen = N;
        row->blocks = (int)((N + o.block_size - 1) / o.block_size);
        full.top_k = row->blocks;
        row->work_ratio = work_ratio(N, (int)o.block_size, (int)o.top_k);
        row->moba_fb = row->full_fb = NAN;

        progress(i, o.num_lengths, N, "making inputs");
        free(host);
        host = malloc(nq * sizeof(float));
        if (!host) { cli_error(cmd, EXIT_RUNTIME, "out of memory"); goto done; }
        void **in[4] = {&t.q, &t.k, &t.v, &t.dout};
        size_t sizes[4] = {nq, nkv, nkv, nq};
        for (int a = 0; a < 4; a++) {
            for (size_t e = 0; e < sizes[a]; e++) host[e] = rng_normal(&r);
            if (device_upload_as(dev, dtype, host, sizes[a], in[a], err, sizeof err)) { cli_error(cmd, EXIT_RUNTIME, "%s", err); goto done; }
        }
        if (device_alloc(dev, nq * es, &t.o, err, sizeof err) || device_alloc(dev, (size_t)N * o.heads * sizeof(float), &t.lse, err, sizeof err) ||
            device_alloc(dev, nq * es, &t.dq, err, sizeof err) || device_alloc(dev, nkv * es, &t.dk, err, sizeof err) ||
            device_alloc(dev, nkv * es, &t.dv, err, sizeof err) ||
            device_alloc(dev, (size_t)N * o.heads * o.top_k * sizeof(int32_t), &t.sel, err, sizeof err)) {
            cli_error(cmd, EXIT_RUNTIME, "%s", err);
            goto done;
        }
        progress(i, o.num_lengths, N, "MoBA forward");
        if ((st = time_call(dev, &p, &t, 0, (int)o.reps, &row->moba_fwd))) { code = cli_library_error(cmd, "MoBA forward", st); goto done; }
        progress(i, o.num_lengths, N, "full forward");
        if ((st = time_call(dev, &full, &t, 0, (int)o.reps, &row->full_fwd))) { code = cli_library_error(cmd, "full forward", st); goto done; }
        if (!o.forward_only && !no_backward) {
            progress(i, o.num_lengths, N, "MoBA forward+backward");
            moba_params kept = p; /* the backward reads the forward's selection instead of routing again */
            kept.block_idx = t.sel;
            st = time_call(dev, &kept, &t, 1, (int)o.reps, &row->moba_fb);
            if (st == MOBA_ERR_UNSUPPORTED) { /* a backend without a backward pass: forward columns only */
                no_backward = 1;
                snprintf(no_backward_why, sizeof no_backward_why, "%s", moba_last_error());
                row->moba_fb = NAN;
            } else if (st) {
                code = cli_library_error(cmd, "MoBA forward+backward", st);
                goto done;
            } else {
                progress(i, o.num_lengths, N, "full forward+backward");
                if ((st = time_call(dev, &full, &t, 1, (int)o.reps, &row->full_fb))) { code = cli_library_error(cmd, "full forward+backward", st); goto done; }
            }
        }
        tensors_free(dev, &t);
    }
    cli_progress("bench", "done");
    cli_progress_end();

    printf("moba bench: libmoba %s, %s, %s", moba_version(), device_name(dev), dtype_name(dtype));
    if (dev == DEVICE_CPU) printf(", %d threads", threads);
    printf("; heads %lld/%lld, head_dim %lld, block %lld, top_k %lld, best of %lld\n", (long long)o.heads,
           (long long)o.kv_heads, (long long)o.head_dim, (long long)o.block_size, (long long)o.top_k, (long long)o.reps);
    printf("%8s %7s %6s | %12s %12s %8s", "seqlen", "blocks", "work", "moba fwd ms", "full fwd ms", "speedup");
    if (!o.forward_only) printf(" | %12s %12s %8s", "moba f+b ms", "full f+b ms", "speedup");
    printf("\n");
    for (int i = 0; i < o.num_lengths; i++) {
        const bench_row *w = &rows[i];
        printf("%8lld %7d %5.1fx | %12.2f %12.2f %7.2fx", (long long)w->seqlen, w->blocks, w->work_ratio, 1e3 * w->moba_fwd,
               1e3 * w->full_fwd, w->full_fwd / w->moba_fwd);
        if (!o.forward_only && isfinite(w->full_fb)) printf(" | %12.2f %12.2f %7.2fx", 1e3 * w->moba_fb, 1e3 * w->full_fb, w->full_fb / w->moba_fb);
        else if (!o.forward_only) printf(" | %12s %12s %8s", "n/a", "n/a", "n/a");
        printf("\n");
    }
    printf("(work = ideal speedup: causal query-key pairs / pairs MoBA scores)\n");
    if (no_backward) printf("(forward+backward n/a: %s)\n", no_backward_why);
    bench_report report = {&o, device_name(dev), dtype_name(dtype), threads, rows};
    if (o.json && outputs_write_text("--json", o.json, write_json, &report, err, sizeof err)) {
        code = cli_error(cmd, EXIT_USAGE, "%s", err);
        goto done;
    }
    code = EXIT_OK;
done:
    tensors_free(dev, &t);
    free(host);
    return code;
}
