/*
 * arm/neon/gemm.c: the fp32 GEMM with fused epilogues for AArch64 NEON, its packing, and the
 * FMA peak loop of the level.
 *
 *   out (M, N) = epilogue(x (M, K) @ W^T + bias (N)),  W (N, K) packed by bge_f32_pack below.
 *
 * Design
 *   - Microkernel MR x NR = 8 x 12: 8 rows of x times one packed panel of 12 columns, held
 *     in 8 x 3 = 24 q-register accumulators; 3 registers hold the panel's k row and one the
 *     broadcast of x (ld1r): 28 of the 32 vector registers. Each k step is 24 fmla for 3
 *     loads + 8 broadcast loads. Two FMA pipes of latency 4 (Cortex-A76, Neoverse N1) need
 *     >= 8 independent chains; 24 give slack, and 8 rows amortise each panel load 8 times.
 *     12 divides every model width (384, 1152, 1536). Instruction counts per k step against
 *     the cores' documented throughput: docs/performance.md (estimates).
 *   - Tails: rows past the last full tile run an mr < 8 variant, a last panel runs only the
 *     q vectors it has (nv < 3); the epilogue stores a partial vector lane by lane, so no
 *     byte outside out (M, N) is touched. Every variant computes each element the same way.
 *   - No K blocking: each out element is ONE chain acc = fma(x[m,k], w[n,k], acc),
 *     k = 0 .. K-1 ascending, from 0.0f, then the epilogue: bit-identical for a row alone or
 *     in any batch, with 1 thread or many (the contract of the f32_gemm slot).
 *   - Blocking, threads and the next-panel prefetch: the shared driver bge_f32_gemm_run
 *     (csrc/ref/gemm.c), as on x86.
 */
#include <arm_neon.h>

#include "neon.h"

#include "epilogue.h" /* bge_neon_epilogue_tile */

#define MR 8          /* rows of x per microkernel tile          */
#define NV 3          /* q vectors of 4 columns per panel        */
#define NR (4 * NV)   /* panel width in columns (floats)         */

#define GEMM_NAME "bge_f32_gemm_8x12__neon" /* MR x NR */
_Static_assert(MR == 8 && NR == 12, "GEMM_NAME, the pack comment and uk_table follow MR, NR");

/* Floats of the packed W (N, K): ceil(N / 12) panels of K x 12 floats. 0 on bad sizes. */
static size_t bge_f32_packed_size__neon(int K, int N) {
    if (K < 1 || N < 1) return 0;
    return ((size_t)N + NR - 1) / NR * (size_t)K * NR;
}

/* Packs W for bge_f32_gemm_8x12__neon: the column panels of csrc/ref/gemm.c with nr = 12.
 *   w      (N, K) row-major: a torch Linear weight (out_features, in_features)
 *   packed (packed_size(K, N)) floats, written whole:
 *            packed[(p*K + k)*12 + j] = w[(12p + j)*K + k], and 0.0f where 12p + j >= N;
 *          i.e. panel p (columns 12p .. 12p+11) starts at float p*K*12 and holds, for
 *          k = 0 .. K-1 ascending, the 12 weights of its columns at that k (48 bytes).
 *          No alignment is required (the kernel's loads are unaligned-safe).            */
static int bge_f32_pack__neon(const float *w, int K, int N, float *packed) {
    if (!w || !packed || K < 1 || N < 1) return BGE_ERR_ARG;
    bge_f32_pack_panels(w, K, N, NR, packed);
    return BGE_OK;
}

/* One tile: tile[i][4j .. 4j+3] = sum_k x[i, k] * panel[k, 4j ..] for i < mr, j < nv.
 *   x     (mr, K) rows of x, row stride ldx floats
 *   panel (K, NR) one packed panel
 *   tile  (MR, NR) floats; rows >= mr and vectors >= nv are not written
 * mr and nv are compile-time constants in every instance (see UK below).                */
