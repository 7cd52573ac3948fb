/*
 * ref/gemm.c: the reference fp32 GEMM with fused epilogues, and its packing.
 *
 * Packed layout (reference): W^T, i.e. (K, N) row-major floats: packed[k*N + n] = w[n*K + k].
 * Size K*N floats. Reading W^T row by row lets the inner loop run over n, where every output
 * element keeps its own accumulator: the compiler may vectorise across n without changing
 * any sum. Each out[m, n] is summed in the order k = 0, 1, ..., K-1, starting from 0.0f.
 */
#include <limits.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../bge_internal.h"

/* Columns handled per pass: the accumulators live on the stack, so `res` may alias `out`. */
#define REF_GEMM_NC 256

float bge_gelu_erf_scalar(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
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

size_t bge_f32_packed_size__ref(int K, int N) {
    if (K < 1 || N < 1) return 0;
    return (size_t)K * (size_t)N;
}

/* Column panels of width nr, shared by every fp32 packing:
 *   w      (N, K) row-major
 *   packed ceil(N / nr) panels of K x nr floats; panel p holds columns nr*p .. nr*p + nr-1:
 *          packed[(p*K + k)*nr + j] = w[(nr*p + j)*K + k], and 0.0f where nr*p + j >= N.
 * The copy runs in blocks of PACK_KC values of k, so that each w row is read in runs of
 * contiguous floats and the block written stays in L1 (a plain transpose strides over
 * memory on one side and packs the model ~3x slower, which shows in the cold start). */
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

int bge_f32_gemm__ref(const float *x, int M, int K, int N, const float *packed,
                      const float *bias, const float *res, float *out, int epilogue,
                      int nthreads) {
    int st = bge_check_gemm_args(x, M, K, N, packed, bias, res, out, epilogue, nthreads);
    if (st != BGE_OK) return st;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; m++) {
        const float *res_row = epilogue == BGE_EPI_BIAS_RESIDUAL ? res + (size_t)m * N : NULL;
        gemm_row(x + (size_t)m * K, K, N, packed, bias, res_row, out + (size_t)m * N,
                 epilogue);
    }
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * The driver every SIMD fp32 GEMM shares
 * ------------------------------------------------------------------------------------- */

/* x floats of one row block: 384 KB, half of a 1 MB L2, so a block of x stays in L2 while
 * every panel passes over it. */
#define MC_FLOATS (96 * 1024)

/* Row tiles [tb, te) of panel p. `next`: the panel this thread reads next, or NULL; with
 * tile_pf, each tile of this panel prefetches an equal slice of it, so that it is in L2
 * when its first tile starts. */
static void gemm_panel(const bge_f32_gemm_impl *impl, const float *x, int M, int K, int N,
                       const float *packed, const float *bias, const float *res, float *out,
                       int epilogue, int tb, int te, int p, const float *next) {
    const int MR = impl->mr, NR = impl->nr;
    float tile[BGE_F32_TILE_FLOATS] __attribute__((aligned(64)));
    const int n0 = p * NR, nw = N - n0 < NR ? N - n0 : NR;
    const float *panel = packed + (size_t)p * K * NR;
    const size_t slice = (size_t)K * NR * sizeof(float) / (size_t)(te - tb);
    const int prefetch = impl->tile_pf && next && M >= 2 && slice <= (size_t)INT_MAX;
    for (int t = tb; t < te; t++) {
        const int m0 = t * MR, mr = M - m0 < MR ? M - m0 : MR;
        const float *xt = x + (size_t)m0 * K;
        const size_t o = (size_t)m0 * N + n0;
        bge_prefetch_block(out + o, mr, (size_t)N * sizeof(float), nw * (int)sizeof(float));
        if (prefetch)
            impl->tile_pf(xt, (size_t)K, K, panel, mr, nw, tile,
                          (const char *)next + (size_t)(t - tb) * slice, (int)slice);
        else
            impl->tile(xt, (size_t)K, K, panel, mr, nw, tile);
        impl->epilogue(tile, mr, nw, bias + n0,
                       epilogue == BGE_EPI_BIAS_RESIDUAL ? res + o : NULL, out + o, (size_t)N,
                       epilogue);
    }
}

/* Row tiles of one row block: MC_FLOATS of x. */
static int row_block_tiles(int K, int MR) {
    const int mc_tiles = (int)(MC_FLOATS / ((long long)K * MR));
    return mc_tiles < 1 ? 1 : mc_tiles;
}

/* Row tiles [t0, t1) x panels [p0, p1) of the whole problem (see bge_f32_gemm_run): rows
 * in blocks, panel by panel inside a block, each panel prefetching the one read next (the
 * rectangle's next one, or its first again for the next row block). */
static void gemm_block(const bge_f32_gemm_impl *impl, const float *x, int M, int K, int N,
                       const float *packed, const float *bias, const float *res, float *out,
                       int epilogue, int t0, int t1, int p0, int p1) {
    const int NR = impl->nr, mc_tiles = row_block_tiles(K, impl->mr);
    for (int tb = t0; tb < t1; tb += mc_tiles) {
        const int te = tb + mc_tiles < t1 ? tb + mc_tiles : t1;
        for (int p = p0; p < p1; p++) {
            const float *next = p + 1 < p1 ? packed + (size_t)(p + 1) * K * NR
                                           : (te < t1 ? packed + (size_t)p0 * K * NR : NULL);
            gemm_panel(impl, x, M, K, N, packed, bias, res, out, epilogue, tb, te, p, next);
        }
    }
}

/* Takes unit *f if no thread has: 1 for the one caller that set it. */
static int claim(unsigned char *f) {
    unsigned char old;
#pragma omp atomic capture
    {
        old = *f;
        *f = 1;
    }
    return !old;
}

void bge_run_units(int n, int nthreads, unsigned char *taken,
                   void (*fn)(void *ctx, int u, int next), void *ctx, void (*begin)(void),
                   void (*end)(void)) {
    memset(taken, 0, (size_t)n);
#pragma omp parallel num_threads(nthreads)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        if (begin) begin();
        /* its own run, front to back, until a unit is taken (then so is the rest of it) */
        const int r0 = (int)((long long)t * n / nt), r1 = (int)((long long)(t + 1) * n / nt);
        for (int u = r0; u < r1 && claim(taken + u); u++) fn(ctx, u, u + 1 < r1 ? u + 1 : -1);
        /* then what the others have left, from the back of their runs */
        for (int d = 1; d < nt; d++) {
            const int o = (t + d) % nt;
            const int s0 = (int)((long long)o * n / nt), s1 = (int)((long long)(o + 1) * n / nt);
            for (int u = s1 - 1; u >= s0 && claim(taken + u); u--)
                fn(ctx, u, u - 1 >= s0 ? u - 1 : -1);
        }
        if (end) end();
    }
}

