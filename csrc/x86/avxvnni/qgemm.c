/*
 * x86/avxvnni/qgemm.c: the int8 GEMM for AVX-VNNI (u8 x s8 -> int32, VEX vpdpbusd on ymm,
 * e.g. Alder Lake, Zen 5 client) with its fp32 epilogues and packing, and the peak loop.
 *
 *   out (M, N) = epi(sum_g (q - zp) @ w_s8^T * scale w_scale + bias), per group g of 64 k,
 *   the scheme of bge.h and
 *   ref/qgemm.c, bit-identical to the reference except GELU (vector GELU, 1.5e-7 |v|).
 *
 * Design
 *   - Packing: bge_q8_pack_panels (ref/qgemm.c) with nr = 24, kgroup = 4, s8 (layout
 *     AVXVNNI): one k-quad of a panel is 96 bytes = 3 ymm, each 8 columns x 4 consecutive k.
 *   - Microkernel MR x NR = 4 x 24: 4 x 3 = 12 ymm accumulators, 3 ymm of panel and 1
 *     broadcast of 4 bytes of q: all 16 ymm registers; 12 vpdpbusd per k-quad for 7 loads.
 *     24 divides every model width (384, 1152, 1536).
 *   - Integer sums are exact; the fp32 ops are the same for every element, groups in
 *     ascending order (bge.h). Per group of 64 k the plain kernel sums in the 12 ymm and
 *     stores to an L1 tile; then vpmaddwd adds the zero-point term and the fp32 ops add the
 *     group into an fp32 tile in L1. qu8s8_gemm_i32 runs the plain kernel over all k.
 *   - Tails: mr < 4 and nv < 3 variants; stores through vmaskmovps: nothing outside out.
 *   - Blocking and threads: the shared driver bge_q8_gemm_run (ref/qgemm.c).
 *   - The quantiser is not overridden: the table keeps the AVX2 one (same bytes anyway).
 */
#include <immintrin.h>
#include <string.h>

#include "avxvnni.h"

#include "../avx2/vmath.h" /* bge_avx2_gelu_ps: GELU (erf), bound 1.5e-7 |x| there */

#define MR 4        /* rows of q per microkernel tile                  */
#define NV 3        /* ymm vectors of 8 columns per panel              */
#define NR (8 * NV) /* panel width in columns                          */

#define SUFFIX "_4x24__avxvnni" /* MR x NR */
_Static_assert(MR == 4 && NR == 24, "SUFFIX and uk_table follow MR, NR");

/* Bytes of w_s8 (N, K) packed: header, scales and sums of ceil(N/24)*24 columns per group,
 * then ceil(N/24) panels of Kp x 24 bytes. */
static size_t bge_qs8_packed_size__avxvnni(int K, int N) {
    return bge_q8_panels_size(K, N, NR, 4);
}

/* The layout of ref/qgemm.c with nr = 24, kgroup = 4, s8: panel p, k-quad g, column j,
 * byte r at weights[((p * Kp/4 + g) * 24 + j) * 4 + r] = w_s8[24p + j, 4g + r].          */
static int bge_qs8_pack__avxvnni(const int8_t *w, const float *w_scale, int K, int N,
                                 void *packed) {
    return bge_q8_pack_panels(w, w_scale, K, N, packed, BGE_Q8_LAYOUT_AVXVNNI, NR, 4);
}

/* The raw microkernel (the qu8s8_gemm_i32 slot): tile[i][8j .. 8j+7] = sum_{k < Kp} q[i, k]
 * * panel column (8j ..), i < mr, j < nv, over every k at once.
 *   q     (mr, Kp) u8 rows, row stride ldq bytes (a multiple of 4)
 *   panel (Kp/4, 24, 4) s8, one packed panel
 *   tile  (MR, NR) int32, 32-byte aligned; rows >= mr and vectors >= nv are not written */
