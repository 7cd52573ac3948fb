/*
 * x86/avx2/transpose.h: the 8 x 8 float transpose in ymm registers, shared by this folder's
 * files (ops.c: packing K for attention; gemm.c: packing weights) and x86/avx512/ops.c
 * (packing K for attention). Needs AVX, which both folders' flags include.
 */
#ifndef BGE_X86_AVX2_TRANSPOSE_H
#define BGE_X86_AVX2_TRANSPOSE_H

#include <immintrin.h>

/* Transposes the 8 x 8 block r (row i in r[i]) in place: r[i][j] becomes r[j][i].
 * unpack: pairs of rows interleaved; shuffle: 4 rows per column within each 128-bit half;
 * permute2f128: the halves of rows 0-3 and 4-7 joined. (In-lane shuffles are cheaper than
 * vpermt2ps on a 16 x 16 block, which is why the AVX-512 attention uses this one too.) */
static inline __attribute__((always_inline)) void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);     /* c0 c0 c1 c1 | c4 c4 c5 c5 */
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]); /* c2 c2 c3 c3 | c6 c6 c7 c7 */
    }
    for (int h = 0; h < 2; h++) { /* rows 4h .. 4h+3 */
        const __m256 a = t[4 * h], b = t[4 * h + 1], c = t[4 * h + 2], e = t[4 * h + 3];
        u[4 * h + 0] = _mm256_shuffle_ps(a, c, _MM_SHUFFLE(1, 0, 1, 0)); /* c0 | c4 */
        u[4 * h + 1] = _mm256_shuffle_ps(a, c, _MM_SHUFFLE(3, 2, 3, 2)); /* c1 | c5 */
        u[4 * h + 2] = _mm256_shuffle_ps(b, e, _MM_SHUFFLE(1, 0, 1, 0)); /* c2 | c6 */
        u[4 * h + 3] = _mm256_shuffle_ps(b, e, _MM_SHUFFLE(3, 2, 3, 2)); /* c3 | c7 */
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[c + 4] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

#endif
