/* arm/neon/neon.h: the parts of the NEON folder (AArch64 Advanced SIMD, -march=armv8-a),
 * each filling its own slots. */
#ifndef BGE_ARM_NEON_H
#define BGE_ARM_NEON_H

#include "../../bge_internal.h"

void bge_overlay_neon_gemm(bge_kernels *t); /* f32_packed_size, f32_pack, f32_gemm, fma_loop */
void bge_overlay_neon_ops(bge_kernels *t);  /* layernorm, softmax, gelu, attention, pool    */
void bge_overlay_neon_quant(bge_kernels *t); /* qu8_quantize, qs8_quantize_weights        */
void bge_overlay_neon_bgemm(bge_kernels *t); /* bf16 pack, scratch, GEMM (emulated)     */

#endif
