/*
 * arm/dotprod/qgemm.c: the int8 GEMM of the dotprod level (sdot, the activations shifted to
 * s8 and the shift folded into the zero-point term): arm/qgemm_dot.h, compiled with
 * -march=armv8.2-a+dotprod. Its comment holds the design and the exact mapping.
 */
#include "../../bge_internal.h"

#define BGE_ARM_Q8_USDOT 0
#define BGE_ARM_Q8_LAYOUT BGE_Q8_LAYOUT_DOTPROD
#define BGE_ARM_Q8_ISA "dotprod"
#include "../qgemm_dot.h"

/* The dotprod level: the NEON table (fp32 kernels) with the int8 GEMM on sdot. */
void bge_overlay_dotprod(bge_kernels *t) { overlay_qgemm_dot(t); }
