/*
 * x86/avx512vnni/qgemm.c: the int8 GEMM (u8 x s8 -> int32, vpdpbusd on zmm) with its fp32
 * epilogues, its packing, the AVX-512 activation quantiser and the vpdpbusd peak loop.
 *
 *   out (M, N) = epi(sum_g (q - zp) @ w_s8^T * scale w_scale + bias), per group g of 64 k,
 *   the scheme of bge.h and
 *   ref/qgemm.c, bit-identical to the reference except GELU (vector GELU, 1.5e-7 |v|).
 *
 * Design
 *   - Packing: bge_q8_pack_panels (csrc/pack.c) with nr = 48, kgroup = 4, s8 (layout VNNI):
 *     one k-quad of a panel is 192 bytes = 3 zmm, each 16 columns x 4 consecutive k, which
 *     is what vpdpbusd multiplies against a broadcast of 4 u8 of one row of q.
 *   - Microkernel MR x NR = 4 x 48: per group of 64 k (16 k-quads), 4 x 3 = 12 zmm of
 *     int32 sums; each k-quad loads 3 zmm of the panel and broadcasts 4 bytes of each of 4
 *     rows: 12 vpdpbusd for 7 loads (Zen 4 runs two loads a cycle), 12 independent chains.
 *     Then, still in registers, one vpdpwssd per zmm adds the zero-point term and the fp32
 *     ops of the scheme add the group into 12 more zmm of fp32 sums, in group order; only
 *     the finished tile goes to memory. 48 divides every model width (384, 1152, 1536).
 *     It runs nearer the vpdpbusd peak than an 8 x 48 tile, whose 24 int32 zmm leave no
 *     room for the fp32 sums (those went through an L1 tile once per group). The raw
 *     kernel (qu8s8_gemm_i32) is the same loop over all k.
 *   - Integer sums are exact, so nothing about their order matters; the fp32 ops are the
 *     same for every element, groups in ascending order (bge.h), so every tile, tail or
 *     not, and every thread count gives the same bits.
 *   - Tails: rows past the last full tile run an mr < 4 variant, a last panel runs only the
 *     zmm columns it has (nv < 3); stores are masked: nothing outside out (M, N) is touched.
 *   - Blocking and threads: the shared driver bge_q8_gemm_run (csrc/gemm_driver.c): row
 *     blocks of 128 KB of q, panel by panel inside a block; threads split row tiles and
 *     panels.
 */
#include <immintrin.h>
#include <string.h>

#include "avx512vnni.h"

#include "../microkernel.h" /* BGE_UK_TABLE, the int8 microkernel types */

#include "../avx512/epilogue48.h" /* bge_avx512_epilogue_48: bias, GELU, residual */

#define MR 4         /* rows of q per microkernel tile                 */
#define NV 3         /* zmm vectors of 16 columns per panel            */
#define NR (16 * NV) /* panel width in columns                         */

#define SUFFIX "_4x48__avx512vnni" /* MR x NR */
_Static_assert(MR == 4 && NR == 48, "SUFFIX, uk_table and guk_table follow MR, NR");
_Static_assert(NR == BGE_EPI48_NR, "the shared epilogue reads tiles 48 wide");

/* ---------------------------------------------------------------------------------------
 * Quantiser (AVX-512 F/BW)
 * ------------------------------------------------------------------------------------- */

/* A row's groups are taken 16 at a time, in three passes, so that the groups' work overlaps
 * instead of waiting on one another (per group, the min/max reductions, a division and the
 * rounding are one long dependency chain):
 *   1. each group's min and max: minps/maxps(x, acc) over its vectors (order-independent:
 *      no NaN or -0 ever enters the accumulators, which start at +0; masked-off lanes load
 *      0.0f, which changes neither min(0, .) nor max(0, .)), then a reduction per group;
 *   2. the scale, 1 / scale and zero point of the 16 groups at once, one group per lane,
 *      with the IEEE ops of bge_q8_row_params (range / 255, 255 / range, cvtps2dq of -mn *
 *      inv, clamp), so the same values as the reference's one group at a time;
 *   3. each group's bytes: clamp(cvtps2dq(x * inv) + zp, 0, 255), rounding half to even,
 *      INT32_MIN out of range (quantize_64 below).
 * Byte for byte bge_qu8_quantize__ref; faster than one group at a time with a narrowing
 * store per 16 bytes, through both the batching and the packed store. */
