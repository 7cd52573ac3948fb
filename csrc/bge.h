/*
 * bge.h: the C API of bge-engine.
 *
 * Every kernel lives in a table of function pointers (bge_kernels). The table for a
 * level starts with every slot on its plain-C reference (csrc/ref/) and is upgraded
 * slot by slot with the SIMD kernels the CPU and the OS can run (dispatch.c).
 *
 * Conventions, for every function below:
 *   - matrices are row-major and contiguous; "(R, C)" means R rows of C floats.
 *   - sizes are int and must be >= 1 unless stated; pointers must not be NULL unless
 *     stated; violations return BGE_ERR_ARG and touch nothing.
 *   - nthreads >= 1 is the number of OpenMP threads the call may use. Threads split
 *     rows, columns, texts or heads, never a reduction: results are bit-identical
 *     for every nthreads.
 *   - functions return a bge_status; they never print, exit or abort.
 */
#ifndef BGE_H
#define BGE_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    BGE_OK = 0,
    BGE_ERR_ARG = 1,      /* NULL pointer, size < 1, or shapes that do not fit together */
    BGE_ERR_SCRATCH = 2,  /* the scratch buffer given is smaller than the call needs */
    BGE_ERR_PACKING = 3,  /* packed weights made by another kernel table */
    BGE_ERR_MEMORY = 4,   /* an allocation failed */
} bge_status;

/* GEMM epilogues, applied to acc = x @ W^T for each output element (m, n). */
typedef enum {
    BGE_EPI_BIAS = 0,          /* out[m,n] = acc + bias[n]                 */
    BGE_EPI_BIAS_GELU = 1,     /* out[m,n] = gelu_erf(acc + bias[n])       */
    BGE_EPI_BIAS_RESIDUAL = 2, /* out[m,n] = (acc + bias[n]) + res[m,n]    */
} bge_epilogue;

/* Pooling modes of bge_f32_pool. */
typedef enum {
    BGE_POOL_CLS = 0,   /* the first row of each text ([CLS])              */
    BGE_POOL_MEAN = 1,  /* the mean of all rows of each text (no padding)  */
} bge_pool_mode;

/* ISA levels, lowest first (the list: registry.h). A level is usable when the CPU has its
 * instructions, the OS saves its registers (x86: XCR0; Linux on AArch64: the HWCAP bits of
 * getauxval, set only for state the kernel saves) and the compiler built its folder. The
 * BGE_ISA environment variable (a level's name: ref|avx2|avxvnni|avx512|avx512vnni|
 * avx512bf16|amx|neon|dotprod|i8mm|neonbf16, or an old alias such as vnni) caps the level
 * chosen by bge_init().
 *   avx2        AVX2 + FMA
 *   avxvnni     AVX2 + FMA + AVX-VNNI (ymm vpdpbusd)
 *   avx512      AVX-512 F, BW, DQ, VL
 *   avx512vnni  AVX-512 VNNI (zmm vpdpbusd)
 *   avx512bf16  AVX-512 BF16 (zmm vdpbf16ps, vcvtneps2bf16)
 *   amx         AMX tiles, int8
 *   neon        AArch64 Advanced SIMD (every AArch64 CPU)
 *   dotprod     + FEAT_DotProd (sdot, udot; Armv8.2+: Cortex-A55/A76, Neoverse N1)
 *   i8mm        + FEAT_I8MM (usdot, sudot, usmmla; Neoverse V1/N2, Armv8.6+)
 *   neonbf16    + FEAT_BF16 (bfdot, bfmmla; Neoverse V1/N2, Apple M2, Armv8.6+): the bf16
 *               GEMM on BFDOT, within a bound of the reference (the bf16 scheme below)   */
typedef enum {
#define BGE_LEVEL_ENUM_(id, name) BGE_ISA_##id,
    BGE_LEVELS(BGE_LEVEL_ENUM_)
#undef BGE_LEVEL_ENUM_
    BGE_ISA_COUNT
} bge_isa;

/* ---------------------------------------------------------------------------------------
 * Kernel signatures. Each slot of bge_kernels has one of these types and a name, e.g.
 * "bge_f32_gemm__ref" or "bge_f32_gemm_8x32__avx512".
 * ------------------------------------------------------------------------------------- */

