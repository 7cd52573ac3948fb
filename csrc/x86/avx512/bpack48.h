/*
 * x86/avx512/bpack48.h: bf16() on 16 lanes and the bf16 packing into panels of 48 columns
 * (bge_internal.h), shared by this folder's emulated bf16 GEMM (bgemm.c) and the avx512bf16
 * level, which reads the same bytes; a header, so that each folder compiles it with its own
 * flags (AVX-512 F + BW) and neither needs the other at link time.
 */
#ifndef BGE_X86_AVX512_BPACK48_H
#define BGE_X86_AVX512_BPACK48_H

#include <immintrin.h>

#include "../../bge_internal.h"
#include "transpose16.h" /* bge_avx512_transpose16 */

/* bf16(v) of bge.h on 16 lanes (the steps of bge_bf16_bits), left in the top half of each
 * lane with the low half zero: an fp32 of the bf16's value. */
static inline __m512i bge_avx512_bf16_round(__m512i u) {
    const __m512i expo = _mm512_set1_epi32(0x7F800000), sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF), hi = _mm512_set1_epi32((int)0xFFFF0000u);
    const __mmask16 den = _mm512_testn_epi32_mask(u, expo);
    u = _mm512_mask_and_epi32(u, den, u, sign);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_epi32(u, absm), expo);
    const __m512i odd = _mm512_and_epi32(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd);
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
    return _mm512_and_epi32(r, hi);
}

/* The bytes of bge_bf16_pack_panels(w, K, N, 48, packed), made 16 columns x 32 k at a time:
 * each column's 32 floats converted and their bf16 halves gathered into 16 pair words
 * (vpermt2w), then the 16 x 16 words transposed so that each pair row of the panel is one
 * store. ~15x faster than the scalar packing (bge-small: ~35 ms of the cold start less). */
static inline int bge_avx512_bf16_pack48(const float *w, int K, int N, void *packed) {
    if (!w || !packed || bge_bf16_panels_size(K, N, 48) == 0) return BGE_ERR_ARG;
    bge_bf16_header_init(packed, K, N, 48);
    const int Kp = BGE_BF16_KP(K), panels = (N + 47) / 48;
    uint32_t *base = (uint32_t *)((char *)packed + BGE_BF16_HEADER_BYTES);
    /* 16-bit lane m of the result: the top half of lane m of lo (m < 16) or of hi */
    const __m512i idx = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39,
                                         37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13,
                                         11, 9, 7, 5, 3, 1);
    for (int p = 0; p < panels; p++) {
        uint32_t *dst = base + (size_t)p * (Kp / 2) * 48;
        for (int j0 = 0; j0 < 48; j0 += 16) {
            const int n0 = p * 48 + j0;
            const int nj = N - n0 < 0 ? 0 : (N - n0 < 16 ? N - n0 : 16);
            for (int k0 = 0; k0 < K; k0 += 32) {
                const int kc = K - k0 < 32 ? K - k0 : 32;
                const __mmask16 m0 = (__mmask16)(kc >= 16 ? 0xFFFFu : (1u << kc) - 1u);
                const __mmask16 m1 = (__mmask16)(kc >= 32 ? 0xFFFFu
                                                 : kc > 16 ? (1u << (kc - 16)) - 1u : 0u);
                __m512 r[16];
                for (int i = 0; i < 16; i++) {
                    if (i >= nj) {
                        r[i] = _mm512_setzero_ps();
                        continue;
                    }
                    const float *src = w + (size_t)(n0 + i) * K + k0;
                    const __m512i lo = bge_avx512_bf16_round(_mm512_maskz_loadu_epi32(m0, src));
                    const __m512i hi =
                        bge_avx512_bf16_round(_mm512_maskz_loadu_epi32(m1, src + 16));
                    r[i] = _mm512_castsi512_ps(_mm512_permutex2var_epi16(lo, idx, hi));
                }
                bge_avx512_transpose16(r); /* r[g]: pair k0/2 + g of the 16 columns */
                const int pairs = (kc + 1) / 2;
                for (int g = 0; g < pairs; g++)
                    _mm512_storeu_ps((float *)(dst + (size_t)(k0 / 2 + g) * 48 + j0), r[g]);
            }
        }
    }
    return BGE_OK;
}

#endif