#define QB 16 /* groups per batch: one zmm lane each */

/* The lanes below n (n in 0..16) of a 16-lane mask. */
static inline __mmask16 lanes(int n) { return (__mmask16)((1u << n) - 1u); }

/* q (64) = clamp(cvtps2dq(x (64) * inv) + zp, 0, 255): the int32 values are narrowed with
 * saturation to int16 (packssdw), zp added with saturation (paddsw), then narrowed to u8
 * with saturation (packuswb), which clamps exactly as the scheme does (zp <= 255: what
 * saturates at int16 is far outside [0, 255] either way); one dword permutation puts the
 * 128-bit lanes the packs interleave back in order. One 64-byte store, where a narrowing
 * store per 16 bytes (vpmovusdb) cost more than the rest of the group. */
static inline void quantize_64(const float *x, float inv, int32_t zp, uint8_t *q) {
    const __m512 vinv = _mm512_set1_ps(inv);
    __m512i r[4];
    for (int i = 0; i < 4; i++)
        r[i] = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * i), vinv));
    const __m512i vzp = _mm512_set1_epi16((int16_t)zp);
    const __m512i lo = _mm512_adds_epi16(_mm512_packs_epi32(r[0], r[1]), vzp);
    const __m512i hi = _mm512_adds_epi16(_mm512_packs_epi32(r[2], r[3]), vzp);
    /* dword 4 L + j of the packed bytes holds r[j][4 L .. 4 L + 3]: it goes to dword 4 j + L */
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512((void *)q, _mm512_permutexvar_epi32(order, _mm512_packus_epi16(lo, hi)));
}

/* The same for a short last group, n < 64 (K % 64 != 0, never in the model): masked. */
static void quantize_short(const float *x, int n, float inv, int32_t zp, uint8_t *q) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i vzp = _mm512_set1_epi32(zp), zero = _mm512_setzero_si512();
    for (int k = 0; k < n; k += 16) {
        const __mmask16 m = lanes(n - k < 16 ? n - k : 16);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vinv)), vzp);
        r = _mm512_max_epi32(r, zero); /* then vpmovusdb saturates at 255 */
        _mm512_mask_cvtusepi32_storeu_epi8(q + k, m, r);
    }
}

/* One row: x (K) -> q (Kp), scale (ngroups), zp (ngroups). */
static void quantize_row(const float *x, int K, uint8_t *q, float *scale, int32_t *zp) {
    const int ng = BGE_Q8_NGROUPS(K);
    for (int g0 = 0; g0 < ng; g0 += QB) {
        const int nb = ng - g0 < QB ? ng - g0 : QB;
        float mn[QB] __attribute__((aligned(64))), mx[QB] __attribute__((aligned(64)));
        float inv[QB] __attribute__((aligned(64)));
        int32_t z[QB] __attribute__((aligned(64)));
        for (int b = 0; b < nb; b++) { /* 1 */
            const int k0 = (g0 + b) * BGE_Q8_GROUP;
            const int n = K - k0 < BGE_Q8_GROUP ? K - k0 : BGE_Q8_GROUP;
            __m512 vmn = _mm512_setzero_ps(), vmx = _mm512_setzero_ps();
            for (int k = 0; k < n; k += 16) {
                const __m512 v = _mm512_maskz_loadu_ps(lanes(n - k < 16 ? n - k : 16), x + k0 + k);
                vmn = _mm512_min_ps(v, vmn);
                vmx = _mm512_max_ps(v, vmx);
            }
            mn[b] = _mm512_reduce_min_ps(vmn);
            mx[b] = _mm512_reduce_max_ps(vmx);
        }
        { /* 2: lanes >= nb hold mn = mx = 0, a group of zeros */
            const __mmask16 mb = lanes(nb);
            const __m512 vmn = _mm512_maskz_load_ps(mb, mn), vmx = _mm512_maskz_load_ps(mb, mx);
            const __mmask16 same = _mm512_cmp_ps_mask(vmx, vmn, _CMP_EQ_OQ);
            const __m512 range = _mm512_sub_ps(vmx, vmn);
            const __m512 vinv = _mm512_div_ps(_mm512_set1_ps(255.0f), range);
            const __m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(vmn), _mm512_set1_epi32((int32_t)0x80000000u))); /* -mn */
            __m512i vz = _mm512_cvtps_epi32(_mm512_mul_ps(neg, vinv));
            vz = _mm512_min_epi32(_mm512_max_epi32(vz, _mm512_setzero_si512()),
                                  _mm512_set1_epi32(255));
            _mm512_mask_storeu_ps(scale + g0, mb,
                                  _mm512_mask_blend_ps(same, _mm512_div_ps(range,
                                                       _mm512_set1_ps(255.0f)),
                                                       _mm512_set1_ps(1.0f)));
            _mm512_store_ps(inv, _mm512_maskz_mov_ps((__mmask16)~same, vinv));
            vz = _mm512_maskz_mov_epi32((__mmask16)~same, vz);
            _mm512_store_si512((void *)z, vz);
            _mm512_mask_storeu_epi32(zp + g0, mb, vz);
        }
        for (int b = 0; b < nb; b++) { /* 3 (a group of zeros: inv = 0, zp = 0 gives q = 0) */
            const int k0 = (g0 + b) * BGE_Q8_GROUP;
            const int n = K - k0 < BGE_Q8_GROUP ? K - k0 : BGE_Q8_GROUP;
            if (n == BGE_Q8_GROUP)
                quantize_64(x + k0, inv[b], z[b], q + k0);
            else
                quantize_short(x + k0, n, inv[b], z[b], q + k0);
        }
    }
    memset(q + K, zp[ng - 1], (size_t)(BGE_Q8_KP(K) - K));
}

