/*
 * moba decode-bench: decode (serving) throughput of MoBA against full attention over the same KV cache.
 * Per context: --batch sequences of random tokens appended through moba_cache_append, then steps of
 * moba_cache_attend with one new query per sequence at position t = context - 1, MoBA and full_attention = 1.
 *   tokens/s = batch / seconds per step (best of --reps, new queries each step, cold caches on the CPU;
 *              CUDA: --reps steps queued back to back with a preallocated workspace, one sync at the end,
 *              as a serving loop runs them; the synchronous latency of one step is printed too)
 *   bound    = context / attended keys, attended = min(top_k - 1, t / B) * B + t % B + 1
 * The shared pieces (filling, timing) are in decode_cache.c.
 */
#include "args.h"
#include "cli.h"
#include "decode_cache.h"
#include "device.h"
#include "dtype.h"
#include "opts.h"
#include "outputs.h"
#include "timer.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *cmd = "decode-bench";

typedef struct {
    int64_t context, attended;
    double bound, full_s, moba_s; /* seconds per step */
    double full_lat, moba_lat;    /* CUDA: one step, launched and waited for alone (0 on the CPU) */
} decode_row;

typedef struct {
    const decode_bench_opts *o;
    const char *device, *dtype;
    int threads;
    const decode_row *rows;
} decode_report;

