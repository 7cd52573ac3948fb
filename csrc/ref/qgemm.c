/*
 * ref/qgemm.c: the reference int8 GEMM (u8 activations x s8 weights, int32 sums, fp32
 * epilogue), the activation quantiser, the weight packing of every level, and the tile
 * driver the SIMD levels share.
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
 * Packed layout, every level: a 64-byte bge_q8_header (bge_internal.h: magic "BGQ8", the
 * layout id of the kernel that reads it, K, N, Kp, Np, nr, kgroup, elt, group = 64,
 * ngroups), then
 *   w_scale (Np, ngroups) fp32, 0 past N    at byte 64
 *   colsum  (Np, ngroups) int32, 0 past N   at byte 64 + 4 ngroups Np
 *   weights                                 at byte 64 + round_up(8 ngroups Np, 64)
 * w_scale and colsum panel by panel, and in a panel group by group: w_scale[n, g] at float
 * (p ngroups + g) nr + j for n = nr p + j (bge_q8_scale_index), so one group's scales of a
 * panel's columns are contiguous (group stride nr) and a panel's are one run of bytes,
 * read in step with its weights. (Group-major over all Np columns, as before, put a
 * panel's groups Np apart: 1.01-1.05x slower on the model's 48 GEMMs, 2 threads, AMX.)
 * The weights: ceil(N / nr) panels of nr columns;
 *   panel p covers columns n = nr p .. nr p + nr - 1 and holds G = Kp / kgroup groups of
 *   kgroup consecutive k; inside a panel, group g, column j, element r:
 *     weights[((p G + g) nr + j) kgroup + r] = w_s8[nr p + j, kgroup g + r]
 *   (int8; elt = 1 in the header), 0 where the column is >= N
 *   or k >= K. The reference (layout REF) is the case nr = 1, kgroup = Kp, elt = 1: W
 *   itself, (N, Kp) row-major s8. For the SIMD levels (bge_q8_pack_panels) one k-group of
 *   a panel is nr * kgroup contiguous bytes: for
 *   vpdpbusd (kgroup 4, s8) one 64-byte zmm holds 16 columns x 4 k, one 32-byte ymm 8 x 4;
 *   for vpmaddwd (kgroup 2, s8) 16 bytes hold 8 columns x 2 k, one ymm once sign-extended
 *   as loaded. (These k-groups of the
 *   layout are the instruction's; the quantisation groups of 64 k are whole runs of them.)
 *   Layout ids and tiles: AVX2 nr 24 kgroup 2; AVXVNNI nr 24 kgroup 4; VNNI nr 48 kgroup 4;
 *   AMX nr 48 kgroup 4 (the same bytes as VNNI, its own id).
 * A GEMM given another layout's bytes (another table's packing) returns BGE_ERR_PACKING.
 */
#include <math.h>
#include <string.h>

#include "../bge_internal.h"

/* ---------------------------------------------------------------------------------------
 * Quantisation steps (shared with the SIMD quantisers)
 * ------------------------------------------------------------------------------------- */

static inline int32_t clamp_u8(int32_t v) { return v < 0 ? 0 : v > 255 ? 255 : v; }

void bge_q8_quantize_span(const float *x, int n, float inv, int32_t zp, uint8_t *q) {
    for (int k = 0; k < n; k++) {
        /* INT32_MIN + zp does not overflow: zp is in [0, 255] */
        q[k] = (uint8_t)clamp_u8(bge_q8_cvt(x[k] * inv) + zp);
    }
}

