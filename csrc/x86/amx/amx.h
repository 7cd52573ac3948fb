/* x86/amx/amx.h: the parts of the AMX folder, each filling its own slots. */
#ifndef BGE_X86_AMX_H
#define BGE_X86_AMX_H

#include "../../bge_internal.h"

/* qu8s8_gemm, qu8s8_gemm_i32, qu8s8_dot_loop (the packing and quantiser stay the vnni
 * level's) */
void bge_overlay_amx_qgemm(bge_kernels *t);

#endif