/* Floats needed to hold W (N, K) packed for this table's GEMM. Returns 0 on bad sizes. */
typedef size_t (*bge_f32_packed_size_fn)(int K, int N);

/* Packs W for this table's GEMM.
 *   w      (N, K): a torch Linear weight (out_features, in_features), row-major
 *   packed (packed_size(K, N)) floats, written whole (layout owned by the kernel and
 *          documented beside it)                                                      */
typedef int (*bge_f32_pack_fn)(const float *w, int K, int N, float *packed);

/* out = epilogue(x @ W^T + bias).
 *   x      (M, K)
 *   packed W (N, K) as packed by this table's pack
 *   bias   (N)
 *   res    (M, N) with BGE_EPI_BIAS_RESIDUAL, else ignored (may be NULL); may equal out
 *   out    (M, N); must not overlap x
 * For each output element the sum over k runs in one fixed order that does not depend on
 * M, N, the position of the element or nthreads.                                        */
typedef int (*bge_f32_gemm_fn)(const float *x, int M, int K, int N, const float *packed,
                               const float *bias, const float *res, float *out,
                               int epilogue, int nthreads);

/* Row-wise LayerNorm: out[t] = (x[t] - mean) / sqrt(var + eps) * gamma + beta, with the
 * biased variance.  x (T, C); gamma, beta (C); out (T, C), may equal x.                  */
typedef int (*bge_f32_layernorm_fn)(const float *x, const float *gamma, const float *beta,
                                    float eps, float *out, int T, int C, int nthreads);

/* Row-wise softmax in place: x (R, C).                                                   */
typedef int (*bge_f32_softmax_fn)(float *x, int R, int C);

/* In-place GELU with the exact erf: x (n): x = 0.5 * x * (1 + erf(x / sqrt(2))).        */
typedef int (*bge_f32_gelu_fn)(float *x, size_t n);

/* Floats of scratch that bge_f32_attention needs for texts of at most max_len tokens.   */
typedef size_t (*bge_f32_attention_scratch_fn)(int max_len, int head_dim, int nthreads);

/* Self-attention over a ragged batch: no padding, no mask.
 *   qkv     (T, 3*H): for token t, Q = qkv[t, 0:H], K = qkv[t, H:2H], V = qkv[t, 2H:3H];
 *           head h owns columns h*D .. h*D+D-1 of each of the three blocks, D = H / heads
 *   offsets (n + 1) int32: text i owns tokens offsets[i] .. offsets[i+1]-1;
 *           offsets[0] = 0, offsets[n] = T, non-decreasing
 *   out     (T, H): out[t, h*D:(h+1)*D] = softmax(scale * Q_t K^T) V over the tokens of t's text
 *   scratch (scratch_floats) floats, at least attention_scratch(max text length, D, nthreads)
 * Each (text, head) is computed alone: a text's output does not depend on the others.    */
typedef int (*bge_f32_attention_fn)(const float *qkv, const int32_t *offsets, int n, int H,
                                    int heads, float scale, float *out, float *scratch,
                                    size_t scratch_floats, int nthreads);

/* BERT embeddings before their LayerNorm:
 *   out[t] = (word[ids[t]] + type[0]) + pos[t - offsets[text of t]]
 *   ids (T) int32 in [0, vocab); offsets (n + 1) as for attention, every text at most
 *   max_pos tokens; word (vocab, C); pos (max_pos, C); type (>= 1, C); out (T, C).       */
typedef int (*bge_f32_embed_fn)(const int32_t *ids, const int32_t *offsets, int n,
                                const float *word, int vocab, const float *pos, int max_pos,
                                const float *type, float *out, int C);

/* Pooling over a ragged batch: h (T, C); offsets (n + 1), every text >= 1 token;
 * out (n, C): the CLS row or the mean of each text's rows (summed in token order).      */
typedef int (*bge_f32_pool_fn)(const float *h, const int32_t *offsets, int n, int C,
                               int mode, float *out);

/* Row-wise L2 normalisation in place: x (n, C); a zero row stays zero.                  */
typedef int (*bge_f32_l2norm_fn)(float *x, int n, int C);

