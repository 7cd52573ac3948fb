# cython: language_level=3
"""The boundary to the C kernels (csrc/).

Every wrapper checks dtype, C-contiguity and shape of each array against the shapes the C
function documents, raising ValueError that names the argument, the expected and the given
shape; then it calls C with the GIL released. Outputs are written into arrays the caller
owns (the engine's workspace), so the hot path allocates nothing. What is plain Python (the
`Packed` weight, the checks' messages, the loader's results) lives in bge_engine/packed.py.

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

from .packed import Packed, aligned_bytes, array_error, load_results, ragged_error

_aligned_bytes = aligned_bytes  # the name tests use

_EPILOGUES = {"bias": BGE_EPI_BIAS, "gelu": BGE_EPI_BIAS_GELU, "residual": BGE_EPI_BIAS_RESIDUAL}
_POOLS = {"cls": BGE_POOL_CLS, "mean": BGE_POOL_MEAN}

_init_status = bge_init()


def isa_env_unknown():
    """Whether BGE_ISA held an unknown name at start-up (bge_init; the package warns)."""
    return _init_status != BGE_OK


def isa_names():
    """Every level's name, lowest first."""
    return [bge_isa_name(i).decode() for i in range(BGE_ISA_COUNT)]


def usable_isas():
    """The levels this build and this machine can run, lowest first (BGE_ISA ignored)."""
    return [bge_isa_name(i).decode() for i in range(BGE_ISA_COUNT) if bge_kernels_for(i) != NULL]


def built_isas():
    """The levels whose folder this build compiled, whatever the CPU."""
    return [bge_isa_name(i).decode() for i in range(BGE_ISA_COUNT) if bge_isa_built(i)]


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
    writable when asked. Returns its first dimension; raises packed.array_error otherwise.
    The pointer stays valid while the caller holds `a`. One call of the buffer protocol, the
    fast path: numpy attribute checks and typed memoryviews cost a visible share of a
    forward pass on a short batch."""
    cdef Py_buffer v
    cdef Py_ssize_t n0 = -1, n1 = -1
    cdef bint ok = False
    if isinstance(a, np.ndarray):
        try:
            PyObject_GetBuffer(a, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
                               | (PyBUF_WRITABLE if writable else 0))
        except Exception:  # not C-contiguous, or read-only: said by array_error
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
    raise array_error(a, name, d0, d1, _DTYPES[code], at_least, cols != NULL, dims)


cdef Py_ssize_t _flat(void **p, object x, bint writable) except -1:
    """*p = the data of x, a C-contiguous float32 array of any shape; returns its size."""
    if not isinstance(x, np.ndarray):
        raise ValueError("x: expected a float32 numpy array")
    return _ptr(p, x.reshape(-1) if x.flags.c_contiguous else x, "x", x.size, -1, b"f", writable)


cdef int _apart(const void *a, size_t na, const void *b, size_t nb, str what) except -1:
    """Raises ValueError(what) when the byte ranges [a, a + na) and [b, b + nb) share a
    byte (an output must not overwrite an input the kernel still reads)."""
    cdef size_t x = <size_t>a, y = <size_t>b
    if na > 0 and nb > 0 and x < y + nb and y < x + na:
        raise ValueError(what)
    return 0


cdef int _threads(object threads) except -1:
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    return threads


cdef object _done(int status, str what, object result):
    """`result` when the C call returned BGE_OK; else the ValueError its status names."""
    if status == BGE_OK:
        return result
    if status == BGE_ERR_SCRATCH:
        raise ValueError(f"{what}: the scratch buffer is too small")
    if status == BGE_ERR_PACKING:
        raise ValueError(f"{what}: the weights were packed by another kernel table")
    raise ValueError(f"{what}: the C kernel rejected its arguments (status {status})")


cdef struct _Linear:  # the checked arguments of a GEMM call
    const float *x
    const float *bias
    const float *res
    float *out
    int M, K, N, epi, nt


cdef int _linear(_Linear *a, object x, object packed, str dtype, str isa, object bias,
                 object out, object epilogue, object res, object threads) except -1:
    """Checks a GEMM's arguments into *a: packed a Packed of dtype (made for table isa
    unless None), x (M, K) float32, and the rest as _epilogue does."""
    _packed(packed, dtype, isa)
    a.K, a.N = packed.K, packed.N
    a.M = _ptr(<void **>&a.x, x, "x", -1, a.K, b"f")
    return _epilogue(a, bias, out, epilogue, res, threads)


cdef int _epilogue(_Linear *a, object bias, object out, object epilogue, object res,
                   object threads) except -1:
    """Checks the epilogue's arguments of a GEMM of a.M rows, a.N columns into *a: bias (N),
    out (M, N) writable, res (M, N) with the "residual" epilogue and None otherwise (a.res
    NULL), threads >= 1."""
    if epilogue not in _EPILOGUES:
        raise ValueError(f"epilogue: expected one of {list(_EPILOGUES)}, got {epilogue!r}")
    a.epi = _EPILOGUES[epilogue]
    _ptr(<void **>&a.bias, bias, "bias", a.N, -1, b"f")
    _ptr(<void **>&a.out, out, "out", a.M, a.N, b"f", True)
    a.res = NULL
    if a.epi == BGE_EPI_BIAS_RESIDUAL:
        _ptr(<void **>&a.res, res, "res", a.M, a.N, b"f")
    elif res is not None:
        raise ValueError("res: only the 'residual' epilogue takes it")
    a.nt = _threads(threads)
    return 0


cdef int _ragged(object offsets, int T, int *max_len, int *min_len,
                 const int32_t **data=NULL) except -1:
    """Checks ragged offsets: int32 (n+1,), 0 first, non-decreasing, T last; returns n and
    the longest and shortest text's length (bge_ragged_lengths), their data in *data."""
    cdef ci32 o
    if not isinstance(offsets, np.ndarray) or offsets.ndim != 1 or offsets.shape[0] < 2:
        raise ValueError("offsets: expected an int32 array of shape (n + 1,) with n >= 1")
    cdef int n = _ptr(<void **>&o, offsets, "offsets", offsets.shape[0], -1, b"i") - 1
    if bge_ragged_lengths(o, n, T, max_len, min_len) != BGE_OK:
        raise ragged_error(offsets, T)
    if data != NULL:
        data[0] = o
    return n


