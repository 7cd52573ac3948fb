/*
 * x86/amx/qgemm.c: the int8 GEMM on AMX tiles (tdpbusd: u8 x s8 -> int32), with the fp32
 * step of the scheme in AVX-512, and the tdpbusd peak loop.
 *
 *   out (M, N) = epi(sum_g (q - zp) @ w_s8^T * scale w_scale + bias), per group g of 64 k,
 *   the scheme of bge.h and ref/qgemm.c, bit-identical to the reference except GELU (the
 *   AVX-512 vector GELU, 1.5e-7 |v|, the same bits as the vnni level).
 *
 * Design
 *   - Packing: the bytes of the vnni level's layout (48-column panels, k-quads; csrc/pack.c)
 *     under its own id (BGE_Q8_LAYOUT_AMX). One group of 64 k of a panel is 16 k-quads x
 *     192 bytes; its 16 columns 16j .. 16j+15 are the 64-byte pieces at offset 64 j of
 *     each quad, which is an AMX B tile (16 rows of 4 k x 16 columns) read with a 192-byte
 *     stride.
 *   - One tdpbusd multiplies a 16 x 64 u8 tile of q (16 rows, the 64 k of one group: the
 *     row stride is Kp) by a B tile into 16 x 16 int32 sums: exactly the acc_g of the
 *     scheme for 16 rows and 16 columns. Tile MR x NR = 16 x 48: tiles 0-2 hold the sums
 *     of the panel's three 16-column blocks, tile 3 the q rows, tiles 4-6 the weights.
 *   - Per group the sums go to an L1 buffer (tilestored), then AVX-512 does the rest of the
 *     scheme per 16 lanes: vpdpwssd adds -zp colsum (as in the vnni level), then convert,
 *     scale by (scale * w_scale) and add into the fp32 sums of the tile (in the L1 buffer
 *     ftile, 16 x 48 floats), groups in ascending order. The tile work of group g + 1 is
 *     issued before the vector step of group g, into the other of two sum buffers.
 *   - What bounds it: the groups of 64 k. Every tdpbusd (16 x 16 x 64, 16 cycles) leaves
 *     256 int32 sums that need their own fp32 step, 5 vector ops per 16 (the rounding steps
 *     are fixed by bge.h), and a trip through memory. The tile work and the vector step
 *     take about as long each and do not overlap, here or in any arrangement tried
 *     (double-buffered tiles with the fp32 sums in registers, a deeper sum buffer, the
 *     next columns' tile work under these columns' vector step, prefetching the next
 *     group's weights). So this kernel runs far below the tdpbusd peak, yet faster than
 *     the avx512vnni level, end to end too, with the same bits (docs/performance.md). The
 *     raw int32 kernel (qu8s8_gemm_i32) has no fp32 step.
 *   - Tails: a tile of mr < 16 rows copies its q rows of each group into a 16-row buffer
 *     (the extra rows' sums are never read); a last panel runs only its nv < 3 blocks; a
 *     last group of fewer than 64 k (K % 64 != 0, never in the model) is summed with
 *     vpdpbusd instead. Stores are masked: nothing outside out (M, N) is touched.
 *   - Tile state: each thread loads the tile configuration when it starts a block of work
 *     (bge_q8_gemm_impl.begin) and releases the tiles after it (end), so a thread never
 *     runs on a configuration another library left, and holds no tile state between calls.
 *     Linux lets a process use AMX only after asking (arch_prctl ARCH_REQ_XCOMP_PERM):
 *     bge_amx_request, which dispatch.c calls before it offers this level.
 */
#include <immintrin.h>
#include <string.h>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "amx.h"

#include "../avx512/epilogue48.h" /* bge_avx512_epilogue_48: bias, GELU, residual */

#define MR 16        /* rows of q per tile: the rows of an AMX tile           */
#define NV 3         /* 16-column blocks per panel                            */
#define NR (16 * NV) /* panel width in columns: the vnni layout's             */
#define GB 64        /* bytes of one group of q: BGE_Q8_GROUP                 */
#define QUAD_BYTES (4 * NR) /* one k-quad of a panel: the B tiles' row stride  */

