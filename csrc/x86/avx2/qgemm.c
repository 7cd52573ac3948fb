/*
 * x86/avx2/qgemm.c: the int8 GEMM for AVX2 without VNNI (u8 x s8 -> int32 through vpmaddwd),
 * its fp32 epilogues and packing, the AVX2 activation quantiser and the vpmaddwd peak loop.
 *
 *   out (M, N) = epi(sum_g (q - zp) @ w_s8^T * scale w_scale + bias), per group g of 64 k,
 *   the scheme of bge.h and ref/qgemm.c, bit-identical to the reference except GELU (vector
 *   GELU, 1.5e-7 |v|).
 *
 * Design
 *   - No int16 saturation anywhere. vpmaddubsw (u8 x s8, pairs summed into s16) would
 *     saturate: 2 x 255 x 127 = 64770 > 32767. Instead both operands are widened to s16 and
 *     multiplied with vpmaddwd, which sums each pair into an int32: |q w + q' w'| <= 64770,
 *     exact. The weights stay s8 in memory and are sign-extended as they are loaded
 *     (vpmovsxbw m128: 8 columns x (k, k+1), one instruction per 16 weights, shared by
 *     the tile's 4 rows); the activations per use: 2 bytes of q broadcast (vpbroadcastw)
 *     and zero-extended in lane (vpunpcklbw with 0) give the (q[k], q[k+1]) s16 pair in
 *     every int32 lane.
 *     Why s8 in memory: weights widened at packing (s16) take twice the bytes, more than
 *     the L3 of many CPUs, and twice the weight stream per forward pass; the extra
 *     vpmovsxbw costs less than that on short batches and a little on long ones
 *     (docs/performance.md, bge_qu8s8_gemm on AVX2, with the variants not kept). Weights
 *     in 7 bits would make vpmaddubsw exact (2 x 255 x 63 < 32767) at about half the uops,
 *     but fall below the 0.999 cosine target (bench/int8_scheme_study.py).
 *   - Packing: bge_q8_pack_panels (csrc/pack.c) with nr = 24, kgroup = 2, s8 (layout
 *     AVX2): one k-pair of a panel is 48 bytes = 3 x 16, each 8 columns x (k, k+1).
 *   - Microkernel MR x NR = 4 x 24: 4 x 3 = 12 ymm accumulators, 3 ymm of panel, 1 of q;
 *     each k-pair is 12 vpmaddwd + 12 vpaddd: nearer the vpmaddwd peak (dot_loop) than
 *     4 x 16, 6 x 16 (spills) or the q pair built in scalar registers. 24 divides every
 *     model width. Integer sums are exact, so no order matters; the fp32 ops are the
 *     same for every element, groups in ascending order.
 *   - Groups (bge.h): per group of 64 k the plain kernel sums in the 12 ymm and stores to
 *     an L1 tile; then vpmaddwd adds the zero-point term and the fp32 ops of the scheme add
 *     the group into an fp32 tile in L1, in group order. qu8s8_gemm_i32 runs the plain
 *     kernel over all k at once.
 *   - Tails: mr < 4 and nv < 3 variants; stores through vmaskmovps: nothing outside out.
 *   - Blocking and threads: the shared driver bge_q8_gemm_run (csrc/gemm_driver.c).
 */
#include <immintrin.h>
#include <string.h>

#include "avx2.h"

#include "epilogue24.h"      /* bge_avx2_epilogue_24: bias, GELU, residual */

#define MR 4        /* rows of q per microkernel tile                  */
#define NV 3        /* ymm vectors of 8 columns per panel              */
#define NR (8 * NV) /* panel width in columns                          */

#define SUFFIX "_4x24__avx2" /* MR x NR */
_Static_assert(MR == 4 && NR == 24, "SUFFIX and uk_table follow MR, NR");

/* ---------------------------------------------------------------------------------------
 * Quantiser (AVX2)
 * ------------------------------------------------------------------------------------- */

static inline float hmin8(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* q (32) = clamp(cvtps2dq(x (32) * inv) + zp, 0, 255), as the AVX-512 quantiser's
 * quantize_64: narrowed with saturation to int16, zp added with saturation, narrowed to u8
 * with saturation (the scheme's clamp exactly, zp <= 255), one dword permutation to undo
 * the packs' 128-bit lanes, one 32-byte store (where 8 bytes at a time took two packs and
 * a clamp per 8), which makes the whole quantiser markedly faster. */
static inline void quantize_32(const float *x, __m256 vinv, __m256i vzp16, uint8_t *q) {
    __m256i r[4];
    for (int i = 0; i < 4; i++)
        r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), vinv));
    const __m256i lo = _mm256_adds_epi16(_mm256_packs_epi32(r[0], r[1]), vzp16);
    const __m256i hi = _mm256_adds_epi16(_mm256_packs_epi32(r[2], r[3]), vzp16);
    /* dword 4 L + j of the packed bytes holds r[j][4 L .. 4 L + 3]: it goes to dword 2 j + L */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256((__m256i *)q,
                        _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), order));
}