BGE_Q8_QUANTIZE_SLOT(avx512vnni, quantize_row)

/* ---------------------------------------------------------------------------------------
 * Packing
 * ------------------------------------------------------------------------------------- */

/* Bytes of w_s8 (N, K) packed: header, scales and sums of ceil(N/48)*48 columns per group, then
 * ceil(N/48) panels of Kp x 48 bytes. */
static size_t bge_qs8_packed_size__avx512vnni(int K, int N) {
    return bge_q8_panels_size(K, N, NR, 4);
}

/* The layout of csrc/pack.c with nr = 48, kgroup = 4, s8: panel p, k-quad g, column j,
 * byte r at weights[((p * Kp/4 + g) * 48 + j) * 4 + r] = w_s8[48p + j, 4g + r].          */
static int bge_qs8_pack__avx512vnni(const int8_t *w, const float *w_scale, int K, int N,
                                    void *packed) {
    return bge_q8_pack_panels(w, w_scale, K, N, packed, BGE_Q8_LAYOUT_VNNI, NR, 4);
}

/* ---------------------------------------------------------------------------------------
 * Microkernel
 * ------------------------------------------------------------------------------------- */

/* The k loop both microkernels share: acc[i][j] (int32, 16 lanes: columns 16j ..) = sum over
 * k in [k0, k1) of q[i, k] * panel column (16j + lane, k), i < mr, j < nv, from zero.
 *   q  (mr, Kp) u8 rows, row stride ldq bytes (a multiple of 4); k0, k1 multiples of 4
 *   b  the panel's k-quad k0 / 4 (48 columns x 4 k, 192 bytes); returned at k-quad k1 / 4
 * Always inline, so that acc stays in registers in each instance.                         */
static inline __attribute__((always_inline)) const int8_t *ksums(__m512i acc[MR][NV],
                                                                 const uint8_t *q, size_t ldq,
                                                                 int k0, int k1, const int8_t *b,
                                                                 const int mr, const int nv) {
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) acc[i][j] = _mm512_setzero_si512();
    for (int k = k0; k < k1; k += 4, b += 4 * NR) {
        __m512i bv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) bv[j] = _mm512_loadu_si512((const void *)(b + 64 * j));
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            int32_t a4;
            memcpy(&a4, q + (size_t)i * ldq + k, 4);
            const __m512i a = _mm512_set1_epi32(a4);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, bv[j]);
        }
    }
    return b;
}

/* The raw microkernel (the qu8s8_gemm_i32 slot): tile[i][16j .. 16j+15] = sum_{k < Kp}
 * q[i, k] * panel column (16j ..), i < mr, j < nv, over every k at once.
 *   q     (mr, Kp) u8 rows, row stride ldq bytes (a multiple of 4)
 *   panel (Kp/4, 48, 4) s8, one packed panel
 *   tile  (MR, NR) int32, 64-byte aligned; rows >= mr and vectors >= nv are not written */