#define SUFFIX "_16x48__amx" /* MR x NR */
_Static_assert(BGE_Q8_GROUP == GB, "one tdpbusd covers one quantisation group");
_Static_assert(MR * NR <= 16 * 64, "the driver's tile buffers hold MR x NR");
_Static_assert(NR == BGE_EPI48_NR, "the shared epilogue reads tiles 48 wide");

/* ---------------------------------------------------------------------------------------
 * Permission (Linux: the kernel enables the 8 KB of tile data state per process on
 * request; without it the first tile instruction faults)
 * ------------------------------------------------------------------------------------- */

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int bge_amx_request(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0; /* no known way to ask: the level stays off */
#endif
}

/* ---------------------------------------------------------------------------------------
 * Sums of one group
 * ------------------------------------------------------------------------------------- */

/* The q rows of group bytes [k0, k0 + 64) as an A tile: straight from q when the tile has
 * all 16 rows, else from `pad` (16 x 64, rows >= mr left as they are). */
static inline const uint8_t *a_rows(const uint8_t *q, size_t ldq, int k0, int mr,
                                    uint8_t *pad) {
    if (mr == MR) return q + k0;
    for (int i = 0; i < mr; i++) memcpy(pad + i * GB, q + (size_t)i * ldq + k0, GB);
    return pad;
}

/* Tiles 0 .. nv-1 += the int32 sums of one group of 64 k for the 16 tile rows (rows >= mr
 * meaningless): `a` the group's q rows (lda bytes apart), `b` the panel at the group's first
 * quad. The grouped kernel zeroes the tiles before each group and stores them after it; the
 * raw kernel keeps its sums in them across groups and stores once. */
#define GROUP_TDP(nv, a, lda, b) BGE_AMX_TDP3(_tile_dpbusd, nv, a, lda, b, QUAD_BYTES)
#define TILES_STORE(nv, s) BGE_AMX_TILES_STORE(nv, s, NR * 4)

/* A short last group (kb < 64 bytes, a multiple of 4) by vpdpbusd: S[i][16j ..] (+)= sums
 * over its quads for i < mr, j < nv. `add` keeps what S holds (the raw kernel). */
static void short_group(const uint8_t *q, size_t ldq, int k0, int kb, const int8_t *b,
                        int mr, int nv, int32_t *S, int add) {
    for (int i = 0; i < mr; i++) {
        __m512i acc[NV];
        for (int j = 0; j < nv; j++)
            acc[j] = add ? _mm512_load_si512((const void *)(S + i * NR + 16 * j))
                         : _mm512_setzero_si512();
        for (int k = 0; k < kb; k += 4) {
            int32_t a4;
            memcpy(&a4, q + (size_t)i * ldq + k0 + k, 4);
            const __m512i a = _mm512_set1_epi32(a4);
            const int8_t *bq = b + (k / 4) * QUAD_BYTES;
            for (int j = 0; j < nv; j++)
                acc[j] = _mm512_dpbusd_epi32(acc[j], a,
                                             _mm512_loadu_si512((const void *)(bq + 64 * j)));
        }
        for (int j = 0; j < nv; j++) _mm512_store_si512((void *)(S + i * NR + 16 * j), acc[j]);
    }
}

/* ---------------------------------------------------------------------------------------
 * The raw kernel (qu8s8_gemm_i32): tile[i][j] = sum over every k, i < mr, j < nw
 * ------------------------------------------------------------------------------------- */