/* bge_run_rectangles' cut: rectangles of *rc row tiles x *pc panels of the
 * (mt row tiles) x (np panels) grid, halving *pc, then *rc, until there are at least
 * `want` (or every rectangle is one tile of one panel); from ROWS_FIRST rows (M) on,
 * *rc first, then *pc. Rows first gives each thread whole rows of the output, every panel
 * passing over a block of its rows that stays in cache, at the price of reading each
 * panel once per rectangle: measured on a Xeon with AMX, 2 threads, end to end (10
 * alternated rounds, one build per process), fp32 1.135x faster at 512 tokens, 1.30x at
 * 256, 1.08x at 200 and 1.11x at 160; int8 (AMX) 1.09x, 1.055x, 1.02x and 1.02x;
 * throughput in batches of 32 sentences 1.01x (fp32) and 1.07x (int8). Up to 128 rows the
 * drivers take runs of panels instead (fp32, AMX), or the weights dominate (vnni, avx2:
 * 33-128 rows), and each panel is read once. */
#define ROWS_FIRST 129
static void cut_rectangles(int M, int mt, int np, long long want, int *rc, int *pc) {
    int r = mt, p = np;
    const int rows_first = M >= ROWS_FIRST;
    while ((long long)((mt + r - 1) / r) * ((np + p - 1) / p) < want && (p > 1 || r > 1)) {
        if (rows_first ? r == 1 : p > 1)
            p = (p + 1) / 2;
        else
            r = (r + 1) / 2;
    }
    *rc = r;
    *pc = p;
}

