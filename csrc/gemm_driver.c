/*
 * gemm_driver.c: the tile drivers every SIMD GEMM shares. A level gives its microkernel
 * tiles and epilogue (bge_f32_gemm_impl, bge_q8_gemm_impl in bge_internal.h); the driver
 * checks the arguments, blocks the rows so that x stays in L2, walks the panels, and shares
 * the tiles among threads (csrc/schedule.c). Threads split row tiles and panels, never k.
 * Beside them, the row loop of the int8 levels' activation quantisers (bge_qu8_quantize_run).
 */
#include <limits.h>
#include <string.h>

#include "bge_internal.h"

/* ---------------------------------------------------------------------------------------
 * fp32
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
     * (bge_run_units): a thread the OS slows no longer holds the others back. Both beat
     * rectangles taken dynamically at these sizes (docs/performance.md, GEMM drivers). */
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


/* ---------------------------------------------------------------------------------------
 * int8
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
    int st = bge_check_q8_args(q, M, K, N, packed, nthreads);
    if (st == BGE_OK)
        st = acc ? BGE_OK : bge_check_q8_epi_args(scale, zp, bias, res, out, epilogue);
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
     * done early takes panels from the back of the others' runs (bge_run_units). Rectangles
     * taken dynamically jump to another rectangle's start every few panels, which is what
     * costs (not the tile configuration AMX loads per rectangle); docs/performance.md. */
    const int nt = nthreads < np ? nthreads : np;
    if (mt <= 8 && mt <= q8_row_block_tiles(j.Kp, MR) && np <= BGE_UNITS_MAX) {
        unsigned char taken[BGE_UNITS_MAX];
        bge_run_units(np, nt, taken, q8_unit, &j, impl->begin, impl->end);
        return BGE_OK;
    }
    bge_run_rectangles(M, mt, np, nthreads, q8_rect, &j); /* else rectangles */
    return BGE_OK;
}

int bge_qu8_quantize_run(bge_q8_quantize_row_fn row, const float *x, int M, int K, uint8_t *q,
                         float *scale, int32_t *zp, int nthreads) {
    if (!x || !q || !scale || !zp || M < 1 || K < 1 || K > BGE_Q8_MAX_K || nthreads < 1)
        return BGE_ERR_ARG;
    const int Kp = BGE_Q8_KP(K), ng = BGE_Q8_NGROUPS(K);
/* rows in chunks taken dynamically: a thread the OS delays does not hold the others back;
 * chunks small enough that every thread gets rows */
#pragma omp parallel for if (nthreads > 1) num_threads(nthreads) \
    schedule(dynamic, bge_row_chunk(M, nthreads))
    for (int m = 0; m < M; m++)
        row(x + (size_t)m * K, K, q + (size_t)m * Kp, scale + (size_t)m * ng, zp + (size_t)m * ng);
    return BGE_OK;
}

/* ---------------------------------------------------------------------------------------
 * bf16: the driver every SIMD bf16 GEMM shares: convert x, then tiles as the fp32 driver runs
 * them (row blocks that stay in L2, panel by panel, the next panel prefetched; a run of
 * panels per thread for few rows, rectangles of the grid for more, bands of rows for many,
 * each band converting its own rows). A level with a `pass` runs each (row block, panel)
 * itself.
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
    if (impl->pass) { /* the level runs the panel's rows itself */
        const int m0 = tb * MR, m1 = te >= j->mt ? j->M : te * MR;
        const size_t o = (size_t)m0 * j->N + n0;
        const bge_bf16_pass ps = {
            .xc = j->xc + (size_t)m0 * j->row_bytes, .ldx = (size_t)j->Kp, .Kp = j->Kp,
            .rows = m1 - m0, .nw = nw, .panel = panel, .next = next, .bias = j->bias + n0,
            .res = j->epilogue == BGE_EPI_BIAS_RESIDUAL ? j->res + o : NULL, .out = j->out + o,
            .ldo = (size_t)j->N, .epilogue = j->epilogue,
        };
        impl->pass(&ps);
        return;
    }
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

/* Row tiles [t0, t1) x panels [p0, p1): rows in blocks, panel by panel inside a block
 * (between the impl's begin and end). */
