/*
 * arm/neon/bgemm.c: the bf16 GEMM for AArch64 NEON without BF16 instructions: the scheme of
 * bge.h emulated, bf16 widened to fp32 by a shift and summed with fmla, bit for bit the
 * reference (csrc/ref/bgemm.c) except GELU (the NEON vector GELU of vmath.h, 1.5e-7 |v|).
 *
 *   out (M, N) = epi(bf16(x) (M, K) @ bf16(W)^T + bias), W packed by the pack below.
 *
 * Design
 *   - Why fmla is the scheme's step: the product of two bf16 has at most 16 significant bits,
 *     so a fused multiply-add of the widened values adds the exact product with one rounding
 *     to nearest even. Each element's chain runs the odd k of each pair, then the even k, as
 *     vdpbf16ps does (bge.h).
 *   - The flush, and why FPCR.FZ alone is not it. The scheme flushes a result below 2^-126
 *     AFTER rounding (ftz(fma): x86's FTZ, measured on vdpbf16ps). AArch64's FPCR.FZ flushes
 *     BEFORE rounding: an exact sum in [2^-126 - 2^-150, 2^-126) becomes 0 there and FLT_MIN
 *     in the scheme. Such a sum needs a product below 2^-126 (with every product 0 or at
 *     least 2^-126, each sum is a multiple of 2^-149 and no rounding happens below 2^-126,
 *     so the two flushes agree); model data has none, tests/test_kernels_bgemm.py makes one.
 *     So a tile runs under FZ (the fast loop, one fmla per product) with FPSR.UFC cleared;
 *     FZ sets UFC whenever it flushes a result. If UFC is still clear no step flushed, every
 *     step's exact sum was 0 or >= 2^-126 and rounded exactly as in the scheme: the tile is
 *     the reference's bits. If it is set, the tile is run again without FZ, each step
 *     flushed explicitly after its rounding (fmla, then |r| < FLT_MIN -> +-0: the reference's
 *     bf16_step), which is exact always and about 3x slower. Either way the caller's FPCR
 *     and FPSR are restored before the epilogue. Explicit flushing everywhere would cost
 *     every tile 3 more instructions per fmla; FZ alone would be wrong in the corner above.
 *   - x is converted once per call into the scratch as fp32 rows holding bf16 values (the
 *     low 16 bits zero), (M, Kp) floats (bgemm_neon.h).
 *   - Microkernel MR x NR = 8 x 8 on the panels of bge_internal.h with nr = 8 (32 bytes per
 *     pair row): 16 q accumulators; per two pairs of k, one q load of x per row (its 4 k),
 *     then per pair 2 q loads of the panel widened into odd (and 0xFFFF0000) and even (shl
 *     16) halves, and 2 x 16 fmla by element (lane 1 then 0 for the first pair, 3 then 2 for
 *     the second). 16 + 8 + 2 = 26 of the 32 vector registers; 16 chains keep two FMA pipes
 *     of latency 4 busy. No k blocking: one chain per output element over all of K.
 *   - Tails: mr < 8 and nv = 1 variants; the epilogue stores partial vectors lane by lane.
 *     Every variant does the same operations per element. Blocking and threads: the shared
 *     driver (bge_bf16_gemm_run, csrc/gemm_driver.c); the hardware prefetchers follow the
 *     panels (the driver's next-panel slice is not used here, as in the fp32 NEON GEMM).
 */
#include <arm_neon.h>
#include <float.h>

#include "neon.h"

#include "../bgemm_neon.h" /* bf16 round, conversion, 8-wide epilogue */

#define MR BGE_ARM_BF16_MR
#define NV 2
#define NR BGE_ARM_BF16_NR
_Static_assert(NR == 4 * NV && MR == 8, "GEMM_NAME, the pack and uk tables follow MR, NR");
_Static_assert(MR * NR <= BGE_F32_TILE_FLOATS, "the driver's tile buffer holds MR x NR");

#define GEMM_NAME "bge_bf16_gemm_8x8__neon" /* MR x NR */

#define FPCR_FZ (1ull << 24)           /* flush to zero (before rounding)              */
#define FPCR_RMODE (3ull << 22)        /* rounding mode: 0 = to nearest                */
#define FPCR_AH_FIZ ((1ull << 1) | 1)  /* FEAT_AFP's alternate handling: kept clear    */
#define FPSR_UFC (1ull << 3)           /* underflow, cumulative: set by every FZ flush */

