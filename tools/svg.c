/*
 * The routing picture (see svg.h). Colour = a white -> blue ramp over sqrt(share), so the small
 * shares of far blocks stay visible next to the diagonal's 1; the legend's colour bar uses the
 * same map with its ticks placed at sqrt(value).
 */
#include "svg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MARGIN_LEFT 80.0
#define MARGIN_TOP 78.0
#define MARGIN_RIGHT 230.0
#define MARGIN_BOTTOM 64.0

static void ramp(double share, int rgb[3]) {
    static const double stops[3][3] = {{255, 255, 255}, {66, 146, 198}, {8, 48, 107}};
    double t = sqrt(share < 0 ? 0 : share > 1 ? 1 : share) * 2.0;
    int seg = t >= 1.0 ? 1 : 0;
    double f = t - seg;
    for (int c = 0; c < 3; c++) rgb[c] = (int)lround(stops[seg][c] + f * (stops[seg + 1][c] - stops[seg][c]));
}

static void text_escaped(FILE *f, const char *s) {
    for (; s && *s; s++) {
        if (*s == '&') fputs("&amp;", f);
        else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else fputc(*s, f);
    }
}

/* 1, 2, 5, 10, 20, 50, ... so that at most ~16 labels fit on an axis */
static int tick_step(int n) {
    int step = 1;
    for (int k = 0; n / step > 16; k++) step = k % 3 == 1 ? step / 2 * 5 : step * 2;
    return step;
}

static void ring(FILE *f, double cx, double cy, double r) {
    fprintf(f, "<circle cx='%.1f' cy='%.1f' r='%.1f' fill='none' stroke='#1a9641' stroke-width='2'/>\n", cx, cy, r);
}

static void cross(FILE *f, double cx, double cy, double r) {
    fprintf(f, "<path d='M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f' stroke='#d7191c' stroke-width='2.2'/>\n",
            cx - r, cy - r, cx + r, cy + r, cx - r, cy + r, cx + r, cy - r);
}

