#include "half.h"

/* f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float moba_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
    if (exp == 0) {                    /* zero or subnormal: mant * 2^-24 is exact in fp32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) u = sign | 0x7f800000u | (mant << 13);          /* inf / NaN */
    else u = sign | ((exp + 112u) << 23) | (mant << 13);          /* rebias 15 -> 127 */
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even. Normal range: rebias the exponent and round the 13 dropped mantissa bits by
 * adding 0xfff plus the kept lsb (a carry into the exponent is the correct rounding up, up to inf).
 * Below 2^-14 the result is subnormal: adding a magic float whose ulp is 2^-24 lets the FPU round. */
uint16_t moba_f32_to_f16(float value) {
    const uint32_t f16_overflow = (127u + 16u) << 23;                  /* 65536: rounds to inf */
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t f;
    memcpy(&f, &value, 4);
    uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint16_t out;
    if (f >= f16_overflow) {
        out = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (f < (113u << 23)) {
        float v, magic;
        memcpy(&v, &f, 4);
        memcpy(&magic, &denorm_magic, 4);
        v += magic;
        uint32_t r;
        memcpy(&r, &v, 4);
        out = (uint16_t)(r - denorm_magic);
    } else {
        uint32_t mant_odd = (f >> 13) & 1u;
        f += 0xc8000fffu + mant_odd;   /* (15 - 127) << 23, wrapped, plus the rounding bias */
        out = (uint16_t)(f >> 13);
    }
    return (uint16_t)(out | (sign >> 16));
}

void moba_load_f32(moba_dtype dt, const void *base, int64_t at, int n, float *out) {
    if (dt == MOBA_DTYPE_F32) {
        memcpy(out, (const float *)base + at, (size_t)n * sizeof(float));
    } else if (dt == MOBA_DTYPE_F16) {
        const uint16_t *h = (const uint16_t *)base + at;
        for (int i = 0; i < n; i++) out[i] = moba_f16_to_f32(h[i]);
    } else {
        const uint16_t *h = (const uint16_t *)base + at;
        for (int i = 0; i < n; i++) out[i] = moba_bf16_to_f32(h[i]);
    }
}

void moba_store_f32(moba_dtype dt, void *base, int64_t at, int n, const float *in) {
    if (dt == MOBA_DTYPE_F32) {
        memcpy((float *)base + at, in, (size_t)n * sizeof(float));
    } else if (dt == MOBA_DTYPE_F16) {
        uint16_t *h = (uint16_t *)base + at;
        for (int i = 0; i < n; i++) h[i] = moba_f32_to_f16(in[i]);
    } else {
        uint16_t *h = (uint16_t *)base + at;
        for (int i = 0; i < n; i++) h[i] = moba_f32_to_bf16(in[i]);
    }
}

float moba_round_to(moba_dtype dt, float x) {
    if (dt == MOBA_DTYPE_F16) return moba_f16_to_f32(moba_f32_to_f16(x));
    if (dt == MOBA_DTYPE_BF16) return moba_bf16_to_f32(moba_f32_to_bf16(x));
    return x;
}
