/*
 * moba demo: MoBA on a synthetic long-context retrieval problem (needles.h), against full causal
 * attention (the same call with top_k = number of blocks). Reports:
 *   sparsity     = 1 - (causal (query, key) pairs MoBA scores) / (all causal pairs)
 *   recall       = share of planted needles whose distant block the router selected
 *   error        = |o_moba - o_full|_F / |o_full|_F over the needle rows, and over all rows
 *   time         = forward wall time of each (monotonic clock), speedup = full / MoBA
 * and optionally draws the routing (svg.h).
 */
#include "args.h"
#include "cli.h"
#include "device.h"
#include "dtype.h"
#include "needles.h"
#include "opts.h"
#include "outputs.h"
#include "svg.h"
#include "timer.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Everything one run needs on the device: inputs, the two outputs, the routing. */
typedef struct {
    device_kind dev;
    void *q, *k, *v, *o_moba, *o_full, *idx;
} demo_buffers;

static void buffers_free(demo_buffers *b) {
    device_free(b->dev, b->q);
    device_free(b->dev, b->k);
    device_free(b->dev, b->v);
    device_free(b->dev, b->o_moba);
    device_free(b->dev, b->o_full);
    device_free(b->dev, b->idx);
}

/* Best wall time of reps forward calls (after one untimed warm-up call on a GPU). */
static moba_status timed_forward(const moba_params *p, demo_buffers *b, void *o, int reps, double *seconds) {
    *seconds = INFINITY;
    char err[256];
    for (int r = b->dev == DEVICE_CUDA ? -1 : 0; r < reps; r++) {
        double t0 = timer_now();
        moba_status st = moba_forward(p, b->q, b->k, b->v, o, NULL, NULL, 0);
        if (st) return st;
        if (device_sync(b->dev, err, sizeof err)) return MOBA_ERR_CUDA;
        double dt = timer_now() - t0;
        if (r >= 0 && dt < *seconds) *seconds = dt;
    }
    return MOBA_OK;
}

static int selected(const int32_t *sel, int top_k, int block) {
    for (int s = 0; s < top_k; s++)
        if (sel[s] == block) return 1;
    return 0;
}

/* share[j][i] of (head, query) rows in query block j that selected key block i; the sparsity */
static void routing_stats(const demo_problem *pr, const int32_t *idx, int top_k, double *share, double *sparsity) {
    int64_t N = pr->seqlen;
    int nb = pr->num_blocks, B = pr->block_size;
    double scored = 0, causal = 0;
    memset(share, 0, sizeof(double) * (size_t)nb * nb);
    for (int h = 0; h < pr->heads; h++)
        for (int64_t t = 0; t < N; t++) {
            const int32_t *sel = idx + ((size_t)h * N + t) * top_k;
            int j = (int)(t / B);
            for (int s = 0; s < top_k; s++) {
                if (sel[s] < 0 || sel[s] >= nb) continue;
                share[(size_t)j * nb + sel[s]] += 1;
                scored += sel[s] == j ? (double)(t - (int64_t)j * B + 1) : B;
            }
            causal += (double)(t + 1);
        }
    for (int j = 0; j < nb; j++) {
        int64_t rows = (j + 1) * (int64_t)B < N ? B : N - (int64_t)j * B;
        for (int i = 0; i < nb; i++) share[(size_t)j * nb + i] /= (double)rows * pr->heads;
    }
    *sparsity = 1.0 - scored / causal;
}

/* |a - b|_F / |b|_F over the rows (t, h) listed, or over everything when rows == NULL */
static double rel_error_rows(const float *a, const float *b, const demo_problem *pr, const needle *rows, int nrows, int want_found,
                             const int *found) {
    double num = 0, den = 0;
    int d = pr->head_dim;
    for (int n = 0; n < nrows; n++) {
        if (want_found >= 0 && found[n] != want_found) continue;
        size_t off = ((size_t)rows[n].query * pr->heads + rows[n].head) * d;
        for (int e = 0; e < d; e++) {
            double diff = (double)a[off + e] - b[off + e];
            num += diff * diff;
            den += (double)b[off + e] * b[off + e];
        }
    }
    return den > 0 ? sqrt(num / den) : NAN;
}

static double rel_error_all(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double diff = (double)a[i] - b[i];
        num += diff * diff;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : NAN;
}

