/*
 * The demo's synthetic long-context retrieval problem: background queries and keys that prefer
 * nearby tokens, plus planted needles (a query whose match sits in a distant block).
 */
#ifndef MOBA_TOOLS_NEEDLES_H
#define MOBA_TOOLS_NEEDLES_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int head;
    int64_t query;    /* token position of the needle query      */
    int query_block;  /* query / block_size                      */
    int key_block;    /* the distant block holding its match     */
    double snr;       /* planted router score, in noise sigmas    */
} needle;

typedef struct {
    int64_t seqlen;
    int heads, head_dim, block_size, num_blocks;
    float *q, *k, *v; /* float32 [seqlen, heads, head_dim] (kv heads = heads) */
    needle *needles;
    int num_needles;
    int keys_per_needle;
} demo_problem;

typedef struct {
    int64_t seqlen;
    int heads, head_dim, block_size;
    int needles_per_head;
    double needle_snr; /* mean strength; each needle draws uniformly in [snr/2, 3 snr/2] */
    double locality;   /* background: weight of a slowly varying shared direction in q and k */
    uint64_t seed;
} demo_problem_config;

/* 0, or -1 with a message (out of memory). */
int demo_problem_make(demo_problem *p, const demo_problem_config *c, char *err, size_t errlen);
void demo_problem_free(demo_problem *p);

#endif
