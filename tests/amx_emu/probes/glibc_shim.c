/* glibc_shim.c: the two C23 entry points of glibc >= 2.38 that bochscpu-python 0.4.0's
 * extension imports unversioned (its wheel is tagged manylinux_2_28 but was linked against
 * newer headers). On an older glibc the worker loads this library RTLD_GLOBAL before it
 * imports bochscpu. The C23 versions differ only in also reading "0b" binary numbers,
 * which Bochs's parameter parsing never passes here. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

unsigned long long __isoc23_strtoull(const char *s, char **end, int base) {
    return strtoull(s, end, base);
}

int __isoc23_sscanf(const char *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const int r = vsscanf(s, fmt, ap);
    va_end(ap);
    return r;
}
