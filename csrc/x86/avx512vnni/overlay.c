/*
 * x86/avx512vnni/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with AVX-512 F/BW/DQ/VL + VNNI + FMA flags. The
 * table it overlays already holds the kernels of the levels below (avx512, avx2).
 */
#include "avx512vnni.h"

void bge_overlay_avx512vnni(bge_kernels *t) { bge_overlay_avx512vnni_qgemm(t); }