static int write_json(FILE *f, const void *report) {
    const decode_report *b = report;
    const decode_bench_opts *o = b->o;
    fprintf(f, "{\n  \"libmoba\": \"%s\",\n  \"device\": \"%s\",\n  \"dtype\": \"%s\",\n  \"threads\": %d,\n", moba_version(),
            b->device, b->dtype, b->threads);
    fprintf(f, "  \"batch\": %lld,\n  \"heads\": %lld,\n  \"kv_heads\": %lld,\n  \"head_dim\": %lld,\n  \"block_size\": %lld,\n"
               "  \"top_k\": %lld,\n  \"page_size\": %lld,\n  \"reps\": %lld,\n",
            (long long)o->batch, (long long)o->heads, (long long)o->kv_heads, (long long)o->head_dim, (long long)o->block_size,
            (long long)o->top_k, (long long)o->page_size, (long long)o->reps);
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < o->num_contexts; i++) {
        const decode_row *r = &b->rows[i];
        fprintf(f, "    {\"context\": %lld, \"attended_keys\": %lld, \"bound\": %.4f, \"full_s\": %.6g, \"moba_s\": %.6g, "
                   "\"full_tokens_per_s\": %.6g, \"moba_tokens_per_s\": %.6g, \"speedup\": %.4f, \"full_latency_s\": %.6g, "
                   "\"moba_latency_s\": %.6g}%s\n",
                (long long)r->context, (long long)r->attended, r->bound, r->full_s, r->moba_s, o->batch / r->full_s,
                o->batch / r->moba_s, r->full_s / r->moba_s, r->full_lat, r->moba_lat, i + 1 < o->num_contexts ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return 0;
}

/* Device buffers of one context; everything NULL-safe to free. */
typedef struct {
    decode_cache c;
    void *q, *o, *k_stage, *v_stage, *ws;
} decode_buffers;

static void buffers_free(device_kind dev, decode_buffers *b) {
    void *on_device[] = {b->c.k, b->c.v, b->c.centroids, b->c.block_table, b->q, b->o, b->k_stage, b->v_stage, b->ws};
    for (size_t i = 0; i < sizeof on_device / sizeof on_device[0]; i++) device_free(dev, on_device[i]);
    free(b->c.table_host);
    free(b->c.seq_lens);
    memset(b, 0, sizeof *b);
}

/* moba_params-style description of one context's cache. */
static moba_cache_params cache_params(const decode_bench_opts *o, device_kind dev, moba_dtype dtype, int64_t ctx) {
    moba_cache_params p;
    moba_cache_params_init(&p);
    p.backend = device_backend(dev);
    p.num_threads = (int)o->threads;
    p.dtype = dtype;
    p.num_seqs = (int)o->batch;
    p.num_q_heads = (int)o->heads;
    p.num_kv_heads = (int)o->kv_heads;
    p.head_dim = (int)o->head_dim;
    p.block_size = (int)o->block_size;
    p.top_k = (int)o->top_k;
    p.page_size = (int)o->page_size;
    p.capacity = (int)ctx;
    if (o->page_size > 0) { /* whole pages: the last one may be partly used */
        p.max_pages_per_seq = (int)((ctx + o->page_size - 1) / o->page_size);
        p.capacity = p.max_pages_per_seq * (int)o->page_size;
        p.num_pages = (int64_t)o->batch * p.max_pages_per_seq;
    }
    return p;
}

/* CUDA: reps steps queued back to back (query set r + 1 for step r, set 0 warms up), one wait at the end:
 * seconds per step. 0; a moba_status > 0; or -1 with a message in err. */
static int time_queued(const decode_cache *c, const char *q, size_t q_set_bytes, void *o, void *ws, size_t ws_bytes,
                       int reps, double *per_step, char *err, size_t errlen) {
    const int n = c->p.num_seqs;
    int32_t *cu = malloc(sizeof(int32_t) * (n + 1));
    if (!cu) return snprintf(err, errlen, "out of memory"), -1;
    for (int s = 0; s <= n; s++) cu[s] = s;
    int rc = 0;
    double t0 = 0.0;
    for (int r = -1; r < reps && !rc; r++) {
        moba_status st = moba_cache_attend(&c->p, c->seq_lens, cu, q + (size_t)(r + 1) * q_set_bytes, c->k, c->v,
                                           c->block_table, c->centroids, o, NULL, ws, ws_bytes);
        if (st) rc = (int)st;
        else if (r == -1) { /* after the warm-up: start the clock on an idle device */
            if (cuda_mem_sync(err, errlen)) rc = -1;
            t0 = timer_now();
        }
    }
    if (!rc && cuda_mem_sync(err, errlen)) rc = -1;
    *per_step = (timer_now() - t0) / reps;
    free(cu);
    return rc;
}

static int upload_cuda(void *dst, const void *src, size_t bytes, char *err, size_t errlen) {
    return device_upload(DEVICE_CUDA, dst, src, bytes, err, errlen);
}

/* One context: fill, then time full and MoBA. 0, or an exit code (printed). */
static int run_context(const decode_bench_opts *o, device_kind dev, moba_dtype dtype, int i, decode_buffers *b,
                       decode_row *row) {
    char err[512];
    const int64_t ctx = o->contexts[i];
    const int n = (int)o->batch;
    decode_cache *c = &b->c;
    c->p = cache_params(o, dev, dtype, ctx);
    const size_t es = moba_dtype_size(dtype), q_set = (size_t)n * o->heads * o->head_dim;
    uint64_t st = (uint64_t)o->seed * 0x9E3779B97F4A7C15ull + 7 + (uint64_t)i;

    /* the whole call checked before anything is allocated (a CUDA build without decode says so here) */
    int32_t *cu = malloc(sizeof(int32_t) * (n + 1));
    c->seq_lens = malloc(sizeof(int32_t) * n);
    if (!cu || !c->seq_lens) return free(cu), cli_error(cmd, EXIT_RUNTIME, "out of memory");
    for (int s = 0; s <= n; s++) cu[s] = s;
    for (int s = 0; s < n; s++) c->seq_lens[s] = (int32_t)ctx;
    size_t ws, ws_full = 0;
    moba_status ms = moba_cache_workspace_size(&c->p, c->seq_lens, cu, &ws);
    c->p.full_attention = 1; /* full attention splits more keys: it may need more */
    if (!ms) ms = moba_cache_workspace_size(&c->p, c->seq_lens, cu, &ws_full);
    c->p.full_attention = 0;
    free(cu);
    if (ms) return cli_library_error(cmd, NULL, ms);
    if (ws_full > ws) ws = ws_full;

    cli_progress(cmd, "[%d/%d] context %lld: filling the cache", i + 1, o->num_contexts, (long long)ctx);
    size_t cache_bytes = decode_cache_elems(&c->p) * es;
    if (device_alloc(dev, cache_bytes, &c->k, err, sizeof err) || device_alloc(dev, cache_bytes, &c->v, err, sizeof err) ||
        device_alloc(dev, decode_centroid_elems(&c->p, c->p.block_size) * es, &c->centroids, err, sizeof err))
        return cli_error(cmd, EXIT_RUNTIME, "%s", err);
    if (c->p.page_size > 0) {
        size_t table_bytes = sizeof(int32_t) * (size_t)c->p.num_pages;
        if (!(c->table_host = malloc(table_bytes))) return cli_error(cmd, EXIT_RUNTIME, "out of memory");
        decode_scatter_pages(c->table_host, c->p.num_pages);
        if (dev == DEVICE_CPU) {
            c->block_table = c->table_host;
            c->table_host = NULL; /* one buffer, freed once */
        } else if (device_alloc(dev, table_bytes, (void **)&c->block_table, err, sizeof err) ||
                   device_upload(dev, c->block_table, c->table_host, table_bytes, err, sizeof err)) {
            return cli_error(cmd, EXIT_RUNTIME, "%s", err);
        }
    }
    decode_upload_fn upload = NULL;
    if (dev == DEVICE_CUDA) { /* appended pieces go through device staging buffers */
        size_t stage = (size_t)n * (ctx < DECODE_PIECE ? ctx : DECODE_PIECE) * o->kv_heads * o->head_dim * es;
        if (device_alloc(dev, stage, &b->k_stage, err, sizeof err) || device_alloc(dev, stage, &b->v_stage, err, sizeof err))
            return cli_error(cmd, EXIT_RUNTIME, "%s", err);
        upload = upload_cuda;
    }
    const int block_size = c->p.block_size;
    int rc = decode_fill(c, (int)ctx, 1, &block_size, &c->centroids, &st, upload, b->k_stage, b->v_stage, err, sizeof err);
    if (rc > 0) return cli_library_error(cmd, "filling the cache", (moba_status)rc);
    if (rc < 0) return cli_error(cmd, EXIT_RUNTIME, "%s", err);

    /* reps + 1 sets of queries (a new set per step, the first for the warm-up) */
    size_t q_bytes = (size_t)(o->reps + 1) * q_set * es;
    void *q_host = malloc(q_bytes);
    if (!q_host) return cli_error(cmd, EXIT_RUNTIME, "out of memory");
    decode_random_fill(q_host, q_bytes / es, dtype, &st);
    rc = device_alloc(dev, q_bytes, &b->q, err, sizeof err) || device_upload(dev, b->q, q_host, q_bytes, err, sizeof err) ||
         device_alloc(dev, q_set * es, &b->o, err, sizeof err);
    free(q_host);
    if (rc) return cli_error(cmd, EXIT_RUNTIME, "%s", err);

    decode_sync_fn sync = dev == DEVICE_CUDA ? cuda_mem_sync : NULL;
    const int evict = dev == DEVICE_CPU;
    const char *what[2] = {"full attention", "MoBA"};
    double *secs[2] = {&row->full_s, &row->moba_s}, *lat[2] = {&row->full_lat, &row->moba_lat};
    if (dev == DEVICE_CUDA && ws > 0 && device_alloc(dev, ws, &b->ws, err, sizeof err))
        return cli_error(cmd, EXIT_RUNTIME, "%s", err);
    for (int m = 0; m < 2; m++) {
        cli_progress(cmd, "[%d/%d] context %lld: %s", i + 1, o->num_contexts, (long long)ctx, what[m]);
        c->p.full_attention = m == 0;
        if (dev == DEVICE_CUDA) { /* queued steps (the throughput), then the latency of one step alone */
            rc = time_queued(c, b->q, q_set * es, b->o, b->ws, ws, (int)o->reps, secs[m], err, sizeof err);
            if (!rc) rc = decode_time_attend(c, b->q, q_set * es, b->o, (int)o->reps, evict, sync, lat[m], err, sizeof err);
        } else {
            rc = decode_time_attend(c, b->q, q_set * es, b->o, (int)o->reps, evict, sync, secs[m], err, sizeof err);
        }
        if (rc > 0) return cli_library_error(cmd, what[m], (moba_status)rc);
        if (rc < 0) return cli_error(cmd, EXIT_RUNTIME, "%s: %s", what[m], err);
    }
    row->context = ctx;
    row->attended = decode_attended_keys(ctx - 1, block_size, (int)o->top_k);
    row->bound = (double)ctx / (double)row->attended;
    return EXIT_OK;
}

int cmd_decode_bench(int argc, char **argv) {
    char err[512];
    decode_bench_opts o;
    int rc = decode_bench_opts_parse(&o, argc, argv, err, sizeof err);
    if (rc == ARGS_HELP) return opts_print_help(stdout, cmd), EXIT_OK;
    if (rc) return cli_error(cmd, EXIT_USAGE, "%s", err);
    device_kind dev;
    if (device_resolve(o.device, &dev, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "%s", err);
    moba_dtype dtype = (moba_dtype)o.dtype;
    if (o.json && outputs_probe(o.json, err, sizeof err)) return cli_error(cmd, EXIT_USAGE, "--json %s: %s", o.json, err);

    int threads = o.threads ? (int)o.threads : omp_get_max_threads();
    decode_row rows[DECODE_MAX_CONTEXTS] = {{0}};
    for (int i = 0; i < o.num_contexts; i++) {
        decode_buffers b = {0};
        rc = run_context(&o, dev, dtype, i, &b, &rows[i]);
        buffers_free(dev, &b);
        if (rc) return rc;
    }
    cli_progress(cmd, "done");
    cli_progress_end();

    printf("moba decode-bench: libmoba %s, %s, %s", moba_version(), device_name(dev), dtype_name(dtype));
    if (dev == DEVICE_CPU) printf(", %d threads", threads);
    printf("; batch %lld, heads %lld/%lld, head_dim %lld, block %lld, top_k %lld, ", (long long)o.batch, (long long)o.heads,
           (long long)o.kv_heads, (long long)o.head_dim, (long long)o.block_size, (long long)o.top_k);
    if (o.page_size) printf("pages of %lld", (long long)o.page_size);
    else printf("contiguous cache");
    printf(", best of %lld\n", (long long)o.reps);
    printf("%9s %9s %8s | %12s %12s | %12s %12s | %8s\n", "context", "attended", "bound", "full ms/step", "full tok/s",
           "moba ms/step", "moba tok/s", "speedup");
    for (int i = 0; i < o.num_contexts; i++) {
        const decode_row *w = &rows[i];
        printf("%9lld %9lld %7.1fx | %12.3f %12.1f | %12.3f %12.1f | %7.2fx\n", (long long)w->context, (long long)w->attended,
               w->bound, 1e3 * w->full_s, o.batch / w->full_s, 1e3 * w->moba_s, o.batch / w->moba_s, w->full_s / w->moba_s);
    }
    if (dev == DEVICE_CUDA)
        for (int i = 0; i < o.num_contexts; i++)
            printf("context %lld: one step alone (launch to sync, library-allocated workspace): full %.3f ms, "
                   "MoBA %.3f ms\n", (long long)rows[i].context, 1e3 * rows[i].full_lat, 1e3 * rows[i].moba_lat);
    printf("(one new token per sequence per step at position context - 1; tok/s = batch / step time;\n"
           " bound = context / attended keys, what a memory-bound decode could gain)\n");
    decode_report report = {&o, device_name(dev), dtype_name(dtype), threads, rows};
    if (o.json && outputs_write_text("--json", o.json, write_json, &report, err, sizeof err))
        return cli_error(cmd, EXIT_USAGE, "%s", err);
    return EXIT_OK;
}
