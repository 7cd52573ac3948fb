/*
 * arm/bgemm_neon.h: what the two ARM bf16 GEMMs share (arm/neon/bgemm.c, the emulation, and
 * arm/neonbf16/bgemm.c, BFDOT): bf16() on 4 lanes, the activation conversions, the packing
 * and the fused epilogue of their 8 x 8 tiles. A header, so that each folder compiles it with
 * its own -march flags (as x86/avx512/bpack48.h is shared).
 *
 * Both levels read the same packed bytes: the panels of bge_internal.h with nr = 8 (per pair
 * of k, one row of 8 words: column j's bf16 of the even k in the low half, of the odd k in
 * the high half), 32 bytes per pair row, so a pair row is two q registers.
 */
#ifndef BGE_ARM_BGEMM_NEON_H
#define BGE_ARM_BGEMM_NEON_H

#include <arm_neon.h>

#include "../bge_internal.h"
#include "neon/epilogue.h" /* bge_neon_epilogue_tile */

#define BGE_ARM_BF16_NR 8      /* columns per panel: 2 q registers of 4            */
#define BGE_ARM_BF16_MR 8      /* rows per tile                                    */

/* bf16(v) of bge.h on 4 lanes of bits u (the steps of bge_bf16_bits: a denormal taken as
 * +-0, a NaN made quiet, else round to nearest even), left in the top half of each lane with
 * the low half zero: the fp32 of the bf16's value. */
static inline uint32x4_t bge_neon_bf16_round(uint32x4_t u) {
    const uint32x4_t expo = vdupq_n_u32(0x7F800000u);
    const uint32x4_t den = vceqq_u32(vandq_u32(u, expo), vdupq_n_u32(0));
    u = vbslq_u32(den, vandq_u32(u, vdupq_n_u32(0x80000000u)), u);
    const uint32x4_t nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7FFFFFFFu)), expo);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t r = vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7FFFu)), odd);
    const uint32x4_t q = vorrq_u32(u, vdupq_n_u32(0x00400000u));
    return vandq_u32(vbslq_u32(nan, q, r), vdupq_n_u32(0xFFFF0000u));
}

/* x (K) fp32 -> xc (Kp) fp32 holding bf16(x[k]) (low 16 bits zero); 0 at k = K when K is odd.
 * The emulation's form: its tiles multiply these by the widened weights with fmla. */
static inline void bge_neon_bf16_convert_widened(const float *x, int K, void *xc) {
    float *o = (float *)xc;
    int k = 0;
    for (; k + 4 <= K; k += 4)
        vst1q_f32(o + k, vreinterpretq_f32_u32(
                             bge_neon_bf16_round(vreinterpretq_u32_f32(vld1q_f32(x + k)))));
    for (; k < K; k++) {
        uint32_t u;
        memcpy(&u, x + k, sizeof u);
        o[k] = bge_bf16_to_f32(bge_bf16_bits(u));
    }
    if (K & 1) o[K] = 0.0f;
}

/* x (K) fp32 -> xc (Kp) bf16 bits; 0 at k = K when K is odd. BFDOT's form (pairs of k in one
 * 32-bit word, the even k low). Integer steps, not BFCVTN: BFCVTN rounds by FPCR and does not
 * take denormal inputs as zero, the scheme's bf16() does. */
static inline void bge_neon_bf16_convert_bits(const float *x, int K, void *xc) {
    uint16_t *o = (uint16_t *)xc;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        const uint32x4_t lo = bge_neon_bf16_round(vreinterpretq_u32_f32(vld1q_f32(x + k)));
        const uint32x4_t hi = bge_neon_bf16_round(vreinterpretq_u32_f32(vld1q_f32(x + k + 4)));
        vst1q_u16(o + k, vcombine_u16(vshrn_n_u32(lo, 16), vshrn_n_u32(hi, 16)));
    }
    for (; k < K; k++) {
        uint32_t u;
        memcpy(&u, x + k, sizeof u);
        o[k] = bge_bf16_bits(u);
    }
    if (K & 1) o[K] = 0;
}

/* The 8 x 8 tile's epilogue (neon/epilogue.h), tile (8, 8) floats, nw <= 8. */
static inline void bge_neon_bf16_epilogue8(const float *tile, int mr, int nw, const float *bias,
                                           const float *res, float *out, size_t ldo,
                                           int epilogue) {
    bge_neon_epilogue_tile(tile, BGE_ARM_BF16_NR, mr, nw, bias, res, out, ldo, epilogue);
}

#endif
