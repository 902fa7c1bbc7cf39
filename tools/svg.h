/*
 * A hand-written SVG picture of MoBA routing: query blocks (rows) against key blocks (columns),
 * each cell shaded by the share of the block's queries (over all heads) that selected that key
 * block, future cells greyed, planted needles marked found / missed, axes and a legend.
 */
#ifndef MOBA_TOOLS_SVG_H
#define MOBA_TOOLS_SVG_H

#include <stdio.h>

typedef struct {
    int query_block, key_block, found;
} svg_needle;

typedef struct {
    int num_blocks;
    const double *share;      /* [num_blocks][num_blocks]: share[j * num_blocks + i], query block j, key block i */
    const svg_needle *needles;
    int num_needles;
    const char *title;        /* first line above the plot         */
    const char *subtitle;     /* second line (configuration)       */
} svg_routing;

/* Writes the whole document to f. 0 on success, -1 if a write failed. */
int svg_write_routing(FILE *f, const svg_routing *r);

#endif
