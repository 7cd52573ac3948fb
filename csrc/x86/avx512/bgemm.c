/*
 * x86/avx512/bgemm.c: the bf16 GEMM for AVX-512 F without BF16 instructions: the scheme of
 * bge.h emulated, bf16 widened to fp32 by a shift and summed with FMA, bit for bit the
 * reference (csrc/ref/bgemm.c) except GELU (the AVX-512 vector GELU, 1.5e-7 |v|).
 *
 * Design
 *   - Why it is exact: the product of two bf16 has at most 16 significant bits, so an fp32
 *     FMA of the widened values adds the exact product with one rounding, which is the
 *     scheme's step; vdpbf16ps's flush of a denormal result comes from MXCSR.FTZ, set for
 *     the tile's k loop (and DAZ, though no input is ever denormal: bf16() flushes them).
 *     Each element's chain runs the odd k of each pair, then the even k, as the
 *     instruction does. Measured on Zen 4: fma under FTZ|DAZ equals ftz(fma) on 32 million
 *     lanes of tiny and cancelling inputs (docs/design/bf16.md).
 *   - x is converted once per call into the scratch as fp32 rows holding bf16 values (the
 *     low 16 bits zero), (M, Kp) floats: the tiles broadcast them as the fp32 kernel does,
 *     with no widening per row.
 *   - Weights: the same panels as the AVX512-BF16 level (nr = 48, bge_internal.h): half the
 *     bytes of fp32. Per pair of k the tile loads 3 zmm of words, widens each into its odd
 *     (and 0xFFFF0000) and even (shift left 16) halves, and runs 8 rows x 3 x 2 FMAs.
 *   - Tiles, tails, prefetch and threads as the fp32 AVX-512 kernel (gemm.c).
 */
#include <immintrin.h>

#include "avx512.h"
#include "../microkernel.h" /* BGE_UK_TABLE */

#include "bpack48.h"     /* bge_avx512_bf16_round, bge_avx512_bf16_pack48 */
#include "epilogue48.h" /* bge_avx512_epilogue_48 */

#define MR 8
#define NV 3
#define NR (16 * NV)
#define PF_ROWS 16
#define CSR_FTZ_DAZ 0x8040u /* MXCSR bits 15 (flush to zero) and 6 (denormals are zero) */

#define GEMM_NAME "bge_bf16_gemm_8x48__avx512" /* MR x NR */
_Static_assert(NR == BGE_EPI48_NR, "the shared epilogue reads tiles 48 wide");
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

/* x (K) fp32 -> xc (Kp) fp32 holding bf16(x[k]); a zero at k = K when K is odd. */
static void convert_widened(const float *x, int K, void *xc) {
    float *o = (float *)xc;
    int k = 0;
    for (; k + 16 <= K; k += 16)
        _mm512_storeu_si512(o + k, bge_avx512_bf16_round(_mm512_loadu_si512(x + k)));
    if (k < K) {
        const __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        const __m512i v = bge_avx512_bf16_round(_mm512_maskz_loadu_epi32(m, x + k));
        _mm512_mask_storeu_epi32(o + k, m, v);
    }
    if (K & 1) o[K] = 0.0f;
}

static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int Kp,
                                                          const uint32_t *panel, float *tile,
                                                          const int mr, const int nv,
                                                          const char *pf, const int pfs,
                                                          const int npf) {
    __m512 acc[MR][NV];
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = _mm512_setzero_ps();
    const uint32_t *b = panel;
    for (int g = 0; g < Kp / 2; g++, b += NR) {
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++)
            _mm_prefetch((const char *)(b + PF_ROWS * NR + 16 * j), _MM_HINT_T0);
        if (npf) {
#pragma GCC unroll 4
            for (int l = 0; l < npf; l++) _mm_prefetch(pf + l * (pfs / npf), _MM_HINT_T1);
            pf += pfs;
        }
        /* the odd k of the pair for every element, then the even k (the instruction's
         * order); in two halves so that the widened vectors, one broadcast and the 24
         * sums stay in registers */
        __m512 wv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            wv[j] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(b + 16 * j), hi));
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512 xo = _mm512_set1_ps(x[(size_t)i * ldx + 2 * g + 1]);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(xo, wv[j], acc[i][j]);
        }
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            wv[j] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(b + 16 * j), 16));
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512 xe = _mm512_set1_ps(x[(size_t)i * ldx + 2 * g]);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(xe, wv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) _mm512_store_ps(tile + i * NR + 16 * j, acc[i][j]);
}

typedef void (*uk_fn)(const float *x, size_t ldx, int Kp, const uint32_t *panel, float *tile,
                      const char *pf, int pfs);

/* noinline: the k loop stays inside one call, between the MXCSR writes of tile_emu (the
 * compiler does not order arithmetic after an ldmxcsr by itself) */
#define UK(mr, nv)                                                                          \
    static __attribute__((noinline)) void uk_##mr##_##nv(const float *x, size_t ldx, int Kp,\
                                                         const uint32_t *panel, float *tile,\
                                                         const char *pf, int pfs) {         \
        BGE_UK_PF_LADDER(4, ukernel, pf, pfs, x, ldx, Kp, panel, tile, mr, nv);               \
    }
BGE_UK_TABLE(uk_fn, uk_table, uk, UK, MR) /* uk_table[mr - 1][nv - 1] */

static void tile_emu(const void *xc, size_t ldx, int Kp, const void *panel, int mr, int nw,
                     float *tile, const char *pf, int bytes) {
    int pfs = 0;
    if (pf) {
        pfs = bytes / (Kp / 2) + 1;
        if (pfs > 256) pfs = 256;
    }
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | CSR_FTZ_DAZ);
    uk_table[mr - 1][(nw + 15) / 16 - 1]((const float *)xc, ldx, Kp, (const uint32_t *)panel,
                                         tile, pf, pfs);
    _mm_setcsr(csr);
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 4,
    .convert = convert_widened, .tile = tile_emu, .epilogue = bge_avx512_epilogue_48,
};

/* bf16_packed_size, bf16_gemm_scratch, bf16_gemm: the shared driver on these tiles. */
BGE_BF16_GEMM_SLOTS(avx512, impl)

static int bge_bf16_pack__avx512(const float *w, int K, int N, void *packed) {
    return bge_avx512_bf16_pack48(w, K, N, packed);
}

void bge_overlay_avx512_bgemm(bge_kernels *t) {
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__avx512);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__avx512, "bge_bf16_pack_48__avx512");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__avx512);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__avx512, GEMM_NAME);
    /* bf16_dot_loop stays the reference's: this level's step is one FMA per product, so
     * its peak is f32_fma_loop's */
}
