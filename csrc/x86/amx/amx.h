/* x86/amx/amx.h: the parts of the AMX folder, each filling its own slots. */
#ifndef BGE_X86_AMX_H
#define BGE_X86_AMX_H

#include <stdint.h>

#include "../../bge_internal.h"

/* A tile configuration (palette 1): the 64 bytes ldtilecfg reads. Tile t has rows[t] rows
 * of colsb[t] bytes; a tile with 0 rows is unused. Loading one zeroes every tile. */
typedef struct bge_amx_config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} bge_amx_config;
_Static_assert(sizeof(bge_amx_config) == 64, "ldtilecfg reads 64 bytes");

/* qu8s8_gemm, qu8s8_gemm_i32, qu8s8_dot_loop (the packing and quantiser stay the vnni
 * level's) */
void bge_overlay_amx_qgemm(bge_kernels *t);
/* bf16_pack, bf16_gemm, bf16_dot_loop (tdpbf16ps), offered only after the GEMM agrees with
 * the reference on this CPU (bgemm.c) */
void bge_overlay_amx_bgemm(bge_kernels *t);

#endif
