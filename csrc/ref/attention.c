/*
 * ref/attention.c: reference self-attention over a ragged batch, embeddings and pooling.
 *
 * Attention works one query row at a time: scores (L) = scale * q K^T, softmax, then
 * out = p V. The only scratch is one score row of the longest text per thread.
 */
#include <string.h>

#include "../bge_internal.h"

static int max_text_len(const int32_t *offsets, int n) {
    int mx = 0;
    for (int i = 0; i < n; i++)
        if (offsets[i + 1] - offsets[i] > mx) mx = offsets[i + 1] - offsets[i];
    return mx;
}

size_t bge_f32_attention_scratch__ref(int max_len, int head_dim, int nthreads) {
    (void)head_dim;
    if (max_len < 1 || nthreads < 1) return 0;
    return (size_t)max_len * (size_t)nthreads;
}

/* One (text, head): q, k, v point at the text's first token inside qkv, column of the head;
 * rows are `ld` floats apart. scores (L). out likewise (rows H floats apart). */
static void attend_one(const float *q, const float *k, const float *v, int ld, int L, int D,
                       float scale, float *scores, float *out, int ld_out) {
    for (int r = 0; r < L; r++) {
        const float *qr = q + (size_t)r * ld;
        for (int j = 0; j < L; j++) {
            const float *kj = k + (size_t)j * ld;
            float dot = 0.0f;
            for (int d = 0; d < D; d++) dot += qr[d] * kj[d];
            scores[j] = dot * scale;
        }
        bge_f32_softmax__ref(scores, 1, L);
        float *orow = out + (size_t)r * ld_out;
        for (int d = 0; d < D; d++) orow[d] = 0.0f;
        for (int j = 0; j < L; j++) {
            const float p = scores[j];
            const float *vj = v + (size_t)j * ld;
            for (int d = 0; d < D; d++) orow[d] += p * vj[d];
        }
    }
}

typedef struct attention_jobs {
    const float *qkv;
    const int32_t *offsets;
    float *out, *scratch;
    int H, heads, L_max;
    float scale;
} attention_jobs;

/* Job `job` = (text job / heads, head job % heads), with the scratch row of its thread. */
static int attend_job(void *ctx, int job, int thread) {
    const attention_jobs *j = (const attention_jobs *)ctx;
    const int H = j->H, D = H / j->heads, ld = 3 * H;
    const int i = job / j->heads, h = job % j->heads;
    const int t0 = j->offsets[i], L = j->offsets[i + 1] - j->offsets[i];
    if (L == 0) return 0;
    const float *base = j->qkv + (size_t)t0 * ld + (size_t)h * D;
    attend_one(base, base + H, base + 2 * H, ld, L, D, j->scale,
               j->scratch + (size_t)thread * j->L_max, j->out + (size_t)t0 * H + (size_t)h * D,
               H);
    return 0;
}

int bge_f32_attention__ref(const float *qkv, const int32_t *offsets, int n, int H, int heads,
                           float scale, float *out, float *scratch, size_t scratch_floats,
                           int nthreads) {
    if (!qkv || !out || n < 1 || H < 1 || heads < 1 || H % heads != 0 || nthreads < 1)
        return BGE_ERR_ARG;
    if (bge_check_offsets(offsets, n, -1) != BGE_OK) return BGE_ERR_ARG;
    const int L_max = max_text_len(offsets, n);
    if (L_max == 0) return BGE_OK;
    if (!scratch || scratch_floats < bge_f32_attention_scratch__ref(L_max, H / heads, nthreads))
        return BGE_ERR_SCRATCH;
    attention_jobs j = {qkv, offsets, out, scratch, H, heads, L_max, scale};
    bge_run_each(n * heads, nthreads, 1, attend_job, &j);
    return BGE_OK;
}

int bge_f32_embed__ref(const int32_t *ids, const int32_t *offsets, int n, const float *word,
                       int vocab, const float *pos, int max_pos, const float *type, float *out,
                       int C) {
    if (bge_check_embed_args(ids, offsets, n, word, vocab, pos, max_pos, type, out, C) != BGE_OK)
        return BGE_ERR_ARG;
    for (int i = 0; i < n; i++) {
        for (int t = offsets[i]; t < offsets[i + 1]; t++) {
            const float *w = word + (size_t)ids[t] * C;
            const float *p = pos + (size_t)(t - offsets[i]) * C;
            float *o = out + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = (w[c] + type[c]) + p[c];
        }
    }
    return BGE_OK;
}

int bge_f32_pool__ref(const float *h, const int32_t *offsets, int n, int C, int mode,
                      float *out) {
    if (bge_check_pool_args(h, offsets, n, C, mode, out) != BGE_OK) return BGE_ERR_ARG;
    for (int i = 0; i < n; i++) {
        const int t0 = offsets[i], L = offsets[i + 1] - offsets[i];
        float *o = out + (size_t)i * C;
        if (mode == BGE_POOL_CLS) {
            memcpy(o, h + (size_t)t0 * C, (size_t)C * sizeof(float));
            continue;
        }
        for (int c = 0; c < C; c++) {
            double s = 0.0;
            for (int t = 0; t < L; t++) s += h[(size_t)(t0 + t) * C + c];
            o[c] = (float)(s / L);
        }
    }
    return BGE_OK;
}