/* The machine's fp32 FMA peak, for benchmarks: runs `iters` rounds of independent FMA
 * chains in the widest registers of the level and returns the floating-point operations done
 * (2 per lane per FMA). The caller times it.                                             */
typedef double (*bge_f32_fma_loop_fn)(long iters);

/* ---------------------------------------------------------------------------------------
 * int8 GEMM: u8 activations (per token and group of BGE_Q8_GROUP consecutive k, with a zero
 * point) x s8 weights (per output channel and group, symmetric), int32 sums per group, fp32
 * epilogue. The scheme, exactly (every level gives the same bytes and the same bits as the
 * reference, csrc/ref/qgemm.c):
 *
 *   Kp = BGE_Q8_KP(K) = K rounded up to a multiple of 4.
 *   Groups along k: G = BGE_Q8_GROUP = 64; group g covers k in [G g, min(G g + G, K)),
 *     ngroups = BGE_Q8_NGROUPS(K) = ceil(K / G).
 *   Weights (quantised by the caller): w_s8 (N, K) int8 in [-127, 127], w_scale (N, ngroups)
 *     fp32, W[n, k] ~= w_scale[n, g(k)] * w_s8[n, k]. qs8_pack adds
 *     colsum[n, g] = sum_{k in group g} w_s8[n, k]   (|colsum| <= 64 * 127: fits in int16).
 *   Activations, per row x (K) of X (M, K) and per group g, by qu8_quantize, float ops in
 *     exactly this order (x[k] below ranges over the group's elements only):
 *     mn = min(0, min_k x[k]), mx = max(0, max_k x[k])   (NaN elements are ignored here)
 *     if mx == mn: scale = 1, zp = 0, q[k] = 0
 *     else: scale = (mx - mn) / 255.0f, inv = 255.0f / (mx - mn),
 *           zp = clamp(rint(-mn * inv), 0, 255),
 *           q[k] = clamp(rint(x[k] * inv) + zp, 0, 255)
 *     giving scale[m, g], zp[m, g]. rint rounds half to even; a value past the int32 range
 *     (or NaN) converts to INT32_MIN before the clamp, as the x86 cvtps2dq does. q[k] for
 *     K <= k < Kp is the last group's zp. X[m, k] ~= scale[m, g(k)] * (q[m, k] - zp[m, g(k)]).
 *   GEMM: acc[m, n, g] = sum_{k in g} q[m, k] * w_s8[n, k]   (int32, exact)
 *     d[m, n, g] = acc[m, n, g] - zp[m, g] * colsum[n, g]     (int32, exact)
 *     s = 0.0f; for g = 0, 1, .., ngroups - 1 in this order:
 *         s = s + (float)d[m, n, g] * (scale[m, g] * w_scale[n, g])
 *     out[m, n] = epi(s + bias[n])
 *     with a separate rounding after each operation (never an FMA). epi is the identity,
 *     GELU, or + res[m, n] as for fp32. SIMD levels compute GELU with their vector GELU
 *     (x86/<isa>/vmath.h: within 1.5e-7 |v| of the reference's scalar GELU); everything
 *     else is bit-identical to the reference.
 * ------------------------------------------------------------------------------------- */

#define BGE_Q8_KP(K) (((K) + 3) & ~3)  /* bytes of one row of q                         */
#define BGE_Q8_MAX_K 66000             /* K * 255 * 127 < 2^31: int32 sums stay exact    */
#define BGE_Q8_GROUP 64                /* k per quantisation group (a multiple of 4)     */
#define BGE_Q8_NGROUPS(K) (((K) + BGE_Q8_GROUP - 1) / BGE_Q8_GROUP) /* groups of a row   */

/* Quantises X row by row and group by group (the activation scheme above).
 *   x     (M, K) fp32
 *   q     (M, Kp) u8, Kp = BGE_Q8_KP(K); bytes K .. Kp-1 of each row are set to the zp of
 *         the row's last group
 *   scale (M, ngroups) fp32, zp (M, ngroups) int32 in [0, 255], ngroups = BGE_Q8_NGROUPS(K)
 * K <= BGE_Q8_MAX_K. Rows are independent: the bytes of a row never depend on M or
 * nthreads.                                                                             */
