/*
 * ref/qgemm.c: the reference int8 GEMM (u8 activations x s8 weights, int32 sums, fp32
 * epilogue), the activation and weight quantisers, and the reference packing.
 *
 * The scheme (also in bge.h; the numpy transcription in tests/test_kernels_qgemm.py), in
 * groups of G = BGE_Q8_GROUP = 64 consecutive k (group g: k in [G g, min(G g + G, K)),
 * ngroups = ceil(K / G)):
 *   Weights, quantised by the caller (Python, at load): symmetric, per output channel and
 *     group, w_s8 (N, K) int8 in [-127, 127] and w_scale (N, ngroups) fp32:
 *     W[n, k] ~= w_scale[n, g(k)] w_s8[n, k]. Packing adds colsum[n, g] = sum_{k in g}
 *     w_s8[n, k] (int32; |colsum| <= 64 127, so it also fits in int16) for the zero-point
 *     term and pads K up to Kp (a multiple of 4) with zero weights.
 *   Activations, quantised here per row (token) and group, asymmetric u8 with a zero point;
 *     over the group's elements: mn = min(0, min x), mx = max(0, max x); when mx == mn:
 *     scale 1, zp 0, q 0; else scale = (mx - mn) / 255.0f, inv = 255.0f / (mx - mn),
 *     zp = clamp(rint(-mn * inv), 0, 255), q[k] = clamp(rint(x[k] * inv) + zp, 0, 255);
 *     rint is round-half-even (nearbyintf; cvtps2dq in SIMD), an out-of-range or NaN value
 *     converts to INT32_MIN (as cvtps2dq does) before the clamp. scale, zp are (M, ngroups).
 *     The row's padding q[K .. Kp-1] = the last group's zp: it meets zero weights, so it
 *     adds nothing. Min and max are order-independent (NaNs are skipped: `x < mn ? x : mn`
 *     is exactly minps(x, mn)), so SIMD levels write the same bytes.
 *   GEMM, per group: acc_g[m, n] = sum_{k in g} q[m, k] w_s8[n, k] in int32, exact (|acc_g|
 *     <= 64 255 127); the sum order is then irrelevant. d_g = acc_g - zp[m, g] colsum[n, g]
 *     = sum_{k in g} (q[m, k] - zp[m, g]) w_s8[n, k], also exact in int32. Then, rounding
 *     after each step, never fused: s = 0.0f; for g = 0 .. ngroups - 1 in order:
 *     s = s + (float)d_g * (scale[m, g] * w_scale[n, g]); v = s + bias[n]; then GELU or
 *     v + res[m, n]. Every level computes exactly this, so int8 results are bit-identical
 *     across levels; only GELU differs (SIMD uses its vector GELU, within 1.5e-7 |v|).
 *     Threads never split k, so no level ever reorders the sum over groups.
 *   The raw int32 GEMM (qu8s8_gemm_i32, for exact tests) sums over every k at once.
 *
 * The packed layout of every level: csrc/pack.c.
 */
#include <math.h>
#include <string.h>

#include "../bge_internal.h"

/* ---------------------------------------------------------------------------------------
 * Activation quantiser
 * ------------------------------------------------------------------------------------- */

/* The arguments of a reference int8 call, for its rows (bge_run_each's items). */
typedef struct q8_rows {
    const float *x, *scale, *bias, *res, *ws;
    const uint8_t *q;
    const int32_t *zp, *cs;
    const int8_t *wt;
    uint8_t *qout;
    float *out, *sout;
    int32_t *zout, *acc;
    int K, Kp, N, ng, epilogue;
} q8_rows;

/* Row m of x -> row m of q, scale, zp. */
static int quantize_row(void *ctx, int m, int thread) {
    const q8_rows *j = (const q8_rows *)ctx;
    const int K = j->K, Kp = j->Kp, ng = j->ng;
    const float *xr = j->x + (size_t)m * K;
    uint8_t *qr = j->qout + (size_t)m * Kp;
    float *sr = j->sout + (size_t)m * ng;
    int32_t *zr = j->zout + (size_t)m * ng;
    (void)thread;
    for (int g = 0; g < ng; g++) {
        const int k0 = g * BGE_Q8_GROUP;
        const int n = K - k0 < BGE_Q8_GROUP ? K - k0 : BGE_Q8_GROUP;
        float mn = 0.0f, mx = 0.0f;
        for (int k = k0; k < k0 + n; k++) {
            const float v = xr[k];
            mn = v < mn ? v : mn; /* minps(v, mn): a NaN v leaves mn */
            mx = v > mx ? v : mx;
        }
        float inv;
        if (bge_q8_row_params(mn, mx, &sr[g], &inv, &zr[g]))
            bge_q8_quantize_span(xr + k0, n, inv, zr[g], qr + k0);
        else
            memset(qr + k0, 0, (size_t)n);
    }
    memset(qr + K, zr[ng - 1], (size_t)(Kp - K));
    return 0;
}

