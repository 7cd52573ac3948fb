/* bgemm_slot_probe.c: csrc/x86/amx/bgemm.c as the extension runs it, beyond its passes: the
 * bf16 GEMM slot bge_bf16_gemm__amx through the shared driver (bge_bf16_gemm_run: the
 * argument, header and scratch checks, the row conversion, the impl's begin and end, the
 * passes, the epilogue), the packing slot, the self-check agrees_with_reference() the
 * overlay runs before it offers the GEMM, and the tdpbf16ps peak loop. Linked with
 * gemm_driver.c, schedule.c, check.c, pack.c and ref/bgemm.c compiled without -fopenmp
 * (build.py), so nthreads = 1 runs serially as in the extension; rt_heap.h gives the
 * allocator, fmaf and the reference's GELU (a trap).
 *
 * BGEMM_SOURCE: the kernel file to include (a test builds one deliberately broken copy).
 *
 * probe_entry(a), a[0] the operation:
 *   OP_PACK:  a[1] w (N x K fp32), a[2] K, a[3] N, a[4] packed (bf16_packed_size__amx
 *             bytes), a[5] out (int64[2]): bge_bf16_pack__amx's status, the packed size.
 *   OP_GEMM:  a[1] x (M x K fp32), a[2] M, a[3] K, a[4] N, a[5] packed, a[6] bias (N),
 *             a[7] res (M x N) or 0, a[8] out (M x N), a[9] epilogue (BGE_EPI_*),
 *             a[10] scratch, a[11] its bytes, a[12] nthreads, a[13] out (int64[2]):
 *             bge_bf16_gemm__amx's status, bge_bf16_gemm_scratch__amx(M, K).
 *   OP_CHECK: a[1] heap, a[2] its bytes, a[3] out (int64[2]): agrees_with_reference(), the
 *             heap bytes it allocated.
 *   OP_DOT:   a[1] iters, a[2] out (double): bge_bf16_dot_loop__amx(iters). */
#ifndef BGEMM_SOURCE
#define BGEMM_SOURCE "x86/amx/bgemm.c"
#endif
#include BGEMM_SOURCE

#include "rt.h"
#include "rt_heap.h"

enum { OP_PACK = 1, OP_GEMM = 2, OP_CHECK = 3, OP_DOT = 4 };

void probe_entry(const uint64_t *a) {
    switch (a[0]) {
    case OP_PACK: {
        int64_t *o = (int64_t *)a[5];
        o[0] = bge_bf16_pack__amx((const float *)a[1], (int)a[2], (int)a[3], (void *)a[4]);
        o[1] = (int64_t)bge_bf16_packed_size__amx((int)a[2], (int)a[3]);
        break;
    }
    case OP_GEMM: {
        int64_t *o = (int64_t *)a[13];
        o[0] = bge_bf16_gemm__amx((const float *)a[1], (int)a[2], (int)a[3], (int)a[4],
                                  (const void *)a[5], (const float *)a[6], (const float *)a[7],
                                  (float *)a[8], (int)a[9], (void *)a[10], (size_t)a[11],
                                  (int)a[12]);
        o[1] = (int64_t)bge_bf16_gemm_scratch__amx((int)a[2], (int)a[3]);
        break;
    }
    case OP_CHECK: {
        int64_t *o = (int64_t *)a[3];
        rt_heap_set((void *)a[1], (size_t)a[2]);
        o[0] = agrees_with_reference();
        o[1] = (int64_t)rt_heap_used;
        break;
    }
    case OP_DOT:
        *(double *)a[2] = bge_bf16_dot_loop__amx((long)a[1]);
        break;
    }
}
