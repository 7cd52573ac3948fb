/*
 * x86/avx2/bgemm.c: the bf16 GEMM for AVX2 + FMA: the scheme of bge.h emulated, bf16
 * widened to fp32 and summed with FMA under MXCSR.FTZ, bit for bit the reference
 * (csrc/ref/bgemm.c) except GELU (the AVX2 vector GELU of vmath.h). Why that is exact: the
 * AVX-512 emulation (../avx512/bgemm.c) says.
 *
 * Design
 *   - x is converted once per call into the scratch as fp32 rows holding bf16 values,
 *     (M, Kp) floats, each pair of k stored odd k first: xs[2g] = bf16(x[2g + 1]),
 *     xs[2g + 1] = bf16(x[2g]) (the order of the instruction's two steps).
 *   - Weights: the panels of bge_internal.h with nr = 24 (half the bytes of fp32). A pass
 *     over one panel widens it, KC k at a time, into an fp32 chunk on the stack laid out
 *     as the fp32 AVX2 kernel's panel in the same swapped order: row 2g holds the 24 odd
 *     halves of pair g (word & 0xFFFF0000), row 2g + 1 the even halves (word << 16). The
 *     row tiles of the pass then run the fp32 4 x 24 microkernel on that chunk: 12 ymm sums,
 *     3 loads and 4 broadcasts per k, no shifts in the k loop. Each output's chain is still
 *     acc = fma(x, w, acc) over the odd then the even k of each pair from +0.0f, the
 *     reference's order: between chunks the sums wait in a stack buffer as fp32 (exact).
 *     Widening per tile in its k loop (3 x 24 tiles, the first version) spent 4.5 shifts
 *     per k beside 9 FMAs and had room for only 9 sums.
 *   - Tiles of 4 rows, taken up to 32 at a time (TG): their sums, 12 KB, wait between
 *     chunks; the chunk (KC = 256 k x 24 floats, 24 KB) is widened once for all of them.
 *   - Prefetch: the tiles of a chunk prefetch the next chunk (or the next panel's first),
 *     a share of its lines before each tile.
 *   - Threads and row blocks: the shared driver (gemm_driver.c) hands each thread whole
 *     panels x row tiles; k is never split, so nothing depends on M or the threads.
 */
#include <immintrin.h>

#include "avx2.h"
#include "../microkernel.h" /* BGE_UK_TABLE */

#include "epilogue24.h" /* bge_avx2_epilogue_24 */

#define MR 4
#define NV 3
#define NR (8 * NV)
#define KC 256 /* k per widened chunk (even): KC x NR floats, 24 KB          */
#define TG 32  /* row tiles per group at most: TG x MR x NR sums wait between chunks */
#define CSR_FTZ_DAZ 0x8040u /* MXCSR bits 15 (flush to zero) and 6 (denormals are zero) */

#define GEMM_NAME "bge_bf16_gemm_4x24__avx2" /* MR x NR */
_Static_assert(NR == BGE_EPI24_NR, "the epilogue reads tiles 24 wide");
_Static_assert(KC % 2 == 0, "chunks hold whole pairs of k");

/* bf16(v) on 8 lanes, as bge_bf16_bits, left in the top half of each lane. */
static inline __m256i bf16_round8(__m256i u) {
    const __m256i expo = _mm256_set1_epi32(0x7F800000), sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i absm = _mm256_set1_epi32(0x7FFFFFFF), hi = _mm256_set1_epi32((int)0xFFFF0000u);
    const __m256i den = _mm256_cmpeq_epi32(_mm256_and_si256(u, expo), _mm256_setzero_si256());
    u = _mm256_blendv_epi8(u, _mm256_and_si256(u, sign), den);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), expo); /* both >= 0 */
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd);
    const __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
    return _mm256_and_si256(_mm256_blendv_epi8(r, q, nan), hi);
}

/* x (K) fp32 -> xs (Kp) fp32: xs[k ^ 1] = bf16(x[k]) (each pair swapped), and a zero at
 * K ^ 1 when K is odd (x is 0 at k = K, bge.h). */
static void convert_swapped(const float *x, int K, void *xc) {
    float *o = (float *)xc;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        const __m256i r = bf16_round8(_mm256_loadu_si256((const __m256i *)(x + k)));
        _mm256_storeu_si256((__m256i *)(o + k), _mm256_shuffle_epi32(r, 0xB1)); /* 1 0 3 2 */
    }
    for (; k < K; k++) {
        uint32_t u;
        memcpy(&u, x + k, sizeof u);
        o[k ^ 1] = bge_bf16_to_f32(bge_bf16_bits(u));
    }
    if (K & 1) o[K ^ 1] = 0.0f;
}

/* gn pairs of the packed panel (gn x NR words) -> w (2 gn x NR floats): row 2g the odd
 * halves, row 2g + 1 the even halves. */
static void widen(const uint32_t *src, int gn, float *w) {
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int g = 0; g < gn; g++, src += NR, w += 2 * NR) {
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(src + 8 * j));
            _mm256_store_si256((__m256i *)(w + 8 * j), _mm256_and_si256(v, hi));
            _mm256_store_si256((__m256i *)(w + NR + 8 * j), _mm256_slli_epi32(v, 16));
        }
    }
}

/* One tile over kn k of a chunk: acc[i][8j ..] (+)= sum_k x[i, k] * w[k, 8j ..], i < mr,
 * j < nv.
 *   x    (mr, kn) swapped converted rows, ldx floats apart
 *   w    (kn, NR) the widened chunk, 32-byte aligned
 *   sums (MR, NR) floats, 32-byte aligned: read first unless `first`, written at the end */
