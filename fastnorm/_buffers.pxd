cimport numpy as cnp

cdef object empty_array(int nd, cnp.npy_intp* dims, int typenum)