static inline __attribute__((always_inline)) void ukernel(const uint8_t *q, size_t ldq, int Kp,
                                                          const int8_t *panel, int32_t *tile,
                                                          const int mr, const int nv) {
    __m512i acc[MR][NV];
    ksums(acc, q, ldq, 0, Kp, panel, mr, nv);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            _mm512_store_si512((void *)(tile + i * NR + 16 * j), acc[i][j]);
}

/* uk_table[mr - 1][nv - 1] */
BGE_UK_TABLE(bge_q8_uk_fn, uk_table, uk, BGE_Q8_UK_DEF, MR)

static void tile_vnni(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                      int32_t *tile) {
    uk_table[mr - 1][(nw + 15) / 16 - 1](q, ldq, Kp, (const int8_t *)panel, tile);
}

/* The grouped microkernel (the qu8s8_gemm slot): ftile[i][16j .. 16j+15] = the fp32 sum
 * over groups of the scheme, before the bias, i < mr, j < nv. Per group of 64 k (16
 * k-quads) the int32 sums are made in 12 zmm; then the zero-point term is added in with one
 * vpdpwssd (colsum fits in int16, and (-zp) & 0xFFFF in the low half of each int32 lane
 * with 0 in the high half multiplies it exactly: acc + (-zp) colsum, as int32), and the
 * result converted, scaled and added into 12 more zmm of fp32 sums, in group order, so that
 * a group's fp32 step can overlap the next group's vpdpbusd. This folder is built with
 * -fno-tree-pre (setup.py): without it, gcc 12 copies all 12 int32 sums out of their
 * registers and back on every k-quad.
 *   scale, zp: row 0 of the tile, row stride ngroups; ws, cs: the panel's column 0 in
 *   group 0, group stride gs; ftile (MR, NR) fp32, 64-byte aligned.                      */
static inline __attribute__((always_inline)) void gukernel(const uint8_t *q, size_t ldq, int Kp,
                                                          const int8_t *panel,
                                                          const float *scale,
                                                          const int32_t *zp, int ngroups,
                                                          const float *ws, const int32_t *cs,
                                                          int gs, float *ftile, const int mr,
                                                          const int nv) {
    __m512 facc[MR][NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) facc[i][j] = _mm512_setzero_ps();
    const int8_t *b = panel;
    for (int g = 0; g < ngroups; g++) {
        const int k0 = g * BGE_Q8_GROUP;
        const int k1 = Kp - k0 < BGE_Q8_GROUP ? Kp : k0 + BGE_Q8_GROUP;
        __m512i acc[MR][NV];
        b = ksums(acc, q, ldq, k0, k1, b, mr, nv);
        __m512 wsv[NV];
        __m512i csv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) {
            wsv[j] = _mm512_loadu_ps(ws + (size_t)g * gs + 16 * j);
            csv[j] = _mm512_loadu_si512((const void *)(cs + (size_t)g * gs + 16 * j));
        }
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m512i nzp = _mm512_set1_epi32((int32_t)(uint16_t)(-zp[(size_t)i * ngroups + g]));
            const __m512 sv = _mm512_set1_ps(scale[(size_t)i * ngroups + g]);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) {
                const __m512i d = _mm512_dpwssd_epi32(acc[i][j], nzp, csv[j]);
                const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sv, wsv[j]));
                facc[i][j] = _mm512_add_ps(facc[i][j], v);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) _mm512_store_ps(ftile + i * NR + 16 * j, facc[i][j]);
}

#define GUK(mr, nv)                                                                          \
    static void guk_##mr##_##nv(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,   \
                                const float *scale, const int32_t *zp, int ngroups,          \
                                const float *ws, const int32_t *cs, int gs, float *ftile) {  \
        gukernel(q, ldq, Kp, panel, scale, zp, ngroups, ws, cs, gs, ftile, mr, nv);          \
    }
/* guk_table[mr - 1][nv - 1] */
BGE_UK_TABLE(bge_q8_guk_fn, guk_table, guk, GUK, MR)

