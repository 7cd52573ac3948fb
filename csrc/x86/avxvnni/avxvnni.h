/* x86/avxvnni/avxvnni.h: the parts of the AVX-VNNI folder, each filling its own slots. */
#ifndef BGE_X86_AVXVNNI_H
#define BGE_X86_AVXVNNI_H

#include "../../bge_internal.h"

/* qs8_packed_size, qs8_pack, qu8s8_gemm, qu8s8_gemm_i32, qu8s8_dot_loop (the quantiser
 * stays the AVX2 one of the table below) */
void bge_overlay_avxvnni_qgemm(bge_kernels *t);

#endif
