/*
 * x86/avx2/q8_tiles24.h: the int8 tiles of both 8-lane int8 GEMMs (this folder's vpmaddwd
 * one and avxvnni/'s vpdpbusd one), which differ only in their plain microkernel. Included
 * by each after it defines, for tiles of MR rows x NR = 24 columns (NV = 3 ymm):
 *   ukernel(q, ldq, Kp, panel, tile, mr, nv): tile (MR, NR) int32 = the sums over every k
 *     of q rows x the panel's columns, for i < mr and nv vectors of 8 columns;
 * and gives the driver's two tile functions (bge_q8_gemm_impl, bge_internal.h):
 *   q8_tile24   the raw int32 sums (qu8s8_gemm_i32);
 *   q8_gtile24  the fp32 sum over groups of the scheme, before the bias (qu8s8_gemm).
 * Compiled with the including folder's flags (AVX2 + FMA at least).
 */
#ifndef BGE_X86_AVX2_Q8_TILES24_H
#define BGE_X86_AVX2_Q8_TILES24_H

#include <immintrin.h>

#include "../microkernel.h"

_Static_assert(NR == 24 && NV == 3, "8-lane int8 tiles are 24 columns, 3 ymm, wide");

/* uk_table[mr - 1][nv - 1] */
BGE_UK_TABLE(bge_q8_uk_fn, uk_table, uk, BGE_Q8_UK_DEF, MR)

static void q8_tile24(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                      int32_t *tile) {
    uk_table[mr - 1][(nw + 7) / 8 - 1](q, ldq, Kp, (const int8_t *)panel, tile);
}

/* The grouped microkernel (the qu8s8_gemm slot): ftile[i][8j .. 8j+7] = the fp32 sum over
 * groups of the scheme, before the bias, i < mr, j < nv. Per group of 64 k the plain
 * kernel sums in the 12 ymm accumulators and stores them to itile; then the zero-point
 * term is added in with vpmaddwd
 * (colsum fits in int16, and (-zp) & 0xFFFF in the low half of each int32 lane with 0 in
 * the high half multiplies it exactly: acc + (-zp) colsum, as int32), converted, scaled
 * and added into ftile (L1: the 16 ymm registers are taken), in group order.
 *   scale, zp: row 0 of the tile, row stride ngroups; ws, cs: the panel's column 0 in
 *   group 0, group stride gs; ftile (MR, NR) fp32, 32-byte aligned.                       */
static inline __attribute__((always_inline)) void gukernel(const uint8_t *q, size_t ldq, int Kp,
                                                           const int8_t *panel,
                                                           const float *scale,
                                                           const int32_t *zp, int ngroups,
                                                           const float *ws, const int32_t *cs,
                                                           int gs, float *ftile,
                                                           const bge_q8_uk_fn uk, const int mr,
                                                           const int nv) {
    const int8_t *b = panel;
    int32_t itile[MR * NR] __attribute__((aligned(64)));
    for (int g = 0; g < ngroups; g++) {
        const int k0 = g * BGE_Q8_GROUP;
        const int kn = Kp - k0 < BGE_Q8_GROUP ? Kp - k0 : BGE_Q8_GROUP;
        /* the group's int32 sums: the plain kernel over its kn k, stored to L1; called, not
         * inlined (inlined, GCC keeps itile in registers across the fp32 step below and
         * spills inside the k loop) */
        uk(q + k0, ldq, kn, b, itile);
        b += (size_t)kn * NR;
        const float *wsg = ws + (size_t)g * gs;
        const int32_t *csg = cs + (size_t)g * gs;
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256i nzp = _mm256_set1_epi32((int32_t)(uint16_t)(-zp[(size_t)i * ngroups + g]));
            const __m256 sv = _mm256_set1_ps(scale[(size_t)i * ngroups + g]);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) {
                /* d = acc - zp colsum, exact */
                const __m256i d = _mm256_add_epi32(
                    _mm256_load_si256((const __m256i *)(itile + i * NR + 8 * j)),
                    _mm256_madd_epi16(nzp, _mm256_loadu_si256((const __m256i *)(csg + 8 * j))));
                const __m256 s = _mm256_mul_ps(sv, _mm256_loadu_ps(wsg + 8 * j));
                const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(d), s);
                float *f = ftile + i * NR + 8 * j;
                const __m256 prev = g ? _mm256_load_ps(f) : _mm256_setzero_ps();
                _mm256_store_ps(f, _mm256_add_ps(prev, v));
            }
        }
    }
}

#define GUK(mr, nv)                                                                          \
    static void guk_##mr##_##nv(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,  \
                                const float *scale, const int32_t *zp, int ngroups,          \
                                const float *ws, const int32_t *cs, int gs, float *ftile) {  \
        gukernel(q, ldq, Kp, panel, scale, zp, ngroups, ws, cs, gs, ftile, uk_##mr##_##nv,   \
                 mr, nv);                                                                    \
    }
/* guk_table[mr - 1][nv - 1] */
BGE_UK_TABLE(bge_q8_guk_fn, guk_table, guk, GUK, MR)

static void q8_gtile24(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                       const float *scale, const int32_t *zp, int ngroups, const float *wscale,
                       const int32_t *colsum, int gs, float *ftile) {
    guk_table[mr - 1][(nw + 7) / 8 - 1](q, ldq, Kp, (const int8_t *)panel, scale, zp,
                                        ngroups, wscale, colsum, gs, ftile);
}

#endif
