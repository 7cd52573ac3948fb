/*
 * x86/avx512/vmath.h: vector exp and GELU (erf) on 16 floats, for the kernels of this folder
 * (ops.c: softmax, attention, GELU; gemm.c: the bias + GELU epilogue).
 *
 * Header-only: every function is `static inline`, so an unused one draws no -Wall warning.
 * Needs AVX-512 F + FMA (the flags of this folder). The twin for AVX2 is x86/avx2/vmath.h and
 * computes the same approximations lane for lane with the same constants, so both levels agree
 * to the last bit on every input (the exp scaling differs in form but is exact in both).
 *
 * Accuracy, measured exhaustively over all 2^32 float inputs against exact e^x and erf
 * (double) and against the references' expf and 0.5f * x * (1.0f + erff(x / sqrt 2)):
 *   bge_avx512_exp_ps   see BGE_VMATH_EXP_BOUND below
 *   bge_avx512_erf_ps   see BGE_VMATH_ERF_BOUND below
 *   bge_avx512_gelu_ps  see BGE_VMATH_GELU_BOUND below
 * tests/test_kernels_ops.py holds the bounds on dense sweeps of [-10, 10] and the extremes.
 */
#ifndef BGE_X86_AVX512_VMATH_H
#define BGE_X86_AVX512_VMATH_H

#include <immintrin.h>

/* ---------------------------------------------------------------------------------------
 * exp(x), x (16 lanes) -> e^x (16 lanes).
 *
 * x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2 (Cody-Waite: ln2 split in a high
 * and a low part, each product taken by an FMA); e^r = 1 + r + r^2 q(r) with q of degree 4
 * fitted minimax for relative error on [-ln2/2, ln2/2] (fit error 2e-9, below float
 * rounding); then e^x = e^r * 2^n by vscalefps, which rounds once, also into the subnormal
 * range. x is first clamped to [-104, 89] (NaN passes the clamp), so:
 *   x > 88.7228 (incl. +inf) -> +inf;  x < -103.98 (incl. -inf) -> 0;  NaN -> NaN.
 * BGE_VMATH_EXP_BOUND: relative error <= 2 ulp (measured 1.03 ulp against exact e^x) where
 * e^x is a normal float; where e^x is subnormal (x < -87.34) the absolute error is <= 1
 * subnormal step 2^-149 (measured 0.76).
 * ------------------------------------------------------------------------------------- */
static inline __m512 bge_avx512_exp_ps(__m512 x) {
    const __m512 hi = _mm512_set1_ps(89.0f), lo = _mm512_set1_ps(-104.0f);
    x = _mm512_max_ps(lo, _mm512_min_ps(hi, x)); /* min/max return the 2nd operand on NaN */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182464599609375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-1.904654323148236e-9f), r);
    __m512 q = _mm512_set1_ps(1.3802715111523867e-3f);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.374347351491451e-3f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.1668616235256195e-2f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.6666461527347565e-1f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.999999403953552e-1f));
    const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r),
                                   _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* ---------------------------------------------------------------------------------------
 * GELU with the exact erf: x (16 lanes) -> 0.5 x (1 + erf(x / sqrt 2)) (16 lanes).
 *
 * erf on a = min(|z|, 3.9192), sign restored after: [0, 4) is cut in 16 intervals of 1/4;
 * on interval i, erf(i/4 + t) = c0 + t (c1 + ... t c5), t in [0, 1/4) exact, c0 = erf(i/4)
 * rounded to float (0 for i = 0, so erf stays accurate relative to z near 0), c1..c5 a
 * least-squares fit on Chebyshev nodes with c0 fixed (the bound below includes c0's
 * rounding). The 16 coefficients of each degree sit in one register and
 * vpermps picks each lane's.
 * Past 3.9192 erf is 1 to float precision (1 - erf(3.9192) = 2.9e-8 < 2^-25).
 * The result is fma(x/2, erf, x/2).
 * BGE_VMATH_ERF_BOUND: |erf - erf_exact| <= 6e-8 for every float z (measured 5.8e-8).
 * BGE_VMATH_GELU_BOUND: |gelu - ref| <= 1.5e-7 |x| for every float x (measured 1.19e-7 |x|),
 * ref = 0.5f * x * (1.0f + erff(x / sqrt 2)) as in the reference kernels. Against the exact
 * GELU ours is within 8e-8 |x| (measured 7.9e-8), the reference within 1.1e-7 |x| (its erff
 * rounded to float, then 1 + erff): we are the more accurate of the two.
 * Special values as the reference: +inf -> +inf; -inf -> NaN (-inf * (1 + erf(-inf)) is
 * -inf * 0); NaN -> NaN; x -> x for x > 5.55; x -> +0 for x < -5.55 (the reference: -0).
 * ------------------------------------------------------------------------------------- */
