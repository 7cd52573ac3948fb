/* bgemm_probe.c: runs csrc/x86/amx/bgemm.c's pass (pass_amx, the code the extension's amx
 * level runs for bf16) over a whole GEMM as the shared driver does for one thread: the
 * impl's begin (the tile configuration), one pass per 48-column panel over all M rows,
 * `next` the following panel, then its end (the tiles released).
 *
 * probe_entry(a): a[1] xc (M x ldx bf16: the converted rows, zero at k = K when K is odd),
 *   a[2] M, a[3] ldx, a[4] packed (the 48-column bf16 packing, header first), a[5] bias (N),
 *   a[6] res (M x N) or 0, a[7] out (M x N), a[8] epilogue (BGE_EPI_*).
 * Kp and N come from the packing's header. */
#include "x86/amx/bgemm.c"

#include "rt.h"

void probe_entry(const uint64_t *a) {
    const bge_bf16_header *h = (const bge_bf16_header *)a[4];
    const int N = h->N, Kp = h->Kp, M = (int)a[2];
    const char *panels = (const char *)a[4] + BGE_BF16_HEADER_BYTES;
    const size_t panel_bytes = (size_t)Kp * NR * 2;
    const float *bias = (const float *)a[5], *res = (const float *)a[6];
    float *out = (float *)a[7];
    impl.begin();
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int p = n0 / NR;
        const bge_bf16_pass ps = {
            .xc = (const void *)a[1], .ldx = (size_t)a[3], .Kp = Kp, .rows = M,
            .nw = N - n0 < NR ? N - n0 : NR, .panel = panels + p * panel_bytes,
            .next = n0 + NR < N ? panels + (p + 1) * panel_bytes : NULL,
            .bias = bias + n0, .res = res ? res + n0 : NULL, .out = out + n0,
            .ldo = (size_t)N, .epilogue = (int)a[8],
        };
        impl.pass(&ps);
    }
    impl.end();
}
