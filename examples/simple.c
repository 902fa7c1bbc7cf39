/* The smallest useful libmoba program: MoBA on random data, compared with full causal attention
 * (the same call with top_k >= number of blocks).   usage: moba_example [tokens] [heads] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "moba.h"

static float randn(unsigned long long *state) { /* Box-Muller on an xorshift stream */
    double u[2];
    for (int i = 0; i < 2; i++) {
        *state ^= *state << 13, *state ^= *state >> 7, *state ^= *state << 17;
        u[i] = ((*state >> 11) + 0.5) / 9007199254740992.0;
    }
    return (float)(sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4096, heads = argc > 2 ? atoi(argv[2]) : 4, d = 64;
    if (n < 1 || heads < 1) { fprintf(stderr, "usage: %s [tokens >= 1] [heads >= 1]\n", argv[0]); return 2; }
    int32_t cu_seqlens[2] = {0, n};
    size_t count = (size_t)n * heads * d;
    float *q = malloc(count * 4), *k = malloc(count * 4), *v = malloc(count * 4);
    float *o_moba = malloc(count * 4), *o_full = malloc(count * 4);
    if (!q || !k || !v || !o_moba || !o_full) { fprintf(stderr, "out of memory\n"); return 1; }
    unsigned long long state = 42;
    for (size_t i = 0; i < count; i++) q[i] = randn(&state), k[i] = randn(&state), v[i] = randn(&state);

    moba_params p;
    moba_params_init(&p);
    p.dtype = MOBA_DTYPE_F32;
    p.num_seqs = 1;
    p.total_tokens = n;
    p.cu_seqlens = cu_seqlens;
    p.num_q_heads = p.num_kv_heads = heads;
    p.head_dim = d;
    p.block_size = 256;
    p.top_k = 3; /* the own block + the 2 best history blocks */
    if (moba_forward(&p, q, k, v, o_moba, NULL, NULL, 0) != MOBA_OK) {
        fprintf(stderr, "moba_forward: %s\n", moba_last_error());
        return 1;
    }
    p.top_k = n; /* >= number of blocks: exactly full causal attention */
    if (moba_forward(&p, q, k, v, o_full, NULL, NULL, 0) != MOBA_OK) {
        fprintf(stderr, "moba_forward: %s\n", moba_last_error());
        return 1;
    }
    double diff = 0, ref = 0;
    for (size_t i = 0; i < count; i++) diff += pow(o_moba[i] - o_full[i], 2), ref += pow(o_full[i], 2);
    printf("libmoba %s: %d tokens, %d heads, d=%d, block_size=256, top_k=3\n", moba_version(), n, heads, d);
    printf("relative error of MoBA vs full attention on random data: %.4f\n", sqrt(diff / ref));
    printf("(random keys have no structure to route by; see `moba demo` for a retrieval task)\n");
    free(q), free(k), free(v), free(o_moba), free(o_full);
    return 0;
}