static inline __attribute__((always_inline)) void ukernel(const float *x, size_t ldx, int kn,
                                                          const float *w, float *sums,
                                                          const int mr, const int nv,
                                                          const int first) {
    __m256 acc[MR][NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++)
            acc[i][j] = first ? _mm256_setzero_ps() : _mm256_load_ps(sums + i * NR + 8 * j);
    const float *b = w;
    for (int k = 0; k < kn; k++, b += NR) {
        __m256 bv[NV];
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) bv[j] = _mm256_load_ps(b + 8 * j);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256 a = _mm256_broadcast_ss(x + (size_t)i * ldx + k);
#pragma GCC unroll 3
            for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(a, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) _mm256_store_ps(sums + i * NR + 8 * j, acc[i][j]);
}

typedef void (*uk_fn)(const float *x, size_t ldx, int kn, const float *w, float *sums,
                      int first);

/* noinline: the k loop stays inside one call, between pass_avx2's MXCSR writes */
#define UK(mr, nv)                                                                          \
    static __attribute__((noinline)) void uk_##mr##_##nv(const float *x, size_t ldx, int kn,\
                                                         const float *w, float *sums,       \
                                                         int first) {                       \
        if (first)                                                                          \
            ukernel(x, ldx, kn, w, sums, mr, nv, 1);                                        \
        else                                                                                \
            ukernel(x, ldx, kn, w, sums, mr, nv, 0);                                        \
    }
BGE_UK_TABLE(uk_fn, uk_table, uk, UK, MR) /* uk_table[mr - 1][nv - 1] */

/* The driver's pass (bge_bf16_pass): rows of one panel, in groups of at most TG row tiles
 * (as many groups as that needs, of even sizes: each group widens the panel again); per
 * group, chunk by chunk: widen, then every tile of the group; then the epilogues. */
static void pass_avx2(const bge_bf16_pass *ps) {
    float w[KC * NR] __attribute__((aligned(64)));
    float sums[TG * MR * NR] __attribute__((aligned(64)));
    const float *xs = (const float *)ps->xc;
    const uint32_t *panel = (const uint32_t *)ps->panel;
    const int G = ps->Kp / 2, gc = KC / 2, nv = (ps->nw + 7) / 8;
    const int tiles = (ps->rows + MR - 1) / MR;
    const int tg = (tiles + (tiles + TG - 1) / TG - 1) / ((tiles + TG - 1) / TG); /* even */
    for (int t0 = 0; t0 < tiles; t0 += tg) {
        const int tn = tiles - t0 < tg ? tiles - t0 : tg;
        const unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | CSR_FTZ_DAZ);
        for (int g0 = 0; g0 < G; g0 += gc) {
            const int gn = G - g0 < gc ? G - g0 : gc;
            /* read next: this panel's next chunk, else the first chunk of the next group
             * (this panel again) or of the next panel; its lines are prefetched a share
             * before each tile, so that they come in while the tiles compute (prefetched
             * all at once, they stalled the widening on full miss buffers) */
            const int last = g0 + gc >= G;
            const char *pf = !last ? (const char *)(panel + (size_t)(g0 + gc) * NR)
                             : t0 + tg < tiles ? (const char *)panel
                                               : (const char *)ps->next;
            const int pfp = !last ? (G - g0 - gc < gc ? G - g0 - gc : gc) : (G < gc ? G : gc);
            const uintptr_t pf0 = (uintptr_t)pf & ~(uintptr_t)63;
            const int lines = pf ? (int)(((uintptr_t)pf + (size_t)pfp * NR * 4 - pf0 + 63) / 64)
                                 : 0;
            widen(panel + (size_t)g0 * NR, gn, w);
            for (int t = 0; t < tn; t++) {
                const int m0 = (t0 + t) * MR, mr = ps->rows - m0 < MR ? ps->rows - m0 : MR;
                for (int l = t * lines / tn; l < (t + 1) * lines / tn; l++)
                    _mm_prefetch((const char *)(pf0 + (uintptr_t)l * 64), _MM_HINT_T1);
                if (last) /* the last chunk: the output block comes in meanwhile */
                    bge_prefetch_block(ps->out + (size_t)m0 * ps->ldo, mr,
                                       ps->ldo * sizeof(float), ps->nw * (int)sizeof(float));
                uk_table[mr - 1][nv - 1](xs + (size_t)m0 * ps->ldx + 2 * g0, ps->ldx, 2 * gn,
                                         w, sums + t * MR * NR, g0 == 0);
            }
        }
        _mm_setcsr(csr);
        for (int t = 0; t < tn; t++) {
            const int m0 = (t0 + t) * MR, mr = ps->rows - m0 < MR ? ps->rows - m0 : MR;
            const size_t o = (size_t)m0 * ps->ldo;
            bge_avx2_epilogue_24(sums + t * MR * NR, mr, ps->nw, ps->bias,
                                 ps->res ? ps->res + o : NULL, ps->out + o, ps->ldo,
                                 ps->epilogue);
        }
    }
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 4, .convert = convert_swapped, .pass = pass_avx2,
};

/* bf16_packed_size, bf16_gemm_scratch, bf16_gemm: the shared driver on these passes. */
BGE_BF16_GEMM_SLOTS(avx2, impl)

static int bge_bf16_pack__avx2(const float *w, int K, int N, void *packed) {
    return bge_bf16_pack_panels(w, K, N, NR, packed);
}

void bge_overlay_avx2_bgemm(bge_kernels *t) {
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__avx2);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__avx2, "bge_bf16_pack_24__avx2");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__avx2);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__avx2, GEMM_NAME);
    /* bf16_dot_loop stays the reference's: this level's step is one FMA per product, so
     * its peak is f32_fma_loop's */
}
