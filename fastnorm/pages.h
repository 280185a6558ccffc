/* Page-aligned memory for the buffer cache (_buffers.pyx): large outputs
 * and kernel scratch come from here, with transparent huge pages requested
 * on Linux (fewer page faults on first touch; a hint only); and the spin
 * lock that guards the cache's slots (taken without the GIL). */
#ifndef FASTNORM_PAGES_H
#define FASTNORM_PAGES_H

#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

static void* fastnorm_alloc_pages(size_t nbytes) {
    void* p = NULL;
    if (posix_memalign(&p, 4096, nbytes) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, nbytes, MADV_HUGEPAGE);
#endif
    return p;
}

static inline void fastnorm_lock(char* lock) {
    while (__atomic_test_and_set(lock, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(lock, __ATOMIC_RELAXED)) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
}

static inline void fastnorm_unlock(char* lock) {
    __atomic_clear(lock, __ATOMIC_RELEASE);
}

#endif /* FASTNORM_PAGES_H */
