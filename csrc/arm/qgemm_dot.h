/*
 * arm/qgemm_dot.h: the int8 GEMM of the ARM levels, included once by arm/dotprod/qgemm.c
 * (sdot, -march=armv8.2-a+dotprod) and once by arm/i8mm/qgemm.c (+i8mm, which brings its
 * own USMMLA microkernel and packing and shares the rest), each compiling it with its own
 * flags and its own names. Before including, the
 * file defines:
 *   BGE_ARM_Q8_USDOT  1: sudot (s8 weights x u8 activations, i8mm); 0: sdot (s8 x s8)
 *   BGE_ARM_Q8_LAYOUT its BGE_Q8_LAYOUT_* id; BGE_ARM_Q8_ISA its level's name (a string)
 *   BGE_ARM_Q8_MMLA   (optional) the file has defined MR, NV, NR, its own ukernel(q, ldq,
 *                     kn, panel, tile, mr, nv, raw), qs8_packed_size_dot, qs8_pack_dot and
 *                     BGE_ARM_Q8_KGROUP (arm/i8mm/qgemm.c: USMMLA); the rest is shared
 *
 *   out (M, N) = epi(sum_g (q - zp) @ w_s8^T * scale w_scale + bias), per group g of 64 k,
 *   the scheme of bge.h, bit-identical to the reference except GELU (the vector GELU of
 *   arm/neon/vmath.h, within 1.5e-7 |v| of the reference's scalar one).
 *
 * Mapping u8 x s8 onto the instructions, exactly:
 *   - i8mm: USMMLA (arm/i8mm/qgemm.c) and SUDOT (by element, for a last k quad) multiply
 *     u8 by s8: the scheme's q[k] w[k] as it stands.
 *   - dotprod: SDOT multiplies s8 by s8 only. Each q byte is shifted to s8 by flipping its
 *     top bit, q' = q ^ 0x80 = q - 128 in [-128, 127] (one eor per 16 bytes of q, shared by
 *     the 16 columns of a tile), so sdot gives S' = sum (q - 128) w, and the scheme's sum is
 *     S = S' + 128 sum_k w. The shift folds into the zero-point term of each group:
 *     d = S - zp colsum = S' + (128 - zp) colsum, with colsum[n, g] of the packed buffer.
 *     The raw int32 slot (all k at once) adds 128 sum_k w itself, summed in the kernel by
 *     an sdot of the same weights with a vector of -128 (subtracted: S' - (-128) sum w).
 *     All exact in int32: |S'| <= 128 * 127 * K and |128 sum w| <= 128 * 127 * K, and
 *     K <= BGE_Q8_MAX_K keeps every partial sum and the result inside int32.
 *
 * Design
 *   - Packing: bge_q8_pack_panels (ref/qgemm.c) with nr = 16, kgroup = 4, s8: one k-quad of
 *     a panel is 64 bytes = 4 q registers, register c holding columns 4c .. 4c+3 x 4 k each:
 *     weights[((p * Kp/4 + g) * 16 + j) * 4 + r] = w_s8[16p + j, 4g + r].
 *   - Microkernel MR x NR = 4 x 16: 4 x 4 = 16 int32x4 accumulators. 16 bytes of each of the
 *     4 rows of q are loaded once (4 k-quads), then per quad 4 weight registers and 16
 *     dot-products by element (lane = the quad): 24 of the 32 vector registers. 16 divides
 *     every model width (384, 1152, 1536).
 *   - Groups (bge.h): per group of 64 k (16 quads) the kernel sums into the 16 registers and
 *     stores them to an L1 tile; then the zero-point term (with the shift, above), the
 *     conversion and the fp32 ops of the scheme add the group into an fp32 tile, groups in
 *     ascending order, each op rounded on its own (no FMA): the reference's bits.
 *   - k tails: Kp is a multiple of 4, not of 16; the last 1 - 3 quads of a run are loaded
 *     through a 16-byte stack buffer (zero past them), so no byte past a row of q is read.
 *   - Tails in m and n: mr < 4 and nv < 4 variants; stores lane by lane past nw.
 *   - Blocking and threads: the shared driver bge_q8_gemm_run (ref/qgemm.c).
 */
#include <arm_neon.h>
#include <string.h>

#include "neon/epilogue.h" /* bge_neon_epilogue_tile */

