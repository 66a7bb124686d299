/* memset, memcpy and memmove for kernels built without a C library (both ABIs include this). */
#ifndef CCGSC_MEM_H
#define CCGSC_MEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef CCGSC_HOST_LIBC
/* Native reference builds (benchmarks) link the host C library instead. */
#include <string.h>
#else
/* The compiler may lower loops and struct copies to these; there is no libc to provide them. */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);

__attribute__((no_builtin("memset"))) void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

__attribute__((no_builtin("memcpy"))) void *memcpy(void *restrict dst, const void *restrict src,
                                                   size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
    return dst;
}

__attribute__((no_builtin("memmove"))) void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        d += n;
        s += n;
        while (n--) *--d = *--s;
    }
    return dst;
}
#endif /* CCGSC_HOST_LIBC */

#endif /* CCGSC_MEM_H */
