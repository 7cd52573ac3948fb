/*
 * x86/avxvnni/qgemm.c: the int8 GEMM for AVX-VNNI (u8 x s8 -> int32, VEX vpdpbusd on ymm,
 * e.g. Alder Lake, Zen 5 client) with its fp32 epilogues and packing, and the peak loop.
 *
 *   out (M, N) = epi(sum_g (q - zp) @ w_s8^T * scale w_scale + bias), per group g of 64 k,
 *   the scheme of bge.h and
 *   ref/qgemm.c, bit-identical to the reference except GELU (vector GELU, 1.5e-7 |v|).
 *
 * Design
 *   - Packing: bge_q8_pack_panels (csrc/pack.c) with nr = 24, kgroup = 4, s8 (layout
 *     AVXVNNI): one k-quad of a panel is 96 bytes = 3 ymm, each 8 columns x 4 consecutive k.
 *   - Microkernel MR x NR = 4 x 24: 4 x 3 = 12 ymm accumulators, 3 ymm of panel and 1
 *     broadcast of 4 bytes of q: all 16 ymm registers; 12 vpdpbusd per k-quad for 7 loads.
 *     24 divides every model width (384, 1152, 1536).
 *   - Integer sums are exact; the fp32 ops are the same for every element, groups in
 *     ascending order (bge.h). Per group of 64 k the plain kernel sums in the 12 ymm and
 *     stores to an L1 tile; then vpmaddwd adds the zero-point term and the fp32 ops add the
 *     group into an fp32 tile in L1. qu8s8_gemm_i32 runs the plain kernel over all k.
 *   - Tails: mr < 4 and nv < 3 variants; stores through vmaskmovps: nothing outside out.
 *   - Blocking and threads: the shared driver bge_q8_gemm_run (csrc/gemm_driver.c).
 *   - The quantiser is not overridden: the table keeps the AVX2 one (same bytes anyway).
 */
#include <immintrin.h>
#include <string.h>

#include "avxvnni.h"

#include "../avx2/epilogue24.h" /* bge_avx2_epilogue_24: bias, GELU, residual */

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

/* The layout of csrc/pack.c with nr = 24, kgroup = 4, s8: panel p, k-quad g, column j,
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

/* the tiles of the driver, around ukernel: uk_table, q8_tile24, q8_gtile24 */
#include "../avx2/q8_tiles24.h"

_Static_assert(NR == BGE_EPI24_NR, "the epilogue's tile is NR wide");
static const bge_q8_gemm_impl impl = {
    .layout = BGE_Q8_LAYOUT_AVXVNNI, .mr = MR, .nr = NR, .kgroup = 4,
    .tile = q8_tile24, .gtile = q8_gtile24, .epilogue = bge_avx2_epilogue_24,
};

/* qu8s8_gemm: out (M, N) = epi(...) from q (M, Kp), scale, zp (M, ngroups) and W packed by
 * bge_qs8_pack__avxvnni (bias (N); res (M, N) may equal out); qu8s8_gemm_i32: the raw sums. */
BGE_Q8_GEMM_SLOTS(avxvnni, impl)

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
    BGE_SET_Q8_GEMM(t, avxvnni, SUFFIX);
}