#ifndef BGE_ARM_Q8_MMLA
#define MR 4        /* rows of q per microkernel tile            */
#define NV 4        /* int32x4 vectors of 4 columns per panel    */
#define NR (4 * NV) /* panel width in columns                    */
#endif
#define SUFFIX "_4x16__" BGE_ARM_Q8_ISA
#ifndef BGE_ARM_Q8_KGROUP
#define BGE_ARM_Q8_KGROUP 4 /* k per column in one packed step: a quad */
#endif
#ifndef BGE_ARM_Q8_DOT_PRODUCTS
#define BGE_ARM_Q8_DOT_PRODUCTS 16 /* products per dot-product instruction (4 lanes x 4) */
#endif
_Static_assert(MR == 4 && NR == 16, "SUFFIX and uk_table follow MR, NR");

#ifndef BGE_ARM_Q8_MMLA /* the i8mm file brings its own USMMLA ukernel and packing */
/* acc += the dot-products of weights b (4 columns x 4 k, s8) with quad `lane` of a (the row's
 * 16 bytes of q: u8 for sudot, shifted to s8 for sdot). */
#if BGE_ARM_Q8_USDOT
#define DOT_LANE(acc, b, a, lane) vsudotq_laneq_s32((acc), (b), vreinterpretq_u8_s8(a), (lane))
#else
#define DOT_LANE(acc, b, a, lane) vdotq_laneq_s32((acc), (b), (a), (lane))
#endif

/* 16 bytes of a row of q from p, n of them real (n = 4, 8, 12 or 16; the rest 0), as the
 * operand of DOT_LANE. */
static inline __attribute__((always_inline)) int8x16_t load_q(const uint8_t *p, int n) {
    uint8x16_t v;
    if (n == 16) {
        v = vld1q_u8(p);
    } else {
        uint8_t b[16] = {0};
        memcpy(b, p, (size_t)n);
        v = vld1q_u8(b);
    }
#if BGE_ARM_Q8_USDOT
    return vreinterpretq_s8_u8(v);
#else
    return vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80))); /* q - 128 as s8 */
#endif
}

/* The raw microkernel: tile[i][4c .. 4c+3] = sum_{k < kn} q[i, k] * w[column 4c.., k] for
 * i < mr, c < nv, over the kn k (a multiple of 4) of this call (for sdot without the
 * +128 sum w term unless RAW: see above).
 *   q     (mr, kn) u8 rows, row stride ldq bytes
 *   panel (kn/4, 16, 4) s8: the packed panel from the call's first quad on
 *   tile  (MR, NR) int32; rows >= mr and vectors >= nv are not written
 * mr, nv and RAW are compile-time constants in every instance. */
static inline __attribute__((always_inline)) void ukernel(const uint8_t *q, size_t ldq, int kn,
                                                          const int8_t *panel, int32_t *tile,
                                                          const int mr, const int nv,
                                                          const int RAW) {
    int32x4_t acc[MR][NV], wsum[NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++) acc[i][c] = vdupq_n_s32(0);
#pragma GCC unroll 4
    for (int c = 0; c < nv; c++) wsum[c] = vdupq_n_s32(0);
    const int8x16_t m128 = vdupq_n_s8(-128);
    const int8_t *b = panel;
    for (int k = 0; k < kn; k += 16) {
        const int n = kn - k < 16 ? kn - k : 16;
        int8x16_t a[MR];
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) a[i] = load_q(q + (size_t)i * ldq + k, n);
#define QUAD(lane)                                                                          \
    if ((lane) * 4 < n) {                                                                   \
        int8x16_t bv[NV];                                                                   \
        _Pragma("GCC unroll 4") for (int c = 0; c < nv; c++) bv[c] = vld1q_s8(b + 16 * c);  \
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                                \
            _Pragma("GCC unroll 4") for (int c = 0; c < nv; c++)                            \
                acc[i][c] = DOT_LANE(acc[i][c], bv[c], a[i], (lane));                        \
        if (RAW && !BGE_ARM_Q8_USDOT)                                                        \
            _Pragma("GCC unroll 4") for (int c = 0; c < nv; c++)                            \
                wsum[c] = vdotq_laneq_s32(wsum[c], bv[c], m128, 0);                           \
        b += 64;                                                                            \
    }
        QUAD(0) QUAD(1) QUAD(2) QUAD(3)
#undef QUAD
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++) {
            /* sdot: S = S' - (-128) sum w (wsum is 0 unless RAW) */
            vst1q_s32(tile + i * NR + 4 * c, vsubq_s32(acc[i][c], wsum[c]));
        }
}