cdef int _packed(object packed, str dtype, str isa=None) except -1:
    """Checks that `packed` is a Packed of `dtype`, made for table `isa` when given."""
    if not isinstance(packed, Packed) or packed.dtype != dtype:
        made = {"int8": "Kernels.qpack", "bf16": "Kernels.bpack"}.get(dtype, "Kernels.pack")
        raise ValueError(f"packed: expected the {dtype} Packed that {made} returned")
    if isa is not None and packed.isa != isa:
        raise ValueError(f"packed: made for the {packed.isa!r} table, used with {isa!r}")
    return 0


cdef int _packed_bytes(object packed, const uint8_t **pp) except -1:
    """*pp = the bytes of an int8 or bf16 Packed, which start with a 64-byte header."""
    if _ptr(<void **>pp, packed.data, "packed.data", 0, -1, b"B", False, True) < 64:
        raise ValueError(f"packed: too short to hold a packed {packed.dtype} weight")
    return 0


cdef object _pack_out(object out, size_t n, uint8_t **dp):
    """The destination of a packing of n bytes: `out` checked (uint8 (n,), C-contiguous,
    writable, 64-byte aligned: the kernels' aligned loads), or new memory; its data in *dp."""
    data = aligned_bytes(n) if out is None else out
    _ptr(<void **>dp, data, "out", n, -1, b"B", True)
    if <uintptr_t>dp[0] % 64:
        raise ValueError("out: must start on a 64-byte boundary")
    return data


ctypedef double (*_loop_fn)(long iters) noexcept nogil


