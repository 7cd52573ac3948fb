/*
 * x86/avx2/gemm.c: the fp32 GEMM with fused epilogues for AVX2 + FMA, its packing, and the
 * FMA peak loop of the level.
 *
 *   out (M, N) = epilogue(x (M, K) @ W^T + bias (N)),  W (N, K) packed by bge_f32_pack below.
 *
 * Design
 *   - Microkernel MR x NR = 4 x 24: 4 rows of x times one packed panel of 24 columns, held in
 *     4 x 3 = 12 ymm accumulators; 3 ymm hold the panel's k row and 1 the broadcast of x: all
 *     16 ymm registers. Each k step is 12 FMAs for 3 loads + 4 broadcasts; two FMA pipes of
 *     latency 4 need >= 8 independent chains, 12 give slack. It runs nearer the FMA peak
 *     than 6 x 16 (the same 12 accumulators, more loads per step; docs/performance.md), and
 *     MR = 4 wastes less on short batches. 24 divides every model width (384, 1152, 1536).
 *   - Tails: rows past the last full tile run an mr < 4 variant, a last panel runs only the
 *     ymm columns it has (nv < 3); the epilogue stores the last partial vector through
 *     vmaskmovps, so no byte outside out (M, N) is touched. Every variant computes each
 *     element the same way.
 *   - No K blocking: a tile's accumulators stay in registers over the whole K, so each out
 *     element is ONE chain acc = fma(x[m,k], w[n,k], acc), k = 0 .. K-1 ascending, from 0.0f,
 *     followed by the epilogue. Nothing depends on M, the tile, the tail path or nthreads:
 *     results are bit-identical for a row alone or in any batch, with 1 thread or many.
 *   - Cache blocking: rows are taken in blocks of MC (MC x K floats of x stay in L2, about
 *     384 KB); within a block the loop runs panel by panel, so one panel (K x 24 floats) is
 *     reused from L1/L2 by every MR-row tile of the block.
 *   - Threads take rectangles of the (row tiles) x (panels) grid, never a slice of K.
 *   - Prefetch of the next panel (tile_pf, from M = 2 rows): each tile of a panel prefetches
 *     an equal slice of the panel its thread reads next, one or two prefetcht1 per k step,
 *     so the first tile of every panel finds its weights in L2. Without it a pass with few
 *     rows is reading memory (the first tile) or computing (the others), never both. At
 *     M = 1 (3 FMAs per k step) it costs more than it saves, hence the M >= 2. K blocking
 *     for L1, a 6 x 16 tile and prefetching 2 or 3 panels ahead were measured and not kept
 *     (docs/performance.md, bge_f32_gemm AVX2).
 */
#include <immintrin.h>

#include "avx2.h"

#include "../microkernel.h" /* BGE_UK_TABLE */
#include "epilogue24.h"      /* bge_avx2_epilogue_24: bias, GELU, residual */
#include "transpose.h"

#define MR 4                  /* rows of x per microkernel tile                     */
#define NV 3                  /* ymm vectors of 8 columns per panel                 */
#define NR (8 * NV)           /* panel width in columns (floats)                    */

#define TILE "_4x24__avx2" /* MR x NR, in the GEMM's name */
_Static_assert(MR == 4 && NR == 24, "TILE, the pack comment and uk_table follow MR, NR");

/* ---------------------------------------------------------------------------------------
 * Packing
 * ------------------------------------------------------------------------------------- */

/* Floats of the packed W (N, K): ceil(N / NR) panels of K x NR floats. 0 on bad sizes. */
static size_t bge_f32_packed_size__avx2(int K, int N) {
    if (K < 1 || N < 1) return 0;
    const size_t panels = ((size_t)N + NR - 1) / NR;
    return panels * (size_t)K * NR;
}

/* Packs W for bge_f32_gemm_4x24__avx2.
 *   w      (N, K) row-major: a torch Linear weight (out_features, in_features)
 *   packed (packed_size(K, N)) floats, written whole, laid out as
 *            panel p = 0 .. ceil(N/24)-1 covers columns n = 24p .. 24p+23;
 *            panel p starts at float p*K*24; inside it, k = 0 .. K-1 ascending, each k holds
 *            24 consecutive floats w[24p + j, k] for j = 0 .. 23;
 *            i.e. packed[(p*K + k)*24 + j] = w[(24p + j)*K + k], and 0.0f where 24p + j >= N.
 *          Total ceil(N/24) * K * 24 floats. No alignment is required of `packed` (the
 *          kernel uses unaligned loads; each k row of a panel is 96 bytes).              */