#endif /* !BGE_ARM_Q8_MMLA */

typedef void (*uk_fn)(const uint8_t *q, size_t ldq, int kn, const int8_t *panel,
                      int32_t *tile);

#define UK(mr, nv, raw, tag)                                                                \
    static __attribute__((noinline)) void uk##tag##_##mr##_##nv(                            \
        const uint8_t *q, size_t ldq, int kn, const int8_t *panel, int32_t *tile) {         \
        ukernel(q, ldq, kn, panel, tile, mr, nv, raw);                                      \
    }
#define UK_MR(mr) UK(mr, 1, 0, g) UK(mr, 2, 0, g) UK(mr, 3, 0, g) UK(mr, 4, 0, g)           \
    UK(mr, 1, 1, r) UK(mr, 2, 1, r) UK(mr, 3, 1, r) UK(mr, 4, 1, r)
UK_MR(1) UK_MR(2) UK_MR(3) UK_MR(4)
#define UK_ROW(tag, mr) {uk##tag##_##mr##_1, uk##tag##_##mr##_2, uk##tag##_##mr##_3, uk##tag##_##mr##_4}
/* [mr - 1][nv - 1]: ukg for the groups (the shift folded into the zero-point term), ukr
 * for the raw int32 slot (the shift undone in the kernel) */
static const uk_fn ukg_table[MR][NV] = {UK_ROW(g, 1), UK_ROW(g, 2), UK_ROW(g, 3), UK_ROW(g, 4)};
static const uk_fn ukr_table[MR][NV] = {UK_ROW(r, 1), UK_ROW(r, 2), UK_ROW(r, 3), UK_ROW(r, 4)};

static void tile_dot(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                     int32_t *tile) {
    ukr_table[mr - 1][(nw + 3) / 4 - 1](q, ldq, Kp, (const int8_t *)panel, tile);
}

/* The grouped tile (the qu8s8_gemm slot): ftile[i][j] = the fp32 sum over groups of the
 * scheme, before the bias, i < mr, j < 4 ceil(nw / 4). Per group: the kernel's int32 sums
 * to itile, then d = S + (shift - zp) colsum (exact int32; shift = 128 for sdot, 0 for
 * sudot), s = s + (float)d * (scale * wscale), each rounded on its own.
 *   scale, zp: row 0 of the tile, row stride ngroups; ws, cs: the panel's column 0 in
 *   group 0, group stride gs; ftile (MR, NR) fp32.                                        */
static void gtile_dot(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                      const float *scale, const int32_t *zp, int ngroups, const float *ws,
                      const int32_t *cs, int gs, float *ftile) {
    const int nv = (nw + 3) / 4;
    const uk_fn uk = ukg_table[mr - 1][nv - 1];
    const int8_t *b = (const int8_t *)panel;
    int32_t itile[MR * NR] __attribute__((aligned(64)));
    const int32_t shift = BGE_ARM_Q8_USDOT ? 0 : 128;
    for (int g = 0; g < ngroups; g++) {
        const int k0 = g * BGE_Q8_GROUP;
        const int kn = Kp - k0 < BGE_Q8_GROUP ? Kp - k0 : BGE_Q8_GROUP;
        uk(q + k0, ldq, kn, b, itile);
        b += (size_t)kn * NR;
        const float *wsg = ws + (size_t)g * gs;
        const int32_t *csg = cs + (size_t)g * gs;
        for (int i = 0; i < mr; i++) {
            const int32x4_t f = vdupq_n_s32(shift - zp[(size_t)i * ngroups + g]);
            const float32x4_t sv = vdupq_n_f32(scale[(size_t)i * ngroups + g]);
            for (int c = 0; c < nv; c++) {
                const int32x4_t d = vmlaq_s32(vld1q_s32(itile + i * NR + 4 * c), f,
                                              vld1q_s32(csg + 4 * c));
                const float32x4_t s = vmulq_f32(sv, vld1q_f32(wsg + 4 * c));
                const float32x4_t v = vmulq_f32(vcvtq_f32_s32(d), s);
                float *o = ftile + i * NR + 4 * c;
                const float32x4_t prev = g ? vld1q_f32(o) : vdupq_n_f32(0.0f);
                vst1q_f32(o, vaddq_f32(prev, v));
            }
        }
    }
}