int svg_write_routing(FILE *f, const svg_routing *r) {
    int nb = r->num_blocks;
    double cell = 640.0 / nb;
    if (cell > 28) cell = 28;
    if (cell < 2) cell = 2;
    double plot = cell * nb, x0 = MARGIN_LEFT, y0 = MARGIN_TOP;
    double width = x0 + plot + MARGIN_RIGHT, height = y0 + plot + MARGIN_BOTTOM;
    if (height < y0 + 420) height = y0 + 420; /* room for the legend under a small plot */

    fprintf(f, "<?xml version='1.0' encoding='UTF-8'?>\n"
               "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' viewBox='0 0 %.0f %.0f' "
               "font-family='DejaVu Sans, Helvetica, Arial, sans-serif' font-size='12'>\n",
            width, height, width, height);
    fprintf(f, "<rect width='100%%' height='100%%' fill='white'/>\n");
    fprintf(f, "<text x='%.1f' y='24' font-size='16' font-weight='bold'>", x0);
    text_escaped(f, r->title);
    fprintf(f, "</text>\n<text x='%.1f' y='44' font-size='12' fill='#333'>", x0);
    text_escaped(f, r->subtitle);
    fprintf(f, "</text>\n");

    /* cells: row j = query block (top to bottom), column i = key block; i > j is the future */
    fprintf(f, "<g shape-rendering='crispEdges'>\n");
    for (int j = 0; j < nb; j++)
        for (int i = 0; i < nb; i++) {
            int rgb[3] = {230, 230, 230};
            if (i <= j) ramp(r->share[(size_t)j * nb + i], rgb);
            fprintf(f, "<rect x='%.2f' y='%.2f' width='%.2f' height='%.2f' fill='#%02x%02x%02x'/>\n",
                    x0 + i * cell, y0 + j * cell, cell, cell, rgb[0], rgb[1], rgb[2]);
        }
    fprintf(f, "</g>\n<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", x0, y0, plot, plot);

    /* needles, one mark per cell: a ring if any needle there was found, a cross if any was missed */
    int *found = calloc((size_t)nb * nb, sizeof(int)), *missed = calloc((size_t)nb * nb, sizeof(int));
    if (!found || !missed) { free(found); free(missed); return -1; }
    for (int n = 0; n < r->num_needles; n++) {
        const svg_needle *nd = &r->needles[n];
        if (nd->query_block < 0 || nd->query_block >= nb || nd->key_block < 0 || nd->key_block >= nb) continue;
        (nd->found ? found : missed)[(size_t)nd->query_block * nb + nd->key_block]++;
    }
    double mr = cell * 0.36 < 3 ? 3 : cell * 0.36;
    for (int j = 0; j < nb; j++)
        for (int i = 0; i < nb; i++) {
            double cx = x0 + (i + 0.5) * cell, cy = y0 + (j + 0.5) * cell;
            if (found[(size_t)j * nb + i]) ring(f, cx, cy, mr);
            if (missed[(size_t)j * nb + i]) cross(f, cx, cy, mr * 0.8);
        }
    free(found);
    free(missed);

    /* axes: ticks at block centres, every `step` blocks */
    int step = tick_step(nb);
    for (int b = 0; b < nb; b += step) {
        double c = (b + 0.5) * cell;
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#444'/>\n", x0 + c, y0 + plot, x0 + c, y0 + plot + 4);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>%d</text>\n", x0 + c, y0 + plot + 16, b);
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#444'/>\n", x0 - 4, y0 + c, x0, y0 + c);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%d</text>\n", x0 - 7, y0 + c + 4, b);
    }
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='13'>key block i (attended)</text>\n",
            x0 + plot / 2, y0 + plot + 40);
    fprintf(f, "<text transform='translate(%.1f %.1f) rotate(-90)' text-anchor='middle' font-size='13'>query block j</text>\n",
            x0 - 48, y0 + plot / 2);

    /* legend: the colour bar (bottom 0, top 1) with ticks at sqrt(value), then the marks */
    double lx = x0 + plot + 36, ly = y0 + 34, lh = 240, lw = 18;
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='12'>share of the block's queries</text>\n", lx - 6, y0 + 6);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='12'>that selected the key block</text>\n", lx - 6, y0 + 21);
    for (int s = 0; s < 96; s++) {
        double p = (s + 0.5) / 96.0;
        int rgb[3];
        ramp(p * p, rgb);
        fprintf(f, "<rect x='%.1f' y='%.2f' width='%.1f' height='%.2f' fill='#%02x%02x%02x'/>\n",
                lx, ly + lh * (1.0 - (s + 1) / 96.0), lw, lh / 96.0 + 0.3, rgb[0], rgb[1], rgb[2]);
    }
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", lx, ly, lw, lh);
    static const double ticks[] = {0, 0.01, 0.05, 0.1, 0.25, 0.5, 1};
    for (size_t t = 0; t < sizeof ticks / sizeof ticks[0]; t++) {
        double y = ly + lh * (1.0 - sqrt(ticks[t]));
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#444'/>\n", lx + lw, y, lx + lw + 4, y);
        fprintf(f, "<text x='%.1f' y='%.1f' font-size='11'>%g</text>\n", lx + lw + 7, y + 4, ticks[t]);
    }
    double my = ly + lh + 34;
    ring(f, lx + 9, my, 7);
    fprintf(f, "<text x='%.1f' y='%.1f'>needle: its block selected</text>\n", lx + 24, my + 4);
    cross(f, lx + 9, my + 26, 5.6);
    fprintf(f, "<text x='%.1f' y='%.1f'>needle: its block missed</text>\n", lx + 24, my + 30);
    fprintf(f, "<rect x='%.1f' y='%.1f' width='14' height='14' fill='#e6e6e6' stroke='#999'/>\n", lx + 2, my + 45);
    fprintf(f, "<text x='%.1f' y='%.1f'>future block (causal mask)</text>\n", lx + 24, my + 56);
    fprintf(f, "<text x='%.1f' y='%.1f' fill='#333'>diagonal: the own block, always</text>\n", lx - 6, my + 84);
    fprintf(f, "<text x='%.1f' y='%.1f' fill='#333'>selected (share 1)</text>\n", lx - 6, my + 99);
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}
