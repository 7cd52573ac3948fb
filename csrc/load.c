/*
 * load.c: the weight loader and the arena the packed weights live in (bge.h, "Loading").
 *
 * Every matmul weight of a checkpoint is read from the file with pread, checked for NaN
 * and infinity, quantised where int8 and packed for one kernel table, in one call that
 * needs nothing from Python (the boundary releases the GIL around it). Threads take the
 * weights in turn (bge_run_each), each with its own buffers: at most one raw weight per
 * thread is in memory beside the packed ones.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#if defined(_WIN32)
#include <malloc.h>
#else
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "bge_internal.h"

#define ARENA_ALIGN ((size_t)2 << 20) /* a huge page */

void *bge_arena_alloc(size_t nbytes) {
    if (nbytes == 0) return NULL;
#if defined(_WIN32)
    return _aligned_malloc(nbytes, ARENA_ALIGN);
#else
    void *p = NULL;
    if (posix_memalign(&p, ARENA_ALIGN, nbytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, nbytes, MADV_HUGEPAGE); /* advice only: the OS may have none */
#endif
    return p;
#endif
}

void bge_arena_free(void *p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

size_t bge_load_job_bytes(const bge_kernels *t, const bge_load_job *j) {
    if (!t || !j || j->N < 1 || j->K < 1) return 0;
    switch (j->kind) {
    case BGE_LOAD_F32: return 4 * t->f32_packed_size(j->K, j->N);
    case BGE_LOAD_INT8: return t->qs8_packed_size(j->K, j->N);
    case BGE_LOAD_BF16: return t->bf16_packed_size(j->K, j->N);
    default: return 0;
    }
}

/* BGE_LOAD_OK when job j is well formed and its slot lies inside the arena, else what is
 * wrong with it (BGE_LOAD_BAD_*). */
static int check_job(const bge_kernels *t, const bge_load_job *j, size_t arena_bytes) {
    if (j->kind != BGE_LOAD_F32 && j->kind != BGE_LOAD_INT8 && j->kind != BGE_LOAD_BF16)
        return BGE_LOAD_BAD_KIND;
    if (j->nparts < 1 || j->nparts > BGE_LOAD_MAX_PARTS) return BGE_LOAD_BAD_PARTS;
    if (j->N < 1 || j->K < 1 || (j->kind == BGE_LOAD_INT8 && j->K > BGE_Q8_MAX_K))
        return BGE_LOAD_BAD_SHAPE;
    long long rows = 0;
    for (int p = 0; p < j->nparts; p++) {
        if (j->rows[p] < 1 || j->off[p] < 0) return BGE_LOAD_BAD_ROWS;
        rows += j->rows[p];
    }
    if (rows != j->N) return BGE_LOAD_BAD_ROWS;
    const size_t size = bge_load_job_bytes(t, j);
    if (size == 0) return BGE_LOAD_BAD_SHAPE;
    if (j->out_off < 0 || j->out_off % 64 || (uint64_t)j->out_off > arena_bytes ||
        size > arena_bytes - (size_t)j->out_off)
        return BGE_LOAD_BAD_SLOT;
    return BGE_LOAD_OK;
}

/* n bytes of the file at off into dst, pread retried where it stops short: BGE_LOAD_OK,
 * BGE_LOAD_SHORT when the file ends first, BGE_LOAD_IO when a read fails. */
static int read_full(int fd, char *dst, size_t n, int64_t off) {
#if defined(_WIN32)
    (void)fd, (void)dst, (void)n, (void)off;
    return BGE_LOAD_IO;
#else
    while (n > 0) {
        const ssize_t got = pread(fd, dst, n, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return BGE_LOAD_IO;
        if (got == 0) return BGE_LOAD_SHORT;
        dst += got;
        n -= (size_t)got;
        off += got;
    }
    return BGE_LOAD_OK;
#endif
}

/* 1 when none of the n floats is NaN or infinity (all exponent bits set). A bit test, not a
 * float compare: it vectorises without -ffast-math and ignores the sign. */
static int all_finite(const float *a, size_t n) {
    const uint32_t *b = (const uint32_t *)a;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) bad |= (uint32_t)((b[i] & 0x7f800000u) == 0x7f800000u);
    return bad == 0;
}

typedef struct load_ctx {
    const bge_kernels *t;
    int fd;
    bge_load_job *jobs;
    uint8_t *arena;
    float *w;          /* per thread: fs floats */
    int8_t *q;         /* per thread: qs bytes   */
    float *s;          /* per thread: ss floats  */
    size_t fs, qs, ss;
} load_ctx;

/* Job i with thread `thread`'s buffers; its outcome goes to jobs[i].status and .part. */
static int load_one(void *ctx, int i, int thread) {
    const load_ctx *c = (const load_ctx *)ctx;
    bge_load_job *j = &c->jobs[i];
    float *w = c->w + (size_t)thread * c->fs;
    int8_t *q = c->q + (size_t)thread * c->qs;
    float *s = c->s + (size_t)thread * c->ss;
    size_t at = 0;
    for (int p = 0; p < j->nparts; p++) {
        const size_t n = (size_t)j->rows[p] * (size_t)j->K;
        const int st = read_full(c->fd, (char *)(w + at), n * sizeof(float), j->off[p]);
        if (st != BGE_LOAD_OK || !all_finite(w + at, n)) {
            j->status = st != BGE_LOAD_OK ? st : BGE_LOAD_NONFINITE;
            j->part = p;
            return 0;
        }
        at += n;
    }
    void *dst = c->arena + (size_t)j->out_off;
    int st;
    if (j->kind == BGE_LOAD_INT8) {
        st = c->t->qs8_quantize_weights(w, j->N, j->K, q, s, 1);
        if (st == BGE_OK) st = c->t->qs8_pack(q, s, j->K, j->N, dst);
    } else if (j->kind == BGE_LOAD_BF16) {
        st = c->t->bf16_pack(w, j->K, j->N, dst);
    } else {
        st = c->t->f32_pack(w, j->K, j->N, (float *)dst);
    }
    j->status = st == BGE_OK ? BGE_LOAD_OK : BGE_LOAD_PACK;
    j->part = 0;
    return 0;
}

int bge_load_packed(const bge_kernels *t, int fd, bge_load_job *jobs, int njobs, void *arena,
                    size_t arena_bytes, int nthreads) {
    if (!t || (!jobs && njobs) || njobs < 0 || !arena || (uintptr_t)arena % 64 ||
        nthreads < 1)
        return BGE_ERR_ARG;
    size_t most = 1, most_n = 1, most_g = 1;
    int need_q = 0, bad = 0;
    for (int i = 0; i < njobs; i++) {
        bge_load_job *j = &jobs[i];
        j->status = check_job(t, j, arena_bytes);
        j->part = 0;
        bad |= j->status != BGE_LOAD_OK;
        if (bad) continue;
        const size_t nk = (size_t)j->N * (size_t)j->K, ng = (size_t)BGE_Q8_NGROUPS(j->K);
        most = nk > most ? nk : most;
        most_n = (size_t)j->N > most_n ? (size_t)j->N : most_n;
        most_g = ng > most_g ? ng : most_g;
        need_q |= j->kind == BGE_LOAD_INT8;
    }
    if (bad) return BGE_ERR_ARG;
    for (int i = 0; i < njobs; i++) jobs[i].status = BGE_LOAD_NOT_RUN;
    if (njobs == 0) return BGE_OK;
    const int nt = nthreads < njobs ? nthreads : njobs;
    load_ctx c = {t, fd, jobs, (uint8_t *)arena, NULL, NULL, NULL, most,
                  need_q ? most : 1, need_q ? most_n * most_g : 1};
    c.w = (float *)malloc((size_t)nt * c.fs * sizeof(float));
    c.q = (int8_t *)malloc((size_t)nt * c.qs);
    c.s = (float *)malloc((size_t)nt * c.ss * sizeof(float));
    int st = BGE_ERR_MEMORY;
    if (c.w && c.q && c.s) {
        bge_run_each(njobs, nt, 1, load_one, &c);
        st = BGE_OK;
    }
    free(c.w);
    free(c.q);
    free(c.s);
    return st;
}
