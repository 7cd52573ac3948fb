/*
 * bge_internal.h: what the kernel folders share with dispatch.c; not part of the C API.
 *
 * Every folder csrc/<arch>/<isa>/ defines one overlay function that replaces the slots it
 * has kernels for. dispatch.c calls the overlays of the levels the build compiled (it is
 * told which with BGE_BUILT_<ISA> macros from setup.py) and the machine can run.
 */
#ifndef BGE_INTERNAL_H
#define BGE_INTERNAL_H

#include "bge.h"

/* The plain-C references (csrc/ref/). They are the truth the tests compare against and the
 * fallback every table starts from. Their contracts are the slot types in bge.h. */
size_t bge_f32_packed_size__ref(int K, int N);
int bge_f32_pack__ref(const float *w, int K, int N, float *packed);
int bge_f32_gemm__ref(const float *x, int M, int K, int N, const float *packed,
                      const float *bias, const float *res, float *out, int epilogue,
                      int nthreads);
int bge_f32_layernorm__ref(const float *x, const float *gamma, const float *beta, float eps,
                           float *out, int T, int C, int nthreads);
int bge_f32_softmax__ref(float *x, int R, int C);
int bge_f32_gelu__ref(float *x, size_t n);
size_t bge_f32_attention_scratch__ref(int max_len, int head_dim, int nthreads);
int bge_f32_attention__ref(const float *qkv, const int32_t *offsets, int n, int H, int heads,
                           float scale, float *out, float *scratch, size_t scratch_floats,
                           int nthreads);
int bge_f32_embed__ref(const int32_t *ids, const int32_t *offsets, int n, const float *word,
                       int vocab, const float *pos, int max_pos, const float *type, float *out,
                       int C);
int bge_f32_pool__ref(const float *h, const int32_t *offsets, int n, int C, int mode,
                      float *out);
int bge_f32_l2norm__ref(float *x, int n, int C);
double bge_f32_fma_loop__ref(long iters);

/* Checks shared by every implementation of a slot, so that the SIMD kernels reject exactly
 * what the reference rejects. Return BGE_OK or BGE_ERR_ARG. */
int bge_check_offsets(const int32_t *offsets, int n, int T_expected);
int bge_check_gemm_args(const float *x, int M, int K, int N, const float *packed,
                        const float *bias, const float *res, const float *out, int epilogue,
                        int nthreads);

/* The scalar GELU every kernel agrees on at the reference level: 0.5 x (1 + erf(x / sqrt 2)). */
float bge_gelu_erf_scalar(float x);

/* Overlays, one per ISA folder. */
void bge_overlay_avx2(bge_kernels *t);
void bge_overlay_avxvnni(bge_kernels *t);
void bge_overlay_avx512(bge_kernels *t);
void bge_overlay_vnni(bge_kernels *t);
void bge_overlay_amx(bge_kernels *t);

#endif /* BGE_INTERNAL_H */
