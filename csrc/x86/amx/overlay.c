/*
 * x86/amx/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with AVX-512 F/BW/DQ/VL + VNNI + BF16 and AMX
 * tile/int8/bf16 flags. The table it overlays already holds the kernels of the levels below
 * (avx2, avx512, vnni, avx512bf16): this level replaces the int8 GEMMs and the bf16 GEMM.
 */
#include "amx.h"

void bge_overlay_amx(bge_kernels *t) {
    bge_overlay_amx_qgemm(t);
    bge_overlay_amx_bgemm(t);
}
