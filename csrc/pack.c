/*
 * pack.c: the weight packings every level shares, and the int8 quantisation steps the
 * quantisers share (the references are in csrc/ref/, the SIMD ones in the ISA folders).
 *
 * fp32: column panels of nr floats (bge_f32_pack_panels; the reference is the case nr = N).
 *
 * int8, packed layout, every level: a 64-byte bge_q8_header (bge_internal.h: magic "BGQ8", the
 * layout id of the kernel that reads it, K, N, Kp, Np, nr, kgroup, elt, group = 64,
 * ngroups), then
 *   w_scale (Np, ngroups) fp32, 0 past N    at byte 64
 *   colsum  (Np, ngroups) int32, 0 past N   at byte 64 + 4 ngroups Np
 *   weights                                 at byte 64 + round_up(8 ngroups Np, 64)
 * w_scale and colsum panel by panel, and in a panel group by group: w_scale[n, g] at float
 * (p ngroups + g) nr + j for n = nr p + j (bge_q8_scale_index), so one group's scales of a
 * panel's columns are contiguous (group stride nr) and a panel's are one run of bytes,
 * read in step with its weights (group-major over all Np columns put a panel's groups Np
 * apart, and was slower).
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
#include <limits.h>
#include <string.h>

#include "bge_internal.h"

/* ---------------------------------------------------------------------------------------
 * fp32 panels
 * ------------------------------------------------------------------------------------- */

/* Column panels of width nr, shared by every fp32 packing:
 *   w      (N, K) row-major
 *   packed ceil(N / nr) panels of K x nr floats; panel p holds columns nr*p .. nr*p + nr-1:
 *          packed[(p*K + k)*nr + j] = w[(nr*p + j)*K + k], and 0.0f where nr*p + j >= N.
 * The copy runs in blocks of PACK_KC values of k, so that each w row is read in runs of
 * contiguous floats and the block written stays in L1 (a plain transpose strides over
 * memory on one side and packs markedly slower, which shows in the cold start). */
