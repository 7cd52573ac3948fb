/*
 * ref/bgemm.c: the bf16 scheme of bge.h in plain C (the conversion, the packing, the
 * reference GEMM), and the driver every SIMD bf16 GEMM shares.
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
#ifdef _OPENMP
#include <omp.h>
#endif

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
 * Packing (every level: panels of nr columns, bge_internal.h)
 * ------------------------------------------------------------------------------------- */

size_t bge_bf16_panels_size(int K, int N, int nr) {
    if (K < 1 || N < 1 || nr < 1 || K > INT_MAX - 1) return 0;
    const size_t panels = ((size_t)N + (size_t)nr - 1) / (size_t)nr;
    return BGE_BF16_HEADER_BYTES + panels * (size_t)nr * (size_t)BGE_BF16_KP(K) * 2;
}

/* Blocks of PACK_KC k per column, so each row of w is read in runs of contiguous floats and
 * the block written stays in cache (as the fp32 packing does). */
#define PACK_KC 64
int bge_bf16_pack_panels(const float *w, int K, int N, int nr, void *packed) {
    if (!w || !packed || bge_bf16_panels_size(K, N, nr) == 0) return BGE_ERR_ARG;
    const int Kp = BGE_BF16_KP(K), panels = (N + nr - 1) / nr;
    bge_bf16_header h;
    memset(&h, 0, sizeof h);
    h.magic = BGE_BF16_MAGIC;
    h.nr = nr;
    h.K = K;
    h.N = N;
    h.Kp = Kp;
    h.Np = panels * nr;
    memcpy(packed, &h, sizeof h);
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
    uint16_t *xb = (uint16_t *)scratch;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; m++) {
        uint16_t *row = xb + (size_t)m * Kp;
        bge_bf16_from_f32(x + (size_t)m * K, (size_t)K, row);
        if (Kp != K) row[K] = 0;
        const float *res_row = epilogue == BGE_EPI_BIAS_RESIDUAL ? res + (size_t)m * N : NULL;
        bgemm_row(row, Kp, N, pairs, bias, res_row, out + (size_t)m * N, epilogue);
    }
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

/* ---------------------------------------------------------------------------------------
 * The driver every SIMD bf16 GEMM shares: convert x, then tiles as the fp32 driver runs
 * them (ref/gemm.c: row blocks that stay in L2, panel by panel, the next panel prefetched;
 * a run of panels per thread for few rows, rectangles of the grid for more)
 * ------------------------------------------------------------------------------------- */

#define MC_BYTES (384 * 1024) /* converted x of one row block: half of a 1 MB L2 */

size_t bge_bf16_gemm_scratch(const bge_bf16_gemm_impl *impl, int M, int K) {
    if (M < 1 || K < 1 || K > INT_MAX - 1) return 0;
    return (size_t)M * (size_t)BGE_BF16_KP(K) * (size_t)impl->xelt;
}

typedef struct bf16_job {
    const bge_bf16_gemm_impl *impl;
    const float *x, *bias, *res;
    const char *panels, *xc;
    float *out;
    int M, K, Kp, N, epilogue, mt, mc_tiles;
    size_t panel_bytes, row_bytes;
} bf16_job;

/* Row tiles [tb, te) of panel p, each tile prefetching an equal slice of `next` (or NULL). */
static void bf16_panel(const bf16_job *j, int tb, int te, int p, const char *next) {
    const bge_bf16_gemm_impl *impl = j->impl;
    const int MR = impl->mr, NR = impl->nr;
    float tile[BGE_F32_TILE_FLOATS] __attribute__((aligned(64)));
    const int n0 = p * NR, nw = j->N - n0 < NR ? j->N - n0 : NR;
    const char *panel = j->panels + (size_t)p * j->panel_bytes;
    const size_t slice = j->panel_bytes / (size_t)(te - tb);
    const int prefetch = next && j->M >= 2 && slice <= (size_t)INT_MAX;
    for (int t = tb; t < te; t++) {
        const int m0 = t * MR, mr = j->M - m0 < MR ? j->M - m0 : MR;
        const size_t o = (size_t)m0 * j->N + n0;
        bge_prefetch_block(j->out + o, mr, (size_t)j->N * sizeof(float),
                           nw * (int)sizeof(float));
        impl->tile(j->xc + (size_t)m0 * j->row_bytes, (size_t)j->Kp, j->Kp, panel, mr, nw,
                   tile, prefetch ? next + (size_t)(t - tb) * slice : NULL,
                   prefetch ? (int)slice : 0);
        impl->epilogue(tile, mr, nw, j->bias + n0,
                       j->epilogue == BGE_EPI_BIAS_RESIDUAL ? j->res + o : NULL, j->out + o,
                       (size_t)j->N, j->epilogue);
    }
}

