# cython: language_level=3
"""The boundary to the C kernels (csrc/).

Every wrapper checks dtype, C-contiguity and shape of each array against the shapes the C
function documents, raising ValueError that names the argument, the expected and the given
shape; then it calls C with the GIL released. Outputs are written into arrays the caller
owns (the engine's workspace), so the hot path allocates nothing.

`Kernels(isa)` wraps one kernel table: `Kernels()` is the one the dispatch chose, and
`Kernels("avx512")` a given level, which tests use to compare every level with "ref".
"""

# numpy is imported when a function here first uses it, not with bge_engine: `Engine(...)`
# starts the weight load (`Kernels.load_packed`, which needs no numpy before its C work)
# first, and numpy's import runs beside it (see bge_engine/_lazy.py).
from ._lazy import numpy_on_first_use

np = numpy_on_first_use(globals())

cimport cython
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from cython.parallel cimport parallel, prange, threadid
from libc.errno cimport EINTR, errno
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uintptr_t
from libc.stdlib cimport free, malloc
from posix.stdlib cimport posix_memalign
from posix.types cimport off_t
from posix.unistd cimport pread

_EPILOGUES = {"bias": BGE_EPI_BIAS, "gelu": BGE_EPI_BIAS_GELU, "residual": BGE_EPI_BIAS_RESIDUAL}
_POOLS = {"cls": BGE_POOL_CLS, "mean": BGE_POOL_MEAN}
_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
             "os_avx", "os_avx512", "os_amx")

_init_status = bge_init()


def init_warning():
    """A message when BGE_ISA held an unknown name at start-up, else None."""
    if _init_status == BGE_OK:
        return None
    return ("BGE_ISA names no known level; expected one of "
            + ", ".join(isa_names()) + "; using the best level this machine has")


def isa_names():
    """Every level's name, lowest first."""
    return [bge_isa_name(i).decode() for i in range(BGE_ISA_COUNT)]


def usable_isas():
    """The levels this build and this machine can run, lowest first (BGE_ISA ignored)."""
    return [bge_isa_name(i).decode() for i in range(BGE_ISA_COUNT) if bge_kernels_for(i) != NULL]


def built_isas():
    """The levels whose folder this build compiled, whatever the CPU."""
    return [bge_isa_name(i).decode() for i in range(BGE_ISA_COUNT) if bge_isa_built(i)]


def isa_cap():
    """The level BGE_ISA caps the dispatch at."""
    return bge_isa_name(bge_isa_cap()).decode()


def cpu_features():
    """What CPUID and XCR0 report, as {feature: bool}."""
    cdef const bge_cpu_features *f = bge_cpu()
    values = (f.avx2, f.fma, f.avx512f, f.avx512bw, f.avx512dq, f.avx512vl, f.avx512_vnni,
              f.avx_vnni, f.avx512_bf16, f.avx512_fp16, f.amx_tile, f.amx_int8, f.amx_bf16,
              f.os_avx, f.os_avx512, f.os_amx)
    return {name: bool(v) for name, v in zip(_FEATURES, values)}


cdef object _check(object a, str name, tuple shape, object dtype=None):
    """Returns `a` when it is a C-contiguous ndarray of `dtype` (default float32) and
    `shape`, else raises."""
    if dtype is None:
        dtype = np.float32
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape {shape}, got {type(a).__name__}")
    if a.dtype != dtype or not a.flags.c_contiguous or tuple(a.shape) != shape:
        raise ValueError(
            f"{name}: expected a C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
            f"got {a.dtype.name} {tuple(a.shape)}"
            + ("" if a.flags.c_contiguous else " (not C-contiguous)"))
    return a


cdef object _writable(object a, str name):
    if not a.flags.writeable:
        raise ValueError(f"{name}: the output array is read-only")
    return a


cdef bint _buf(void **p, object a, char code, bint writable, Py_ssize_t *shape) noexcept:
    """Takes the data of `a` through the buffer protocol when it is a C-contiguous ndarray of
    at most 2 dimensions, buffer format `code` (and writable when asked): *p, and its shape
    in shape[0], shape[1] (-1 past its dimensions). False, with nothing raised, otherwise:
    the caller's slow checks then say what is wrong. One call of the protocol, where numpy
    attribute checks and a typed memoryview cost about 1 us per array (~0.4 ms of a forward
    pass at 16 tokens). The pointer stays valid while the caller holds `a`."""
    cdef Py_buffer v
    cdef bint ok
    if not isinstance(a, np.ndarray):
        return False
    try:
        PyObject_GetBuffer(a, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
                           | (PyBUF_WRITABLE if writable else 0))
    except Exception:  # not C-contiguous, or read-only
        return False
    ok = (1 <= v.ndim <= 2 and v.format != NULL and v.format[0] == code and v.format[1] == 0)
    if ok:
        p[0] = v.buf
        shape[0] = v.shape[0]
        shape[1] = v.shape[1] if v.ndim == 2 else -1
    PyBuffer_Release(&v)
    return ok


cdef int _ptr(void **p, object a, str name, Py_ssize_t d0, Py_ssize_t d1, object dtype,
              char code, bint writable) except -1:
    """*p = the data of `a` when it is a C-contiguous ndarray of `dtype` (buffer format
    `code`) and shape (d0, d1), or (d0,) when d1 < 0 (of any length when d0 < 0 too), and
    writable when asked (see _buf); else raises as _check and _writable do."""
    cdef Py_ssize_t shape[2]
    if (_buf(p, a, code, writable, shape) and (d0 < 0 or shape[0] == d0)
            and shape[1] == (d1 if d1 >= 0 else -1)):
        return 0
    if d0 < 0:  # any length: the message names the one it has
        d0 = a.shape[0] if isinstance(a, np.ndarray) and a.ndim >= 1 else 0
    _check(a, name, _shape(d0, d1), dtype)  # raises, unless the dtype is spelled otherwise
    if writable:
        _writable(a, name)
    cdef const uint8_t[::1] any_bytes = a.reshape(-1).view(np.uint8)
    p[0] = <void *>&any_bytes[0] if any_bytes.shape[0] else NULL
    return 0


cdef int _flat(void **p, object a, str name, Py_ssize_t n, object dtype, char code,
               Py_ssize_t *have, bint writable=True) except -1:
    """*p = the data of `a`, a C-contiguous 1-D ndarray of `dtype` (buffer format `code`) of
    at least n elements (a workspace buffer, writable unless said), and its length in
    *have; else raises."""
    cdef Py_ssize_t shape[2]
    if _buf(p, a, code, writable, shape) and shape[1] == -1 and shape[0] >= n:
        have[0] = shape[0]
        return 0
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.shape[0] < n:
        raise ValueError(f"{name}: expected a flat {np.dtype(dtype).name} array of at "
                         f"least {n} elements")
    _ptr(p, a, name, a.shape[0], -1, dtype, code, writable)
    have[0] = a.shape[0]
    return 0