/* x (M, K) -> q (M, Kp), scale (M, ngroups), zp (M, ngroups); see the scheme above. */
int bge_qu8_quantize__ref(const float *x, int M, int K, uint8_t *q, float *scale, int32_t *zp,
                          int nthreads) {
    if (!x || !q || !scale || !zp || M < 1 || K < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    q8_rows j = {.x = x, .qout = q, .sout = scale, .zout = zp, .K = K, .Kp = BGE_Q8_KP(K),
                 .ng = BGE_Q8_NGROUPS(K)};
    bge_run_each(M, nthreads, 0, quantize_row, &j);
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Weight quantisation at load
 * ------------------------------------------------------------------------------------- */

/* One group of n <= 64 weights: w (n) -> q (n), *scale. Returns 0 on a non-finite value.
 * Inlined with n = 64 for the full groups, so both loops vectorise with no peeling and no
 * aliasing checks (q is int8, w float: they can't alias). The max of |w| runs on the bit
 * patterns (bge_q8_abs_bits): an integer max vectorises where a float one would need
 * -ffast-math.                                                                           */
static inline __attribute__((always_inline)) int quantize_weight_group(
    const float *restrict w, const int n, int8_t *restrict q, float *restrict scale) {
    int32_t top = 0;
    for (int k = 0; k < n; k++) {
        const int32_t b = bge_q8_abs_bits(w[k]);
        top = b > top ? b : top;
    }
    if (top > BGE_Q8_FINITE_MAX) return 0; /* inf or NaN */
    const float s = bge_q8_weight_scale(top);
    *scale = s;
    for (int k = 0; k < n; k++) q[k] = bge_q8_weight_round(w[k], s);
    return 1;
}

static int weight_group_ref(const float *w, int n, int8_t *q, float *scale) {
    return n == BGE_Q8_GROUP ? quantize_weight_group(w, BGE_Q8_GROUP, q, scale)
                             : quantize_weight_group(w, n, q, scale);
}
int bge_qs8_quantize_weights__ref(const float *w, int N, int K, int8_t *w_s8, float *w_scale,
                                  int nthreads) {
    return bge_q8_quantize_weight_rows(w, N, K, w_s8, w_scale, nthreads, weight_group_ref);
}

/* ---------------------------------------------------------------------------------------
 * Reference packing (bge_q8_pack_panels, csrc/pack.c, packs for the SIMD levels)
 * ------------------------------------------------------------------------------------- */

size_t bge_qs8_packed_size__ref(int K, int N) {
    if (K < 1 || N < 1 || K > BGE_Q8_MAX_K) return 0;
    return bge_q8_weights_offset(N, BGE_Q8_NGROUPS(K)) + (size_t)N * BGE_Q8_KP(K);
}

/* w (N, K) s8, w_scale (N, ngroups) -> packed: header, w_scale, colsum, then (N, Kp) s8
 * rows. */
int bge_qs8_pack__ref(const int8_t *w, const float *w_scale, int K, int N, void *packed) {
    const int st = bge_q8_check_weights(w, w_scale, K, N, packed);
    if (st != BGE_OK) return st;
    const int Kp = BGE_Q8_KP(K);
    bge_q8_write_head(w, w_scale, K, N, packed, BGE_Q8_LAYOUT_REF, 1, Kp);
    int8_t *wt = (int8_t *)packed + bge_q8_weights_offset(N, BGE_Q8_NGROUPS(K));
    for (int n = 0; n < N; n++) {
        memcpy(wt + (size_t)n * Kp, w + (size_t)n * K, (size_t)K);
        memset(wt + (size_t)n * Kp + K, 0, (size_t)(Kp - K));
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Reference GEMM
 * ------------------------------------------------------------------------------------- */

/* sum_{k < Kp} q[k] * w[k]: q (Kp) u8, w (Kp) s8. */
static int32_t dot_u8s8(const uint8_t *q, const int8_t *w, int Kp) {
    int32_t s = 0;
    for (int k = 0; k < Kp; k++) s += (int32_t)q[k] * (int32_t)w[k];
    return s;
}

/* The fp32 sum over groups of one output (before the bias), the scheme's order:
 * qr (Kp) u8 and wr (Kp) s8 one row each; sr, zr (ngroups) the row's; ws, cs the column's
 * group 0 entries, group stride gs. */
static float q8_dot_groups(const uint8_t *qr, const int8_t *wr, int Kp, const float *sr,
                           const int32_t *zr, int ngroups, const float *ws, const int32_t *cs,
                           int gs) {
    float s = 0.0f;
    for (int g = 0; g < ngroups; g++) {
        const int k0 = g * BGE_Q8_GROUP;
        const int n = Kp - k0 < BGE_Q8_GROUP ? Kp - k0 : BGE_Q8_GROUP;
        const int32_t acc = dot_u8s8(qr + k0, wr + k0, n);
        /* exact in int32: |acc|, |zp colsum| <= 64 255 127 */
        const int32_t d = acc - zr[g] * cs[(size_t)g * gs];
        const float sc = sr[g] * ws[(size_t)g * gs];
        const float v = (float)d * sc;
        s = s + v;
    }
    return s;
}

/* The epilogue of one output from its pre-bias sum. */
static inline float q8_out(float s, float bias, const float *res, int epilogue) {
    float v = s + bias;
    if (epilogue == BGE_EPI_BIAS_GELU)
        v = bge_gelu_erf_scalar(v);
    else if (epilogue == BGE_EPI_BIAS_RESIDUAL)
        v = v + *res;
    return v;
}

/* Row m of out. */
static int gemm_row(void *ctx, int m, int thread) {
    const q8_rows *j = (const q8_rows *)ctx;
    const int Kp = j->Kp, N = j->N, ng = j->ng;
    const uint8_t *qr = j->q + (size_t)m * Kp;
    (void)thread;
    for (int n = 0; n < N; n++) {
        const size_t o = (size_t)m * N + n;
        const size_t at = bge_q8_scale_index(n, 0, 1, ng);
        const float s = q8_dot_groups(qr, j->wt + (size_t)n * Kp, Kp, j->scale + (size_t)m * ng,
                                      j->zp + (size_t)m * ng, ng, j->ws + at, j->cs + at, 1);
        j->out[o] = q8_out(s, j->bias[n],
                           j->epilogue == BGE_EPI_BIAS_RESIDUAL ? j->res + o : NULL,
                           j->epilogue);
    }
    return 0;
}

/* out (M, N) = epi(sum over groups of (q - zp) @ w_s8^T * scale w_scale + bias); q (M, Kp),
 * scale, zp (M, ngroups); packed by bge_qs8_pack__ref. res (M, N) may equal out: each
 * element reads its res before it writes. */
int bge_qu8s8_gemm__ref(const uint8_t *q, const float *scale, const int32_t *zp, int M, int K,
                        int N, const void *packed, const float *bias, const float *res,
                        float *out, int epilogue, int nthreads) {
    int st = bge_check_q8_args(q, M, K, N, packed, nthreads);
    if (st == BGE_OK) st = bge_check_q8_epi_args(scale, zp, bias, res, out, epilogue);
    if (st == BGE_OK) st = bge_q8_check_header(packed, BGE_Q8_LAYOUT_REF, K, N);
    if (st != BGE_OK) return st;
    const int ng = BGE_Q8_NGROUPS(K);
    q8_rows j = {.q = q, .scale = scale, .zp = zp, .bias = bias, .res = res, .out = out,
                 .ws = bge_q8_wscale(packed), .cs = bge_q8_colsum(packed),
                 .wt = (const int8_t *)packed + bge_q8_weights_offset(N, ng), .K = K,
                 .Kp = BGE_Q8_KP(K), .N = N, .ng = ng, .epilogue = epilogue};
    bge_run_each(M, nthreads, 0, gemm_row, &j);
    return BGE_OK;
}

/* Row m of acc. */
static int gemm_i32_row(void *ctx, int m, int thread) {
    const q8_rows *j = (const q8_rows *)ctx;
    const int Kp = j->Kp, N = j->N;
    (void)thread;
    for (int n = 0; n < N; n++)
        j->acc[(size_t)m * N + n] = dot_u8s8(j->q + (size_t)m * Kp, j->wt + (size_t)n * Kp, Kp);
    return 0;
}

/* acc (M, N) = q (M, Kp) @ w_s8^T, int32, no zero-point term; packed by bge_qs8_pack__ref. */
int bge_qu8s8_gemm_i32__ref(const uint8_t *q, int M, int K, int N, const void *packed,
                            int32_t *acc, int nthreads) {
    int st = bge_check_q8_args(q, M, K, N, packed, nthreads);
    if (st == BGE_OK && !acc) st = BGE_ERR_ARG;
    if (st == BGE_OK) st = bge_q8_check_header(packed, BGE_Q8_LAYOUT_REF, K, N);
    if (st != BGE_OK) return st;
    q8_rows j = {.q = q, .acc = acc, .K = K, .Kp = BGE_Q8_KP(K), .N = N,
                 .wt = (const int8_t *)packed + bge_q8_weights_offset(N, BGE_Q8_NGROUPS(K))};
    bge_run_each(M, nthreads, 0, gemm_i32_row, &j);
    return BGE_OK;
}

/* Scalar multiply-add chains (the compiler may vectorise them); 2 ops per product. */
double bge_qu8s8_dot_loop__ref(long iters) {
    volatile int32_t seed = 1;
    int32_t acc[8];
    for (int i = 0; i < 8; i++) acc[i] = seed * i;
    const int32_t a = 3 * seed;
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 8; i++) acc[i] = acc[i] * a + (int32_t)it;
    int32_t sink = 0;
    for (int i = 0; i < 8; i++) sink ^= acc[i];
    seed = sink;
    return 16.0 * (double)iters;
}