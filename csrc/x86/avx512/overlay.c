/*
 * x86/avx512/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with AVX-512 F/BW/DQ/VL + FMA flags.
 */
#include "avx512.h"

void bge_overlay_avx512(bge_kernels *t) {
    bge_overlay_avx512_gemm(t);
    bge_overlay_avx512_ops(t);
    bge_overlay_avx512_bgemm(t);
}
