/*
 * bge_internal.h: what the kernel folders share with dispatch.c; not part of the C API.
 *
 * Every folder csrc/<arch>/<isa>/ defines one overlay function that replaces the slots it
 * has kernels for. dispatch.c calls the overlays of the levels the build compiled (it is
 * told which with BGE_BUILT_<ID> macros from setup.py) and the machine can run.
 */
#ifndef BGE_INTERNAL_H
#define BGE_INTERNAL_H

#include <math.h>
#include <string.h>

#include "bge.h"

/* The plain-C references (csrc/ref/). They are the truth the tests compare against and the
 * fallback every table starts from. Their contracts are the slot types in bge.h. */
size_t bge_f32_packed_size__ref(int K, int N);
int bge_f32_pack__ref(const float *w, int K, int N, float *packed);
int bge_f32_gemm__ref(const float *x, int M, int K, int N, const float *packed,
                      const float *bias, const float *res, float *out, int epilogue,
                      int nthreads);
int bge_f32_layernorm__ref(const float *x, const float *gamma, const float *beta, float eps,
                           float *out, int T, int C, int nthreads);
int bge_f32_softmax__ref(float *x, int R, int C);
int bge_f32_gelu__ref(float *x, size_t n);
size_t bge_f32_attention_scratch__ref(int max_len, int head_dim, int nthreads);
int bge_f32_attention__ref(const float *qkv, const int32_t *offsets, int n, int H, int heads,
                           float scale, float *out, float *scratch, size_t scratch_floats,
                           int nthreads);
int bge_f32_embed__ref(const int32_t *ids, const int32_t *offsets, int n, const float *word,
                       int vocab, const float *pos, int max_pos, const float *type, float *out,
                       int C);
int bge_f32_pool__ref(const float *h, const int32_t *offsets, int n, int C, int mode,
                      float *out);
int bge_f32_l2norm__ref(float *x, int n, int C);
double bge_f32_fma_loop__ref(long iters);

/* Puts fn into slot `slot` of table t under fn's own name, or under `name` (a string: e.g.
 * one that tells the tile shape, "bge_f32_gemm_8x48__avx512"). */
#define BGE_SET(t, slot, fn) ((t)->slot = (fn), (t)->names[BGE_SLOT_##slot] = #fn)
#define BGE_SET_NAMED(t, slot, fn, name) ((t)->slot = (fn), (t)->names[BGE_SLOT_##slot] = (name))

/* The slot groups a level fills together, from its functions bge_<slot>__<isa>:
 * the fp32 GEMM (named with its tile, e.g. "_8x48__avx512"), the row and attention ops,
 * the int8 weight and activation quantisers, the int8 GEMM (named with its tile). */
