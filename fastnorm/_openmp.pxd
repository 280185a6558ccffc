# The one OpenMP shim: every OpenMP call in fastnorm is cimported from here.
# It compiles without OpenMP too, where it reports a single thread.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTNORM_HAVE_OPENMP 1
    #else
    #define FASTNORM_HAVE_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_thread_num(void) { return 0; }
    static int omp_get_num_threads(void) { return 1; }
    #endif
    """
    const int FASTNORM_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
