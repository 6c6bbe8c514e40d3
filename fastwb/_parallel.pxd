# How kernels split a flat array over threads: part t of `parts` covers
# [part_start(n, t, parts), part_start(n, t + 1, parts)).  Inner boundaries
# are multiples of 16 items, so two threads never write the same cache line.

cdef inline Py_ssize_t part_start(Py_ssize_t n, Py_ssize_t t, Py_ssize_t parts) noexcept nogil:
    if t >= parts:
        return n
    return ((n * t) // parts) & ~(<Py_ssize_t>15)
