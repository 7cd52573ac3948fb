/*
 * x86/avxvnni/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with AVX2 + FMA + AVX-VNNI flags. The table it
 * overlays already holds the kernels of the avx2 level.
 */
#include "avxvnni.h"

void bge_overlay_avxvnni(bge_kernels *t) { bge_overlay_avxvnni_qgemm(t); }
