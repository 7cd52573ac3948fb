/* rt_heap.h: the rest of the C library a probe of a whole slot reaches (besides rt.h's
 * memcpy family), with no libc to link:
 *   - aligned_alloc / malloc / free: a bump allocator over a buffer the harness maps and
 *     hands over with rt_heap_set (an allocation past its end returns NULL, as a failed
 *     malloc; the unmapped page after the buffer catches a write past an allocation's end
 *     only at the heap's end); free does nothing. rt_heap_used: bytes handed out.
 *   - fmaf, which csrc/ref/bgemm.c calls (its files are compiled without -mfma): one
 *     vfmadd213ss, the single rounding fmaf is defined to give (the guest CPU has FMA).
 *   - bge_gelu_erf_scalar (csrc/ref/gemm.c, which would need erff): reachable from the
 *     reference's GELU epilogue, which no probe runs; a call executes ud2, a guest fault.
 * Include it once, in the probe's own file (compiled with the AMX folder's flags). */
#ifndef BGE_AMX_EMU_RT_HEAP_H
#define BGE_AMX_EMU_RT_HEAP_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static char *rt_heap, *rt_heap_end;
static size_t rt_heap_used;

static void rt_heap_set(void *base, size_t bytes) {
    rt_heap = (char *)base;
    rt_heap_end = rt_heap + bytes;
    rt_heap_used = 0;
}

void *aligned_alloc(size_t align, size_t size) {
    if (align == 0 || (align & (align - 1)) || !rt_heap) return NULL;
    const uintptr_t p = ((uintptr_t)rt_heap + rt_heap_used + align - 1) & ~(uintptr_t)(align - 1);
    if (size > (size_t)(rt_heap_end - (char *)p)) return NULL;
    rt_heap_used = (size_t)((char *)p + size - rt_heap);
    return (void *)p;
}

void *malloc(size_t size) { return aligned_alloc(16, size); }

void free(void *p) { (void)p; }

float fmaf(float a, float b, float c) {
    __asm__("vfmadd213ss %2, %1, %0" : "+x"(a) : "x"(b), "x"(c)); /* a = b a + c */
    return a;
}

float bge_gelu_erf_scalar(float x) {
    (void)x;
    __builtin_trap();
}

#endif
