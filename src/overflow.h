/* Size arithmetic for argument checks: byte counts of tensors must be addressable. */
#ifndef MOBA_OVERFLOW_H
#define MOBA_OVERFLOW_H

#include <stddef.h>
#include <stdint.h>

/* a * b * c * d as size_t, 0 on overflow or above INT64_MAX (all factors are >= 1 here). */
static inline size_t moba_mul4(size_t a, size_t b, size_t c, size_t d) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r) || __builtin_mul_overflow(r, c, &r) ||
        __builtin_mul_overflow(r, d, &r) || r > (size_t)INT64_MAX)
        return 0;
    return r;
}

#endif
