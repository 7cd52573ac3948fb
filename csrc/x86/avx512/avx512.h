/* x86/avx512/avx512.h: the parts of the AVX-512 folder, each filling its own slots. */
#ifndef BGE_X86_AVX512_H
#define BGE_X86_AVX512_H

#include "../../bge_internal.h"

void bge_overlay_avx512_gemm(bge_kernels *t); /* f32_packed_size, f32_pack, f32_gemm      */
void bge_overlay_avx512_ops(bge_kernels *t);  /* layernorm, softmax, gelu, attention, ... */
void bge_overlay_avx512_bgemm(bge_kernels *t); /* bf16_pack, bf16_gemm (emulated)       */

#endif