typedef int (*bge_qu8_quantize_fn)(const float *x, int M, int K, uint8_t *q, float *scale,
                                   int32_t *zp, int nthreads);

/* Quantises weights at load (the weight scheme above; every level computes it byte for
 * byte):
 *   w       (N, K) fp32, finite (BGE_ERR_ARG otherwise)
 *   w_s8    (N, K) int8, w_scale (N, ngroups) fp32, ngroups = BGE_Q8_NGROUPS(K):
 *           per row n and group g: amax = max_{k in g} |w[n, k]|,
 *           w_scale[n, g] = amax / 127.0f (1.0f when amax == 0),
 *           w_s8[n, k] = clamp(rint(w[n, k] / w_scale[n, g]), -127, 127), rint rounding
 *           half to even, each division a correctly rounded fp32 one.
 * K <= BGE_Q8_MAX_K. Rows are independent; the bytes never depend on nthreads.          */
typedef int (*bge_qs8_quantize_weights_fn)(const float *w, int N, int K, int8_t *w_s8,
                                           float *w_scale, int nthreads);

/* Bytes needed to hold w_s8 (N, K) packed for this table's int8 GEMM; 0 on bad sizes
 * (K < 1, N < 1, K > BGE_Q8_MAX_K).                                                      */
typedef size_t (*bge_qs8_packed_size_fn)(int K, int N);

/* Packs int8 weights for this table's int8 GEMM.
 *   w       (N, K) int8 in [-127, 127] (a -128 returns BGE_ERR_ARG)
 *   w_scale (N, ngroups) fp32, ngroups = BGE_Q8_NGROUPS(K)
 *   packed  (qs8_packed_size(K, N)) bytes, written whole: a 64-byte header (magic, layout
 *           id, K, N, ...) that the GEMMs check, then w_scale and colsum per (column,
 *           group) and the weights in the
 *           kernel's own layout (documented beside each pack function). No alignment is
 *           required; a 64-byte aligned buffer keeps the kernel's loads aligned.          */
typedef int (*bge_qs8_pack_fn)(const int8_t *w, const float *w_scale, int K, int N,
                               void *packed);

/* out = epi(dequantised q @ W^T + bias), the GEMM of the scheme above.
 *   q      (M, Kp) u8, scale (M, ngroups) fp32, zp (M, ngroups) int32: as written by
 *          qu8_quantize
 *   packed W (N, K) as packed by this table's qs8_pack; BGE_ERR_PACKING when the header
 *          names another layout, BGE_ERR_ARG when its K or N differ from the arguments
 *   bias   (N)
 *   res    (M, N) with BGE_EPI_BIAS_RESIDUAL, else ignored (may be NULL); may equal out
 *   out    (M, N) fp32
 * Threads split rows and columns, never k: bit-identical for every nthreads and batch.   */
typedef int (*bge_qu8s8_gemm_fn)(const uint8_t *q, const float *scale, const int32_t *zp,
                                 int M, int K, int N, const void *packed, const float *bias,
                                 const float *res, float *out, int epilogue, int nthreads);

/* The raw int32 sums, for exact tests: acc (M, N) int32 = sum_{k < Kp} q[m, k] * w_s8[n, k]
 * over every k (all groups together; w_s8 is zero past K, so this is the sum over k < K),
 * without the zero-point terms.
 *   q (M, Kp) u8; packed as for qu8s8_gemm; acc (M, N) int32.                             */
typedef int (*bge_qu8s8_gemm_i32_fn)(const uint8_t *q, int M, int K, int N, const void *packed,
                                     int32_t *acc, int nthreads);

/* The machine's int8 dot-product peak, for benchmarks: runs `iters` rounds of independent
 * u8 x s8 multiply-accumulate chains in the level's widest int8 instruction (vpdpbusd, or
 * vpmaddwd + vpaddd) and returns the integer operations done (2 per product). The caller
 * times it.                                                                              */
typedef double (*bge_qu8s8_dot_loop_fn)(long iters);

