/*
 * x86/avx512/gemm.c: the fp32 GEMM with fused epilogues for AVX-512 F (+ FMA), its packing,
 * and the FMA peak loop of the level.
 *
 *   out (M, N) = epilogue(x (M, K) @ W^T + bias (N)),  W (N, K) packed by bge_f32_pack below.
 *
 * Design
 *   - Microkernel MR x NR = 8 x 48: 8 rows of x times one packed panel of 48 columns, held
 *     in 8 x 3 = 24 zmm accumulators. Each k step loads 3 zmm of the panel and broadcasts 8
 *     floats of x: 24 FMAs for 11 loads, so the FMA pipes stay the bottleneck (Zen 4 runs
 *     one 512-bit FMA per cycle as two 256-bit halves; Intel server parts two), and 24
 *     independent chains cover the 4-cycle FMA latency: it runs near the FMA peak on the
 *     model shapes. 48 divides every model width (384, 1152, 1536), and MR = 8 keeps the
 *     waste small for short batches.
 *   - Tails: rows past the last full tile run an mr < 8 variant, the last panel runs only the
 *     zmm columns it has (nv < 3); the epilogue stores with a lane mask, so no byte outside
 *     out (M, N) is touched. Every variant computes each element the same way.
 *   - No K blocking: a tile's accumulators stay in registers over the whole K, so each out
 *     element is ONE chain acc = fma(x[m,k], w[n,k], acc), k = 0 .. K-1 ascending, from 0.0f,
 *     followed by the epilogue. Nothing depends on M, the tile, the tail path or nthreads:
 *     results are bit-identical for a row alone or in any batch, with 1 thread or many.
 *   - Cache blocking: rows are taken in blocks of MC (MC x K floats of x stay in L2, about
 *     384 KB); within a block the loop runs panel by panel, so one panel (K x 48 floats) is
 *     reused from L1/L2 by every MR-row tile of the block.
 *   - Threads take rectangles of the (row tiles) x (panels) grid, never a slice of K.
 *   - Prefetch, two kinds, for few rows, where the weights stream from L3 or memory (85 MB
 *     for the 12 layers, nothing reused between calls):
 *       inside the panel: each k step asks for the panel's k row PF_ROWS = 16 rows (3 KB)
 *       ahead into L1. A k step of 24 FMAs leaves the core too few k rows of loads in
 *       flight to cover the latency, and the hardware prefetchers did not make up for it;
 *       the next panel (tile_pf, as the AVX2 level): each tile of a panel prefetches an
 *       equal slice of the panel its thread reads next into L2, so the tiles after the
 *       first (which read the panel from L2) also keep memory busy.
 *     Each pays at few rows and is neutral from 128 (docs/performance.md); 8 or 32 rows
 *     ahead do as well as 16.
 */
#include <immintrin.h>

#include "avx512.h"

#include "../microkernel.h" /* BGE_UK_TABLE */
#include "transpose16.h" /* bge_avx512_transpose16 */

#include "epilogue48.h" /* bge_avx512_epilogue_48: the one code path every tile goes
                           * through (the vector GELU of vmath.h on every lane) */

#define MR 8                /* rows of x per microkernel tile                     */
#define NV 3                /* zmm vectors of 16 columns per panel                */
#define NR (16 * NV)        /* panel width in columns (floats)                    */
#define PF_ROWS 16          /* k rows of the panel prefetched ahead (3 KB)        */

#define TILE "_8x48__avx512" /* MR x NR, in the GEMM's name */
_Static_assert(MR == 8 && NR == 48, "TILE, the pack comment and uk_table follow MR, NR");
_Static_assert(NR == BGE_EPI48_NR, "the shared epilogue reads tiles 48 wide");

/* ---------------------------------------------------------------------------------------
 * Packing
 * ------------------------------------------------------------------------------------- */

/* Floats of the packed W (N, K): ceil(N / NR) panels of K x NR floats. 0 on bad sizes. */
static size_t bge_f32_packed_size__avx512(int K, int N) {
    if (K < 1 || N < 1) return 0;
    const size_t panels = ((size_t)N + NR - 1) / NR;
    return panels * (size_t)K * NR;
}

/* Packs W for bge_f32_gemm_8x48__avx512.
 *   w      (N, K) row-major: a torch Linear weight (out_features, in_features)
 *   packed (packed_size(K, N)) floats, written whole, laid out as
 *            panel p = 0 .. ceil(N/48)-1 covers columns n = 48p .. 48p+47;
 *            panel p starts at float p*K*48; inside it, k = 0 .. K-1 ascending, each k holds
 *            48 consecutive floats w[48p + j, k] for j = 0 .. 47;
 *            i.e. packed[(p*K + k)*48 + j] = w[(48p + j)*K + k], and 0.0f where 48p + j >= N.
 *          Total ceil(N/48) * K * 48 floats. No alignment is required of `packed` (the
 *          kernel uses unaligned loads); each k row of a panel is 192 bytes, so a 64-byte
 *          aligned buffer keeps every load aligned.                                      */
