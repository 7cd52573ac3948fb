/*
 * arm/neon/ops.c: every fp32 kernel of the NEON level except the GEMM: LayerNorm, softmax,
 * GELU, self-attention over a ragged batch, embeddings, pooling, L2 norm.
 * Compiled, like every file of this folder, with -march=armv8-a.
 *
 * Each kernel has the contract of its slot in bge.h and rejects exactly what its reference
 * (csrc/ref/) rejects, with the same status. Rows are processed in vectors of 4 floats; the
 * last C % 4 columns go through a 4-float stack buffer (load_part / store_part), so no byte
 * outside an argument is read or written.
 *
 * Numerics (as x86/avx2/ops.c, with 4 lanes):
 *   - Reductions run in one fixed order per row, decided by the row's length only: never
 *     by the batch, the block or nthreads.
 *   - LayerNorm, the softmax slot, L2 norm and the mean pool accumulate in double, like the
 *     references (the mean pool in the reference's very order: bit-identical); exp and GELU
 *     are the vector approximations of vmath.h (bounds there).
 *   - Attention: scores by FMA chains over d ascending, softmax with a max shift, the exp of
 *     vmath.h and a float sum (4 lanes in key order, then a fixed tree); P V by FMA chains
 *     over keys ascending, times 1 / sum at the end.
 */
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "neon.h"
#include "vmath.h"

#define BGE_INLINE static inline __attribute__((always_inline))

/* The first n (0..4) floats of p in the low lanes, `fill` in the others. */
BGE_INLINE float32x4_t load_part(const float *p, int n, float fill) {
    float b[4] = {fill, fill, fill, fill};
    for (int l = 0; l < n; l++) b[l] = p[l];
    return vld1q_f32(b);
}

/* Stores the low n (0..4) lanes of v to p. */
BGE_INLINE void store_part(float *p, int n, float32x4_t v) {
    float b[4];
    vst1q_f32(b, v);
    for (int l = 0; l < n; l++) p[l] = b[l];
}

/* Sum of two float64x2 accumulators' lanes in a fixed order: (a0 + b0) + (a1 + b1). */
BGE_INLINE double hsum2(float64x2_t a, float64x2_t b) { return vaddvq_f64(vaddq_f64(a, b)); }

/* ---------------------------------------------------------------------------------------
 * LayerNorm
 * ------------------------------------------------------------------------------------- */

/* x (T, C) -> out (T, C); gamma, beta (C); out may equal x. Per row, in double: the mean,
 * the biased variance of (x - mean) (two passes), then (float)((x - mean) * rstd) * gamma
 * + beta in float (one FMA). The tail lanes (past C) are zero in the sums. */
