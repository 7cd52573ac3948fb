/*
 * x86/avx512bf16/convert.h: one activation row fp32 -> bf16 with vcvtneps2bf16 (bf16() of
 * bge.h bit for bit, measured), shared by this folder's GEMM and the AMX level's, which read
 * the same converted rows; a header, so that each folder compiles it with its own flags
 * (AVX-512 F + BW + BF16) and neither needs the other at link time.
 */
#ifndef BGE_X86_AVX512BF16_CONVERT_H
#define BGE_X86_AVX512BF16_CONVERT_H

#include <immintrin.h>
#include <stdint.h>

/* x (K) fp32 -> xc (Kp) bf16, 16 at a time; a zero at k = K when K is odd. */
static void bge_avx512bf16_convert(const float *x, int K, void *xc) {
    uint16_t *o = (uint16_t *)xc;
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + k));
        _mm256_storeu_si256((__m256i *)(o + k), (__m256i)h);
    }
    if (k < K) {
        const __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + k));
        _mm256_mask_storeu_epi16(o + k, m, (__m256i)h);
    }
    if (K & 1) o[K] = 0;
}

#endif
