"""TDPBF16PS as the Intel SDM's pseudocode states it (the semantics the emulated AMX unit
gives, amx_unit.py), for one instruction and for a whole K split into such instructions.

Per row m of the destination tile and per instruction (K_t = src1.colsb / 4 pairs of k):
    e[n] = o[n] = +0
    for k in 0 .. K_t - 1:                               (pairs in ascending order)
        e[n] = ftz(fma(A[m, 2k],   B[k, 2n],   e[n]))    (the even element of the pair)
        o[n] = ftz(fma(A[m, 2k+1], B[k, 2n+1], o[n]))    (the odd element)
    C[m, n] = ftz(C[m, n] + ftz(e[n] + o[n]))
every step rounded to nearest even, denormal inputs taken as zero (DAZ), denormal results
flushed (FTZ). So one instruction keeps two fp32 chains per output, the even k and the odd
k, and adds their sum to the destination once: a different order from vdpbf16ps's (odd then
even k into one accumulator, csrc/bge.h), and the bits depend on how K is cut into
instructions (never on M).
"""

from __future__ import annotations

import numpy as np

from .fp import add32, bf16_to_f32, daz, fma_chain_step, ftz


def tdpbf16ps(C, A, B):
    """One instruction. C (m, n) fp32; A (m, 2 kt) bf16 bits; B (kt, 2 n) bf16 bits (pair
    rows, each column's two bf16 side by side). Returns the new C (m, n) fp32."""
    C = np.asarray(C, np.float32)
    a = daz(bf16_to_f32(A)).astype(np.float64)
    b = daz(bf16_to_f32(B)).astype(np.float64)
    m, n = C.shape
    kt = a.shape[1] // 2
    e = np.zeros((m, n))
    o = np.zeros((m, n))
    for k in range(kt):  # each step is tdp_step's: products exact in float64, one rounding
        e = fma_chain_step(a[:, 2 * k, None] * b[None, k, 0::2], e)
        o = fma_chain_step(a[:, 2 * k + 1, None] * b[None, k, 1::2], o)
    e, o = e.astype(np.float32), o.astype(np.float32)
    return ftz(add32(daz(C), ftz(add32(e, o))))


def gemm(xb, wb, k_per_instr=32):
    """C (M, N) = the fp32 sums of bf16 x (M, Kp) and bf16 w (N, Kp) (bits, Kp even) as a
    kernel gets them that starts from C = 0 and runs one tdpbf16ps per block of
    k_per_instr k in ascending order, the last block zero-filled to k_per_instr."""
    xb = np.asarray(xb, np.uint16)
    wb = np.asarray(wb, np.uint16)
    pad = -xb.shape[1] % k_per_instr
    xb = np.pad(xb, ((0, 0), (0, pad)))
    wb = np.pad(wb, ((0, 0), (0, pad)))
    M, Kp = xb.shape
    N = wb.shape[0]
    C = np.zeros((M, N), np.float32)
    for k0 in range(0, Kp, k_per_instr):
        k1 = min(Kp, k0 + k_per_instr)
        B = wb[:, k0:k1].reshape(N, (k1 - k0) // 2, 2).transpose(1, 0, 2).reshape(-1, 2 * N)
        C = tdpbf16ps(C, xb[:, k0:k1], B)
    return C
