/*
 * arm/neon/vmath.h: vector exp and GELU (erf) on 4 floats, for the kernels of this folder
 * (ops.c: softmax, attention, GELU; gemm.c: the bias + GELU epilogue) and the int8 levels'
 * GELU epilogue.
 *
 * The same approximations as x86/avx2/vmath.h, lane for lane: the same constants, the same
 * operations in the same order, each FMA an FMA there too (vfmaq_f32 / vfmsq_f32 for
 * _mm256_fmadd_ps / _mm256_fnmadd_ps), round-to-nearest-even for _mm256_round_ps. So the
 * stated bounds of that file hold here unchanged, and every finite input gives the same
 * bits as the AVX2 and AVX-512 levels (NaN inputs give NaN on both; the payload may differ):
 *   BGE_VMATH_EXP_BOUND   exp: relative error <= 2 ulp where e^x is a normal float,
 *                         <= 2^-149 absolute where it is subnormal
 *   BGE_VMATH_ERF_BOUND   erf: |erf - erf_exact| <= 6e-8
 *   BGE_VMATH_GELU_BOUND  GELU: |gelu - ref| <= 1.5e-7 |x|, ref the references' scalar GELU
 * tests/test_kernels_ops.py holds GELU and the softmax to these bounds against the reference
 * on every level the host (or qemu, .ci/aarch64) runs.
 * Header-only, static inline: an unused function draws no -Wall warning.
 */
#ifndef BGE_ARM_NEON_VMATH_H
#define BGE_ARM_NEON_VMATH_H

#include <arm_neon.h>

/* exp(x), 4 lanes: see x86/avx2/vmath.h for the method (Cody-Waite reduction, degree-4
 * minimax q, the scaling by 2^n1 * 2^n2 so that subnormal results round once). The clamp
 * to [-104, 89] passes NaN (vminq/vmaxq return NaN when either operand is). */