static inline __attribute__((always_inline)) void ukernel(const uint8_t *q, size_t ldq, int Kp,
                                                          const int8_t *panel, int32_t *tile,
                                                          const int mr, const int nv) {
    __m256i acc[MR][NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = _mm256_setzero_si256();
    const int8_t *b = panel;
    for (int k = 0; k < Kp; k += 4, b += 4 * NR) {
        __m256i bv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) bv[j] = _mm256_loadu_si256((const __m256i *)(b + 32 * j));
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            int32_t a4;
            memcpy(&a4, q + (size_t)i * ldq + k, 4);
            const __m256i a = _mm256_set1_epi32(a4);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++)
                acc[i][j] = _mm256_dpbusd_avx_epi32(acc[i][j], a, bv[j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            _mm256_store_si256((__m256i *)(tile + i * NR + 8 * j), acc[i][j]);
}

typedef void (*uk_fn)(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,
                      int32_t *tile);

#define UK(mr, nv)                                                                          \
    static __attribute__((noinline)) void uk_##mr##_##nv(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,   \
                               int32_t *tile) {                                             \
        ukernel(q, ldq, Kp, panel, tile, mr, nv);                                           \
    }
#define UK_MR(mr) UK(mr, 1) UK(mr, 2) UK(mr, 3)
UK_MR(1) UK_MR(2) UK_MR(3) UK_MR(4)
#define UK_ROW(mr) {uk_##mr##_1, uk_##mr##_2, uk_##mr##_3}
/* uk_table[mr - 1][nv - 1] */
static const uk_fn uk_table[MR][NV] = {UK_ROW(1), UK_ROW(2), UK_ROW(3), UK_ROW(4)};

static void tile_avxvnni(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr,
                         int nw, int32_t *tile) {
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
                                                           int gs, float *ftile, const uk_fn uk,
                                                           const int mr, const int nv) {
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

typedef void (*guk_fn)(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,
                       const float *scale, const int32_t *zp, int ngroups, const float *ws,
                       const int32_t *cs, int gs, float *ftile);

#define GUK(mr, nv)                                                                          \
    static void guk_##mr##_##nv(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,  \
                                const float *scale, const int32_t *zp, int ngroups,          \
                                const float *ws, const int32_t *cs, int gs, float *ftile) {  \
        gukernel(q, ldq, Kp, panel, scale, zp, ngroups, ws, cs, gs, ftile, uk_##mr##_##nv,   \
                 mr, nv);                                                                    \
    }
#define GUK_MR(mr) GUK(mr, 1) GUK(mr, 2) GUK(mr, 3)
GUK_MR(1) GUK_MR(2) GUK_MR(3) GUK_MR(4)
#define GUK_ROW(mr) {guk_##mr##_1, guk_##mr##_2, guk_##mr##_3}
/* guk_table[mr - 1][nv - 1] */
static const guk_fn guk_table[MR][NV] = {GUK_ROW(1), GUK_ROW(2), GUK_ROW(3), GUK_ROW(4)};

static void gtile_avxvnni(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                       const float *scale, const int32_t *zp, int ngroups, const float *wscale,
                       const int32_t *colsum, int gs, float *ftile) {
    guk_table[mr - 1][(nw + 7) / 8 - 1](q, ldq, Kp, (const int8_t *)panel, scale, zp,
                                        ngroups, wscale, colsum, gs, ftile);
}

/* ---------------------------------------------------------------------------------------
 * Epilogue: the same ops on every lane of every tile (bge.h), stores masked to nw columns.
 * ------------------------------------------------------------------------------------- */

static void epilogue_avxvnni(const float *ftile, int mr, int nw, const float *bias,
                          const float *res, float *out, size_t ldo, int epilogue) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < nw; j += 8) {
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nw - j), lanes);
        const __m256 bv = _mm256_maskload_ps(bias + j, mask);
        for (int i = 0; i < mr; i++) {
            __m256 v = _mm256_add_ps(_mm256_load_ps(ftile + i * NR + j), bv);
            if (epilogue == BGE_EPI_BIAS_GELU)
                v = bge_avx2_gelu_ps(v);
            else if (epilogue == BGE_EPI_BIAS_RESIDUAL)
                v = _mm256_add_ps(v, _mm256_maskload_ps(res + i * ldo + j, mask));
            _mm256_maskstore_ps(out + i * ldo + j, mask, v);
        }
    }
}

static const bge_q8_gemm_impl impl = {
    .layout = BGE_Q8_LAYOUT_AVXVNNI, .mr = MR, .nr = NR, .kgroup = 4,
    .tile = tile_avxvnni, .gtile = gtile_avxvnni, .epilogue = epilogue_avxvnni,
};

/* out (M, N) = epi(...) from q (M, Kp), scale, zp (M, ngroups) and W packed by
 * bge_qs8_pack__avxvnni; bias (N); res (M, N) may equal out.                              */
static int bge_qu8s8_gemm__avxvnni(const uint8_t *q, const float *scale, const int32_t *zp,
                                   int M, int K, int N, const void *packed, const float *bias,
                                   const float *res, float *out, int epilogue, int nthreads) {
    return bge_q8_gemm_run(&impl, q, scale, zp, M, K, N, packed, bias, res, out, NULL,
                           epilogue, nthreads);
}

/* acc (M, N) int32 = q (M, Kp) @ w_s8^T, W packed by bge_qs8_pack__avxvnni.               */
static int bge_qu8s8_gemm_i32__avxvnni(const uint8_t *q, int M, int K, int N,
                                       const void *packed, int32_t *acc, int nthreads) {
    if (!acc) return BGE_ERR_ARG;
    return bge_q8_gemm_run(&impl, q, NULL, NULL, M, K, N, packed, NULL, NULL, NULL, acc,
                           BGE_EPI_BIAS, nthreads);
}

#define DOT_CHAINS 12

/* iters rounds of DOT_CHAINS independent ymm vpdpbusd chains (32 u8 x s8 products each);
 * returns 2 ops per product.                                                            */
static double bge_qu8s8_dot_loop__avxvnni(long iters) {
    volatile int32_t seed = 1;
    const int32_t s = seed;
    __m256i acc[DOT_CHAINS];
#pragma GCC unroll 12
    for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm256_set1_epi32(s * i);
    const __m256i a = _mm256_set1_epi32(0x01020304 * s), b = _mm256_set1_epi32(0x05F70611 * s);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], a, b);
    }
    __m256i sum = acc[0];
#pragma GCC unroll 12
    for (int i = 1; i < DOT_CHAINS; i++) sum = _mm256_xor_si256(sum, acc[i]);
    seed = _mm256_extract_epi32(sum, 0) ^ _mm256_extract_epi32(sum, 7);
    return 2.0 * 32.0 * DOT_CHAINS * (double)iters;
}

void bge_overlay_avxvnni_qgemm(bge_kernels *t) {
    BGE_SET(t, qs8_packed_size, bge_qs8_packed_size__avxvnni);
    BGE_SET_NAMED(t, qs8_pack, bge_qs8_pack__avxvnni, "bge_qs8_pack" SUFFIX);
    BGE_SET_NAMED(t, qu8s8_gemm, bge_qu8s8_gemm__avxvnni, "bge_qu8s8_gemm" SUFFIX);
    BGE_SET_NAMED(t, qu8s8_gemm_i32, bge_qu8s8_gemm_i32__avxvnni, "bge_qu8s8_gemm_i32" SUFFIX);
    BGE_SET(t, qu8s8_dot_loop, bge_qu8s8_dot_loop__avxvnni);
}
