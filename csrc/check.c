/*
 * check.c: the argument checks shared by every implementation of a slot, so that the SIMD
 * kernels reject exactly what the references reject. Each returns BGE_OK or BGE_ERR_ARG.
 */
#include <limits.h>

#include "bge_internal.h"

int bge_check_offsets(const int32_t *offsets, int n, int T_expected) {
    if (!offsets || n < 0 || offsets[0] != 0) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++)
        if (offsets[i + 1] < offsets[i]) return BGE_ERR_ARG;
    if (T_expected >= 0 && offsets[n] != T_expected) return BGE_ERR_ARG;
    return BGE_OK;
}

int bge_check_pool_args(const float *h, const int32_t *offsets, int n, int C, int mode,
                        const float *out) {
    if (!h || !out || n < 1 || C < 1) return BGE_ERR_ARG;
    if (mode != BGE_POOL_CLS && mode != BGE_POOL_MEAN) return BGE_ERR_ARG;
    if (bge_check_offsets(offsets, n, -1) != BGE_OK) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++)
        if (offsets[i + 1] == offsets[i]) return BGE_ERR_ARG; /* a text with no row to pool */
    return BGE_OK;
}

int bge_check_embed_args(const int32_t *ids, const int32_t *offsets, int n, const float *word,
                         int vocab, const float *pos, int max_pos, const float *type,
                         const float *out, int C) {
    if (!ids || !word || !pos || !type || !out || n < 1 || vocab < 1 || max_pos < 1 || C < 1)
        return BGE_ERR_ARG;
    if (bge_check_offsets(offsets, n, -1) != BGE_OK) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++) {
        if (offsets[i + 1] - offsets[i] > max_pos) return BGE_ERR_ARG; /* past the positions */
        for (int t = offsets[i]; t < offsets[i + 1]; t++)
            if (ids[t] < 0 || ids[t] >= vocab) return BGE_ERR_ARG;
    }
    return BGE_OK;
}

int bge_check_gemm_args(const float *x, int M, int K, int N, const float *packed,
                        const float *bias, const float *res, const float *out, int epilogue,
                        int nthreads) {
    if (!x || !packed || !bias || !out || M < 1 || K < 1 || N < 1 || nthreads < 1)
        return BGE_ERR_ARG;
    if (epilogue != BGE_EPI_BIAS && epilogue != BGE_EPI_BIAS_GELU &&
        epilogue != BGE_EPI_BIAS_RESIDUAL)
        return BGE_ERR_ARG;
    if (epilogue == BGE_EPI_BIAS_RESIDUAL && !res) return BGE_ERR_ARG;
    return BGE_OK;
}

int bge_check_q8_args(const uint8_t *q, int M, int K, int N, const void *packed,
                      int nthreads) {
    if (!q || !packed || M < 1 || K < 1 || N < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    return BGE_OK;
}

int bge_check_q8_epi_args(const float *scale, const int32_t *zp, const float *bias,
                          const float *res, const float *out, int epilogue) {
    if (!scale || !zp || !bias || !out) return BGE_ERR_ARG;
    if (epilogue != BGE_EPI_BIAS && epilogue != BGE_EPI_BIAS_GELU &&
        epilogue != BGE_EPI_BIAS_RESIDUAL)
        return BGE_ERR_ARG;
    if (epilogue == BGE_EPI_BIAS_RESIDUAL && !res) return BGE_ERR_ARG;
    return BGE_OK;
}

int bge_ragged_lengths(const int32_t *offsets, int n, int T, int *max_len, int *min_len) {
    if (!offsets || !max_len || !min_len || n < 1 || offsets[0] != 0 || offsets[n] != T)
        return BGE_ERR_ARG;
    int mx = 0, mn = INT_MAX;
    for (int i = 0; i < n; i++) {
        const int d = offsets[i + 1] - offsets[i];
        if (d < 0) return BGE_ERR_ARG;
        mx = d > mx ? d : mx;
        mn = d < mn ? d : mn;
    }
    *max_len = mx;
    *min_len = mn;
    return BGE_OK;
}

ptrdiff_t bge_find_outside_i32(const int32_t *v, size_t n, int32_t lo, int32_t hi) {
    for (size_t i = 0; i < n; i++)
        if (v[i] < lo || v[i] >= hi) return (ptrdiff_t)i;
    return -1;
}

ptrdiff_t bge_find_s8(const int8_t *v, size_t n, int8_t x) {
    for (size_t i = 0; i < n; i++)
        if (v[i] == x) return (ptrdiff_t)i;
    return -1;
}