static void tile_amx(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                     int32_t *tile) {
    const int8_t *w = (const int8_t *)panel;
    const int nv = (nw + 15) / 16, full = Kp / GB, kb = Kp - full * GB;
    uint8_t pad[MR * GB] __attribute__((aligned(64)));
    if (mr < MR) memset(pad, 0, sizeof pad);
    BGE_AMX_TILES_ZERO(NV);
    for (int g = 0; g < full; g++) {
        const uint8_t *a = a_rows(q, ldq, g * GB, mr, pad);
        const size_t lda = mr == MR ? ldq : GB;
        const int8_t *b = w + (size_t)g * (GB / 4) * QUAD_BYTES;
        if (nv == 3)
            GROUP_TDP(3, a, lda, b);
        else if (nv == 2)
            GROUP_TDP(2, a, lda, b);
        else
            GROUP_TDP(1, a, lda, b);
    }
    TILES_STORE(NV, tile);
    if (kb) short_group(q, ldq, full * GB, kb, w + (size_t)full * (GB / 4) * QUAD_BYTES, mr,
                        nv, tile, 1);
}

/* ---------------------------------------------------------------------------------------
 * The grouped kernel (qu8s8_gemm): ftile[i][j] = the fp32 sum over groups of the scheme,
 * before the bias, i < mr, j < nw
 * ------------------------------------------------------------------------------------- */

/* The fp32 step of group g: F[i][16j ..] = F + (float)(S - zp_i colsum) * (scale_i ws),
 * for i < mr, j < nv (the vnni level's ops, in its order). */
static inline __attribute__((always_inline)) void group_step(const int32_t *S, float *F,
                                                             int g, int mr, const int nv,
                                                             const float *scale,
                                                             const int32_t *zp, int ngroups,
                                                             const float *ws,
                                                             const int32_t *cs, int gs) {
    __m512 wsv[NV];
    __m512i csv[NV];
#pragma GCC unroll 3
    for (int j = 0; j < nv; j++) {
        wsv[j] = _mm512_loadu_ps(ws + (size_t)g * gs + 16 * j);
        csv[j] = _mm512_loadu_si512((const void *)(cs + (size_t)g * gs + 16 * j));
    }
    for (int i = 0; i < mr; i++) {
        const __m512i nzp = _mm512_set1_epi32((int32_t)(uint16_t)(-zp[(size_t)i * ngroups + g]));
        const __m512 sv = _mm512_set1_ps(scale[(size_t)i * ngroups + g]);
#pragma GCC unroll 3
        for (int j = 0; j < nv; j++) {
            const __m512i acc = _mm512_load_si512((const void *)(S + i * NR + 16 * j));
            const __m512i d = _mm512_dpwssd_epi32(acc, nzp, csv[j]);
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sv, wsv[j]));
            float *f = F + i * NR + 16 * j;
            _mm512_store_ps(f, _mm512_add_ps(_mm512_load_ps(f), v));
        }
    }
}

static inline __attribute__((always_inline)) void gkernel(const uint8_t *q, size_t ldq, int Kp,
                                                          const int8_t *w, int mr,
                                                          const float *scale,
                                                          const int32_t *zp, int ngroups,
                                                          const float *ws, const int32_t *cs,
                                                          int gs, float *F, const int nv) {
    int32_t S[2][MR * NR] __attribute__((aligned(64)));
    uint8_t pad[MR * GB] __attribute__((aligned(64)));
    if (mr < MR) memset(pad, 0, sizeof pad);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nv; j++) _mm512_store_ps(F + i * NR + 16 * j, _mm512_setzero_ps());
    const int full = Kp / GB, kb = Kp - full * GB;
    const size_t lda = mr == MR ? ldq : GB;
    for (int g = 0; g < full; g++) {
        /* group g's tile work is issued before group g - 1's vector step (they still do
         * not overlap: see the top of the file) */
        BGE_AMX_TILES_ZERO(nv);
        GROUP_TDP(nv, a_rows(q, ldq, g * GB, mr, pad), lda,
                  w + (size_t)g * (GB / 4) * QUAD_BYTES);
        if (g > 0)
            group_step(S[(g - 1) & 1], F, g - 1, mr, nv, scale, zp, ngroups, ws, cs, gs);
        TILES_STORE(nv, S[g & 1]);
    }
    if (full > 0)
        group_step(S[(full - 1) & 1], F, full - 1, mr, nv, scale, zp, ngroups, ws, cs, gs);
    if (kb) {
        short_group(q, ldq, full * GB, kb, w + (size_t)full * (GB / 4) * QUAD_BYTES, mr, nv,
                    S[0], 0);
        group_step(S[0], F, full, mr, nv, scale, zp, ngroups, ws, cs, gs);
    }
}

