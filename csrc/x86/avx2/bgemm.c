/*
 * x86/avx2/bgemm.c: the bf16 GEMM for AVX2 + FMA: the scheme of bge.h emulated, bf16
 * widened to fp32 by a shift and summed with FMA under MXCSR.FTZ, bit for bit the reference
 * (csrc/ref/bgemm.c) except GELU (the AVX2 vector GELU of vmath.h). Why that is exact: the
 * AVX-512 emulation (../avx512/bgemm.c) says.
 *
 * Design
 *   - x converted once per call into the scratch as fp32 rows holding bf16 values, (M, Kp)
 *     floats; weights in the panels of bge_internal.h with nr = 24 (half the bytes of fp32).
 *   - Microkernel MR x NR = 3 x 24 (the fp32 AVX2 kernel's panels, one row fewer): 9 ymm
 *     accumulators; per pair of k, the odd halves of the panel's 3 x 8 words widened (two
 *     shifts each), 3 rows x 3 FMAs, then the even halves likewise. With 4 rows (12 sums,
 *     3 widened vectors, a broadcast: all 16 ymm) gcc 12 kept 3 sums on the stack, whose
 *     chains then ran through memory, well below the speed of this tile.
 *   - Tails, prefetch of the next panel and threads as the fp32 AVX2 kernel (gemm.c).
 */
#include <immintrin.h>

#include "avx2.h"
#include "../microkernel.h" /* BGE_UK_TABLE */

#include "epilogue24.h" /* bge_avx2_epilogue_24 */

#define MR 3
#define NV 3
#define NR (8 * NV)
#define CSR_FTZ_DAZ 0x8040u /* MXCSR bits 15 (flush to zero) and 6 (denormals are zero) */

#define GEMM_NAME "bge_bf16_gemm_3x24__avx2" /* MR x NR */
_Static_assert(NR == BGE_EPI24_NR, "the epilogue reads tiles 24 wide");
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

/* bf16(v) on 8 lanes, as bge_bf16_bits, left in the top half of each lane. */
static inline __m256i bf16_round8(__m256i u) {
    const __m256i expo = _mm256_set1_epi32(0x7F800000), sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i absm = _mm256_set1_epi32(0x7FFFFFFF), hi = _mm256_set1_epi32((int)0xFFFF0000u);
    const __m256i den = _mm256_cmpeq_epi32(_mm256_and_si256(u, expo), _mm256_setzero_si256());
    u = _mm256_blendv_epi8(u, _mm256_and_si256(u, sign), den);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), expo); /* both >= 0 */
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd);
    const __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
    return _mm256_and_si256(_mm256_blendv_epi8(r, q, nan), hi);
}

/* x (K) fp32 -> xc (Kp) fp32 holding bf16(x[k]); a zero at k = K when K is odd. */
static void convert_widened(const float *x, int K, void *xc) {
    float *o = (float *)xc;
    int k = 0;
    for (; k + 8 <= K; k += 8)
        _mm256_storeu_si256((__m256i *)(o + k),
                            bf16_round8(_mm256_loadu_si256((const __m256i *)(x + k))));
    for (; k < K; k++) {
        uint32_t u;
        memcpy(&u, x + k, sizeof u);
        o[k] = bge_bf16_to_f32(bge_bf16_bits(u));
    }
    if (K & 1) o[K] = 0.0f;
}

static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int Kp,
                                                          const uint32_t *panel, float *tile,
                                                          const int mr, const int nv,
                                                          const char *pf, const int pfs,
                                                          const int npf) {
    __m256 acc[MR][NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = _mm256_setzero_ps();
    const uint32_t *b = panel;
    for (int g = 0; g < Kp / 2; g++, b += NR) {
        if (npf) {
#pragma GCC unroll 2
            for (int l = 0; l < npf; l++) _mm_prefetch(pf + l * (pfs / npf), _MM_HINT_T1);
            pf += pfs;
        }
        /* the odd k of the pair for every element, then the even k (the instruction's
         * order), in two halves: fewer live registers than widening both at once */
        __m256 wv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            wv[j] = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_srli_epi32(_mm256_loadu_si256((const __m256i *)(b + 8 * j)), 16), 16));
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256 xo = _mm256_broadcast_ss(x + (size_t)i * ldx + 2 * g + 1);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(xo, wv[j], acc[i][j]);
        }
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            wv[j] = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(b + 8 * j)), 16));
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256 xe = _mm256_broadcast_ss(x + (size_t)i * ldx + 2 * g);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(xe, wv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) _mm256_store_ps(tile + i * NR + 8 * j, acc[i][j]);
}

typedef void (*uk_fn)(const float *x, size_t ldx, int Kp, const uint32_t *panel, float *tile,
                      const char *pf, int pfs);

/* noinline: the k loop stays inside one call, between tile_emu's MXCSR writes */
#define UK(mr, nv)                                                                          \
    static __attribute__((noinline)) void uk_##mr##_##nv(const float *x, size_t ldx, int Kp,\
                                                         const uint32_t *panel, float *tile,\
                                                         const char *pf, int pfs) {         \
        BGE_UK_PF_LADDER(2, ukernel, pf, pfs, x, ldx, Kp, panel, tile, mr, nv);               \
    }
BGE_UK_TABLE(uk_fn, uk_table, uk, UK, MR) /* uk_table[mr - 1][nv - 1] */

static void tile_emu(const void *xc, size_t ldx, int Kp, const void *panel, int mr, int nw,
                     float *tile, const char *pf, int bytes) {
    int pfs = 0;
    if (pf) {
        pfs = bytes / (Kp / 2) + 1; /* slices of at most a panel: 96 bytes a pair row */
        if (pfs > 128) pfs = 128;
    }
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | CSR_FTZ_DAZ);
    uk_table[mr - 1][(nw + 7) / 8 - 1]((const float *)xc, ldx, Kp, (const uint32_t *)panel,
                                       tile, pf, pfs);
    _mm_setcsr(csr);
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 4,
    .convert = convert_widened, .tile = tile_emu, .epilogue = bge_avx2_epilogue_24,
};

/* bf16_packed_size, bf16_gemm_scratch, bf16_gemm: the shared driver on these tiles. */
BGE_BF16_GEMM_SLOTS(avx2, impl)

static int bge_bf16_pack__avx2(const float *w, int K, int N, void *packed) {
    return bge_bf16_pack_panels(w, K, N, NR, packed);
}

void bge_overlay_avx2_bgemm(bge_kernels *t) {
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__avx2);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__avx2, "bge_bf16_pack_24__avx2");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__avx2);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__avx2, GEMM_NAME);
    /* bf16_dot_loop stays the reference's: this level's step is one FMA per product, so
     * its peak is f32_fma_loop's */
}