static int bge_f32_pack__avx2(const float *w, int K, int N, float *packed) {
    if (!w || !packed || K < 1 || N < 1) return BGE_ERR_ARG;
    /* Blocks of 8 columns x 8 k: 8 row pieces of w loaded (masked past K, zero past N),
     * transposed in registers, stored as 8 k rows of the panel's 8 columns. The same bytes
     * as bge_f32_pack_panels, several times faster than its scalar copy: packing is most
     * of the fp32 load. */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int panels = (N + NR - 1) / NR;
    for (int p = 0; p < panels; p++) {
        float *dst = packed + (size_t)p * K * NR;
        for (int j0 = 0; j0 < NR; j0 += 8) {
            const int n0 = p * NR + j0;
            const int nj = N - n0 < 0 ? 0 : (N - n0 < 8 ? N - n0 : 8); /* rows of w here */
            for (int k0 = 0; k0 < K; k0 += 8) {
                const int kc = K - k0 < 8 ? K - k0 : 8;
                const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(kc), lane);
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = i >= nj ? _mm256_setzero_ps()
                           : kc == 8 ? _mm256_loadu_ps(w + (size_t)(n0 + i) * K + k0)
                                     : _mm256_maskload_ps(w + (size_t)(n0 + i) * K + k0, m);
                transpose8(r);
                for (int kk = 0; kk < kc; kk++)
                    _mm256_storeu_ps(dst + (size_t)(k0 + kk) * NR + j0, r[kk]);
            }
        }
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Microkernel
 * ------------------------------------------------------------------------------------- */

/* One tile: tile[i][8*j .. 8*j+7] = sum_k x[i, k] * panel[k, 8*j ..] for i < mr, j < nv.
 *   x     (mr, K) rows of x, row stride ldx floats
 *   panel (K, NR) one packed panel
 *   tile  (MR, NR) floats, 32-byte aligned; rows >= mr and vectors >= nv are not written
 * mr and nv are compile-time constants in every instance (see UK below).               */
static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int K,
                                                          const float *panel, float *tile,
                                                          const int mr, const int nv,
                                                          const char *pf, const int pfs,
                                                          const int npf) {
    __m256 acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) acc[i][j] = _mm256_setzero_ps();
    const float *b = panel;
    for (int k = 0; k < K; k++, b += NR) {
        if (npf) { /* npf lines of the next panel's slice, pfs bytes on per k */
            _mm_prefetch(pf, _MM_HINT_T1);
            if (npf == 2) _mm_prefetch(pf + pfs / 2, _MM_HINT_T1);
            pf += pfs;
        }
        __m256 bv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) bv[j] = _mm256_loadu_ps(b + 8 * j);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m256 a = _mm256_broadcast_ss(x + (size_t)i * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(a, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) _mm256_store_ps(tile + i * NR + 8 * j, acc[i][j]);
}

/* pf, pfs: prefetch from pf on, pfs bytes further each k (pfs = 0: no prefetch; one line a
 * k up to 64 bytes, two above, so every line of the slice is touched). */
typedef void (*uk_fn)(const float *x, size_t ldx, int K, const float *panel, float *tile,
                      const char *pf, int pfs);

#define UK(mr, nv)                                                                          \
    static void uk_##mr##_##nv(const float *x, size_t ldx, int K, const float *panel,       \
                               float *tile, const char *pf, int pfs) {                      \
        BGE_UK_PF_LADDER(2, ukernel, pf, pfs, x, ldx, K, panel, tile, mr, nv);                \
    }
/* uk_table[mr - 1][nv - 1] */
BGE_UK_TABLE(uk_fn, uk_table, uk, UK, MR)

/* ---------------------------------------------------------------------------------------
 * The GEMM: this folder's tiles run by the shared driver (csrc/gemm_driver.c)
 * ------------------------------------------------------------------------------------- */

/* The tile of the driver's contract: nw columns need ceil(nw / 8) vectors. */
static void tile_avx2(const float *x, size_t ldx, int K, const float *panel, int mr, int nw,
                       float *tile) {
    uk_table[mr - 1][(nw + 7) / 8 - 1](x, ldx, K, panel, tile, NULL, 0);
}

/* The tile, prefetching the bytes [pf, pf + bytes) of the next panel on the way. */
static void tile_pf_avx2(const float *x, size_t ldx, int K, const float *panel, int mr, int nw,
                         float *tile, const char *pf, int bytes) {
    const int pfs = bytes / K + 1; /* pfs * K > bytes: the whole slice */
    uk_table[mr - 1][(nw + 7) / 8 - 1](x, ldx, K, panel, tile, pf, pfs);
}

static const bge_f32_gemm_impl impl_avx2 = {MR, NR, tile_avx2, bge_avx2_epilogue_24,
                                            tile_pf_avx2};
_Static_assert(NR == BGE_EPI24_NR, "the epilogue's tile is NR wide");
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

/* out = epilogue(x @ W^T + bias): the f32_gemm slot (bge.h), packed by bge_f32_pack__avx2. */
BGE_F32_GEMM_SLOT(avx2, impl_avx2)

/* ---------------------------------------------------------------------------------------
 * FMA peak loop
 * ------------------------------------------------------------------------------------- */

#define FMA_CHAINS 12

/* Runs iters rounds of FMA_CHAINS independent ymm FMA chains; returns the flops done
 * (2 per lane per FMA): enough chains to fill both FMA pipes through their latency.     */
double bge_f32_fma_loop__avx2(long iters) {
    volatile float seed = 1.0f;
    const float s = seed;
    __m256 acc[FMA_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < FMA_CHAINS; i++) acc[i] = _mm256_set1_ps(s * (float)i);
    const __m256 a = _mm256_set1_ps(0.999999f * s), b = _mm256_set1_ps(1e-7f * s);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < FMA_CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    __m256 sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < FMA_CHAINS; i++) sum = _mm256_add_ps(sum, acc[i]);
    float lanes[8];
    _mm256_storeu_ps(lanes, sum);
    float total = 0.0f;
    for (int l = 0; l < 8; l++) total += lanes[l];
    seed = total;
    return 2.0 * 8.0 * FMA_CHAINS * (double)iters;
}

void bge_overlay_avx2_gemm(bge_kernels *t) {
    BGE_SET_F32_GEMM(t, avx2, TILE);
}
