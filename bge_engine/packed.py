"""What the kernel boundary (`_kernels.pyx`) hands out and reports in plain Python: the
`Packed` weight, 64-byte aligned byte buffers, and the messages of its argument checks
(built only when a check fails, so the validated fast path stays in Cython)."""

from __future__ import annotations


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


def aligned_bytes(n: int):
    """A uint8 array of n bytes starting on a 64-byte boundary."""
    import numpy as np

    buf = np.empty(n + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off:off + n]


def array_error(a, name, d0, d1, dtype, at_least=False, any_2d=False, dims=None):
    """The ValueError for argument `name`, which failed the boundary's check of an array
    (`_ptr` in _kernels.pyx): a C-contiguous `dtype` ndarray of shape (d0, d1), or (d0,)
    when d1 < 0; any first dimension when d0 < 0; with at_least, 1-D of at least d0
    elements; with any_2d, any 2-D shape `dims` names ("(T, C)"); writable where asked.
    It names the argument, the expected and the given shape."""
    import numpy as np

    nd = isinstance(a, np.ndarray)
    if any_2d and not (nd and a.ndim == 2):
        return ValueError(f"{name}: expected a {dtype} array of shape {dims}")
    if any_2d:
        d0, d1 = a.shape
    if at_least and (not nd or a.ndim != 1 or a.shape[0] < d0):
        return ValueError(f"{name}: expected a flat {dtype} array of at least {d0} elements")
    if d0 < 0 and d1 >= 0 and not (nd and a.ndim == 2):
        return ValueError(f"{name}: expected a {dtype} array of shape (M, {d1})")
    if d0 < 0 or at_least:  # any length: the message names the one it has
        d0 = a.shape[0] if nd and a.ndim >= 1 else 0
    shape = (d0,) if d1 < 0 else (d0, int(d1))
    if not nd:
        return ValueError(
            f"{name}: expected a numpy array of shape {shape}, got {type(a).__name__}")
    if a.dtype != dtype or not a.flags.c_contiguous or tuple(a.shape) != shape:
        return ValueError(
            f"{name}: expected a C-contiguous {dtype} array of shape {shape}, "
            f"got {a.dtype.name} {tuple(a.shape)}"
            + ("" if a.flags.c_contiguous else " (not C-contiguous)"))
    return ValueError(f"{name}: the output array is read-only")


def ragged_error(offsets, T):
    """The ValueError for ragged offsets (int32 (n + 1,), n >= 1) that are not 0 first,
    non-decreasing and T last."""
    v = offsets.tolist()
    n = len(v) - 1
    if v[0] != 0 or v[n] != T:
        return ValueError(f"offsets: expected 0 first and {T} last, got {v[0]} .. {v[n]}")
    i = next(i for i in range(n) if v[i + 1] < v[i])
    return ValueError(f"offsets: expected non-decreasing values, got {v[i]} then {v[i + 1]}")


def load_results(jobs, done, arena, isa):
    """`Kernels.load_packed`'s answer from what bge_load_packed did: done[i] = (what, part,
    nbytes) for jobs[i], `what` None where it loaded, else a phrase of LOAD_ERRORS.
    Returns (packed, errors): job i's Packed (a view of its nbytes in the arena, float32
    for "fp32") or None; (i, part, what) per failed job."""
    import numpy as np

    packed, errors = [], []
    base = np.asarray(arena).view(np.uint8).reshape(-1)
    for i, (what, part, nbytes) in enumerate(done):
        if what is not None:
            errors.append((i, part, what))
            packed.append(None)
            continue
        _parts, N, K, kind, out_off = jobs[i]
        dtype = {False: "fp32", True: "int8"}.get(kind, kind)  # the old bool spelling
        data = base[out_off:out_off + nbytes]
        packed.append(Packed(data.view(np.float32) if dtype == "fp32" else data, K, N, isa,
                             dtype))
    return packed, errors
