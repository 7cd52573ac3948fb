/*
 * x86/amx/bgemm.c: the bf16 GEMM on AMX tiles (tdpbf16ps: pairs of bf16 -> fp32 sums), its
 * packing, the tdpbf16ps peak loop, and the check against the reference that must pass on
 * the running CPU before this level offers the GEMM.
 *
 *   out (M, N) = epi(bf16(x) (M, K) @ bf16(W)^T + bias), the scheme of bge.h within the bound
 *   it states for this level (the SDM's tdpbf16ps sums the even and the odd k of its 32 k in
 *   two chains, the reference and vdpbf16ps in one, odd k first; GELU is the AVX-512 vector
 *   GELU, 1.5e-7 |v|).
 *
 * Design
 *   - Packing: bge_avx512_bf16_pack48's bytes (the avx512 and avx512bf16 levels read the
 *     same): panels of 48 columns, Kp/2 pair rows of 48 words (192 bytes). The 16 pair rows
 *     [16c, 16c + 16) of a panel's columns 16j .. 16j+15 are an AMX B tile as they lie (16
 *     rows of 64 bytes, 192 bytes apart): the weights need no packing of their own.
 *   - x is converted once per call (the shared driver: bge_avx512bf16_convert) into (M, Kp)
 *     bf16 rows; rows m .. m+15 x k [32c, 32c + 32) are an A tile (rows 2 Kp bytes apart).
 *   - Tile MR x NR = 16 x 48, 1 x 3 blocking: tiles 0-2 hold the 16 x 16 fp32 sums of the
 *     panel's three 16-column blocks, tile 3 the x rows, tiles 4-6 the weights; per 32 k one
 *     A and three B loads feed three tdpbf16ps. (2 x 2 blocking needs 32-column panels, so a
 *     second packing and epilogue; 1 x 4 needs nine tiles.) Each output is one chain over all
 *     of K in k order, whatever M, the tile or the thread: batch and thread invariance.
 *   - The level runs whole passes (bge_bf16_pass: one panel for a run of rows) between the
 *     impl's begin and end, which load the folder's one tile configuration and release the
 *     tiles (amx.h), as the int8 kernel does.
 *   - Tails: a last row tile of mr < 16 rows copies its x rows of each chunk into a
 *     zero-filled 16-row tile (nothing past the scratch's rows is read; the extra rows' sums
 *     are never stored to out); when Kp % 32 != 0 the last pairs of x and of the panel are
 *     copied into zero-filled 16-pair tiles (the zero products add +0; never in the model,
 *     whose K are 384 and 1536); a last panel of nw < 48 columns runs only its ceil(nw / 16)
 *     blocks; the shared epilogue's stores are masked to nw.
 *   - Prefetch: the next panel of the pass's thread (the driver's `next`) into L2, a few
 *     lines per 32 k, spread over the pass's row tiles.
 *   - The permission to use tiles (arch_prctl) is asked by dispatch.c before it offers the
 *     level (bge_amx_request, qgemm.c).
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amx.h"

#include "../avx512/bpack48.h"     /* bge_avx512_bf16_pack48: the 48-column panels   */
#include "../avx512/epilogue48.h"  /* bge_avx512_epilogue_48: bias, GELU, residual   */
#include "../avx512bf16/convert.h" /* bge_avx512bf16_convert: x rows to bf16          */

#define MR 16                  /* rows of x per tile: the rows of an AMX tile          */
#define NV 3                   /* 16-column blocks per panel                           */
#define NR (16 * NV)           /* panel width: the 48-column panels                    */
#define KT 32                  /* k per A tile: 16 pairs, a 64-byte row                */
#define PAIR_BYTES (4 * NR)    /* one pair row of a panel: the B tiles' row stride     */
#define CHUNK_BYTES (16 * PAIR_BYTES) /* the panel's 16 pair rows of one A tile's k    */
#define PF_MOST 8              /* next-panel lines prefetched per 32 k at most         */

#define GEMM_NAME "bge_bf16_gemm_16x48__amx" /* MR x NR */
_Static_assert(NR == BGE_EPI48_NR, "the shared epilogue reads tiles 48 wide");

/* Tiles 0 .. nv-1 += the products of one A tile (`a`, rows lda bytes apart) and the B tiles
 * of one chunk of the panel (`b`, at its first pair row). */
#define CHUNK_TDP(nv, a, lda, b) BGE_AMX_TDP3(_tile_dpbf16ps, nv, a, lda, b, PAIR_BYTES)

/* One row tile: ftile[i][16j ..] = the sums of rows i < mr (x, ldx elements apart; rows
 * >= mr of ftile meaningless) for the panel's blocks j < nv. btail: the panel's last Kp % 32
 * pairs in a zero-filled chunk (NULL when Kp % 32 == 0). Prefetches npf lines of
 * [*pf, pf_end) per chunk, advancing *pf. */
