/*
 * dispatch.c: reads the CPU once, then fills one kernel table per usable ISA level.
 *
 * The slots and levels are listed once, in registry.h.
 * Level L is usable when (1) setup.py compiled its folder (it defines BGE_BUILT_<ID>),
 * (2) CPUID reports its instructions and (3) XCR0 shows the OS saves its registers (on
 * Linux/AArch64, (2) and (3) are the HWCAP bits of getauxval). The table
 * of a usable level is the table of the best usable level below it, overlaid with that
 * level's kernels; level 0 is the plain-C reference. bge_kernels_active() is the best usable
 * level at or below the BGE_ISA cap.
 */
#include <stddef.h>
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
#if defined(__aarch64__) && defined(__linux__)
#define BGE_ARM_LINUX 1
#include <sys/auxv.h>
/* The HWCAP bits (Linux's arch/arm64 uapi hwcap.h), in case the libc headers predate them */
#define BGE_HWCAP_ASIMD (1UL << 1)
#define BGE_HWCAP_ASIMDDP (1UL << 20)
#define BGE_HWCAP2_I8MM (1UL << 13)
#define BGE_HWCAP2_BF16 (1UL << 14)
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
#endif

static const char *const isa_names[BGE_ISA_COUNT] = {
#define LEVEL_NAME_(id, name) [BGE_ISA_##id] = #name,
    BGE_LEVELS(LEVEL_NAME_)
#undef LEVEL_NAME_
};

static const char *const slot_names[BGE_SLOT_COUNT] = {
#define SLOT_NAME_(slot, type) [BGE_SLOT_##slot] = #slot,
    BGE_SLOTS(SLOT_NAME_)
#undef SLOT_NAME_
};

/* The overlay of each level whose folder setup.py compiled (NULL: not built). */
static void (*const overlays[BGE_ISA_COUNT])(bge_kernels *t) = {
#ifdef BGE_BUILT_AVX2
    [BGE_ISA_AVX2] = bge_overlay_avx2,
#endif
#ifdef BGE_BUILT_AVXVNNI
    [BGE_ISA_AVXVNNI] = bge_overlay_avxvnni,
#endif
#ifdef BGE_BUILT_AVX512
    [BGE_ISA_AVX512] = bge_overlay_avx512,
#endif
#ifdef BGE_BUILT_AVX512VNNI
    [BGE_ISA_AVX512VNNI] = bge_overlay_avx512vnni,
#endif
#ifdef BGE_BUILT_AVX512BF16
    [BGE_ISA_AVX512BF16] = bge_overlay_avx512bf16,
#endif
#ifdef BGE_BUILT_AMX
    [BGE_ISA_AMX] = bge_overlay_amx,
#endif
#ifdef BGE_BUILT_NEON
    [BGE_ISA_NEON] = bge_overlay_neon,
#endif
#ifdef BGE_BUILT_DOTPROD
    [BGE_ISA_DOTPROD] = bge_overlay_dotprod,
#endif
#ifdef BGE_BUILT_I8MM
    [BGE_ISA_I8MM] = bge_overlay_i8mm,
#endif
#ifdef BGE_BUILT_NEONBF16
    [BGE_ISA_NEONBF16] = bge_overlay_neonbf16,
#endif
};

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
#elif defined(BGE_ARM_LINUX)
/* The kernel's view of the CPU: a HWCAP bit is set only when the CPU has the feature and
 * the kernel saves the registers it uses (the counterpart of XCR0 on x86). */
static void read_cpu(bge_cpu_features *f) {
    memset(f, 0, sizeof *f);
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    f->asimd = (hw & BGE_HWCAP_ASIMD) != 0;
    f->asimddp = (hw & BGE_HWCAP_ASIMDDP) != 0;
    f->i8mm = (hw2 & BGE_HWCAP2_I8MM) != 0;
    f->arm_bf16 = (hw2 & BGE_HWCAP2_BF16) != 0;
}
#else
static void read_cpu(bge_cpu_features *f) { memset(f, 0, sizeof *f); }
#endif

int bge_isa_built(int isa) {
    return isa == BGE_ISA_REF || (isa > 0 && isa < BGE_ISA_COUNT && overlays[isa] != NULL);
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
    case BGE_ISA_AVX512VNNI: return avx512 && f->avx512_vnni;
    case BGE_ISA_AVX512BF16: return avx512 && f->avx512_bf16;
    case BGE_ISA_AMX:
#ifdef BGE_BUILT_AMX
        /* the OS must also grant the tile data state to this process (Linux asks for it);
         * every AMX CPU has AMX-BF16 and AVX512-BF16 beside AMX-INT8 */
        return avx512 && f->avx512_vnni && f->avx512_bf16 && f->os_amx && f->amx_tile &&
               f->amx_int8 && f->amx_bf16 && bge_amx_request();
#else
        return 0;
#endif
    case BGE_ISA_NEON: return f->asimd;
    case BGE_ISA_DOTPROD: return f->asimd && f->asimddp;
    case BGE_ISA_I8MM: return f->asimd && f->asimddp && f->i8mm;
    case BGE_ISA_NEONBF16: return f->asimd && f->arm_bf16;
    default: return 0;
    }
}

/* Every slot on its plain-C reference bge_<slot>__ref. */
static void fill_ref(bge_kernels *t) {
    memset(t, 0, sizeof *t);
#define REF_(slot, type) BGE_SET(t, slot, bge_##slot##__ref);
    BGE_SLOTS(REF_)
#undef REF_
}

int bge_isa_from_name(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < BGE_ISA_COUNT; i++)
        if (strcmp(s, isa_names[i]) == 0) return i;
#define ALIAS_(old, id) if (strcmp(s, #old) == 0) return BGE_ISA_##id;
    BGE_LEVEL_ALIASES(ALIAS_)
#undef ALIAS_
    return -1;
}

/* Reads BGE_ISA into `cap`; an unknown name leaves the cap at the top and is reported. */
static int read_cap(void) {
    const char *s = getenv("BGE_ISA");
    cap = BGE_ISA_COUNT - 1;
    if (!s || !*s) return BGE_OK;
    const int isa = bge_isa_from_name(s);
    if (isa < 0) return BGE_ERR_ARG;
    cap = isa;
    return BGE_OK;
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
        overlays[isa](&tables[isa]);
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

static const char *const feature_names[BGE_CPU_FEATURE_COUNT] = {
#define FEATURE_NAME_(name) #name,
    BGE_CPU_FEATURES(FEATURE_NAME_)
#undef FEATURE_NAME_
};

const char *bge_cpu_feature_name(int i) {
    return i >= 0 && i < BGE_CPU_FEATURE_COUNT ? feature_names[i] : NULL;
}

int bge_cpu_feature(int i) {
    static const size_t at[BGE_CPU_FEATURE_COUNT] = {
#define FEATURE_AT_(name) offsetof(bge_cpu_features, name),
        BGE_CPU_FEATURES(FEATURE_AT_)
#undef FEATURE_AT_
    };
    bge_init();
    return i >= 0 && i < BGE_CPU_FEATURE_COUNT ? *(const int *)((const char *)&cpu + at[i]) : 0;
}

const char *bge_slot_name(int slot) {
    return slot >= 0 && slot < BGE_SLOT_COUNT ? slot_names[slot] : NULL;
}

const char *bge_kernel_name(const bge_kernels *t, int slot) {
    return t && slot >= 0 && slot < BGE_SLOT_COUNT ? t->names[slot] : NULL;
}

int bge_isa_cap(void) {
    bge_init();
    return cap;
}
