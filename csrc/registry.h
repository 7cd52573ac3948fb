/*
 * registry.h: the one list of kernel slots and the one list of ISA levels.
 *
 * Everything else is generated from these lists: the bge_kernels struct and the
 * BGE_SLOT_<slot> indices (bge.h), the reference fill and the slot names (dispatch.c,
 * which Python reads through bge_slot_name / bge_kernel_name: Kernels.names), the bge_isa
 * enum, the level names BGE_ISA accepts and the overlay declarations (bge_internal.h);
 * and the CPU features dispatch reads (bge_cpu_features, cpu_info()).
 *
 * Adding a slot: one line X(slot, type) in BGE_SLOTS below (its type a function-pointer
 * typedef in bge.h, with the contract in a comment), and its reference
 * bge_<slot>__ref in csrc/ref/ (declared in bge_internal.h), which every table starts
 * from. SIMD levels fill it in their overlay with BGE_SET. Python calls it once
 * _kernels.pxd declares the field and _kernels.pyx wraps it.
 *
 * Adding a level: one line X(ID, name) in BGE_LEVELS (in the order the dispatch should
 * try them, lowest first); a folder csrc/<arch>/<name>/ holding its kernels and
 * `void bge_overlay_<name>(bge_kernels *t)`, which puts them into their slots; its entry
 * in setup.py's ISA_FOLDERS (the flags it is compiled with; setup.py then defines
 * BGE_BUILT_<ID>); its line in dispatch.c's `overlays` table and the CPU test in
 * `cpu_runs`. A level never built is never offered.
 */
#ifndef BGE_REGISTRY_H
#define BGE_REGISTRY_H

/* X(slot, type): every kernel slot of a table, in table order. */
#define BGE_SLOTS(X)                                     \
    X(f32_packed_size, bge_f32_packed_size_fn)           \
    X(f32_pack, bge_f32_pack_fn)                         \
    X(f32_gemm, bge_f32_gemm_fn)                         \
    X(f32_layernorm, bge_f32_layernorm_fn)               \
    X(f32_softmax, bge_f32_softmax_fn)                   \
    X(f32_gelu, bge_f32_gelu_fn)                         \
    X(f32_attention_scratch, bge_f32_attention_scratch_fn) \
    X(f32_attention, bge_f32_attention_fn)               \
    X(f32_embed, bge_f32_embed_fn)                       \
    X(f32_pool, bge_f32_pool_fn)                         \
    X(f32_l2norm, bge_f32_l2norm_fn)                     \
    X(f32_fma_loop, bge_f32_fma_loop_fn)                 \
    X(qu8_quantize, bge_qu8_quantize_fn)                 \
    X(qs8_quantize_weights, bge_qs8_quantize_weights_fn) \
    X(qs8_packed_size, bge_qs8_packed_size_fn)           \
    X(qs8_pack, bge_qs8_pack_fn)                         \
    X(qu8s8_gemm, bge_qu8s8_gemm_fn)                     \
    X(qu8s8_gemm_i32, bge_qu8s8_gemm_i32_fn)             \
    X(qu8s8_dot_loop, bge_qu8s8_dot_loop_fn)             \
    X(bf16_packed_size, bge_bf16_packed_size_fn)         \
    X(bf16_pack, bge_bf16_pack_fn)                       \
    X(bf16_gemm_scratch, bge_bf16_gemm_scratch_fn)       \
    X(bf16_gemm, bge_bf16_gemm_fn)                       \
    X(bf16_dot_loop, bge_bf16_dot_loop_fn)

/* X(ID, name): every ISA level, lowest first. x86 and ARM levels share the one ladder: on a
 * machine only its own architecture's levels are ever usable, so each usable level still
 * overlays the best usable level below it (ref -> neon -> dotprod -> i8mm -> neonbf16 on
 * AArch64; neonbf16 needs only FEAT_BF16 and takes whichever int8 level is there).
 * `name` is what BGE_ISA, Kernels(isa) and
 * cpu_info() say, the suffix of the level's kernels (bge_<op>__<name>) and of its overlay
 * (bge_overlay_<name>); BGE_ISA_<ID> is its bge_isa value. */
#define BGE_LEVELS(X)          \
    X(REF, ref)                \
    X(AVX2, avx2)              \
    X(AVXVNNI, avxvnni)        \
    X(AVX512, avx512)          \
    X(AVX512VNNI, avx512vnni)  \
    X(AVX512BF16, avx512bf16)  \
    X(AMX, amx)                \
    X(NEON, neon)              \
    X(DOTPROD, dotprod)        \
    X(I8MM, i8mm)              \
    X(NEONBF16, neonbf16)

/* X(feature): what dispatch.c reads from CPUID (and, os_*, from XCR0: whether the OS saves
 * the registers) into bge_cpu_features; cpu_info() reports them by these names.
 *   os_avx: XCR0 has SSE and AVX state (bits 1, 2); os_avx512: opmask, ZMM_Hi256, Hi16_ZMM
 *   state (bits 5-7); os_amx: XTILECFG and XTILEDATA state (bits 17, 18).
 * On Linux/AArch64 the last four come from getauxval (HWCAP_ASIMD, HWCAP_ASIMDDP,
 * HWCAP2_I8MM, HWCAP2_BF16), set only where the kernel also saves the registers.      */
#define BGE_CPU_FEATURES(X)                                                              \
    X(avx2) X(fma) X(avx512f) X(avx512bw) X(avx512dq) X(avx512vl) X(avx512_vnni)         \
    X(avx_vnni) X(avx512_bf16) X(avx512_fp16) X(amx_tile) X(amx_int8) X(amx_bf16)       \
    X(os_avx) X(os_avx512) X(os_amx)                                                     \
    X(asimd) X(asimddp) X(i8mm) X(arm_bf16)

/* X(old, ID): former spellings of a level's name that BGE_ISA and Kernels(isa) accept. */
#define BGE_LEVEL_ALIASES(X) X(vnni, AVX512VNNI)

#endif /* BGE_REGISTRY_H */