static inline __attribute__((always_inline)) void row_tile(const uint16_t *x, size_t ldx,
                                                           int Kp, const char *panel,
                                                           const char *btail, int mr,
                                                           const int nv, float *ftile,
                                                           const char **pf,
                                                           const char *pf_end, int npf) {
    const int full = Kp / KT, rem = Kp - full * KT;
    uint16_t apad[MR * KT] __attribute__((aligned(64))); /* 16 rows x 32 k of x */
    if (mr < MR || rem) memset(apad, 0, sizeof apad);
    BGE_AMX_TILES_ZERO(nv);
    for (int c = 0; c < full; c++) {
        const uint16_t *a = x + (size_t)c * KT;
        size_t lda = ldx * 2;
        if (mr < MR) { /* rows >= mr stay zero */
            for (int i = 0; i < mr; i++) memcpy(apad + i * KT, a + (size_t)i * ldx, KT * 2);
            a = apad;
            lda = KT * 2;
        }
        CHUNK_TDP(nv, a, lda, panel + (size_t)c * CHUNK_BYTES);
        for (int l = 0; l < npf && *pf < pf_end; l++, *pf += 64) _mm_prefetch(*pf, _MM_HINT_T1);
    }
    if (rem) { /* pairs past the last full chunk, the rest of the 16 zero */
        if (mr < MR) memset(apad, 0, sizeof apad);
        for (int i = 0; i < mr; i++)
            memcpy(apad + i * KT, x + (size_t)i * ldx + (size_t)full * KT, (size_t)rem * 2);
        CHUNK_TDP(nv, apad, KT * 2, btail);
    }
    BGE_AMX_TILES_STORE(nv, ftile, NR * 4);
}

static inline __attribute__((always_inline)) void pass_nv(const bge_bf16_pass *ps,
                                                          const int nv) {
    const uint16_t *x = (const uint16_t *)ps->xc;
    const char *panel = (const char *)ps->panel;
    const int Kp = ps->Kp, full = Kp / KT, rem = Kp - full * KT;
    uint8_t btail[CHUNK_BYTES] __attribute__((aligned(64)));
    if (rem) {
        memset(btail, 0, sizeof btail);
        memcpy(btail, panel + (size_t)full * CHUNK_BYTES, (size_t)(rem / 2) * PAIR_BYTES);
    }
    /* the next panel's lines, spread over every chunk of every row tile of the pass */
    const char *pf = (const char *)ps->next, *pf_end = NULL;
    int npf = 0;
    if (pf) {
        const long lines = (long)(Kp / 2) * PAIR_BYTES / 64;
        const long chunks = (long)((ps->rows + MR - 1) / MR) * (full > 0 ? full : 1);
        npf = (int)((lines + chunks - 1) / chunks);
        if (npf > PF_MOST) npf = PF_MOST;
        pf_end = pf + lines * 64;
    }
    float ftile[MR * NR] __attribute__((aligned(64)));
    const char *tail = rem ? (const char *)btail : NULL;
    for (int m0 = 0; m0 < ps->rows; m0 += MR) {
        const int mr = ps->rows - m0 < MR ? ps->rows - m0 : MR;
        const size_t o = (size_t)m0 * ps->ldo;
        row_tile(x + (size_t)m0 * ps->ldx, ps->ldx, Kp, panel, tail, mr, nv, ftile, &pf,
                 pf_end, npf);
        bge_avx512_epilogue_48(ftile, mr, ps->nw, ps->bias, ps->res ? ps->res + o : NULL,
                               ps->out + o, ps->ldo, ps->epilogue);
    }
}

/* The driver's pass: one panel for rows m0 .. m0 + rows - 1 (bge_internal.h), between
 * bge_amx_begin and bge_amx_end on this thread. */
static void pass_amx(const bge_bf16_pass *ps) {
    switch ((ps->nw + 15) / 16) {
    case 3: pass_nv(ps, 3); break;
    case 2: pass_nv(ps, 2); break;
    default: pass_nv(ps, 1); break;
    }
}

static const bge_bf16_gemm_impl impl = {
    .mr = MR, .nr = NR, .xelt = 2, .convert = bge_avx512bf16_convert, .pass = pass_amx,
    .begin = bge_amx_begin, .end = bge_amx_end,
};

/* bf16_packed_size, bf16_gemm_scratch, bf16_gemm: the shared driver on these passes. */
BGE_BF16_GEMM_SLOTS(amx, impl)

static int bge_bf16_pack__amx(const float *w, int K, int N, void *packed) {
    return bge_avx512_bf16_pack48(w, K, N, packed);
}

/* ---------------------------------------------------------------------------------------
 * tdpbf16ps peak loop
 * ------------------------------------------------------------------------------------- */

/* iters rounds of tdpbf16ps into 4 sum tiles from one A and one B tile (4 independent
 * chains cover the unit's latency); 2 flops per product, 16 x 16 x 32 products each. */
