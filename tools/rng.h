/* A small deterministic random source (splitmix64) and standard normals (Box-Muller). */
#ifndef MOBA_TOOLS_RNG_H
#define MOBA_TOOLS_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct { uint64_t state; } rng;

static inline uint64_t rng_u64(rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits */
static inline double rng_uniform(rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

/* uniform integer in [lo, hi] (hi - lo small against 2^64: the bias is negligible) */
static inline int64_t rng_range(rng *r, int64_t lo, int64_t hi) { return lo + (int64_t)(rng_u64(r) % (uint64_t)(hi - lo + 1)); }

static inline float rng_normal(rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
}

#endif
