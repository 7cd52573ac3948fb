/*
 * arm/i8mm/qgemm.c: the int8 GEMM of the i8mm level on USMMLA, compiled with
 * -march=armv8.2-a+dotprod+i8mm. The driver glue, the grouped fp32 step, the epilogue and
 * the peak loop are arm/qgemm_dot.h's (its comment holds the shared design); this file
 * brings the microkernel and the packing it reads.
 *
 * USMMLA Vd.4S, Vn.16B, Vm.16B multiplies a 2 x 8 matrix of u8 (Vn: row 0 in bytes 0-7,
 * row 1 in bytes 8-15) by the transpose of a 2 x 8 matrix of s8 (Vm: column 0 in bytes 0-7,
 * column 1 in bytes 8-15) and adds the 2 x 2 int32 result to Vd = [r0c0, r0c1, r1c0, r1c1]:
 * 32 u8 x s8 products per instruction, the scheme's products as they stand (no shift),
 * twice SUDOT's 16.
 *
 * Packing (layout BGE_Q8_LAYOUT_I8MM, nr = 16, header kgroup = 8): panel p covers columns
 * 16p .. 16p+15 and holds Kp x 16 bytes, like every panel layout; inside it, with
 * K8 = Kp rounded down to a multiple of 8:
 *   k-octet o < K8 / 8, column pair c < 8: 16 bytes at (8 o + c) * 16:
 *     bytes 0-7 = w_s8[16p + 2c, 8o .. 8o+7], bytes 8-15 = w_s8[16p + 2c + 1, 8o .. 8o+7];
 *   when Kp - K8 = 4, the last quad at K8 * 16: 64 bytes, column j's 4 weights at 4 j
 *     (the dotprod layout of one quad), multiplied by SUDOT.
 * Zero past N and past K. Each octet occupies the bytes its two quads occupy in the
 * dotprod layout, so the pack writes that layout (bge_q8_pack_panels) and reorders each
 * 128-byte block in place. Groups of 64 k are 8 octets: a group's panel bytes are
 * contiguous, and only the last group can end on a quad.
 *
 * Microkernel MR x NR = 4 x 16: 2 row pairs x 8 column pairs = 16 int32x4 accumulators
 * of 2 x 2 each; per octet 2 q registers (two rows' 8 bytes each, combined), 8 weight
 * loads and 16 USMMLA (512 products). At the end the 2 x 2 blocks are regrouped into
 * rows of 4 columns (a row pair's low halves are its first row). Integer sums are exact:
 * the result is the reference's, bit for bit, and so is everything after it.
 */
#include <arm_neon.h>
#include <string.h>

#include "../../bge_internal.h"

#define BGE_ARM_Q8_USDOT 1 /* the tail quad: SUDOT, u8 x s8 */
#define BGE_ARM_Q8_LAYOUT BGE_Q8_LAYOUT_I8MM
#define BGE_ARM_Q8_ISA "i8mm"
#define BGE_ARM_Q8_MMLA 1
#define BGE_ARM_Q8_KGROUP 8
#define BGE_ARM_Q8_DOT_PRODUCTS 32
#define MR 4        /* rows of q per microkernel tile            */
#define NV 4        /* int32x4 vectors of 4 columns per panel    */
#define NR (4 * NV) /* panel width in columns                    */

/* the peak loop's instruction: USMMLA on a and b as given */
#define DOT_LANE(acc, b, a, lane) vusmmlaq_s32((acc), vreinterpretq_u8_s8(a), (b))

/* tile[i][4c .. 4c+3] = sum_{k < kn} q[i, k] * w[column 4c.., k], i < mr, c < nv, over the
 * kn k (a multiple of 4) of this call; raw is unused (no shift to undo).
 *   q     (mr, kn) u8 rows, row stride ldq bytes; rows >= mr are never read
 *   panel the packed panel from the call's first k on (kn x 16 bytes, layout above)
 *   tile  (MR, NR) int32; rows >= mr and vectors >= nv are not written
 * mr and nv are compile-time constants in every instance. */