/* x (M, K) -> q (M, Kp), scale (M, ngroups), zp (M, ngroups); see the scheme above. */
int bge_qu8_quantize__ref(const float *x, int M, int K, uint8_t *q, float *scale, int32_t *zp,
                          int nthreads) {
    if (!x || !q || !scale || !zp || M < 1 || K < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    const int Kp = BGE_Q8_KP(K), ng = BGE_Q8_NGROUPS(K);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * K;
        uint8_t *qr = q + (size_t)m * Kp;
        float *sr = scale + (size_t)m * ng;
        int32_t *zr = zp + (size_t)m * ng;
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
    }
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

int bge_q8_quantize_weight_rows(const float *w, int N, int K, int8_t *w_s8, float *w_scale,
                                int nthreads, bge_q8_weight_group_fn group) {
    if (!w || !w_s8 || !w_scale || N < 1 || K < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    const int ng = BGE_Q8_NGROUPS(K);
    int bad = 0;
#pragma omp parallel for if (nthreads > 1) num_threads(nthreads) schedule(static) \
    reduction(| : bad)
    for (int n = 0; n < N; n++) {
        const float *wr = w + (size_t)n * K;
        int8_t *qr = w_s8 + (size_t)n * K;
        float *sr = w_scale + (size_t)n * ng;
        int ok = 1;
        for (int g = 0, k0 = 0; k0 < K; g++, k0 += BGE_Q8_GROUP)
            ok &= group(wr + k0, K - k0 < BGE_Q8_GROUP ? K - k0 : BGE_Q8_GROUP, qr + k0, sr + g);
        bad |= !ok;
    }
    return bad ? BGE_ERR_ARG : BGE_OK;
}

int bge_qs8_quantize_weights__ref(const float *w, int N, int K, int8_t *w_s8, float *w_scale,
                                  int nthreads) {
    return bge_q8_quantize_weight_rows(w, N, K, w_s8, w_scale, nthreads, weight_group_ref);
}

/* ---------------------------------------------------------------------------------------
 * Packing: header, scales, column sums, weights
 * ------------------------------------------------------------------------------------- */

int bge_q8_check_header(const void *packed, uint32_t layout, int K, int N) {
    const bge_q8_header *h = (const bge_q8_header *)packed;
    if (h->magic != BGE_Q8_MAGIC || h->layout != layout) return BGE_ERR_PACKING;
    if (h->K != K || h->N != N || h->Kp != BGE_Q8_KP(K) || h->nr < 1 || h->Np < N ||
        h->Np % h->nr || h->group != BGE_Q8_GROUP || h->ngroups != BGE_Q8_NGROUPS(K))
        return BGE_ERR_ARG;
    return BGE_OK;
}

static int check_weights(const int8_t *w, const float *w_scale, int K, int N,
                         const void *packed) {
    if (!w || !w_scale || !packed || K < 1 || N < 1 || K > BGE_Q8_MAX_K) return BGE_ERR_ARG;
    const size_t n = (size_t)N * K;
    int bad = 0; /* no early exit: the scan vectorises */
    for (size_t i = 0; i < n; i++) bad |= w[i] == -128;
    return bad ? BGE_ERR_ARG : BGE_OK;
}

/* Header, w_scale and colsum (Np x ngroups each, at bge_q8_scale_index) of a packing with
 * panels of nr columns; w_scale (N, ngroups) as the caller gives it. */
static void write_head(const int8_t *w, const float *w_scale, int K, int N, void *packed,
                       uint32_t layout, int nr, int kgroup) {
    const int Np = (N + nr - 1) / nr * nr, ng = BGE_Q8_NGROUPS(K);
    bge_q8_header h;
    memset(&h, 0, sizeof h);
    h.magic = BGE_Q8_MAGIC;
    h.layout = layout;
    h.K = K;
    h.N = N;
    h.Kp = BGE_Q8_KP(K);
    h.Np = Np;
    h.nr = nr;
    h.kgroup = kgroup;
    h.elt = 1; /* s8 */
    h.group = BGE_Q8_GROUP;
    h.ngroups = ng;
    memcpy(packed, &h, sizeof h);
    float *ws = (float *)((char *)packed + BGE_Q8_HEADER_BYTES);
    int32_t *cs = (int32_t *)(ws + (size_t)ng * Np);
    for (int n = 0; n < Np; n++) {
        const size_t at = bge_q8_scale_index(n, 0, nr, ng);
        for (int g = 0; g < ng; g++) {
            const int k0 = g * BGE_Q8_GROUP;
            const int k1 = K - k0 < BGE_Q8_GROUP ? K : k0 + BGE_Q8_GROUP;
            int32_t s = 0;
            if (n < N)
                for (int k = k0; k < k1; k++) s += w[(size_t)n * K + k];
            ws[at + (size_t)g * nr] = n < N ? w_scale[(size_t)n * ng + g] : 0.0f;
            cs[at + (size_t)g * nr] = s;
        }
    }
    /* the gap up to the 64-byte aligned weights */
    char *end = (char *)(cs + (size_t)ng * Np),
         *wt = (char *)packed + bge_q8_weights_offset(Np, ng);
    memset(end, 0, (size_t)(wt - end));
}

size_t bge_qs8_packed_size__ref(int K, int N) {
    if (K < 1 || N < 1 || K > BGE_Q8_MAX_K) return 0;
    return bge_q8_weights_offset(N, BGE_Q8_NGROUPS(K)) + (size_t)N * BGE_Q8_KP(K);
}

/* w (N, K) s8, w_scale (N, ngroups) -> packed: header, w_scale, colsum, then (N, Kp) s8
 * rows. */
int bge_qs8_pack__ref(const int8_t *w, const float *w_scale, int K, int N, void *packed) {
    const int st = check_weights(w, w_scale, K, N, packed);
    if (st != BGE_OK) return st;
    const int Kp = BGE_Q8_KP(K);
    write_head(w, w_scale, K, N, packed, BGE_Q8_LAYOUT_REF, 1, Kp);
    int8_t *wt = (int8_t *)packed + bge_q8_weights_offset(N, BGE_Q8_NGROUPS(K));
    for (int n = 0; n < N; n++) {
        memcpy(wt + (size_t)n * Kp, w + (size_t)n * K, (size_t)K);
        memset(wt + (size_t)n * Kp + K, 0, (size_t)(Kp - K));
    }
    return BGE_OK;
}

size_t bge_q8_panels_size(int K, int N, int nr, int kgroup) {
    if (K < 1 || N < 1 || K > BGE_Q8_MAX_K || nr < 1 || kgroup < 1) return 0;
    const size_t Np = ((size_t)N + nr - 1) / nr * nr;
    return bge_q8_weights_offset((int)Np, BGE_Q8_NGROUPS(K)) + Np * BGE_Q8_KP(K);
}

int bge_q8_pack_panels(const int8_t *w, const float *w_scale, int K, int N, void *packed,
                       uint32_t layout, int nr, int kgroup) {
    const int st = check_weights(w, w_scale, K, N, packed);
    if (st != BGE_OK) return st;
    if (nr < 1 || (kgroup != 1 && kgroup != 2 && kgroup != 4) || BGE_Q8_KP(K) % kgroup)
        return BGE_ERR_ARG;
    write_head(w, w_scale, K, N, packed, layout, nr, kgroup);
    const int Kp = BGE_Q8_KP(K), Np = (N + nr - 1) / nr * nr, G = Kp / kgroup;
    int8_t *wt = (int8_t *)packed + bge_q8_weights_offset(Np, BGE_Q8_NGROUPS(K));
    /* row by row (the source is read in order), one k-group of kgroup bytes at a time */
    const size_t gstride = (size_t)nr * kgroup; /* elements from one k-group to the next */
    const int full = K / kgroup; /* k-groups wholly inside K */
    for (int n = 0; n < Np; n++) {
        const int p = n / nr, j = n % nr;
        const int8_t *src = n < N ? w + (size_t)n * K : NULL;
        const size_t i0 = ((size_t)p * G * nr + j) * kgroup;
        int g = 0;
        if (src && kgroup == 4) { /* a constant-size copy: one 4-byte move */
            for (; g < full; g++) memcpy(wt + i0 + (size_t)g * gstride, src + 4 * g, 4);
        } else if (src) {
            for (; g < full; g++)
                memcpy(wt + i0 + (size_t)g * gstride, src + g * kgroup, (size_t)kgroup);
        }
        for (; g < G; g++) { /* the k-groups that reach past K, and padding columns */
            const size_t i = i0 + (size_t)g * gstride;
            for (int r = 0; r < kgroup; r++) {
                const int k = g * kgroup + r;
                wt[i + r] = (src && k < K) ? src[k] : 0;
            }
        }
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * Reference GEMM
 * ------------------------------------------------------------------------------------- */

static int check_q_args(const uint8_t *q, int M, int K, int N, const void *packed, int nthreads) {
    if (!q || !packed || M < 1 || K < 1 || N < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    return BGE_OK;
}

static int check_epi_args(const float *scale, const int32_t *zp, const float *bias,
                          const float *res, const float *out, int epilogue) {
    if (!scale || !zp || !bias || !out) return BGE_ERR_ARG;
    if (epilogue != BGE_EPI_BIAS && epilogue != BGE_EPI_BIAS_GELU &&
        epilogue != BGE_EPI_BIAS_RESIDUAL)
        return BGE_ERR_ARG;
    if (epilogue == BGE_EPI_BIAS_RESIDUAL && !res) return BGE_ERR_ARG;
    return BGE_OK;
}

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

/* out (M, N) = epi(sum over groups of (q - zp) @ w_s8^T * scale w_scale + bias); q (M, Kp),
 * scale, zp (M, ngroups); packed by bge_qs8_pack__ref. res (M, N) may equal out: each
 * element reads its res before it writes. */
int bge_qu8s8_gemm__ref(const uint8_t *q, const float *scale, const int32_t *zp, int M, int K,
                        int N, const void *packed, const float *bias, const float *res,
                        float *out, int epilogue, int nthreads) {
    int st = check_q_args(q, M, K, N, packed, nthreads);
    if (st == BGE_OK) st = check_epi_args(scale, zp, bias, res, out, epilogue);
    if (st == BGE_OK) st = bge_q8_check_header(packed, BGE_Q8_LAYOUT_REF, K, N);
    if (st != BGE_OK) return st;
    const int Kp = BGE_Q8_KP(K), ng = BGE_Q8_NGROUPS(K);
    const float *ws = bge_q8_wscale(packed);
    const int32_t *cs = bge_q8_colsum(packed);
    const int8_t *wt = (const int8_t *)packed + bge_q8_weights_offset(N, ng);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; m++) {
        const uint8_t *qr = q + (size_t)m * Kp;
        for (int n = 0; n < N; n++) {
            const size_t o = (size_t)m * N + n;
            const size_t at = bge_q8_scale_index(n, 0, 1, ng);
            const float s = q8_dot_groups(qr, wt + (size_t)n * Kp, Kp, scale + (size_t)m * ng,
                                          zp + (size_t)m * ng, ng, ws + at, cs + at, 1);
            out[o] = q8_out(s, bias[n], epilogue == BGE_EPI_BIAS_RESIDUAL ? res + o : NULL,
                            epilogue);
        }
    }
    return BGE_OK;
}

/* acc (M, N) = q (M, Kp) @ w_s8^T, int32, no zero-point term; packed by bge_qs8_pack__ref. */
int bge_qu8s8_gemm_i32__ref(const uint8_t *q, int M, int K, int N, const void *packed,
                            int32_t *acc, int nthreads) {
    int st = check_q_args(q, M, K, N, packed, nthreads);
    if (st == BGE_OK && !acc) st = BGE_ERR_ARG;
    if (st == BGE_OK) st = bge_q8_check_header(packed, BGE_Q8_LAYOUT_REF, K, N);
    if (st != BGE_OK) return st;
    const int Kp = BGE_Q8_KP(K);
    const int8_t *wt = (const int8_t *)packed + bge_q8_weights_offset(N, BGE_Q8_NGROUPS(K));
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
            acc[(size_t)m * N + n] = dot_u8s8(q + (size_t)m * Kp, wt + (size_t)n * Kp, Kp);
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

/* ---------------------------------------------------------------------------------------
 * The tile driver of the SIMD levels
 * ------------------------------------------------------------------------------------- */

#define Q8_TILE_MAX (16 * 64)  /* int32 of the largest tile, MR x NR (amx: 16 x 48)     */
#define Q8_MC_BYTES (128 * 1024) /* q bytes of one row block, kept in L2              */

typedef struct q8_job {
    const bge_q8_gemm_impl *impl;
    const uint8_t *q;
    const float *scale, *wscale, *bias, *res;
    const int32_t *zp, *colsum;
    const char *weights;
    float *out;
    int32_t *acc;
    int M, N, Kp, ngroups, epilogue;
    size_t panel_bytes;
} q8_job;

/* Row tiles [tb, te) of panel p (between the impl's begin and end). */
static void q8_panel(const q8_job *j, int tb, int te, int p) {
    const bge_q8_gemm_impl *im = j->impl;
    int32_t tile[Q8_TILE_MAX] __attribute__((aligned(64)));
    float ftile[Q8_TILE_MAX] __attribute__((aligned(64)));
    const int MR = im->mr, NR = im->nr, Kp = j->Kp, N = j->N, ng = j->ngroups;
    const int n0 = p * NR, nw = N - n0 < NR ? N - n0 : NR;
    const void *panel = j->weights + (size_t)p * j->panel_bytes;
    const size_t at = bge_q8_scale_index(n0, 0, NR, ng); /* the panel's scales */
    for (int t = tb; t < te; t++) {
        const int m0 = t * MR, mr = j->M - m0 < MR ? j->M - m0 : MR;
        const size_t o = (size_t)m0 * N + n0;
        bge_prefetch_block(j->acc ? (const void *)(j->acc + o) : (const void *)(j->out + o), mr,
                           (size_t)N * 4, nw * 4); /* int32 or fp32 */
        if (j->acc) {
            im->tile(j->q + (size_t)m0 * Kp, (size_t)Kp, Kp, panel, mr, nw, tile);
            for (int i = 0; i < mr; i++)
                memcpy(j->acc + o + (size_t)i * N, tile + i * NR, (size_t)nw * sizeof(int32_t));
        } else {
            im->gtile(j->q + (size_t)m0 * Kp, (size_t)Kp, Kp, panel, mr, nw,
                      j->scale + (size_t)m0 * ng, j->zp + (size_t)m0 * ng, ng, j->wscale + at,
                      j->colsum + at, NR, ftile);
            im->epilogue(ftile, mr, nw, j->bias + n0,
                         j->epilogue == BGE_EPI_BIAS_RESIDUAL ? j->res + o : NULL, j->out + o,
                         (size_t)N, j->epilogue);
        }
    }
}

/* Row tiles of one row block: Q8_MC_BYTES of q. */
static int q8_row_block_tiles(int Kp, int MR) {
    const int mc_tiles = (int)(Q8_MC_BYTES / ((long long)Kp * MR));
    return mc_tiles < 1 ? 1 : mc_tiles;
}

/* Row tiles [t0, t1) x panels [p0, p1). Within a row block, panel by panel: one panel is
 * reused from L1/L2 by every tile of the block. */
static void q8_block(const q8_job *j, int t0, int t1, int p0, int p1) {
    const bge_q8_gemm_impl *im = j->impl;
    const int mc_tiles = q8_row_block_tiles(j->Kp, im->mr);
    if (im->begin) im->begin();
    for (int tb = t0; tb < t1; tb += mc_tiles) {
        const int te = tb + mc_tiles < t1 ? tb + mc_tiles : t1;
        for (int p = p0; p < p1; p++) q8_panel(j, tb, te, p);
    }
    if (im->end) im->end();
}

/* Unit u (few rows): panel u, every row tile. */
static void q8_unit(void *ctx, int u, int next) {
    const q8_job *j = (const q8_job *)ctx;
    (void)next; /* the hardware prefetchers follow a run of panels */
    q8_panel(j, 0, (j->M - 1) / j->impl->mr + 1, u);
}

/* Rectangle row tiles [t0, t1) x panels [p0, p1) (more rows). */
static void q8_rect(void *ctx, int t0, int t1, int p0, int p1) {
    q8_block((const q8_job *)ctx, t0, t1, p0, p1);
}

int bge_q8_gemm_run(const bge_q8_gemm_impl *impl, const uint8_t *q, const float *scale,
                    const int32_t *zp, int M, int K, int N, const void *packed,
                    const float *bias, const float *res, float *out, int32_t *acc,
                    int epilogue, int nthreads) {
    int st = check_q_args(q, M, K, N, packed, nthreads);
    if (st == BGE_OK) st = acc ? BGE_OK : check_epi_args(scale, zp, bias, res, out, epilogue);
    if (st == BGE_OK) st = bge_q8_check_header(packed, impl->layout, K, N);
    if (st != BGE_OK) return st;
    const bge_q8_header *h = (const bge_q8_header *)packed;
    if (h->nr != impl->nr || h->kgroup != impl->kgroup || h->elt != 1 ||
        impl->mr * impl->nr > Q8_TILE_MAX)
        return BGE_ERR_PACKING;
    q8_job j = {
        .impl = impl, .q = q, .scale = scale, .wscale = bge_q8_wscale(packed), .bias = bias,
        .res = res, .zp = zp, .colsum = bge_q8_colsum(packed),
        .weights = (const char *)packed + bge_q8_weights_offset(h->Np, h->ngroups),
        .out = out, .acc = acc, .M = M, .N = N, .Kp = h->Kp,
        .ngroups = h->ngroups, .epilogue = epilogue,
        .panel_bytes = (size_t)h->Kp * impl->nr,
    };
    const int MR = impl->mr, NR = impl->nr;
    const int mt = (M - 1) / MR + 1, np = (N - 1) / NR + 1;
    if (nthreads == 1) {
        q8_block(&j, 0, mt, 0, np);
        return BGE_OK;
    }
    /* Few rows (one row block, at most 8 row tiles: 128 rows on AMX): the weights stream
     * from memory, and a thread's hardware prefetchers keep up only on one run of panels.
     * So each thread takes its own run of panels, every row tile of each, and a thread
     * done early takes panels from the back of the others' runs (bge_run_units, see
     * gemm.c). Measured on a Xeon with AMX, 2 threads, the model's 48 GEMMs, alternated:
     * one run per thread against 4 rectangles per thread taken dynamically (every few
     * panels a jump to another rectangle's start): AMX 1.13x faster at 1 row, 1.23-1.32x at
     * 8-16, 1.14-1.18x at 32-128; VNNI 1.06-1.19x at 16-128. Not the tile configuration
     * that AMX loads per rectangle: loading it once per thread instead changed nothing.
     * Taking from the others' runs then added 1.01-1.13x (at 1-64 rows, while one vCPU
     * ran slow). */
    const int nt = nthreads < np ? nthreads : np;
    if (mt <= 8 && mt <= q8_row_block_tiles(j.Kp, MR) && np <= BGE_UNITS_MAX) {
        unsigned char taken[BGE_UNITS_MAX];
        bge_run_units(np, nt, taken, q8_unit, &j, impl->begin, impl->end);
        return BGE_OK;
    }
    bge_run_rectangles(M, mt, np, nthreads, q8_rect, &j); /* else rectangles */
    return BGE_OK;
}
