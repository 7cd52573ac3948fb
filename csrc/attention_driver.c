/*
 * attention_driver.c: the job loop every SIMD attention shares. A level gives its head
 * kernel and the size of one thread's scratch (bge_attention_impl in bge_internal.h); the
 * driver checks the arguments, finds the longest text, checks the scratch, and shares the
 * (text, head) jobs among threads. One job is one head of one text, run whole by one
 * thread: results do not depend on the thread count or on the other texts of the batch.
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bge_internal.h"

size_t bge_attention_scratch(const bge_attention_impl *impl, int max_len, int head_dim,
                             int nthreads) {
    if (max_len < 1 || head_dim < 1 || nthreads < 1) return 0;
    return impl->thread_floats(max_len, head_dim) * (size_t)nthreads;
}

int bge_attention_run(const bge_attention_impl *impl, const float *qkv, const int32_t *offsets,
                      int n, int H, int heads, float scale, float *out, float *scratch,
                      size_t scratch_floats, int nthreads) {
    if (!qkv || !out || n < 1 || H < 1 || heads < 1 || H % heads != 0 || nthreads < 1)
        return BGE_ERR_ARG;
    if (bge_check_offsets(offsets, n, -1) != BGE_OK) return BGE_ERR_ARG;
    int L_max = 0;
    for (int i = 0; i < n; i++)
        if (offsets[i + 1] - offsets[i] > L_max) L_max = offsets[i + 1] - offsets[i];
    if (L_max == 0) return BGE_OK;
    const int D = H / heads, ld = 3 * H, align = impl->align;
    if (!scratch || scratch_floats < bge_attention_scratch(impl, L_max, D, nthreads))
        return BGE_ERR_SCRATCH;
    const size_t per_thread = impl->thread_floats(L_max, D);
    const int jobs = n * heads, chunk = bge_attention_chunk(n, heads, L_max, nthreads);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, chunk)
    for (int job = 0; job < jobs; job++) {
        const int i = job / heads, h = job % heads;
        const int t0 = offsets[i], L = offsets[i + 1] - offsets[i];
        if (L == 0) continue;
#ifdef _OPENMP
        float *work = scratch + (size_t)omp_get_thread_num() * per_thread;
#else
        float *work = scratch;
#endif
        work += (align - ((uintptr_t)work / sizeof(float)) % align) % align; /* the level's */
        const float *base = qkv + (size_t)t0 * ld + (size_t)h * D;
        impl->head(base, base + H, base + 2 * H, ld, L, D, scale, work,
                   out + (size_t)t0 * H + (size_t)h * D, H);
    }
    return BGE_OK;
}
