/*
 * x86/avx2/ops.c: every fp32 kernel of the AVX2 level except the GEMM: LayerNorm, softmax,
 * GELU, self-attention over a ragged batch, embeddings, pooling, L2 norm.
 * Compiled, like every file of this folder, with AVX2 + FMA (+ F16C) flags.
 *
 * Each kernel has the contract of its slot in bge.h and rejects exactly what its reference
 * (csrc/ref/) rejects, with the same status. Rows past a multiple of 8 are handled with
 * vmaskmovps loads and stores (which never fault on the masked-off lanes), so no byte outside
 * an argument is read or written.
 *
 * Numerics: as x86/avx512/ops.c, with 8 lanes.
 *   - Reductions run in one fixed order per row (8 lanes in column order, then a fixed
 *     tree), decided by the row's length only: never by the batch, the block or nthreads.
 *   - LayerNorm, the softmax slot, L2 norm and the mean pool accumulate in double, like the
 *     references; exp and GELU are the vector approximations of vmath.h (bounds there).
 *   - Attention: scores by FMA chains over d ascending, softmax with a max shift, exp of
 *     vmath.h and a float sum (8 lanes in key order, then a fixed tree: at most L / 8 + 3
 *     terms per rounding chain); P V by FMA chains over keys ascending, times 1 / sum at
 *     the end.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "avx2.h"
#include "transpose.h"
#include "vmath.h"

#define BGE_INLINE static inline __attribute__((always_inline))

/* Lane masks: tail_mask(n) has its lanes below n (n in 0..8) set. */
static const int32_t mask_src[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
BGE_INLINE __m256i tail_mask(int n) {
    return _mm256_loadu_si256((const __m256i *)(mask_src + 8 - n));
}

/* Sum of the 4 doubles of v, in a fixed order. */
BGE_INLINE double hsum_pd(__m256d v) {
    const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

/* Max of the 8 floats of v. */
BGE_INLINE float hmax_ps(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* The floats of x (8 lanes) as two vectors of 4 doubles, and back. */
BGE_INLINE __m256d lo_pd(__m256 x) { return _mm256_cvtps_pd(_mm256_castps256_ps128(x)); }
BGE_INLINE __m256d hi_pd(__m256 x) { return _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)); }
BGE_INLINE __m256 join_ps(__m256d lo, __m256d hi) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi),
                                1);
}

/* ---------------------------------------------------------------------------------------
 * LayerNorm
 * ------------------------------------------------------------------------------------- */

/* x (T, C) -> out (T, C); gamma, beta (C); out may equal x. Per row, in double: the mean,
 * the biased variance of (x - mean) (two passes), then (float)((x - mean) * rstd) * gamma
 * + beta in float (one FMA). Rows are split among threads; each row is one thread's. */
static int bge_f32_layernorm__avx2(const float *x, const float *gamma, const float *beta,
                                   float eps, float *out, int T, int C, int nthreads) {
    if (!x || !gamma || !beta || !out || T < 1 || C < 1 || nthreads < 1 || !(eps >= 0.0f))
        return BGE_ERR_ARG;
    const int Cv = C & ~7, rem = C - Cv;
    const __m256i mt = tail_mask(rem);
    /* the tail's masked-off lanes: zeroed in (x - mean)^2 */
    const __m256d m0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(mt)));
    const __m256d m1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(mt, 1)));
/* rows in chunks of 16 taken dynamically, no more threads than chunks (see the AVX-512
 * LayerNorm) */