/* Row tiles [t0, t1) x panels [p0, p1): rows in blocks, panel by panel inside a block. */
static void bf16_rect(void *ctx, int t0, int t1, int p0, int p1) {
    const bf16_job *j = (const bf16_job *)ctx;
    for (int tb = t0; tb < t1; tb += j->mc_tiles) {
        const int te = tb + j->mc_tiles < t1 ? tb + j->mc_tiles : t1;
        for (int p = p0; p < p1; p++) {
            const char *next = p + 1 < p1 ? j->panels + (size_t)(p + 1) * j->panel_bytes
                                          : (te < t1 ? j->panels + (size_t)p0 * j->panel_bytes
                                                     : NULL);
            bf16_panel(j, tb, te, p, next);
        }
    }
}

/* Unit u (few rows): panel u, every row tile, prefetching panel `next`. */
static void bf16_unit(void *ctx, int u, int next) {
    const bf16_job *j = (const bf16_job *)ctx;
    bf16_panel(j, 0, j->mt, u, next < 0 ? NULL : j->panels + (size_t)next * j->panel_bytes);
}

int bge_bf16_gemm_run(const bge_bf16_gemm_impl *impl, const float *x, int M, int K, int N,
                      const void *packed, const float *bias, const float *res, float *out,
                      int epilogue, void *scratch, size_t scratch_bytes, int nthreads) {
    int st = bge_check_gemm_args(x, M, K, N, (const float *)packed, bias, res, out, epilogue,
                                 nthreads);
    if (st != BGE_OK) return st;
    if ((st = bge_bf16_check_header(packed, impl->nr, K, N, NULL)) != BGE_OK) return st;
    if (!scratch || scratch_bytes < bge_bf16_gemm_scratch(impl, M, K)) return BGE_ERR_SCRATCH;
    const int MR = impl->mr, NR = impl->nr, Kp = BGE_BF16_KP(K);
    const int mt = (M - 1) / MR + 1, np = (N - 1) / NR + 1;
    const size_t row_bytes = (size_t)Kp * impl->xelt;
    char *xc = (char *)scratch;
    /* the conversion: rows are independent, so the bytes never depend on the threads; a
     * short x is converted on one thread (waking the others costs more than the work) */
    const int ct = (long long)M * K >= 32768 ? nthreads : 1;
#pragma omp parallel for num_threads(ct) schedule(static)
    for (int m = 0; m < M; m++) impl->convert(x + (size_t)m * K, K, xc + (size_t)m * row_bytes);
    const int mc = (int)(MC_BYTES / ((long long)row_bytes * MR));
    bf16_job j = {impl, x, bias, res, (const char *)packed + BGE_BF16_HEADER_BYTES, xc, out,
                  M, K, Kp, N, epilogue, mt, mc < 1 ? 1 : mc,
                  (size_t)Kp * NR * 2, row_bytes};
    if (nthreads == 1) {
        bf16_rect(&j, 0, mt, 0, np);
        return BGE_OK;
    }
    /* few rows: one run of panels per thread (as the fp32 driver, ref/gemm.c) */
    const int nt = nthreads < np ? nthreads : np;
    if (mt <= 16 && mt <= j.mc_tiles && np <= BGE_UNITS_MAX) {
        unsigned char taken[BGE_UNITS_MAX];
        bge_run_units(np, nt, taken, bf16_unit, &j, NULL, NULL);
        return BGE_OK;
    }
    bge_run_rectangles(M, mt, np, nthreads, bf16_rect, &j);
    return BGE_OK;
}
