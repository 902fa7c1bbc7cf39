/*
 * The tests' own storage conversions (ref64), since every f16/bf16 check leans on them:
 *   - every one of the 65536 f16 and bf16 bit patterns survives to-fp32-and-back (NaN stays NaN);
 *   - the midpoint between two neighbouring values rounds to the even one, and one fp32 ulp either
 *     side of it rounds to the nearer one (round to nearest even), overflow goes to inf;
 *   - against the compiler's _Float16 conversions where it has them, on random fp32 bit patterns;
 *   - the small helpers: rel_err and poison.
 */
#include <math.h>
#include <string.h>

#include "check.h"
#include "ref64.h"

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float next_up(float f) { return bits_f32(f32_bits(f) + 1); }   /* for positive finite f */
static float next_down(float f) { return bits_f32(f32_bits(f) - 1); }

typedef struct {
    const char *name;
    float (*to_f32)(uint16_t);
    uint16_t (*from_f32)(float);
    uint16_t inf; /* bits of +inf */
} half_kind;

static void check_kind(const half_kind *K) {
    int bad_trip = 0, bad_mid = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = K->to_f32((uint16_t)h);
        uint16_t back = K->from_f32(f);
        if (isnan(f) ? !isnan(K->to_f32(back)) : back != h) {
            if (bad_trip++ < 3) fprintf(stderr, "%s: 0x%04x -> %g -> 0x%04x\n", K->name, h, f, back);
        }
    }
    CHECK(bad_trip == 0, "%s: %d bit patterns do not survive the round trip", K->name, bad_trip);

    /* positive finite neighbours a = h, b = h + 1: the midpoint is exact in fp32 */
    for (uint32_t h = 0; h + 1 < K->inf; h++) {
        float a = K->to_f32((uint16_t)h), b = K->to_f32((uint16_t)(h + 1));
        float mid = (float)(((double)a + (double)b) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        int ok = K->from_f32(mid) == even && K->from_f32(-mid) == (even | 0x8000) &&
                 K->from_f32(next_down(mid)) == h && K->from_f32(next_up(mid)) == h + 1;
        if (!ok && bad_mid++ < 3) fprintf(stderr, "%s: midpoint of 0x%04x and 0x%04x (%g) rounds wrong\n", K->name, h, h + 1, mid);
    }
    CHECK(bad_mid == 0, "%s: %d midpoints round wrong", K->name, bad_mid);

    /* past the largest finite value by half an ulp or more: inf */
    float maxf = K->to_f32((uint16_t)(K->inf - 1)), ulp = maxf - K->to_f32((uint16_t)(K->inf - 2));
    CHECK(K->from_f32(maxf + ulp / 2) == K->inf, "%s: max + ulp/2 does not overflow to inf", K->name);
    CHECK(K->from_f32(next_down(maxf + ulp / 2)) == K->inf - 1, "%s: just below max + ulp/2 is not max", K->name);
    CHECK(K->from_f32(INFINITY) == K->inf && K->from_f32(-INFINITY) == (K->inf | 0x8000), "%s: inf", K->name);
    CHECK(isnan(K->to_f32(K->from_f32(NAN))), "%s: NaN", K->name);
    if (K->inf == 0x7c00)
        CHECK(K->from_f32(1e-30f) == 0 && K->from_f32(-1e-30f) == 0x8000, "%s: tiny values do not go to signed zero", K->name);
}

int main(void) {
    const half_kind f16 = {"f16", ref_f16_to_f32, ref_f32_to_f16, 0x7c00};
    const half_kind bf16 = {"bf16", ref_bf16_to_f32, ref_f32_to_bf16, 0x7f80};
    check_kind(&f16);
    check_kind(&bf16);
    CHECK(ref_f16_to_f32(0x3c00) == 1.0f && ref_f16_to_f32(0x0001) == ldexpf(1, -24) && ref_f16_to_f32(0xc000) == -2.0f,
          "f16 decoding of 1, the smallest subnormal, -2");
    CHECK(ref_bf16_to_f32(0x3f80) == 1.0f && ref_bf16_to_f32(0xc040) == -3.0f, "bf16 decoding of 1, -3");

    ref_rng rng;
    ref_rng_seed(&rng, 99);
#ifdef __FLT16_MAX__
    /* the compiler's conversions as an independent oracle */
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)ref_rng_next(&rng);
        if (i & 1) u = (u & 0x8fffffffu) | 0x30000000u; /* half of them near the f16 range */
        float f = bits_f32(u);
        if (isnan(f)) continue;
        _Float16 h = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &h, 2);
        if (ref_f32_to_f16(f) != hb && bad++ < 3) fprintf(stderr, "f16: %a -> 0x%04x, compiler 0x%04x\n", f, ref_f32_to_f16(f), hb);
        if ((float)h != ref_f16_to_f32(hb) && bad++ < 3) fprintf(stderr, "f16: 0x%04x decodes differently\n", hb);
    }
    CHECK(bad == 0, "f16 conversions disagree with the compiler's _Float16 %d times", bad);
#else
    printf("no _Float16 in this compiler: skipping the compiler-oracle check\n");
#endif

    /* storage round trip helpers and rounding to storage */
    double x[3] = {1.0 / 3, -2.5e-3, 7.0};
    CHECK(ref_round_to_storage(MOBA_DTYPE_BF16, 1.0 / 3) == ref_bf16_to_f32(ref_f32_to_bf16((float)(1.0 / 3))), "round bf16");
    CHECK(ref_round_to_storage(MOBA_DTYPE_F32, 1.0 / 3) == (double)(float)(1.0 / 3), "round f32");
    uint16_t st[3];
    double back[3];
    ref_from_double(MOBA_DTYPE_F16, x, 3, st);
    ref_to_double(MOBA_DTYPE_F16, st, 3, back);
    CHECK(fabs(back[0] - x[0]) < 1e-3 && back[2] == 7.0, "f16 storage round trip");

    /* rel_err: |x - r| / |r|, NaN -> inf; poison counts */
    double r[2] = {3, 4}, y[2] = {3, 4.5};
    CHECK(fabs(ref_rel_err(y, r, 2) - 0.1) < 1e-15, "rel_err %.17g", ref_rel_err(y, r, 2));
    y[0] = NAN;
    CHECK(isinf(ref_rel_err(y, r, 2)), "rel_err with NaN");
    for (int dt = 0; dt < 3; dt++) {
        float buf[8];
        memset(buf, 0, sizeof buf);
        ref_poison((moba_dtype)dt, buf, 5);
        CHECK(ref_count_poison((moba_dtype)dt, buf, 8 * 4 / ref_dtype_size((moba_dtype)dt)) == 5, "poison count dtype %d", dt);
        double d[5];
        ref_to_double((moba_dtype)dt, buf, 5, d);
        CHECK(isnan(d[0]) && isnan(d[4]), "poison is NaN in dtype %d", dt);
    }
    double n_mean = 0, n_var = 0;
    for (int i = 0; i < 100000; i++) {
        double g = ref_rng_normal(&rng);
        n_mean += g / 100000, n_var += g * g / 100000;
    }
    CHECK(fabs(n_mean) < 0.02 && fabs(n_var - 1) < 0.03, "normal: mean %.3g var %.3g", n_mean, n_var);
    return check_done("test_ref64");
}