cdef int _rows(const float **p, object x, int K) except -1:
    """*p = the data of x, a C-contiguous float32 ndarray (M, K); returns M, else raises."""
    cdef Py_ssize_t shape[2]
    if _buf(<void **>p, x, b'f', False, shape) and shape[1] == K and shape[0] <= 2147483647:
        return <int>shape[0]
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"x: expected a float32 array of shape (M, {K})")
    cdef int M = x.shape[0]
    _ptr(<void **>p, x, "x", M, K, np.float32, b'f', False)
    return M


cdef tuple _shape(Py_ssize_t d0, Py_ssize_t d1):
    """(d0,) when d1 < 0, else (d0, d1)."""
    if d1 < 0:
        return (d0,)
    return (d0, d1)


cdef bint _overlap(const void *a, size_t na, const void *b, size_t nb) noexcept:
    """Whether the byte ranges [a, a + na) and [b, b + nb) share a byte."""
    cdef size_t x = <size_t>a, y = <size_t>b
    return na > 0 and nb > 0 and x < y + nb and y < x + na


cdef int _threads(object threads) except -1:
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    return threads


cdef int _epilogue(object epilogue, object bias, object res, object out, int M, int N,
                   const float **bp, const float **rp, float **op) except -1:
    """Checks a GEMM's epilogue arguments: bias (N), out (M, N) writable, res (M, N) with
    "residual" and None otherwise; returns the epilogue's code, and their data in *bp, *op
    and *rp (NULL without res)."""
    if epilogue not in _EPILOGUES:
        raise ValueError(f"epilogue: expected one of {list(_EPILOGUES)}, got {epilogue!r}")
    cdef int epi = _EPILOGUES[epilogue]
    _ptr(<void **>bp, bias, "bias", N, -1, np.float32, b'f', False)
    _ptr(<void **>op, out, "out", M, N, np.float32, b'f', True)
    rp[0] = NULL
    if epi == BGE_EPI_BIAS_RESIDUAL:
        _ptr(<void **>rp, res, "res", M, N, np.float32, b'f', False)
    elif res is not None:
        raise ValueError("res: only the 'residual' epilogue takes it")
    return epi


cdef int _check_status(int status, str what) except -1:
    if status == BGE_OK:
        return 0
    if status == BGE_ERR_SCRATCH:
        raise ValueError(f"{what}: the scratch buffer is too small")
    if status == BGE_ERR_PACKING:
        raise ValueError(f"{what}: the weights were packed by another kernel table")
    raise ValueError(f"{what}: the C kernel rejected its arguments (status {status})")


cdef int _ragged(object offsets, int T, int *max_len, int *min_len,
                 const int32_t **data=NULL) except -1:
    """Checks ragged offsets: int32 (n+1,), 0 first, non-decreasing, T last; returns n and
    the longest and shortest text's length (a loop in C: this runs on every kernel call),
    and their data in *data when given."""
    if not isinstance(offsets, np.ndarray) or offsets.ndim != 1 or offsets.shape[0] < 2:
        raise ValueError("offsets: expected an int32 array of shape (n + 1,) with n >= 1")
    cdef const int32_t *o
    _ptr(<void **>&o, offsets, "offsets", offsets.shape[0], -1, np.int32, b'i', False)
    if data != NULL:
        data[0] = o
    cdef Py_ssize_t i, n = offsets.shape[0] - 1
    cdef int d, mx = 0, mn = 2147483647
    if o[0] != 0 or o[n] != T:
        raise ValueError(f"offsets: expected 0 first and {T} last, got {o[0]} .. {o[n]}")
    for i in range(n):
        d = o[i + 1] - o[i]
        if d < 0:
            raise ValueError(f"offsets: expected non-decreasing values, got {o[i]} then {o[i + 1]}")
        mx = d if d > mx else mx
        mn = d if d < mn else mn
    max_len[0], min_len[0] = mx, mn
    return n


class PackedF32:
    """A weight (N, K) packed for one kernel table's GEMM; see that table's pack."""

    __slots__ = ("data", "K", "N", "isa")

    def __init__(self, data, K, N, isa):
        self.data, self.K, self.N, self.isa = data, K, N, isa

    @property
    def nbytes(self):
        return self.data.nbytes


def q8_row_bytes(int K):
    """Bytes of one row of quantised activations q: K rounded up to a multiple of 4."""
    if K < 0:
        raise ValueError(f"K: expected >= 0, got {K}")
    return (K + 3) // 4 * 4


Q8_MAX_K = BGE_Q8_MAX_K  # the largest K whose int32 sums stay exact (K * 255 * 127 < 2^31)
Q8_GROUP = BGE_Q8_GROUP  # k per quantisation group: scales and zero points per (row, group)


def q8_groups(int K):
    """Quantisation groups of a row of K: ceil(K / Q8_GROUP) (the second dimension of the
    activation scale and zp, and of the weight scale)."""
    if K < 0:
        raise ValueError(f"K: expected >= 0, got {K}")
    return (K + BGE_Q8_GROUP - 1) // BGE_Q8_GROUP


def quantize_weight(w, threads=1, q=None, scale=None, Kernels table=None):
    """Quantises a torch Linear weight w (N, K) float32 at load: returns (w_s8 (N, K) int8
    in [-127, 127], w_scale (N, q8_groups(K)) float32), symmetric per output channel and
    group of Q8_GROUP k (bge.h, bge_qs8_quantize_weights), written into q and scale when
    given, by `table`'s qs8_quantize_weights (default: the dispatched table's; every level
    writes the same bytes). Raises ValueError on NaN or infinity."""
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ValueError("w: expected a float32 array of shape (N, K)")
    cdef int N = w.shape[0], K = w.shape[1]
    _check(w, "w", (N, K))
    if N < 1 or K < 1 or K > BGE_Q8_MAX_K:
        raise ValueError(f"w: cannot quantise shape {(N, K)} (1 <= K <= {BGE_Q8_MAX_K})")
    cdef int nt = _threads(threads)
    q = np.empty((N, K), dtype=np.int8) if q is None else _writable(_check(q, "q", (N, K), np.int8), "q")
    scale = (np.empty((N, q8_groups(K)), dtype=np.float32) if scale is None
             else _writable(_check(scale, "scale", (N, q8_groups(K))), "scale"))
    cdef const float[:, ::1] wv = w
    cdef int8_t[:, ::1] qv = q
    cdef float[:, ::1] sv = scale
    cdef const bge_kernels *t = bge_kernels_active() if table is None else table.t
    cdef int st
    with nogil:
        st = t.qs8_quantize_weights(&wv[0, 0], N, K, &qv[0, 0], &sv[0, 0], nt)
    if st != BGE_OK:
        raise ValueError("w: holds NaN or infinity")
    return q, scale


