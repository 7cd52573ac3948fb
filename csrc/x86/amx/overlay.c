/*
 * x86/amx/overlay.c: puts this folder's kernels into a kernel table (see dispatch.c).
 * Compiled, like every file of this folder, with AVX-512 F/BW/DQ/VL + VNNI + AMX tile/int8
 * flags. The table it overlays already holds the kernels of the levels below (vnni, avx512,
 * avx2): this level replaces only the int8 GEMMs.
 */
#include "amx.h"

void bge_overlay_amx(bge_kernels *t) { bge_overlay_amx_qgemm(t); }