static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int K,
                                                          const float *panel, float *tile,
                                                          const int mr, const int nv) {
    float32x4_t acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = vdupq_n_f32(0.0f);
    const float *b = panel;
    for (int k = 0; k < K; k++, b += NR) {
        float32x4_t bv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) bv[j] = vld1q_f32(b + 4 * j);
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const float32x4_t a = vld1q_dup_f32(x + (size_t)i * ldx + k);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = vfmaq_f32(acc[i][j], a, bv[j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) vst1q_f32(tile + i * NR + 4 * j, acc[i][j]);
}

typedef void (*uk_fn)(const float *x, size_t ldx, int K, const float *panel, float *tile);

#define UK(mr, nv)                                                                          \
    static void uk_##mr##_##nv(const float *x, size_t ldx, int K, const float *panel,       \
                               float *tile) {                                               \
        ukernel(x, ldx, K, panel, tile, mr, nv);                                            \
    }
#define UK_MR(mr) UK(mr, 1) UK(mr, 2) UK(mr, 3)
UK_MR(1) UK_MR(2) UK_MR(3) UK_MR(4) UK_MR(5) UK_MR(6) UK_MR(7) UK_MR(8)
#define UK_ROW(mr) {uk_##mr##_1, uk_##mr##_2, uk_##mr##_3}
/* uk_table[mr - 1][nv - 1] */
static const uk_fn uk_table[MR][NV] = {UK_ROW(1), UK_ROW(2), UK_ROW(3), UK_ROW(4),
                                       UK_ROW(5), UK_ROW(6), UK_ROW(7), UK_ROW(8)};

/* The tile of the driver's contract: nw columns need ceil(nw / 4) vectors. */
static void tile_neon(const float *x, size_t ldx, int K, const float *panel, int mr, int nw,
                      float *tile) {
    uk_table[mr - 1][(nw + 3) / 4 - 1](x, ldx, K, panel, tile);
}

/* The tile's epilogue (epilogue.h), tile (MR, NR). */
static void epilogue_tile(const float *tile, int mr, int nw, const float *bias,
                          const float *res, float *out, size_t ldo, int epilogue) {
    bge_neon_epilogue_tile(tile, NR, mr, nw, bias, res, out, ldo, epilogue);
}

static const bge_f32_gemm_impl impl_neon = {MR, NR, tile_neon, epilogue_tile, NULL};
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

/* out = epilogue(x @ W^T + bias): the f32_gemm slot (bge.h), packed by bge_f32_pack__neon. */
static int bge_f32_gemm__neon(const float *x, int M, int K, int N, const float *packed,
                              const float *bias, const float *res, float *out, int epilogue,
                              int nthreads) {
    return bge_f32_gemm_run(&impl_neon, x, M, K, N, packed, bias, res, out, epilogue,
                            nthreads);
}

#define FMA_CHAINS 16

/* Runs iters rounds of FMA_CHAINS independent q-register FMA chains; returns the flops done
 * (2 per lane per FMA): enough chains to fill two FMA pipes of latency 4 with slack. Each
 * chain is its own addend (acc += a b): FMLA overwrites its addend, so a constant addend
 * would cost a register copy per FMA.                                                    */
static double bge_f32_fma_loop__neon(long iters) {
    volatile float seed = 1.0f;
    const float s = seed;
    float32x4_t acc[FMA_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < FMA_CHAINS; i++) acc[i] = vdupq_n_f32(s * (float)i);
    const float32x4_t a = vdupq_n_f32(0.999999f * s), b = vdupq_n_f32(1e-7f * s);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < FMA_CHAINS; i++) acc[i] = vfmaq_f32(acc[i], a, b);
    }
    float32x4_t sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < FMA_CHAINS; i++) sum = vaddq_f32(sum, acc[i]);
    seed = vaddvq_f32(sum);
    return 2.0 * 4.0 * FMA_CHAINS * (double)iters;
}

void bge_overlay_neon_gemm(bge_kernels *t) {
    BGE_SET(t, f32_packed_size, bge_f32_packed_size__neon);
    BGE_SET(t, f32_pack, bge_f32_pack__neon);
    BGE_SET_NAMED(t, f32_gemm, bge_f32_gemm__neon, GEMM_NAME);
    BGE_SET(t, f32_fma_loop, bge_f32_fma_loop__neon);
}
