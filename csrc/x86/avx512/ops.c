/*
 * x86/avx512/ops.c: every fp32 kernel of the AVX-512 level except the GEMM: LayerNorm,
 * softmax, GELU, self-attention over a ragged batch, embeddings, pooling, L2 norm.
 * Compiled, like every file of this folder, with AVX-512 F/BW/DQ/VL + FMA flags.
 *
 * Each kernel has the contract of its slot in bge.h and rejects exactly what its reference
 * (csrc/ref/) rejects, with the same status. Rows past a multiple of 16 are handled with
 * lane masks (maskz loads, masked stores), so no byte outside an argument is read or written.
 *
 * Numerics
 *   - Reductions run in one fixed order per row (16 lanes in column order, then a fixed
 *     tree), decided by the row's length only: never by the batch, the block or nthreads.
 *   - LayerNorm, the softmax slot, L2 norm and the mean pool accumulate in double, like the
 *     references; exp and GELU are the vector approximations of vmath.h (bounds there).
 *   - Attention: scores by FMA chains over d ascending, softmax with a max shift, exp of
 *     vmath.h and a float sum (16 lanes in key order, then a fixed tree: at most L / 16 + 4
 *     terms per rounding chain); P V by FMA chains over keys ascending, times 1 / sum at
 *     the end.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "avx512.h"
#include "../avx2/transpose.h" /* transpose8 */
#include "vmath.h"

#define BGE_INLINE static inline __attribute__((always_inline))

/* The lanes below n (n in 0..16) of a 16-lane mask. */
BGE_INLINE __mmask16 tail_mask(int n) { return (__mmask16)((1u << n) - 1u); }

/* Sum of the 8 doubles of v, in a fixed order. */
BGE_INLINE double hsum_pd(__m512d v) {
    const __m256d a = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

/* The floats of x (16 lanes) as two vectors of 8 doubles. */
BGE_INLINE __m512d lo_pd(__m512 x) { return _mm512_cvtps_pd(_mm512_castps512_ps256(x)); }
BGE_INLINE __m512d hi_pd(__m512 x) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}
BGE_INLINE __m512 join_ps(__m512d lo, __m512d hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
}

/* ---------------------------------------------------------------------------------------
 * LayerNorm
 * ------------------------------------------------------------------------------------- */

/* x (T, C) -> out (T, C); gamma, beta (C); out may equal x. Per row, in double: the mean,
 * the biased variance of (x - mean) (two passes), then (float)((x - mean) * rstd) * gamma
 * + beta in float (one FMA). Sums run in 4 vectors of 8 doubles (columns c mod 32), then a
 * fixed tree. Rows are split among threads; each row is one thread's. */
