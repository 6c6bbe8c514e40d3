# Kernels of magnitude pruning: radix selection of order statistics of |w|
# (csrc/fwb_select_impl.h explains the method) and the passes that write
# masks and pruned weights.  Kernel room: fastwb/prune.py has validated the
# arrays and turns the selected order statistics into NumPy's percentile.
#
# Every pass splits the flat array into n_threads contiguous parts.  Counts
# are integers and minima are exact, so combining the parts' results in part
# order gives the same answer for any thread count.

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastwb._parallel cimport part_start

cdef extern from "fwb_select.h" nogil:
    enum:
        FWB_RADIX
    void fwb_key_histogram_f32(const float *w, Py_ssize_t n, uint32_t prefix, uint32_t prefix_mask,
                               int shift, int64_t *hist, uint32_t above, int64_t *n_above)
    void fwb_key_histogram_f64(const double *w, Py_ssize_t n, uint64_t prefix, uint64_t prefix_mask,
                               int shift, int64_t *hist, uint64_t above, int64_t *n_above)
    uint32_t fwb_min_key_above_f32(const float *w, Py_ssize_t n, uint32_t key)
    uint64_t fwb_min_key_above_f64(const double *w, Py_ssize_t n, uint64_t key)
    float fwb_from_key_f32(uint32_t key)
    double fwb_from_key_f64(uint64_t key)
    int64_t fwb_prune_threshold_f32(const float *w, float *out, unsigned char *mask, Py_ssize_t n, float thr)
    int64_t fwb_prune_threshold_f64(const double *w, double *out, unsigned char *mask, Py_ssize_t n, double thr)
    int64_t fwb_mask_exact_k_f32(const float *w, unsigned char *mask, Py_ssize_t n, uint32_t cut, int64_t ties)
    int64_t fwb_mask_exact_k_f64(const double *w, unsigned char *mask, Py_ssize_t n, uint64_t cut, int64_t ties)
    int64_t fwb_count_key_f32(const float *w, Py_ssize_t n, uint32_t cut)
    int64_t fwb_count_key_f64(const double *w, Py_ssize_t n, uint64_t cut)
    void fwb_apply_mask_f32(float *w, const unsigned char *mask, Py_ssize_t n)
    void fwb_apply_mask_f64(double *w, const unsigned char *mask, Py_ssize_t n)

# digit positions of the radix selection, most significant first
cdef int[3] SHIFTS_32 = [21, 10, 0]
cdef int[6] SHIFTS_64 = [53, 42, 31, 20, 9, 0]


def select_abs(const floating[::1] w,     # IN  (n,), n >= 1
               Py_ssize_t k,              # rank, 0 <= k < n
               int64_t[:, ::1] hist,      # workspace (n_threads, FWB_RADIX)
               int64_t[::1] extra,        # workspace (n_threads,)
               int n_threads):
    """The k-th smallest |w| (0-based) by radix selection.

    Returns (value, key, n_less, n_equal, n_nan, next_value): the value as a
    Python float, its key (bit pattern of |value|), how many |w| are smaller
    and how many equal to it, how many elements are NaN (NaN sorts last), and
    the next larger |w| when the last pass saw it (it almost always does:
    the last pass histograms every key that shares all but the lowest 11
    bits), else None."""
    cdef Py_ssize_t n = w.shape[0], t, lo, hi, b, b2
    cdef int level, levels = 3 if floating is float else 6, shift
    cdef uint64_t prefix = 0, prefix_mask = 0, digit_mask = FWB_RADIX - 1
    cdef uint64_t above = 0x7F800000 if floating is float else 0x7FF0000000000000
    cdef int64_t cum, count, n_nan = 0, rank = k, equal = 0
    cdef const floating *wp = &w[0]
    for level in range(levels):
        shift = SHIFTS_32[level] if floating is float else SHIFTS_64[level]
        with nogil:
            for t in prange(n_threads, schedule="static", num_threads=n_threads):
                lo = part_start(n, t, n_threads)
                hi = part_start(n, t + 1, n_threads)
                if floating is float:
                    fwb_key_histogram_f32(wp + lo, hi - lo, <uint32_t>prefix, <uint32_t>prefix_mask, shift,
                                          &hist[t, 0], <uint32_t>above, &extra[t])
                else:
                    fwb_key_histogram_f64(wp + lo, hi - lo, prefix, prefix_mask, shift,
                                          &hist[t, 0], above, &extra[t])
        if level == 0:
            for t in range(n_threads):
                n_nan += extra[t]
        # find the digit whose bucket holds the rank
        cum = 0
        for b in range(FWB_RADIX):
            count = 0
            for t in range(n_threads):
                count += hist[t, b]
            if cum + count > rank:
                equal = count
                break
            cum += count
        rank -= cum
        prefix |= (<uint64_t>b) << shift
        prefix_mask |= digit_mask << shift
    # the last level's histogram has full resolution: its next non-empty
    # bucket after b is the next larger key
    next_value = None
    for b2 in range(b + 1, FWB_RADIX):
        count = 0
        for t in range(n_threads):
            count += hist[t, b2]
        if count:
            next_value = _value((prefix & ~digit_mask) | <uint64_t>b2, w)
            break
    return _value(prefix, w), prefix, k - rank, equal, n_nan, next_value