static int bge_f32_layernorm__neon(const float *x, const float *gamma, const float *beta,
                                   float eps, float *out, int T, int C, int nthreads) {
    if (!x || !gamma || !beta || !out || T < 1 || C < 1 || nthreads < 1 || !(eps >= 0.0f))
        return BGE_ERR_ARG;
    const int Cv = C & ~3, rem = C - Cv;
#pragma omp parallel for num_threads(bge_row_team(T, 16, nthreads)) schedule(dynamic, 16)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *yr = out + (size_t)t * C;
        float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
        for (int c = 0; c <= Cv; c += 4) {
            if (c == Cv && !rem) break;
            const float32x4_t v = c < Cv ? vld1q_f32(xr + c) : load_part(xr + c, rem, 0.0f);
            s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(v)));
            s1 = vaddq_f64(s1, vcvt_high_f64_f32(v));
        }
        const double mean = hsum2(s0, s1) / C;
        const float64x2_t vm = vdupq_n_f64(mean);
        s0 = s1 = vdupq_n_f64(0.0);
        for (int c = 0; c <= Cv; c += 4) {
            if (c == Cv && !rem) break;
            float64x2_t d0, d1;
            if (c < Cv) {
                const float32x4_t v = vld1q_f32(xr + c);
                d0 = vsubq_f64(vcvt_f64_f32(vget_low_f32(v)), vm);
                d1 = vsubq_f64(vcvt_high_f64_f32(v), vm);
            } else { /* the tail: lanes past C contribute 0 */
                double b[4] = {0.0, 0.0, 0.0, 0.0};
                for (int l = 0; l < rem; l++) b[l] = (double)xr[c + l] - mean;
                d0 = vld1q_f64(b);
                d1 = vld1q_f64(b + 2);
            }
            s0 = vfmaq_f64(s0, d0, d0);
            s1 = vfmaq_f64(s1, d1, d1);
        }
        const double rstd = 1.0 / sqrt(hsum2(s0, s1) / C + (double)eps);
        const float64x2_t vr = vdupq_n_f64(rstd);
        for (int c = 0; c <= Cv; c += 4) {
            if (c == Cv && !rem) break;
            const int full = c < Cv;
            const float32x4_t v = full ? vld1q_f32(xr + c) : load_part(xr + c, rem, 0.0f);
            const float32x4_t h =
                vcombine_f32(vcvt_f32_f64(vmulq_f64(vsubq_f64(vcvt_f64_f32(vget_low_f32(v)), vm), vr)),
                             vcvt_f32_f64(vmulq_f64(vsubq_f64(vcvt_high_f64_f32(v), vm), vr)));
            const float32x4_t g = full ? vld1q_f32(gamma + c) : load_part(gamma + c, rem, 0.0f);
            const float32x4_t b = full ? vld1q_f32(beta + c) : load_part(beta + c, rem, 0.0f);
            const float32x4_t y = vfmaq_f32(b, h, g);
            if (full)
                vst1q_f32(yr + c, y);
            else
                store_part(yr + c, rem, y);
        }
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Softmax (one row at a time; attention below has its own, fused) and GELU
 * ------------------------------------------------------------------------------------- */

/* x (R, C), each row replaced by its softmax: e = exp(x - max) (vmath.h), the sum of e in
 * double (two float64x2 accumulators, then a fixed tree), then e * (float)(1 / sum). */
static int bge_f32_softmax__neon(float *x, int R, int C) {
    if (!x || R < 1 || C < 1) return BGE_ERR_ARG;
    const int Cv = C & ~3, rem = C - Cv;
    for (int r = 0; r < R; r++) {
        float *row = x + (size_t)r * C;
        float32x4_t mx = vdupq_n_f32(-INFINITY);
        for (int c = 0; c < Cv; c += 4) mx = vmaxq_f32(mx, vld1q_f32(row + c));
        if (rem) mx = vmaxq_f32(mx, load_part(row + Cv, rem, -INFINITY));
        const float32x4_t vmx = vdupq_n_f32(vmaxvq_f32(mx));
        float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
        for (int c = 0; c < Cv; c += 4) {
            const float32x4_t e = bge_neon_exp_ps(vsubq_f32(vld1q_f32(row + c), vmx));
            vst1q_f32(row + c, e);
            s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(e)));
            s1 = vaddq_f64(s1, vcvt_high_f64_f32(e));
        }
        if (rem) {
            float e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            store_part(e, rem, bge_neon_exp_ps(vsubq_f32(load_part(row + Cv, rem, 0.0f), vmx)));
            const float32x4_t ev = vld1q_f32(e); /* lanes past C: 0 */
            store_part(row + Cv, rem, ev);
            s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(ev)));
            s1 = vaddq_f64(s1, vcvt_high_f64_f32(ev));
        }
        const float32x4_t inv = vdupq_n_f32((float)(1.0 / hsum2(s0, s1)));
        for (int c = 0; c < Cv; c += 4) vst1q_f32(row + c, vmulq_f32(vld1q_f32(row + c), inv));
        if (rem) store_part(row + Cv, rem, vmulq_f32(load_part(row + Cv, rem, 0.0f), inv));
    }
    return BGE_OK;
}

