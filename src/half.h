/* Storage dtypes <-> fp32. f16 and bf16 are rounded to nearest, ties to even; NaN stays NaN. */
#ifndef MOBA_HALF_H
#define MOBA_HALF_H

#include <stdint.h>
#include <string.h>

#include "moba.h"

float moba_f16_to_f32(uint16_t h);
uint16_t moba_f32_to_f16(float f);

static inline float moba_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* bf16 keeps the top 16 bits of fp32; add half an ulp (minus one when the kept lsb is even) to round. */
static inline uint16_t moba_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* n elements starting at element index `at` of a tensor of storage dtype dt, to/from fp32. */
void moba_load_f32(moba_dtype dt, const void *base, int64_t at, int n, float *out);
void moba_store_f32(moba_dtype dt, void *base, int64_t at, int n, const float *in);

/* x rounded to the storage dtype and back (what storing then loading would give). */
float moba_round_to(moba_dtype dt, float x);

#endif
