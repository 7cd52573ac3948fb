/*
 * x86/avx2/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with AVX2 + FMA flags.
 */
#include "avx2.h"

void bge_overlay_avx2(bge_kernels *t) {
    bge_overlay_avx2_gemm(t);
    bge_overlay_avx2_ops(t);
    bge_overlay_avx2_qgemm(t);
    bge_overlay_avx2_bgemm(t);
}
