/*
 * The block layout shared by every backend: how varlen sequences are cut into blocks, where each
 * full block's centroid lives, and how query rows are cut into tiles that never cross a block.
 *
 *   sequence s holds tokens [cu_seqlens[s], cu_seqlens[s+1]) of the packed tensors;
 *   its block i holds sequence positions [i*B, min((i+1)*B, len));
 *   only full blocks (i < len / B) have a centroid; centroid slots are numbered across sequences:
 *   slot(s, i) = full_block_base[s] + i, stored as centroids[kv_head][slot][d].
 */
#ifndef MOBA_LAYOUT_H
#define MOBA_LAYOUT_H

#include <stdint.h>

typedef struct {
    int num_seqs;
    int64_t total_tokens;
    int block_size;
    const int32_t *cu_seqlens;   /* host, [num_seqs + 1], already validated */
    int max_seqlen;
    int max_blocks;              /* max over sequences of ceil(len / B)     */
    int64_t total_blocks;        /* sum of ceil(len / B)                    */
    int64_t total_full_blocks;   /* sum of floor(len / B): centroid slots   */
} moba_layout;

/* One unit of query work: rows [row_begin, row_end) (packed token indices) of sequence seq, all in
 * the same block `block` of that sequence. */
typedef struct {
    int32_t seq;
    int32_t block;
    int64_t row_begin;
    int64_t row_end;
} moba_tile;

static inline int moba_div_up(int a, int b) { return (a + b - 1) / b; }

static inline int moba_seq_len(const moba_layout *L, int s) {
    return L->cu_seqlens[s + 1] - L->cu_seqlens[s];
}
static inline int moba_seq_blocks(const moba_layout *L, int s) {
    return moba_div_up(moba_seq_len(L, s), L->block_size);
}
static inline int moba_seq_full_blocks(const moba_layout *L, int s) {
    return moba_seq_len(L, s) / L->block_size;
}

/* Fills L from validated cu_seqlens (num_seqs >= 1, non-decreasing, starting at 0). */
void moba_layout_init(moba_layout *L, const int32_t *cu_seqlens, int num_seqs, int block_size);

/* full_block_base[s] = number of full blocks in sequences before s; [num_seqs + 1] entries. */
void moba_layout_full_block_base(const moba_layout *L, int64_t *full_block_base);

/* Number of tiles of at most tile_rows rows that cover every token, none crossing a block. */
int64_t moba_layout_num_tiles(const moba_layout *L, int tile_rows);

/* Writes those tiles (moba_layout_num_tiles(L, tile_rows) of them), in token order. */
void moba_layout_tiles(const moba_layout *L, int tile_rows, moba_tile *tiles);

#endif /* MOBA_LAYOUT_H */
