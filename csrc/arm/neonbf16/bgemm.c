/*
 * arm/neonbf16/bgemm.c: the bf16 GEMM of the neonbf16 level on BFDOT (FEAT_BF16, Armv8.6;
 * Neoverse V1/N2/V2, Apple M2+), compiled with -march=armv8.2-a+bf16, and its peak loop.
 *
 *   out (M, N) = epi(bf16(x) (M, K) @ bf16(W)^T + bias), W packed as the neon level packs it
 *   (the same bytes: panels of nr = 8, arm/bgemm_neon.h).
 *
 * What BFDOT computes (Arm ARM, BFDotAdd with FPCR.EBF = 0; FPCR otherwise ignored), per
 * output element and pair g of k: acc = R(acc + R(xb[2g] wb[2g] + xb[2g+1] wb[2g+1])), each
 * product exact (one below 2^-126 flushed to zero), R rounding to odd and flushing a result
 * below 2^-126 to zero. The pair is summed first and rounded to odd: not the scheme's two
 * steps rounded to nearest even (vdpbf16ps), so this level is NOT the reference's bits. It is
 * within the bound of bge.h ("neonbf16"), derived from K and tested on the odd shapes
 * (tests/test_kernels_bgemm.py). Batch and thread invariance hold as on every level: one
 * instruction and one pair order for every element, whatever M, the tile or the threads.
 * BFMMLA (2 x 4 by 4 x 2 blocks) is documented as the same BFDotAdd steps per element, but
 * would need rows in pairs and another panel layout; BFDOT keeps the neon level's panels.
 *
 * Design
 *   - x converted once per call into the scratch as (M, Kp) bf16 rows (integer steps:
 *     the scheme's bf16(), arm/bgemm_neon.h).
 *   - Microkernel MR x NR = 8 x 8: 16 q accumulators of 4 columns; per four pairs of k, one
 *     q load of x per row (its 8 k = 4 pairs), then per pair 2 q loads of the panel (8
 *     columns' pair words) and 16 BFDOT by element (lane = the pair's index in the q).
 *     16 + 8 + 2 = 26 registers; 16 chains. A last 1-3 pairs: x from a zero-padded copy.
 *   - FPCR.EBF (FEAT_EBF16) is cleared for the k loop if the caller had set it: with EBF = 1
 *     BFDOT would round by FPCR instead.
 *   - Tails, epilogue, blocking and threads as the neon level's bf16 GEMM.
 */
#include <arm_neon.h>
#include <string.h>

#include "../bgemm_neon.h" /* bf16 round, conversion, 8-wide epilogue */

#define MR BGE_ARM_BF16_MR
#define NV 2
#define NR BGE_ARM_BF16_NR
_Static_assert(NR == 4 * NV && MR == 8, "GEMM_NAME and the uk table follow MR, NR");
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

#define GEMM_NAME "bge_bf16_gemm_8x8__neonbf16" /* MR x NR */
#define FPCR_EBF (1ull << 13)

/* One pair of k for every element: the panel's pair row at bp, x's pair in lane L of xq. */
#define PAIR(bp, L)                                                                        \
    do {                                                                                   \
        bfloat16x8_t wv[NV];                                                               \
        _Pragma("GCC unroll 2") for (int j = 0; j < nv; j++) wv[j] =                       \
            vreinterpretq_bf16_u32(vld1q_u32((bp) + 4 * j));                               \
        _Pragma("GCC unroll 8") for (int i = 0; i < mr; i++)                               \
            _Pragma("GCC unroll 2") for (int j = 0; j < nv; j++)                           \
                acc[i][j] = vbfdotq_laneq_f32(acc[i][j], wv[j], xq[i], (L));               \
    } while (0)

/* One tile: tile[i][4j ..] = the BFDOT sums for i < mr, j < nv.
 *   x     (mr, Kp) bf16 rows, ldx elements apart; panel: Kp/2 pair rows of NR words
 *   tile  (MR, NR) floats; rows >= mr and vectors >= nv are not written                  */
static inline __attribute__((always_inline)) void ukernel(const uint16_t *x, size_t ldx,
                                                          int Kp, const uint32_t *panel,
                                                          float *tile, const int mr,
                                                          const int nv) {
    float32x4_t acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) acc[i][j] = vdupq_n_f32(0.0f);
    const uint32_t *b = panel;
    const int G = Kp / 2;
    int g = 0;
    for (; g + 4 <= G; g += 4, b += 4 * NR) {
        bfloat16x8_t xq[MR]; /* row i's pairs g .. g+3 */
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++)
            xq[i] = vreinterpretq_bf16_u16(vld1q_u16(x + (size_t)i * ldx + 2 * g));
        PAIR(b, 0);
        PAIR(b + NR, 1);
        PAIR(b + 2 * NR, 2);
        PAIR(b + 3 * NR, 3);
    }
    const int rest = G - g; /* 0 .. 3 pairs */
    if (rest) {
        bfloat16x8_t xq[MR];
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            memcpy(tmp, x + (size_t)i * ldx + 2 * g, (size_t)rest * 4);
            xq[i] = vreinterpretq_bf16_u16(vld1q_u16(tmp));
        }
        PAIR(b, 0);
        if (rest > 1) PAIR(b + NR, 1);
        if (rest > 2) PAIR(b + 2 * NR, 2);
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) vst1q_f32(tile + i * NR + 4 * j, acc[i][j]);
}

