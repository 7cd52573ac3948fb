/*
 * x86/avx512/transpose16.h: a 16 x 16 transpose of 32-bit elements in zmm registers, shared
 * by the packings of this folder (fp32 panels, gemm.c; bf16 pair panels, bpack48.h) and of
 * avx512bf16/, which includes it so that it compiles with that folder's flags.
 */
#ifndef BGE_X86_AVX512_TRANSPOSE16_H
#define BGE_X86_AVX512_TRANSPOSE16_H

#include <immintrin.h>

/* Transposes the 16 x 16 block r (row i in r[i]) in place: r[i][j] becomes r[j][i].
 * unpacklo/hi_ps: pairs of rows interleaved; unpacklo/hi_pd: in each 128-bit lane L, u[4a+c]
 * holds column 4L+c of rows 4a .. 4a+3; two rounds of shuffle_f32x4: the 4 x 4 grid of
 * 128-bit lanes transposed, so column 4L+c gathers lane L of u[c], u[4+c], u[8+c], u[12+c].
 * 64 shuffles per 256 floats (the AVX2 transpose8 takes 96 for as many). */
static inline __attribute__((always_inline)) void bge_avx512_transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int a = 0; a < 4; a++) { /* rows 4a .. 4a+3 */
        const __m512d lo = _mm512_castps_pd(t[4 * a]), lo2 = _mm512_castps_pd(t[4 * a + 2]);
        const __m512d hi = _mm512_castps_pd(t[4 * a + 1]), hi2 = _mm512_castps_pd(t[4 * a + 3]);
        r[4 * a + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2));
        r[4 * a + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2));
        r[4 * a + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2));
        r[4 * a + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2));
    }
    for (int c = 0; c < 4; c++) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);     /* lanes 0 1 | 0 1 */
        const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);     /* lanes 2 3 | 2 3 */
        const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
        const __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        t[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);      /* lane 0 of the four: column c    */
        t[4 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);  /* lane 1: column 4 + c            */
        t[8 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);  /* lane 2: column 8 + c            */
        t[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD); /* lane 3: column 12 + c           */
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

#endif
