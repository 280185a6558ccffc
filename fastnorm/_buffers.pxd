cimport numpy as cnp

cdef object empty_array(int nd, cnp.npy_intp* dims, int typenum)
cdef void* scratch_alloc(size_t nbytes) noexcept nogil
cdef void scratch_free(void* p) noexcept nogil
