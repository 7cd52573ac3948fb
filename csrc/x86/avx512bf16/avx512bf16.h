/* x86/avx512bf16/avx512bf16.h: the parts of the AVX-512 BF16 folder. */
#ifndef BGE_X86_AVX512BF16_H
#define BGE_X86_AVX512BF16_H

#include "../../bge_internal.h"

void bge_overlay_avx512bf16_bgemm(bge_kernels *t); /* bf16_pack, bf16_gemm, bf16_dot_loop */

#endif