#pragma omp parallel for num_threads(bge_row_team(T, 16, nthreads)) schedule(dynamic, 16)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *yr = out + (size_t)t * C;
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
        for (int c = 0; c < Cv; c += 8) {
            const __m256 v = _mm256_loadu_ps(xr + c);
            s0 = _mm256_add_pd(s0, lo_pd(v));
            s1 = _mm256_add_pd(s1, hi_pd(v));
        }
        if (rem) {
            const __m256 v = _mm256_maskload_ps(xr + Cv, mt);
            s0 = _mm256_add_pd(s0, lo_pd(v));
            s1 = _mm256_add_pd(s1, hi_pd(v));
        }
        const double mean = hsum_pd(_mm256_add_pd(s0, s1)) / C;
        const __m256d vm = _mm256_set1_pd(mean);
        s0 = _mm256_setzero_pd();
        s1 = _mm256_setzero_pd();
        for (int c = 0; c < Cv; c += 8) {
            const __m256 v = _mm256_loadu_ps(xr + c);
            const __m256d d0 = _mm256_sub_pd(lo_pd(v), vm), d1 = _mm256_sub_pd(hi_pd(v), vm);
            s0 = _mm256_fmadd_pd(d0, d0, s0);
            s1 = _mm256_fmadd_pd(d1, d1, s1);
        }
        if (rem) {
            const __m256 v = _mm256_maskload_ps(xr + Cv, mt);
            const __m256d d0 = _mm256_and_pd(_mm256_sub_pd(lo_pd(v), vm), m0);
            const __m256d d1 = _mm256_and_pd(_mm256_sub_pd(hi_pd(v), vm), m1);
            s0 = _mm256_fmadd_pd(d0, d0, s0);
            s1 = _mm256_fmadd_pd(d1, d1, s1);
        }
        const double rstd = 1.0 / sqrt(hsum_pd(_mm256_add_pd(s0, s1)) / C + (double)eps);
        const __m256d vr = _mm256_set1_pd(rstd);
        for (int c = 0; c < Cv; c += 8) {
            const __m256 v = _mm256_loadu_ps(xr + c);
            const __m256 h = join_ps(_mm256_mul_pd(_mm256_sub_pd(lo_pd(v), vm), vr),
                                     _mm256_mul_pd(_mm256_sub_pd(hi_pd(v), vm), vr));
            _mm256_storeu_ps(yr + c, _mm256_fmadd_ps(h, _mm256_loadu_ps(gamma + c),
                                                     _mm256_loadu_ps(beta + c)));
        }
        if (rem) {
            const __m256 v = _mm256_maskload_ps(xr + Cv, mt);
            const __m256 h = join_ps(_mm256_mul_pd(_mm256_sub_pd(lo_pd(v), vm), vr),
                                     _mm256_mul_pd(_mm256_sub_pd(hi_pd(v), vm), vr));
            _mm256_maskstore_ps(yr + Cv, mt,
                                _mm256_fmadd_ps(h, _mm256_maskload_ps(gamma + Cv, mt),
                                                _mm256_maskload_ps(beta + Cv, mt)));
        }
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Softmax (one row at a time; attention below has its own, fused)
 * ------------------------------------------------------------------------------------- */

/* row (C) in place: e = exp(row - max) stored, sum of e in double; returns 1 / sum. */
BGE_INLINE float exp_shift_sum(float *row, int C) {
    const int Cv = C & ~7, rem = C - Cv;
    const __m256i mt = tail_mask(rem);
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int c = 0; c < Cv; c += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(row + c));
    if (rem)
        mx = _mm256_max_ps(mx, _mm256_blendv_ps(mx, _mm256_maskload_ps(row + Cv, mt),
                                                _mm256_castsi256_ps(mt)));
    const __m256 vmx = _mm256_set1_ps(hmax_ps(mx));
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (int c = 0; c < Cv; c += 8) {
        const __m256 e = bge_avx2_exp_ps(_mm256_sub_ps(_mm256_loadu_ps(row + c), vmx));
        _mm256_storeu_ps(row + c, e);
        s0 = _mm256_add_pd(s0, lo_pd(e));
        s1 = _mm256_add_pd(s1, hi_pd(e));
    }
    if (rem) {
        const __m256 e = _mm256_and_ps(
            bge_avx2_exp_ps(_mm256_sub_ps(_mm256_maskload_ps(row + Cv, mt), vmx)),
            _mm256_castsi256_ps(mt));
        _mm256_maskstore_ps(row + Cv, mt, e);
        s0 = _mm256_add_pd(s0, lo_pd(e));
        s1 = _mm256_add_pd(s1, hi_pd(e));
    }
    return (float)(1.0 / hsum_pd(_mm256_add_pd(s0, s1)));
}