static inline uint64_t get_fpcr(void) {
    uint64_t v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v) : : "memory");
    return v;
}
static inline void set_fpcr(uint64_t v) { __asm__ volatile("msr fpcr, %0" : : "r"(v) : "memory"); }
static inline uint64_t get_fpsr(void) {
    uint64_t v;
    __asm__ volatile("mrs %0, fpsr" : "=r"(v) : : "memory");
    return v;
}
static inline void set_fpsr(uint64_t v) { __asm__ volatile("msr fpsr, %0" : : "r"(v) : "memory"); }

/* The reference's flush of a rounded result: |r| < FLT_MIN -> the zero of r's sign (NaN
 * compares false and is kept). */
static inline float32x4_t flush_tiny(float32x4_t r) {
    const uint32x4_t tiny = vcaltq_f32(r, vdupq_n_f32(FLT_MIN));
    return vreinterpretq_f32_u32(
        vbicq_u32(vreinterpretq_u32_f32(r), vandq_u32(tiny, vdupq_n_u32(0x7FFFFFFFu))));
}

/* One step of every element of the tile: acc += x[row i, lane L] * widened weight, then
 * (exact) the explicit flush. L is a literal (fmla by element). */
#define STEP(a, w, xq, L) (exact ? flush_tiny(vfmaq_laneq_f32((a), (w), (xq), (L))) \
                                 : vfmaq_laneq_f32((a), (w), (xq), (L)))

/* One pair of k: the panel's pair row at bp (2 q of words), x of row i in lanes LO (odd k)
 * and LE (even k) of xq[i]: the odd k of every element first, then the even k. */
#define PAIR(bp, LO, LE)                                                                   \
    do {                                                                                   \
        float32x4_t wv[NV];                                                                \
        _Pragma("GCC unroll 2") for (int j = 0; j < nv; j++) wv[j] =                       \
            vreinterpretq_f32_u32(vandq_u32(vld1q_u32((bp) + 4 * j), hi));                 \
        _Pragma("GCC unroll 8") for (int i = 0; i < mr; i++)                               \
            _Pragma("GCC unroll 2") for (int j = 0; j < nv; j++)                           \
                acc[i][j] = STEP(acc[i][j], wv[j], xq[i], LO);                             \
        _Pragma("GCC unroll 2") for (int j = 0; j < nv; j++) wv[j] =                       \
            vreinterpretq_f32_u32(vshlq_n_u32(vld1q_u32((bp) + 4 * j), 16));               \
        _Pragma("GCC unroll 8") for (int i = 0; i < mr; i++)                               \
            _Pragma("GCC unroll 2") for (int j = 0; j < nv; j++)                           \
                acc[i][j] = STEP(acc[i][j], wv[j], xq[i], LE);                             \
    } while (0)

/* One tile: tile[i][4j ..] = the scheme's sums for i < mr, j < nv.
 *   x     (mr, Kp) fp32 rows holding bf16 values, ldx floats apart
 *   panel Kp/2 pair rows of NR words
 *   tile  (MR, NR) floats; rows >= mr and vectors >= nv are not written
 * exact = 0: one fmla per product, to run under FPCR.FZ; 1: each step flushed after its
 * rounding, to run without FZ. mr, nv, exact are constants in every instance.            */
static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int Kp,
                                                          const uint32_t *panel, float *tile,
                                                          const int mr, const int nv,
                                                          const int exact) {
    float32x4_t acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) acc[i][j] = vdupq_n_f32(0.0f);
    const uint32x4_t hi = vdupq_n_u32(0xFFFF0000u);
    const uint32_t *b = panel;
    const int G = Kp / 2;
    int g = 0;
    for (; g + 2 <= G; g += 2, b += 2 * NR) {
        float32x4_t xq[MR]; /* row i's k = 2g .. 2g+3 */
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) xq[i] = vld1q_f32(x + (size_t)i * ldx + 2 * g);
        PAIR(b, 1, 0);
        PAIR(b + NR, 3, 2);
    }
    if (g < G) { /* a last single pair: its two k in lanes 0, 1 */
        float32x4_t xq[MR];
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++)
            xq[i] = vcombine_f32(vld1_f32(x + (size_t)i * ldx + 2 * g), vdup_n_f32(0.0f));
        PAIR(b, 1, 0);
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int j = 0; j < nv; j++) vst1q_f32(tile + i * NR + 4 * j, acc[i][j]);
}