/* ---------------------------------------------------------------------------------------
 * bf16 GEMM: bfloat16 inputs, fp32 accumulation over the whole of K (no groups), the fp32
 * epilogues of the fp32 GEMM. The scheme, exactly (every level gives the same bits as the
 * reference, csrc/ref/bgemm.c, except GELU: SIMD levels use their vector GELU, within
 * 1.5e-7 |v| of the scalar one, as for fp32 and int8; and except ARM's neonbf16 and x86's
 * amx, within the bound stated below). docs/design/bf16.md tells why.
 *
 *   bf16(v), fp32 -> bfloat16 (the top 16 bits of an fp32), as vcvtneps2bf16 computes it
 *     (checked bit for bit on Zen 4 over 32 million values of every class):
 *       a denormal v is taken as +-0 first (DAZ); a NaN keeps its sign and top 7 payload
 *       bits and is made quiet (bf16 bit 6 set); anything else is rounded to nearest, ties
 *       to even (a finite v near FLT_MAX may round to +-inf). So a bf16 is never denormal.
 *     bge_bf16_from_f32 below is its plain-C definition.
 *   Kp = BGE_BF16_KP(K) = K rounded up to even; x and W are taken as 0 at k = K when K is odd.
 *   Weights, at load: wb[n, k] = bf16(w[n, k]), packed in pairs of k ("VNNI-2"): the 32-bit
 *     word of (column n, pair g) holds wb[n, 2g] in its low half and wb[n, 2g+1] in its high
 *     half (the operand layout of vdpbf16ps and tdpbf16ps). The packed buffer starts with a
 *     64-byte header (bge_bf16_header, csrc/bge_internal.h); its panels are documented there.
 *   Activations: xb[m, k] = bf16(x[m, k]), converted by the GEMM call itself into the
 *     caller's scratch (each level in the form its kernel reads).
 *   Sum, per output (m, n): acc = +0.0f, then for g = 0, 1, ..., Kp/2 - 1 in this order
 *       acc = step(acc, xb[m, 2g+1], wb[n, 2g+1]);      (the odd k of the pair first)
 *       acc = step(acc, xb[m, 2g],   wb[n, 2g]);
 *     step(a, x, w) = ftz(fma(x, w, a)): the exact product x w added to a with ONE rounding
 *     to nearest even, then a denormal result flushed to the zero of its sign.
 *     That is one lane of vdpbf16ps on one pair, which this CPU was measured to compute bit
 *     for bit (Zen 4, 22 million lanes: random, wide-range, cancelling, tie, denormal-input,
 *     tiny-product and denormal-accumulator cases; the Intel SDM's pseudocode gives the same
 *     order, DAZ and FTZ). Rounding the products first, summing the pair first, the even k
 *     first or not flushing the middle step each disagree on such inputs.
 *   out[m, n] = epi(acc + bias[n]) with epi as for fp32 (identity, GELU, + res[m, n]).
 * Thread count, batch and tile never change the order above: bit-identical results.
 * The ARM levels: neon, dotprod and i8mm run the emulation (arm/neon/bgemm.c: fmla, the
 *   reference's bits, its flush after rounding kept exactly; FPCR.FZ flushes before
 *   rounding, so a tile that FZ flushed is run again with explicit flushing). neonbf16
 *   runs BFDOT, whose documented step differs (Arm ARM BFDotAdd, FPCR.EBF = 0): per pair,
 *     acc = R(acc + R(xb[2g] wb[2g] + xb[2g+1] wb[2g+1])),
 *   products exact (one below 2^-126 flushed), R rounding to odd and flushing below
 *   2^-126: the pair summed first. So it is not the reference's bits; per output (m, n),
 *   with A = sum_k |xb[m, k] wb[n, k]| (exact),
 *     |acc_neonbf16 - acc_ref| <= 1.01 (2 Kp + 2) 2^-24 A + 4 Kp 2^-126
 *   (the reference rounds each of Kp steps to nearest, <= 2^-24 relative; BFDOT rounds each
 *   pair sum and each of Kp/2 accumulations to odd, < 2^-23 relative; the flushes lose
 *   < 2^-126 per step, 3 Kp of them at most; 1.01 covers the higher-order terms for
 *   Kp <= 16384). Then the epilogue's fp32 ops round once more. Still one instruction and
 *   one pair order per element for every M, tile and thread count: batch and thread
 *   invariance hold bit for bit on that level too (tests/test_kernels_bgemm.py).
 * The amx level runs tdpbf16ps on 32 k per instruction. The Intel SDM's TDPBF16PS sums the
 *   even k and the odd k of those 16 pairs in two chains from +0 (each step ftz(fma), RNE,
 *   DAZ, whatever MXCSR says), then adds the two, then adds that to acc, each rounded and
 *   flushed; the Intrinsics Guide's shorter text reads as one chain, even k first. Either
 *   way its bits are not the reference's: they are within the same bound as neonbf16's (at
 *   most Kp + 2 ceil(Kp / 32) roundings per output), which also covers a pair summed first,
 *   should the silicon differ from both texts. The level offers its GEMM only after one
 *   GEMM with every tail agrees with the reference within that bound on the running CPU
 *   (x86/amx/bgemm.c); else the avx512bf16 kernel stays. One instruction and one pair order
 *   per element for every M, tile and thread count: invariance holds bit for bit.
 * ------------------------------------------------------------------------------------- */

