/*
 * ref/norm.c: reference LayerNorm, softmax, GELU and L2 normalisation.
 *
 * The references reduce in double where a reduction is cheap (means, variances, softmax
 * sums, norms): they are the truth the SIMD kernels are measured against.
 */
#include <math.h>

#include "../bge_internal.h"

typedef struct layernorm_rows {
    const float *x, *gamma, *beta;
    float *out;
    float eps;
    int C;
} layernorm_rows;

/* Row t. Two passes: mean, then the biased variance of (x - mean). */
static int layernorm_row(void *ctx, int t, int thread) {
    const layernorm_rows *j = (const layernorm_rows *)ctx;
    const int C = j->C;
    const float *xr = j->x + (size_t)t * C;
    float *yr = j->out + (size_t)t * C;
    (void)thread;
    double sum = 0.0;
    for (int c = 0; c < C; c++) sum += xr[c];
    const double mean = sum / C;
    double ss = 0.0;
    for (int c = 0; c < C; c++) {
        const double d = xr[c] - mean;
        ss += d * d;
    }
    const double rstd = 1.0 / sqrt(ss / C + (double)j->eps);
    for (int c = 0; c < C; c++)
        yr[c] = (float)((xr[c] - mean) * rstd) * j->gamma[c] + j->beta[c];
    return 0;
}

/* x (T, C) -> out (T, C); gamma, beta (C); out may equal x. */
int bge_f32_layernorm__ref(const float *x, const float *gamma, const float *beta, float eps,
                           float *out, int T, int C, int nthreads) {
    if (!x || !gamma || !beta || !out || T < 1 || C < 1 || nthreads < 1 || !(eps >= 0.0f))
        return BGE_ERR_ARG;
    layernorm_rows j = {x, gamma, beta, out, eps, C};
    bge_run_each(T, nthreads, 0, layernorm_row, &j);
    return BGE_OK;
}

/* x (R, C), each row replaced by its softmax. */
int bge_f32_softmax__ref(float *x, int R, int C) {
    if (!x || R < 1 || C < 1) return BGE_ERR_ARG;
    for (int r = 0; r < R; r++) {
        float *row = x + (size_t)r * C;
        float mx = row[0];
        for (int c = 1; c < C; c++) mx = row[c] > mx ? row[c] : mx;
        double sum = 0.0;
        for (int c = 0; c < C; c++) {
            row[c] = expf(row[c] - mx);
            sum += row[c];
        }
        const float inv = (float)(1.0 / sum);
        for (int c = 0; c < C; c++) row[c] *= inv;
    }
    return BGE_OK;
}

/* x (n), in place. */
int bge_f32_gelu__ref(float *x, size_t n) {
    if (!x || n < 1) return BGE_ERR_ARG;
    for (size_t i = 0; i < n; i++) x[i] = bge_gelu_erf_scalar(x[i]);
    return BGE_OK;
}

/* x (n, C), each row divided by its L2 norm; a zero row stays zero. */
int bge_f32_l2norm__ref(float *x, int n, int C) {
    if (!x || n < 1 || C < 1) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)row[c] * row[c];
        if (ss == 0.0) continue;
        const double inv = 1.0 / sqrt(ss);
        for (int c = 0; c < C; c++) row[c] = (float)(row[c] * inv);
    }
    return BGE_OK;
}

/* 8 independent scalar FMA chains (a * b + c, 2 flops each) per round. */
double bge_f32_fma_loop__ref(long iters) {
    volatile float seed = 1.0f;
    float acc[8];
    for (int i = 0; i < 8; i++) acc[i] = seed * (float)i;
    const float a = 0.999999f * seed, b = 1e-7f * seed;
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 8; i++) acc[i] = acc[i] * a + b;
    float sink = 0.0f;
    for (int i = 0; i < 8; i++) sink += acc[i];
    seed = sink;
    return 16.0 * (double)iters;
}
