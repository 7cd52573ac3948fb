/*
 * arm/neon/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with -march=armv8-a (NEON is part of AArch64).
 * The int8 GEMM slots stay on the reference at this level (the int8 GEMM needs sdot:
 * dotprod); the int8 quantisers are NEON here and serve every ARM level. The bf16 GEMM is
 * the emulation of bgemm.c (bit for bit the reference), for every ARM level without BF16.
 */
#include "neon.h"

void bge_overlay_neon(bge_kernels *t) {
    bge_overlay_neon_gemm(t);
    bge_overlay_neon_ops(t);
    bge_overlay_neon_quant(t);
    bge_overlay_neon_bgemm(t);
}
