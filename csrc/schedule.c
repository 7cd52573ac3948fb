/*
 * schedule.c: how the kernels' work is shared among threads (OpenMP lives here, in the
 * shared attention job loop of attention_driver.c and the quantiser's row loop of
 * gemm_driver.c, and in the SIMD folders' own loops; never in csrc/ref/).
 *
 *   bge_run_each        a loop over independent items (rows, texts x heads, weight rows):
 *                       the references' and the shared loaders' parallel for.
 *   bge_run_units       few rows: one contiguous run of units (GEMM panels) per thread, then
 *                       the others' leftovers from the back.
 *   bge_run_rectangles  more rows: the (row tiles) x (panels) grid cut into rectangles taken
 *                       dynamically.
 * Every item runs once, on one thread; threads never split a reduction, so results do not
 * depend on the thread count.
 */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bge_internal.h"

int bge_run_each(int n, int nthreads, int dynamic, int (*fn)(void *ctx, int i, int thread),
                 void *ctx) {
    /* one i at a time, or one contiguous block of items per thread */
    const int chunk = dynamic || nthreads < 2 ? 1 : (n + nthreads - 1) / nthreads;
    int bad = 0;
#pragma omp parallel for if (nthreads > 1) num_threads(nthreads) schedule(dynamic, chunk) \
    reduction(| : bad)
    for (int i = 0; i < n; i++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        bad |= fn(ctx, i, t);
    }
    return bad;
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
 * panel once per rectangle, which pays from ROWS_FIRST rows on (docs/performance.md, GEMM
 * drivers). Up to 128 rows the drivers take runs of panels instead (fp32, AMX), or the
 * weights dominate (avx512vnni, avx2), and each panel is read once. */
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