static int bge_f32_pack__avx512(const float *w, int K, int N, float *packed) {
    if (!w || !packed || K < 1 || N < 1) return BGE_ERR_ARG;
    /* Blocks of 16 columns x 16 k: 16 row pieces of w loaded (masked past K, zero past N),
     * transposed in registers, stored as 16 k rows of the panel's 16 columns. The same bytes
     * as bge_f32_pack_panels, near a memcpy of the same bytes where that scalar copy took
     * about twice as long; packing is most of the fp32 load. */
    const int panels = (N + NR - 1) / NR;
    for (int p = 0; p < panels; p++) {
        float *dst = packed + (size_t)p * K * NR;
        for (int j0 = 0; j0 < NR; j0 += 16) {
            const int n0 = p * NR + j0;
            const int nj = N - n0 < 0 ? 0 : (N - n0 < 16 ? N - n0 : 16); /* rows of w here */
            for (int k0 = 0; k0 < K; k0 += 16) {
                const int kc = K - k0 < 16 ? K - k0 : 16;
                const __mmask16 m = (__mmask16)((1u << kc) - 1u);
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < nj ? _mm512_maskz_loadu_ps(m, w + (size_t)(n0 + i) * K + k0)
                                  : _mm512_setzero_ps();
                bge_avx512_transpose16(r);
                for (int kk = 0; kk < kc; kk++)
                    _mm512_storeu_ps(dst + (size_t)(k0 + kk) * NR + j0, r[kk]);
            }
        }
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Microkernel
 * ------------------------------------------------------------------------------------- */

/* One tile: tile[i][16*j .. 16*j+15] = sum_k x[i, k] * panel[k, 16*j ..] for i < mr, j < nv.
 *   x     (mr, K) rows of x, row stride ldx floats
 *   panel (K, NR) one packed panel
 *   tile  (MR, NR) floats, 64-byte aligned; rows >= mr and vectors >= nv are not written
 * mr and nv are compile-time constants in every instance (see UK below).               */
static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int K,
                                                          const float *panel, float *tile,
                                                          const int mr, const int nv,
                                                          const char *pf, const int pfs,
                                                          const int npf) {
    __m512 acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = _mm512_setzero_ps();
    const float *b = panel;
    for (int k = 0; k < K; k++, b += NR) {
        /* the panel's k row PF_ROWS ahead into L1 (past the panel's end: the next one's
         * start, or nothing; a prefetch never faults) */
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++)
            _mm_prefetch((const char *)(b + PF_ROWS * NR + 16 * j), _MM_HINT_T0);
        if (npf) { /* npf lines of the next panel's slice, pfs bytes on per k */
#pragma GCC unroll 4
            for (int l = 0; l < npf; l++) _mm_prefetch(pf + l * (pfs / npf), _MM_HINT_T1);
            pf += pfs;
        }
        __m512 bv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) bv[j] = _mm512_loadu_ps(b + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + k]);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(a, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) _mm512_store_ps(tile + i * NR + 16 * j, acc[i][j]);
}

/* pf, pfs: prefetch from pf on, pfs bytes further each k (pfs = 0: no prefetch), with
 * ceil(pfs / 64) lines a k, at most 4, so every line of the slice is touched. */
typedef void (*uk_fn)(const float *x, size_t ldx, int K, const float *panel, float *tile,
                      const char *pf, int pfs);

#define UK(mr, nv)                                                                          \
    static void uk_##mr##_##nv(const float *x, size_t ldx, int K, const float *panel,       \
                               float *tile, const char *pf, int pfs) {                      \
        BGE_UK_PF_LADDER(4, ukernel, pf, pfs, x, ldx, K, panel, tile, mr, nv);                \
    }
/* uk_table[mr - 1][nv - 1] */
BGE_UK_TABLE(uk_fn, uk_table, uk, UK, MR)

/* ---------------------------------------------------------------------------------------
 * The GEMM: this folder's tiles run by the shared driver (csrc/gemm_driver.c)
 * ------------------------------------------------------------------------------------- */

/* The tile of the driver's contract: nw columns need ceil(nw / 16) vectors. */
static void tile_avx512(const float *x, size_t ldx, int K, const float *panel, int mr, int nw,
                       float *tile) {
    uk_table[mr - 1][(nw + 15) / 16 - 1](x, ldx, K, panel, tile, NULL, 0);
}

/* The tile, prefetching the bytes [pf, pf + bytes) of the next panel on the way (the
 * driver's slices are at most a panel, K x 192 bytes: pfs <= 193, 4 lines a k). */
static void tile_pf_avx512(const float *x, size_t ldx, int K, const float *panel, int mr,
                           int nw, float *tile, const char *pf, int bytes) {
    int pfs = bytes / K + 1; /* pfs * K > bytes: the whole slice */
    if (pfs > 256) pfs = 256; /* never with the driver's slices; keeps npf <= 4 */
    uk_table[mr - 1][(nw + 15) / 16 - 1](x, ldx, K, panel, tile, pf, pfs);
}

static const bge_f32_gemm_impl impl_avx512 = {MR, NR, tile_avx512, bge_avx512_epilogue_48,
                                              tile_pf_avx512};
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

/* out = epilogue(x @ W^T + bias): the f32_gemm slot (bge.h), packed by bge_f32_pack__avx512. */
BGE_F32_GEMM_SLOT(avx512, impl_avx512)

/* ---------------------------------------------------------------------------------------
 * FMA peak loop
 * ------------------------------------------------------------------------------------- */

#define FMA_CHAINS 16

/* Runs iters rounds of FMA_CHAINS independent zmm FMA chains; returns the flops done
 * (2 per lane per FMA): enough chains to fill every FMA pipe through its latency.       */
double bge_f32_fma_loop__avx512(long iters) {
    volatile float seed = 1.0f;
    const float s = seed;
    __m512 acc[FMA_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < FMA_CHAINS; i++) acc[i] = _mm512_set1_ps(s * (float)i);
    const __m512 a = _mm512_set1_ps(0.999999f * s), b = _mm512_set1_ps(1e-7f * s);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < FMA_CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    __m512 sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < FMA_CHAINS; i++) sum = _mm512_add_ps(sum, acc[i]);
    seed = _mm512_reduce_add_ps(sum);
    return 2.0 * 16.0 * FMA_CHAINS * (double)iters;
}

void bge_overlay_avx512_gemm(bge_kernels *t) {
    BGE_SET_F32_GEMM(t, avx512, TILE);
}