void bge_run_rectangles(int M, int mt, int np, int nthreads,
                        void (*fn)(void *ctx, int t0, int t1, int p0, int p1), void *ctx) {
    int rc, pc;
    cut_rectangles(M, mt, np, 4LL * nthreads, &rc, &pc);
    const int nr = (mt + rc - 1) / rc, npc = (np + pc - 1) / pc, items = nr * npc;
    const int nt = nthreads < items ? nthreads : items;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int it = 0; it < items; it++) {
        const int r = it / npc, c = it % npc;
        const int t0 = r * rc, t1 = t0 + rc < mt ? t0 + rc : mt;
        const int p0 = c * pc, p1 = p0 + pc < np ? p0 + pc : np;
        fn(ctx, t0, t1, p0, p1);
    }
}

typedef struct f32_job {
    const bge_f32_gemm_impl *impl;
    const float *x, *packed, *bias, *res;
    float *out;
    int M, K, N, epilogue, mt;
} f32_job;

/* Unit u (few rows): panel u, every row tile, prefetching panel `next`. */
static void f32_unit(void *ctx, int u, int next) {
    const f32_job *j = (const f32_job *)ctx;
    const float *nextp = next < 0 ? NULL : j->packed + (size_t)next * j->K * j->impl->nr;
    gemm_panel(j->impl, j->x, j->M, j->K, j->N, j->packed, j->bias, j->res, j->out,
               j->epilogue, 0, j->mt, u, nextp);
}

/* Rectangle row tiles [t0, t1) x panels [p0, p1) (more rows). */
static void f32_rect(void *ctx, int t0, int t1, int p0, int p1) {
    const f32_job *j = (const f32_job *)ctx;
    gemm_block(j->impl, j->x, j->M, j->K, j->N, j->packed, j->bias, j->res, j->out,
               j->epilogue, t0, t1, p0, p1);
}

/* out = epilogue(x @ W^T + bias), for the SIMD GEMM `impl`.
 *   x      (M, K) row-major
 *   packed W (N, K) packed by bge_f32_pack_panels with nr = impl->nr: ceil(N/nr) panels
 *   bias   (N)
 *   res    (M, N) with BGE_EPI_BIAS_RESIDUAL, else ignored; may equal out
 *   out    (M, N) row-major; must not overlap x
 * Threads: the grid of (row tiles) x (panels) is cut into rectangles, about 4 per
 * thread, taken dynamically (bge_run_rectangles). For few rows each thread takes a run of
 * panels instead (see below). Each element's sum over k is never split.                */
int bge_f32_gemm_run(const bge_f32_gemm_impl *impl, const float *x, int M, int K, int N,
                     const float *packed, const float *bias, const float *res, float *out,
                     int epilogue, int nthreads) {
    int st = bge_check_gemm_args(x, M, K, N, packed, bias, res, out, epilogue, nthreads);
    if (st != BGE_OK) return st;
    const int MR = impl->mr, NR = impl->nr;
    const int mt = (M - 1) / MR + 1, np = (N - 1) / NR + 1; /* M, N >= 1: no overflow */
    if (nthreads == 1) {
        gemm_block(impl, x, M, K, N, packed, bias, res, out, epilogue, 0, mt, 0, np);
        return BGE_OK;
    }
    /* Few rows (one row block, at most 16 row tiles) with a prefetching impl: the weights
     * stream from memory, and a thread keeps its hardware prefetchers and tile_pf ahead
     * only on one run of panels. So each thread takes its own run of panels, every row
     * tile of each, and a thread done early takes panels from the back of the others' runs
     * (bge_run_units): a thread the OS slows no longer holds the others back. Measured on a
     * Xeon with AMX, 2 threads, the model's 48 GEMMs: one run per thread 1.02-1.08x faster
     * at 4-128 rows than 2 rectangles per thread taken dynamically (2 already 1.05-1.09x
     * faster than 4 at 8-32 rows on Zen 3); taking from the others' runs then added
     * 1.01-1.04x at 1-64 rows (while one vCPU ran slow). */
    const int nt = nthreads < np ? nthreads : np;
    f32_job j = {impl, x, packed, bias, res, out, M, K, N, epilogue, mt};
    if (impl->tile_pf && mt <= 16 && mt <= row_block_tiles(K, MR) && np <= BGE_UNITS_MAX) {
        unsigned char taken[BGE_UNITS_MAX];
        bge_run_units(np, nt, taken, f32_unit, &j, NULL, NULL);
        return BGE_OK;
    }
    bge_run_rectangles(M, mt, np, nthreads, f32_rect, &j); /* else rectangles */
    return BGE_OK;
}