#define BGE_SET_F32_GEMM(t, isa, tile)                                                  \
    (BGE_SET(t, f32_packed_size, bge_f32_packed_size__##isa),                           \
     BGE_SET(t, f32_pack, bge_f32_pack__##isa),                                         \
     BGE_SET_NAMED(t, f32_gemm, bge_f32_gemm__##isa, "bge_f32_gemm" tile),              \
     BGE_SET(t, f32_fma_loop, bge_f32_fma_loop__##isa))
#define BGE_SET_F32_OPS(t, isa)                                                         \
    (BGE_SET(t, f32_layernorm, bge_f32_layernorm__##isa),                               \
     BGE_SET(t, f32_softmax, bge_f32_softmax__##isa),                                   \
     BGE_SET(t, f32_gelu, bge_f32_gelu__##isa),                                         \
     BGE_SET(t, f32_attention_scratch, bge_f32_attention_scratch__##isa),               \
     BGE_SET(t, f32_attention, bge_f32_attention__##isa),                               \
     BGE_SET(t, f32_embed, bge_f32_embed__##isa), BGE_SET(t, f32_pool, bge_f32_pool__##isa), \
     BGE_SET(t, f32_l2norm, bge_f32_l2norm__##isa))
#define BGE_SET_Q8_QUANTIZERS(t, isa)                                                   \
    (BGE_SET(t, qs8_quantize_weights, bge_qs8_quantize_weights__##isa),                 \
     BGE_SET(t, qu8_quantize, bge_qu8_quantize__##isa))
#define BGE_SET_Q8_GEMM(t, isa, tile)                                                   \
    (BGE_SET(t, qs8_packed_size, bge_qs8_packed_size__##isa),                           \
     BGE_SET_NAMED(t, qs8_pack, bge_qs8_pack__##isa, "bge_qs8_pack" tile),              \
     BGE_SET_NAMED(t, qu8s8_gemm, bge_qu8s8_gemm__##isa, "bge_qu8s8_gemm" tile),        \
     BGE_SET_NAMED(t, qu8s8_gemm_i32, bge_qu8s8_gemm_i32__##isa, "bge_qu8s8_gemm_i32" tile), \
     BGE_SET(t, qu8s8_dot_loop, bge_qu8s8_dot_loop__##isa))

/* Prefetches, for writing, the bytes [0, bytes) of `rows` rows `stride` bytes apart from p:
 * the output block of one GEMM tile, asked for before the tile's k loop so that its lines
 * are in cache when the epilogue stores to them. Without it the stores miss the cache one
 * line after another on long batches (the output of a 512-token QKV is 2.4 MB) and a tile
 * waits on them. Prefetches never fault, so no bound needs checking beyond the block's.  */
static inline void bge_prefetch_block(const void *p, int rows, size_t stride, int bytes) {
#if defined(__GNUC__) || defined(__clang__)
    for (int i = 0; i < rows; i++) {
        const char *r = (const char *)p + (size_t)i * stride;
        for (int b = 0; b < bytes; b += 64) __builtin_prefetch(r + b, 1, 3);
        __builtin_prefetch(r + bytes - 1, 1, 3); /* a row not 64-byte aligned ends a line on */
    }
#else
    (void)p, (void)rows, (void)stride, (void)bytes;
#endif
}

/* Checks shared by every implementation of a slot, so that the SIMD kernels reject exactly
 * what the reference rejects. Return BGE_OK or BGE_ERR_ARG. (csrc/check.c) */
int bge_check_offsets(const int32_t *offsets, int n, int T_expected);
int bge_check_pool_args(const float *h, const int32_t *offsets, int n, int C, int mode,
                        const float *out);
int bge_check_embed_args(const int32_t *ids, const int32_t *offsets, int n, const float *word,
                         int vocab, const float *pos, int max_pos, const float *type,
                         const float *out, int C);
int bge_check_gemm_args(const float *x, int M, int K, int N, const float *packed,
                        const float *bias, const float *res, const float *out, int epilogue,
                        int nthreads);
int bge_check_q8_args(const uint8_t *q, int M, int K, int N, const void *packed,
                      int nthreads);
int bge_check_q8_epi_args(const float *scale, const int32_t *zp, const float *bias,
                          const float *res, const float *out, int epilogue);

/* Runs fn(ctx, i, thread) once for every i in [0, n) on up to nthreads threads: in
 * contiguous blocks of about n / nthreads (dynamic = 0) or one i at a time (dynamic = 1),
 * each taken by the next free thread;
 * `thread` in [0, nthreads) is the running thread's index (for its own scratch). Returns
 * the bitwise OR of fn's results. The references' and the loaders' parallel loop.
 * (csrc/schedule.c) */
int bge_run_each(int n, int nthreads, int dynamic, int (*fn)(void *ctx, int i, int thread),
                 void *ctx);

/* Packs w (N, K) into column panels of width nr (layout: csrc/pack.c). */
void bge_f32_pack_panels(const float *w, int K, int N, int nr, float *packed);

/* One SIMD fp32 GEMM for the shared driver (bge_f32_gemm_run, csrc/gemm_driver.c):
 *   tile(x, ldx, K, panel, mr, nw, tile): tile[i*nr + j] = sum_k x[i*ldx + k] * panel[k*nr + j]
 *     for i < mr, j < nw (one FMA chain per element over k ascending; entries past nw may be
 *     written too); tile is 64-byte aligned, mr x nr floats;
 *   epilogue(tile, mr, nw, bias, res, out, ldo, epilogue): out[i*ldo + j] = epi(tile[i*nr + j]
 *     + bias[j]) for i < mr, j < nw; bias at the tile's column 0; res (NULL unless
 *     BGE_EPI_BIAS_RESIDUAL) and out at element (0, 0); res may equal out.
 * mr x nr must be at most BGE_F32_TILE_FLOATS; panels are packed by bge_f32_pack_panels. */
#define BGE_F32_TILE_FLOATS (8 * 64)
typedef struct bge_f32_gemm_impl {
    int mr, nr;
    void (*tile)(const float *x, size_t ldx, int K, const float *panel, int mr, int nw,
                 float *tile);
    void (*epilogue)(const float *tile, int mr, int nw, const float *bias, const float *res,
                     float *out, size_t ldo, int epilogue);
    /* Optional (NULL: the driver calls tile): tile that also prefetches the bytes
     * [pf, pf + pf_bytes) into L2, spread over its K steps (a slice of the next panel) */
    void (*tile_pf)(const float *x, size_t ldx, int K, const float *panel, int mr, int nw,
                    float *tile, const char *pf, int pf_bytes);
} bge_f32_gemm_impl;

/* Checks the arguments, then runs the tiles: rows in blocks that keep x in L2, panel by
 * panel inside a block; threads take rectangles of (row tiles) x (panels), never a part of
 * k. The contract is the f32_gemm slot's (bge.h). */
int bge_f32_gemm_run(const bge_f32_gemm_impl *impl, const float *x, int M, int K, int N,
                     const float *packed, const float *bias, const float *res, float *out,
                     int epilogue, int nthreads);
/* A SIMD level's f32_gemm slot, bge_f32_gemm__<isa>: the shared driver on its tiles. */
#define BGE_F32_GEMM_SLOT(isa, impl)                                                        \
    static int bge_f32_gemm__##isa(const float *x, int M, int K, int N, const float *packed, \
                                   const float *bias, const float *res, float *out,        \
                                   int epilogue, int nthreads) {                            \
        return bge_f32_gemm_run(&(impl), x, M, K, N, packed, bias, res, out, epilogue,     \
                                nthreads);                                                  \
    }

/* Work sharing for the GEMM drivers on few rows, where the weights stream from memory and
 * each thread should read one run of them: units [0, n) are cut into one contiguous run
 * per thread of the team; each thread takes its own run front to back, then whatever the
 * others have not reached, from the back of their runs. Every unit runs once, on one
 * thread: fn(ctx, u, next), `next` the unit the thread will likely take after u (-1 if
 * none; for prefetching). begin and end (or NULL) run on each thread of the team before
 * its first unit and after its last. taken: n bytes of scratch; n <= BGE_UNITS_MAX.
 * (csrc/schedule.c) */
#define BGE_UNITS_MAX 1024
void bge_run_units(int n, int nthreads, unsigned char *taken,
                   void (*fn)(void *ctx, int u, int next), void *ctx, void (*begin)(void),
                   void (*end)(void));

/* Threads worth waking for a kernel whose rows go out in chunks of `chunk` rows: one per
 * chunk, at most nthreads. A thread that would find no chunk still costs its wake-up and
 * the closing barrier. */
static inline int bge_row_team(int rows, int chunk, int nthreads) {
    const int chunks = (rows + chunk - 1) / chunk;
    return chunks < nthreads ? (chunks < 1 ? 1 : chunks) : nthreads;
}

/* Rows per chunk of a row-parallel kernel (the activation quantisers): 16, or fewer so
 * that each of the nthreads gets about two chunks. */
static inline int bge_row_chunk(int rows, int nthreads) {
    const int c = (rows + 2 * nthreads - 1) / (2 * nthreads);
    return c < 1 ? 1 : c > 16 ? 16 : c;
}

/* (text, head) jobs per chunk of the attention kernels' dynamic schedule; jobs run text by
 * text, the heads of a text in order. Two threads working on neighbouring heads of one
 * text write neighbouring 128-byte runs of the same output rows (and read neighbouring
 * runs of qkv), and for short texts the lines passing between the cores cost more than
 * the heads' arithmetic. So, below 128 tokens: whole texts when there are at least two per
 * thread, else each text's heads cut into one run per thread; from 128 tokens a job is
 * long enough to be taken one by one (docs/performance.md, bge_attention_chunk). */
static inline int bge_attention_chunk(int n, int heads, int L_max, int nthreads) {
    if (L_max >= 128 || nthreads < 2) return 1;
    return n >= 2 * nthreads ? heads : (heads + nthreads - 1) / nthreads;
}

/* What a SIMD level gives the shared attention driver (csrc/attention_driver.c), which
 * checks the arguments and the scratch and shares the (text, head) jobs among threads.
 *   head(q, k, v, ld, L, D, scale, work, out, ldo): one head of one text of L tokens: q, k
 *       and v point at the text's first row of qkv (T, 3H), at column h * D of Q, K and V,
 *       rows ld = 3H floats apart; out at the same place of the (T, H) output, rows
 *       ldo = H apart; work: this thread's scratch, `align` floats aligned.
 *   thread_floats(max_len, D): floats of one thread's scratch for texts of at most
 *       max_len tokens, the slack for aligning it included.
 *   align: floats (a power of two) each thread's scratch is aligned to. */
typedef struct bge_attention_impl {
    void (*head)(const float *q, const float *k, const float *v, int ld, int L, int D,
                 float scale, float *work, float *out, int ldo);
    size_t (*thread_floats)(int max_len, int D);
    int align;
} bge_attention_impl;
size_t bge_attention_scratch(const bge_attention_impl *impl, int max_len, int head_dim,
                             int nthreads);
int bge_attention_run(const bge_attention_impl *impl, const float *qkv, const int32_t *offsets,
                      int n, int H, int heads, float scale, float *out, float *scratch,
                      size_t scratch_floats, int nthreads);
/* A level's two attention slots, bge_f32_attention_scratch__<isa> and
 * bge_f32_attention__<isa>, from its head kernel, scratch size and alignment. */
#define BGE_ATTENTION_SLOTS(isa, head_fn, thread_floats_fn, align_floats)                  \
    static const bge_attention_impl attention_##isa = {head_fn, thread_floats_fn,           \
                                                       align_floats};                       \
    static size_t bge_f32_attention_scratch__##isa(int max_len, int head_dim, int nthreads) { \
        return bge_attention_scratch(&attention_##isa, max_len, head_dim, nthreads);        \
    }                                                                                       \
    static int bge_f32_attention__##isa(const float *qkv, const int32_t *offsets, int n,   \
                                        int H, int heads, float scale, float *out,          \
                                        float *scratch, size_t scratch_floats,              \
                                        int nthreads) {                                     \
        return bge_attention_run(&attention_##isa, qkv, offsets, n, H, heads, scale, out,   \
                                 scratch, scratch_floats, nthreads);                        \
    }

/* Work sharing for the GEMM drivers on more rows: the (mt row tiles) x (np panels) grid of
 * an (M, .) output is cut into rectangles, about 4 per thread (how: see the cut in
 * csrc/schedule.c), which the threads take dynamically, so a thread the OS delays does not
 * hold the others back: fn(ctx, t0, t1, p0, p1) runs row tiles [t0, t1) x panels
 * [p0, p1), each rectangle once. (csrc/schedule.c) */
void bge_run_rectangles(int M, int mt, int np, int nthreads,
                        void (*fn)(void *ctx, int t0, int t1, int p0, int p1), void *ctx);

/* The scalar GELU every kernel agrees on at the reference level: 0.5 x (1 + erf(x / sqrt 2)). */
float bge_gelu_erf_scalar(float x);

/* ---------------------------------------------------------------------------------------
 * int8: the references (csrc/ref/qgemm.c), and what every int8 level shares: the packed
 * header, the quantisation steps, the panel packing and the tile driver.
 * ------------------------------------------------------------------------------------- */

int bge_qu8_quantize__ref(const float *x, int M, int K, uint8_t *q, float *scale, int32_t *zp,
                          int nthreads);
size_t bge_qs8_packed_size__ref(int K, int N);
int bge_qs8_pack__ref(const int8_t *w, const float *w_scale, int K, int N, void *packed);
int bge_qu8s8_gemm__ref(const uint8_t *q, const float *scale, const int32_t *zp, int M, int K,
                        int N, const void *packed, const float *bias, const float *res,
                        float *out, int epilogue, int nthreads);
int bge_qu8s8_gemm_i32__ref(const uint8_t *q, int M, int K, int N, const void *packed,
                            int32_t *acc, int nthreads);
double bge_qu8s8_dot_loop__ref(long iters);
int bge_qs8_quantize_weights__ref(const float *w, int N, int K, int8_t *w_s8, float *w_scale,
                                  int nthreads);

/* The first 64 bytes of every packed int8 weight. */
#define BGE_Q8_MAGIC 0x38514742u /* "BGQ8" in memory order */
#define BGE_Q8_HEADER_BYTES 64
typedef struct bge_q8_header {
    uint32_t magic;       /* BGE_Q8_MAGIC                                              */
    uint32_t layout;      /* one of BGE_Q8_LAYOUT_*: which kernel the bytes are laid for */
    int32_t K, N;         /* the weight's shape (N, K)                                 */
    int32_t Kp, Np;       /* K up to a multiple of 4; N up to a multiple of nr         */
    int32_t nr;           /* columns per panel (1 for the reference)                   */
    int32_t kgroup;       /* k values interleaved per column in a panel (Kp for ref)   */
    int32_t elt;          /* bytes per packed weight: 1 (s8; every layout so far)       */
    int32_t group;        /* k per quantisation group: BGE_Q8_GROUP                    */
    int32_t ngroups;      /* BGE_Q8_NGROUPS(K)                                         */
    int32_t reserved[5];
} bge_q8_header;
_Static_assert(sizeof(bge_q8_header) == BGE_Q8_HEADER_BYTES, "the header is 64 bytes");

/* Layout ids: each packing's id names the kernel family that reads it. */
enum {
    BGE_Q8_LAYOUT_REF = 1,     /* ref: one panel, rows of Kp s8 (W itself, padded)    */
    BGE_Q8_LAYOUT_AVX2 = 2,    /* avx2: 24-column panels, k pairs, s8                 */
    BGE_Q8_LAYOUT_AVXVNNI = 3, /* avxvnni: 24-column panels, k quads, s8              */
    BGE_Q8_LAYOUT_VNNI = 4,    /* avx512vnni: 48-column panels, k quads, s8           */
    BGE_Q8_LAYOUT_AMX = 5,     /* amx: the bytes of VNNI's layout                     */
    BGE_Q8_LAYOUT_DOTPROD = 6, /* arm dotprod: 16-column panels, k quads, s8          */
    BGE_Q8_LAYOUT_I8MM = 7,    /* arm i8mm: the bytes of DOTPROD's layout             */
};

/* Where the parts of a packed buffer start, from its header: w_scale (Np x ngroups) fp32,
 * then colsum (Np x ngroups) int32 (each at bge_q8_scale_index), then the weights, 64-byte
 * aligned. */
static inline const float *bge_q8_wscale(const void *packed) {
    return (const float *)((const char *)packed + BGE_Q8_HEADER_BYTES);
}
static inline const int32_t *bge_q8_colsum(const void *packed) {
    const bge_q8_header *h = (const bge_q8_header *)packed;
    return (const int32_t *)((const char *)packed + BGE_Q8_HEADER_BYTES) +
           (size_t)h->Np * h->ngroups;
}
/* Where w_scale[n, g] and colsum[n, g] sit in their (Np x ngroups) regions, for panels of
 * nr columns: panel by panel, and in a panel group by group (a panel's columns of one group
 * contiguous, group stride nr), so a panel's scales and sums are one run of bytes. */
static inline size_t bge_q8_scale_index(int n, int g, int nr, int ngroups) {
    return ((size_t)(n / nr) * ngroups + g) * nr + n % nr;
}
static inline size_t bge_q8_weights_offset(int Np, int ngroups) { /* header + scales + sums */
    return BGE_Q8_HEADER_BYTES + (((size_t)Np * ngroups * 8 + 63) & ~(size_t)63);
}
_Static_assert(BGE_Q8_GROUP % 4 == 0 && BGE_Q8_GROUP * 127 <= 32767,
               "groups are whole k-quads; a group's colsum fits in int16 (vpmaddwd/vpdpwssd)");

/* BGE_OK, or BGE_ERR_PACKING when `packed` holds another layout, or BGE_ERR_ARG when its
 * K, N differ. */
int bge_q8_check_header(const void *packed, uint32_t layout, int K, int N);

/* Quantisation steps shared by every qu8_quantize, so each level writes the same bytes.
 * bge_q8_row_params: scale, inv, zp of one group from mn = min(0, min x), mx = max(0, max x)
 *   over the group; returns 0 when mx == mn (then scale = 1, zp = 0, and every q of the
 *   group is 0), else 1.
 * bge_q8_quantize_span: q[k] = clamp(cvt(x[k] * inv) + zp, 0, 255) for k < n.
 * bge_q8_cvt: nearbyintf, then INT32_MIN outside the int32 range or for NaN (cvtps2dq). */
/* cvt and row_params are inline, so that each folder compiles them with its own flags (with
 * SSE4.1 nearbyintf is one roundss; the reference's baseline flags make it a libm call,
 * which cost the SIMD quantisers a call per group). The same IEEE ops everywhere.        */
static inline int32_t bge_q8_cvt(float v) {
    const float r = nearbyintf(v);
    return (r >= -2147483648.0f && r < 2147483648.0f) ? (int32_t)r : INT32_MIN;
}

static inline int bge_q8_row_params(float mn, float mx, float *scale, float *inv,
                                    int32_t *zp) {
    if (mx == mn) {
        *scale = 1.0f;
        *inv = 0.0f;
        *zp = 0;
        return 0;
    }
    const float range = mx - mn;
    *scale = range / 255.0f;
    *inv = 255.0f / range;
    const int32_t z = bge_q8_cvt(-mn * *inv);
    *zp = z < 0 ? 0 : z > 255 ? 255 : z;
    return 1;
}

void bge_q8_quantize_span(const float *x, int n, float inv, int32_t zp, uint8_t *q);

/* The end of a vector level's group x (n): folds x[k], k0 <= k < n (the lanes' remainder),
 * into mn, mx with the reference's compare and select, then bge_q8_row_params; for a flat
 * group (mx == mn) also q (n) = 0, and returns 0. */
static inline int bge_q8_group_params(const float *x, int k0, int n, float mn, float mx,
                                      uint8_t *q, float *scale, float *inv, int32_t *zp) {
    for (int k = k0; k < n; k++) {
        const float v = x[k];
        mn = v < mn ? v : mn; /* minps(v, mn): a NaN v leaves mn */
        mx = v > mx ? v : mx;
    }
    if (bge_q8_row_params(mn, mx, scale, inv, zp)) return 1;
    memset(q, 0, (size_t)n);
    return 0;
}

/* Weight quantisation steps (the qs8_quantize_weights slot, bge.h) shared by every level's
 * qs8_quantize_weights, inline so that each folder compiles them with its own flags:
 * bge_q8_abs_bits: the bit pattern of |w| (sign cleared); patterns of finite floats order
 *   as their magnitudes, and every inf or NaN pattern is above BGE_Q8_FINITE_MAX;
 * bge_q8_weight_scale: the group's scale from the largest such pattern (finite);
 * bge_q8_weight_round: clamp(rint(w / s), -127, 127), rint half to even by adding and
 *   subtracting 1.5 * 2^23 (exact for |w / s| < 2^22, which holds: |w / s| <= 127 (1 +
 *   2^-23)), as the vector levels do lane by lane. */
#define BGE_Q8_FINITE_MAX 0x7F7FFFFF
static inline int32_t bge_q8_abs_bits(float w) {
    int32_t b;
    memcpy(&b, &w, sizeof b);
    return b & 0x7FFFFFFF;
}
static inline float bge_q8_weight_scale(int32_t top) {
    float amax;
    memcpy(&amax, &top, sizeof amax);
    return amax > 0.0f ? amax / 127.0f : 1.0f;
}
static inline int8_t bge_q8_weight_round(float w, float s) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float v = (w / s + magic) - magic;
    v = v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v;
    return (int8_t)v;
}

/* Every level's qs8_quantize_weights: checks the arguments, then runs group(w, n, q, scale)
 * on each group of each row (n = 64, or fewer for the last), rows split among nthreads;
 * group returns 0 on a non-finite weight (then BGE_ERR_ARG). (csrc/pack.c) */
typedef int (*bge_q8_weight_group_fn)(const float *w, int n, int8_t *q, float *scale);
int bge_q8_quantize_weight_rows(const float *w, int N, int K, int8_t *w_s8, float *w_scale,
                                int nthreads, bge_q8_weight_group_fn group);
/* A SIMD level's qs8_quantize_weights slot, bge_qs8_quantize_weights__<isa>, on `group`. */
#define BGE_Q8_QUANTIZE_WEIGHTS_SLOT(isa, group)                                            \
    static int bge_qs8_quantize_weights__##isa(const float *w, int N, int K, int8_t *w_s8,  \
                                               float *w_scale, int nthreads) {              \
        return bge_q8_quantize_weight_rows(w, N, K, w_s8, w_scale, nthreads, group);       \
    }

/* The scale of a vector level's weight group w (n): folds the |w[k]| patterns, k0 <= k < n
 * (the lanes' remainder), into top, the largest of the lanes'; 0 when the group holds an
 * inf or NaN, else *scale = bge_q8_weight_scale(top) and 1. */
static inline int bge_q8_weight_group_scale(const float *w, int k0, int n, int32_t top,
                                            float *scale) {
    for (int k = k0; k < n; k++) {
        const int32_t b = bge_q8_abs_bits(w[k]);
        top = b > top ? b : top;
    }
    if (top > BGE_Q8_FINITE_MAX) return 0; /* inf or NaN */
    *scale = bge_q8_weight_scale(top);
    return 1;
}

/* The reference's and the panel packings' shared parts (csrc/pack.c): the check of w and
 * w_scale (a -128 is refused), and the header, w_scale and colsum of a layout. */
int bge_q8_check_weights(const int8_t *w, const float *w_scale, int K, int N,
                         const void *packed);
void bge_q8_write_head(const int8_t *w, const float *w_scale, int K, int N, void *packed,
                       uint32_t layout, int nr, int kgroup);

/* Packed size and packing of the panel layouts (every SIMD level): see csrc/pack.c. */
size_t bge_q8_panels_size(int K, int N, int nr, int kgroup);
int bge_q8_pack_panels(const int8_t *w, const float *w_scale, int K, int N, void *packed,
                       uint32_t layout, int nr, int kgroup);

/* One SIMD int8 GEMM for the shared driver (bge_q8_gemm_run):
 *   tile(q, ldq, Kp, panel, mr, nw, tile): tile[i*nr + j] = sum_{k < Kp} q[i*ldq + k] *
 *     w[column j of the panel, k] for i < mr, j < nw (int32 over every k, all groups
 *     together: the qu8s8_gemm_i32 slot; row stride nr; entries past nw may be written too);
 *   gtile(q, ldq, Kp, panel, mr, nw, scale, zp, ngroups, wscale, colsum, Np, ftile):
 *     ftile[i*nr + j] = the fp32 sum over groups of the scheme of bge.h, before the bias:
 *     s = 0; for each group g in order: s = s + (float)(acc_g - zp colsum) * (scale wscale),
 *     for i < mr, j < nw (entries past nw may be written too). scale, zp point at row 0 of
 *     the tile (row stride ngroups); wscale, colsum at column 0 of the panel in group 0
 *     (group stride gs: the panel width nr, bge_q8_scale_index);
 *   epilogue(ftile, mr, nw, bias, res, out, ldo, epilogue): out[i*ldo + j] = epi(ftile[i*nr
 *     + j] + bias[j]) for i < mr, j < nw; bias at the tile's column 0; res (NULL unless
 *     BGE_EPI_BIAS_RESIDUAL) and out at element (0, 0). */
typedef struct bge_q8_gemm_impl {
    uint32_t layout;
    int mr, nr, kgroup;
    void (*tile)(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                 int32_t *tile);
    void (*gtile)(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                  const float *scale, const int32_t *zp, int ngroups, const float *wscale,
                  const int32_t *colsum, int Np, float *ftile);
    void (*epilogue)(const float *ftile, int mr, int nw, const float *bias, const float *res,
                     float *out, size_t ldo, int epilogue);
    /* Optional (NULL: nothing): called by each thread before and after each block of tiles
     * it runs (AMX: load the tile configuration, release the tiles). */
    void (*begin)(void);
    void (*end)(void);
} bge_q8_gemm_impl;

/* Checks the arguments and the header, then runs the tiles over threads. acc == NULL: the
 * qu8s8_gemm slot (scale, zp, bias, out, epilogue used); acc != NULL: the qu8s8_gemm_i32
 * slot (the raw tile sums copied to acc (M, N); scale .. out, epilogue ignored). */
int bge_q8_gemm_run(const bge_q8_gemm_impl *impl, const uint8_t *q, const float *scale,
                    const int32_t *zp, int M, int K, int N, const void *packed,
                    const float *bias, const float *res, float *out, int32_t *acc,
                    int epilogue, int nthreads);
/* A SIMD level's qu8s8_gemm and qu8s8_gemm_i32 slots, bge_qu8s8_gemm__<isa> and
 * bge_qu8s8_gemm_i32__<isa>: the shared driver on its tiles. */
#define BGE_Q8_GEMM_SLOTS(isa, impl)                                                        \
    static int bge_qu8s8_gemm__##isa(const uint8_t *q, const float *scale, const int32_t *zp,\
                                     int M, int K, int N, const void *packed,               \
                                     const float *bias, const float *res, float *out,       \
                                     int epilogue, int nthreads) {                          \
        return bge_q8_gemm_run(&(impl), q, scale, zp, M, K, N, packed, bias, res, out, NULL, \
                               epilogue, nthreads);                                         \
    }                                                                                       \
    static int bge_qu8s8_gemm_i32__##isa(const uint8_t *q, int M, int K, int N,             \
                                         const void *packed, int32_t *acc, int nthreads) {  \
        if (!acc) return BGE_ERR_ARG;                                                       \
        return bge_q8_gemm_run(&(impl), q, NULL, NULL, M, K, N, packed, NULL, NULL, NULL,  \
                               acc, BGE_EPI_BIAS, nthreads);                                \
    }

/* One row of a level's activation quantiser: x (K) -> q (Kp), scale (ngroups), zp (ngroups),
 * q's padding set to the zp of the last group; the bytes of bge_qu8_quantize__ref. */
typedef void (*bge_q8_quantize_row_fn)(const float *x, int K, uint8_t *q, float *scale,
                                       int32_t *zp);
/* The qu8_quantize slot of a SIMD level (csrc/gemm_driver.c): checks the arguments as the
 * reference does, then runs `row` on each of the M rows, rows shared among threads in
 * chunks (each row's bytes are the same on any thread count). */
int bge_qu8_quantize_run(bge_q8_quantize_row_fn row, const float *x, int M, int K, uint8_t *q,
                         float *scale, int32_t *zp, int nthreads);
/* A SIMD level's qu8_quantize slot, bge_qu8_quantize__<isa>: bge_qu8_quantize_run on `row`. */
#define BGE_Q8_QUANTIZE_SLOT(isa, row)                                                      \
    static int bge_qu8_quantize__##isa(const float *x, int M, int K, uint8_t *q,            \
                                       float *scale, int32_t *zp, int nthreads) {           \
        return bge_qu8_quantize_run(row, x, M, K, q, scale, zp, nthreads);                  \
    }

/* One group of a level's activation quantiser: x (n), n <= BGE_Q8_GROUP -> q (n), *scale,
 * *zp, the bytes of bge_qu8_quantize__ref for that group. */
typedef void (*bge_q8_quantize_group_fn)(const float *x, int n, uint8_t *q, float *scale,
                                         int32_t *zp);
/* A row (bge_q8_quantize_row_fn) as `group` on each group in order, the last one short when
 * K % BGE_Q8_GROUP != 0, then q's padding. Inline with a constant `group`, so that each
 * folder compiles the loop with its own flags and its group kernel inlined into it. */
static inline __attribute__((always_inline)) void bge_q8_quantize_groups(
    const float *x, int K, uint8_t *q, float *scale, int32_t *zp,
    bge_q8_quantize_group_fn group) {
    const int ng = BGE_Q8_NGROUPS(K);
    for (int g = 0; g < ng; g++) {
        const int k0 = g * BGE_Q8_GROUP;
        const int n = K - k0 < BGE_Q8_GROUP ? K - k0 : BGE_Q8_GROUP;
        group(x + k0, n, q + k0, scale + g, zp + g);
    }
    memset(q + K, zp[ng - 1], (size_t)(BGE_Q8_KP(K) - K));
}

/* ---------------------------------------------------------------------------------------
 * bf16: the reference and the conversion (csrc/ref/bgemm.c), the packed header and panels
 * (csrc/pack.c), the driver every SIMD bf16 GEMM shares (csrc/gemm_driver.c). The scheme is
 * bge.h's.
 * ------------------------------------------------------------------------------------- */

/* bf16(v) of bge.h on the bits u of v: DAZ, NaN made quiet, else round to nearest even.
 * Inline, so that every folder compiles it with its own flags; the vector levels do the
 * same integer steps lane by lane. */
static inline uint16_t bge_bf16_bits(uint32_t u) {
    if ((u & 0x7F800000u) == 0) u &= 0x80000000u;                     /* denormal: +-0 */
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u); /* NaN */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* The fp32 value of a bf16 (exact: the bf16 bits on top, zeros below). */
static inline float bge_bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The first 64 bytes of every packed bf16 weight. The panels follow, from byte 64:
 *   panel p = 0 .. ceil(N / nr) - 1 covers columns n = nr p .. nr p + nr - 1; inside it,
 *   pair g = 0 .. Kp/2 - 1 ascending, each pair one row of nr 32-bit words, the word of
 *   column j holding bf16(w[nr p + j, 2g]) (low half) and bf16(w[nr p + j, 2g + 1]) (high
 *   half); zeros past N and at k = K. So the bf16 of (n, k) sits at byte
 *     64 + 4 * ((p * Kp/2 + g) * nr + j) + 2 * (k % 2),  p = n / nr, j = n % nr, g = k / 2,
 *   a panel is Kp * nr * 2 bytes and a pair row nr * 4 (192 bytes for nr = 48: an AMX B
 *   tile's row stride for 16 of the columns). The reference packs one panel as wide as N. */
#define BGE_BF16_MAGIC 0x32424742u /* "BGB2" in memory order */
#define BGE_BF16_HEADER_BYTES 64
typedef struct bge_bf16_header {
    uint32_t magic;       /* BGE_BF16_MAGIC                                             */
    int32_t nr;           /* columns per panel: names the layout                       */
    int32_t K, N;         /* the weight's shape (N, K)                                 */
    int32_t Kp, Np;       /* K up to even; N up to a multiple of nr                    */
    int32_t reserved[10];
} bge_bf16_header;
_Static_assert(sizeof(bge_bf16_header) == BGE_BF16_HEADER_BYTES, "the header is 64 bytes");

size_t bge_bf16_panels_size(int K, int N, int nr);       /* header + panels, bytes; 0: bad */
void bge_bf16_header_init(void *packed, int K, int N, int nr); /* writes the 64 bytes   */
int bge_bf16_pack_panels(const float *w, int K, int N, int nr, void *packed);
/* BGE_OK; BGE_ERR_PACKING when `packed` is not a bf16 packing of panel width nr (nr = 0:
 * any width, returned in *nr_out); BGE_ERR_ARG when its K, N differ. */
int bge_bf16_check_header(const void *packed, int nr, int K, int N, int *nr_out);

size_t bge_bf16_packed_size__ref(int K, int N);
int bge_bf16_pack__ref(const float *w, int K, int N, void *packed);
size_t bge_bf16_gemm_scratch__ref(int M, int K);
int bge_bf16_gemm__ref(const float *x, int M, int K, int N, const void *packed,
                       const float *bias, const float *res, float *out, int epilogue,
                       void *scratch, size_t scratch_bytes, int nthreads);
double bge_bf16_dot_loop__ref(long iters);

/* One SIMD bf16 GEMM for the shared driver (bge_bf16_gemm_run):
 *   xelt: bytes per converted activation (2: bf16; 4: an fp32 holding the bf16's value);
 *   convert(x, K, xc): one row x (K) fp32 -> xc (Kp) elements, bf16(x[k]) for k < K and
 *     0 at k = K when K is odd;
 *   tile(xc, ldx, Kp, panel, mr, nw, tile, pf, pf_bytes): tile[i*nr + j] = the sum of the
 *     scheme for row i (xc + i*ldx elements) and column j of the panel, i < mr, j < nw
 *     (entries past nw may be written too; tile 64-byte aligned, mr x nr floats); when pf
 *     is not NULL it also prefetches the bytes [pf, pf + pf_bytes) into L2 on its way;
 *   epilogue: as bge_f32_gemm_impl's;
 *   pass (optional; tile and epilogue are then unused): one panel for a run of rows, tiles
 *     and epilogues whole (bge_bf16_pass), for a level that prepares each panel once for
 *     all of the rows' tiles. */
typedef struct bge_bf16_pass {
    const void *xc;          /* the converted rows m0 .. m0 + rows - 1, ldx elements apart */
    size_t ldx;
    int Kp, rows, nw;        /* nw: the panel's columns n0 .. n0 + nw - 1 that exist       */
    const void *panel;       /* the packed panel (Kp / 2 pair rows of nr words)            */
    const void *next;        /* the panel this thread reads next (to prefetch), or NULL    */
    const float *bias, *res; /* bias at n0; res at (m0, n0) or NULL (BGE_EPI_BIAS_RESIDUAL) */
    float *out;              /* at (m0, n0); res and out rows ldo floats apart             */
    size_t ldo;
    int epilogue;
} bge_bf16_pass;

typedef struct bge_bf16_gemm_impl {
    int mr, nr, xelt;
    void (*convert)(const float *x, int K, void *xc);
    void (*tile)(const void *xc, size_t ldx, int Kp, const void *panel, int mr, int nw,
                 float *tile, const char *pf, int pf_bytes);
    void (*epilogue)(const float *tile, int mr, int nw, const float *bias, const float *res,
                     float *out, size_t ldo, int epilogue);
    void (*pass)(const bge_bf16_pass *pass);
    /* Optional (NULL: nothing): called by each thread before and after each block of tiles
     * or passes it runs (AMX: load the tile configuration, release the tiles). */
    void (*begin)(void);
    void (*end)(void);
} bge_bf16_gemm_impl;

/* Scratch bytes of the impl for M rows of K. */
size_t bge_bf16_gemm_scratch(const bge_bf16_gemm_impl *impl, int M, int K);

/* Checks the arguments, the header and the scratch, converts x row by row into the
 * scratch, then runs the tiles as the fp32 driver does (threads split rows and panels,
 * never k). The contract is the bf16_gemm slot's (bge.h). */
int bge_bf16_gemm_run(const bge_bf16_gemm_impl *impl, const float *x, int M, int K, int N,
                      const void *packed, const float *bias, const float *res, float *out,
                      int epilogue, void *scratch, size_t scratch_bytes, int nthreads);
/* A SIMD level's bf16_packed_size, bf16_gemm_scratch and bf16_gemm slots
 * (bge_bf16_<slot>__<isa>): panels of impl.nr columns (bge_bf16_panels_size) and the shared
 * driver on its tiles. bf16_pack is the level's own. */
#define BGE_BF16_GEMM_SLOTS(isa, impl)                                                      \
    static size_t bge_bf16_packed_size__##isa(int K, int N) {                               \
        return bge_bf16_panels_size(K, N, (impl).nr);                                       \
    }                                                                                       \
    static size_t bge_bf16_gemm_scratch__##isa(int M, int K) {                              \
        return bge_bf16_gemm_scratch(&(impl), M, K);                                        \
    }                                                                                       \
    static int bge_bf16_gemm__##isa(const float *x, int M, int K, int N, const void *packed,\
                                    const float *bias, const float *res, float *out,        \
                                    int epilogue, void *scratch, size_t scratch_bytes,      \
                                    int nthreads) {                                         \
        return bge_bf16_gemm_run(&(impl), x, M, K, N, packed, bias, res, out, epilogue,    \
                                 scratch, scratch_bytes, nthreads);                         \
    }

/* Overlays, one per level (BGE_LEVELS): bge_overlay_<name> puts the kernels of its folder
 * into their slots of a table that holds the levels below (the reference has none). */
#define BGE_OVERLAY_DECL_(id, name) void bge_overlay_##name(bge_kernels *t);
BGE_LEVELS(BGE_OVERLAY_DECL_)
#undef BGE_OVERLAY_DECL_

/* x86/amx: asks the OS for the tile data state (Linux: arch_prctl); 1 when granted. AMX
 * instructions fault until it is. */
int bge_amx_request(void);

#endif /* BGE_INTERNAL_H */