static inline float32x4_t bge_neon_exp_ps(float32x4_t x) {
    x = vmaxq_f32(vdupq_n_f32(-104.0f), vminq_f32(vdupq_n_f32(89.0f), x));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693147182464599609375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-1.904654323148236e-9f));
    float32x4_t q = vdupq_n_f32(1.3802715111523867e-3f);
    q = vfmaq_f32(vdupq_n_f32(8.374347351491451e-3f), q, r);
    q = vfmaq_f32(vdupq_n_f32(4.1668616235256195e-2f), q, r);
    q = vfmaq_f32(vdupq_n_f32(1.6666461527347565e-1f), q, r);
    q = vfmaq_f32(vdupq_n_f32(4.999999403953552e-1f), q, r);
    const float32x4_t p = vaddq_f32(vfmaq_f32(r, q, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    /* n in [-150, 128] after the clamp: n1, n2 in [-75, 64], 2^n1 and 2^n2 are normal */
    const int32x4_t ni = vcvtq_s32_f32(n); /* n is whole: exact */
    const int32x4_t n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    const int32x4_t bias = vdupq_n_s32(127);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
}

/* erf(z), 4 lanes: the 16 intervals of 1/4 on [0, 4) and the degree-5 pieces of
 * x86/avx2/vmath.h (the same table), |z| clamped to 3.9192, sign restored after. The
 * per-lane coefficient lookup is one tbl of 64 bytes (16 floats) per degree: byte index
 * 4 i + b for byte b of interval i's float. A NaN |z| stays NaN through the clamp and
 * converts to interval 0; t is then NaN and so is the result, as on x86. */
static inline float32x4_t bge_neon_erf_ps(float32x4_t z) {
    static const float tab[6][16] __attribute__((aligned(64))) = {
        {0.0f, 0.276326388f, 0.520499885f, 0.711155653f,
         0.842700779f, 0.92290014f, 0.966105163f, 0.986671686f,
         0.995322287f, 0.998537302f, 0.999593019f, 0.999899387f,
         0.999977887f, 0.999995708f, 0.999999285f, 0.999999881f},
        {1.12837863f, 1.06001306f, 0.878780961f, 0.642929196f,
         0.415108949f, 0.236520708f, 0.118929334f, 0.0527739152f,
         0.0206651799f, 0.00714075379f, 0.00218050671f, 0.000585505099f,
         0.000141067198f, 2.8285498e-05f, 3.17094191e-06f, 1.31974639e-06f},
        {2.69909142e-05f, -0.264939278f, -0.439318895f, -0.482145935f,
         -0.415151238f, -0.295660585f, -0.178386688f, -0.0923360884f,
         -0.0412923172f, -0.0160325747f, -0.00549354265f, -0.00159394648f,
         -0.000457982242f, -7.44885765e-05f, 3.10577125e-05f, -1.31148563e-05f},
        {-0.376590222f, -0.31036973f, -0.14768298f, 0.0261256043f,
         0.138934642f, 0.167901158f, 0.138871491f, 0.0900399685f,
         0.0478254184f, 0.0213410705f, 0.00875705481f, 0.00257687503f,
         0.00115027337f, 7.32413355e-06f, -0.000415050657f, 9.75138828e-05f},
        {0.00330944033f, 0.136565045f, 0.192539081f, 0.155023396f,
         0.065727666f, -0.00986961368f, -0.0467369407f, -0.0482282303f,
         -0.0327475257f, -0.0172363017f, -0.0100001553f, -0.00238926895f,
         -0.00243301992f, 0.000486290402f, 0.00176697411f, -0.000370762049f},
        {0.103766374f, 0.0460823849f, -0.0272510424f, -0.0684217215f,
         -0.0599405356f, -0.0320416801f, -0.00405567605f, 0.00985188968f,
         0.0103597967f, 0.00662238803f, 0.00697889784f, 0.000856308965f,
         0.00276554725f, -0.000903595821f, -0.00261316216f, 0.000531116384f},
    };
    const uint32x4_t sign = vdupq_n_u32(0x80000000u);
    const uint32x4_t s = vandq_u32(vreinterpretq_u32_f32(z), sign);
    const float32x4_t a = vminq_f32(vdupq_n_f32(3.9192f), vabsq_f32(z));
    const int32x4_t i = vcvtq_s32_f32(vmulq_f32(a, vdupq_n_f32(4.0f))); /* truncates */
    const float32x4_t t = vfmsq_f32(a, vcvtq_f32_s32(i), vdupq_n_f32(0.25f));
    /* byte b of lane l: 4 i_l + b */
    const uint8x16_t idx = vreinterpretq_u8_u32(vmlaq_u32(
        vdupq_n_u32(0x03020100u), vreinterpretq_u32_s32(i), vdupq_n_u32(0x04040404u)));
#define BGE_NEON_ERF_COEF(k)                                                                  \
    vreinterpretq_f32_u8(vqtbl4q_u8(                                                          \
        (uint8x16x4_t){{vld1q_u8((const uint8_t *)(tab[k])),                                   \
                        vld1q_u8((const uint8_t *)(tab[k] + 4)),                               \
                        vld1q_u8((const uint8_t *)(tab[k] + 8)),                               \
                        vld1q_u8((const uint8_t *)(tab[k] + 12))}},                            \
        idx))
    float32x4_t y = BGE_NEON_ERF_COEF(5);
    y = vfmaq_f32(BGE_NEON_ERF_COEF(4), y, t);
    y = vfmaq_f32(BGE_NEON_ERF_COEF(3), y, t);
    y = vfmaq_f32(BGE_NEON_ERF_COEF(2), y, t);
    y = vfmaq_f32(BGE_NEON_ERF_COEF(1), y, t);
    y = vfmaq_f32(BGE_NEON_ERF_COEF(0), y, t);
#undef BGE_NEON_ERF_COEF
    return vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(y), s));
}

/* GELU with the exact erf, 4 lanes: fma(x/2, erf(x / sqrt 2), x/2), as x86/avx2/vmath.h. */
static inline float32x4_t bge_neon_gelu_ps(float32x4_t x) {
    const float32x4_t h = vmulq_f32(x, vdupq_n_f32(0.5f));
    const float32x4_t e = bge_neon_erf_ps(vmulq_f32(x, vdupq_n_f32(0.70710678118654752440f)));
    return vfmaq_f32(h, h, e);
}

#endif /* BGE_ARM_NEON_VMATH_H */
