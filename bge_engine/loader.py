"""Loading a checkpoint's matmul weights into one arena, packed for a kernel table.

Weights stored as float32 are read, checked, quantised where int8 and packed by
`Kernels.load_packed` (csrc/load.c) in one C call on threads of their own; others (float16)
are read by `Checkpoint.matrix` and packed one by one here. `BertModel` takes the result.

int8 weights (the scheme: csrc/bge.h, "int8 GEMM") are symmetric per output channel and
group of G = Q8_GROUP (64) consecutive k (group g: k in [G g, min(G g + G, K)),
ngroups = ceil(K / G)): w_scale[n, g] = max_{k in g} |w[n, k]| / 127 and
w_s8[n, k] = round_half_even(w[n, k] / w_scale[n, g]), clipped to [-127, 127] (an all-zero
group gets scale 1). It runs in C at load (the table's `qs8_quantize_weights` slot: the
plain-C reference, or 8 or 16 lanes at a time on the SIMD levels, the same bytes); tests
hold it to a numpy transcription of these lines, byte for byte, and every level to the
reference. Activations are quantised per token and group at run time (Kernels.qlinear).
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional, Tuple, TypeVar

from . import _kernels
from ._lazy import numpy_on_first_use
from .errors import ModelFormatError
from .weights import MATMULS, Checkpoint

np = numpy_on_first_use(globals())

T = TypeVar("T")


def quantize_weight(w: np.ndarray, threads: int = 1, q: Optional[np.ndarray] = None,
                    scale: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """w (N, K) float32 -> (w_s8 (N, K) int8, w_scale (N, ngroups) float32), written into
    q and scale when given (a loader's reused buffers)."""
    return _kernels.quantize_weight(np.ascontiguousarray(w, dtype=np.float32), threads,
                                    q, scale)


def packed_bytes(kernels, N: int, K: int, dtype: str) -> int:
    """Bytes the packed weight (N, K) needs with `kernels` in dtype "fp32", "bf16" or "int8"."""
    if dtype == "int8":
        return kernels.qpacked_bytes(K, N)
    return kernels.bpacked_bytes(K, N) if dtype == "bf16" else kernels.packed_bytes(K, N)


class LoadScratch:
    """The buffers one loading thread reuses matrix after matrix: a weight as read from the
    file, and its int8 form with scales on their way to being packed."""

    def __init__(self, ckpt: Checkpoint):
        H, F = ckpt.config.hidden, ckpt.config.intermediate
        rows, cols = max(3 * H, F), max(H, F)  # bounds every matrix of a layer
        self.floats = np.empty(ckpt.matrix_floats(), dtype=np.float32)
        self.w_s8 = np.empty(rows * cols, dtype=np.int8)
        self.w_scale = np.empty(rows * _kernels.q8_groups(cols), dtype=np.float32)

    def int8(self, N: int, K: int):
        """(N, K) int8 and (N, groups) float32 views for quantize_weight to write."""
        ng = _kernels.q8_groups(K)
        return self.w_s8[:N * K].reshape(N, K), self.w_scale[:N * ng].reshape(N, ng)


def _slot_bytes(kernels, H: int, F: int, dtypes: dict) -> List[int]:
    """Bytes of each matmul's packed weight in a layer, in MATMULS order; dtypes {name:
    "fp32", "bf16" or "int8"}."""
    shapes = ((3 * H, H), (H, H), (F, H), (H, F))  # (N, K) of qkv, out, up, down
    return [packed_bytes(kernels, N, K, dtypes[m]) for m, (N, K) in zip(MATMULS, shapes)]


def _slot_offsets(kernels, H: int, F: int, dtypes: dict) -> List[int]:
    """Where each matmul's packed weight starts in its layer's part of the arena, in MATMULS
    order, each on 64 bytes."""
    offsets, at = [], 0
    for n in _slot_bytes(kernels, H, F, dtypes):
        offsets.append(at)
        at += -(-n // 64) * 64
    return offsets


class MatmulLoad:
    """Every layer's matmul weights read from the checkpoint, checked and packed into one
    arena (layer i from byte i * per_layer, at _slot_offsets), on `threads` threads of
    their own from construction on; `result()` waits for them.

    Weights stored as float32 go to `Kernels.load_packed`: read, checked for NaN and
    infinity, converted or quantised where asked and packed in one call that never holds the GIL and
    needs no numpy before its C work. So `Engine(...)` starts it before numpy is imported,
    and numpy's import, the tokenizer's build (which holds the GIL) and the embeddings run
    beside it on the caller's thread (with a Python step between matrices, the loading
    threads stalled behind the tokenizer). Others (float16) are read by
    `Checkpoint.matrix` and packed one by one in `result()`, each thread with its own
    buffers.

    Args:
        kernels: the `_kernels.Kernels` table to pack for.
        ckpt: the opened checkpoint.
        int8: the Linear layers to quantise (names from MATMULS).
        threads: threads to load with.
        bf16: the Linear layers to convert to bf16 (names from MATMULS, none of int8's);
            the rest stay fp32.
    """

    def __init__(self, kernels, ckpt: Checkpoint, int8=(), threads: int = 1, bf16=()):
        int8, bf16 = frozenset(int8), frozenset(bf16)
        for what, names in (("int8", int8), ("bf16", bf16)):
            unknown = names - set(MATMULS)
            if unknown:
                raise ValueError(f"{what}: unknown matmuls {sorted(unknown)}; expected {MATMULS}")
        if int8 & bf16:
            raise ValueError(f"int8 and bf16 both name {sorted(int8 & bf16)}")
        cfg = ckpt.config
        self.kernels, self.ckpt, self.threads = kernels, ckpt, threads
        self.dtypes = {m: "int8" if m in int8 else "bf16" if m in bf16 else "fp32"
                       for m in MATMULS}
        per_layer = sum(-(-n // 64) * 64 for n in _slot_bytes(kernels, cfg.hidden,
                                                               cfg.intermediate, self.dtypes))
        self.arena = _kernels.Arena(per_layer * cfg.layers)
        offsets = _slot_offsets(kernels, cfg.hidden, cfg.intermediate, self.dtypes)
        self._direct, self._by_python = [], []
        for i in range(cfg.layers):
            for name, at in zip(MATMULS, offsets):
                parts, (N, K) = ckpt.matrix_sources(i, name)
                slot = i * per_layer + at
                if parts is None:
                    self._by_python.append((i, name, slot))
                else:
                    self._direct.append((i, name, (parts, N, K, self.dtypes[name], slot)))
        self._loaded, self._error = None, None
        self._thread = None
        if self._direct:
            self._thread = threading.Thread(target=self._load_direct, name="bge-load",
                                            daemon=True)
            self._thread.start()

    def _load_direct(self) -> None:
        try:
            self._loaded = self.kernels.load_packed(
                self.ckpt.reader.fd, [job for _i, _n, job in self._direct], self.arena,
                self.threads)
        except BaseException as exc:  # raised by result()
            self._error = exc

    def join(self) -> None:
        """Waits for the loading threads to stop (result() does too)."""
        if self._thread is not None:
            self._thread.join()

    def result(self) -> List[dict]:
        """[{name: packed}] per layer, once every weight is packed.

        Raises:
            ModelFormatError: a tensor missing, of the wrong shape or dtype, cut short, or
                holding NaN or infinity (the first one found, by name).
        """
        self.join()
        if self._error is not None:
            raise self._error
        ckpt = self.ckpt
        out: List[dict] = [{} for _ in range(ckpt.config.layers)]
        if self._direct:
            packed, errors = self._loaded
            if errors:
                j, part, what = errors[0]
                i, name, _job = self._direct[j]
                raise ModelFormatError(
                    f"{ckpt.reader.path}: tensor {ckpt.matrix_tensor(i, name, part)!r} {what}")
            for (i, name, _job), p in zip(self._direct, packed):
                out[i][name] = p
        if self._by_python:
            arena = np.asarray(self.arena)
            local = threading.local()

            def load(j: int):
                i, name, slot = self._by_python[j]
                if not hasattr(local, "scratch"):
                    local.scratch = LoadScratch(ckpt)
                w = ckpt.matrix(i, name, local.scratch.floats)
                dtype = self.dtypes[name]
                dst = arena[slot:slot + packed_bytes(self.kernels, *w.shape, dtype)]
                if dtype == "int8":
                    q, scale = local.scratch.int8(*w.shape)
                    return self.kernels.qpack(*quantize_weight(w, q=q, scale=scale), out=dst)
                if dtype == "bf16":
                    return self.kernels.bpack(w, out=dst)
                return self.kernels.pack(w, out=dst)

            loaded = run_on_threads(load, len(self._by_python), self.threads)
            for (i, name, _slot), p in zip(self._by_python, loaded):
                out[i][name] = p
        return out


def run_on_threads(fn: Callable[[int], T], n: int, threads: int) -> List[T]:
    """[fn(0), ..., fn(n - 1)] computed on up to `threads` threads, each taking the next
    index; the first exception raised is raised here once every thread has stopped.
    (Plain threads: concurrent.futures' imports would count against the cold start.)"""
    results: List = [None] * n
    errors: List[BaseException] = []
    next_i = iter(range(n))
    lock = threading.Lock()

    def work():
        while not errors:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            try:
                results[i] = fn(i)
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(threads, n)) - 1)]
    for w in workers:
        w.start()
    work()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results
