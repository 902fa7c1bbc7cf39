/* Where each part of the CPU workspace lives, and the per-thread scratch. */
#include <stdlib.h>

#include "../error.h"
#include "cpu.h"
#include <omp.h>

static size_t take(size_t *at, size_t bytes) {
    size_t off = *at;
    *at += cpu_align64(bytes);
    return off;
}

void cpu_plan_make(const moba_call *c, moba_op op, cpu_plan *w) {
    const moba_params *p = c->p;
    const moba_layout *L = &c->L;
    size_t at = 0;
    int routed = !c->full_attention;
    *w = (cpu_plan){0};
    w->num_tiles = moba_layout_num_tiles(L, CPU_TILE_ROWS);
    w->full_block_base = take(&at, sizeof(int64_t) * (size_t)(p->num_seqs + 1));
    w->block_base = take(&at, op == MOBA_OP_BACKWARD ? sizeof(int64_t) * (size_t)(p->num_seqs + 1) : 0);
    w->tiles = take(&at, sizeof(moba_tile) * (size_t)w->num_tiles);
    w->centroids = take(&at, routed ? sizeof(float) * (size_t)p->num_kv_heads * (size_t)L->total_full_blocks *
                                          (size_t)p->head_dim : 0);
    size_t rows = (size_t)p->num_q_heads * (size_t)L->total_tokens;
    /* moba_route writes the selection straight into the caller's array */
    w->sel = take(&at, routed && op != MOBA_OP_ROUTE ? sizeof(int32_t) * rows * (size_t)c->slots : 0);
    if (op == MOBA_OP_BACKWARD) {
        w->delta = take(&at, sizeof(float) * rows);
        w->inv_offsets = take(&at, routed ? sizeof(int64_t) * ((size_t)p->num_q_heads * (size_t)L->total_blocks + 1) : 0);
        w->inv_rows = take(&at, routed ? sizeof(int32_t) * rows * (size_t)c->slots : 0);
    }
    w->total = at + 64; /* room to align the base */
}

char *cpu_plan_base(void *ws) {
    uintptr_t u = (uintptr_t)ws;
    return (char *)ws + ((64 - (u & 63)) & 63);
}

size_t moba_cpu_workspace_size(const moba_call *c, moba_op op) {
    cpu_plan w;
    cpu_plan_make(c, op, &w);
    return w.total;
}

int cpu_threads(const moba_call *c) {
    return c->p->num_threads > 0 ? c->p->num_threads : omp_get_max_threads();
}

char *cpu_scratch_alloc(const char *fn, int threads, size_t bytes) {
    size_t per = cpu_align64(bytes);
    char *s = aligned_alloc(64, per * (size_t)threads);
    if (!s)
        moba_fail(MOBA_ERR_OUT_OF_MEMORY, "%s: could not allocate %zu bytes of per-thread scratch", fn,
                  per * (size_t)threads);
    return s;
}

void cpu_scratch_free(char *scratch) { free(scratch); }