static void gtile_amx(const uint8_t *q, size_t ldq, int Kp, const void *panel, int mr, int nw,
                      const float *scale, const int32_t *zp, int ngroups, const float *wscale,
                      const int32_t *colsum, int gs, float *ftile) {
    const int8_t *w = (const int8_t *)panel;
    switch ((nw + 15) / 16) {
    case 3: gkernel(q, ldq, Kp, w, mr, scale, zp, ngroups, wscale, colsum, gs, ftile, 3); break;
    case 2: gkernel(q, ldq, Kp, w, mr, scale, zp, ngroups, wscale, colsum, gs, ftile, 2); break;
    default: gkernel(q, ldq, Kp, w, mr, scale, zp, ngroups, wscale, colsum, gs, ftile, 1); break;
    }
}

/* ---------------------------------------------------------------------------------------
 * Packing: the bytes of the vnni level's layout under this level's own layout id
 * ------------------------------------------------------------------------------------- */

/* Bytes of w_s8 (N, K) packed: header, scales and sums of ceil(N/48)*48 columns per group,
 * then ceil(N/48) panels of Kp x 48 bytes. */
static size_t bge_qs8_packed_size__amx(int K, int N) { return bge_q8_panels_size(K, N, NR, 4); }

/* The layout of csrc/pack.c with nr = 48, kgroup = 4, s8, byte for byte the vnni level's
 * (panel p, k-quad g, column j, byte r at weights[((p * Kp/4 + g) * 48 + j) * 4 + r] =
 * w_s8[48p + j, 4g + r]), under the id BGE_Q8_LAYOUT_AMX: like every level, this one runs
 * only what its own qs8_pack wrote, and it needs no other folder's code. */
static int bge_qs8_pack__amx(const int8_t *w, const float *w_scale, int K, int N, void *packed) {
    return bge_q8_pack_panels(w, w_scale, K, N, packed, BGE_Q8_LAYOUT_AMX, NR, 4);
}

static const bge_q8_gemm_impl impl = {
    .layout = BGE_Q8_LAYOUT_AMX, .mr = MR, .nr = NR, .kgroup = 4,
    .tile = tile_amx, .gtile = gtile_amx, .epilogue = bge_avx512_epilogue_48,
    .begin = bge_amx_begin, .end = bge_amx_end,
};

/* qu8s8_gemm: out (M, N) = epi(...) from q (M, Kp), scale, zp (M, ngroups) and W packed by
 * bge_qs8_pack__amx (bias (N); res (M, N) may equal out); qu8s8_gemm_i32: the raw sums. */
BGE_Q8_GEMM_SLOTS(amx, impl)

/* ---------------------------------------------------------------------------------------
 * tdpbusd peak loop
 * ------------------------------------------------------------------------------------- */

/* iters rounds of tdpbusd into 4 sum tiles from one A and one B tile (4 independent
 * chains: the tile unit's latency is covered). Returns 2 ops per product. */
static double bge_qu8s8_dot_loop__amx(long iters) {
    uint8_t a[MR * GB] __attribute__((aligned(64)));
    int8_t b[MR * GB] __attribute__((aligned(64)));
    int32_t c[MR * 16] __attribute__((aligned(64)));
    volatile int seed = 1;
    for (int i = 0; i < MR * GB; i++) {
        a[i] = (uint8_t)(i * 7 * seed);
        b[i] = (int8_t)(i * 13 * seed);
    }
    BGE_AMX_PEAK_LOOP(_tile_dpbusd, a, b, c, iters);
    seed = c[0];
    return 2.0 * 4.0 * MR * 16 * GB * (double)iters;
}

void bge_overlay_amx_qgemm(bge_kernels *t) {
    /* qu8_quantize stays the level below's (every level writes the same bytes) */
    BGE_SET_Q8_GEMM(t, amx, SUFFIX);
}