#define BGE_BF16_KP(K) (((K) + 1) & ~1) /* k per converted row: pairs of k                */

/* The plain-C definition of bf16() above: out[i] = bf16(x[i]) for i < n (bits).           */
void bge_bf16_from_f32(const float *x, size_t n, uint16_t *out);

/* Bytes needed to hold W (N, K) packed for this table's bf16 GEMM; 0 on bad sizes.       */
typedef size_t (*bge_bf16_packed_size_fn)(int K, int N);

/* Converts W to bf16 and packs it for this table's bf16 GEMM.
 *   w      (N, K) fp32: a torch Linear weight, row-major
 *   packed (bf16_packed_size(K, N)) bytes, written whole: the header, then the panels.
 *          No alignment is required; a 64-byte aligned buffer keeps the kernel's loads
 *          aligned.                                                                     */
typedef int (*bge_bf16_pack_fn)(const float *w, int K, int N, void *packed);

/* Bytes of scratch bf16_gemm needs for M rows of K: at most 4 * M * Kp on every level.  */
typedef size_t (*bge_bf16_gemm_scratch_fn)(int M, int K);

/* out = epilogue(bf16(x) @ bf16(W)^T + bias), the sum of the scheme above.
 *   x       (M, K) fp32
 *   packed  W (N, K) as packed by a table whose packing has the same panel width (the
 *           header says; BGE_ERR_PACKING otherwise, BGE_ERR_ARG when its K, N differ)
 *   bias    (N); res (M, N) with BGE_EPI_BIAS_RESIDUAL, else ignored; may equal out
 *   out     (M, N) fp32; must not overlap x or scratch
 *   scratch (scratch_bytes) bytes, at least bf16_gemm_scratch(M, K) (BGE_ERR_SCRATCH
 *           otherwise): receives the converted x                                        */
typedef int (*bge_bf16_gemm_fn)(const float *x, int M, int K, int N, const void *packed,
                                const float *bias, const float *res, float *out,
                                int epilogue, void *scratch, size_t scratch_bytes,
                                int nthreads);

/* The machine's bf16 dot-product peak, for benchmarks: `iters` rounds of independent chains
 * of the level's bf16 instruction (vdpbf16ps, BFDOT); returns the floating-point operations
 * done (2 per bf16 product). The caller times it. The emulating levels keep the reference's
 * scalar loop: one FMA per product, their peak is f32_fma_loop's.                        */
typedef double (*bge_bf16_dot_loop_fn)(long iters);

/* Slot indices, BGE_SLOT_<slot>, in the order of BGE_SLOTS (registry.h). */
enum {
#define BGE_SLOT_ENUM_(slot, type) BGE_SLOT_##slot,
    BGE_SLOTS(BGE_SLOT_ENUM_)
#undef BGE_SLOT_ENUM_
    BGE_SLOT_COUNT
};