/* x (n), in place: 0.5 x (1 + erf(x / sqrt 2)), bge_neon_gelu_ps (bound in vmath.h). */
static int bge_f32_gelu__neon(float *x, size_t n) {
    if (!x || n < 1) return BGE_ERR_ARG;
    const size_t nv = n & ~(size_t)3;
    for (size_t i = 0; i < nv; i += 4) vst1q_f32(x + i, bge_neon_gelu_ps(vld1q_f32(x + i)));
    const int rem = (int)(n - nv);
    if (rem) store_part(x + nv, rem, bge_neon_gelu_ps(load_part(x + nv, rem, 0.0f)));
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention
 *
 * One job is one (text, head): L tokens, head width D. Its scratch (one per thread):
 *   kp (Lq / 4, D, 4): K of the head, transposed into panels of 4 keys (zero past L),
 *                      Lq = L rounded up to 4: kp[p][d][i] = k[4p + i][d]
 *   vp (L, Dq):        V of the head, rows made contiguous, zero-padded to Dq = D rounded
 *                      up to 4 columns
 *   s  (QB, Lq):       the scores, then exp(score - max), of QB query rows
 * The query rows go in tiles of QB = 4. For each tile:
 *   1. s = scale * Q K^T, 16 keys (4 panels) at a time: 4 x 4 q registers of sums, each
 *      score one FMA chain over d = 0 .. D-1, then times scale;
 *   2. per row: max over the L keys, e = exp(s - max), sum of e in float (4 lanes in key
 *      order, then a fixed tree), inv = 1 / sum;
 *   3. out = (e V) * inv, 16 columns at a time: 4 x 4 q registers, each element one FMA
 *      chain over keys 0 .. L-1 ascending.
 * The arithmetic of a row depends only on its text (L, D): not on the tile it falls in, the
 * batch, nor the thread that runs it.
 * ------------------------------------------------------------------------------------- */

#define QB 4 /* query rows per tile */

static size_t round4(size_t v) { return (v + 3) & ~(size_t)3; }

/* Floats of one thread's scratch for texts of at most max_len tokens, head width D. */
static size_t thread_scratch(int max_len, int D) {
    const size_t Lq = round4((size_t)max_len), Dq = round4((size_t)D);
    return Lq * (size_t)D + (size_t)max_len * Dq + QB * Lq + 4;
}

/* Step 1 for R rows (1..QB) and NP panels (1..4), constants after inlining:
 * s[r][4p + i] = scale * sum_d q[r][d] kp[p][d][i]. q rows ld floats apart; s rows lds. */
BGE_INLINE void qk_tile(const int R, const int NP, const float *q, int ld, const float *kp,
                        int D, float scale, float *s, int lds) {
    float32x4_t acc[QB][4];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = vdupq_n_f32(0.0f);
    for (int d = 0; d < D; d++) {
        float32x4_t b[4];
        for (int p = 0; p < NP; p++) b[p] = vld1q_f32(kp + ((size_t)p * D + d) * 4);
        for (int r = 0; r < R; r++) {
            const float32x4_t a = vld1q_dup_f32(q + (size_t)r * ld + d);
            for (int p = 0; p < NP; p++) acc[r][p] = vfmaq_f32(acc[r][p], a, b[p]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++)
            vst1q_f32(s + (size_t)r * lds + 4 * p, vmulq_f32(acc[r][p], vdupq_n_f32(scale)));
}

/* Step 3 for R rows and NV vectors of columns (1..4): o[r][0 : 4 NV] = inv[r] *
 * sum_j e[r][j] vp[j][0 : 4 NV], j ascending; o rows ldo apart, nw (<= 4 NV) columns
 * stored. */
BGE_INLINE void pv_tile(const int R, const int NV, const float *e, int lds, const float *vp,
                        int Dq, int L, const float *inv, float *o, int ldo, int nw) {
    float32x4_t acc[QB][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NV; c++) acc[r][c] = vdupq_n_f32(0.0f);
    for (int j = 0; j < L; j++) {
        float32x4_t b[4];
        for (int c = 0; c < NV; c++) b[c] = vld1q_f32(vp + (size_t)j * Dq + 4 * c);
        for (int r = 0; r < R; r++) {
            const float32x4_t a = vld1q_dup_f32(e + (size_t)r * lds + j);
            for (int c = 0; c < NV; c++) acc[r][c] = vfmaq_f32(acc[r][c], a, b[c]);
        }
    }
    for (int r = 0; r < R; r++) {
        const float32x4_t vi = vdupq_n_f32(inv[r]);
        for (int c = 0; c < NV; c++) {
            const int w = nw - 4 * c < 4 ? nw - 4 * c : 4;
            const float32x4_t v = vmulq_f32(acc[r][c], vi);
            if (w == 4)
                vst1q_f32(o + (size_t)r * ldo + 4 * c, v);
            else
                store_part(o + (size_t)r * ldo + 4 * c, w, v);
        }
    }
}

/* Step 2 for one row (L scores): exp(s - max) in place, returns 1 / (float sum). */
static float softmax_row(float *row, int L) {
    const int Lv = L & ~3, rem = L - Lv;
    float32x4_t mx = vdupq_n_f32(-INFINITY);
    for (int c = 0; c < Lv; c += 4) mx = vmaxq_f32(mx, vld1q_f32(row + c));
    if (rem) mx = vmaxq_f32(mx, load_part(row + Lv, rem, -INFINITY));
    const float32x4_t vmx = vdupq_n_f32(vmaxvq_f32(mx));
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (int c = 0; c < Lv; c += 4) {
        const float32x4_t e = bge_neon_exp_ps(vsubq_f32(vld1q_f32(row + c), vmx));
        vst1q_f32(row + c, e);
        sum = vaddq_f32(sum, e);
    }
    if (rem) {
        float e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        store_part(e, rem, bge_neon_exp_ps(vsubq_f32(vld1q_f32(row + Lv), vmx)));
        vst1q_f32(row + Lv, vld1q_f32(e)); /* the scratch row holds Lq floats */
        sum = vaddq_f32(sum, vld1q_f32(e));
    }
    /* (l0 + l2) + (l1 + l3), a fixed tree */
    const float32x2_t h = vadd_f32(vget_low_f32(sum), vget_high_f32(sum));
    return 1.0f / vaddv_f32(h);
}

#define BY_ROWS(R, CALL)                                                                    \
    switch (R) {                                                                            \
    case 4: CALL(4); break;                                                                 \
    case 3: CALL(3); break;                                                                 \
    case 2: CALL(2); break;                                                                 \
    case 1: CALL(1); break;                                                                 \
    default: break;                                                                         \
    }
#define BY_4(N, R, CALL)                                                                    \
    switch (N) {                                                                            \
    case 4: CALL(R, 4); break;                                                              \
    case 3: CALL(R, 3); break;                                                              \
    case 2: CALL(R, 2); break;                                                              \
    case 1: CALL(R, 1); break;                                                              \
    default: break;                                                                         \
    }
_Static_assert(QB == 4, "BY_ROWS covers the row counts 1 .. QB");

/* Steps 1 to 3 for R (a constant) query rows. */
BGE_INLINE void attend_tile(const int R, const float *q, int ld, int L, int D, float scale,
                            const float *kp, const float *vp, float *s, int lds, float *out,
                            int ldo) {
    const int np = (L + 3) / 4, Dq = (int)round4((size_t)D);
    for (int p0 = 0; p0 < np; p0 += 4) {
        const int n = np - p0 < 4 ? np - p0 : 4;
#define QK(RR, NN) qk_tile(RR, NN, q, ld, kp + (size_t)p0 * 4 * D, D, scale, s + 4 * p0, lds)
        BY_4(n, R, QK)
#undef QK
    }
    float inv[QB];
    for (int r = 0; r < R; r++) inv[r] = softmax_row(s + (size_t)r * lds, L);
    for (int d0 = 0; d0 < D; d0 += 16) {
        const int nw = D - d0 < 16 ? D - d0 : 16, nv = (nw + 3) / 4;
#define PV(RR, NN) pv_tile(RR, NN, s, lds, vp + d0, Dq, L, inv, out + d0, ldo, nw)
        BY_4(nv, R, PV)
#undef PV
    }
}

/* One (text, head): q, k, v point at the text's first token inside qkv, column of the head;
 * rows are ld floats apart. out likewise, rows ldo apart. work: one thread's scratch. */
static void attend_one(const float *q, const float *k, const float *v, int ld, int L, int D,
                       float scale, float *work, float *out, int ldo) {
    const int lds = (int)round4((size_t)L), Dq = (int)round4((size_t)D);
    float *kp = work;
    float *vp = kp + (size_t)lds * D;
    float *s = vp + (size_t)L * Dq;
    for (int j0 = 0; j0 < lds; j0 += 4) /* kp[p][d][i] = k[4p + i][d], 0 past L */
        for (int d = 0; d < D; d++)
            for (int i = 0; i < 4; i++)
                kp[((size_t)j0 * D) + (size_t)d * 4 + i] =
                    j0 + i < L ? k[(size_t)(j0 + i) * ld + d] : 0.0f;
    for (int j = 0; j < L; j++) {
        memcpy(vp + (size_t)j * Dq, v + (size_t)j * ld, sizeof(float) * (size_t)D);
        for (int d = D; d < Dq; d++) vp[(size_t)j * Dq + d] = 0.0f;
    }
    for (int r0 = 0; r0 < L; r0 += QB) {
        const int R = L - r0 < QB ? L - r0 : QB;
#define AT(RR) attend_tile(RR, q + (size_t)r0 * ld, ld, L, D, scale, kp, vp, s, lds, \
                           out + (size_t)r0 * ldo, ldo)
        BY_ROWS(R, AT)
#undef AT
    }
}

/* The two attention slots: the shared driver (csrc/attention_driver.c) runs attend_one
 * on every (text, head), each thread's scratch 16-byte aligned. */
BGE_ATTENTION_SLOTS(neon, attend_one, thread_scratch, 4)

/* ---------------------------------------------------------------------------------------
 * Embeddings, pooling, L2 norm
 * ------------------------------------------------------------------------------------- */

/* out[t] = (word[ids[t]] + type[0]) + pos[t - offsets[text of t]], the reference's order:
 * bit-identical to it. ids (T); offsets (n + 1); word (vocab, C); pos (max_pos, C);
 * type (>= 1, C); out (T, C). */
static int bge_f32_embed__neon(const int32_t *ids, const int32_t *offsets, int n,
                               const float *word, int vocab, const float *pos, int max_pos,
                               const float *type, float *out, int C) {
    if (bge_check_embed_args(ids, offsets, n, word, vocab, pos, max_pos, type, out, C) != BGE_OK)
        return BGE_ERR_ARG;
    const int Cv = C & ~3;
    for (int i = 0; i < n; i++) {
        for (int t = offsets[i]; t < offsets[i + 1]; t++) {
            const float *w = word + (size_t)ids[t] * C;
            const float *p = pos + (size_t)(t - offsets[i]) * C;
            float *o = out + (size_t)t * C;
            for (int c = 0; c < Cv; c += 4)
                vst1q_f32(o + c, vaddq_f32(vaddq_f32(vld1q_f32(w + c), vld1q_f32(type + c)),
                                           vld1q_f32(p + c)));
            for (int c = Cv; c < C; c++) o[c] = (w[c] + type[c]) + p[c];
        }
    }
    return BGE_OK;
}

/* h (T, C); offsets (n + 1), every text >= 1 token; out (n, C): the CLS row, or the mean
 * (double sum in token order, divided by L in double, as the reference: bit-identical).
 * 8 columns at a time in 4 float64x2 accumulators; the last C % 8 columns one by one. */
static int bge_f32_pool__neon(const float *h, const int32_t *offsets, int n, int C, int mode,
                              float *out) {
    if (bge_check_pool_args(h, offsets, n, C, mode, out) != BGE_OK) return BGE_ERR_ARG;
    const int C8 = C & ~7;
    for (int i = 0; i < n; i++) {
        const int t0 = offsets[i], L = offsets[i + 1] - offsets[i];
        float *o = out + (size_t)i * C;
        if (mode == BGE_POOL_CLS) {
            memcpy(o, h + (size_t)t0 * C, (size_t)C * sizeof(float));
            continue;
        }
        const float64x2_t vl = vdupq_n_f64((double)L);
        for (int c0 = 0; c0 < C8; c0 += 8) {
            float64x2_t a0 = vdupq_n_f64(0.0), a1 = a0, a2 = a0, a3 = a0;
            for (int t = 0; t < L; t++) {
                const float *row = h + (size_t)(t0 + t) * C + c0;
                const float32x4_t v0 = vld1q_f32(row), v1 = vld1q_f32(row + 4);
                a0 = vaddq_f64(a0, vcvt_f64_f32(vget_low_f32(v0)));
                a1 = vaddq_f64(a1, vcvt_high_f64_f32(v0));
                a2 = vaddq_f64(a2, vcvt_f64_f32(vget_low_f32(v1)));
                a3 = vaddq_f64(a3, vcvt_high_f64_f32(v1));
            }
            vst1q_f32(o + c0, vcombine_f32(vcvt_f32_f64(vdivq_f64(a0, vl)),
                                           vcvt_f32_f64(vdivq_f64(a1, vl))));
            vst1q_f32(o + c0 + 4, vcombine_f32(vcvt_f32_f64(vdivq_f64(a2, vl)),
                                               vcvt_f32_f64(vdivq_f64(a3, vl))));
        }
        for (int c = C8; c < C; c++) {
            double s = 0.0;
            for (int t = 0; t < L; t++) s += h[(size_t)(t0 + t) * C + c];
            o[c] = (float)(s / L);
        }
    }
    return BGE_OK;
}

/* x (n, C), each row times 1 / ||row|| (sum of squares in double); a zero row stays zero. */
static int bge_f32_l2norm__neon(float *x, int n, int C) {
    if (!x || n < 1 || C < 1) return BGE_ERR_ARG;
    const int Cv = C & ~3;
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * C;
        float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
        for (int c = 0; c < Cv; c += 4) {
            const float32x4_t v = vld1q_f32(row + c);
            const float64x2_t a = vcvt_f64_f32(vget_low_f32(v)), b = vcvt_high_f64_f32(v);
            s0 = vfmaq_f64(s0, a, a);
            s1 = vfmaq_f64(s1, b, b);
        }
        double ss = hsum2(s0, s1);
        for (int c = Cv; c < C; c++) ss += (double)row[c] * row[c];
        if (ss == 0.0) continue;
        const double inv = 1.0 / sqrt(ss);
        const float64x2_t vi = vdupq_n_f64(inv);
        for (int c = 0; c < Cv; c += 4) {
            const float32x4_t v = vld1q_f32(row + c);
            vst1q_f32(row + c,
                      vcombine_f32(vcvt_f32_f64(vmulq_f64(vcvt_f64_f32(vget_low_f32(v)), vi)),
                                   vcvt_f32_f64(vmulq_f64(vcvt_high_f64_f32(v), vi))));
        }
        for (int c = Cv; c < C; c++) row[c] = (float)(row[c] * inv);
    }
    return BGE_OK;
}

void bge_overlay_neon_ops(bge_kernels *t) {
    BGE_SET(t, f32_layernorm, bge_f32_layernorm__neon);
    BGE_SET(t, f32_softmax, bge_f32_softmax__neon);
    BGE_SET(t, f32_gelu, bge_f32_gelu__neon);
    BGE_SET(t, f32_attention_scratch, bge_f32_attention_scratch__neon);
    BGE_SET(t, f32_attention, bge_f32_attention__neon);
    BGE_SET(t, f32_embed, bge_f32_embed__neon);
    BGE_SET(t, f32_pool, bge_f32_pool__neon);
    BGE_SET(t, f32_l2norm, bge_f32_l2norm__neon);
}
