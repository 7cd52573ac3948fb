/* tdp_probe.c: a few lines of AMX-BF16 written by hand, to pin the tdpbf16ps the emulated
 * CPU runs, and the CPU's CPUID.
 *
 * OP_TDP: a[1] A (m rows of nk * kt pairs of bf16, lda bytes apart), a[2] B (nk blocks of kt
 *   pair rows x 16 columns, 64 bytes a row), a[3] C (m x 16 fp32, read and written), a[4] m,
 *   a[5] kt (pairs per instruction, 1..16), a[6] nk, a[7] lda:
 *   C = tdpbf16ps(... tdpbf16ps(C, A block 0, B block 0) ..., A block nk-1, B block nk-1).
 * OP_CPUID: a[1] out (8 uint32): leaf 7 subleaf 0 eax ebx ecx edx, subleaf 1 eax ebx ecx
 *   edx. */
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>

#include "rt.h"

enum { OP_TDP = 1, OP_CPUID = 2 };

typedef struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

void probe_entry(const uint64_t *a) {
    if (a[0] == OP_CPUID) {
        uint32_t *o = (uint32_t *)a[1];
        __cpuid_count(7, 0, o[0], o[1], o[2], o[3]);
        __cpuid_count(7, 1, o[4], o[5], o[6], o[7]);
        return;
    }
    const char *A = (const char *)a[1], *B = (const char *)a[2];
    float *C = (float *)a[3];
    const int m = (int)a[4], kt = (int)a[5], nk = (int)a[6];
    const long lda = (long)a[7];
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.colsb[0] = 64, cfg.rows[0] = (uint8_t)m;            /* C: m x 16 fp32          */
    cfg.colsb[1] = (uint16_t)(4 * kt), cfg.rows[1] = (uint8_t)m; /* A: m x kt pairs    */
    cfg.colsb[2] = 64, cfg.rows[2] = (uint8_t)kt;           /* B: kt pair rows x 16    */
    _tile_loadconfig(&cfg);
    _tile_loadd(0, C, 64);
    for (int b = 0; b < nk; b++) {
        _tile_loadd(1, A + (long)b * 4 * kt, lda);
        _tile_loadd(2, B + (long)b * kt * 64, 64);
        _tile_dpbf16ps(0, 1, 2);
    }
    _tile_stored(0, C, 64);
    _tile_release();
}