static void gtile_vnni(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                       const float *scale, const int32_t *zp, int ngroups, const float *wscale,
                       const int32_t *colsum, int gs, float *ftile) {
    guk_table[mr - 1][(nw + 15) / 16 - 1](q, ldq, Kp, (const int8_t *)panel, scale, zp,
                                          ngroups, wscale, colsum, gs, ftile);
}

static const bge_q8_gemm_impl impl = {
    .layout = BGE_Q8_LAYOUT_VNNI, .mr = MR, .nr = NR, .kgroup = 4,
    .tile = tile_vnni, .gtile = gtile_vnni, .epilogue = bge_avx512_epilogue_48,
};

/* qu8s8_gemm: out (M, N) = epi(...) from q (M, Kp), scale, zp (M, ngroups) and W packed by
 * bge_qs8_pack__avx512vnni (bias (N); res (M, N) may equal out); qu8s8_gemm_i32: the raw sums. */
BGE_Q8_GEMM_SLOTS(avx512vnni, impl)

/* ---------------------------------------------------------------------------------------
 * vpdpbusd peak loop
 * ------------------------------------------------------------------------------------- */

#define DOT_CHAINS 16

/* iters rounds of DOT_CHAINS independent zmm vpdpbusd chains (64 u8 x s8 products each):
 * enough chains to fill every pipe through its latency. Returns 2 ops per product.      */
static double bge_qu8s8_dot_loop__avx512vnni(long iters) {
    volatile int32_t seed = 1;
    const int32_t s = seed;
    __m512i acc[DOT_CHAINS];
#pragma GCC unroll 16
    for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm512_set1_epi32(s * i);
    const __m512i a = _mm512_set1_epi32(0x01020304 * s), b = _mm512_set1_epi32(0x05F70611 * s);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < DOT_CHAINS; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    }
    __m512i sum = acc[0];
#pragma GCC unroll 16
    for (int i = 1; i < DOT_CHAINS; i++) sum = _mm512_xor_si512(sum, acc[i]);
    seed = _mm512_reduce_add_epi32(sum);
    return 2.0 * 64.0 * DOT_CHAINS * (double)iters;
}

/* ---------------------------------------------------------------------------------------
 * Weight quantisation at load (the qs8_quantize_weights slot)
 * ------------------------------------------------------------------------------------- */

/* One group of n <= 64 weights, as ref/qgemm.c's quantize_weight_group, byte for byte:
 * the max of |w| on the bit patterns (sign cleared), the same scalar scale, then per lane
 * the correctly rounded division, rint by adding and subtracting 1.5 * 2^23 (nearest
 * even), the clamp to [-127, 127], and a truncating narrow (exact: the values are whole).
 * Returns 0 on a non-finite value. */
static int qweight_group(const float *w, int n, int8_t *q, float *scale) {
    const __m512i abs = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i top = _mm512_setzero_si512();
    for (int k = 0; k < n; k += 16) {
        const __mmask16 m = lanes(n - k < 16 ? n - k : 16);
        const __m512i b = _mm512_maskz_loadu_epi32(m, w + k);
        top = _mm512_max_epi32(top, _mm512_and_si512(b, abs));
    }
    if (!bge_q8_weight_group_scale(w, n, n, _mm512_reduce_max_epi32(top), scale)) return 0;
    const float s = *scale;
    const __m512 vs = _mm512_set1_ps(s), magic = _mm512_set1_ps(12582912.0f);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int k = 0; k < n; k += 16) {
        const __mmask16 m = lanes(n - k < 16 ? n - k : 16);
        const __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, w + k), vs);
        const __m512 r = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
        const __m512 c = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        _mm512_mask_cvtepi32_storeu_epi8(q + k, m, _mm512_cvttps_epi32(c));
    }
    return 1;
}

/* w (N, K) -> w_s8 (N, K), w_scale (N, ngroups): bge_qs8_quantize_weights (bge.h), byte for
 * byte; rows split among threads. */
BGE_Q8_QUANTIZE_WEIGHTS_SLOT(avx512vnni, qweight_group)

void bge_overlay_avx512vnni_qgemm(bge_kernels *t) {
    BGE_SET_Q8_QUANTIZERS(t, avx512vnni);
    BGE_SET_Q8_GEMM(t, avx512vnni, SUFFIX);
}
