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

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uintptr_t
from libc.stdlib cimport free, malloc

_EPILOGUES = {"bias": BGE_EPI_BIAS, "gelu": BGE_EPI_BIAS_GELU, "residual": BGE_EPI_BIAS_RESIDUAL}
_POOLS = {"cls": BGE_POOL_CLS, "mean": BGE_POOL_MEAN}

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
    """What CPUID and XCR0 report, as {feature: bool} (BGE_CPU_FEATURES, csrc/registry.h)."""
    return {bge_cpu_feature_name(i).decode(): bool(bge_cpu_feature(i))
            for i in range(BGE_CPU_FEATURE_COUNT)}


# pointer types of the wrappers' arguments (c: const)
ctypedef const float *cf32
ctypedef float *f32
ctypedef const int32_t *ci32
ctypedef int32_t *i32
ctypedef const uint8_t *cu8
ctypedef uint8_t *u8
ctypedef const int8_t *ci8
ctypedef int8_t *i8

_DTYPES = {ord("f"): "float32", ord("i"): "int32", ord("B"): "uint8", ord("b"): "int8"}


cdef Py_ssize_t _ptr(void **p, object a, str name, Py_ssize_t d0, Py_ssize_t d1, char code,
                     bint writable=False, bint at_least=False, int *cols=NULL,
                     str dims=None) except -1:
    """*p = the data of `a`, a C-contiguous ndarray of buffer format `code` ("f" float32,
    "i" int32, "B" uint8, "b" int8) and shape (d0, d1), or (d0,) when d1 < 0; any first
    dimension when d0 < 0; with at_least, 1-D of at least d0 elements; with cols, any 2-D
    shape, its second dimension in *cols and `dims` naming it in messages ("(T, C)");
    writable when asked. Returns its first dimension; raises ValueError naming `name`, the
    expected and the given shape otherwise. The pointer stays valid while the caller holds
    `a`. One call of the buffer protocol, the fast path: numpy attribute checks and typed
    memoryviews cost a visible share of a forward pass on a short batch."""
    cdef Py_buffer v
    cdef Py_ssize_t n0 = -1, n1 = -1
    cdef bint ok = False
    if isinstance(a, np.ndarray):
        try:
            PyObject_GetBuffer(a, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
                               | (PyBUF_WRITABLE if writable else 0))
        except Exception:  # not C-contiguous, or read-only: said below
            pass
        else:
            if 1 <= v.ndim <= 2 and v.format != NULL and v.format[1] == 0:
                ok = v.format[0] == code or (  # int32 spelled "l" where long is 32-bit
                    code == b"i" and a.dtype == np.int32)
                p[0] = v.buf
                n0, n1 = v.shape[0], (v.shape[1] if v.ndim == 2 else -1)
            PyBuffer_Release(&v)
    if cols != NULL:  # any 2-D shape that fits in int
        ok = ok and 0 <= n1 <= 2147483647 and n0 <= 2147483647
        if ok:
            d0, d1, cols[0] = n0, n1, <int>n1
    if ok and n1 == (d1 if d1 >= 0 else -1) and (
            d0 < 0 or n0 == d0 or (at_least and n0 >= d0)):
        return n0
    dtype = _DTYPES[code]
    if cols != NULL and not (isinstance(a, np.ndarray) and a.ndim == 2):
        raise ValueError(f"{name}: expected a {dtype} array of shape {dims}")
    if cols != NULL:
        d0, d1 = a.shape
    if at_least and (not isinstance(a, np.ndarray) or a.ndim != 1 or a.shape[0] < d0):
        raise ValueError(f"{name}: expected a flat {dtype} array of at least {d0} elements")
    if d0 < 0 and d1 >= 0 and not (isinstance(a, np.ndarray) and a.ndim == 2):
        raise ValueError(f"{name}: expected a {dtype} array of shape (M, {d1})")
    if d0 < 0 or at_least:  # any length: the message names the one it has
        d0 = a.shape[0] if isinstance(a, np.ndarray) and a.ndim >= 1 else 0
    shape = (d0,) if d1 < 0 else (d0, int(d1))
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape {shape}, got {type(a).__name__}")
    if a.dtype != dtype or not a.flags.c_contiguous or tuple(a.shape) != shape:
        raise ValueError(
            f"{name}: expected a C-contiguous {dtype} array of shape {shape}, "
            f"got {a.dtype.name} {tuple(a.shape)}"
            + ("" if a.flags.c_contiguous else " (not C-contiguous)"))
    raise ValueError(f"{name}: the output array is read-only")


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
    _ptr(<void **>bp, bias, "bias", N, -1, b"f")
    _ptr(<void **>op, out, "out", M, N, b"f", True)
    rp[0] = NULL
    if epi == BGE_EPI_BIAS_RESIDUAL:
        _ptr(<void **>rp, res, "res", M, N, b"f")
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
    the longest and shortest text's length (bge_ragged_lengths), their data in *data."""
    cdef ci32 o
    if not isinstance(offsets, np.ndarray) or offsets.ndim != 1 or offsets.shape[0] < 2:
        raise ValueError("offsets: expected an int32 array of shape (n + 1,) with n >= 1")
    cdef int n = _ptr(<void **>&o, offsets, "offsets", offsets.shape[0], -1, b"i") - 1
    if bge_ragged_lengths(o, n, T, max_len, min_len) != BGE_OK:
        v = offsets.tolist()
        if v[0] != 0 or v[n] != T:
            raise ValueError(f"offsets: expected 0 first and {T} last, got {v[0]} .. {v[n]}")
        i = next(i for i in range(n) if v[i + 1] < v[i])
        raise ValueError(f"offsets: expected non-decreasing values, got {v[i]} then {v[i + 1]}")
    if data != NULL:
        data[0] = o
    return n