static void bf16_rect(void *ctx, int t0, int t1, int p0, int p1) {
    const bf16_job *j = (const bf16_job *)ctx;
    if (j->impl->begin) j->impl->begin();
    for (int tb = t0; tb < t1; tb += j->mc_tiles) {
        const int te = tb + j->mc_tiles < t1 ? tb + j->mc_tiles : t1;
        for (int p = p0; p < p1; p++) {
            const char *next = p + 1 < p1 ? j->panels + (size_t)(p + 1) * j->panel_bytes
                                          : (te < t1 ? j->panels + (size_t)p0 * j->panel_bytes
                                                     : NULL);
            bf16_panel(j, tb, te, p, next);
        }
    }
    if (j->impl->end) j->impl->end();
}

/* Unit u (few rows): panel u, every row tile, prefetching panel `next`. */
static void bf16_unit(void *ctx, int u, int next) {
    const bf16_job *j = (const bf16_job *)ctx;
    bf16_panel(j, 0, j->mt, u, next < 0 ? NULL : j->panels + (size_t)next * j->panel_bytes);
}

typedef struct convert_rows {
    const bge_bf16_gemm_impl *impl;
    const float *x;
    char *xc;
    int K;
    size_t row_bytes;
} convert_rows;

/* Row m of x converted into the scratch, in the level's own layout. */
static int convert_row(void *ctx, int m, int thread) {
    const convert_rows *c = (const convert_rows *)ctx;
    (void)thread;
    c->impl->convert(c->x + (size_t)m * c->K, c->K, c->xc + (size_t)m * c->row_bytes);
    return 0;
}

/* Many rows: band b of row tiles [b * bt, (b + 1) * bt), converted, then every panel
 * over it (bge_run_each's item). */
typedef struct bf16_bands {
    const bf16_job *j;
    const convert_rows *cv;
    int bt, np;
} bf16_bands;

static int bf16_band(void *ctx, int b, int thread) {
    const bf16_bands *bd = (const bf16_bands *)ctx;
    const int MR = bd->j->impl->mr, t0 = b * bd->bt;
    const int t1 = t0 + bd->bt < bd->j->mt ? t0 + bd->bt : bd->j->mt;
    const int m1 = t1 >= bd->j->mt ? bd->j->M : t1 * MR;
    for (int m = t0 * MR; m < m1; m++) convert_row((void *)bd->cv, m, thread);
    bf16_rect((void *)bd->j, t0, t1, 0, bd->np);
    return 0;
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
    convert_rows cv = {impl, x, xc, K, row_bytes};
    const int mc = (int)(MC_BYTES / ((long long)row_bytes * MR));
    bf16_job j = {impl, x, bias, res, (const char *)packed + BGE_BF16_HEADER_BYTES, xc, out,
                  M, K, Kp, N, epilogue, mt, mc < 1 ? 1 : mc,
                  (size_t)Kp * NR * 2, row_bytes};
    /* many rows: bands of rows taken dynamically, each converted by the thread that runs it
     * (one parallel region, and no thread waits for the others' conversion); at least 4
     * bands per thread, as bge_run_rectangles cuts rows first from 129 rows on */
    if (nthreads > 1 && M >= 129) {
        int bt = mt;
        while ((mt + bt - 1) / bt < 4 * nthreads && bt > 1) bt = (bt + 1) / 2;
        bf16_bands bd = {&j, &cv, bt, np};
        bge_run_each((mt + bt - 1) / bt, nthreads, 1, bf16_band, &bd);
        return BGE_OK;
    }
    const int ct = (long long)M * K >= 32768 ? nthreads : 1;
    bge_run_each(M, ct, 0, convert_row, &cv);
    if (nthreads == 1) {
        bf16_rect(&j, 0, mt, 0, np);
        return BGE_OK;
    }
    /* few rows: one run of panels per thread (as the fp32 driver above) */
    const int nt = nthreads < np ? nthreads : np;
    if (mt <= 16 && mt <= j.mc_tiles && np <= BGE_UNITS_MAX) {
        unsigned char taken[BGE_UNITS_MAX];
        bge_run_units(np, nt, taken, bf16_unit, &j, impl->begin, impl->end);
        return BGE_OK;
    }
    bge_run_rectangles(M, mt, np, nthreads, bf16_rect, &j);
    return BGE_OK;
}