/* One kernel table: a function per slot of BGE_SLOTS (registry.h), each always filled (at
 * worst with the reference), and the name of the C function in each slot, e.g.
 * names[BGE_SLOT_f32_gemm] = "bge_f32_gemm_8x48__avx512" (bge_kernel_name).              */
typedef struct bge_kernels {
    int isa;                               /* the bge_isa level this table was built for */
    const char *isa_name;                  /* "ref", "avx2", ...                         */
#define BGE_SLOT_FIELD_(slot, type) type slot;
    BGE_SLOTS(BGE_SLOT_FIELD_)
#undef BGE_SLOT_FIELD_
    const char *names[BGE_SLOT_COUNT];
} bge_kernels;

/* ---------------------------------------------------------------------------------------
 * Dispatch (dispatch.c)
 * ------------------------------------------------------------------------------------- */

/* What the CPU and OS offer, read once with CPUID and XGETBV: 1 or 0 per feature of
 * BGE_CPU_FEATURES (registry.h), and their count. */
typedef struct bge_cpu_features {
#define BGE_CPU_FIELD_(name) int name;
    BGE_CPU_FEATURES(BGE_CPU_FIELD_)
#undef BGE_CPU_FIELD_
} bge_cpu_features;
enum {
#define BGE_CPU_ENUM_(name) BGE_CPU_##name,
    BGE_CPU_FEATURES(BGE_CPU_ENUM_)
#undef BGE_CPU_ENUM_
    BGE_CPU_FEATURE_COUNT
};

/* Reads the CPU, the BGE_ISA cap, and builds every usable table. Idempotent and
 * thread-safe after the first call returns; call once before anything else. Returns
 * BGE_ERR_ARG when BGE_ISA holds an unknown name (the cap then stays at the best level). */
int bge_init(void);

/* The features bge_init() read; feature i's name ("avx2", ...) and value (NULL and 0 when
 * i is not in [0, BGE_CPU_FEATURE_COUNT)). */
const bge_cpu_features *bge_cpu(void);
const char *bge_cpu_feature_name(int i);
int bge_cpu_feature(int i);

/* The table for one level, or NULL when that level is not usable on this machine/build
 * (CPU, OS or compiler lacks it). Ignores the BGE_ISA cap: tests use it to run every
 * path the host has. */
const bge_kernels *bge_kernels_for(int isa);

/* The table bge_init() chose: the best usable level not above the BGE_ISA cap. */
const bge_kernels *bge_kernels_active(void);

/* 1 when the folder of that level was compiled into this build. */
int bge_isa_built(int isa);

/* The boundary's check of ragged offsets (check.c): offsets (n + 1) int32, 0 first,
 * non-decreasing, T last. BGE_OK with the longest and the shortest text's length in
 * *max_len, *min_len; BGE_ERR_ARG (nothing written) otherwise or when n < 1.            */
int bge_ragged_lengths(const int32_t *offsets, int n, int T, int *max_len, int *min_len);

/* The boundary's scans of values (check.c), so that its message can name the first bad one:
 * the first i < n with v[i] outside [lo, hi) (int32), or with v[i] == x (int8); -1 if none. */
ptrdiff_t bge_find_outside_i32(const int32_t *v, size_t n, int32_t lo, int32_t hi);
ptrdiff_t bge_find_s8(const int8_t *v, size_t n, int8_t x);

/* The level's name from BGE_LEVELS ("ref", "avx2", ...); NULL for an unknown level. */
const char *bge_isa_name(int isa);

/* The level a name (or an old alias, BGE_LEVEL_ALIASES) stands for; -1 for none. */
int bge_isa_from_name(const char *name);

/* The name of slot `slot` ("f32_gemm", ...), NULL when slot is not in [0, BGE_SLOT_COUNT). */
const char *bge_slot_name(int slot);

/* The name of the C function in slot `slot` of table t ("bge_f32_gemm_8x48__avx512"), NULL
 * when slot is out of range. */
const char *bge_kernel_name(const bge_kernels *t, int slot);

/* The level that BGE_ISA asked for (BGE_ISA_COUNT - 1 when unset). */
int bge_isa_cap(void);

/* ---------------------------------------------------------------------------------------
 * Loading (load.c): a checkpoint's matmul weights read, checked and packed in one call
 * ------------------------------------------------------------------------------------- */

