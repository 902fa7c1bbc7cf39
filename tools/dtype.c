/*
 * float32 <-> float16 / bfloat16, round to nearest even; NaN stays NaN, overflow goes to inf.
 *   bf16 = the top 16 bits of a float32;  f16 = 1 sign, 5 exponent (bias 15), 10 mantissa bits.
 */
#include "dtype.h"

#include <string.h>

const char *dtype_descr(moba_dtype t) {
    return t == MOBA_DTYPE_F16 ? "<f2" : t == MOBA_DTYPE_BF16 ? "<u2" : "<f4";
}

const char *dtype_name(moba_dtype t) {
    return t == MOBA_DTYPE_F16 ? "f16" : t == MOBA_DTYPE_BF16 ? "bf16" : "f32";
}

int dtype_from_descr(const char *descr, moba_dtype *t) {
    if (!strcmp(descr, "<f4")) *t = MOBA_DTYPE_F32;
    else if (!strcmp(descr, "<f2")) *t = MOBA_DTYPE_F16;
    else if (!strcmp(descr, "<u2")) *t = MOBA_DTYPE_BF16;
    else return -1;
    return 0;
}

static uint32_t float_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static float bits_float(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

float bf16_to_float(uint16_t bits) { return bits_float((uint32_t)bits << 16); }

uint16_t float_to_bf16(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);                                            /* nearest even */
    return (uint16_t)(u >> 16);
}

float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) { /* subnormal: man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t float_to_f16(float x) {
    uint32_t u = float_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;          /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00;         /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                              /* below 2^-14: subnormal or zero */
        float v = bits_float(a) * 16777216.0f;          /* in units of 2^-24, exact */
        uint32_t r = (uint32_t)v;
        float frac = v - (float)r;
        if (frac > 0.5f || (frac == 0.5f && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    uint32_t e = (a >> 23) - 112, man = a & 0x7fffffu;
    uint32_t h = (e << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* carries into the exponent correctly */
    return sign | (uint16_t)h;
}

void dtype_store(moba_dtype t, const float *src, void *dst, size_t n) {
    if (t == MOBA_DTYPE_F32) { memcpy(dst, src, n * 4); return; }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = t == MOBA_DTYPE_BF16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
}

void dtype_load(moba_dtype t, const void *src, float *dst, size_t n) {
    if (t == MOBA_DTYPE_F32) { memcpy(dst, src, n * 4); return; }
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = t == MOBA_DTYPE_BF16 ? bf16_to_float(s[i]) : f16_to_float(s[i]);
}