def _aligned_bytes(size_t n):
    """A uint8 array of n bytes starting on a 64-byte boundary."""
    buf = np.empty(n + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off:off + n]


def _out_bytes(out, size_t n):
    """`out` checked as the destination of a packing: uint8 (n,), C-contiguous, writable,
    64-byte aligned (the kernels' aligned loads)."""
    if not isinstance(out, np.ndarray) or out.ndim != 1:
        raise ValueError(f"out: expected a uint8 array of shape ({n},)")
    _writable(_check(out, "out", (n,), np.uint8), "out")
    if out.ctypes.data % 64:
        raise ValueError("out: must start on a 64-byte boundary")
    return out


cdef extern from *:
    """
    #include <sys/mman.h>
    /* Asks for transparent huge pages on [p, p + n), where the OS has them. */
    static void bge_advise_huge_pages(void *p, size_t n) {
    #ifdef MADV_HUGEPAGE
        (void)madvise(p, n, MADV_HUGEPAGE);
    #else
        (void)p; (void)n;
    #endif
    }
    """
    void bge_advise_huge_pages(void *p, size_t n) nogil


cdef char *_BYTE_FORMAT = "B"


cdef class Arena:
    """n bytes for packed weights (uint8, writable, through the buffer protocol), starting on
    a 2 MiB boundary, transparent huge pages asked for: packing 85 MB of weights then takes
    ~40 page faults instead of ~20,000, each of which costs microseconds in a VM (most of
    the fp32 load time once). Made without numpy, so that `Engine(...)` can start the load
    before numpy is imported; `np.frombuffer(arena, np.uint8)` views it, and the memory
    lives as long as any view."""

    cdef uint8_t *p
    cdef readonly size_t nbytes
    cdef Py_ssize_t shape[1]

    def __cinit__(self, size_t nbytes):
        cdef void *mem = NULL
        if nbytes == 0:
            raise ValueError("nbytes: expected a positive size")
        if posix_memalign(&mem, 2 << 20, nbytes) != 0:
            raise MemoryError(f"cannot allocate a weight arena of {nbytes} bytes")
        self.p, self.nbytes = <uint8_t *>mem, nbytes
        self.shape[0] = <Py_ssize_t>nbytes
        bge_advise_huge_pages(mem, nbytes)

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf = self.p
        view.obj = self
        view.len = <Py_ssize_t>self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL  # NULL means unsigned bytes ("B")
        if flags & PyBUF_FORMAT:
            view.format = _BYTE_FORMAT
        view.ndim = 1
        view.shape = self.shape
        view.strides = &view.itemsize
        view.suboffsets = NULL
        view.internal = NULL

    def __dealloc__(self):
        free(self.p)


class PackedQ8:
    """int8 weights w_s8 (N, K) with their scales, packed for one kernel table's qgemm.

    `data` starts with a header naming the layout; a table's qgemm rejects another table's
    layout (ValueError: packed by another kernel table)."""

    __slots__ = ("data", "K", "N", "isa")

    def __init__(self, data, K, N, isa):
        self.data, self.K, self.N, self.isa = data, K, N, isa

    @property
    def nbytes(self):
        return self.data.nbytes


class PackedBF16:
    """A weight (N, K) converted to bf16 and packed for one kernel table's bgemm (csrc/bge.h,
    the bf16 scheme). `data` (uint8) starts with a header naming the panel width; a table
    whose GEMM reads other panels rejects it."""

    __slots__ = ("data", "K", "N", "isa")

    def __init__(self, data, K, N, isa):
        self.data, self.K, self.N, self.isa = data, K, N, isa

    @property
    def nbytes(self):
        return self.data.nbytes


def bf16_bits(x):
    """bf16(x) of csrc/bge.h (the plain-C definition, bge_bf16_from_f32): the uint16 bits of
    each float32 of x (any shape, C-contiguous), rounded to nearest even, denormals taken as
    zero, NaN made quiet."""
    _check(x, "x", tuple(x.shape) if isinstance(x, np.ndarray) else ())
    out = np.empty(x.shape, dtype=np.uint16)
    if x.size == 0:
        return out
    cdef const float[::1] xv = x.reshape(-1)
    cdef uint16_t[::1] ov = out.reshape(-1)
    with nogil:
        bge_bf16_from_f32(&xv[0], xv.shape[0], &ov[0])
    return out


# ----------------------------------------------------------------------------------------
# Loading: every matmul weight read, checked and packed in one call without the GIL
# ----------------------------------------------------------------------------------------

cdef enum:
    _MAX_PARTS = 4  # tensors stacked by rows into one weight (Q, K and V make 3)

cdef struct _LoadJob:
    # in: the weight (N, K) float32 is `nparts` tensors stacked by rows, part p being rows[p]
    # rows at byte `off[p]` of the file; it is packed (int8: quantised, then packed) into
    # the arena at byte out_off
    int64_t off[_MAX_PARTS]
    int rows[_MAX_PARTS]
    int nparts, N, K, kind  # _KIND_*
    size_t out_off
    # out: _LOAD_OK, or what went wrong and in which part
    int status, part


cdef enum:
    _KIND_F32 = 0
    _KIND_INT8 = 1
    _KIND_BF16 = 2

_KINDS = {False: _KIND_F32, True: _KIND_INT8, "fp32": _KIND_F32, "int8": _KIND_INT8,
          "bf16": _KIND_BF16}


cdef enum:
    _LOAD_OK = 0
    _LOAD_SHORT = 1  # the file ended inside the part
    _LOAD_NONFINITE = 2  # the part holds NaN or infinity
    _LOAD_PACK = 3  # the packer or the quantiser refused the weight
    _LOAD_IO = 4  # a read failed (errno other than EINTR)


cdef int _read_full(int fd, char *dst, size_t n, int64_t off) noexcept nogil:
    """n bytes of the file at off into dst (pread, retried where it stops short): _LOAD_OK,
    _LOAD_SHORT when the file ends first, _LOAD_IO when a read fails."""
    cdef ssize_t got
    while n > 0:
        got = pread(fd, dst, n, <off_t>off)
        if got < 0 and errno == EINTR:
            continue
        if got < 0:
            return _LOAD_IO
        if got == 0:
            return _LOAD_SHORT
        dst += got
        n -= <size_t>got
        off += got
    return _LOAD_OK


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _all_finite(const float *a, size_t n) noexcept nogil:
    """1 when none of the n floats is NaN or infinity (all exponent bits set), else 0."""
    cdef const uint32_t *b = <const uint32_t *>a
    cdef uint32_t bad = 0
    cdef size_t i
    for i in range(n):
        bad |= <uint32_t>((b[i] & 0x7f800000u) == 0x7f800000u)
    return bad == 0


