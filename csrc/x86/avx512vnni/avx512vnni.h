/* x86/avx512vnni/avx512vnni.h: the parts of the AVX-512 VNNI folder, each filling its slots. */
#ifndef BGE_X86_AVX512VNNI_H
#define BGE_X86_AVX512VNNI_H

#include "../../bge_internal.h"

/* qu8_quantize, qs8_packed_size, qs8_pack, qu8s8_gemm, qu8s8_gemm_i32, qu8s8_dot_loop */
void bge_overlay_avx512vnni_qgemm(bge_kernels *t);

#endif
