/*
 * The demo problem (see needles.h). Per head, the d dimensions are split in two halves:
 *
 *   context half (dims [0, d/2)):  x_t an Ornstein-Uhlenbeck walk, x_t = rho x_{t-1} + sqrt(1-rho^2) n_t,
 *     rho = exp(-1 / L), L = B/2 tokens, g_t = x_t / sqrt(d/2) (about unit length);
 *     q_t = z_t + a g_t and k_t = z'_t + a g_t with a = locality * sqrt(d), z, z' ~ N(0, I):
 *     so scale * <q_t, k_s> gets + locality^2 sqrt(d) rho^|t-s|: background tokens prefer nearby keys,
 *     and the router prefers nearby blocks for them.
 *   content half (dims [d/2, d)): plain noise for background tokens; needles live here, so the
 *     context walk never interferes with them.
 *
 * A needle (head h, query t in block j >= 2, distant block i <= max(0, j/2 - 1)): a random unit
 * direction u in the content half,
 *     q_t = alpha u,    k_s += beta u  for m = max(1, B/128) positions s in block i.
 * Router: <q_t, centroid_i> = alpha (m beta / B + noise), the noise along u of a centroid of B
 * N(0, 1) keys has sigma 1/sqrt(B), so the needle sits snr = m beta / sqrt(B) sigmas above the other
 * blocks; snr is drawn uniformly in [S/2, 3S/2] per needle (S = --needle-snr), so weak needles are
 * sometimes lost among the noise of many blocks and strong ones are always found.
 * Attention: the needle keys score scale alpha beta, the others scale alpha N(0,1) (max ~ sqrt(2 ln N));
 * alpha is set so the gap is ln N + 6 and the needle query's attention concentrates on its match.
 */
#include "needles.h"

#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fill_background(demo_problem *p, const demo_problem_config *c, rng *r) {
    int64_t N = p->seqlen;
    int H = p->heads, d = p->head_dim, dc = d / 2; /* dc context dims (0 when d = 1) */
    double a = c->locality * sqrt((double)d);
    double L = p->block_size / 2.0 < 1 ? 1 : p->block_size / 2.0;
    double rho = exp(-1.0 / L), kick = sqrt(1.0 - rho * rho);
    float *x = malloc(sizeof(float) * (size_t)(dc ? dc : 1));
    for (int h = 0; h < H; h++) {
        for (int e = 0; e < dc; e++) x[e] = rng_normal(r);
        for (int64_t t = 0; t < N; t++) {
            float *q = p->q + ((size_t)t * H + h) * d, *k = p->k + ((size_t)t * H + h) * d, *v = p->v + ((size_t)t * H + h) * d;
            for (int e = 0; e < dc; e++) {
                if (t) x[e] = (float)(rho * x[e] + kick * rng_normal(r));
                float g = (float)(a * x[e] / sqrt((double)dc));
                q[e] = rng_normal(r) + g;
                k[e] = rng_normal(r) + g;
            }
            for (int e = dc; e < d; e++) {
                q[e] = rng_normal(r);
                k[e] = rng_normal(r);
            }
            for (int e = 0; e < d; e++) v[e] = rng_normal(r);
        }
    }
    free(x);
}

static int taken(const needle *n, int count, int head, int64_t t) {
    for (int i = 0; i < count; i++)
        if (n[i].head == head && n[i].query == t) return 1;
    return 0;
}

static void plant(demo_problem *p, const demo_problem_config *c, rng *r) {
    int64_t N = p->seqlen;
    int H = p->heads, d = p->head_dim, B = p->block_size, dc = d / 2, m = p->keys_per_needle;
    double scale = 1.0 / sqrt((double)d), gap = log((double)N) + 6.0, noise_max = sqrt(2.0 * log((double)N));
    float *u = malloc(sizeof(float) * (size_t)d);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)m);
    int count = 0;
    for (int h = 0; h < H; h++) {
        for (int n = 0; n < c->needles_per_head; n++) {
            needle nd;
            nd.head = h;
            do {
                nd.query_block = (int)rng_range(r, 2, p->num_blocks - 1);
                int64_t lo = (int64_t)nd.query_block * B, hi = lo + B - 1 < N - 1 ? lo + B - 1 : N - 1;
                nd.query = rng_range(r, lo, hi);
            } while (taken(p->needles, count, h, nd.query));
            int far = nd.query_block / 2 - 1;
            nd.key_block = (int)rng_range(r, 0, far > 0 ? far : 0);
            nd.snr = c->needle_snr * (0.5 + rng_uniform(r));

            /* u: a random unit vector in the content half */
            double norm = 0;
            for (int e = 0; e < d; e++) {
                u[e] = e < dc ? 0.0f : rng_normal(r);
                norm += (double)u[e] * u[e];
            }
            norm = sqrt(norm);
            for (int e = 0; e < d; e++) u[e] = (float)(u[e] / norm);

            double beta = nd.snr * sqrt((double)B) / m;
            double alpha = gap / (scale * fmax(beta - noise_max, 2.0));
            float *q = p->q + ((size_t)nd.query * H + h) * d;
            for (int e = 0; e < d; e++) q[e] = (float)(alpha * u[e]);
            /* m distinct positions of block i get + beta u */
            for (int s = 0; s < m; s++) {
                int again;
                do {
                    pos[s] = (int64_t)nd.key_block * B + rng_range(r, 0, B - 1);
                    again = 0;
                    for (int s2 = 0; s2 < s; s2++) again |= pos[s2] == pos[s];
                } while (again);
                float *k = p->k + ((size_t)pos[s] * H + h) * d;
                for (int e = 0; e < d; e++) k[e] += (float)(beta * u[e]);
            }
            p->needles[count++] = nd;
        }
    }
    p->num_needles = count;
    free(u);
    free(pos);
}

int demo_problem_make(demo_problem *p, const demo_problem_config *c, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    p->seqlen = c->seqlen;
    p->heads = c->heads;
    p->head_dim = c->head_dim;
    p->block_size = c->block_size;
    p->num_blocks = (int)((c->seqlen + c->block_size - 1) / c->block_size);
    p->keys_per_needle = c->block_size / 128 > 1 ? c->block_size / 128 : 1;
    if (p->num_blocks < 3) {
        snprintf(err, errlen, "the sequence needs at least 3 blocks to plant distant needles");
        return -1;
    }
    if (c->needles_per_head > c->seqlen - 2 * (int64_t)c->block_size) {
        snprintf(err, errlen, "%d needles per head do not fit in the %lld tokens after block 1",
                 c->needles_per_head, (long long)(c->seqlen - 2 * (int64_t)c->block_size));
        return -1;
    }
    size_t n = (size_t)c->seqlen * c->heads * c->head_dim;
    p->q = malloc(n * sizeof(float));
    p->k = malloc(n * sizeof(float));
    p->v = malloc(n * sizeof(float));
    p->needles = malloc(sizeof(needle) * (size_t)(c->heads * c->needles_per_head + 1));
    if (!p->q || !p->k || !p->v || !p->needles) {
        demo_problem_free(p);
        snprintf(err, errlen, "out of memory for a %lld x %d x %d problem", (long long)c->seqlen, c->heads, c->head_dim);
        return -1;
    }
    rng r = {c->seed * 0x2545F4914F6CDD1Dull + 1};
    fill_background(p, c, &r);
    plant(p, c, &r);
    return 0;
}

void demo_problem_free(demo_problem *p) {
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->needles);
    memset(p, 0, sizeof *p);
}