cdef void _load_one(const bge_kernels *t, int fd, _LoadJob *j, float *w, int8_t *q, float *s,
                    uint8_t *arena) noexcept nogil:
    """Runs job j with one thread's buffers: w (N K floats), q (N K), s (N groups)."""
    cdef size_t at = 0, n
    cdef int p, st
    for p in range(j.nparts):
        n = <size_t>j.rows[p] * <size_t>j.K
        st = _read_full(fd, <char *>(w + at), n * sizeof(float), j.off[p])
        if st != _LOAD_OK:
            j.status, j.part = st, p
            return
        if not _all_finite(w + at, n):
            j.status, j.part = _LOAD_NONFINITE, p
            return
        at += n
    if j.kind == _KIND_INT8:
        if t.qs8_quantize_weights(w, j.N, j.K, q, s, 1) != BGE_OK or \
                t.qs8_pack(q, s, j.K, j.N, <void *>(arena + j.out_off)) != BGE_OK:
            j.status, j.part = _LOAD_PACK, 0
            return
    elif j.kind == _KIND_BF16:
        if t.bf16_pack(w, j.K, j.N, <void *>(arena + j.out_off)) != BGE_OK:
            j.status, j.part = _LOAD_PACK, 0
            return
    elif t.f32_pack(w, j.K, j.N, <float *>(arena + j.out_off)) != BGE_OK:
        j.status, j.part = _LOAD_PACK, 0
        return
    j.status = _LOAD_OK


LOAD_ERRORS = {_LOAD_SHORT: "is cut short", _LOAD_NONFINITE: "holds NaN or infinity",
               _LOAD_PACK: "could not be packed", _LOAD_IO: "could not be read"}


