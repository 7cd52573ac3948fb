/* x86/amx/amx.h: the parts of the AMX folder, each filling its own slots. */
#ifndef BGE_X86_AMX_H
#define BGE_X86_AMX_H

#include <immintrin.h>
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

/* The one configuration of this folder's kernels: every tile 16 rows of 64 bytes (int8: C
 * 16 x 16 int32, A 16 x 64 u8, B 16 quads x 16 columns x 4 s8; bf16: C 16 x 16 fp32, A 16
 * rows x 32 bf16, B 16 pairs x 16 columns x 2 bf16). */
static const bge_amx_config bge_amx_config_16x64 = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* Each thread loads the configuration when it starts a block of work and releases the tiles
 * after it (the impls' begin and end), so it never runs on a configuration another library
 * left and holds no tile state between calls. */
static inline void bge_amx_begin(void) { _tile_loadconfig(&bge_amx_config_16x64); }
static inline void bge_amx_end(void) { _tile_release(); }

/* The kernels' tiles: C blocks 0..2 (the sums of a panel's three 16-column blocks), A 3,
 * B blocks 4..6; 7 only in the peak loops. The tile intrinsics paste their tile numbers
 * into the instruction text, so these are literals. */

/* Tiles 0 .. nv-1 += A (`a`, rows lda bytes apart) times the B tiles at b, b + 64 and
 * b + 128 (rows ldb bytes apart), by `dp` (_tile_dpbusd, _tile_dpbf16ps). */
#define BGE_AMX_TDP3(dp, nv, a, lda, b, ldb)                                               \
    do {                                                                                   \
        _tile_loadd(3, (a), (lda));                                                        \
        _tile_loadd(4, (b), (ldb));                                                        \
        dp(0, 3, 4);                                                                       \
        if ((nv) > 1) {                                                                    \
            _tile_loadd(5, (b) + 64, (ldb));                                               \
            dp(1, 3, 5);                                                                   \
        }                                                                                  \
        if ((nv) > 2) {                                                                    \
            _tile_loadd(6, (b) + 128, (ldb));                                              \
            dp(2, 3, 6);                                                                   \
        }                                                                                  \
    } while (0)

#define BGE_AMX_TILES_ZERO(nv)                                                             \
    do {                                                                                   \
        _tile_zero(0);                                                                     \
        if ((nv) > 1) _tile_zero(1);                                                       \
        if ((nv) > 2) _tile_zero(2);                                                       \
    } while (0)

/* Tiles 0 .. nv-1 to s, s + 16, s + 32 (4-byte elements; rows ld bytes apart). */
#define BGE_AMX_TILES_STORE(nv, s, ld)                                                     \
    do {                                                                                   \
        _tile_stored(0, (s), (ld));                                                        \
        if ((nv) > 1) _tile_stored(1, (s) + 16, (ld));                                     \
        if ((nv) > 2) _tile_stored(2, (s) + 32, (ld));                                     \
    } while (0)

/* qu8s8_gemm, qu8s8_gemm_i32, qu8s8_dot_loop (the packing and quantiser stay the vnni
 * level's) */
void bge_overlay_amx_qgemm(bge_kernels *t);
/* bf16_pack, bf16_gemm, bf16_dot_loop (tdpbf16ps), offered only after the GEMM agrees with
 * the reference on this CPU (bgemm.c) */
void bge_overlay_amx_bgemm(bge_kernels *t);

/* The peak loops: iters rounds of `dp` into the 4 independent sum tiles 0, 1, 2 and 7 (the
 * unit's latency covered) from the A tile `a` and the B tile `b` (16 rows of 64 bytes each);
 * tile 7 is stored to c (16 x 64 bytes), so the work is not optimised away. */
#define BGE_AMX_PEAK_LOOP(dp, a, b, c, iters)                                              \
    do {                                                                                   \
        bge_amx_begin();                                                                   \
        _tile_loadd(3, (a), 64);                                                           \
        _tile_loadd(4, (b), 64);                                                           \
        _tile_zero(0);                                                                     \
        _tile_zero(1);                                                                     \
        _tile_zero(2);                                                                     \
        _tile_zero(7);                                                                     \
        for (long it_ = 0; it_ < (iters); it_++) {                                         \
            dp(0, 3, 4);                                                                   \
            dp(1, 3, 4);                                                                   \
            dp(2, 3, 4);                                                                   \
            dp(7, 3, 4);                                                                   \
        }                                                                                  \
        _tile_stored(7, (c), 64);                                                          \
        bge_amx_end();                                                                     \
    } while (0)

#endif