static int bge_f32_layernorm__avx512(const float *x, const float *gamma, const float *beta,
                                     float eps, float *out, int T, int C, int nthreads) {
    if (!x || !gamma || !beta || !out || T < 1 || C < 1 || nthreads < 1 || !(eps >= 0.0f))
        return BGE_ERR_ARG;
    const int Cv = C & ~15;
    const __mmask16 mt = tail_mask(C - Cv);
    const __mmask8 mt0 = (__mmask8)(mt & 0xFF), mt1 = (__mmask8)(mt >> 8);
/* rows in chunks of 16 taken dynamically: a thread the OS delays does not hold the others
 * back (rows are independent: the bytes never depend on who computes them); no more
 * threads than chunks */
#pragma omp parallel for num_threads(bge_row_team(T, 16, nthreads)) schedule(dynamic, 16)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *yr = out + (size_t)t * C;
        /* s[2 k + h]: the columns 16 k + 8 h .. + 7 of each 32 (k = 0, 1; h: half) */
        __m512d s[4];
        for (int i = 0; i < 4; i++) s[i] = _mm512_setzero_pd();
        int c = 0;
        for (; c + 32 <= Cv; c += 32)
            for (int k = 0; k < 2; k++) {
                const __m512 v = _mm512_loadu_ps(xr + c + 16 * k);
                s[2 * k] = _mm512_add_pd(s[2 * k], lo_pd(v));
                s[2 * k + 1] = _mm512_add_pd(s[2 * k + 1], hi_pd(v));
            }
        if (c < Cv) {
            const __m512 v = _mm512_loadu_ps(xr + c);
            s[0] = _mm512_add_pd(s[0], lo_pd(v));
            s[1] = _mm512_add_pd(s[1], hi_pd(v));
        }
        if (mt) {
            const __m512 v = _mm512_maskz_loadu_ps(mt, xr + Cv);
            s[2] = _mm512_add_pd(s[2], lo_pd(v));
            s[3] = _mm512_add_pd(s[3], hi_pd(v));
        }
        const double mean =
            hsum_pd(_mm512_add_pd(_mm512_add_pd(s[0], s[1]), _mm512_add_pd(s[2], s[3]))) / C;
        const __m512d vm = _mm512_set1_pd(mean);
        for (int i = 0; i < 4; i++) s[i] = _mm512_setzero_pd();
        for (c = 0; c + 32 <= Cv; c += 32)
            for (int k = 0; k < 2; k++) {
                const __m512 v = _mm512_loadu_ps(xr + c + 16 * k);
                const __m512d d0 = _mm512_sub_pd(lo_pd(v), vm), d1 = _mm512_sub_pd(hi_pd(v), vm);
                s[2 * k] = _mm512_fmadd_pd(d0, d0, s[2 * k]);
                s[2 * k + 1] = _mm512_fmadd_pd(d1, d1, s[2 * k + 1]);
            }
        if (c < Cv) {
            const __m512 v = _mm512_loadu_ps(xr + c);
            const __m512d d0 = _mm512_sub_pd(lo_pd(v), vm), d1 = _mm512_sub_pd(hi_pd(v), vm);
            s[0] = _mm512_fmadd_pd(d0, d0, s[0]);
            s[1] = _mm512_fmadd_pd(d1, d1, s[1]);
        }
        if (mt) {
            const __m512 v = _mm512_maskz_loadu_ps(mt, xr + Cv);
            /* the masked-off lanes hold 0 - mean: zero their squares */
            const __m512d d0 = _mm512_maskz_sub_pd(mt0, lo_pd(v), vm);
            const __m512d d1 = _mm512_maskz_sub_pd(mt1, hi_pd(v), vm);
            s[2] = _mm512_fmadd_pd(d0, d0, s[2]);
            s[3] = _mm512_fmadd_pd(d1, d1, s[3]);
        }
        const double var =
            hsum_pd(_mm512_add_pd(_mm512_add_pd(s[0], s[1]), _mm512_add_pd(s[2], s[3]))) / C;
        const __m512d vr = _mm512_set1_pd(1.0 / sqrt(var + (double)eps));
        for (c = 0; c < Cv; c += 16) {
            const __m512 v = _mm512_loadu_ps(xr + c);
            const __m512 h = join_ps(_mm512_mul_pd(_mm512_sub_pd(lo_pd(v), vm), vr),
                                     _mm512_mul_pd(_mm512_sub_pd(hi_pd(v), vm), vr));
            _mm512_storeu_ps(yr + c, _mm512_fmadd_ps(h, _mm512_loadu_ps(gamma + c),
                                                     _mm512_loadu_ps(beta + c)));
        }
        if (mt) {
            const __m512 v = _mm512_maskz_loadu_ps(mt, xr + Cv);
            const __m512 h = join_ps(_mm512_mul_pd(_mm512_sub_pd(lo_pd(v), vm), vr),
                                     _mm512_mul_pd(_mm512_sub_pd(hi_pd(v), vm), vr));
            _mm512_mask_storeu_ps(yr + Cv, mt,
                                  _mm512_fmadd_ps(h, _mm512_maskz_loadu_ps(mt, gamma + Cv),
                                                  _mm512_maskz_loadu_ps(mt, beta + Cv)));
        }
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Softmax (one row at a time; attention below has its own, fused)
 * ------------------------------------------------------------------------------------- */

/* row (C) in place: e = exp(row - max) stored, sum of e in double; returns 1 / sum. */
BGE_INLINE float exp_shift_sum(float *row, int C) {
    const int Cv = C & ~15;
    const __mmask16 mt = tail_mask(C - Cv);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int c = 0; c < Cv; c += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + c));
    if (mt) mx = _mm512_mask_max_ps(mx, mt, mx, _mm512_maskz_loadu_ps(mt, row + Cv));
    const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int c = 0; c < Cv; c += 16) {
        const __m512 e = bge_avx512_exp_ps(_mm512_sub_ps(_mm512_loadu_ps(row + c), vmx));
        _mm512_storeu_ps(row + c, e);
        s0 = _mm512_add_pd(s0, lo_pd(e));
        s1 = _mm512_add_pd(s1, hi_pd(e));
    }
    if (mt) {
        const __m512 e = _mm512_maskz_mov_ps(
            mt, bge_avx512_exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mt, row + Cv), vmx)));
        _mm512_mask_storeu_ps(row + Cv, mt, e);
        s0 = _mm512_add_pd(s0, lo_pd(e));
        s1 = _mm512_add_pd(s1, hi_pd(e));
    }
    return (float)(1.0 / hsum_pd(_mm512_add_pd(s0, s1)));
}

