/*
 * ref/bgemm.c: the bf16 scheme of bge.h in plain C: the conversion and the reference GEMM
 * (the panel packing every level shares is in csrc/pack.c, the SIMD levels' driver in
 * csrc/gemm_driver.c).
 *
 * The reference emulates vdpbf16ps one pair at a time: per output (m, n), acc = +0.0f, then
 * for each pair of k in ascending order the odd k, then the even k, each added to acc as
 * ftz(fma(x, w, acc)) (bge.h). Its packed layout is the panels of bge_internal.h with one
 * panel as wide as N: the pair row g holds the N words of (n, pair g), so the inner loop
 * runs over n with one accumulator per output element.
 */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "../bge_internal.h"

#define REF_NC 256 /* columns per pass: the accumulators live on the stack (res may alias out) */

void bge_bf16_from_f32(const float *x, size_t n, uint16_t *out) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        out[i] = bge_bf16_bits(u);
    }
}

/* One step of the sum: ftz(fma(x, w, acc)), x and w bf16 values (never denormal).
 * The product of two bf16 has at most 16 significant bits, so x * w in fp32 is exact
 * whenever it is a normal number (or a zero factor makes it +-0): then acc + p is the fma,
 * rounded once. Otherwise (a product that underflows or overflows fp32) fmaf does it. */
static inline float bf16_step(float acc, float x, float w) {
    const float p = x * w;
    const float r = (isnormal(p) || x == 0.0f || w == 0.0f) ? acc + p : fmaf(x, w, acc);
    return fabsf(r) < FLT_MIN ? copysignf(0.0f, r) : r; /* FTZ (NaN compares false) */
}

/* ---------------------------------------------------------------------------------------
 * The reference
 * ------------------------------------------------------------------------------------- */

size_t bge_bf16_packed_size__ref(int K, int N) { return bge_bf16_panels_size(K, N, N); }

int bge_bf16_pack__ref(const float *w, int K, int N, void *packed) {
    return bge_bf16_pack_panels(w, K, N, N, packed);
}

size_t bge_bf16_gemm_scratch__ref(int M, int K) {
    if (M < 1 || K < 1 || K > INT_MAX - 1) return 0;
    return (size_t)M * (size_t)BGE_BF16_KP(K) * 2;
}

/* One row: xb (Kp) bf16, pairs (Kp/2 rows of N words), out_row (N). */
static void bgemm_row(const uint16_t *xb, int Kp, int N, const uint16_t *pairs,
                      const float *bias, const float *res_row, float *out_row, int epilogue) {
    float acc[REF_NC];
    for (int n0 = 0; n0 < N; n0 += REF_NC) {
        const int nc = N - n0 < REF_NC ? N - n0 : REF_NC;
        for (int j = 0; j < nc; j++) acc[j] = 0.0f;
        for (int g = 0; g < Kp / 2; g++) {
            const float xe = bge_bf16_to_f32(xb[2 * g]), xo = bge_bf16_to_f32(xb[2 * g + 1]);
            const uint16_t *wp = pairs + ((size_t)g * N + n0) * 2;
            for (int j = 0; j < nc; j++) {
                acc[j] = bf16_step(acc[j], xo, bge_bf16_to_f32(wp[2 * j + 1]));
                acc[j] = bf16_step(acc[j], xe, bge_bf16_to_f32(wp[2 * j]));
            }
        }
        for (int j = 0; j < nc; j++) {
            float v = acc[j] + bias[n0 + j];
            if (epilogue == BGE_EPI_BIAS_GELU)
                v = bge_gelu_erf_scalar(v);
            else if (epilogue == BGE_EPI_BIAS_RESIDUAL)
                v = v + res_row[n0 + j];
            out_row[n0 + j] = v;
        }
    }
}

typedef struct bgemm_rows {
    const float *x;
    const uint16_t *pairs;
    const float *bias, *res;
    float *out;
    uint16_t *xb;
    int K, Kp, N, epilogue;
} bgemm_rows;

/* Row m: x's row converted into the scratch, then its outputs (bge_run_each's item). */
static int bgemm_row_m(void *ctx, int m, int thread) {
    const bgemm_rows *j = (const bgemm_rows *)ctx;
    uint16_t *row = j->xb + (size_t)m * j->Kp;
    (void)thread;
    bge_bf16_from_f32(j->x + (size_t)m * j->K, (size_t)j->K, row);
    if (j->Kp != j->K) row[j->K] = 0;
    const size_t N = (size_t)j->N;
    bgemm_row(row, j->Kp, j->N, j->pairs, j->bias,
              j->epilogue == BGE_EPI_BIAS_RESIDUAL ? j->res + m * N : NULL, j->out + m * N,
              j->epilogue);
    return 0;
}

int bge_bf16_gemm__ref(const float *x, int M, int K, int N, const void *packed,
                       const float *bias, const float *res, float *out, int epilogue,
                       void *scratch, size_t scratch_bytes, int nthreads) {
    int st = bge_check_gemm_args(x, M, K, N, (const float *)packed, bias, res, out, epilogue,
                                 nthreads);
    if (st != BGE_OK) return st;
    if ((st = bge_bf16_check_header(packed, N, K, N, NULL)) != BGE_OK) return st;
    if (!scratch || scratch_bytes < bge_bf16_gemm_scratch__ref(M, K)) return BGE_ERR_SCRATCH;
    const int Kp = BGE_BF16_KP(K);
    const uint16_t *pairs =
        (const uint16_t *)((const char *)packed + BGE_BF16_HEADER_BYTES);
    bgemm_rows j = {x, pairs, bias, res, out, (uint16_t *)scratch, K, Kp, N, epilogue};
    bge_run_each(M, nthreads, 0, bgemm_row_m, &j);
    return BGE_OK;
}

/* The reference's "peak": scalar steps in 8 independent chains (2 flops each). */
double bge_bf16_dot_loop__ref(long iters) {
    volatile float seed = 1.0f;
    float acc[8];
    for (int i = 0; i < 8; i++) acc[i] = seed * (float)i;
    const float a = 0.99609375f * seed, b = 0.0078125f * seed;
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 8; i++) acc[i] = bf16_step(acc[i], a, b);
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += acc[i];
    seed = s;
    return 2.0 * 8.0 * (double)iters;
}
