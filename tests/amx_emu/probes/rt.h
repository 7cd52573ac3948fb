/* rt.h: the few libc functions a probe's code may call, with no libc to link (the compiler
 * turns struct copies and some loops into memcpy/memset calls). String instructions, so the
 * compiler cannot turn these bodies back into calls to themselves. */
#ifndef BGE_AMX_EMU_RT_H
#define BGE_AMX_EMU_RT_H

#include <stddef.h>
#include <stdint.h>

void *memcpy(void *restrict d, const void *restrict s, size_t n) {
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}

void *memmove(void *d, const void *s, size_t n) {
    unsigned char *dp = (unsigned char *)d;
    const unsigned char *sp = (const unsigned char *)s;
    if (dp <= sp || dp >= sp + n) return memcpy(d, s, n);
    dp += n - 1;
    sp += n - 1;
    __asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(dp), "+S"(sp), "+c"(n) : : "memory");
    return d;
}

void *memset(void *d, int c, size_t n) {
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (size_t i = 0; i < n; i++) {
        __asm__ volatile("" ::: "memory"); /* keeps the loop a loop */
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

#endif
