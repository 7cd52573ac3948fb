/* qgemm_probe.c: runs csrc/x86/amx/qgemm.c's tiles (the code the extension's amx level
 * runs) over a whole GEMM, in the order the shared driver uses for one thread: row tiles of
 * MR = 16, panels of NR = 48 columns, bge_amx_begin / bge_amx_end around each tile.
 *
 * probe_entry(a), a[0] the operation:
 *   OP_I32:  a[1] q (M x ldq u8), a[2] M, a[3] ldq, a[4] packed (a vnni/amx int8 packing,
 *            header first), a[5] acc (M x N int32): acc = the tile_amx sums.
 *   OP_GEMM: a[1] q, a[2] M, a[3] ldq, a[4] packed, a[5] scale (M x ngroups), a[6] zp
 *            (M x ngroups int32), a[7] bias (N), a[8] res (M x N or 0), a[9] out (M x N),
 *            a[10] epilogue (BGE_EPI_*): out = gtile_amx then the shared epilogue.
 * K, N, Kp, Np and ngroups come from the packing's header. */
#include "x86/amx/qgemm.c"

#include "rt.h"

enum { OP_I32 = 1, OP_GEMM = 2 };

static int32_t itile[MR * NR] __attribute__((aligned(64)));
static float ftile[MR * NR] __attribute__((aligned(64)));

void probe_entry(const uint64_t *a) {
    const uint8_t *q = (const uint8_t *)a[1];
    const int M = (int)a[2];
    const size_t ldq = (size_t)a[3];
    const void *packed = (const void *)a[4];
    const bge_q8_header *h = (const bge_q8_header *)packed;
    const int N = h->N, Kp = h->Kp, ng = h->ngroups;
    const int8_t *w = (const int8_t *)packed + bge_q8_weights_offset(h->Np, ng);
    for (int m0 = 0; m0 < M; m0 += MR) {
        const int mr = M - m0 < MR ? M - m0 : MR;
        for (int n0 = 0; n0 < N; n0 += NR) {
            const int nw = N - n0 < NR ? N - n0 : NR, p = n0 / NR;
            const int8_t *panel = w + (size_t)p * Kp * NR;
            bge_amx_begin();
            if (a[0] == OP_I32) {
                int32_t *acc = (int32_t *)a[5];
                tile_amx(q + m0 * ldq, ldq, Kp, panel, mr, nw, itile);
                for (int i = 0; i < mr; i++)
                    for (int j = 0; j < nw; j++)
                        acc[(size_t)(m0 + i) * N + n0 + j] = itile[i * NR + j];
            } else {
                const float *scale = (const float *)a[5], *bias = (const float *)a[7];
                const int32_t *zp = (const int32_t *)a[6];
                const float *res = (const float *)a[8];
                float *out = (float *)a[9];
                const size_t s0 = (size_t)p * ng * NR; /* bge_q8_scale_index(n0, 0, NR, ng) */
                gtile_amx(q + m0 * ldq, ldq, Kp, panel, mr, nw, scale + (size_t)m0 * ng,
                          zp + (size_t)m0 * ng, ng, bge_q8_wscale(packed) + s0,
                          bge_q8_colsum(packed) + s0, NR, ftile);
                const size_t o = (size_t)m0 * N + n0;
                bge_avx512_epilogue_48(ftile, mr, nw, bias + n0, res ? res + o : NULL, out + o,
                                       (size_t)N, (int)a[10]);
            }
            bge_amx_end();
        }
    }
}
