/*
 * arm/neon/epilogue.h: the fused epilogue of every NEON GEMM tile kept in floats (the fp32
 * GEMM's 8 x 12 tiles, the bf16 GEMMs' 8 x 8), one code path for full and partial tiles.
 */
#ifndef BGE_ARM_NEON_EPILOGUE_H
#define BGE_ARM_NEON_EPILOGUE_H

#include <arm_neon.h>

#include "../../bge_internal.h"
#include "vmath.h" /* bge_neon_gelu_ps: GELU (erf), error bound stated there */

/* out[i, n] = epi(tile[i * ldt + n] + bias[n]) for i < mr, n < nw: every element gets the
 * same ops (the vector GELU on every lane, full or tail).
 *   tile (mr, ldt) floats; bias (nw) the panel's bias; res, out rows of stride ldo (res may
 *   equal out: each vector of res is read before the same vector of out is written). A
 *   partial vector (nw % 4 lanes) is read and written lane by lane: no byte past column nw. */
static inline void bge_neon_epilogue_tile(const float *tile, int ldt, int mr, int nw,
                                          const float *bias, const float *res, float *out,
                                          size_t ldo, int epilogue) {
    for (int j = 0; j < nw; j += 4) {
        const int w = nw - j < 4 ? nw - j : 4;
        float tb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int l = 0; l < w; l++) tb[l] = bias[j + l];
        const float32x4_t bv = vld1q_f32(tb);
        for (int i = 0; i < mr; i++) {
            float32x4_t v = vaddq_f32(vld1q_f32(tile + i * ldt + j), bv);
            if (epilogue == BGE_EPI_BIAS_GELU) {
                v = bge_neon_gelu_ps(v);
            } else if (epilogue == BGE_EPI_BIAS_RESIDUAL) {
                const float *r = res + i * ldo + j;
                if (w == 4) {
                    v = vaddq_f32(v, vld1q_f32(r));
                } else {
                    float tr[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    for (int l = 0; l < w; l++) tr[l] = r[l];
                    v = vaddq_f32(v, vld1q_f32(tr));
                }
            }
            float *o = out + i * ldo + j;
            if (w == 4) {
                vst1q_f32(o, v);
            } else {
                float to[4];
                vst1q_f32(to, v);
                for (int l = 0; l < w; l++) o[l] = to[l];
            }
        }
    }
}

#endif