/* One group: x (n), n <= 64 -> q (n), *scale, *zp, as bge_qu8_quantize__ref, byte for
 * byte: min/max by minps/maxps(x, acc), order-independent (no NaN or -0 enters the
 * accumulators, which start at +0); rounding by cvtps2dq; the last n % 8 elements by the
 * shared scalar code, which does the same float ops.                                    */
static inline void quantize_group(const float *x, int n, uint8_t *q, float *scale, int32_t *zp) {
    __m256 vmn = _mm256_setzero_ps(), vmx = _mm256_setzero_ps();
    const int n8 = n & ~7;
    for (int k = 0; k < n8; k += 8) {
        const __m256 v = _mm256_loadu_ps(x + k);
        vmn = _mm256_min_ps(v, vmn);
        vmx = _mm256_max_ps(v, vmx);
    }
    float mn = hmin8(vmn), mx = hmax8(vmx);
    float inv;
    if (!bge_q8_group_params(x, n8, n, mn, mx, q, scale, &inv, zp)) return;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i vzp = _mm256_set1_epi32(*zp), zero = _mm256_setzero_si256(),
                  top = _mm256_set1_epi32(255), vzp16 = _mm256_set1_epi16((int16_t)*zp);
    const int n32 = n & ~31;
    for (int k = 0; k < n32; k += 32) quantize_32(x + k, vinv, vzp16, q + k);
    for (int k = n32; k < n8; k += 8) {
        __m256i r = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv)),
                                     vzp);
        r = _mm256_min_epi32(_mm256_max_epi32(r, zero), top);
        const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i *)(q + k), _mm_packus_epi16(w, w));
    }
    bge_q8_quantize_span(x + n8, n - n8, inv, *zp, q + n8);
}

/* One row: x (K) -> q (Kp), scale (ngroups), zp (ngroups), group by group. */
static void quantize_row(const float *x, int K, uint8_t *q, float *scale, int32_t *zp) {
    bge_q8_quantize_groups(x, K, q, scale, zp, quantize_group);
}

BGE_Q8_QUANTIZE_SLOT(avx2, quantize_row)

/* ---------------------------------------------------------------------------------------
 * Packing
 * ------------------------------------------------------------------------------------- */

/* Bytes of w_s8 (N, K) packed: header, scales and sums of ceil(N/24)*24 columns per group,
 * then ceil(N/24) panels of Kp x 24 int8. */
static size_t bge_qs8_packed_size__avx2(int K, int N) {
    return bge_q8_panels_size(K, N, NR, 2);
}

/* The layout of csrc/pack.c with nr = 24, kgroup = 2, s8: panel p, k-pair g, column j,
 * element r (int8) at weights[((p * Kp/2 + g) * 24 + j) * 2 + r] = w_s8[24p + j, 2g + r]. */
static int bge_qs8_pack__avx2(const int8_t *w, const float *w_scale, int K, int N,
                              void *packed) {
    return bge_q8_pack_panels(w, w_scale, K, N, packed, BGE_Q8_LAYOUT_AVX2, NR, 2);
}

/* ---------------------------------------------------------------------------------------
 * Microkernel
 * ------------------------------------------------------------------------------------- */

/* The raw microkernel (the qu8s8_gemm_i32 slot): tile[i][8j .. 8j+7] = sum_{k < Kp} q[i, k]
 * * panel column (8j ..), i < mr, j < nv, over every k at once.
 *   q     (mr, Kp) u8 rows, row stride ldq bytes (even)
 *   panel (Kp/2, 24, 2) s8, one packed panel
 *   tile  (MR, NR) int32, 32-byte aligned; rows >= mr and vectors >= nv are not written */
static inline __attribute__((always_inline)) void ukernel(const uint8_t *q, size_t ldq, int Kp,
                                                          const int8_t *panel, int32_t *tile,
                                                          const int mr, const int nv) {
    __m256i acc[MR][NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = _mm256_setzero_si256();
    const __m256i zero = _mm256_setzero_si256();
    const int8_t *b = panel;
    for (int k = 0; k < Kp; k += 2, b += 2 * NR) {
        __m256i bv[NV]; /* 8 columns x (k, k+1), sign-extended to s16 as they are loaded */
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            bv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16 * j)));
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            int16_t a2;
            memcpy(&a2, q + (size_t)i * ldq + k, 2);
            const __m256i a = _mm256_unpacklo_epi8(_mm256_set1_epi16(a2), zero);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++)
                acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(a, bv[j]));
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            _mm256_store_si256((__m256i *)(tile + i * NR + 8 * j), acc[i][j]);
}

