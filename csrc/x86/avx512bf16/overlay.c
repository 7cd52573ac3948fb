/*
 * x86/avx512bf16/overlay.c: puts this folder's kernels into a kernel table (see
 * dispatch.c). Compiled, like every file of this folder, with AVX-512 F/BW/DQ/VL + BF16
 * flags. The table it overlays already holds the levels below (vnni, avx512, avx2): this
 * level replaces only the bf16 GEMM.
 */
#include "avx512bf16.h"

void bge_overlay_avx512bf16(bge_kernels *t) { bge_overlay_avx512bf16_bgemm(t); }