static int write_routing(FILE *f, const void *routing) { return svg_write_routing(f, routing); }

static int write_svg(const char *path, const demo_problem *pr, const double *share, const int *found, int top_k,
                     double recall, const char *device, char *err, size_t errlen) {
    svg_needle *marks = malloc(sizeof(svg_needle) * (size_t)(pr->num_needles + 1));
    if (!marks) return snprintf(err, errlen, "out of memory"), -1;
    for (int n = 0; n < pr->num_needles; n++)
        marks[n] = (svg_needle){pr->needles[n].query_block, pr->needles[n].key_block, found[n]};
    char subtitle[256];
    snprintf(subtitle, sizeof subtitle, "%lld tokens, %d heads, d=%d, block %d, top_k %d, %s; %d needles, recall %.3f",
             (long long)pr->seqlen, pr->heads, pr->head_dim, pr->block_size, top_k, device, pr->num_needles, recall);
    svg_routing r = {pr->num_blocks, share, marks, pr->num_needles,
                     "MoBA routing: which key blocks the queries of each block select", subtitle};
    int rc = outputs_write_text("--svg", path, write_routing, &r, err, errlen);
    free(marks);
    return rc;
}

int cmd_demo(int argc, char **argv) {
    const char *cmd = "demo";
    char err[512];
    demo_opts o;
    int rc = demo_opts_parse(&o, argc, argv, err, sizeof err);
    if (rc == ARGS_HELP) return opts_print_help(stdout, "demo"), EXIT_OK;
    if (rc) return cli_error(cmd, EXIT_USAGE, "%s", err);
    device_kind dev;
    moba_dtype dtype;
    if ((rc = cli_pick_device(cmd, o.device, o.dtype, (int)o.head_dim, (int)o.block_size, &dev, &dtype))) return rc;
    moba_status st;
    if (o.svg && outputs_probe(o.svg, err, sizeof err)) /* fail now, not after the run */
        return cli_error(cmd, EXIT_USAGE, "--svg %s: %s", o.svg, err);

    demo_problem_config cfg = {o.seqlen, (int)o.heads, (int)o.head_dim, (int)o.block_size, (int)o.needles,
                               o.needle_snr, o.locality, (uint64_t)o.seed};
    demo_problem pr;
    if (demo_problem_make(&pr, &cfg, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);

    int32_t cu[2] = {0, (int32_t)o.seqlen};
    moba_params p;
    moba_params_init(&p);
    p.backend = device_backend(dev);
    p.num_threads = (int)o.threads;
    p.dtype = dtype;
    p.num_seqs = 1;
    p.total_tokens = o.seqlen;
    p.cu_seqlens = cu;
    p.num_q_heads = p.num_kv_heads = (int)o.heads;
    p.head_dim = (int)o.head_dim;
    p.block_size = (int)o.block_size;
    p.top_k = (int)o.top_k;
    moba_params full = p;
    full.top_k = pr.num_blocks; /* top_k >= number of blocks is exactly full causal attention */

    size_t n = (size_t)o.seqlen * o.heads * o.head_dim;
    size_t nidx = (size_t)o.heads * o.seqlen * o.top_k;
    demo_buffers b = {.dev = dev};
    float *om = NULL, *of = NULL;
    int32_t *idx = malloc(nidx * sizeof(int32_t));
    double *share = malloc(sizeof(double) * (size_t)pr.num_blocks * pr.num_blocks);
    int *found = malloc(sizeof(int) * (size_t)(pr.num_needles + 1));
    int code = EXIT_RUNTIME;
    if (!idx || !share || !found) { cli_error(cmd, EXIT_RUNTIME, "out of memory"); goto done; }
    if (device_upload_as(dev, dtype, pr.q, n, &b.q, err, sizeof err) || device_upload_as(dev, dtype, pr.k, n, &b.k, err, sizeof err) ||
        device_upload_as(dev, dtype, pr.v, n, &b.v, err, sizeof err) ||
        device_alloc(dev, n * moba_dtype_size(dtype), &b.o_moba, err, sizeof err) ||
        device_alloc(dev, n * moba_dtype_size(dtype), &b.o_full, err, sizeof err) ||
        device_alloc(dev, nidx * sizeof(int32_t), &b.idx, err, sizeof err)) {
        cli_error(cmd, EXIT_RUNTIME, "%s", err);
        goto done;
    }

    cli_progress(cmd, "routing");
    if ((st = moba_route(&p, b.q, b.k, b.idx, NULL, 0))) { code = cli_library_error(cmd, "routing", st); goto done; }
    if (device_download(dev, idx, b.idx, nidx * sizeof(int32_t), err, sizeof err)) { cli_error(cmd, EXIT_RUNTIME, "%s", err); goto done; }
    int reps = dev == DEVICE_CUDA ? 5 : 1;
    double t_moba, t_full;
    cli_progress(cmd, "MoBA forward");
    if ((st = timed_forward(&p, &b, b.o_moba, reps, &t_moba))) { code = cli_library_error(cmd, "MoBA", st); goto done; }
    cli_progress(cmd, "full attention forward (top_k = %d blocks)", pr.num_blocks);
    if ((st = timed_forward(&full, &b, b.o_full, reps, &t_full))) { code = cli_library_error(cmd, "full attention", st); goto done; }
    if (!(om = device_download_float(dev, dtype, b.o_moba, n, err, sizeof err)) || !(of = device_download_float(dev, dtype, b.o_full, n, err, sizeof err))) {
        cli_error(cmd, EXIT_RUNTIME, "%s", err);
        goto done;
    }

    cli_progress(cmd, "done");
    cli_progress_end();
    int hits = 0;
    for (int i = 0; i < pr.num_needles; i++) {
        const needle *nd = &pr.needles[i];
        found[i] = selected(idx + ((size_t)nd->head * o.seqlen + nd->query) * o.top_k, (int)o.top_k, nd->key_block);
        hits += found[i];
    }
    double recall = pr.num_needles ? (double)hits / pr.num_needles : NAN, sparsity;
    routing_stats(&pr, idx, (int)o.top_k, share, &sparsity);
    double err_needle = rel_error_rows(om, of, &pr, pr.needles, pr.num_needles, -1, found);
    double err_found = rel_error_rows(om, of, &pr, pr.needles, pr.num_needles, 1, found);
    double err_missed = rel_error_rows(om, of, &pr, pr.needles, pr.num_needles, 0, found);
    double err_all = rel_error_all(om, of, n);

    if (o.svg && write_svg(o.svg, &pr, share, found, (int)o.top_k, recall, device_name(dev), err, sizeof err)) {
        code = cli_error(cmd, EXIT_USAGE, "%s", err);
        goto done;
    }

    int threads = o.threads ? (int)o.threads : omp_get_max_threads();
    printf("moba demo: synthetic long-context retrieval (libmoba %s)\n", moba_version());
    printf("  device       %s, %s", device_name(dev), dtype_name(dtype));
    if (dev == DEVICE_CPU) printf(", %d threads", threads);
    printf("\n  problem      %lld tokens, %lld heads, head_dim %lld, block %lld (%d blocks), top_k %lld, seed %lld\n",
           (long long)o.seqlen, (long long)o.heads, (long long)o.head_dim, (long long)o.block_size, pr.num_blocks,
           (long long)o.top_k, (long long)o.seed);
    printf("  needles      %d (%lld per head): a query matching %d keys of a distant block, strength %.1f-%.1f sigma\n",
           pr.num_needles, (long long)o.needles, pr.keys_per_needle, o.needle_snr * 0.5, o.needle_snr * 1.5);
    printf("  sparsity     %.4f  (share of causal query-key scores MoBA skips)\n", sparsity);
    printf("  recall       %.4f  (%d of %d needle blocks selected by the router)\n", recall, hits, pr.num_needles);
    printf("  error needle %.3e  (relative Frobenius, MoBA vs full, needle rows; found %.2e, missed %.2e)\n",
           err_needle, err_found, err_missed);
    printf("  error all    %.3e  (relative Frobenius, MoBA vs full, all rows)\n", err_all);
    printf("  time moba    %.4f s  (forward%s)\n", t_moba, reps > 1 ? ", best of 5" : "");
    printf("  time full    %.4f s  (forward, full causal attention)\n", t_full);
    printf("  speedup      %.2fx\n", t_moba > 0 ? t_full / t_moba : NAN);
    if (o.svg) printf("  picture      %s\n", o.svg);
    code = EXIT_OK;
done:
    buffers_free(&b);
    free(om);
    free(of);
    free(idx);
    free(share);
    free(found);
    demo_problem_free(&pr);
    return code;
}