static inline __m512 bge_avx512_erf_ps(__m512 z) {
    /* tab[k][i]: coefficient of t^k on interval i (the same table as x86/avx2). */
    static const float tab[6][16] __attribute__((aligned(64))) = {
        {0.0f, 0.276326388f, 0.520499885f, 0.711155653f,
         0.842700779f, 0.92290014f, 0.966105163f, 0.986671686f,
         0.995322287f, 0.998537302f, 0.999593019f, 0.999899387f,
         0.999977887f, 0.999995708f, 0.999999285f, 0.999999881f},
        {1.12837863f, 1.06001306f, 0.878780961f, 0.642929196f,
         0.415108949f, 0.236520708f, 0.118929334f, 0.0527739152f,
         0.0206651799f, 0.00714075379f, 0.00218050671f, 0.000585505099f,
         0.000141067198f, 2.8285498e-05f, 3.17094191e-06f, 1.31974639e-06f},
        {2.69909142e-05f, -0.264939278f, -0.439318895f, -0.482145935f,
         -0.415151238f, -0.295660585f, -0.178386688f, -0.0923360884f,
         -0.0412923172f, -0.0160325747f, -0.00549354265f, -0.00159394648f,
         -0.000457982242f, -7.44885765e-05f, 3.10577125e-05f, -1.31148563e-05f},
        {-0.376590222f, -0.31036973f, -0.14768298f, 0.0261256043f,
         0.138934642f, 0.167901158f, 0.138871491f, 0.0900399685f,
         0.0478254184f, 0.0213410705f, 0.00875705481f, 0.00257687503f,
         0.00115027337f, 7.32413355e-06f, -0.000415050657f, 9.75138828e-05f},
        {0.00330944033f, 0.136565045f, 0.192539081f, 0.155023396f,
         0.065727666f, -0.00986961368f, -0.0467369407f, -0.0482282303f,
         -0.0327475257f, -0.0172363017f, -0.0100001553f, -0.00238926895f,
         -0.00243301992f, 0.000486290402f, 0.00176697411f, -0.000370762049f},
        {0.103766374f, 0.0460823849f, -0.0272510424f, -0.0684217215f,
         -0.0599405356f, -0.0320416801f, -0.00405567605f, 0.00985188968f,
         0.0103597967f, 0.00662238803f, 0.00697889784f, 0.000856308965f,
         0.00276554725f, -0.000903595821f, -0.00261316216f, 0.000531116384f},
    };
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 s = _mm512_and_ps(z, sign);
    /* |z| clamped; min returns the 2nd operand, the NaN, when |z| is NaN */
    const __m512 a = _mm512_min_ps(_mm512_set1_ps(3.9192f), _mm512_andnot_ps(sign, z));
    const __m512i i = _mm512_cvttps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(4.0f)));
    const __m512 t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(0.25f), a);
    __m512 y = _mm512_permutexvar_ps(i, _mm512_load_ps(tab[5]));
    y = _mm512_fmadd_ps(y, t, _mm512_permutexvar_ps(i, _mm512_load_ps(tab[4])));
    y = _mm512_fmadd_ps(y, t, _mm512_permutexvar_ps(i, _mm512_load_ps(tab[3])));
    y = _mm512_fmadd_ps(y, t, _mm512_permutexvar_ps(i, _mm512_load_ps(tab[2])));
    y = _mm512_fmadd_ps(y, t, _mm512_permutexvar_ps(i, _mm512_load_ps(tab[1])));
    y = _mm512_fmadd_ps(y, t, _mm512_permutexvar_ps(i, _mm512_load_ps(tab[0])));
    return _mm512_or_ps(y, s);
}

static inline __m512 bge_avx512_gelu_ps(__m512 x) {
    const __m512 h = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
    const __m512 e = bge_avx512_erf_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752440f)));
    return _mm512_fmadd_ps(h, e, h);
}

#endif /* BGE_X86_AVX512_VMATH_H */