cdef class Kernels:
    """One kernel table: the dispatched one, or the level named by `isa` (a name of
    isa_names(), or an old alias such as "vnni")."""

    cdef const bge_kernels *t
    cdef readonly str isa

    def __init__(self, isa=None):
        cdef int level
        if isa is None:
            self.t = bge_kernels_active()
        else:
            level = (bge_isa_from_name(isa.encode())
                     if isinstance(isa, str) and "\0" not in isa else -1)
            if level < 0:
                raise ValueError(f"isa: expected one of {isa_names()}, got {isa!r}")
            self.t = bge_kernels_for(level)
            if self.t == NULL:
                raise ValueError(f"isa {isa!r} is not usable on this machine or build "
                                 f"(usable: {usable_isas()})")
        self.isa = self.t.isa_name.decode()

    @property
    def names(self):
        """{slot: the C function behind it}, for every slot of csrc/registry.h."""
        return {bge_slot_name(i).decode(): bge_kernel_name(self.t, i).decode()
                for i in range(BGE_SLOT_COUNT)}

    def packed_bytes(self, int K, int N):
        """Bytes pack() needs for a weight (N, K) (an `out` buffer's size); 0 on bad sizes."""
        return 4 * self.t.f32_packed_size(K, N)

    def pack(self, w, out=None):
        """Packs a torch Linear weight w (N, K) float32 for this table's gemm, into `out`
        (a C-contiguous uint8 array of packed_bytes(K, N), 64-byte aligned) or new memory."""
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise ValueError("w: expected a float32 array of shape (N, K)")
        cdef int N = w.shape[0], K = w.shape[1]
        _check(w, "w", (N, K))
        cdef size_t size = self.t.f32_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w: cannot pack shape {(N, K)}")
        data = _aligned_bytes(4 * size) if out is None else _out_bytes(out, 4 * size)
        data = data.view(np.float32)
        cdef const float[:, ::1] wv = w
        cdef float[::1] dv = data
        cdef int st
        with nogil:
            st = self.t.f32_pack(&wv[0, 0], K, N, &dv[0])
        _check_status(st, "pack")
        return PackedF32(data, K, N, self.isa)

    def gemm(self, x, packed, bias, out, epilogue="bias", res=None, threads=1):
        """out (M, N) = epilogue(x (M, K) @ W^T + bias (N)) [+ res (M, N)]."""
        if not isinstance(packed, PackedF32):
            raise ValueError("packed: expected the PackedF32 that Kernels.pack returned")
        if packed.isa != self.isa:
            raise ValueError(f"packed: made for the {packed.isa!r} table, used with {self.isa!r}")
        cdef int K = packed.K, N = packed.N
        cdef const float *xp
        cdef const float *pp
        cdef const float *bp
        cdef const float *rp
        cdef float *op
        cdef int M = _rows(&xp, x, K)
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        if M == 0:
            return out
        if _overlap(xp, <size_t>M * K * 4, op, <size_t>M * N * 4):
            raise ValueError("out: must not overlap x")
        _ptr(<void **>&pp, packed.data, "packed.data", -1, -1, np.float32, b'f', False)
        cdef int st
        with nogil:
            st = self.t.f32_gemm(xp, M, K, N, pp, bp, rp, op, epi, nt)
        _check_status(st, "gemm")
        return out

    def layernorm(self, x, gamma, beta, float eps, out, threads=1):
        """out (T, C) = LayerNorm(x (T, C)) * gamma (C) + beta (C); out may be x."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError("x: expected a float32 array of shape (T, C)")
        cdef int T = x.shape[0], C = x.shape[1]
        cdef const float *xp
        cdef const float *gp
        cdef const float *bp
        cdef float *op
        _ptr(<void **>&xp, x, "x", T, C, np.float32, b'f', False)
        _ptr(<void **>&gp, gamma, "gamma", C, -1, np.float32, b'f', False)
        _ptr(<void **>&bp, beta, "beta", C, -1, np.float32, b'f', False)
        _ptr(<void **>&op, out, "out", T, C, np.float32, b'f', True)
        cdef int nt = _threads(threads)
        if T == 0:
            return out
        cdef int st
        with nogil:
            st = self.t.f32_layernorm(xp, gp, bp, eps, op, T, C, nt)
        _check_status(st, "layernorm")
        return out

    def softmax(self, x):
        """Row-wise softmax of x (R, C) in place."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError("x: expected a float32 array of shape (R, C)")
        cdef int R = x.shape[0], C = x.shape[1]
        cdef float *xp
        _ptr(<void **>&xp, x, "x", R, C, np.float32, b'f', True)
        if R == 0 or C == 0:
            return x
        cdef int st
        with nogil:
            st = self.t.f32_softmax(xp, R, C)
        _check_status(st, "softmax")
        return x

    def gelu(self, x):
        """GELU (erf) of every element of x, in place; x any C-contiguous float32 array."""
        if not isinstance(x, np.ndarray):
            raise ValueError("x: expected a float32 numpy array")
        _writable(_check(x, "x", tuple(x.shape)), "x")
        if x.size == 0:
            return x
        cdef float[::1] xv = x.reshape(-1)
        cdef int st
        with nogil:
            st = self.t.f32_gelu(&xv[0], xv.shape[0])
        _check_status(st, "gelu")
        return x

    def attention_scratch_size(self, int max_len, int head_dim, threads=1):
        """Floats of scratch attention() needs for texts of at most max_len tokens."""
        return self.t.f32_attention_scratch(max_len, head_dim, _threads(threads))

    def attention(self, qkv, offsets, int heads, float scale, out, scratch=None, threads=1):
        """out (T, H) = per-text, per-head softmax(scale Q K^T) V from qkv (T, 3H)."""
        if not isinstance(qkv, np.ndarray) or qkv.ndim != 2 or qkv.shape[1] % 3:
            raise ValueError("qkv: expected a float32 array of shape (T, 3*H)")
        cdef int T = qkv.shape[0], H = qkv.shape[1] // 3
        if heads < 1 or H % heads:
            raise ValueError(f"heads: {heads} does not divide the hidden size {H}")
        cdef const float *qp
        cdef const int32_t *offp
        cdef float *op
        cdef float *sp
        _ptr(<void **>&qp, qkv, "qkv", T, 3 * H, np.float32, b'f', False)
        _ptr(<void **>&op, out, "out", T, H, np.float32, b'f', True)
        cdef int max_len, min_len
        cdef int n = _ragged(offsets, T, &max_len, &min_len, &offp)
        cdef int nt = _threads(threads)
        if T == 0:
            return out
        cdef size_t need = self.t.f32_attention_scratch(max_len, H // heads, nt)
        if scratch is None:
            scratch = np.empty(need, dtype=np.float32)
        elif not isinstance(scratch, np.ndarray) or scratch.ndim != 1 or scratch.shape[0] < need:
            raise ValueError(f"scratch: expected a float32 array of at least {need} floats")
        cdef size_t ns = scratch.shape[0]
        _ptr(<void **>&sp, scratch, "scratch", ns, -1, np.float32, b'f', True)
        cdef int st
        with nogil:
            st = self.t.f32_attention(qp, offp, n, H, heads, scale, op, sp, ns, nt)
        _check_status(st, "attention")
        return out

    def embed(self, ids, offsets, word, pos, type_, out):
        """out (T, C) = word[ids] + type_[0] + pos[position in its text]."""
        if not isinstance(ids, np.ndarray) or ids.ndim != 1:
            raise ValueError("ids: expected an int32 array of shape (T,)")
        if not isinstance(word, np.ndarray) or word.ndim != 2:
            raise ValueError("word: expected a float32 array of shape (vocab, C)")
        if not isinstance(pos, np.ndarray) or pos.ndim != 2:
            raise ValueError("pos: expected a float32 array of shape (max_pos, C)")
        if not isinstance(type_, np.ndarray) or type_.ndim != 2 or type_.shape[0] < 1:
            raise ValueError("type_: expected a float32 array of shape (types, C)")
        cdef int T = ids.shape[0], V = word.shape[0], C = word.shape[1], P = pos.shape[0]
        cdef const int32_t *ip
        cdef const int32_t *offp
        cdef const float *wp
        cdef const float *pp
        cdef const float *tp
        cdef float *op
        _ptr(<void **>&ip, ids, "ids", T, -1, np.int32, b'i', False)
        _ptr(<void **>&wp, word, "word", V, C, np.float32, b'f', False)
        _ptr(<void **>&pp, pos, "pos", P, C, np.float32, b'f', False)
        _ptr(<void **>&tp, type_, "type_", type_.shape[0], C, np.float32, b'f', False)
        _ptr(<void **>&op, out, "out", T, C, np.float32, b'f', True)
        cdef int max_len, min_len
        cdef int n = _ragged(offsets, T, &max_len, &min_len, &offp)
        if T == 0:
            return out
        if max_len > P:
            raise ValueError(f"offsets: a text of {max_len} tokens is longer than the {P} positions")
        cdef Py_ssize_t t
        for t in range(T):
            if ip[t] < 0 or ip[t] >= V:
                raise ValueError(f"ids: every id must be in [0, {V}), got {ip[t]} at {t}")
        cdef int st
        with nogil:
            st = self.t.f32_embed(ip, offp, n, wp, V, pp, P, tp, op, C)
        _check_status(st, "embed")
        return out

    def pool(self, h, offsets, mode, out):
        """out (n, C) = the CLS row or the mean row of each text of h (T, C)."""
        if mode not in _POOLS:
            raise ValueError(f"mode: expected one of {list(_POOLS)}, got {mode!r}")
        if not isinstance(h, np.ndarray) or h.ndim != 2:
            raise ValueError("h: expected a float32 array of shape (T, C)")
        cdef int T = h.shape[0], C = h.shape[1]
        cdef const float *hp
        cdef const int32_t *offp
        cdef float *op
        _ptr(<void **>&hp, h, "h", T, C, np.float32, b'f', False)
        cdef int max_len, min_len
        cdef int n = _ragged(offsets, T, &max_len, &min_len, &offp)
        _ptr(<void **>&op, out, "out", n, C, np.float32, b'f', True)
        if min_len == 0:
            raise ValueError("offsets: every text needs at least one token to pool")
        cdef int m = _POOLS[mode]
        cdef int st
        with nogil:
            st = self.t.f32_pool(hp, offp, n, C, m, op)
        _check_status(st, "pool")
        return out

    def l2norm(self, x):
        """Divides each row of x (n, C) by its L2 norm, in place."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError("x: expected a float32 array of shape (n, C)")
        cdef int n = x.shape[0], C = x.shape[1]
        cdef float *xp
        _ptr(<void **>&xp, x, "x", n, C, np.float32, b'f', True)
        if n == 0 or C == 0:
            return x
        cdef int st
        with nogil:
            st = self.t.f32_l2norm(xp, n, C)
        _check_status(st, "l2norm")
        return x

    def fma_loop(self, long iters):
        """Runs the table's FMA peak loop; returns the floating-point operations done."""
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        cdef double flops
        with nogil:
            flops = self.t.f32_fma_loop(iters)
        return flops

    # ------------------------------------------------------------------------------------
    # int8: the scheme of csrc/bge.h (u8 activations with a scale and zero point per row and
    # group of Q8_GROUP k, s8 weights with a scale per output channel and group, int32 sums
    # per group, fp32 sum over groups and epilogue)
    # ------------------------------------------------------------------------------------

    def qpacked_bytes(self, int K, int N):
        """Bytes qpack() needs for a weight (N, K) (an `out` buffer's size); 0 on bad sizes."""
        return self.t.qs8_packed_size(K, N)

    def qpack(self, w_s8, w_scale, out=None):
        """Packs int8 weights w_s8 (N, K) int8 in [-127, 127] with w_scale (N, q8_groups(K))
        float32 (one scale per output channel and group of Q8_GROUP k) for this table's
        qgemm, into `out` (a C-contiguous uint8 array of qpacked_bytes(K, N), 64-byte
        aligned) or new memory; returns a PackedQ8."""
        if not isinstance(w_s8, np.ndarray) or w_s8.ndim != 2:
            raise ValueError("w_s8: expected an int8 array of shape (N, K)")
        cdef int N = w_s8.shape[0], K = w_s8.shape[1]
        _check(w_s8, "w_s8", (N, K), np.int8)
        _check(w_scale, "w_scale", (N, q8_groups(K)))
        if N < 1 or K < 1 or K > BGE_Q8_MAX_K:
            raise ValueError(f"w_s8: cannot pack shape {(N, K)} (1 <= K <= {BGE_Q8_MAX_K})")
        if w_s8.min() == -128:
            raise ValueError("w_s8: values must be in [-127, 127] (symmetric s8); got -128")
        cdef size_t size = self.t.qs8_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w_s8: cannot pack shape {(N, K)}")
        data = _aligned_bytes(size) if out is None else _out_bytes(out, size)
        cdef const int8_t[:, ::1] wv = w_s8
        cdef const float[:, ::1] sv = w_scale
        cdef uint8_t[::1] dv = data
        cdef int st
        with nogil:
            st = self.t.qs8_pack(&wv[0, 0], &sv[0, 0], K, N, <void *>&dv[0])
        _check_status(st, "qpack")
        return PackedQ8(data, K, N, self.isa)

    def load_packed(self, int fd, jobs, arena, threads=1):
        """Reads, checks and packs many weights from an open file in one call, with the GIL
        released throughout (so that other Python threads, the tokenizer's build among them,
        run beside it), on `threads` threads taking the weights in turn. Up to the end of
        its C work it uses no numpy (its buffers come from malloc), so it may run while
        another thread imports numpy; the views it returns are made after.

        Args:
            fd: the file (e.g. model.safetensors), read with pread.
            jobs: one (parts, N, K, kind, out_off) per weight (N, K): `parts` is a list of
                (byte offset, rows) of little-endian float32 tensors stacked by rows (their
                rows sum to N); kind "int8" (or True) quantises (quantize_weight) and packs
                for qgemm, "bf16" converts and packs for bgemm (bpack), "fp32" (or False)
                packs for gemm; the packed bytes go to arena[out_off:], 64-byte aligned.
            arena: a writable C-contiguous byte buffer (an `Arena`, or a uint8 array),
                64-byte aligned.

        Returns:
            (packed, errors): packed[i] is job i's PackedF32, PackedQ8 or PackedBF16 (a view of the
            arena), None where it failed; errors lists (i, part, what) for each failed job,
            `what` a phrase of LOAD_ERRORS ("is cut short", "holds NaN or infinity", ...).
        """
        cdef int nt = _threads(threads)
        cdef uint8_t[::1] av
        try:
            av = arena
        except (TypeError, ValueError, BufferError):
            raise ValueError("arena: expected a writable C-contiguous uint8 buffer") from None
        if av.shape[0] == 0 or (<uintptr_t>&av[0]) % 64:
            raise ValueError("arena: must be non-empty and start on a 64-byte boundary")
        cdef Py_ssize_t njobs = len(jobs), i
        cdef size_t most = 1, size, cap = av.shape[0]
        cdef int most_n = 1, most_g = 1, p
        sizes = []
        kinds = []
        for i in range(njobs):
            parts, N, K, kind, out_off = jobs[i]
            if kind not in _KINDS:
                raise ValueError(f"jobs[{i}]: kind {kind!r} is none of 'fp32', 'int8', 'bf16'")
            kind = _KINDS[kind]
            kinds.append(kind)
            int8 = kind == _KIND_INT8
            if not 1 <= len(parts) <= _MAX_PARTS:
                raise ValueError(f"jobs[{i}]: expected 1 to {_MAX_PARTS} parts, got {len(parts)}")
            if N < 1 or K < 1 or (int8 and K > BGE_Q8_MAX_K):
                raise ValueError(f"jobs[{i}]: cannot pack shape {(N, K)}")
            if sum(r for _o, r in parts) != N or any(r < 1 or o < 0 for o, r in parts):
                raise ValueError(f"jobs[{i}]: expected parts of rows >= 1 at offsets >= 0, "
                                 f"their rows summing to N = {N}")
            size = (self.t.qs8_packed_size(K, N) if int8 else self.t.bf16_packed_size(K, N)
                    if kind == _KIND_BF16 else 4 * self.t.f32_packed_size(K, N))
            if size == 0:
                raise ValueError(f"jobs[{i}]: cannot pack shape {(N, K)}")
            if out_off < 0 or out_off % 64 or <size_t>out_off + size > cap:
                raise ValueError(f"jobs[{i}]: out_off {out_off} is not a 64-byte aligned "
                                 f"slot of {size} bytes inside the arena ({cap} bytes)")
            most = max(most, <size_t>N * <size_t>K)
            most_n, most_g = max(most_n, N), max(most_g, q8_groups(K))
            sizes.append(size)
        if njobs == 0:
            return [], []
        nt = min(nt, njobs)
        need_q = any(kind == _KIND_INT8 for kind in kinds)
        # the jobs for C, and each thread's buffers: the weight as read, and its int8 form
        # with scales
        cdef size_t fs = most, qsz = most if need_q else 1
        cdef size_t ssz = <size_t>most_n * most_g if need_q else 1
        cdef _LoadJob *js = <_LoadJob *>malloc(njobs * sizeof(_LoadJob))
        cdef float *fp = <float *>malloc(nt * fs * sizeof(float))
        cdef int8_t *qp = <int8_t *>malloc(nt * qsz)
        cdef float *sp = <float *>malloc(nt * ssz * sizeof(float))
        cdef const bge_kernels *t = self.t
        cdef int tid = 0  # each thread's own (firstprivate)
        try:
            if js == NULL or fp == NULL or qp == NULL or sp == NULL:
                raise MemoryError("load_packed: cannot allocate the loading buffers")
            for i in range(njobs):
                parts, N, K, _kind, out_off = jobs[i]
                js[i].nparts, js[i].N, js[i].K, js[i].kind = len(parts), N, K, kinds[i]
                js[i].out_off = out_off
                js[i].status, js[i].part = -1, 0
                for p in range(len(parts)):
                    js[i].off[p], js[i].rows[p] = parts[p]
            with nogil, parallel(num_threads=nt):
                tid = threadid()
                for i in prange(njobs, schedule="dynamic", chunksize=1):
                    _load_one(t, fd, &js[i], fp + tid * fs, qp + tid * qsz, sp + tid * ssz,
                              &av[0])
            status = [(js[i].status, js[i].part) for i in range(njobs)]
        finally:
            free(js)
            free(fp)
            free(qp)
            free(sp)
        base = np.asarray(arena).view(np.uint8).reshape(-1)
        packed, errors = [], []
        for i in range(njobs):
            st, part = status[i]
            if st != _LOAD_OK:
                errors.append((i, part, LOAD_ERRORS.get(st, "was not read")))
                packed.append(None)
                continue
            N, K, _kind, out_off = jobs[i][1:]
            data = base[out_off:out_off + sizes[i]]
            packed.append(PackedQ8(data, K, N, self.isa) if kinds[i] == _KIND_INT8
                          else PackedBF16(data, K, N, self.isa) if kinds[i] == _KIND_BF16
                          else PackedF32(data.view(np.float32), K, N, self.isa))
        return packed, errors

    def quantize(self, x, q, scale, zp, threads=1):
        """Quantises x (M, K) float32 row by row and group by group (Q8_GROUP k each) into
        q (M, Kp) uint8, scale (M, G) float32 and zp (M, G) int32, Kp = q8_row_bytes(K),
        G = q8_groups(K); q's padding bytes are set to the zp of the row's last group."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError("x: expected a float32 array of shape (M, K)")
        cdef int M = x.shape[0], K = x.shape[1]
        cdef int Kp = q8_row_bytes(K), G = q8_groups(K)
        cdef const float *xp
        cdef uint8_t *qp
        cdef float *sp
        cdef int32_t *zp_
        _ptr(<void **>&xp, x, "x", M, K, np.float32, b'f', False)
        _ptr(<void **>&qp, q, "q", M, Kp, np.uint8, b'B', True)
        _ptr(<void **>&sp, scale, "scale", M, G, np.float32, b'f', True)
        _ptr(<void **>&zp_, zp, "zp", M, G, np.int32, b'i', True)
        cdef int nt = _threads(threads)
        if K < 1 or K > BGE_Q8_MAX_K:
            raise ValueError(f"x: expected 1 <= K <= {BGE_Q8_MAX_K}, got shape {(M, K)}")
        if M == 0:
            return q
        cdef int st
        with nogil:
            st = self.t.qu8_quantize(xp, M, K, qp, sp, zp_, nt)
        _check_status(st, "quantize")
        return q

    cdef int _q_rows(self, object q, object packed, const uint8_t **qp,
                     const uint8_t **pp) except -1:
        """Checks q (M, Kp) uint8 against packed; returns M, with q's data in *qp and the
        packed bytes in *pp."""
        if not isinstance(packed, PackedQ8):
            raise ValueError("packed: expected the PackedQ8 that Kernels.qpack returned")
        cdef int Kp = q8_row_bytes(packed.K)
        if not isinstance(q, np.ndarray) or q.ndim != 2:
            raise ValueError(f"q: expected a uint8 array of shape (M, {Kp})")
        _ptr(<void **>qp, q, "q", q.shape[0], Kp, np.uint8, b'B', False)
        cdef Py_ssize_t n_bytes
        _flat(<void **>pp, packed.data, "packed.data", 0, np.uint8, b'B', &n_bytes, False)
        if n_bytes < 64:
            raise ValueError("packed: too short to hold a packed int8 weight")
        return q.shape[0]

    def qgemm(self, q, scale, zp, packed, bias, out, epilogue="bias", res=None, threads=1):
        """out (M, N) = epilogue(sum over groups g of (q - zp) @ w_s8^T * scale w_scale
        + bias) [+ res (M, N)]: q (M, Kp), scale (M, G), zp (M, G) from quantize,
        G = q8_groups(K); packed from this table's qpack."""
        cdef const uint8_t *qp
        cdef const uint8_t *pp
        cdef int M = self._q_rows(q, packed, &qp, &pp)
        cdef int K = packed.K, N = packed.N
        cdef int G = q8_groups(K)
        cdef const float *sp
        cdef const int32_t *zp_
        _ptr(<void **>&sp, scale, "scale", M, G, np.float32, b'f', False)
        _ptr(<void **>&zp_, zp, "zp", M, G, np.int32, b'i', False)
        cdef const float *bp
        cdef const float *rp
        cdef float *op
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        if M == 0:
            return out
        if _overlap(qp, <size_t>M * q8_row_bytes(K), op, <size_t>M * N * 4):
            raise ValueError("out: must not overlap q")
        cdef int st
        with nogil:
            st = self.t.qu8s8_gemm(qp, sp, zp_, M, K, N, <const void *>pp, bp, rp, op, epi, nt)
        _check_status(st, "qgemm")
        return out

    def qlinear(self, x, packed, bias, out, q, scale, zp, epilogue="bias", res=None,
                threads=1):
        """out (M, N) = epilogue(x (M, K) @ W^T + bias) [+ res] in int8: quantise() then
        qgemm() in one call, with the GIL released once (the int8 Linear of the forward
        pass). q, scale and zp are flat workspace buffers of at least M * q8_row_bytes(K)
        uint8, M * q8_groups(K) float32 and M * q8_groups(K) int32; they receive the
        quantised x."""
        if not isinstance(packed, PackedQ8):
            raise ValueError("packed: expected the PackedQ8 that Kernels.qpack returned")
        cdef int K = packed.K, N = packed.N
        cdef int Kp = (K + 3) // 4 * 4, G = (K + BGE_Q8_GROUP - 1) // BGE_Q8_GROUP
        cdef const float *xp
        cdef const float *bp
        cdef const float *rp
        cdef float *op
        cdef uint8_t *qp
        cdef float *sp
        cdef int32_t *zp_
        cdef const uint8_t *pp
        cdef int M = _rows(&xp, x, K)
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        cdef Py_ssize_t nq_bytes, n_
        _flat(<void **>&qp, q, "q", <Py_ssize_t>M * Kp, np.uint8, b'B', &nq_bytes)
        _flat(<void **>&sp, scale, "scale", <Py_ssize_t>M * G, np.float32, b'f', &n_)
        _flat(<void **>&zp_, zp, "zp", <Py_ssize_t>M * G, np.int32, b'i', &n_)
        if M == 0:
            return out
        cdef Py_ssize_t np_bytes
        _flat(<void **>&pp, packed.data, "packed.data", 0, np.uint8, b'B', &np_bytes, False)
        if np_bytes < 64:
            raise ValueError("packed: too short to hold a packed int8 weight")
        if (_overlap(qp, <size_t>nq_bytes, op, <size_t>M * N * 4)
                or _overlap(qp, <size_t>nq_bytes, xp, <size_t>M * K * 4)):
            raise ValueError("q: must not overlap x or out")
        cdef int st
        # a short x is quantised on one thread: waking the others costs more than the work
        # (each row's bytes are the same on any number of threads)
        cdef int nq = nt if <long long>M * K >= 32768 else 1
        with nogil:
            st = self.t.qu8_quantize(xp, M, K, qp, sp, zp_, nq)
            if st == BGE_OK:
                st = self.t.qu8s8_gemm(qp, sp, zp_, M, K, N, <const void *>pp, bp, rp, op, epi, nt)
        _check_status(st, "qlinear")
        return out

    def qgemm_i32(self, q, packed, acc, threads=1):
        """acc (M, N) int32 = q (M, Kp) @ w_s8^T, the raw sums (no zero-point term)."""
        cdef const uint8_t *qp
        cdef const uint8_t *pp
        cdef int M = self._q_rows(q, packed, &qp, &pp)
        cdef int K = packed.K, N = packed.N
        cdef int32_t *ap
        _ptr(<void **>&ap, acc, "acc", M, N, np.int32, b'i', True)
        cdef int nt = _threads(threads)
        if M == 0:
            return acc
        if _overlap(qp, <size_t>M * q8_row_bytes(K), ap, <size_t>M * N * 4):
            raise ValueError("acc: must not overlap q")
        cdef int st
        with nogil:
            st = self.t.qu8s8_gemm_i32(qp, M, K, N, <const void *>pp, ap, nt)
        _check_status(st, "qgemm_i32")
        return acc

    def dot_loop(self, long iters):
        """Runs the table's int8 dot-product peak loop; returns the integer ops done (2 per
        u8 x s8 product)."""
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        cdef double ops
        with nogil:
            ops = self.t.qu8s8_dot_loop(iters)
        return ops

    # ------------------------------------------------------------------------------------
    # bf16: the scheme of csrc/bge.h (bf16 weights packed at load, x converted by the call,
    # fp32 sums over the whole of K, fp32 epilogue)
    # ------------------------------------------------------------------------------------

    def bpacked_bytes(self, int K, int N):
        """Bytes bpack() needs for a weight (N, K) (an `out` buffer's size); 0 on bad sizes."""
        return self.t.bf16_packed_size(K, N)

    def bgemm_scratch_bytes(self, int M, int K):
        """Bytes of scratch bgemm() needs for x (M, K) (at most 4 * M * (K rounded up to
        even) on every level)."""
        return self.t.bf16_gemm_scratch(M, K) if M > 0 else 0

    def bpack(self, w, out=None):
        """Converts a torch Linear weight w (N, K) float32 to bf16 and packs it for this
        table's bgemm, into `out` (a C-contiguous uint8 array of bpacked_bytes(K, N), 64-byte
        aligned) or new memory; returns a PackedBF16."""
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise ValueError("w: expected a float32 array of shape (N, K)")
        cdef int N = w.shape[0], K = w.shape[1]
        _check(w, "w", (N, K))
        cdef size_t size = self.t.bf16_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w: cannot pack shape {(N, K)}")
        data = _aligned_bytes(size) if out is None else _out_bytes(out, size)
        cdef const float[:, ::1] wv = w
        cdef uint8_t[::1] dv = data
        cdef int st
        with nogil:
            st = self.t.bf16_pack(&wv[0, 0], K, N, <void *>&dv[0])
        _check_status(st, "bpack")
        return PackedBF16(data, K, N, self.isa)

    def bgemm(self, x, packed, bias, out, epilogue="bias", res=None, scratch=None, threads=1):
        """out (M, N) = epilogue(bf16(x) (M, K) @ bf16(W)^T + bias (N)) [+ res (M, N)], the
        sums in fp32 over the whole of K (csrc/bge.h). packed: this table's bpack; scratch:
        a flat uint8 buffer of at least bgemm_scratch_bytes(M, K) (new memory when None)."""
        if not isinstance(packed, PackedBF16):
            raise ValueError("packed: expected the PackedBF16 that Kernels.bpack returned")
        if packed.isa != self.isa:
            raise ValueError(f"packed: made for the {packed.isa!r} table, used with {self.isa!r}")
        cdef int K = packed.K, N = packed.N
        cdef const float *xp
        cdef const float *bp
        cdef const float *rp
        cdef float *op
        cdef const uint8_t *pp
        cdef uint8_t *sp
        cdef int M = _rows(&xp, x, K)
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        if M == 0:
            return out
        cdef size_t need = self.t.bf16_gemm_scratch(M, K)
        if scratch is None:
            scratch = _aligned_bytes(need)
        cdef Py_ssize_t ns, n_
        _flat(<void **>&sp, scratch, "scratch", <Py_ssize_t>need, np.uint8, b'B', &ns)
        _flat(<void **>&pp, packed.data, "packed.data", 0, np.uint8, b'B', &n_, False)
        if n_ < 64:
            raise ValueError("packed: too short to hold a packed bf16 weight")
        if _overlap(xp, <size_t>M * K * 4, op, <size_t>M * N * 4):
            raise ValueError("out: must not overlap x")
        if (_overlap(sp, <size_t>ns, op, <size_t>M * N * 4)
                or _overlap(sp, <size_t>ns, xp, <size_t>M * K * 4)):
            raise ValueError("scratch: must not overlap x or out")
        cdef int st
        with nogil:
            st = self.t.bf16_gemm(xp, M, K, N, <const void *>pp, bp, rp, op, epi,
                                  <void *>sp, <size_t>ns, nt)
        _check_status(st, "bgemm")
        return out

    def bf16_dot_loop(self, long iters):
        """Runs the table's bf16 dot-product peak loop; returns the floating-point operations
        done (2 per bf16 product)."""
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        cdef double ops
        with nogil:
            ops = self.t.bf16_dot_loop(iters)
        return ops