class Packed:
    """A weight W (N, K) packed for one kernel table: for its gemm (dtype "fp32", `data`
    float32), converted to bf16 for its bgemm (dtype "bf16") or quantised for its qgemm
    (dtype "int8"); `data` uint8 for these two, starting with a header that names the
    layout: another table's GEMM rejects it."""

    __slots__ = ("data", "K", "N", "isa", "dtype")

    def __init__(self, data, K, N, isa, dtype):
        self.data, self.K, self.N, self.isa, self.dtype = data, K, N, isa, dtype

    @property
    def nbytes(self):
        return self.data.nbytes


cdef int _packed(object packed, str dtype) except -1:
    if not isinstance(packed, Packed) or packed.dtype != dtype:
        made = {"int8": "Kernels.qpack", "bf16": "Kernels.bpack"}.get(dtype, "Kernels.pack")
        raise ValueError(f"packed: expected the {dtype} Packed that {made} returned")
    return 0


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
    cdef int N = w.shape[0], K = w.shape[1], G = q8_groups(K)
    cdef cf32 wp
    cdef i8 qp
    cdef f32 sp
    _ptr(<void **>&wp, w, "w", N, K, b"f")
    if N < 1 or K < 1 or K > BGE_Q8_MAX_K:
        raise ValueError(f"w: cannot quantise shape {(N, K)} (1 <= K <= {BGE_Q8_MAX_K})")
    cdef int nt = _threads(threads)
    q = np.empty((N, K), dtype=np.int8) if q is None else q
    scale = np.empty((N, G), dtype=np.float32) if scale is None else scale
    _ptr(<void **>&qp, q, "q", N, K, b"b", True)
    _ptr(<void **>&sp, scale, "scale", N, G, b"f", True)
    cdef const bge_kernels *t = bge_kernels_active() if table is None else table.t
    cdef int st
    with nogil: st = t.qs8_quantize_weights(wp, N, K, qp, sp, nt)
    if st != BGE_OK:
        raise ValueError("w: holds NaN or infinity")
    return q, scale