/* the tiles of the driver, around ukernel: uk_table, q8_tile24, q8_gtile24 */
#include "q8_tiles24.h"

_Static_assert(NR == BGE_EPI24_NR, "the epilogue's tile is NR wide");
static const bge_q8_gemm_impl impl = {
    .layout = BGE_Q8_LAYOUT_AVX2, .mr = MR, .nr = NR, .kgroup = 2,
    .tile = q8_tile24, .gtile = q8_gtile24, .epilogue = bge_avx2_epilogue_24,
};

/* qu8s8_gemm: out (M, N) = epi(...) from q (M, Kp), scale, zp (M, ngroups) and W packed by
 * bge_qs8_pack__avx2 (bias (N); res (M, N) may equal out); qu8s8_gemm_i32: the raw sums. */
BGE_Q8_GEMM_SLOTS(avx2, impl)

/* ---------------------------------------------------------------------------------------
 * vpmaddwd peak loop
 * ------------------------------------------------------------------------------------- */

#define DOT_CHAINS 12

/* iters rounds of DOT_CHAINS independent ymm chains acc = vpaddd(vpmaddwd(acc, b), c) (16
 * products each; the chain runs through the multiply, so nothing can be hoisted); returns
 * 2 ops per product.                                                                    */
static double bge_qu8s8_dot_loop__avx2(long iters) {
    volatile int32_t seed = 1;
    const int32_t s = seed;
    __m256i acc[DOT_CHAINS];
#pragma GCC unroll 12
    for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm256_set1_epi32(s * i);
    const __m256i b = _mm256_set1_epi32(0x0005FF81 * s), c = _mm256_set1_epi32(0x00030001 * s);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < DOT_CHAINS; i++)
            acc[i] = _mm256_add_epi32(_mm256_madd_epi16(acc[i], b), c);
    }
    __m256i sum = acc[0];
#pragma GCC unroll 12
    for (int i = 1; i < DOT_CHAINS; i++) sum = _mm256_xor_si256(sum, acc[i]);
    seed = _mm256_extract_epi32(sum, 0) ^ _mm256_extract_epi32(sum, 7);
    return 2.0 * 16.0 * DOT_CHAINS * (double)iters;
}

/* ---------------------------------------------------------------------------------------
 * Weight quantisation at load (the qs8_quantize_weights slot)
 * ------------------------------------------------------------------------------------- */

/* One group of n <= 64 weights, as ref/qgemm.c's quantize_weight_group, byte for byte: the
 * max of |w| on the bit patterns (sign cleared), the same scalar scale, then per lane the
 * correctly rounded division, rint by adding and subtracting 1.5 * 2^23 (nearest even),
 * the clamp to [-127, 127] and a saturating narrow (exact: the values are whole in range);
 * the last n % 8 weights by the same float ops, one at a time. 0 on a non-finite value. */
static int qweight_group(const float *w, int n, int8_t *q, float *scale) {
    const int n8 = n & ~7;
    __m256i top8 = _mm256_setzero_si256();
    const __m256i abs = _mm256_set1_epi32(0x7FFFFFFF);
    for (int k = 0; k < n8; k += 8)
        top8 = _mm256_max_epi32(top8, _mm256_and_si256(
                                          _mm256_loadu_si256((const __m256i *)(w + k)), abs));
    __m128i t4 = _mm_max_epi32(_mm256_castsi256_si128(top8), _mm256_extracti128_si256(top8, 1));
    t4 = _mm_max_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
    t4 = _mm_max_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
    if (!bge_q8_weight_group_scale(w, n8, n, _mm_cvtsi128_si32(t4), scale)) return 0;
    const float s = *scale;
    const __m256 vs = _mm256_set1_ps(s), vmagic = _mm256_set1_ps(12582912.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int k = 0; k < n8; k += 8) {
        const __m256 v = _mm256_div_ps(_mm256_loadu_ps(w + k), vs);
        const __m256 r = _mm256_sub_ps(_mm256_add_ps(v, vmagic), vmagic);
        const __m256i i = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
        const __m128i h =
            _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)(q + k), _mm_packs_epi16(h, h));
    }
    for (int k = n8; k < n; k++) q[k] = bge_q8_weight_round(w[k], s);
    return 1;
}

/* w (N, K) -> w_s8 (N, K), w_scale (N, ngroups): bge_qs8_quantize_weights (bge.h), byte for
 * byte; rows split among threads. */
BGE_Q8_QUANTIZE_WEIGHTS_SLOT(avx2, qweight_group)

void bge_overlay_avx2_qgemm(bge_kernels *t) {
    BGE_SET_Q8_QUANTIZERS(t, avx2);
    BGE_SET_Q8_GEMM(t, avx2, SUFFIX);
}
