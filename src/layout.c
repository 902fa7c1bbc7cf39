#include "layout.h"

void moba_layout_init(moba_layout *L, const int32_t *cu_seqlens, int num_seqs, int block_size) {
    L->num_seqs = num_seqs;
    L->total_tokens = cu_seqlens[num_seqs];
    L->block_size = block_size;
    L->cu_seqlens = cu_seqlens;
    L->max_seqlen = 0;
    L->max_blocks = 0;
    L->total_blocks = 0;
    L->total_full_blocks = 0;
    for (int s = 0; s < num_seqs; s++) {
        int len = moba_seq_len(L, s);
        int nb = moba_seq_blocks(L, s);
        if (len > L->max_seqlen) L->max_seqlen = len;
        if (nb > L->max_blocks) L->max_blocks = nb;
        L->total_blocks += nb;
        L->total_full_blocks += moba_seq_full_blocks(L, s);
    }
}

void moba_layout_full_block_base(const moba_layout *L, int64_t *full_block_base) {
    full_block_base[0] = 0;
    for (int s = 0; s < L->num_seqs; s++)
        full_block_base[s + 1] = full_block_base[s] + moba_seq_full_blocks(L, s);
}

/* Tiles per block of n rows: ceil(n / tile_rows); a sequence of len tokens has len / B full blocks
 * and possibly one partial block of len % B rows. */
static int64_t seq_tiles(int len, int block_size, int tile_rows) {
    int64_t full = len / block_size, rest = len % block_size;
    return full * moba_div_up(block_size, tile_rows) + (rest ? moba_div_up((int)rest, tile_rows) : 0);
}

int64_t moba_layout_num_tiles(const moba_layout *L, int tile_rows) {
    int64_t n = 0;
    for (int s = 0; s < L->num_seqs; s++) n += seq_tiles(moba_seq_len(L, s), L->block_size, tile_rows);
    return n;
}

void moba_layout_tiles(const moba_layout *L, int tile_rows, moba_tile *tiles) {
    int64_t n = 0;
    for (int s = 0; s < L->num_seqs; s++) {
        int64_t start = L->cu_seqlens[s];
        int len = moba_seq_len(L, s);
        for (int b = 0; b < moba_seq_blocks(L, s); b++) {
            int64_t b0 = (int64_t)b * L->block_size;
            int64_t b1 = b0 + L->block_size < len ? b0 + L->block_size : len;
            for (int64_t r = b0; r < b1; r += tile_rows) {
                moba_tile t;
                t.seq = s;
                t.block = b;
                t.row_begin = start + r;
                t.row_end = start + (r + tile_rows < b1 ? r + tile_rows : b1);
                tiles[n++] = t;
            }
        }
    }
}
