/* Page-aligned memory for the output-buffer cache (_buffers.pyx): large
 * outputs come from here, with transparent huge pages requested on Linux
 * (fewer page faults on first touch; a hint only). */
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

#endif /* FASTNORM_PAGES_H */
