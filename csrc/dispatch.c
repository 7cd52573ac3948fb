/*
 * dispatch.c: reads the CPU once, then fills one kernel table per usable ISA level.
 *
 * Level L is usable when (1) setup.py compiled its folder (it defines BGE_BUILT_<ISA>),
 * (2) CPUID reports its instructions and (3) XCR0 shows the OS saves its registers. The table
 * of a usable level is the table of the best usable level below it, overlaid with that
 * level's kernels; level 0 is the plain-C reference. bge_kernels_active() is the best usable
 * level at or below the BGE_ISA cap.
 */
#include <stdlib.h>
#include <string.h>
#if defined(_WIN32)
#include <windows.h>
#else
#include <pthread.h>
#endif

#include "bge_internal.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define BGE_X86 1
#include <cpuid.h>
#endif

static const char *const isa_names[BGE_ISA_COUNT] = {"ref",    "avx2", "avxvnni",
                                                     "avx512", "vnni", "amx"};

static bge_cpu_features cpu;
static bge_kernels tables[BGE_ISA_COUNT];
static int usable[BGE_ISA_COUNT];
static int cap = BGE_ISA_COUNT - 1;
static int active = BGE_ISA_REF;
static int init_status = BGE_OK;

#ifdef BGE_X86
static unsigned long long read_xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void read_cpu(bge_cpu_features *f) {
    unsigned int a, b, c, d, max_leaf;
    memset(f, 0, sizeof *f);
    max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 1) return;
    __cpuid(1, a, b, c, d);
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    f->fma = (c >> 12) & 1;
    if (osxsave) {
        const unsigned long long xcr0 = read_xcr0();
        f->os_avx = avx && (xcr0 & 0x6) == 0x6;
        f->os_avx512 = f->os_avx && (xcr0 & 0xE0) == 0xE0;
        f->os_amx = (xcr0 & 0x60000) == 0x60000;
    }
    if (max_leaf < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned int max_sub = a;
    f->avx2 = (b >> 5) & 1;
    f->avx512f = (b >> 16) & 1;
    f->avx512dq = (b >> 17) & 1;
    f->avx512bw = (b >> 30) & 1;
    f->avx512vl = (b >> 31) & 1;
    f->avx512_vnni = (c >> 11) & 1;
    f->amx_bf16 = (d >> 22) & 1;
    f->avx512_fp16 = (d >> 23) & 1;
    f->amx_tile = (d >> 24) & 1;
    f->amx_int8 = (d >> 25) & 1;
    if (max_sub >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f->avx_vnni = (a >> 4) & 1;
        f->avx512_bf16 = (a >> 5) & 1;
    }
}
#else
static void read_cpu(bge_cpu_features *f) { memset(f, 0, sizeof *f); }
#endif

int bge_isa_built(int isa) {
    switch (isa) {
    case BGE_ISA_REF: return 1;
#ifdef BGE_BUILT_AVX2
    case BGE_ISA_AVX2: return 1;
#endif
#ifdef BGE_BUILT_AVXVNNI
    case BGE_ISA_AVXVNNI: return 1;
#endif
#ifdef BGE_BUILT_AVX512
    case BGE_ISA_AVX512: return 1;
#endif
#ifdef BGE_BUILT_VNNI
    case BGE_ISA_VNNI: return 1;
#endif
#ifdef BGE_BUILT_AMX
    case BGE_ISA_AMX: return 1;
#endif
    default: return 0;
    }
}

/* Whether this CPU and OS can run the instructions of a level (whatever the build has). */
static int cpu_runs(int isa) {
    const bge_cpu_features *f = &cpu;
    const int avx2 = f->os_avx && f->avx2 && f->fma;
    const int avx512 = avx2 && f->os_avx512 && f->avx512f && f->avx512bw && f->avx512dq &&
                       f->avx512vl;
    switch (isa) {
    case BGE_ISA_REF: return 1;
    case BGE_ISA_AVX2: return avx2;
    case BGE_ISA_AVXVNNI: return avx2 && f->avx_vnni;
    case BGE_ISA_AVX512: return avx512;
    case BGE_ISA_VNNI: return avx512 && f->avx512_vnni;
    case BGE_ISA_AMX:
#ifdef BGE_BUILT_AMX
        /* the OS must also grant the tile data state to this process (Linux asks for it) */
        return avx512 && f->avx512_vnni && f->os_amx && f->amx_tile && f->amx_int8 &&
               bge_amx_request();
#else
        return 0;
#endif
    default: return 0;
    }
}