/* x (R, C), each row replaced by its softmax: exp(x - max) / sum. */
static int bge_f32_softmax__avx2(float *x, int R, int C) {
    if (!x || R < 1 || C < 1) return BGE_ERR_ARG;
    const int Cv = C & ~7, rem = C - Cv;
    const __m256i mt = tail_mask(rem);
    for (int r = 0; r < R; r++) {
        float *row = x + (size_t)r * C;
        const __m256 inv = _mm256_set1_ps(exp_shift_sum(row, C));
        for (int c = 0; c < Cv; c += 8)
            _mm256_storeu_ps(row + c, _mm256_mul_ps(_mm256_loadu_ps(row + c), inv));
        if (rem)
            _mm256_maskstore_ps(row + Cv, mt,
                                _mm256_mul_ps(_mm256_maskload_ps(row + Cv, mt), inv));
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * GELU
 * ------------------------------------------------------------------------------------- */

/* x (n), in place: 0.5 x (1 + erf(x / sqrt 2)), bge_avx2_gelu_ps (bound in vmath.h). */
static int bge_f32_gelu__avx2(float *x, size_t n) {
    if (!x || n < 1) return BGE_ERR_ARG;
    const size_t nv = n & ~(size_t)7;
    for (size_t i = 0; i < nv; i += 8)
        _mm256_storeu_ps(x + i, bge_avx2_gelu_ps(_mm256_loadu_ps(x + i)));
    const int rem = (int)(n - nv);
    if (rem) {
        const __m256i mt = tail_mask(rem);
        _mm256_maskstore_ps(x + nv, mt, bge_avx2_gelu_ps(_mm256_maskload_ps(x + nv, mt)));
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention
 *
 * One job is one (text, head): L tokens, head width D. Its scratch (one per thread):
 *   kp  (Lp / 8, D, 8): K of the head, transposed into panels of 8 keys (zero past L),
 *                       Lp = L rounded up to 8
 *   vp  (L, D):         V of the head, its rows made contiguous
 *   s   (QO, Lp):       scores, then exp(score - max), of one block of up to QO query rows
 *   acc (QO, Dp):       the running sums of P V of the block, Dp = D rounded up to 16
 * The query rows go in blocks of QO = QT register tiles of QB rows. For each block:
 *   1. s = scale * Q K^T: key panel pair by key panel pair (16 keys), tile by tile, each
 *      tile QB rows x 16 keys held in 12 ymm; each score is one FMA chain over d = 0 ..
 *      D-1. Each row's running max (8 lanes, keys < L only) is kept beside it.
 *   2. per row: e = exp(s - max) in place, sum of e in float, inv = 1 / sum.
 *   3. acc = e V: key chunk by key chunk (KC keys), tile by tile, QB rows x 16 columns in
 *      12 ymm, loaded from acc (zero for the first chunk) and stored back after the chunk:
 *      each element is one FMA chain over keys 0 .. L-1 in ascending order, the same
 *      chain whatever the chunking (a float stored and reloaded is the same float).
 *   4. out = acc * inv.
 * Why blocks: with one pass over K and V per QB query rows, every pass streamed all of kp
 * and vp (2 x 64 KB for 512 keys of width 32) through L1 again. Now a panel pair of kp
 * (16 keys x D floats, 2 KB) and a chunk of vp (KC x D floats, 8 KB) stay in L1 while the
 * block's tiles use them. V is copied into vp because its rows in qkv are 3H floats
 * apart: 4608 bytes for bge-small, which maps every row to one of only 8 of the 64 L1
 * sets. Faster than a single tile on long texts, with the same bits; what is left on them
 * is the exp and the short d loop of the scores (D = 32 FMAs per tile, then a 12-vector
 * epilogue).
 * The arithmetic of a row depends only on its text (L, D): not on the block it falls in, the
 * batch, nor the thread that runs it.
 * ------------------------------------------------------------------------------------- */

#define QB 6          /* query rows per register tile                            */
#define QT 8          /* register tiles per block                                */
#define QO (QB * QT)  /* query rows per block: one pass over K and V             */
#define KC 64         /* keys per chunk of the P V pass                          */

static size_t round8(size_t v) { return (v + 7) & ~(size_t)7; }
static size_t round16(size_t v) { return (v + 15) & ~(size_t)15; }

/* Floats of one thread's scratch for texts of at most max_len tokens, head width D: kp, vp,
 * s and acc as above, each 32-byte aligned within the thread's part (8 floats of slack). */
static size_t thread_scratch(int max_len, int D) {
    const size_t Lp = round8((size_t)max_len);
    return 2 * round8(Lp * (size_t)D) + QO * Lp + QO * round16((size_t)D) + 8;
}

/* k: the head's K of the text, rows ld floats apart, L rows of D floats.
 * kp (Lp / 8, D, 8): kp[p][d][i] = k[8 p + i][d], 0 for 8 p + i >= L.
 * Blocks of 8 keys x 8 dims (masked past L and D) are transposed in registers. */
static void pack_k(const float *k, int ld, int L, int D, float *kp) {
    for (int j0 = 0; j0 < L; j0 += 8) {
        float *panel = kp + (size_t)j0 * D;
        const int nj = L - j0 < 8 ? L - j0 : 8;
        for (int d0 = 0; d0 < D; d0 += 8) {
            const int w = D - d0 < 8 ? D - d0 : 8;
            const __m256i m = tail_mask(w);
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = i < nj ? _mm256_maskload_ps(k + (size_t)(j0 + i) * ld + d0, m)
                              : _mm256_setzero_ps();
            transpose8(r);
            for (int d = 0; d < w; d++) _mm256_store_ps(panel + (size_t)(d0 + d) * 8, r[d]);
        }
    }
}

/* s[r][0 : 8 NP] = scale * q_r . kp (NP panels), r < R; mx[r] = max(mx[r], the scores of
 * the lanes of panel p set in mp (m0, m1), i.e. keys < L).
 * q: R query rows, ld floats apart (D each); kp: NP consecutive panels (D, 8);
 * s: (R, lds); mx: R vectors. R, NP are constants after inlining. */
BGE_INLINE void qk_tile(const int R, const int NP, const float *q, int ld, const float *kp,
                        int D, float scale, float *s, int lds, __m256 *mx, __m256 m0,
                        __m256 m1) {
    __m256 acc[QB][2];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm256_setzero_ps();
    const float *k0 = kp, *k1 = kp + (size_t)8 * D;
    for (int d = 0; d < D; d++) {
        const __m256 b0 = _mm256_load_ps(k0 + 8 * d);
        const __m256 b1 = NP > 1 ? _mm256_load_ps(k1 + 8 * d) : b0;
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(q + (size_t)r * ld + d);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            if (NP > 1) acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    const __m256 vs = _mm256_set1_ps(scale);
    for (int r = 0; r < R; r++) {
        const __m256 s0 = _mm256_mul_ps(acc[r][0], vs);
        _mm256_store_ps(s + (size_t)r * lds, s0);
        __m256 m = _mm256_max_ps(mx[r], _mm256_blendv_ps(mx[r], s0, m0));
        if (NP > 1) {
            const __m256 s1 = _mm256_mul_ps(acc[r][1], vs);
            _mm256_store_ps(s + (size_t)r * lds + 8, s1);
            m = _mm256_max_ps(m, _mm256_blendv_ps(m, s1, m1));
        }
        mx[r] = m;
    }
}

/* row (L) in place: e = exp(row - max(mx lanes)) stored, sum of e in float (8 lanes in key
 * order, then a fixed tree); returns 1 / sum. */
BGE_INLINE float softmax_row(float *row, int L, __m256 mx) {
    const int Lv = L & ~7, rem = L - Lv;
    const __m256 vmx = _mm256_set1_ps(hmax_ps(mx));
    __m256 sum = _mm256_setzero_ps();
    for (int c = 0; c < Lv; c += 8) {
        const __m256 e = bge_avx2_exp_ps(_mm256_sub_ps(_mm256_load_ps(row + c), vmx));
        _mm256_store_ps(row + c, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (rem) {
        const __m256 e =
            _mm256_and_ps(bge_avx2_exp_ps(_mm256_sub_ps(_mm256_load_ps(row + Lv), vmx)),
                          _mm256_castsi256_ps(tail_mask(rem)));
        _mm256_store_ps(row + Lv, e);
        sum = _mm256_add_ps(sum, e);
    }
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return 1.0f / _mm_cvtss_f32(a);
}

/* acc[r][0 : 8 NV] (+)= sum_j e[r][j] v_j[0 : 8 NV], j = 0 .. n-1 ascending, r < R, each
 * element continuing its FMA chain from acc (or from 0 when first). v: n rows of vp, ld
 * floats apart; with MASKED, lanes past the head's width read as 0 through m0, m1 (no byte
 * past a row of vp is read), else plain loads, which AMD cores run faster than vmaskmovps.
 * e: (R, lds); acc: R rows lda floats apart, 8 NV floats each written whole.
 * R, NV, MASKED are constants after inlining. */
BGE_INLINE void pv_tile(const int R, const int NV, const int MASKED, const float *e, int lds,
                        const float *v, int ld, int n, float *acc_mem, int lda, int first,
                        __m256i m0, __m256i m1) {
    __m256 acc[QB][2];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NV; c++)
            acc[r][c] = first ? _mm256_setzero_ps()
                              : _mm256_load_ps(acc_mem + (size_t)r * lda + 8 * c);
    for (int j = 0; j < n; j++) {
        const float *vj = v + (size_t)j * ld;
        const __m256 b0 = MASKED ? _mm256_maskload_ps(vj, m0) : _mm256_loadu_ps(vj);
        const __m256 b1 = NV < 2 ? b0
                          : MASKED ? _mm256_maskload_ps(vj + 8, m1) : _mm256_loadu_ps(vj + 8);
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(e + (size_t)r * lds + j);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            if (NV > 1) acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NV; c++)
            _mm256_store_ps(acc_mem + (size_t)r * lda + 8 * c, acc[r][c]);
}

/* Step 3 for one tile of R rows (a constant after inlining): acc (R rows, lda apart) +=
 * e V over n keys for every column of the head; v: the chunk's first row of vp (D apart). */
BGE_INLINE void pv_rows(const int R, const float *e, int lds, const float *v, int D, int n,
                        float *acc, int lda, int first) {
    const __m256i none = tail_mask(0), all = tail_mask(8);
    for (int d0 = 0; d0 < D; d0 += 16) {
        const int w = D - d0 < 16 ? D - d0 : 16;
        if (w == 16)
            pv_tile(R, 2, 0, e, lds, v + d0, D, n, acc + d0, lda, first, all, all);
        else if (w > 8)
            pv_tile(R, 2, 1, e, lds, v + d0, D, n, acc + d0, lda, first, all,
                    tail_mask(w - 8));
        else if (w == 8)
            pv_tile(R, 1, 0, e, lds, v + d0, D, n, acc + d0, lda, first, all, none);
        else
            pv_tile(R, 1, 1, e, lds, v + d0, D, n, acc + d0, lda, first, tail_mask(w), none);
    }
}

/* The last tile of a block has R = 1 .. QB rows: a call with R as a constant. */
#define BY_ROWS(R, CALL)                                                                    \
    switch (R) {                                                                            \
    case 6: CALL(6); break;                                                                 \
    case 5: CALL(5); break;                                                                 \
    case 4: CALL(4); break;                                                                 \
    case 3: CALL(3); break;                                                                 \
    case 2: CALL(2); break;                                                                 \
    case 1: CALL(1); break;                                                                 \
    default: break;                                                                         \
    }
_Static_assert(QB == 6, "BY_ROWS covers the row counts 1 .. QB");

/* One block of B <= QO query rows of one (text, head): q, out its first rows (ld, ldo
 * floats apart); kp, vp packed; s, acc the thread's scratch; steps 1 to 4 above. */
static void attend_block(const float *q, int ld, int B, int L, int D, float scale,
                         const float *kp, const float *vp, float *s, int lds, float *acc,
                         int lda, float *out, int ldo) {
    const int np = (L + 7) >> 3;
    const __m256 all = _mm256_castsi256_ps(tail_mask(8));
    const __m256 mlast = _mm256_castsi256_ps(tail_mask(L - 8 * (np - 1))); /* last panel */
    __m256 mx[QO];
    for (int r = 0; r < B; r++) mx[r] = _mm256_set1_ps(-INFINITY);
    /* 1. scores, panel pair by panel pair, every tile of the block against each */
    for (int p = 0; p < np; p += 2) {
        const int two = p + 2 <= np;
        const __m256 m0 = two ? all : mlast, m1 = p + 2 == np ? mlast : all;
        const float *kpp = kp + (size_t)p * 8 * D;
        for (int r0 = 0; r0 < B; r0 += QB) {
            const int R = B - r0 < QB ? B - r0 : QB;
            const float *qr = q + (size_t)r0 * ld;
            float *sr = s + (size_t)r0 * lds + 8 * p;
            if (two) {
#define QK2(RR) qk_tile(RR, 2, qr, ld, kpp, D, scale, sr, lds, mx + r0, m0, m1)
                BY_ROWS(R, QK2)
#undef QK2
            } else {
#define QK1(RR) qk_tile(RR, 1, qr, ld, kpp, D, scale, sr, lds, mx + r0, m0, m1)
                BY_ROWS(R, QK1)
#undef QK1
            }
        }
    }
    /* 2. softmax of each row */
    float inv[QO];
    for (int r = 0; r < B; r++) inv[r] = softmax_row(s + (size_t)r * lds, L, mx[r]);
    /* 3. e V, chunk of keys by chunk, every tile of the block on each */
    for (int j0 = 0; j0 < L; j0 += KC) {
        const int n = L - j0 < KC ? L - j0 : KC;
        for (int r0 = 0; r0 < B; r0 += QB) {
            const int R = B - r0 < QB ? B - r0 : QB;
            const float *e = s + (size_t)r0 * lds + j0;
            float *ar = acc + (size_t)r0 * lda;
            const float *vj = vp + (size_t)j0 * D;
#define PV(RR) pv_rows(RR, e, lds, vj, D, n, ar, lda, j0 == 0)
            BY_ROWS(R, PV)
#undef PV
        }
    }
    /* 4. out = acc * inv */
    for (int r = 0; r < B; r++) {
        const __m256 vi = _mm256_set1_ps(inv[r]);
        const float *a = acc + (size_t)r * lda;
        float *o = out + (size_t)r * ldo;
        int d = 0;
        for (; d + 8 <= D; d += 8)
            _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_load_ps(a + d), vi));
        if (d < D)
            _mm256_maskstore_ps(o + d, tail_mask(D - d),
                                _mm256_mul_ps(_mm256_load_ps(a + d), vi));
    }
}

/* One (text, head): q, k, v point at the text's first token inside qkv, column of the head;
 * rows are ld floats apart. out likewise, rows ldo apart. work: one thread's scratch. */
static void attend_one(const float *q, const float *k, const float *v, int ld, int L, int D,
                       float scale, float *work, float *out, int ldo) {
    const int lds = (int)round8((size_t)L), lda = (int)round16((size_t)D);
    float *kp = work;
    float *vp = kp + round8((size_t)lds * D);
    float *s = vp + round8((size_t)lds * D);
    float *acc = s + (size_t)QO * lds;
    pack_k(k, ld, L, D, kp);
    for (int j = 0; j < L; j++)
        memcpy(vp + (size_t)j * D, v + (size_t)j * ld, sizeof(float) * (size_t)D);
    for (int r0 = 0; r0 < L; r0 += QO) {
        const int B = L - r0 < QO ? L - r0 : QO;
        attend_block(q + (size_t)r0 * ld, ld, B, L, D, scale, kp, vp, s, lds, acc, lda,
                     out + (size_t)r0 * ldo, ldo);
    }
}

/* The two attention slots: the shared driver (csrc/attention_driver.c) runs attend_one
 * on every (text, head), each thread's scratch 32-byte aligned. */
BGE_ATTENTION_SLOTS(avx2, attend_one, thread_scratch, 8)

/* ---------------------------------------------------------------------------------------
 * Embeddings, pooling, L2 norm
 * ------------------------------------------------------------------------------------- */

/* out[t] = (word[ids[t]] + type[0]) + pos[t - offsets[text of t]], the reference's order, so
 * the result is bit-identical to it. ids (T); offsets (n + 1); word (vocab, C);
 * pos (max_pos, C); type (>= 1, C); out (T, C). */
static int bge_f32_embed__avx2(const int32_t *ids, const int32_t *offsets, int n,
                               const float *word, int vocab, const float *pos, int max_pos,
                               const float *type, float *out, int C) {
    if (bge_check_embed_args(ids, offsets, n, word, vocab, pos, max_pos, type, out, C) != BGE_OK)
        return BGE_ERR_ARG;
    const int Cv = C & ~7, rem = C - Cv;
    const __m256i mt = tail_mask(rem);
    for (int i = 0; i < n; i++) {
        for (int t = offsets[i]; t < offsets[i + 1]; t++) {
            const float *w = word + (size_t)ids[t] * C;
            const float *p = pos + (size_t)(t - offsets[i]) * C;
            float *o = out + (size_t)t * C;
            for (int c = 0; c < Cv; c += 8)
                _mm256_storeu_ps(o + c, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(w + c),
                                                                    _mm256_loadu_ps(type + c)),
                                                      _mm256_loadu_ps(p + c)));
            if (rem)
                _mm256_maskstore_ps(o + Cv, mt,
                                    _mm256_add_ps(_mm256_add_ps(_mm256_maskload_ps(w + Cv, mt),
                                                                _mm256_maskload_ps(type + Cv, mt)),
                                                  _mm256_maskload_ps(p + Cv, mt)));
        }
    }
    return BGE_OK;
}

/* h (T, C); offsets (n + 1), every text >= 1 token; out (n, C): the CLS row, or the mean
 * (double sum in token order, divided by L in double, as the reference: bit-identical). */
static int bge_f32_pool__avx2(const float *h, const int32_t *offsets, int n, int C, int mode,
                              float *out) {
    if (bge_check_pool_args(h, offsets, n, C, mode, out) != BGE_OK) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++) {
        const int t0 = offsets[i], L = offsets[i + 1] - offsets[i];
        float *o = out + (size_t)i * C;
        if (mode == BGE_POOL_CLS) {
            memcpy(o, h + (size_t)t0 * C, (size_t)C * sizeof(float));
            continue;
        }
        const __m256d vl = _mm256_set1_pd((double)L);
        for (int c0 = 0; c0 < C; c0 += 32) { /* 32 columns: 8 accumulators of 4 doubles */
            __m256i m[4];
            int live[4];
            for (int k = 0; k < 4; k++) {
                const int w = C - c0 - 8 * k;
                live[k] = w > 0;
                m[k] = tail_mask(w >= 8 ? 8 : w > 0 ? w : 0);
            }
            __m256d acc[8];
            for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_pd();
            for (int t = 0; t < L; t++) {
                const float *row = h + (size_t)(t0 + t) * C + c0;
                for (int k = 0; k < 4; k++) {
                    const __m256 v = _mm256_maskload_ps(row + 8 * k, m[k]);
                    acc[2 * k] = _mm256_add_pd(acc[2 * k], lo_pd(v));
                    acc[2 * k + 1] = _mm256_add_pd(acc[2 * k + 1], hi_pd(v));
                }
            }
            for (int k = 0; k < 4; k++)
                if (live[k])
                    _mm256_maskstore_ps(o + c0 + 8 * k, m[k],
                                        join_ps(_mm256_div_pd(acc[2 * k], vl),
                                                _mm256_div_pd(acc[2 * k + 1], vl)));
        }
    }
    return BGE_OK;
}

/* x (n, C), each row times 1 / ||row|| (sum of squares in double); a zero row stays zero. */
static int bge_f32_l2norm__avx2(float *x, int n, int C) {
    if (!x || n < 1 || C < 1) return BGE_ERR_ARG;
    const int Cv = C & ~7, rem = C - Cv;
    const __m256i mt = tail_mask(rem);
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * C;
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
        for (int c = 0; c < Cv; c += 8) {
            const __m256 v = _mm256_loadu_ps(row + c);
            const __m256d a = lo_pd(v), b = hi_pd(v);
            s0 = _mm256_fmadd_pd(a, a, s0);
            s1 = _mm256_fmadd_pd(b, b, s1);
        }
        if (rem) {
            const __m256 v = _mm256_maskload_ps(row + Cv, mt);
            const __m256d a = lo_pd(v), b = hi_pd(v);
            s0 = _mm256_fmadd_pd(a, a, s0);
            s1 = _mm256_fmadd_pd(b, b, s1);
        }
        const double ss = hsum_pd(_mm256_add_pd(s0, s1));
        if (ss == 0.0) continue;
        const __m256d inv = _mm256_set1_pd(1.0 / sqrt(ss));
        for (int c = 0; c < Cv; c += 8) {
            const __m256 v = _mm256_loadu_ps(row + c);
            _mm256_storeu_ps(row + c, join_ps(_mm256_mul_pd(lo_pd(v), inv),
                                              _mm256_mul_pd(hi_pd(v), inv)));
        }
        if (rem) {
            const __m256 v = _mm256_maskload_ps(row + Cv, mt);
            _mm256_maskstore_ps(row + Cv, mt, join_ps(_mm256_mul_pd(lo_pd(v), inv),
                                                      _mm256_mul_pd(hi_pd(v), inv)));
        }
    }
    return BGE_OK;
}

void bge_overlay_avx2_ops(bge_kernels *t) {
    BGE_SET_F32_OPS(t, avx2);
}