static inline __attribute__((always_inline)) void ukernel(const uint8_t *q, size_t ldq, int kn,
                                                          const int8_t *panel, int32_t *tile,
                                                          const int mr, const int nv,
                                                          const int raw) {
    (void)raw;
    const int rp_n = (mr + 1) / 2, cp_n = 2 * nv;
    int32x4_t acc[2][8];
#pragma GCC unroll 2
    for (int rp = 0; rp < rp_n; rp++)
#pragma GCC unroll 8
        for (int cp = 0; cp < cp_n; cp++) acc[rp][cp] = vdupq_n_s32(0);
    const int k8 = kn & ~7;
    const uint8x8_t z8 = vdup_n_u8(0);
    const int8_t *b = panel;
    for (int k = 0; k < k8; k += 8, b += 128) {
        uint8x16_t a[2];
        a[0] = vcombine_u8(vld1_u8(q + k), mr > 1 ? vld1_u8(q + ldq + k) : z8);
        if (mr > 2) a[1] = vcombine_u8(vld1_u8(q + 2 * ldq + k), mr > 3 ? vld1_u8(q + 3 * ldq + k) : z8);
#pragma GCC unroll 8
        for (int cp = 0; cp < cp_n; cp++) {
            const int8x16_t bv = vld1q_s8(b + 16 * cp);
#pragma GCC unroll 2
            for (int rp = 0; rp < rp_n; rp++) acc[rp][cp] = vusmmlaq_s32(acc[rp][cp], a[rp], bv);
        }
    }
    /* regroup: row 2rp + h, columns 4c .. 4c+3 = half h of the blocks (rp, 2c), (rp, 2c+1) */
    int32x4_t row[MR][NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++) {
            const int64x2_t lo = vreinterpretq_s64_s32(acc[i / 2][2 * c]);
            const int64x2_t hi = vreinterpretq_s64_s32(acc[i / 2][2 * c + 1]);
            row[i][c] = vreinterpretq_s32_s64(i % 2 ? vzip2q_s64(lo, hi) : vzip1q_s64(lo, hi));
        }
    if (kn > k8) { /* the last quad: SUDOT by element, each row's 4 bytes in lane 0 */
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            uint32_t w4;
            memcpy(&w4, q + (size_t)i * ldq + k8, 4);
            const uint8x16_t a = vreinterpretq_u8_u32(vdupq_n_u32(w4));
#pragma GCC unroll 4
            for (int c = 0; c < nv; c++)
                row[i][c] = vsudotq_laneq_s32(row[i][c], vld1q_s8(b + 16 * c), a, 0);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++) vst1q_s32(tile + i * NR + 4 * c, row[i][c]);
}

/* Bytes of w_s8 (N, K) packed: as every 16-column panel layout (Kp x 16 bytes a panel). */
static size_t qs8_packed_size_dot(int K, int N) { return bge_q8_panels_size(K, N, NR, 4); }

/* The layout above: the dotprod layout's bytes (bge_q8_pack_panels, kgroup 4), then each
 * octet's 128 bytes reordered from (quad, column, 4 k) to (column pair, column, 8 k), and
 * the header's kgroup set to 8. */
static int qs8_pack_dot(const int8_t *w, const float *w_scale, int K, int N, void *packed) {
    const int st = bge_q8_pack_panels(w, w_scale, K, N, packed, BGE_ARM_Q8_LAYOUT, NR, 4);
    if (st != BGE_OK) return st;
    bge_q8_header *h = (bge_q8_header *)packed;
    const int Kp = h->Kp, Np = h->Np, K8 = Kp & ~7;
    int8_t *wt = (int8_t *)packed + bge_q8_weights_offset(Np, h->ngroups);
    for (int p = 0; p < Np / NR; p++) {
        int8_t *panel = wt + (size_t)p * Kp * NR;
        for (int o = 0; o < K8 / 8; o++) {
            int8_t *blk = panel + (size_t)o * 128, t[128];
            memcpy(t, blk, sizeof t); /* quad 2o: t[4j + r]; quad 2o+1: t[64 + 4j + r] */
            for (int j = 0; j < NR; j++)
                for (int r = 0; r < 8; r++)
                    blk[(j / 2) * 16 + (j % 2) * 8 + r] = t[(r / 4) * 64 + 4 * j + r % 4];
        }
    }
    h->kgroup = BGE_ARM_Q8_KGROUP;
    return BGE_OK;
}

#include "../qgemm_dot.h"

/* The i8mm level: the dotprod table with the int8 GEMM on USMMLA. */
void bge_overlay_i8mm(bge_kernels *t) { overlay_qgemm_dot(t); }