cdef double _peak_loop(_loop_fn fn, long iters) except? -1:
    """Runs a table's peak loop (fma_loop, dot_loop, bf16_dot_loop) for iters rounds."""
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters}")
    cdef double ops
    with nogil: ops = fn(iters)
    return ops


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
    cdef cf32 wp
    cdef i8 qp
    cdef f32 sp
    cdef int K, N = _ptr(<void **>&wp, w, "w", -1, -1, b"f", False, False, &K, "(N, K)")
    cdef int G = q8_groups(K)
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
    cdef cf32 xp
    cdef size_t n = _flat(<void **>&xp, x, False)
    out = np.empty(x.shape, dtype=np.uint16)
    cdef uint16_t *op = <uint16_t *><uintptr_t>out.ctypes.data
    if n:
        with nogil: bge_bf16_from_f32(xp, n, op)
    return out


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
        return self._pack_float(w, out, True)

    cdef object _pack_float(self, object w, object out, bint f32):
        """pack (f32) or bpack (not f32) of w (N, K) float32 into out or new memory."""
        cdef cf32 wp
        cdef u8 dp
        cdef int K, st
        cdef int N = _ptr(<void **>&wp, w, "w", -1, -1, b"f", False, False, &K, "(N, K)")
        cdef size_t size = (4 * self.t.f32_packed_size(K, N) if f32
                            else self.t.bf16_packed_size(K, N))
        if size == 0:
            raise ValueError(f"w: cannot pack shape {(N, K)}")
        data = _pack_out(out, size, &dp)
        with nogil:
            st = self.t.f32_pack(wp, K, N, <float *>dp) if f32 else self.t.bf16_pack(wp, K, N, dp)
        _done(st, "pack" if f32 else "bpack", None)
        return Packed(data.view(np.float32) if f32 else data, K, N, self.isa,
                      "fp32" if f32 else "bf16")

    def gemm(self, x, packed, bias, out, epilogue="bias", res=None, threads=1):
        """out (M, N) = epilogue(x (M, K) @ W^T + bias (N)) [+ res (M, N)]."""
        cdef _Linear a
        _linear(&a, x, packed, "fp32", self.isa, bias, out, epilogue, res, threads)
        if a.M == 0:
            return out
        _apart(a.x, <size_t>a.M * a.K * 4, a.out, <size_t>a.M * a.N * 4, "out: must not overlap x")
        cdef cf32 pp
        cdef int st
        _ptr(<void **>&pp, packed.data, "packed.data", -1, -1, b"f")
        with nogil:
            st = self.t.f32_gemm(a.x, a.M, a.K, a.N, pp, a.bias, a.res, a.out, a.epi, a.nt)
        return _done(st, "gemm", out)

    def layernorm(self, x, gamma, beta, float eps, out, threads=1):
        """out (T, C) = LayerNorm(x (T, C)) * gamma (C) + beta (C); out may be x."""
        cdef cf32 xp, gp, bp
        cdef f32 op
        cdef int C, st
        cdef int T = _ptr(<void **>&xp, x, "x", -1, -1, b"f", False, False, &C, "(T, C)")
        _ptr(<void **>&gp, gamma, "gamma", C, -1, b"f")
        _ptr(<void **>&bp, beta, "beta", C, -1, b"f")
        _ptr(<void **>&op, out, "out", T, C, b"f", True)
        cdef int nt = _threads(threads)
        if T == 0:
            return out
        with nogil: st = self.t.f32_layernorm(xp, gp, bp, eps, op, T, C, nt)
        return _done(st, "layernorm", out)

    def softmax(self, x):
        """Row-wise softmax of x (R, C) in place."""
        cdef f32 xp
        cdef int C, st
        cdef int R = _ptr(<void **>&xp, x, "x", -1, -1, b"f", True, False, &C, "(R, C)")
        if R == 0 or C == 0:
            return x
        with nogil: st = self.t.f32_softmax(xp, R, C)
        return _done(st, "softmax", x)

    def gelu(self, x):
        """GELU (erf) of every element of x, in place; x any C-contiguous float32 array."""
        cdef f32 xp
        cdef int st
        cdef size_t n = _flat(<void **>&xp, x, True)
        if n == 0:
            return x
        with nogil: st = self.t.f32_gelu(xp, n)
        return _done(st, "gelu", x)

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
        cdef int max_len, min_len, st
        _ptr(<void **>&qp, qkv, "qkv", T, 3 * H, b"f")
        _ptr(<void **>&op, out, "out", T, H, b"f", True)
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
        with nogil: st = self.t.f32_attention(qp, offp, n, H, heads, scale, op, sp, ns, nt)
        return _done(st, "attention", out)

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
        cdef int max_len, min_len, st
        _ptr(<void **>&ip, ids, "ids", T, -1, b"i")
        _ptr(<void **>&wp, word, "word", V, C, b"f")
        _ptr(<void **>&pp, pos, "pos", P, C, b"f")
        _ptr(<void **>&tp, type_, "type_", type_.shape[0], C, b"f")
        _ptr(<void **>&op, out, "out", T, C, b"f", True)
        cdef int n = _ragged(offsets, T, &max_len, &min_len, &offp)
        if T == 0:
            return out
        if max_len > P:
            raise ValueError(
                f"offsets: a text of {max_len} tokens is longer than the {P} positions")
        cdef Py_ssize_t t = bge_find_outside_i32(ip, T, 0, V)  # short: with the GIL, as before
        if t >= 0:
            raise ValueError(f"ids: every id must be in [0, {V}), got {ip[t]} at {t}")
        with nogil: st = self.t.f32_embed(ip, offp, n, wp, V, pp, P, tp, op, C)
        return _done(st, "embed", out)

    def pool(self, h, offsets, mode, out):
        """out (n, C) = the CLS row or the mean row of each text of h (T, C)."""
        if mode not in _POOLS:
            raise ValueError(f"mode: expected one of {list(_POOLS)}, got {mode!r}")
        cdef cf32 hp
        cdef ci32 offp
        cdef f32 op
        cdef int C, max_len, min_len, st, m = _POOLS[mode]
        cdef int T = _ptr(<void **>&hp, h, "h", -1, -1, b"f", False, False, &C, "(T, C)")
        cdef int n = _ragged(offsets, T, &max_len, &min_len, &offp)
        _ptr(<void **>&op, out, "out", n, C, b"f", True)
        if min_len == 0:
            raise ValueError("offsets: every text needs at least one token to pool")
        with nogil: st = self.t.f32_pool(hp, offp, n, C, m, op)
        return _done(st, "pool", out)

    def l2norm(self, x):
        """Divides each row of x (n, C) by its L2 norm, in place."""
        cdef f32 xp
        cdef int C, st
        cdef int n = _ptr(<void **>&xp, x, "x", -1, -1, b"f", True, False, &C, "(n, C)")
        if n == 0 or C == 0:
            return x
        with nogil: st = self.t.f32_l2norm(xp, n, C)
        return _done(st, "l2norm", x)

    def fma_loop(self, long iters):
        """Runs the table's FMA peak loop; returns the floating-point operations done."""
        return _peak_loop(self.t.f32_fma_loop, iters)

    def load_packed(self, int fd, jobs, arena, threads=1):
        """Reads, checks and packs many weights from an open file in one C call without the
        GIL (bge_load_packed, csrc/load.c); see _load_packed in _load.pxi."""
        return _load_packed(self, fd, jobs, arena, threads)

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
        cdef int K, st
        cdef int N = _ptr(<void **>&wp, w_s8, "w_s8", -1, -1, b"b", False, False, &K, "(N, K)")
        _ptr(<void **>&sp, w_scale, "w_scale", N, q8_groups(K), b"f")
        if N < 1 or K < 1 or K > BGE_Q8_MAX_K:
            raise ValueError(f"w_s8: cannot pack shape {(N, K)} (1 <= K <= {BGE_Q8_MAX_K})")
        cdef Py_ssize_t at
        with nogil: at = bge_find_s8(wp, <size_t>N * K, -128)
        if at >= 0:
            raise ValueError("w_s8: values must be in [-127, 127] (symmetric s8); got -128")
        cdef size_t size = self.t.qs8_packed_size(K, N)
        if size == 0:
            raise ValueError(f"w_s8: cannot pack shape {(N, K)}")
        data = _pack_out(out, size, &dp)
        with nogil: st = self.t.qs8_pack(wp, sp, K, N, <void *>dp)
        _done(st, "qpack", None)
        return Packed(data, K, N, self.isa, "int8")

    def quantize(self, x, q, scale, zp, threads=1):
        """Quantises x (M, K) float32 row by row and group by group (Q8_GROUP k each) into
        q (M, Kp) uint8, scale (M, G) float32 and zp (M, G) int32, Kp = q8_row_bytes(K),
        G = q8_groups(K); q's padding bytes are set to the zp of the row's last group."""
        cdef cf32 xp
        cdef u8 qp
        cdef f32 sp
        cdef i32 zp_
        cdef int K, st
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
        with nogil: st = self.t.qu8_quantize(xp, M, K, qp, sp, zp_, nt)
        return _done(st, "quantize", q)

    cdef int _q_rows(self, object q, object packed, const uint8_t **qp,
                     const uint8_t **pp) except -1:
        """Checks q (M, Kp) uint8 against packed; returns M, with q's data in *qp and the
        packed bytes in *pp."""
        _packed(packed, "int8")
        cdef int M = _ptr(<void **>qp, q, "q", -1, q8_row_bytes(packed.K), b"B")
        _packed_bytes(packed, pp)
        return M

    def qgemm(self, q, scale, zp, packed, bias, out, epilogue="bias", res=None, threads=1):
        """out (M, N) = epilogue(sum over groups g of (q - zp) @ w_s8^T * scale w_scale
        + bias) [+ res (M, N)]: q (M, Kp), scale (M, G), zp (M, G) from quantize,
        G = q8_groups(K); packed from this table's qpack."""
        cdef cu8 qp, pp
        cdef _Linear a
        a.M = self._q_rows(q, packed, &qp, &pp)
        a.K, a.N = packed.K, packed.N
        cdef int G = q8_groups(a.K), st
        cdef cf32 sp
        cdef ci32 zp_
        _ptr(<void **>&sp, scale, "scale", a.M, G, b"f")
        _ptr(<void **>&zp_, zp, "zp", a.M, G, b"i")
        _epilogue(&a, bias, out, epilogue, res, threads)
        if a.M == 0:
            return out
        _apart(qp, <size_t>a.M * q8_row_bytes(a.K), a.out, <size_t>a.M * a.N * 4,
               "out: must not overlap q")
        with nogil:
            st = self.t.qu8s8_gemm(qp, sp, zp_, a.M, a.K, a.N, <const void *>pp, a.bias, a.res,
                                   a.out, a.epi, a.nt)
        return _done(st, "qgemm", out)

    def qlinear(self, x, packed, bias, out, q, scale, zp, epilogue="bias", res=None,
                threads=1):
        """out (M, N) = epilogue(x (M, K) @ W^T + bias) [+ res] in int8: quantise() then
        qgemm() in one call, with the GIL released once (the int8 Linear of the forward
        pass). q, scale and zp are flat workspace buffers of at least M * q8_row_bytes(K)
        uint8, M * q8_groups(K) float32 and M * q8_groups(K) int32; they receive the
        quantised x."""
        cdef _Linear a
        _linear(&a, x, packed, "int8", None, bias, out, epilogue, res, threads)
        cdef int M = a.M, K = a.K, N = a.N, st
        cdef Py_ssize_t MG = <Py_ssize_t>M * ((K + BGE_Q8_GROUP - 1) // BGE_Q8_GROUP)
        cdef f32 sp
        cdef u8 qp
        cdef i32 zp_
        cdef cu8 pp
        cdef Py_ssize_t nq = _ptr(<void **>&qp, q, "q", <Py_ssize_t>M * ((K + 3) // 4 * 4), -1,
                                  b"B", True, True)
        _ptr(<void **>&sp, scale, "scale", MG, -1, b"f", True, True)
        _ptr(<void **>&zp_, zp, "zp", MG, -1, b"i", True, True)
        if M == 0:
            return out
        _packed_bytes(packed, &pp)
        _apart(qp, <size_t>nq, a.out, <size_t>M * N * 4, "q: must not overlap x or out")
        _apart(qp, <size_t>nq, a.x, <size_t>M * K * 4, "q: must not overlap x or out")
        # a short x is quantised on one thread: waking the others costs more than the work
        # (each row's bytes are the same on any number of threads)
        cdef int nq_threads = a.nt if <long long>M * K >= 32768 else 1
        with nogil:
            st = self.t.qu8_quantize(a.x, M, K, qp, sp, zp_, nq_threads)
            if st == BGE_OK:
                st = self.t.qu8s8_gemm(qp, sp, zp_, M, K, N, <const void *>pp, a.bias, a.res,
                                       a.out, a.epi, a.nt)
        return _done(st, "qlinear", out)

    def qgemm_i32(self, q, packed, acc, threads=1):
        """acc (M, N) int32 = q (M, Kp) @ w_s8^T, the raw sums (no zero-point term)."""
        cdef cu8 qp, pp
        cdef int M = self._q_rows(q, packed, &qp, &pp)
        cdef int K = packed.K, N = packed.N, st
        cdef i32 ap
        _ptr(<void **>&ap, acc, "acc", M, N, b"i", True)
        cdef int nt = _threads(threads)
        if M == 0:
            return acc
        _apart(qp, <size_t>M * q8_row_bytes(K), ap, <size_t>M * N * 4,
               "acc: must not overlap q")
        with nogil: st = self.t.qu8s8_gemm_i32(qp, M, K, N, <const void *>pp, ap, nt)
        return _done(st, "qgemm_i32", acc)

    def dot_loop(self, long iters):
        """Runs the table's int8 dot-product peak loop; returns the integer ops done (2 per
        u8 x s8 product)."""
        return _peak_loop(self.t.qu8s8_dot_loop, iters)

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
        return self._pack_float(w, out, False)

    def bgemm(self, x, packed, bias, out, epilogue="bias", res=None, scratch=None, threads=1):
        """out (M, N) = epilogue(bf16(x) (M, K) @ bf16(W)^T + bias (N)) [+ res (M, N)], the
        sums in fp32 over the whole of K (csrc/bge.h). packed: this table's bpack; scratch:
        a flat uint8 buffer of at least bgemm_scratch_bytes(M, K) (new memory when None)."""
        cdef _Linear a
        _linear(&a, x, packed, "bf16", self.isa, bias, out, epilogue, res, threads)
        cdef size_t nx = <size_t>a.M * a.K * 4, no = <size_t>a.M * a.N * 4
        cdef cu8 pp
        cdef u8 sp
        cdef int st
        if a.M == 0:
            return out
        cdef size_t need = self.t.bf16_gemm_scratch(a.M, a.K)
        scratch = aligned_bytes(need) if scratch is None else scratch
        cdef Py_ssize_t ns = _ptr(<void **>&sp, scratch, "scratch", need, -1, b"B", True, True)
        _packed_bytes(packed, &pp)
        _apart(a.x, nx, a.out, no, "out: must not overlap x")
        _apart(sp, <size_t>ns, a.out, no, "scratch: must not overlap x or out")
        _apart(sp, <size_t>ns, a.x, nx, "scratch: must not overlap x or out")
        with nogil:
            st = self.t.bf16_gemm(a.x, a.M, a.K, a.N, <const void *>pp, a.bias, a.res, a.out,
                                  a.epi, <void *>sp, <size_t>ns, a.nt)
        return _done(st, "bgemm", out)

    def bf16_dot_loop(self, long iters):
        """Runs the table's bf16 dot-product peak loop; returns the floating-point operations
        done (2 per bf16 product)."""
        return _peak_loop(self.t.bf16_dot_loop, iters)


include "_load.pxi"