cdef inline double _value(uint64_t key, const floating[::1] like):
    if floating is float:
        return fwb_from_key_f32(<uint32_t>key)
    else:
        return fwb_from_key_f64(key)


def min_abs_above(const floating[::1] w, uint64_t key, uint64_t[::1] extra, int n_threads):
    """The smallest |w| whose key is greater than `key`, as (value, key)."""
    cdef Py_ssize_t n = w.shape[0], t, lo, hi
    cdef uint64_t best = <uint64_t>(-1)
    cdef const floating *wp = &w[0]
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            if floating is float:
                extra[t] = fwb_min_key_above_f32(wp + lo, hi - lo, <uint32_t>key)
            else:
                extra[t] = fwb_min_key_above_f64(wp + lo, hi - lo, key)
    for t in range(n_threads):
        if extra[t] < best:
            best = extra[t]
    if floating is float:
        return fwb_from_key_f32(<uint32_t>best), best
    else:
        return fwb_from_key_f64(best), best


def prune_threshold(const floating[::1] w, floating[::1] out, unsigned char[::1] mask, double threshold,
                    int64_t[::1] extra, int n_threads):
    """mask = |w| >= threshold, out = w * mask (out may be w); returns the count kept."""
    cdef Py_ssize_t n = w.shape[0], t, lo, hi
    cdef int64_t kept = 0
    cdef const floating *wp = &w[0]
    cdef floating *op = &out[0]
    cdef unsigned char *mp = &mask[0]
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            if floating is float:
                extra[t] = fwb_prune_threshold_f32(wp + lo, op + lo, mp + lo, hi - lo, <float>threshold)
            else:
                extra[t] = fwb_prune_threshold_f64(wp + lo, op + lo, mp + lo, hi - lo, threshold)
    for t in range(n_threads):
        kept += extra[t]
    return kept


def mask_exact_k(const floating[::1] w, unsigned char[::1] mask, uint64_t cut, int64_t ties,
                 int64_t[::1] extra, int n_threads):
    """Keep-mask: 1 where key(|w|) > cut, 0 where below; of the keys equal to
    cut, the first `ties` in index order get 0 and the rest 1."""
    cdef Py_ssize_t n = w.shape[0], t, lo, hi
    cdef int64_t before = 0, c
    cdef const floating *wp = &w[0]
    cdef unsigned char *mp = &mask[0]
    # ties per part, then each part drops what is left of the budget after the parts before it
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            if floating is float:
                extra[t] = fwb_count_key_f32(wp + lo, hi - lo, <uint32_t>cut)
            else:
                extra[t] = fwb_count_key_f64(wp + lo, hi - lo, cut)
    for t in range(n_threads):
        c = extra[t]
        extra[t] = min(max(ties - before, 0), c)
        before += c
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            if floating is float:
                fwb_mask_exact_k_f32(wp + lo, mp + lo, hi - lo, <uint32_t>cut, extra[t])
            else:
                fwb_mask_exact_k_f64(wp + lo, mp + lo, hi - lo, cut, extra[t])


def apply_mask(floating[::1] w, const unsigned char[::1] mask, int n_threads):
    """w = 0 where mask is 0, in place."""
    cdef Py_ssize_t n = w.shape[0], t, lo, hi
    cdef floating *wp = &w[0]
    cdef const unsigned char *mp = &mask[0]
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = part_start(n, t, n_threads)
            hi = part_start(n, t + 1, n_threads)
            if floating is float:
                fwb_apply_mask_f32(wp + lo, mp + lo, hi - lo)
            else:
                fwb_apply_mask_f64(wp + lo, mp + lo, hi - lo)
