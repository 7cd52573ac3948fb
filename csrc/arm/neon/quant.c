/*
 * arm/neon/quant.c: the int8 quantisers of the ARM levels, in NEON: activations per row and
 * group of 64 k (qu8_quantize) and weights at load (qs8_quantize_weights). Both write the
 * reference's bytes exactly (the scheme of bge.h, ref/qgemm.c), 4 lanes at a time:
 *   - min and max: compare and select per lane, `v < m ? v : m`, the reference's very
 *     expression (fmin/fminnm would differ on NaN); accumulators start at +0, so neither a
 *     NaN nor a -0 ever enters them, and the order of the lanes does not matter;
 *   - cvt: round to nearest even (frintn), then the int32 conversion inside the int32 range
 *     and INT32_MIN outside it or for NaN (bge_q8_cvt: x86's cvtps2dq; AArch64's fcvtns
 *     would saturate instead), then + zp and the clamp to [0, 255];
 *   - weights: the largest |w| on the bit patterns, the scalar scale, a correctly rounded
 *     division per lane, rint by adding and subtracting 1.5 * 2^23, the clamp to [-127, 127].
 * The last n % 4 elements of a group go through the shared scalar code, which does the same
 * float operations. Compiled with -march=armv8-a (the neon folder).
 */
#include <arm_neon.h>
#include <string.h>

#include "neon.h"

/* q (4) = clamp(cvt(x (4) * inv) + zp, 0, 255) as int32 lanes. */
static inline int32x4_t quantize_4(float32x4_t x, float32x4_t vinv, int32x4_t vzp) {
    const float32x4_t r = vrndnq_f32(vmulq_f32(x, vinv));
    const uint32x4_t in = vandq_u32(vcgeq_f32(r, vdupq_n_f32(-2147483648.0f)),
                                    vcltq_f32(r, vdupq_n_f32(2147483648.0f)));
    const int32x4_t c = vbslq_s32(in, vcvtq_s32_f32(r), vdupq_n_s32(INT32_MIN));
    /* INT32_MIN + zp does not overflow: zp is in [0, 255] */
    const int32x4_t v = vaddq_s32(c, vzp);
    return vminq_s32(vmaxq_s32(v, vdupq_n_s32(0)), vdupq_n_s32(255));
}

/* One group: x (n), n <= 64 -> q (n), *scale, *zp, as bge_qu8_quantize__ref byte for byte. */
static void quantize_group(const float *x, int n, uint8_t *q, float *scale, int32_t *zp) {
    float32x4_t vmn = vdupq_n_f32(0.0f), vmx = vdupq_n_f32(0.0f);
    const int n4 = n & ~3;
    for (int k = 0; k < n4; k += 4) {
        const float32x4_t v = vld1q_f32(x + k);
        vmn = vbslq_f32(vcltq_f32(v, vmn), v, vmn);
        vmx = vbslq_f32(vcgtq_f32(v, vmx), v, vmx);
    }
    float lmn[4], lmx[4];
    vst1q_f32(lmn, vmn);
    vst1q_f32(lmx, vmx);
    float mn = 0.0f, mx = 0.0f;
    for (int l = 0; l < 4; l++) {
        mn = lmn[l] < mn ? lmn[l] : mn;
        mx = lmx[l] > mx ? lmx[l] : mx;
    }
    float inv;
    if (!bge_q8_group_params(x, n4, n, mn, mx, q, scale, &inv, zp)) return;
    const float32x4_t vinv = vdupq_n_f32(inv);
    const int32x4_t vzp = vdupq_n_s32(*zp);
    const int n16 = n & ~15;
    for (int k = 0; k < n16; k += 16) { /* 16 lanes narrowed to 16 bytes (exact: 0..255) */
        const int32x4_t a = quantize_4(vld1q_f32(x + k), vinv, vzp);
        const int32x4_t b = quantize_4(vld1q_f32(x + k + 4), vinv, vzp);
        const int32x4_t c = quantize_4(vld1q_f32(x + k + 8), vinv, vzp);
        const int32x4_t d = quantize_4(vld1q_f32(x + k + 12), vinv, vzp);
        const uint16x8_t ab = vcombine_u16(vmovn_u32(vreinterpretq_u32_s32(a)),
                                           vmovn_u32(vreinterpretq_u32_s32(b)));
        const uint16x8_t cd = vcombine_u16(vmovn_u32(vreinterpretq_u32_s32(c)),
                                           vmovn_u32(vreinterpretq_u32_s32(d)));
        vst1q_u8(q + k, vcombine_u8(vmovn_u16(ab), vmovn_u16(cd)));
    }
    for (int k = n16; k < n4; k += 4) {
        const int32x4_t a = quantize_4(vld1q_f32(x + k), vinv, vzp);
        int32_t b[4];
        vst1q_s32(b, a);
        for (int l = 0; l < 4; l++) q[k + l] = (uint8_t)b[l];
    }
    bge_q8_quantize_span(x + n4, n - n4, inv, *zp, q + n4);
}

/* One row: x (K) -> q (Kp), scale (ngroups), zp (ngroups), group by group. */
static void quantize_row(const float *x, int K, uint8_t *q, float *scale, int32_t *zp) {
    bge_q8_quantize_groups(x, K, q, scale, zp, quantize_group);
}

/* x (M, K) -> q (M, Kp), scale (M, ngroups), zp (M, ngroups): the qu8_quantize slot. */
BGE_Q8_QUANTIZE_SLOT(neon, quantize_row)

/* One group of n <= 64 weights, as ref/qgemm.c's quantize_weight_group byte for byte;
 * 0 on a non-finite value. */
static int qweight_group(const float *w, int n, int8_t *q, float *scale) {
    const int n4 = n & ~3;
    int32x4_t top4 = vdupq_n_s32(0);
    for (int k = 0; k < n4; k += 4)
        top4 = vmaxq_s32(top4, vandq_s32(vreinterpretq_s32_f32(vld1q_f32(w + k)),
                                         vdupq_n_s32(0x7FFFFFFF)));
    if (!bge_q8_weight_group_scale(w, n4, n, vmaxvq_s32(top4), scale)) return 0;
    const float s = *scale;
    const float32x4_t vs = vdupq_n_f32(s), magic = vdupq_n_f32(12582912.0f);
    for (int k = 0; k < n4; k += 4) {
        const float32x4_t v = vdivq_f32(vld1q_f32(w + k), vs);
        float32x4_t r = vsubq_f32(vaddq_f32(v, magic), magic);
        r = vminq_f32(vmaxq_f32(r, vdupq_n_f32(-127.0f)), vdupq_n_f32(127.0f));
        const int32x4_t i = vcvtq_s32_f32(r); /* whole values in [-127, 127]: exact */
        const int16x4_t h = vmovn_s32(i);
        const int8x8_t b = vmovn_s16(vcombine_s16(h, h));
        int8_t t[8];
        vst1_s8(t, b);
        memcpy(q + k, t, 4);
    }
    for (int k = n4; k < n; k++) q[k] = bge_q8_weight_round(w[k], s);
    return 1;
}

/* w (N, K) -> w_s8 (N, K), w_scale (N, ngroups): bge_qs8_quantize_weights (bge.h). */
BGE_Q8_QUANTIZE_WEIGHTS_SLOT(neon, qweight_group)

void bge_overlay_neon_quant(bge_kernels *t) {
    BGE_SET(t, qu8_quantize, bge_qu8_quantize__neon);
    BGE_SET(t, qs8_quantize_weights, bge_qs8_quantize_weights__neon);
}
