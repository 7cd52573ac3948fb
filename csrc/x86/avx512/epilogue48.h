/*
 * x86/avx512/epilogue48.h: the one epilogue of every AVX-512 GEMM whose tile is 48 columns
 * wide (the fp32 GEMM of this folder, the int8 GEMMs of avx512vnni/ and amx/), included by
 * each so that it compiles with that folder's flags and no folder needs another at link time.
 *
 * out[i*ldo + j] = epi(ftile[i*48 + j] + bias[j]) for i < mr, j < nw: the same ops on every
 * lane (the vector GELU of ../avx512/vmath.h, 1.5e-7 |v|), stores masked to nw columns.
 *   ftile (mr, 48) fp32, 64-byte aligned; bias (nw); res (NULL unless BGE_EPI_BIAS_RESIDUAL)
 *   and out at element (0, 0), rows ldo apart; res may equal out (each vector of res is
 *   read before the same vector of out is written).
 */
#ifndef BGE_X86_AVX512_EPILOGUE48_H
#define BGE_X86_AVX512_EPILOGUE48_H

#include <immintrin.h>

#include "../../bge_internal.h"
#include "vmath.h" /* bge_avx512_gelu_ps */

#define BGE_EPI48_NR 48 /* the row stride of ftile */

static __attribute__((noinline)) void bge_avx512_epilogue_48(const float *ftile, int mr,
                                                              int nw, const float *bias,
                                                              const float *res, float *out,
                                                              size_t ldo, int epilogue) {
    for (int j = 0; j < nw; j += 16) {
        const int w = nw - j < 16 ? nw - j : 16;
        const __mmask16 mask = (__mmask16)((1u << w) - 1u);
        const __m512 bv = _mm512_maskz_loadu_ps(mask, bias + j);
        for (int i = 0; i < mr; i++) {
            __m512 v = _mm512_add_ps(_mm512_load_ps(ftile + i * BGE_EPI48_NR + j), bv);
            if (epilogue == BGE_EPI_BIAS_GELU)
                v = bge_avx512_gelu_ps(v);
            else if (epilogue == BGE_EPI_BIAS_RESIDUAL)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res + i * ldo + j));
            _mm512_mask_storeu_ps(out + i * ldo + j, mask, v);
        }
    }
}

#endif
