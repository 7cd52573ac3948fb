/*
 * ref/gemm.c: the reference fp32 GEMM with fused epilogues, and its packing.
 *
 * Packed layout (reference): W^T, i.e. (K, N) row-major floats: packed[k*N + n] = w[n*K + k].
 * Size K*N floats. Reading W^T row by row lets the inner loop run over n, where every output
 * element keeps its own accumulator: the compiler may vectorise across n without changing
 * any sum. Each out[m, n] is summed in the order k = 0, 1, ..., K-1, starting from 0.0f.
 */
#include <math.h>

#include "../bge_internal.h"

/* Columns handled per pass: the accumulators live on the stack, so `res` may alias `out`. */
#define REF_GEMM_NC 256

float bge_gelu_erf_scalar(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

size_t bge_f32_packed_size__ref(int K, int N) {
    if (K < 1 || N < 1) return 0;
    return (size_t)K * (size_t)N;
}

/* w (N, K) row-major -> packed (K, N) row-major: one panel as wide as N. */
int bge_f32_pack__ref(const float *w, int K, int N, float *packed) {
    if (!w || !packed || K < 1 || N < 1) return BGE_ERR_ARG;
    bge_f32_pack_panels(w, K, N, N, packed);
    return BGE_OK;
}

/* One row of out: x_row (K), packed (K, N), out_row (N). */
static void gemm_row(const float *x_row, int K, int N, const float *packed, const float *bias,
                     const float *res_row, float *out_row, int epilogue) {
    float acc[REF_GEMM_NC];
    for (int n0 = 0; n0 < N; n0 += REF_GEMM_NC) {
        const int nc = N - n0 < REF_GEMM_NC ? N - n0 : REF_GEMM_NC;
        for (int j = 0; j < nc; j++) acc[j] = 0.0f;
        for (int k = 0; k < K; k++) {
            const float a = x_row[k];
            const float *b = packed + (size_t)k * N + n0;
            for (int j = 0; j < nc; j++) acc[j] += a * b[j];
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

typedef struct gemm_rows {
    const float *x, *packed, *bias, *res;
    float *out;
    int K, N, epilogue;
} gemm_rows;

/* Row m of out (bge_run_each's item). */
static int gemm_row_m(void *ctx, int m, int thread) {
    const gemm_rows *j = (const gemm_rows *)ctx;
    const size_t N = (size_t)j->N;
    (void)thread;
    gemm_row(j->x + (size_t)m * j->K, j->K, j->N, j->packed, j->bias,
             j->epilogue == BGE_EPI_BIAS_RESIDUAL ? j->res + m * N : NULL, j->out + m * N,
             j->epilogue);
    return 0;
}

int bge_f32_gemm__ref(const float *x, int M, int K, int N, const float *packed,
                      const float *bias, const float *res, float *out, int epilogue,
                      int nthreads) {
    int st = bge_check_gemm_args(x, M, K, N, packed, bias, res, out, epilogue, nthreads);
    if (st != BGE_OK) return st;
    gemm_rows j = {x, packed, bias, res, out, K, N, epilogue};
    bge_run_each(M, nthreads, 0, gemm_row_m, &j);
    return BGE_OK;
}