/* The tile's epilogue (neon/epilogue.h), ftile (MR, NR) floats. */
static void epilogue_dot(const float *ftile, int mr, int nw, const float *bias,
                         const float *res, float *out, size_t ldo, int epilogue) {
    bge_neon_epilogue_tile(ftile, NR, mr, nw, bias, res, out, ldo, epilogue);
}

static const bge_q8_gemm_impl impl_dot = {
    .layout = BGE_ARM_Q8_LAYOUT, .mr = MR, .nr = NR, .kgroup = BGE_ARM_Q8_KGROUP,
    .tile = tile_dot, .gtile = gtile_dot, .epilogue = epilogue_dot,
};

#ifndef BGE_ARM_Q8_MMLA
/* Bytes of w_s8 (N, K) packed: header, scales and sums of ceil(N/16)*16 columns per group,
 * then ceil(N/16) panels of Kp x 16 int8. */
static size_t qs8_packed_size_dot(int K, int N) { return bge_q8_panels_size(K, N, NR, 4); }

/* The layout of ref/qgemm.c with nr = 16, kgroup = 4, s8 (see the header comment). */
static int qs8_pack_dot(const int8_t *w, const float *w_scale, int K, int N, void *packed) {
    return bge_q8_pack_panels(w, w_scale, K, N, packed, BGE_ARM_Q8_LAYOUT, NR, 4);
}
#endif

/* out (M, N) = epi(...) from q (M, Kp), scale, zp (M, ngroups) and W packed by qs8_pack_dot;
 * bias (N); res (M, N) may equal out.                                                     */
static int qu8s8_gemm_dot(const uint8_t *q, const float *scale, const int32_t *zp, int M,
                          int K, int N, const void *packed, const float *bias,
                          const float *res, float *out, int epilogue, int nthreads) {
    return bge_q8_gemm_run(&impl_dot, q, scale, zp, M, K, N, packed, bias, res, out, NULL,
                           epilogue, nthreads);
}

/* acc (M, N) int32 = q (M, Kp) @ w_s8^T, W packed by qs8_pack_dot.                        */
static int qu8s8_gemm_i32_dot(const uint8_t *q, int M, int K, int N, const void *packed,
                              int32_t *acc, int nthreads) {
    if (!acc) return BGE_ERR_ARG;
    return bge_q8_gemm_run(&impl_dot, q, NULL, NULL, M, K, N, packed, NULL, NULL, NULL, acc,
                           BGE_EPI_BIAS, nthreads);
}

#define DOT_CHAINS 16

/* iters rounds of DOT_CHAINS independent int32x4 chains of the level's dot-product
 * instruction (BGE_ARM_Q8_DOT_PRODUCTS products each); returns 2 ops per product.      */
static double qu8s8_dot_loop_dot(long iters) {
    volatile int32_t seed = 1;
    const int32_t s = seed;
    int32x4_t acc[DOT_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < DOT_CHAINS; i++) acc[i] = vdupq_n_s32(s * i);
    const int8x16_t b = vdupq_n_s8((int8_t)(3 * s));
    const int8x16_t a = vdupq_n_s8((int8_t)(-5 * s));
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < DOT_CHAINS; i++) acc[i] = DOT_LANE(acc[i], b, a, 1);
    }
    int32x4_t sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < DOT_CHAINS; i++) sum = veorq_s32(sum, acc[i]);
    seed = vgetq_lane_s32(sum, 0) ^ vgetq_lane_s32(sum, 3);
    return 2.0 * BGE_ARM_Q8_DOT_PRODUCTS * DOT_CHAINS * (double)iters;
}

/* Fills the int8 GEMM slots of a table with this level's kernels (the quantisers are the
 * neon level's, arm/neon/quant.c). */
static void overlay_qgemm_dot(bge_kernels *t) {
    BGE_SET_NAMED(t, qs8_packed_size, qs8_packed_size_dot,
                  "bge_qs8_packed_size__" BGE_ARM_Q8_ISA);
    BGE_SET_NAMED(t, qs8_pack, qs8_pack_dot, "bge_qs8_pack" SUFFIX);
    BGE_SET_NAMED(t, qu8s8_gemm, qu8s8_gemm_dot, "bge_qu8s8_gemm" SUFFIX);
    BGE_SET_NAMED(t, qu8s8_gemm_i32, qu8s8_gemm_i32_dot, "bge_qu8s8_gemm_i32" SUFFIX);
    BGE_SET_NAMED(t, qu8s8_dot_loop, qu8s8_dot_loop_dot, "bge_qu8s8_dot_loop__" BGE_ARM_Q8_ISA);
}
