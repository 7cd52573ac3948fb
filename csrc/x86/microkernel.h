/*
 * x86/microkernel.h: the microkernel tables every x86 GEMM folder builds (macros only: it
 * compiles under any folder's flags).
 *
 * A folder writes its microkernel once, always_inline, with the tile's rows mr and column
 * vectors nv as arguments. BGE_UK_TABLE instantiates it as one function per mr in 1..MR and
 * nv in 1..3 (so each has constant loop bounds: unrolled, accumulators in registers) and
 * gathers them in table[mr - 1][nv - 1], from which a tile of mr rows and nw columns takes
 * table[mr - 1][ceil(nw / lanes) - 1].
 *
 *   BGE_UK_TABLE(fn_type, table, prefix, DEF, MR)
 *     DEF(mr, nv) defines `static ... prefix_<mr>_<nv>(...)` of type fn_type; MR is 4 or 8
 *     (3, 4 or 8; a macro naming it will do); defines `static const fn_type table[MR][3]`.
 *
 * BGE_UK_PF_LADDER: the float tiles' choice of prefetch lines per k step (below).
 *
 * The int8 folders (avx2, avxvnni, avx512vnni) share the plain microkernel's shape:
 * BGE_Q8_UK_DEF defines uk_<mr>_<nv> from the including file's
 * `ukernel(q, ldq, Kp, panel, tile, mr, nv)`, and their function types are below.
 */
#ifndef BGE_X86_MICROKERNEL_H
#define BGE_X86_MICROKERNEL_H

#include <stddef.h>
#include <stdint.h>

#define BGE_UK_NV_(DEF, mr) DEF(mr, 1) DEF(mr, 2) DEF(mr, 3)
#define BGE_UK_DEFS_3(DEF) BGE_UK_NV_(DEF, 1) BGE_UK_NV_(DEF, 2) BGE_UK_NV_(DEF, 3)
#define BGE_UK_DEFS_4(DEF) BGE_UK_DEFS_3(DEF) BGE_UK_NV_(DEF, 4)
#define BGE_UK_DEFS_8(DEF) \
    BGE_UK_DEFS_4(DEF) BGE_UK_NV_(DEF, 5) BGE_UK_NV_(DEF, 6) BGE_UK_NV_(DEF, 7) BGE_UK_NV_(DEF, 8)
#define BGE_UK_ROW_(p, mr) {p##_##mr##_1, p##_##mr##_2, p##_##mr##_3}
#define BGE_UK_ROWS_3(p) BGE_UK_ROW_(p, 1), BGE_UK_ROW_(p, 2), BGE_UK_ROW_(p, 3)
#define BGE_UK_ROWS_4(p) BGE_UK_ROWS_3(p), BGE_UK_ROW_(p, 4)
#define BGE_UK_ROWS_8(p) \
    BGE_UK_ROWS_4(p), BGE_UK_ROW_(p, 5), BGE_UK_ROW_(p, 6), BGE_UK_ROW_(p, 7), BGE_UK_ROW_(p, 8)

#define BGE_UK_TABLE_(fn_type, table, prefix, DEF, MR) \
    BGE_UK_DEFS_##MR(DEF) static const fn_type table[MR][3] = {BGE_UK_ROWS_##MR(prefix)};
#define BGE_UK_TABLE(fn_type, table, prefix, DEF, MR) BGE_UK_TABLE_(fn_type, table, prefix, DEF, MR)

/* The prefetch ladder of the float microkernels (fp32, bf16): a tile prefetching the next
 * panel touches pfs bytes of it per k step, one line per 64 bytes, at most `most` (2 or 4,
 * a constant: the branches above it fold away) lines; each count is a constant of its own
 * instance of the inlined kernel.
 *   BGE_UK_PF_LADDER(most, kernel, pf, pfs, args...) calls kernel(args..., pf, pfs, lines),
 *   or kernel(args..., NULL, 0, 0) when pfs <= 0 (no prefetch).                          */
#define BGE_UK_PF_LADDER(most, kernel, pf, pfs, ...)                                       \
    do {                                                                                   \
        if ((most) >= 4 && (pfs) > 192)                                                    \
            kernel(__VA_ARGS__, pf, pfs, 4);                                               \
        else if ((most) >= 3 && (pfs) > 128)                                               \
            kernel(__VA_ARGS__, pf, pfs, 3);                                               \
        else if ((pfs) > 64)                                                               \
            kernel(__VA_ARGS__, pf, pfs, 2);                                               \
        else if ((pfs) > 0)                                                                \
            kernel(__VA_ARGS__, pf, pfs, 1);                                               \
        else                                                                               \
            kernel(__VA_ARGS__, NULL, 0, 0);                                               \
    } while (0)

/* The plain int8 microkernel: tile (mr, NR) int32 = q rows (Kp u8 each, ldq apart) x the
 * panel's s8 columns, over every k (the qu8s8_gemm_i32 contract).                        */
typedef void (*bge_q8_uk_fn)(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,
                             int32_t *tile);

/* The grouped int8 microkernel: ftile (mr, NR) = the fp32 sum over groups of the scheme
 * (bge.h), before the bias; scale, zp at the tile's row 0 (stride ngroups), ws, cs at the
 * panel's column 0 in group 0 (group stride gs).                                        */
typedef void (*bge_q8_guk_fn)(const uint8_t *q, size_t ldq, int Kp, const int8_t *panel,
                              const float *scale, const int32_t *zp, int ngroups,
                              const float *ws, const int32_t *cs, int gs, float *ftile);

/* Not inlined into the grouped kernels: there GCC would keep their tile in registers across
 * the fp32 step and spill inside the k loop. */
#define BGE_Q8_UK_DEF(mr, nv)                                                              \
    static __attribute__((noinline)) void uk_##mr##_##nv(const uint8_t *q, size_t ldq,     \
                                                         int Kp, const int8_t *panel,      \
                                                         int32_t *tile) {                  \
        ukernel(q, ldq, Kp, panel, tile, mr, nv);                                          \
    }

#endif /* BGE_X86_MICROKERNEL_H */
