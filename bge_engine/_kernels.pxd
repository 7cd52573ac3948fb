# Declarations of the C API (csrc/bge.h) for the Cython boundary. Every function and every
# function pointer is nogil: the wrappers in _kernels.pyx release the GIL around each call.

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t


cdef extern from "bge.h" nogil:
    enum:
        BGE_OK
        BGE_ERR_ARG
        BGE_ERR_SCRATCH
        BGE_ERR_PACKING
        BGE_ERR_MEMORY

    enum:
        BGE_EPI_BIAS
        BGE_EPI_BIAS_GELU
        BGE_EPI_BIAS_RESIDUAL

    enum:
        BGE_POOL_CLS
        BGE_POOL_MEAN

    enum:
        BGE_ISA_REF
        BGE_ISA_COUNT
        BGE_SLOT_COUNT
        BGE_CPU_FEATURE_COUNT

    enum:
        BGE_Q8_MAX_K
        BGE_Q8_GROUP

    # The fields the wrappers call; every slot is listed once, in csrc/registry.h.
    ctypedef struct bge_kernels:
        int isa
        const char *isa_name
        size_t (*f32_packed_size)(int K, int N) noexcept nogil
        int (*f32_pack)(const float *w, int K, int N, float *packed) noexcept nogil
        int (*f32_gemm)(const float *x, int M, int K, int N, const float *packed,
                        const float *bias, const float *res, float *out, int epilogue,
                        int nthreads) noexcept nogil
        int (*f32_layernorm)(const float *x, const float *gamma, const float *beta, float eps,
                             float *out, int T, int C, int nthreads) noexcept nogil
        int (*f32_softmax)(float *x, int R, int C) noexcept nogil
        int (*f32_gelu)(float *x, size_t n) noexcept nogil
        size_t (*f32_attention_scratch)(int max_len, int head_dim, int nthreads) noexcept nogil
        int (*f32_attention)(const float *qkv, const int32_t *offsets, int n, int H, int heads,
                             float scale, float *out, float *scratch, size_t scratch_floats,
                             int nthreads) noexcept nogil
        int (*f32_embed)(const int32_t *ids, const int32_t *offsets, int n, const float *word,
                         int vocab, const float *pos, int max_pos, const float *type,
                         float *out, int C) noexcept nogil
        int (*f32_pool)(const float *h, const int32_t *offsets, int n, int C, int mode,
                        float *out) noexcept nogil
        int (*f32_l2norm)(float *x, int n, int C) noexcept nogil
        double (*f32_fma_loop)(long iters) noexcept nogil
        int (*qu8_quantize)(const float *x, int M, int K, uint8_t *q, float *scale,
                            int32_t *zp, int nthreads) noexcept nogil
        size_t (*qs8_packed_size)(int K, int N) noexcept nogil
        int (*qs8_pack)(const int8_t *w, const float *w_scale, int K, int N,
                        void *packed) noexcept nogil
        int (*qu8s8_gemm)(const uint8_t *q, const float *scale, const int32_t *zp, int M,
                          int K, int N, const void *packed, const float *bias,
                          const float *res, float *out, int epilogue,
                          int nthreads) noexcept nogil
        int (*qu8s8_gemm_i32)(const uint8_t *q, int M, int K, int N, const void *packed,
                              int32_t *acc, int nthreads) noexcept nogil
        double (*qu8s8_dot_loop)(long iters) noexcept nogil
        int (*qs8_quantize_weights)(const float *w, int N, int K, int8_t *w_s8,
                                    float *w_scale, int nthreads) noexcept nogil
        size_t (*bf16_packed_size)(int K, int N) noexcept nogil
        int (*bf16_pack)(const float *w, int K, int N, void *packed) noexcept nogil
        size_t (*bf16_gemm_scratch)(int M, int K) noexcept nogil
        int (*bf16_gemm)(const float *x, int M, int K, int N, const void *packed,
                         const float *bias, const float *res, float *out, int epilogue,
                         void *scratch, size_t scratch_bytes, int nthreads) noexcept nogil
        double (*bf16_dot_loop)(long iters) noexcept nogil

    int bge_init()
    int bge_cpu_feature(int i)
    const char *bge_cpu_feature_name(int i)
    const bge_kernels *bge_kernels_for(int isa)
    const bge_kernels *bge_kernels_active()
    int bge_isa_built(int isa)
    const char *bge_isa_name(int isa)
    int bge_isa_cap()
    int bge_isa_from_name(const char *name)
    int bge_ragged_lengths(const int32_t *offsets, int n, int T, int *max_len, int *min_len)
    Py_ssize_t bge_find_outside_i32(const int32_t *v, size_t n, int32_t lo, int32_t hi)
    Py_ssize_t bge_find_s8(const int8_t *v, size_t n, int8_t x)
    const char *bge_slot_name(int slot)
    const char *bge_kernel_name(const bge_kernels *t, int slot)
    void bge_bf16_from_f32(const float *x, size_t n, uint16_t *out)

    # loading (csrc/load.c)
    void *bge_arena_alloc(size_t nbytes)
    void bge_arena_free(void *p)

    enum:
        BGE_LOAD_MAX_PARTS
        BGE_LOAD_OK
        BGE_LOAD_SHORT
        BGE_LOAD_NONFINITE
        BGE_LOAD_PACK
        BGE_LOAD_IO
        BGE_LOAD_NOT_RUN
        BGE_LOAD_BAD_PARTS
        BGE_LOAD_BAD_SHAPE
        BGE_LOAD_BAD_ROWS
        BGE_LOAD_BAD_SLOT
        BGE_LOAD_BAD_KIND
        BGE_LOAD_F32
        BGE_LOAD_INT8
        BGE_LOAD_BF16

    ctypedef struct bge_load_job:
        int64_t off[BGE_LOAD_MAX_PARTS]
        int32_t rows[BGE_LOAD_MAX_PARTS]
        int nparts, N, K, kind
        int64_t out_off
        int status, part

    size_t bge_load_job_bytes(const bge_kernels *t, const bge_load_job *job)
    int bge_load_packed(const bge_kernels *t, int fd, bge_load_job *jobs, int njobs, void *arena,
                        size_t arena_bytes, int nthreads)