#define PACK_KC 64
void bge_f32_pack_panels(const float *w, int K, int N, int nr, float *packed) {
    const int panels = (N + nr - 1) / nr;
    for (int p = 0; p < panels; p++) {
        float *dst = packed + (size_t)p * K * nr;
        const int n0 = p * nr, nw = N - n0 < nr ? N - n0 : nr;
        for (int k0 = 0; k0 < K; k0 += PACK_KC) {
            const int kc = K - k0 < PACK_KC ? K - k0 : PACK_KC;
            for (int j = 0; j < nr; j++) {
                float *d = dst + (size_t)k0 * nr + j;
                if (j < nw) {
                    const float *src = w + (size_t)(n0 + j) * K + k0;
                    for (int k = 0; k < kc; k++) d[(size_t)k * nr] = src[k];
                } else {
                    for (int k = 0; k < kc; k++) d[(size_t)k * nr] = 0.0f;
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * int8 quantisation steps (shared with the SIMD quantisers)
 * ------------------------------------------------------------------------------------- */

static inline int32_t clamp_u8(int32_t v) { return v < 0 ? 0 : v > 255 ? 255 : v; }

void bge_q8_quantize_span(const float *x, int n, float inv, int32_t zp, uint8_t *q) {
    for (int k = 0; k < n; k++) {
        /* INT32_MIN + zp does not overflow: zp is in [0, 255] */
        q[k] = (uint8_t)clamp_u8(bge_q8_cvt(x[k] * inv) + zp);
    }
}


typedef struct weight_rows {
    const float *w;
    int8_t *w_s8;
    float *w_scale;
    int K, ng;
    bge_q8_weight_group_fn group;
} weight_rows;

/* Row n of a weight, group by group: 1 when a group holds inf or NaN, else 0. */
static int weight_row(void *ctx, int n, int thread) {
    const weight_rows *j = (const weight_rows *)ctx;
    const int K = j->K;
    const float *wr = j->w + (size_t)n * K;
    int8_t *qr = j->w_s8 + (size_t)n * K;
    float *sr = j->w_scale + (size_t)n * j->ng;
    int ok = 1;
    (void)thread;
    for (int g = 0, k0 = 0; k0 < K; g++, k0 += BGE_Q8_GROUP)
        ok &= j->group(wr + k0, K - k0 < BGE_Q8_GROUP ? K - k0 : BGE_Q8_GROUP, qr + k0, sr + g);
    return !ok;
}

int bge_q8_quantize_weight_rows(const float *w, int N, int K, int8_t *w_s8, float *w_scale,
                                int nthreads, bge_q8_weight_group_fn group) {
    if (!w || !w_s8 || !w_scale || N < 1 || K < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    weight_rows j = {w, w_s8, w_scale, K, BGE_Q8_NGROUPS(K), group};
    return bge_run_each(N, nthreads, 0, weight_row, &j) ? BGE_ERR_ARG : BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * int8 packing: header, scales, column sums, weights
 * ------------------------------------------------------------------------------------- */

int bge_q8_check_header(const void *packed, uint32_t layout, int K, int N) {
    const bge_q8_header *h = (const bge_q8_header *)packed;
    if (h->magic != BGE_Q8_MAGIC || h->layout != layout) return BGE_ERR_PACKING;
    if (h->K != K || h->N != N || h->Kp != BGE_Q8_KP(K) || h->nr < 1 || h->Np < N ||
        h->Np % h->nr || h->group != BGE_Q8_GROUP || h->ngroups != BGE_Q8_NGROUPS(K))
        return BGE_ERR_ARG;
    return BGE_OK;
}

int bge_q8_check_weights(const int8_t *w, const float *w_scale, int K, int N,
                         const void *packed) {
    if (!w || !w_scale || !packed || K < 1 || N < 1 || K > BGE_Q8_MAX_K) return BGE_ERR_ARG;
    const size_t n = (size_t)N * K;
    int bad = 0; /* no early exit: the scan vectorises */
    for (size_t i = 0; i < n; i++) bad |= w[i] == -128;
    return bad ? BGE_ERR_ARG : BGE_OK;
}

/* Header, w_scale and colsum (Np x ngroups each, at bge_q8_scale_index) of a packing with
 * panels of nr columns; w_scale (N, ngroups) as the caller gives it. */
void bge_q8_write_head(const int8_t *w, const float *w_scale, int K, int N, void *packed,
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

size_t bge_q8_panels_size(int K, int N, int nr, int kgroup) {
    if (K < 1 || N < 1 || K > BGE_Q8_MAX_K || nr < 1 || kgroup < 1) return 0;
    const size_t Np = ((size_t)N + nr - 1) / nr * nr;
    return bge_q8_weights_offset((int)Np, BGE_Q8_NGROUPS(K)) + Np * BGE_Q8_KP(K);
}

int bge_q8_pack_panels(const int8_t *w, const float *w_scale, int K, int N, void *packed,
                       uint32_t layout, int nr, int kgroup) {
    const int st = bge_q8_check_weights(w, w_scale, K, N, packed);
    if (st != BGE_OK) return st;
    if (nr < 1 || (kgroup != 1 && kgroup != 2 && kgroup != 4) || BGE_Q8_KP(K) % kgroup)
        return BGE_ERR_ARG;
    bge_q8_write_head(w, w_scale, K, N, packed, layout, nr, kgroup);
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
 * bf16 packing (every level: panels of nr columns, bge_internal.h)
 * ------------------------------------------------------------------------------------- */

size_t bge_bf16_panels_size(int K, int N, int nr) {
    if (K < 1 || N < 1 || nr < 1 || K > INT_MAX - 1) return 0;
    const size_t panels = ((size_t)N + (size_t)nr - 1) / (size_t)nr;
    return BGE_BF16_HEADER_BYTES + panels * (size_t)nr * (size_t)BGE_BF16_KP(K) * 2;
}

void bge_bf16_header_init(void *packed, int K, int N, int nr) {
    bge_bf16_header h;
    memset(&h, 0, sizeof h);
    h.magic = BGE_BF16_MAGIC;
    h.nr = nr;
    h.K = K;
    h.N = N;
    h.Kp = BGE_BF16_KP(K);
    h.Np = (N + nr - 1) / nr * nr;
    memcpy(packed, &h, sizeof h);
}

/* Blocks of PACK_KC k per column, so each row of w is read in runs of contiguous floats and
 * the block written stays in cache (as the fp32 packing does). */
int bge_bf16_pack_panels(const float *w, int K, int N, int nr, void *packed) {
    if (!w || !packed || bge_bf16_panels_size(K, N, nr) == 0) return BGE_ERR_ARG;
    const int Kp = BGE_BF16_KP(K), panels = (N + nr - 1) / nr;
    bge_bf16_header_init(packed, K, N, nr);
    uint16_t *base = (uint16_t *)((char *)packed + BGE_BF16_HEADER_BYTES);
    for (int p = 0; p < panels; p++) {
        uint16_t *dst = base + (size_t)p * Kp * nr;
        const int n0 = p * nr, nw = N - n0 < nr ? N - n0 : nr;
        for (int k0 = 0; k0 < Kp; k0 += PACK_KC) {
            const int kc = Kp - k0 < PACK_KC ? Kp - k0 : PACK_KC; /* even */
            for (int j = 0; j < nr; j++) {
                const float *src = j < nw ? w + (size_t)(n0 + j) * K : NULL;
                for (int k = k0; k < k0 + kc; k++) {
                    uint32_t u = 0;
                    if (src && k < K) memcpy(&u, src + k, sizeof u);
                    dst[((size_t)(k / 2) * nr + j) * 2 + (k & 1)] = bge_bf16_bits(u);
                }
            }
        }
    }
    return BGE_OK;
}

int bge_bf16_check_header(const void *packed, int nr, int K, int N, int *nr_out) {
    bge_bf16_header h;
    memcpy(&h, packed, sizeof h);
    if (h.magic != BGE_BF16_MAGIC || h.nr < 1 || (nr && h.nr != nr)) return BGE_ERR_PACKING;
    if (h.K != K || h.N != N) return BGE_ERR_ARG;
    if (nr_out) *nr_out = h.nr;
    return BGE_OK;
}
