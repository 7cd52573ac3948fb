/* x86/avx2/avx2.h: the parts of the AVX2 folder, each filling its own slots. */
#ifndef BGE_X86_AVX2_H
#define BGE_X86_AVX2_H

#include "../../bge_internal.h"

void bge_overlay_avx2_gemm(bge_kernels *t); /* f32_packed_size, f32_pack, f32_gemm      */
void bge_overlay_avx2_ops(bge_kernels *t);  /* layernorm, softmax, gelu, attention, ... */
void bge_overlay_avx2_qgemm(bge_kernels *t); /* qu8_quantize, qs8_pack, qu8s8_gemm, ...  */
void bge_overlay_avx2_bgemm(bge_kernels *t); /* bf16_pack, bf16_gemm (emulated)          */

#endif