typedef void (*uk_fn)(const uint16_t *x, size_t ldx, int Kp, const uint32_t *panel,
                      float *tile);

/* noinline: the k loop stays between tile_bfdot's FPCR accesses */
#define UK(mr, nv)                                                                          \
    static __attribute__((noinline)) void uk_##mr##_##nv(const uint16_t *x, size_t ldx,    \
                                                         int Kp, const uint32_t *panel,    \
                                                         float *tile) {                    \
        ukernel(x, ldx, Kp, panel, tile, mr, nv);                                           \
    }
#define UK_MR(mr) UK(mr, 1) UK(mr, 2)
UK_MR(1) UK_MR(2) UK_MR(3) UK_MR(4) UK_MR(5) UK_MR(6) UK_MR(7) UK_MR(8)
#define UK_ROW(mr) {uk_##mr##_1, uk_##mr##_2}
static const uk_fn uk_table[MR][NV] = {UK_ROW(1), UK_ROW(2), UK_ROW(3), UK_ROW(4),
                                       UK_ROW(5), UK_ROW(6), UK_ROW(7), UK_ROW(8)};

static inline uint64_t get_fpcr(void) {
    uint64_t v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v) : : "memory");
    return v;
}
static inline void set_fpcr(uint64_t v) { __asm__ volatile("msr fpcr, %0" : : "r"(v) : "memory"); }

static void tile_bfdot(const void *xc, size_t ldx, int Kp, const void *panel, int mr, int nw,
                       float *tile, const char *pf, int bytes) {
    (void)pf, (void)bytes;
    const uint64_t fpcr = get_fpcr();
    if (fpcr & FPCR_EBF) set_fpcr(fpcr & ~FPCR_EBF);
    uk_table[mr - 1][(nw + 3) / 4 - 1]((const uint16_t *)xc, ldx, Kp,
                                       (const uint32_t *)panel, tile);
    if (fpcr & FPCR_EBF) set_fpcr(fpcr);
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 2,
    .convert = bge_neon_bf16_convert_bits, .tile = tile_bfdot,
    .epilogue = bge_neon_bf16_epilogue8,
};

static size_t bge_bf16_packed_size__neonbf16(int K, int N) {
    return bge_bf16_panels_size(K, N, NR);
}
static int bge_bf16_pack__neonbf16(const float *w, int K, int N, void *packed) {
    return bge_bf16_pack_panels(w, K, N, NR, packed);
}
static size_t bge_bf16_gemm_scratch__neonbf16(int M, int K) {
    return bge_bf16_gemm_scratch(&impl, M, K);
}

static int bge_bf16_gemm__neonbf16(const float *x, int M, int K, int N, const void *packed,
                                   const float *bias, const float *res, float *out,
                                   int epilogue, void *scratch, size_t scratch_bytes,
                                   int nthreads) {
    return bge_bf16_gemm_run(&impl, x, M, K, N, packed, bias, res, out, epilogue, scratch,
                             scratch_bytes, nthreads);
}

#define DOT_CHAINS 16

/* iters rounds of DOT_CHAINS independent BFDOT chains; 8 products (16 flops) each. */
static double bge_bf16_dot_loop__neonbf16(long iters) {
    volatile float seed = 1.0f;
    const float s = seed;
    float32x4_t acc[DOT_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < DOT_CHAINS; i++) acc[i] = vdupq_n_f32(s * (float)i);
    /* bf16 0.5 and 2^-10 in every half: the sums stay finite for any iters. Built from the
     * volatile seed: gcc 12 would load constant bf16 vectors with an FP16 fmov, which
     * -march=armv8.2-a+bf16 does not include. */
    const uint16_t on = s > 0.0f ? 1 : 0;
    const bfloat16x8_t a = vreinterpretq_bf16_u16(vdupq_n_u16((uint16_t)(0x3F00 * on)));
    const bfloat16x8_t b = vreinterpretq_bf16_u16(vdupq_n_u16((uint16_t)(0x3A80 * on)));
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < DOT_CHAINS; i++) acc[i] = vbfdotq_f32(acc[i], a, b);
    }
    float32x4_t sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < DOT_CHAINS; i++) sum = vaddq_f32(sum, acc[i]);
    seed = vaddvq_f32(sum);
    return 2.0 * 8.0 * DOT_CHAINS * (double)iters;
}

/* The neonbf16 level: the table below it (neon, dotprod or i8mm) with the bf16 GEMM on
 * BFDOT. The packing is the neon level's bytes, named for this level. */
void bge_overlay_neonbf16(bge_kernels *t) {
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__neonbf16);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__neonbf16, "bge_bf16_pack_8__neonbf16");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__neonbf16);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__neonbf16, GEMM_NAME);
    BGE_SET(t, bf16_dot_loop, bge_bf16_dot_loop__neonbf16);
}
