# The one OpenMP shim: every OpenMP call in fastnorm is cimported from here,
# and parallel.h (see its header) makes one-thread regions cost a call.
# It compiles without OpenMP too, where it reports a single thread.
cdef extern from "parallel.h":
    const int FASTNORM_HAVE_OPENMP
    const int FASTNORM_SERIAL_FASTPATH
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int fastnorm_parallel_runtime_found() noexcept nogil