def bf16_bits(x):
    """bf16(x) of csrc/bge.h (the plain-C definition, bge_bf16_from_f32): the uint16 bits of
    each float32 of x (any shape, C-contiguous), rounded to nearest even, denormals taken as
    zero, NaN made quiet."""
    if not isinstance(x, np.ndarray):
        raise ValueError("x: expected a float32 numpy array")
    cdef cf32 xp
    cdef size_t n = _ptr(<void **>&xp, x.reshape(-1) if x.flags.c_contiguous else x, "x",
                         x.size, -1, b"f")
    out = np.empty(x.shape, dtype=np.uint16)
    cdef uint16_t *op = <uint16_t *><uintptr_t>out.ctypes.data
    if n:
        with nogil: bge_bf16_from_f32(xp, n, op)
    return out


def _aligned_bytes(size_t n):
    """A uint8 array of n bytes starting on a 64-byte boundary."""
    buf = np.empty(n + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off:off + n]


def _out_bytes(out, size_t n):
    """`out` checked as the destination of a packing: uint8 (n,), C-contiguous, writable,
    64-byte aligned (the kernels' aligned loads)."""
    cdef void *p
    _ptr(&p, out, "out", n, -1, b"B", True)
    if <uintptr_t>p % 64:
        raise ValueError("out: must start on a 64-byte boundary")
    return out


cdef char *_BYTE_FORMAT = "B"


cdef class Arena:
    """n bytes for packed weights (uint8, writable, through the buffer protocol) from
    bge_arena_alloc: on a 2 MiB boundary, huge pages asked for. Made without numpy, so that
    `Engine(...)` can start the load before numpy is imported; `np.frombuffer(arena,
    np.uint8)` views it, and the memory lives as long as any view."""

    cdef void *p
    cdef readonly size_t nbytes
    cdef Py_ssize_t shape[1]

    def __cinit__(self, size_t nbytes):
        if nbytes == 0:
            raise ValueError("nbytes: expected a positive size")
        self.p = bge_arena_alloc(nbytes)
        if self.p == NULL:
            raise MemoryError(f"cannot allocate a weight arena of {nbytes} bytes")
        self.nbytes, self.shape[0] = nbytes, <Py_ssize_t>nbytes

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf, view.obj, view.len = self.p, self, <Py_ssize_t>self.nbytes
        view.readonly, view.itemsize, view.ndim = 0, 1, 1
        view.format = _BYTE_FORMAT if flags & PyBUF_FORMAT else NULL  # NULL means "B" too
        view.shape, view.strides = self.shape, &view.itemsize
        view.suboffsets, view.internal = NULL, NULL

    def __dealloc__(self):
        bge_arena_free(self.p)


# a load job's dtype (its 4th field; True and False stand for "int8" and "fp32")
_KINDS = {False: BGE_LOAD_F32, True: BGE_LOAD_INT8, "fp32": BGE_LOAD_F32,
          "int8": BGE_LOAD_INT8, "bf16": BGE_LOAD_BF16}
_KIND_NAMES = {BGE_LOAD_F32: "fp32", BGE_LOAD_INT8: "int8", BGE_LOAD_BF16: "bf16"}
LOAD_ERRORS = {BGE_LOAD_SHORT: "is cut short", BGE_LOAD_NONFINITE: "holds NaN or infinity",
               BGE_LOAD_PACK: "could not be packed", BGE_LOAD_IO: "could not be read"}