/* x (R, C), each row replaced by its softmax: exp(x - max) / sum. */
static int bge_f32_softmax__avx512(float *x, int R, int C) {
    if (!x || R < 1 || C < 1) return BGE_ERR_ARG;
    const int Cv = C & ~15;
    const __mmask16 mt = tail_mask(C - Cv);
    for (int r = 0; r < R; r++) {
        float *row = x + (size_t)r * C;
        const __m512 inv = _mm512_set1_ps(exp_shift_sum(row, C));
        for (int c = 0; c < Cv; c += 16)
            _mm512_storeu_ps(row + c, _mm512_mul_ps(_mm512_loadu_ps(row + c), inv));
        if (mt)
            _mm512_mask_storeu_ps(row + Cv, mt,
                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(mt, row + Cv), inv));
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * GELU
 * ------------------------------------------------------------------------------------- */

/* x (n), in place: 0.5 x (1 + erf(x / sqrt 2)), bge_avx512_gelu_ps (bound in vmath.h). */
static int bge_f32_gelu__avx512(float *x, size_t n) {
    if (!x || n < 1) return BGE_ERR_ARG;
    const size_t nv = n & ~(size_t)15;
    for (size_t i = 0; i < nv; i += 16)
        _mm512_storeu_ps(x + i, bge_avx512_gelu_ps(_mm512_loadu_ps(x + i)));
    const __mmask16 mt = tail_mask((int)(n - nv));
    if (mt)
        _mm512_mask_storeu_ps(x + nv, mt, bge_avx512_gelu_ps(_mm512_maskz_loadu_ps(mt, x + nv)));
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention
 *
 * One job is one (text, head): L tokens, head width D. Its scratch (one per thread):
 *   kp (Lp / 16, D, 16): K of the head, transposed into panels of 16 keys (zero past L,
 *                        to a multiple of 8), Lp = L rounded up to 16
 *   vp (L, D):           V of the head, its rows copied next to each other, for texts of
 *                        at least VCOPY_MIN tokens (shorter ones read V from qkv)
 *   s  (QB, Lp):         scores, then exp(score - max), of one block of QB query rows
 * For each block of up to QB query rows:
 *   1. s = scale * Q K^T, tiles of QB rows x 32 keys (2 panels) held in 16 zmm; each score
 *      is one FMA chain over d = 0 .. D-1. Each panel load serves QB rows. A last panel
 *      with at most 8 keys is computed in ymm, at half the cost.
 *      The tile also keeps each row's running max (16 lanes) over the keys < L.
 *   2. per row: e = exp(s - max) in place, sum of e in float, inv = 1 / sum.
 *   3. out = inv * (e V), tiles of QB rows x 32 columns of the head; each element is one
 *      FMA chain over keys 0 .. L-1; each row of V serves QB rows. In qkv the rows of a
 *      head's V are 3H floats apart, a new 4 KB page for each key, which the hardware
 *      prefetchers do not follow; copied into vp they are one 64-byte-aligned run. The copy
 *      pays for long texts and not for short ones (hence VCOPY_MIN; docs/performance.md).
 *      The AVX2 level copies V too.
 * The arithmetic of a row depends only on its text (L, D): not on the block it falls in, the
 * batch, nor the thread that runs it.
 * ------------------------------------------------------------------------------------- */

#define QB 8         /* query rows per block                              */
#define VCOPY_MIN 64 /* texts of at least this many tokens copy V into vp */

static size_t round16(size_t v) { return (v + 15) & ~(size_t)15; }

/* Floats of one thread's scratch for texts of at most max_len tokens, head width D: kp, vp
 * and s as above, each 64-byte aligned within the thread's part (16 floats of slack). */
static size_t thread_scratch(int max_len, int D) {
    const size_t Lp = round16((size_t)max_len);
    return 2 * round16(Lp * (size_t)D) + QB * Lp + 16;
}

/* k: the head's K of the text, rows ld floats apart, L rows of D floats.
 * kp (Lp / 16, D, 16): kp[p][d][i] = k[16 p + i][d] for 16 p + i < L, 0 up to the next
 * multiple of 8 (the lanes past it, in a last panel of at most 8 keys, are left unwritten:
 * only the ymm half tile reads that panel). Blocks of 8 keys x 8 dims (masked past L and D)
 * are transposed in registers. */
static void pack_k(const float *k, int ld, int L, int D, float *kp) {
    for (int j0 = 0; j0 < L; j0 += 8) {
        float *panel = kp + (size_t)(j0 & ~15) * D + (j0 & 8);
        const int nj = L - j0 < 8 ? L - j0 : 8;
        for (int d0 = 0; d0 < D; d0 += 8) {
            const int w = D - d0 < 8 ? D - d0 : 8;
            const __mmask8 m = (__mmask8)((1u << w) - 1u);
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = i < nj ? _mm256_maskz_loadu_ps(m, k + (size_t)(j0 + i) * ld + d0)
                              : _mm256_setzero_ps();
            transpose8(r);
            for (int d = 0; d < w; d++) _mm256_store_ps(panel + (size_t)(d0 + d) * 16, r[d]);
        }
    }
}

/* Scores of R query rows against NF whole panels of 16 keys, then, with HALF, the first 8
 * keys of one more panel (in ymm: a last panel with at most 8 keys costs half):
 *   s[r][16 f + i] = scale * q_r . k_(16 f + i), f < NF (+ 1 with HALF, i < 8 there);
 *   mx[r] = max(mx[r], the scores of the lanes set in mf[f] / mh, i.e. keys < L).
 * q: R query rows, ld floats apart (D each); kp: the tile's first panel (D, 16), the others
 * follow; s: (R, lds). R, NF, HALF are constants after inlining. Every score is the same FMA
 * chain over d = 0 .. D-1, in zmm or in ymm. */
BGE_INLINE void qk_tile(const int R, const int NF, const int HALF, const float *q, int ld,
                        const float *kp, int D, float scale, float *s, int lds, __m512 *mx,
                        const __mmask16 *mf, __mmask16 mh) {
    __m512 acc[QB][2];
    __m256 acch[QB];
    for (int r = 0; r < R; r++) {
        for (int f = 0; f < NF; f++) acc[r][f] = _mm512_setzero_ps();
        if (HALF) acch[r] = _mm256_setzero_ps();
    }
    const float *kh = kp + (size_t)16 * D * NF;
    for (int d = 0; d < D; d++) {
        __m512 b[2];
        for (int f = 0; f < NF; f++) b[f] = _mm512_load_ps(kp + (size_t)16 * D * f + 16 * d);
        const __m256 bh = HALF ? _mm256_load_ps(kh + 16 * d) : _mm256_setzero_ps();
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(q[(size_t)r * ld + d]);
            for (int f = 0; f < NF; f++) acc[r][f] = _mm512_fmadd_ps(a, b[f], acc[r][f]);
            if (HALF) acch[r] = _mm256_fmadd_ps(_mm512_castps512_ps256(a), bh, acch[r]);
        }
    }
    const __m512 vs = _mm512_set1_ps(scale);
    for (int r = 0; r < R; r++) {
        float *sr = s + (size_t)r * lds;
        __m512 m = mx[r];
        for (int f = 0; f < NF; f++) {
            const __m512 y = _mm512_mul_ps(acc[r][f], vs);
            _mm512_store_ps(sr + 16 * f, y);
            m = _mm512_mask_max_ps(m, mf[f], m, y);
        }
        if (HALF) {
            const __m256 y = _mm256_mul_ps(acch[r], _mm512_castps512_ps256(vs));
            _mm256_store_ps(sr + 16 * NF, y);
            m = _mm512_mask_max_ps(m, mh, m, _mm512_castps256_ps512(y)); /* mh: lanes < 8 */
        }
        mx[r] = m;
    }
}

/* row (L) in place: e = exp(row - max(mx lanes)) stored, sum of e in float (16 lanes in key
 * order, then a fixed tree); returns 1 / sum. */
BGE_INLINE float softmax_row(float *row, int L, __m512 mx) {
    const int Lv = L & ~15;
    const __mmask16 mt = tail_mask(L - Lv);
    const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int c = 0; c < Lv; c += 16) {
        const __m512 e = bge_avx512_exp_ps(_mm512_sub_ps(_mm512_load_ps(row + c), vmx));
        _mm512_store_ps(row + c, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (mt) {
        const __m512 e = _mm512_maskz_mov_ps(
            mt, bge_avx512_exp_ps(_mm512_sub_ps(_mm512_maskz_load_ps(mt, row + Lv), vmx)));
        _mm512_mask_store_ps(row + Lv, mt, e);
        sum = _mm512_add_ps(sum, e);
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

/* out[r][0 : w] = inv[r] * sum_j e[r][j] v_j[0 : w], j = 0 .. L-1 ascending, r < R, w <= 32
 * (NV = 1 or 2 vectors; with MASKED, lanes past w masked by m0, m1, else w = 16 NV and plain
 * loads). v: L rows ld floats apart; e: (R, lds); out: R rows ldo floats apart. R, NV,
 * MASKED are constants after inlining. */
BGE_INLINE void pv_tile(const int R, const int NV, const int MASKED, const float *e, int lds,
                        const float *v, int ld, int L, const float *inv, float *out, int ldo,
                        __mmask16 m0, __mmask16 m1) {
    __m512 acc[QB][2];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NV; c++) acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < L; j++) {
        const float *vj = v + (size_t)j * ld;
        const __m512 b0 = MASKED ? _mm512_maskz_loadu_ps(m0, vj) : _mm512_loadu_ps(vj);
        const __m512 b1 = NV < 2 ? b0
                          : MASKED ? _mm512_maskz_loadu_ps(m1, vj + 16)
                                   : _mm512_loadu_ps(vj + 16);
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(e[(size_t)r * lds + j]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            if (NV > 1) acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++) {
        const __m512 vi = _mm512_set1_ps(inv[r]);
        float *o = out + (size_t)r * ldo;
        for (int c = 0; c < NV; c++) {
            const __m512 y = _mm512_mul_ps(acc[r][c], vi);
            if (MASKED)
                _mm512_mask_storeu_ps(o + 16 * c, c ? m1 : m0, y);
            else
                _mm512_storeu_ps(o + 16 * c, y);
        }
    }
}

/* One block of R query rows of one (text, head): q as in attend_one (rows ld floats apart),
 * v its V (rows ldv floats apart), out the block's first output row (rows ldo apart). */
BGE_INLINE void attend_rows(const int R, const float *q, int ld, const float *v, int ldv, int L,
                            int D, float scale, const float *kp, float *s, int lds, float *out,
                            int ldo) {
    const int np = (L + 15) >> 4;
    const __mmask16 mlast = tail_mask(L - 16 * (np - 1)); /* the keys of the last panel */
    const int half = L - 16 * (np - 1) <= 8;              /* ... fit in its first 8 lanes */
    const int nf = half ? np - 1 : np;                    /* panels computed whole */
    const __mmask16 full2[2] = {0xFFFF, 0xFFFF}, last2[2] = {0xFFFF, mlast};
    const __mmask16 full1[1] = {0xFFFF}, last1[1] = {mlast};
    __m512 mx[QB];
    for (int r = 0; r < R; r++) mx[r] = _mm512_set1_ps(-INFINITY);
    int p = 0;
    for (; p + 2 <= nf; p += 2)
        qk_tile(R, 2, 0, q, ld, kp + (size_t)p * 16 * D, D, scale, s + 16 * p, lds, mx,
                p + 2 == np ? last2 : full2, 0);
    if (p < nf) { /* one whole panel left: p = nf - 1 */
        if (half)
            qk_tile(R, 1, 1, q, ld, kp + (size_t)p * 16 * D, D, scale, s + 16 * p, lds, mx,
                    full1, mlast);
        else
            qk_tile(R, 1, 0, q, ld, kp + (size_t)p * 16 * D, D, scale, s + 16 * p, lds, mx,
                    last1, 0);
    } else if (half) {
        qk_tile(R, 0, 1, q, ld, kp + (size_t)p * 16 * D, D, scale, s + 16 * p, lds, mx, full1,
                mlast);
    }
    float inv[QB];
    for (int r = 0; r < R; r++) inv[r] = softmax_row(s + (size_t)r * lds, L, mx[r]);
    for (int d0 = 0; d0 < D; d0 += 32) {
        const int w = D - d0 < 32 ? D - d0 : 32;
        if (w == 32)
            pv_tile(R, 2, 0, s, lds, v + d0, ldv, L, inv, out + d0, ldo, 0xFFFF, 0xFFFF);
        else if (w > 16)
            pv_tile(R, 2, 1, s, lds, v + d0, ldv, L, inv, out + d0, ldo, 0xFFFF,
                    tail_mask(w - 16));
        else if (w == 16)
            pv_tile(R, 1, 0, s, lds, v + d0, ldv, L, inv, out + d0, ldo, 0xFFFF, 0);
        else
            pv_tile(R, 1, 1, s, lds, v + d0, ldv, L, inv, out + d0, ldo, tail_mask(w), 0);
    }
}

/* One (text, head): q, k, v point at the text's first token inside qkv, column of the head;
 * rows are ld floats apart. out likewise, rows ldo apart. work: one thread's scratch. */
static void attend_one(const float *q, const float *k, const float *v, int ld, int L, int D,
                       float scale, float *work, float *out, int ldo) {
    const int lds = (int)round16((size_t)L);
    float *kp = work;
    float *vp = work + round16((size_t)lds * D);
    float *s = vp + round16((size_t)lds * D);
    pack_k(k, ld, L, D, kp);
    int ldv = ld;
    if (L >= VCOPY_MIN) {
        for (int j = 0; j < L; j++)
            memcpy(vp + (size_t)j * D, v + (size_t)j * ld, (size_t)D * sizeof(float));
        v = vp;
        ldv = D;
    }
    int r0 = 0;
    for (; r0 + QB <= L; r0 += QB)
        attend_rows(QB, q + (size_t)r0 * ld, ld, v, ldv, L, D, scale, kp, s, lds,
                    out + (size_t)r0 * ldo, ldo);
    const float *qr = q + (size_t)r0 * ld;
    float *orow = out + (size_t)r0 * ldo;
    switch (L - r0) {
    case 7: attend_rows(7, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    case 6: attend_rows(6, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    case 5: attend_rows(5, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    case 4: attend_rows(4, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    case 3: attend_rows(3, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    case 2: attend_rows(2, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    case 1: attend_rows(1, qr, ld, v, ldv, L, D, scale, kp, s, lds, orow, ldo); break;
    default: break;
    }
}

/* The two attention slots: the shared driver (csrc/attention_driver.c) runs attend_one
 * on every (text, head), each thread's scratch 64-byte aligned. */
BGE_ATTENTION_SLOTS(avx512, attend_one, thread_scratch, 16)

/* ---------------------------------------------------------------------------------------
 * Embeddings, pooling, L2 norm
 * ------------------------------------------------------------------------------------- */

/* out[t] = (word[ids[t]] + type[0]) + pos[t - offsets[text of t]], the reference's order, so
 * the result is bit-identical to it. ids (T); offsets (n + 1); word (vocab, C);
 * pos (max_pos, C); type (>= 1, C); out (T, C). */
static int bge_f32_embed__avx512(const int32_t *ids, const int32_t *offsets, int n,
                                 const float *word, int vocab, const float *pos, int max_pos,
                                 const float *type, float *out, int C) {
    if (bge_check_embed_args(ids, offsets, n, word, vocab, pos, max_pos, type, out, C) != BGE_OK)
        return BGE_ERR_ARG;
    const int Cv = C & ~15;
    const __mmask16 mt = tail_mask(C - Cv);
    for (int i = 0; i < n; i++) {
        for (int t = offsets[i]; t < offsets[i + 1]; t++) {
            const float *w = word + (size_t)ids[t] * C;
            const float *p = pos + (size_t)(t - offsets[i]) * C;
            float *o = out + (size_t)t * C;
            for (int c = 0; c < Cv; c += 16)
                _mm512_storeu_ps(o + c, _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(w + c),
                                                                    _mm512_loadu_ps(type + c)),
                                                      _mm512_loadu_ps(p + c)));
            if (mt)
                _mm512_mask_storeu_ps(
                    o + Cv, mt,
                    _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(mt, w + Cv),
                                                _mm512_maskz_loadu_ps(mt, type + Cv)),
                                  _mm512_maskz_loadu_ps(mt, p + Cv)));
        }
    }
    return BGE_OK;
}

/* h (T, C); offsets (n + 1), every text >= 1 token; out (n, C): the CLS row, or the mean
 * (double sum in token order, divided by L in double, as the reference: bit-identical). */
static int bge_f32_pool__avx512(const float *h, const int32_t *offsets, int n, int C, int mode,
                                float *out) {
    if (bge_check_pool_args(h, offsets, n, C, mode, out) != BGE_OK) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++) {
        const int t0 = offsets[i], L = offsets[i + 1] - offsets[i];
        float *o = out + (size_t)i * C;
        if (mode == BGE_POOL_CLS) {
            memcpy(o, h + (size_t)t0 * C, (size_t)C * sizeof(float));
            continue;
        }
        const __m512d vl = _mm512_set1_pd((double)L);
        for (int c0 = 0; c0 < C; c0 += 64) { /* 64 columns: 8 accumulators of 8 doubles */
            __mmask16 m[4];
            for (int k = 0; k < 4; k++) {
                const int w = C - c0 - 16 * k;
                m[k] = w >= 16 ? (__mmask16)0xFFFF : w > 0 ? tail_mask(w) : 0;
            }
            __m512d acc[8];
            for (int k = 0; k < 8; k++) acc[k] = _mm512_setzero_pd();
            for (int t = 0; t < L; t++) {
                const float *row = h + (size_t)(t0 + t) * C + c0;
                for (int k = 0; k < 4; k++) {
                    const __m512 v = _mm512_maskz_loadu_ps(m[k], row + 16 * k);
                    acc[2 * k] = _mm512_add_pd(acc[2 * k], lo_pd(v));
                    acc[2 * k + 1] = _mm512_add_pd(acc[2 * k + 1], hi_pd(v));
                }
            }
            for (int k = 0; k < 4; k++)
                if (m[k])
                    _mm512_mask_storeu_ps(o + c0 + 16 * k, m[k],
                                          join_ps(_mm512_div_pd(acc[2 * k], vl),
                                                  _mm512_div_pd(acc[2 * k + 1], vl)));
        }
    }
    return BGE_OK;
}

/* x (n, C), each row times 1 / ||row|| (sum of squares in double); a zero row stays zero. */
static int bge_f32_l2norm__avx512(float *x, int n, int C) {
    if (!x || n < 1 || C < 1) return BGE_ERR_ARG;
    const int Cv = C & ~15;
    const __mmask16 mt = tail_mask(C - Cv);
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * C;
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        for (int c = 0; c < Cv; c += 16) {
            const __m512 v = _mm512_loadu_ps(row + c);
            const __m512d a = lo_pd(v), b = hi_pd(v);
            s0 = _mm512_fmadd_pd(a, a, s0);
            s1 = _mm512_fmadd_pd(b, b, s1);
        }
        if (mt) {
            const __m512 v = _mm512_maskz_loadu_ps(mt, row + Cv);
            const __m512d a = lo_pd(v), b = hi_pd(v);
            s0 = _mm512_fmadd_pd(a, a, s0);
            s1 = _mm512_fmadd_pd(b, b, s1);
        }
        const double ss = hsum_pd(_mm512_add_pd(s0, s1));
        if (ss == 0.0) continue;
        const __m512d inv = _mm512_set1_pd(1.0 / sqrt(ss));
        for (int c = 0; c < Cv; c += 16) {
            const __m512 v = _mm512_loadu_ps(row + c);
            _mm512_storeu_ps(row + c, join_ps(_mm512_mul_pd(lo_pd(v), inv),
                                              _mm512_mul_pd(hi_pd(v), inv)));
        }
        if (mt) {
            const __m512 v = _mm512_maskz_loadu_ps(mt, row + Cv);
            _mm512_mask_storeu_ps(row + Cv, mt, join_ps(_mm512_mul_pd(lo_pd(v), inv),
                                                        _mm512_mul_pd(hi_pd(v), inv)));
        }
    }
    return BGE_OK;
}

void bge_overlay_avx512_ops(bge_kernels *t) {
    BGE_SET_F32_OPS(t, avx512);
}