/* n bytes for packed weights, starting on a 2 MiB boundary, with transparent huge pages
 * asked for where the OS has them (packing then faults a page per 2 MiB, not per 4 KiB).
 * NULL when n is 0 or the memory is not there. Free with bge_arena_free.                 */
void *bge_arena_alloc(size_t nbytes);
void bge_arena_free(void *p);

#define BGE_LOAD_MAX_PARTS 4 /* tensors stacked by rows into one weight (Q, K, V make 3) */

/* What became of one job (bge_load_job.status). */
enum {
    BGE_LOAD_OK = 0,
    BGE_LOAD_SHORT = 1,     /* the file ended inside part `part`                        */
    BGE_LOAD_NONFINITE = 2, /* part `part` holds NaN or infinity                        */
    BGE_LOAD_PACK = 3,      /* the quantiser or the packer refused the weight           */
    BGE_LOAD_IO = 4,        /* a read of part `part` failed (errno other than EINTR)    */
    BGE_LOAD_NOT_RUN = 5,   /* not run (set on every job before the loading starts)     */
    /* a malformed job (bge_load_packed then returns BGE_ERR_ARG and reads nothing):      */
    BGE_LOAD_BAD_PARTS = 6, /* nparts outside 1 .. BGE_LOAD_MAX_PARTS                    */
    BGE_LOAD_BAD_SHAPE = 7, /* N or K < 1, K > BGE_Q8_MAX_K with int8                    */
    BGE_LOAD_BAD_ROWS = 8,  /* a part of rows < 1 or at an offset < 0, or rows not sum N */
    BGE_LOAD_BAD_SLOT = 9,  /* out_off < 0, not a multiple of 64, or the slot past the arena */
    BGE_LOAD_BAD_KIND = 10, /* kind is none of BGE_LOAD_F32, _INT8, _BF16                 */
};

/* How a job's weight is packed (bge_load_job.kind). */
enum {
    BGE_LOAD_F32 = 0,  /* f32_pack, for the table's f32_gemm                            */
    BGE_LOAD_INT8 = 1, /* qs8_quantize_weights, then qs8_pack, for its qu8s8_gemm       */
    BGE_LOAD_BF16 = 2, /* bf16_pack (converts to bf16), for its bf16_gemm               */
};

/* One weight to load: W (N, K) float32, little-endian, stored in the file as nparts tensors
 * stacked by rows: part p is rows[p] rows (K floats each) at byte off[p]; the rows of the
 * parts sum to N. It is packed as `kind` says (BGE_LOAD_F32, _INT8, _BF16) into the arena
 * at byte out_off, a multiple of 64, taking bge_load_job_bytes(t, job) bytes there.      */
typedef struct bge_load_job {
    int64_t off[BGE_LOAD_MAX_PARTS];
    int32_t rows[BGE_LOAD_MAX_PARTS];
    int nparts, N, K, kind;
    int64_t out_off;
    int status, part; /* out: a BGE_LOAD_* code, and the part it concerns */
} bge_load_job;

/* Bytes a job's packed weight takes with table t; 0 on bad sizes.                       */
size_t bge_load_job_bytes(const bge_kernels *t, const bge_load_job *job);

/* Runs jobs[0 .. njobs) with table t: reads from fd (pread: the file offset is untouched),
 * checks, quantises and packs each into arena (arena_bytes bytes, 64-byte aligned), on up
 * to nthreads threads taking the jobs in turn, each with its own buffers of the largest
 * weight. Returns BGE_OK with each job's outcome in its status and part (a job that fails
 * leaves its slot undefined and the others run on), BGE_ERR_ARG when an argument or a job
 * is malformed (each malformed job's status then says how: BGE_LOAD_BAD_*; nothing is
 * read), BGE_ERR_MEMORY when the buffers cannot be allocated.
 * Slots that overlap are the caller's error.                                             */
int bge_load_packed(const bge_kernels *t, int fd, bge_load_job *jobs, int njobs, void *arena,
                    size_t arena_bytes, int nthreads);

#ifdef __cplusplus
}
#endif

#endif /* BGE_H */