# what bge_load_packed found wrong with a job, formatted with the job's fields
_BAD_JOB = {
    BGE_LOAD_BAD_KIND: "kind {3!r} is none of 'fp32', 'int8', 'bf16'",
    BGE_LOAD_BAD_PARTS: "expected 1 to {most} parts, got {n}",
    BGE_LOAD_BAD_SHAPE: "cannot pack shape ({1}, {2})",
    BGE_LOAD_BAD_ROWS: "expected parts of rows >= 1 at offsets >= 0, their rows summing to N = {1}",
    BGE_LOAD_BAD_SLOT: ("out_off {4} is not a 64-byte aligned slot of {size} bytes inside the "
                        "arena ({cap} bytes)")}


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
        cdef cf32 wp
        cdef f32 dp
        cdef int K
        cdef int N = _ptr(<void **>&wp, w, "w", -1, -1, b"f", False, False, &K, "(N, K)")
        cdef size_t size = self.t.f32_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w: cannot pack shape {(N, K)}")
        data = _aligned_bytes(4 * size) if out is None else _out_bytes(out, 4 * size)
        data = data.view(np.float32)
        _ptr(<void **>&dp, data, "out", size, -1, b"f", True)
        cdef int st
        with nogil: st = self.t.f32_pack(wp, K, N, dp)
        _check_status(st, "pack")
        return Packed(data, K, N, self.isa, "fp32")

    def gemm(self, x, packed, bias, out, epilogue="bias", res=None, threads=1):
        """out (M, N) = epilogue(x (M, K) @ W^T + bias (N)) [+ res (M, N)]."""
        _packed(packed, "fp32")
        if packed.isa != self.isa:
            raise ValueError(f"packed: made for the {packed.isa!r} table, used with {self.isa!r}")
        cdef int K = packed.K, N = packed.N
        cdef cf32 xp, pp, bp, rp
        cdef f32 op
        cdef int M = _ptr(<void **>&xp, x, "x", -1, K, b"f")
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        if M == 0:
            return out
        if _overlap(xp, <size_t>M * K * 4, op, <size_t>M * N * 4):
            raise ValueError("out: must not overlap x")
        _ptr(<void **>&pp, packed.data, "packed.data", -1, -1, b"f")
        cdef int st
        with nogil: st = self.t.f32_gemm(xp, M, K, N, pp, bp, rp, op, epi, nt)
        _check_status(st, "gemm")
        return out

    def layernorm(self, x, gamma, beta, float eps, out, threads=1):
        """out (T, C) = LayerNorm(x (T, C)) * gamma (C) + beta (C); out may be x."""
        cdef cf32 xp, gp, bp
        cdef f32 op
        cdef int C
        cdef int T = _ptr(<void **>&xp, x, "x", -1, -1, b"f", False, False, &C, "(T, C)")
        _ptr(<void **>&gp, gamma, "gamma", C, -1, b"f")
        _ptr(<void **>&bp, beta, "beta", C, -1, b"f")
        _ptr(<void **>&op, out, "out", T, C, b"f", True)
        cdef int nt = _threads(threads)
        if T == 0:
            return out
        cdef int st
        with nogil: st = self.t.f32_layernorm(xp, gp, bp, eps, op, T, C, nt)
        _check_status(st, "layernorm")
        return out

    def softmax(self, x):
        """Row-wise softmax of x (R, C) in place."""
        cdef f32 xp
        cdef int C
        cdef int R = _ptr(<void **>&xp, x, "x", -1, -1, b"f", True, False, &C, "(R, C)")
        if R == 0 or C == 0:
            return x
        cdef int st
        with nogil: st = self.t.f32_softmax(xp, R, C)
        _check_status(st, "softmax")
        return x

    def gelu(self, x):
        """GELU (erf) of every element of x, in place; x any C-contiguous float32 array."""
        if not isinstance(x, np.ndarray):
            raise ValueError("x: expected a float32 numpy array")
        cdef f32 xp
        cdef size_t n = _ptr(<void **>&xp, x.reshape(-1) if x.flags.c_contiguous else x, "x",
                             x.size, -1, b"f", True)
        if n == 0:
            return x
        cdef int st
        with nogil: st = self.t.f32_gelu(xp, n)
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
        cdef cf32 qp
        cdef ci32 offp
        cdef f32 op, sp
        _ptr(<void **>&qp, qkv, "qkv", T, 3 * H, b"f")
        _ptr(<void **>&op, out, "out", T, H, b"f", True)
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
        _ptr(<void **>&sp, scratch, "scratch", ns, -1, b"f", True)
        cdef int st
        with nogil: st = self.t.f32_attention(qp, offp, n, H, heads, scale, op, sp, ns, nt)
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
        cdef ci32 ip, offp
        cdef cf32 wp, pp, tp
        cdef f32 op
        _ptr(<void **>&ip, ids, "ids", T, -1, b"i")
        _ptr(<void **>&wp, word, "word", V, C, b"f")
        _ptr(<void **>&pp, pos, "pos", P, C, b"f")
        _ptr(<void **>&tp, type_, "type_", type_.shape[0], C, b"f")
        _ptr(<void **>&op, out, "out", T, C, b"f", True)
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
        with nogil: st = self.t.f32_embed(ip, offp, n, wp, V, pp, P, tp, op, C)
        _check_status(st, "embed")
        return out

    def pool(self, h, offsets, mode, out):
        """out (n, C) = the CLS row or the mean row of each text of h (T, C)."""
        if mode not in _POOLS:
            raise ValueError(f"mode: expected one of {list(_POOLS)}, got {mode!r}")
        cdef cf32 hp
        cdef ci32 offp
        cdef f32 op
        cdef int C
        cdef int T = _ptr(<void **>&hp, h, "h", -1, -1, b"f", False, False, &C, "(T, C)")
        cdef int max_len, min_len
        cdef int n = _ragged(offsets, T, &max_len, &min_len, &offp)
        _ptr(<void **>&op, out, "out", n, C, b"f", True)
        if min_len == 0:
            raise ValueError("offsets: every text needs at least one token to pool")
        cdef int m = _POOLS[mode]
        cdef int st
        with nogil: st = self.t.f32_pool(hp, offp, n, C, m, op)
        _check_status(st, "pool")
        return out

    def l2norm(self, x):
        """Divides each row of x (n, C) by its L2 norm, in place."""
        cdef f32 xp
        cdef int C
        cdef int n = _ptr(<void **>&xp, x, "x", -1, -1, b"f", True, False, &C, "(n, C)")
        if n == 0 or C == 0:
            return x
        cdef int st
        with nogil: st = self.t.f32_l2norm(xp, n, C)
        _check_status(st, "l2norm")
        return x

    def fma_loop(self, long iters):
        """Runs the table's FMA peak loop; returns the floating-point operations done."""
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        cdef double flops
        with nogil: flops = self.t.f32_fma_loop(iters)
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
        aligned) or new memory; returns an int8 Packed."""
        cdef ci8 wp
        cdef cf32 sp
        cdef u8 dp
        cdef int K
        cdef int N = _ptr(<void **>&wp, w_s8, "w_s8", -1, -1, b"b", False, False, &K, "(N, K)")
        _ptr(<void **>&sp, w_scale, "w_scale", N, q8_groups(K), b"f")
        if N < 1 or K < 1 or K > BGE_Q8_MAX_K:
            raise ValueError(f"w_s8: cannot pack shape {(N, K)} (1 <= K <= {BGE_Q8_MAX_K})")
        if w_s8.min() == -128:
            raise ValueError("w_s8: values must be in [-127, 127] (symmetric s8); got -128")
        cdef size_t size = self.t.qs8_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w_s8: cannot pack shape {(N, K)}")
        data = _aligned_bytes(size) if out is None else _out_bytes(out, size)
        _ptr(<void **>&dp, data, "out", size, -1, b"B", True)
        cdef int st
        with nogil: st = self.t.qs8_pack(wp, sp, K, N, <void *>dp)
        _check_status(st, "qpack")
        return Packed(data, K, N, self.isa, "int8")

    def load_packed(self, int fd, jobs, arena, threads=1):
        """Reads, checks and packs many weights from an open file (bge_load_packed: one C
        call, the GIL released, on `threads` threads, no numpy before the views it returns).

        Args:
            fd: the file (e.g. model.safetensors), read with pread.
            jobs: one (parts, N, K, kind, out_off) per weight (N, K) (bge_load_job): parts
                [(byte offset, rows)] of float32 tensors stacked by rows; kind "int8" (True)
                quantise and qpack, "bf16" bpack, "fp32" (False) pack; into arena[out_off:],
                64-byte aligned.
            arena: a writable C-contiguous uint8 buffer (an `Arena`), 64-byte aligned.

        Returns:
            (packed, errors): job i's Packed (a view of the arena) or None where it failed;
            (i, part, what) per failed job, `what` a phrase of LOAD_ERRORS.
        """
        cdef int nt = _threads(threads)
        cdef Py_buffer v
        try:
            PyObject_GetBuffer(arena, &v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)
        except (TypeError, ValueError, BufferError):
            raise ValueError("arena: expected a writable C-contiguous uint8 buffer") from None
        cdef void *ap = v.buf
        cdef size_t cap = <size_t>v.len
        cdef bint bytes_ = v.itemsize == 1 and (v.format == NULL or v.format[0] in b"Bbc")
        PyBuffer_Release(&v)  # the caller holds arena through the call
        if not bytes_:
            raise ValueError("arena: expected a writable C-contiguous uint8 buffer")
        if cap == 0 or <uintptr_t>ap % 64:
            raise ValueError("arena: must be non-empty and start on a 64-byte boundary")
        cdef Py_ssize_t njobs = len(jobs), i, p
        if njobs == 0:
            return [], []
        cdef bge_load_job *js = <bge_load_job *>malloc(njobs * sizeof(bge_load_job))
        if js == NULL:
            raise MemoryError("load_packed: cannot allocate the jobs")
        cdef int st
        try:
            for i in range(njobs):
                parts, N, K, kind, out_off = jobs[i]
                js[i].nparts, js[i].N, js[i].K = len(parts), N, K
                js[i].kind = _KINDS.get(kind, -1) if isinstance(kind, (bool, str)) else -1
                js[i].out_off = out_off
                for p in range(min(len(parts), BGE_LOAD_MAX_PARTS)):
                    js[i].off[p], js[i].rows[p] = parts[p]
            with nogil: st = bge_load_packed(self.t, fd, js, njobs, ap, cap, nt)
            if st == BGE_ERR_MEMORY:
                raise MemoryError("load_packed: cannot allocate the loading buffers")
            bad = [i for i in range(njobs) if js[i].status >= BGE_LOAD_BAD_PARTS]
            if st == BGE_ERR_ARG and bad:
                i = bad[0]
                raise ValueError(f"jobs[{i}]: " + _BAD_JOB[js[i].status].format(
                    *jobs[i], cap=cap, size=bge_load_job_bytes(self.t, &js[i]),
                    most=BGE_LOAD_MAX_PARTS, n=len(jobs[i][0])))
            _check_status(st, "load_packed")
            status = [(js[i].status, js[i].part) for i in range(njobs)]
            sizes = [bge_load_job_bytes(self.t, &js[i]) for i in range(njobs)]
        finally:
            free(js)
        packed, errors = [], []
        base = np.asarray(arena).view(np.uint8).reshape(-1)
        for i, (st, part) in enumerate(status):
            if st != BGE_LOAD_OK:
                errors.append((i, part, LOAD_ERRORS.get(st, "was not read")))
                packed.append(None)
                continue
            _parts, N, K, kind, out_off = jobs[i]
            data = base[out_off:out_off + sizes[i]]
            dtype = _KIND_NAMES[_KINDS[kind]]
            packed.append(Packed(data.view(np.float32) if dtype == "fp32" else data, K, N,
                                 self.isa, dtype))
        return packed, errors

    def quantize(self, x, q, scale, zp, threads=1):
        """Quantises x (M, K) float32 row by row and group by group (Q8_GROUP k each) into
        q (M, Kp) uint8, scale (M, G) float32 and zp (M, G) int32, Kp = q8_row_bytes(K),
        G = q8_groups(K); q's padding bytes are set to the zp of the row's last group."""
        cdef cf32 xp
        cdef u8 qp
        cdef f32 sp
        cdef i32 zp_
        cdef int K
        cdef int M = _ptr(<void **>&xp, x, "x", -1, -1, b"f", False, False, &K, "(M, K)")
        cdef int Kp = q8_row_bytes(K), G = q8_groups(K)
        _ptr(<void **>&qp, q, "q", M, Kp, b"B", True)
        _ptr(<void **>&sp, scale, "scale", M, G, b"f", True)
        _ptr(<void **>&zp_, zp, "zp", M, G, b"i", True)
        cdef int nt = _threads(threads)
        if K < 1 or K > BGE_Q8_MAX_K:
            raise ValueError(f"x: expected 1 <= K <= {BGE_Q8_MAX_K}, got shape {(M, K)}")
        if M == 0:
            return q
        cdef int st
        with nogil: st = self.t.qu8_quantize(xp, M, K, qp, sp, zp_, nt)
        _check_status(st, "quantize")
        return q

    cdef int _q_rows(self, object q, object packed, const uint8_t **qp,
                     const uint8_t **pp) except -1:
        """Checks q (M, Kp) uint8 against packed; returns M, with q's data in *qp and the
        packed bytes in *pp."""
        _packed(packed, "int8")
        cdef int Kp = q8_row_bytes(packed.K)
        if not isinstance(q, np.ndarray) or q.ndim != 2:
            raise ValueError(f"q: expected a uint8 array of shape (M, {Kp})")
        _ptr(<void **>qp, q, "q", q.shape[0], Kp, b"B")
        if _ptr(<void **>pp, packed.data, "packed.data", 0, -1, b"B", False, True) < 64:
            raise ValueError("packed: too short to hold a packed int8 weight")
        return q.shape[0]

    def qgemm(self, q, scale, zp, packed, bias, out, epilogue="bias", res=None, threads=1):
        """out (M, N) = epilogue(sum over groups g of (q - zp) @ w_s8^T * scale w_scale
        + bias) [+ res (M, N)]: q (M, Kp), scale (M, G), zp (M, G) from quantize,
        G = q8_groups(K); packed from this table's qpack."""
        cdef cu8 qp, pp
        cdef int M = self._q_rows(q, packed, &qp, &pp)
        cdef int K = packed.K, N = packed.N
        cdef int G = q8_groups(K)
        cdef cf32 sp
        cdef ci32 zp_
        _ptr(<void **>&sp, scale, "scale", M, G, b"f")
        _ptr(<void **>&zp_, zp, "zp", M, G, b"i")
        cdef cf32 bp, rp
        cdef f32 op
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
        _packed(packed, "int8")
        cdef int K = packed.K, N = packed.N
        cdef int Kp = (K + 3) // 4 * 4, G = (K + BGE_Q8_GROUP - 1) // BGE_Q8_GROUP
        cdef cf32 xp, bp, rp
        cdef f32 op, sp
        cdef u8 qp
        cdef i32 zp_
        cdef cu8 pp
        cdef int M = _ptr(<void **>&xp, x, "x", -1, K, b"f")
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        cdef Py_ssize_t nq_bytes = _ptr(<void **>&qp, q, "q", <Py_ssize_t>M * Kp, -1, b"B", True,
                                        True)
        _ptr(<void **>&sp, scale, "scale", <Py_ssize_t>M * G, -1, b"f", True, True)
        _ptr(<void **>&zp_, zp, "zp", <Py_ssize_t>M * G, -1, b"i", True, True)
        if M == 0:
            return out
        if _ptr(<void **>&pp, packed.data, "packed.data", 0, -1, b"B", False, True) < 64:
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
        cdef cu8 qp, pp
        cdef int M = self._q_rows(q, packed, &qp, &pp)
        cdef int K = packed.K, N = packed.N
        cdef i32 ap
        _ptr(<void **>&ap, acc, "acc", M, N, b"i", True)
        cdef int nt = _threads(threads)
        if M == 0:
            return acc
        if _overlap(qp, <size_t>M * q8_row_bytes(K), ap, <size_t>M * N * 4):
            raise ValueError("acc: must not overlap q")
        cdef int st
        with nogil: st = self.t.qu8s8_gemm_i32(qp, M, K, N, <const void *>pp, ap, nt)
        _check_status(st, "qgemm_i32")
        return acc

    def dot_loop(self, long iters):
        """Runs the table's int8 dot-product peak loop; returns the integer ops done (2 per
        u8 x s8 product)."""
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        cdef double ops
        with nogil: ops = self.t.qu8s8_dot_loop(iters)
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
        aligned) or new memory; returns a bf16 Packed."""
        cdef cf32 wp
        cdef u8 dp
        cdef int K
        cdef int N = _ptr(<void **>&wp, w, "w", -1, -1, b"f", False, False, &K, "(N, K)")
        cdef size_t size = self.t.bf16_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w: cannot pack shape {(N, K)}")
        data = _aligned_bytes(size) if out is None else _out_bytes(out, size)
        _ptr(<void **>&dp, data, "out", size, -1, b"B", True)
        cdef int st
        with nogil: st = self.t.bf16_pack(wp, K, N, <void *>dp)
        _check_status(st, "bpack")
        return Packed(data, K, N, self.isa, "bf16")

    def bgemm(self, x, packed, bias, out, epilogue="bias", res=None, scratch=None, threads=1):
        """out (M, N) = epilogue(bf16(x) (M, K) @ bf16(W)^T + bias (N)) [+ res (M, N)], the
        sums in fp32 over the whole of K (csrc/bge.h). packed: this table's bpack; scratch:
        a flat uint8 buffer of at least bgemm_scratch_bytes(M, K) (new memory when None)."""
        _packed(packed, "bf16")
        if packed.isa != self.isa:
            raise ValueError(f"packed: made for the {packed.isa!r} table, used with {self.isa!r}")
        cdef int K = packed.K, N = packed.N
        cdef cf32 xp, bp, rp
        cdef f32 op
        cdef cu8 pp
        cdef u8 sp
        cdef int M = _ptr(<void **>&xp, x, "x", -1, K, b"f")
        cdef int epi = _epilogue(epilogue, bias, res, out, M, N, &bp, &rp, &op)
        cdef int nt = _threads(threads)
        if M == 0:
            return out
        cdef size_t need = self.t.bf16_gemm_scratch(M, K)
        scratch = _aligned_bytes(need) if scratch is None else scratch
        cdef Py_ssize_t ns = _ptr(<void **>&sp, scratch, "scratch", need, -1, b"B", True, True)
        if _ptr(<void **>&pp, packed.data, "packed.data", 0, -1, b"B", False, True) < 64:
            raise ValueError("packed: too short to hold a packed bf16 weight")
        if _overlap(xp, <size_t>M * K * 4, op, <size_t>M * N * 4):
            raise ValueError("out: must not overlap x")
        if (_overlap(sp, <size_t>ns, op, <size_t>M * N * 4)
                or _overlap(sp, <size_t>ns, xp, <size_t>M * K * 4)):
            raise ValueError("scratch: must not overlap x or out")
        cdef int st
        with nogil:
            st = self.t.bf16_gemm(xp, M, K, N, <const void *>pp, bp, rp, op, epi, <void *>sp,
                                  <size_t>ns, nt)
        _check_status(st, "bgemm")
        return out

    def bf16_dot_loop(self, long iters):
        """Runs the table's bf16 dot-product peak loop; returns the floating-point operations
        done (2 per bf16 product)."""
        if iters < 1:
            raise ValueError(f"iters: expected >= 1, got {iters}")
        cdef double ops
        with nogil: ops = self.t.bf16_dot_loop(iters)
        return ops