typedef void (*uk_fn)(const float *x, size_t ldx, int Kp, const uint32_t *panel, float *tile);

/* noinline: each k loop stays inside one call, between tile_emu's FPCR and FPSR accesses */
#define UK(mr, nv)                                                                          \
    static __attribute__((noinline)) void ukf_##mr##_##nv(const float *x, size_t ldx, int Kp,\
                                                          const uint32_t *panel,           \
                                                          float *tile) {                   \
        ukernel(x, ldx, Kp, panel, tile, mr, nv, 0);                                        \
    }                                                                                       \
    static __attribute__((noinline)) void uke_##mr##_##nv(const float *x, size_t ldx, int Kp,\
                                                          const uint32_t *panel,           \
                                                          float *tile) {                   \
        ukernel(x, ldx, Kp, panel, tile, mr, nv, 1);                                        \
    }
#define UK_MR(mr) UK(mr, 1) UK(mr, 2)
UK_MR(1) UK_MR(2) UK_MR(3) UK_MR(4) UK_MR(5) UK_MR(6) UK_MR(7) UK_MR(8)
#define UK_ROW(p, mr) {p##_##mr##_1, p##_##mr##_2}
#define UK_ROWS(p) {UK_ROW(p, 1), UK_ROW(p, 2), UK_ROW(p, 3), UK_ROW(p, 4), UK_ROW(p, 5), \
                    UK_ROW(p, 6), UK_ROW(p, 7), UK_ROW(p, 8)}
static const uk_fn uk_fast[MR][NV] = UK_ROWS(ukf);  /* [mr - 1][nv - 1] */
static const uk_fn uk_exact[MR][NV] = UK_ROWS(uke);

/* The driver's tile: the fast loop under FZ, checked by FPSR.UFC, else the exact loop (see
 * the design above). The caller's FPCR and FPSR are back before this returns. */
static void tile_emu(const void *xc, size_t ldx, int Kp, const void *panel, int mr, int nw,
                     float *tile, const char *pf, int bytes) {
    (void)pf, (void)bytes;
    const int v = (nw + 3) / 4 - 1;
    const uint64_t fpcr = get_fpcr(), fpsr = get_fpsr();
    const uint64_t base = fpcr & ~(FPCR_RMODE | FPCR_AH_FIZ | FPCR_FZ);
    set_fpsr(fpsr & ~FPSR_UFC);
    set_fpcr(base | FPCR_FZ);
    uk_fast[mr - 1][v]((const float *)xc, ldx, Kp, (const uint32_t *)panel, tile);
    const int flushed = (get_fpsr() & FPSR_UFC) != 0;
    if (flushed) {
        set_fpcr(base);
        uk_exact[mr - 1][v]((const float *)xc, ldx, Kp, (const uint32_t *)panel, tile);
    }
    set_fpcr(fpcr);
    set_fpsr(fpsr);
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 4,
    .convert = bge_neon_bf16_convert_widened, .tile = tile_emu,
    .epilogue = bge_neon_bf16_epilogue8,
};

static size_t bge_bf16_packed_size__neon(int K, int N) { return bge_bf16_panels_size(K, N, NR); }
static int bge_bf16_pack__neon(const float *w, int K, int N, void *packed) {
    return bge_bf16_pack_panels(w, K, N, NR, packed);
}
static size_t bge_bf16_gemm_scratch__neon(int M, int K) {
    return bge_bf16_gemm_scratch(&impl, M, K);
}

static int bge_bf16_gemm__neon(const float *x, int M, int K, int N, const void *packed,
                               const float *bias, const float *res, float *out, int epilogue,
                               void *scratch, size_t scratch_bytes, int nthreads) {
    return bge_bf16_gemm_run(&impl, x, M, K, N, packed, bias, res, out, epilogue, scratch,
                             scratch_bytes, nthreads);
}

void bge_overlay_neon_bgemm(bge_kernels *t) {
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__neon);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__neon, "bge_bf16_pack_8__neon");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__neon);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__neon, GEMM_NAME);
    /* bf16_dot_loop stays the reference's: this level's step is one fmla per product, so
     * its peak is f32_fma_loop's */
}
