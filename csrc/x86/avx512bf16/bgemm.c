/*
 * x86/avx512bf16/bgemm.c: the bf16 GEMM on vdpbf16ps (AVX-512 BF16), its activation
 * conversion (vcvtneps2bf16), packing, and the vdpbf16ps peak loop.
 *
 *   out (M, N) = epi(bf16(x) (M, K) @ bf16(W)^T + bias), the scheme of bge.h, bit for bit
 *   the reference (csrc/ref/bgemm.c) except GELU (the AVX-512 vector GELU, 1.5e-7 |v|).
 *
 * Design
 *   - The instruction is the scheme: one lane of vdpbf16ps adds the odd pair member's
 *     product, then the even one's, each rounded once, DAZ and FTZ, whatever MXCSR says
 *     (measured on Zen 4: bge.h). vcvtneps2bf16 is bf16() bit for bit (measured likewise).
 *   - x is converted once per call into the scratch, (M, Kp) bf16 rows (the driver, one
 *     pass over x; the tiles then broadcast one 32-bit pair per row and pair of k).
 *   - Microkernel MR x NR = 8 x 48 on the panels of bge_internal.h (nr = 48: the bytes the
 *     AVX-512 emulation packs too): 8 rows times 3 zmm of 16 columns = 24 accumulators; each
 *     pair of k loads 3 zmm of the panel (192 bytes) and broadcasts 8 pairs of x, for 24
 *     vdpbf16ps (768 products). No k blocking: one chain per output element over all of K.
 *   - Tails as in the fp32 AVX-512 kernel: mr < 8 and nv < 3 variants, masked stores in the
 *     shared epilogue; every variant does the same ops per element.
 *   - Prefetch as in the fp32 AVX-512 kernel: the panel's pair row PF_ROWS ahead into L1,
 *     and a slice of the next panel into L2 spread over the tile's pairs.
 */
#include <immintrin.h>

#include "avx512bf16.h"
#include "../microkernel.h" /* BGE_UK_TABLE */

#include "../avx512/bpack48.h"    /* bge_avx512_bf16_pack48: the same bytes as avx512's */
#include "../avx512/epilogue48.h" /* bge_avx512_epilogue_48: bias, GELU, residual */
#include "convert.h"                /* bge_avx512bf16_convert: x rows to bf16 */

#define MR 8         /* rows of x per tile                          */
#define NV 3         /* zmm of 16 columns per panel                 */
#define NR (16 * NV) /* panel width: bge_internal.h's panels, nr = 48 */
#define PF_ROWS 16   /* pair rows of the panel prefetched ahead (3 KB) */

#define GEMM_NAME "bge_bf16_gemm_8x48__avx512bf16" /* MR x NR */
_Static_assert(NR == BGE_EPI48_NR, "the shared epilogue reads tiles 48 wide");
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

/* One tile: tile[i][16j ..] = the scheme's sums for i < mr, j < nv.
 *   x     (mr, Kp) bf16 rows, ldx elements apart; panel: Kp/2 pair rows of NR words.     */
static inline __attribute__((always_inline)) void ukernel(const uint16_t *x, size_t ldx,
                                                          int Kp, const uint32_t *panel,
                                                          float *tile, const int mr,
                                                          const int nv, const char *pf,
                                                          const int pfs, const int npf) {
    __m512 acc[MR][NV];
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
        __m512bh bv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) bv[j] = (__m512bh)_mm512_loadu_si512(b + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            int32_t pair;
            memcpy(&pair, x + (size_t)i * ldx + 2 * g, sizeof pair);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, bv[j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) _mm512_store_ps(tile + i * NR + 16 * j, acc[i][j]);
}

typedef void (*uk_fn)(const uint16_t *x, size_t ldx, int Kp, const uint32_t *panel,
                      float *tile, const char *pf, int pfs);

#define UK(mr, nv)                                                                          \
    static void uk_##mr##_##nv(const uint16_t *x, size_t ldx, int Kp, const uint32_t *panel,\
                               float *tile, const char *pf, int pfs) {                      \
        BGE_UK_PF_LADDER(4, ukernel, pf, pfs, x, ldx, Kp, panel, tile, mr, nv);               \
    }
BGE_UK_TABLE(uk_fn, uk_table, uk, UK, MR) /* uk_table[mr - 1][nv - 1] */

/* The driver's tile: pf bytes of the next panel spread over the Kp/2 pair rows (the
 * driver's slices are at most a panel, 192 bytes a pair row: pfs <= 193, 4 lines a pair). */
static void tile_bf16(const void *xc, size_t ldx, int Kp, const void *panel, int mr, int nw,
                      float *tile, const char *pf, int bytes) {
    int pfs = 0;
    if (pf) {
        pfs = bytes / (Kp / 2) + 1;
        if (pfs > 256) pfs = 256;
    }
    uk_table[mr - 1][(nw + 15) / 16 - 1]((const uint16_t *)xc, ldx, Kp,
                                         (const uint32_t *)panel, tile, pf, pfs);
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 2,
    .convert = bge_avx512bf16_convert, .tile = tile_bf16, .epilogue = bge_avx512_epilogue_48,
};

/* bf16_packed_size, bf16_gemm_scratch, bf16_gemm: the shared driver on these tiles. */
BGE_BF16_GEMM_SLOTS(avx512bf16, impl)

static int bge_bf16_pack__avx512bf16(const float *w, int K, int N, void *packed) {
    return bge_avx512_bf16_pack48(w, K, N, packed);
}

/* ---------------------------------------------------------------------------------------
 * vdpbf16ps peak loop
 * ------------------------------------------------------------------------------------- */

#define DOT_CHAINS 16

/* iters rounds of DOT_CHAINS independent zmm vdpbf16ps chains; 2 flops per product, 32
 * products per instruction. */
static double bge_bf16_dot_loop__avx512bf16(long iters) {
    volatile float seed = 1.0f;
    const float s = seed;
    __m512 acc[DOT_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm512_set1_ps(s * (float)i);
    const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f * s), _mm512_set1_ps(0.25f * s));
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f * s), _mm512_set1_ps(-1e-3f * s));
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    __m512 sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < DOT_CHAINS; i++) sum = _mm512_add_ps(sum, acc[i]);
    seed = _mm512_reduce_add_ps(sum);
    return 2.0 * 32.0 * DOT_CHAINS * (double)iters;
}

void bge_overlay_avx512bf16_bgemm(bge_kernels *t) {
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__avx512bf16);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__avx512bf16, "bge_bf16_pack_48__avx512bf16");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__avx512bf16);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__avx512bf16, GEMM_NAME);
    BGE_SET(t, bf16_dot_loop, bge_bf16_dot_loop__avx512bf16);
}
