/*
 * x86/avx2/epilogue24.h: the one epilogue of every 8-lane GEMM whose tile is 24 columns wide
 * (the fp32, bf16 and int8 GEMMs of this folder, the int8 GEMM of avxvnni/), included by
 * each so that it compiles with that folder's flags and no folder needs another at link time.
 *
 * out[i*ldo + j] = epi(ftile[i*24 + j] + bias[j]) for i < mr, j < nw: the same ops on every
 * lane, full vector or tail (the vector GELU of vmath.h, 1.5e-7 |v|).
 *   ftile (mr, 24) fp32, 32-byte aligned; bias (nw); res (NULL unless BGE_EPI_BIAS_RESIDUAL)
 *   and out at element (0, 0), rows ldo apart; res may equal out (each vector of res is
 *   read before the same vector of out is written).
 * Full vectors use plain loads and stores, tails masked ones (vmaskmovps stores are slow on
 * AMD); the arithmetic is the same either way.
 */
#ifndef BGE_X86_AVX2_EPILOGUE24_H
#define BGE_X86_AVX2_EPILOGUE24_H

#include <immintrin.h>

#include "../../bge_internal.h"
#include "vmath.h" /* bge_avx2_gelu_ps */

#define BGE_EPI24_NR 24 /* the row stride of ftile */

static __attribute__((noinline)) void bge_avx2_epilogue_24(const float *ftile, int mr, int nw,
                                                           const float *bias, const float *res,
                                                           float *out, size_t ldo,
                                                           int epilogue) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < nw; j += 8) {
        const int w = nw - j < 8 ? nw - j : 8;
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lane);
        const int full = w == 8;
        const __m256 bv = full ? _mm256_loadu_ps(bias + j) : _mm256_maskload_ps(bias + j, mask);
        for (int i = 0; i < mr; i++) {
            __m256 v = _mm256_add_ps(_mm256_load_ps(ftile + i * BGE_EPI24_NR + j), bv);
            if (epilogue == BGE_EPI_BIAS_GELU) {
                v = bge_avx2_gelu_ps(v);
            } else if (epilogue == BGE_EPI_BIAS_RESIDUAL) {
                const float *r = res + i * ldo + j;
                v = _mm256_add_ps(v, full ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, mask));
            }
            if (full)
                _mm256_storeu_ps(out + i * ldo + j, v);
            else
                _mm256_maskstore_ps(out + i * ldo + j, mask, v);
        }
    }
}

#endif