static void fill_ref(bge_kernels *t) {
    memset(t, 0, sizeof *t);
    t->f32_packed_size = bge_f32_packed_size__ref;
    t->f32_pack = bge_f32_pack__ref;
    t->f32_gemm = bge_f32_gemm__ref;
    t->f32_gemm_name = "bge_f32_gemm__ref";
    t->f32_layernorm = bge_f32_layernorm__ref;
    t->f32_layernorm_name = "bge_f32_layernorm__ref";
    t->f32_softmax = bge_f32_softmax__ref;
    t->f32_softmax_name = "bge_f32_softmax__ref";
    t->f32_gelu = bge_f32_gelu__ref;
    t->f32_gelu_name = "bge_f32_gelu__ref";
    t->f32_attention_scratch = bge_f32_attention_scratch__ref;
    t->f32_attention = bge_f32_attention__ref;
    t->f32_attention_name = "bge_f32_attention__ref";
    t->f32_embed = bge_f32_embed__ref;
    t->f32_embed_name = "bge_f32_embed__ref";
    t->f32_pool = bge_f32_pool__ref;
    t->f32_pool_name = "bge_f32_pool__ref";
    t->f32_l2norm = bge_f32_l2norm__ref;
    t->f32_l2norm_name = "bge_f32_l2norm__ref";
    t->f32_fma_loop = bge_f32_fma_loop__ref;
    t->qu8_quantize = bge_qu8_quantize__ref;
    t->qu8_quantize_name = "bge_qu8_quantize__ref";
    t->qs8_packed_size = bge_qs8_packed_size__ref;
    t->qs8_pack = bge_qs8_pack__ref;
    t->qs8_pack_name = "bge_qs8_pack__ref";
    t->qu8s8_gemm = bge_qu8s8_gemm__ref;
    t->qu8s8_gemm_name = "bge_qu8s8_gemm__ref";
    t->qu8s8_gemm_i32 = bge_qu8s8_gemm_i32__ref;
    t->qu8s8_gemm_i32_name = "bge_qu8s8_gemm_i32__ref";
    t->qu8s8_dot_loop = bge_qu8s8_dot_loop__ref;
    t->qs8_quantize_weights = bge_qs8_quantize_weights;
    t->qs8_quantize_weights_name = "bge_qs8_quantize_weights__ref";
}

static void overlay(int isa, bge_kernels *t) {
    switch (isa) {
#ifdef BGE_BUILT_AVX2
    case BGE_ISA_AVX2: bge_overlay_avx2(t); break;
#endif
#ifdef BGE_BUILT_AVXVNNI
    case BGE_ISA_AVXVNNI: bge_overlay_avxvnni(t); break;
#endif
#ifdef BGE_BUILT_AVX512
    case BGE_ISA_AVX512: bge_overlay_avx512(t); break;
#endif
#ifdef BGE_BUILT_VNNI
    case BGE_ISA_VNNI: bge_overlay_vnni(t); break;
#endif
#ifdef BGE_BUILT_AMX
    case BGE_ISA_AMX: bge_overlay_amx(t); break;
#endif
    default: (void)t; break;
    }
}

/* Reads BGE_ISA into `cap`; an unknown name leaves the cap at the top and is reported. */
static int read_cap(void) {
    const char *s = getenv("BGE_ISA");
    cap = BGE_ISA_COUNT - 1;
    if (!s || !*s) return BGE_OK;
    for (int i = 0; i < BGE_ISA_COUNT; i++)
        if (strcmp(s, isa_names[i]) == 0) {
            cap = i;
            return BGE_OK;
        }
    return BGE_ERR_ARG;
}

static void init_once(void) {
    read_cpu(&cpu);
    init_status = read_cap();
    int below = BGE_ISA_REF;
    fill_ref(&tables[BGE_ISA_REF]);
    tables[BGE_ISA_REF].isa = BGE_ISA_REF;
    tables[BGE_ISA_REF].isa_name = isa_names[BGE_ISA_REF];
    usable[BGE_ISA_REF] = 1;
    active = BGE_ISA_REF;
    for (int isa = BGE_ISA_REF + 1; isa < BGE_ISA_COUNT; isa++) {
        if (!bge_isa_built(isa) || !cpu_runs(isa)) continue;
        tables[isa] = tables[below];
        tables[isa].isa = isa;
        tables[isa].isa_name = isa_names[isa];
        overlay(isa, &tables[isa]);
        usable[isa] = 1;
        below = isa;
        if (isa <= cap) active = isa;
    }
}

#if defined(_WIN32)
static INIT_ONCE once = INIT_ONCE_STATIC_INIT;
static BOOL CALLBACK init_once_win(PINIT_ONCE o, PVOID p, PVOID *c) {
    (void)o; (void)p; (void)c;
    init_once();
    return TRUE;
}
int bge_init(void) {
    InitOnceExecuteOnce(&once, init_once_win, NULL, NULL);
    return init_status;
}
#else
static pthread_once_t once = PTHREAD_ONCE_INIT;
int bge_init(void) {
    pthread_once(&once, init_once);
    return init_status;
}
#endif

const bge_cpu_features *bge_cpu(void) {
    bge_init();
    return &cpu;
}

const bge_kernels *bge_kernels_for(int isa) {
    bge_init();
    if (isa < 0 || isa >= BGE_ISA_COUNT || !usable[isa]) return NULL;
    return &tables[isa];
}

const bge_kernels *bge_kernels_active(void) {
    bge_init();
    return &tables[active];
}

const char *bge_isa_name(int isa) {
    return isa >= 0 && isa < BGE_ISA_COUNT ? isa_names[isa] : NULL;
}

int bge_isa_cap(void) {
    bge_init();
    return cap;
}