static double bge_bf16_dot_loop__amx(long iters) {
    uint16_t a[MR * KT] __attribute__((aligned(64)));
    uint16_t b[MR * KT] __attribute__((aligned(64)));
    float c[MR * 16] __attribute__((aligned(64)));
    volatile float seed = 1.0f;
    for (int i = 0; i < MR * KT; i++) {
        a[i] = 0x3F00 + (uint16_t)(i & 63) * (uint16_t)seed; /* 0.5 .. ~1: no overflow */
        b[i] = 0x3A80 + (uint16_t)(i & 31) * (uint16_t)seed; /* ~1e-3 */
    }
    BGE_AMX_PEAK_LOOP(_tile_dpbf16ps, a, b, c, iters);
    seed = c[0];
    return 2.0 * 4.0 * MR * 16 * KT * (double)iters;
}

/* ---------------------------------------------------------------------------------------
 * The check on this CPU: tdpbf16ps is run here only where hardware runs it, so the level
 * offers its GEMM only after one GEMM with every tail (rows, k, columns) agrees with the
 * reference within bge.h's bound.
 * ------------------------------------------------------------------------------------- */

#define CHECK_M 19 /* a full row tile and a 3-row one           */
#define CHECK_K 70 /* two chunks of 32 k and a 6-k tail         */
#define CHECK_N 53 /* a full panel and a 5-column one           */

static float bf16_value(float v) {
    uint16_t h;
    bge_bf16_from_f32(&v, 1, &h);
    const uint32_t u = (uint32_t)h << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

/* 1 when bf16_gemm__amx agrees with bf16_gemm__ref on CHECK_M x CHECK_K x CHECK_N: for each
 * output, |amx - ref| <= 1.01 (2 Kp + 2) 2^-24 sum_k |xb wb| + 4 Kp 2^-126 (bge.h). */
static int agrees_with_reference(void) {
    const int M = CHECK_M, K = CHECK_K, N = CHECK_N, Kp = BGE_BF16_KP(K);
    const size_t pa = bge_bf16_packed_size__amx(K, N), pr = bge_bf16_packed_size__ref(K, N);
    const size_t sa = bge_bf16_gemm_scratch__amx(M, K), sr = bge_bf16_gemm_scratch__ref(M, K);
    const size_t floats = (size_t)M * K + (size_t)N * K + N + 2 * (size_t)M * N;
    const size_t bytes = floats * 4 + pa + pr + sa + sr + 5 * 64;
    char *mem = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!mem) return 0;
    float *x = (float *)mem, *w = x + (size_t)M * K, *bias = w + (size_t)N * K;
    float *out = bias + N, *ref = out + (size_t)M * N;
    char *p = mem + (floats * 4 + 63) / 64 * 64;
    void *packed_amx = p, *packed_ref = p += (pa + 63) / 64 * 64;
    void *scratch_amx = p += (pr + 63) / 64 * 64, *scratch_ref = p + (sa + 63) / 64 * 64;
    uint32_t s = 12345u; /* values in [-2, 2), of many magnitudes */
    for (size_t i = 0; i < (size_t)(M + N) * K; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((float)(s >> 8) * 0x1p-22f - 2.0f) * (float)(1 + (i % 7));
    }
    memset(bias, 0, sizeof(float) * N);
    int ok = bge_bf16_pack__amx(w, K, N, packed_amx) == BGE_OK &&
             bge_bf16_pack__ref(w, K, N, packed_ref) == BGE_OK &&
             bge_bf16_gemm__amx(x, M, K, N, packed_amx, bias, NULL, out, BGE_EPI_BIAS,
                                scratch_amx, sa, 1) == BGE_OK &&
             bge_bf16_gemm__ref(x, M, K, N, packed_ref, bias, NULL, ref, BGE_EPI_BIAS,
                                scratch_ref, sr, 1) == BGE_OK;
    for (int m = 0; ok && m < M; m++)
        for (int n = 0; ok && n < N; n++) {
            double a = 0.0;
            for (int k = 0; k < K; k++)
                a += fabs((double)bf16_value(x[(size_t)m * K + k]) *
                          (double)bf16_value(w[(size_t)n * K + k]));
            const double bound = 1.01 * (2.0 * Kp + 2.0) * 0x1p-24 * a + 4.0 * Kp * 0x1p-126;
            const size_t i = (size_t)m * N + n;
            const double d = fabs((double)out[i] - (double)ref[i]);
            ok = d <= bound; /* false for a NaN too */
        }
    free(mem);
    return ok;
}

void bge_overlay_amx_bgemm(bge_kernels *t) {
    if (!agrees_with_reference()) return; /* the level below's bf16 GEMM stays */
    BGE_SET(t, bf16_packed_size, bge_bf16_packed_size__amx);
    BGE_SET_NAMED(t, bf16_pack, bge_bf16_pack__amx, "bge_bf16_pack_48__amx");
    BGE_SET(t, bf16_gemm_scratch, bge_bf16_gemm_scratch__amx);
    BGE_SET_NAMED(t, bf16_gemm, bge_bf16_gemm__amx, GEMM_NAME);
    BGE_SET(t, bf16_dot_loop, bge_bf16_dot_loop__amx);
}
