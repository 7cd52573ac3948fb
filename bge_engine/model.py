"""The BERT forward pass over a ragged batch, read as the model card.

All texts' tokens sit in one (T, H) matrix; `offsets` (n + 1) says where each text starts.
There is no padding and no attention mask. Every step is one kernel call into the
workspace's buffers, so a forward pass allocates nothing beyond the pooled output.
"""

from __future__ import annotations

import math
import mmap
import threading
from typing import Callable, List, Optional, TypeVar

from . import _kernels
from ._lazy import numpy_on_first_use
from .errors import ModelFormatError
from .quant import quantize_weight
from .weights import Checkpoint

np = numpy_on_first_use(globals())

T = TypeVar("T")

# The Linear layers of an encoder layer, by name.
MATMULS = ("qkv", "out", "up", "down")
# Batches of at most this many tokens read their word rows as the ids come (repeats read
# twice); larger ones read each distinct row once (np.unique: ~8 us, more than the reads
# it saves on a short batch)
SHORT_BATCH = 64


class Workspace:
    """The activation buffers of one forward pass, grown when a batch needs more.

    One workspace serves one call at a time; the engine keeps a pool of them so that
    concurrent calls never share buffers. The buffers are views of one anonymous memory
    mapping reserved for at least `reserve` tokens: pages the batches never touch cost no
    memory, and growing unmaps the old mapping at once, where freed numpy buffers would
    linger in the C heap (measured: ~9 MB of a run's peak RSS).
    """

    def __init__(self, hidden: int, intermediate: int, reserve: int = 0):
        self.hidden, self.intermediate = hidden, intermediate
        self.tokens = 0
        self.reserve = reserve
        self.scratch = np.empty(0, dtype=np.float32)
        self.row_bytes = _kernels.q8_row_bytes(max(hidden, intermediate))
        # bf16: the GEMM's converted input, at most 4 bytes per k (K rounded up to even)
        self.xb_row_bytes = 4 * (max(hidden, intermediate) + 1) // 2 * 2

    def ensure(self, tokens: int, scratch_floats: int) -> None:
        """Makes room for `tokens` rows and `scratch_floats` floats of attention scratch."""
        if tokens > self.tokens:
            cap = -(-max(tokens, self.reserve) // 64) * 64
            H, F = self.hidden, self.intermediate
            G = _kernels.q8_groups(max(H, F))
            layout = (("h", (cap, H), np.float32),  # hidden states
                      ("qkv", (cap, 3 * H), np.float32),  # Q | K | V
                      ("ctx", (cap, H), np.float32),  # attention output
                      ("up", (cap, F), np.float32),  # FFN intermediate
                      ("q", (cap * self.row_bytes,), np.uint8),  # int8: quantised input
                      ("q_scale", (cap * G,), np.float32),  # int8: (T, groups)
                      ("q_zp", (cap * G,), np.int32),
                      ("xb", (cap * self.xb_row_bytes,), np.uint8))  # bf16: converted input
            sizes = [-(-int(np.prod(shape)) * np.dtype(dt).itemsize // 64) * 64
                     for _, shape, dt in layout]
            buf = _anonymous(sum(sizes))
            at = 0
            for (name, shape, dt), size in zip(layout, sizes):
                n = int(np.prod(shape))
                setattr(self, name, np.frombuffer(buf, dtype=dt, count=n, offset=at).reshape(shape))
                at += size
            self.tokens = cap
        if scratch_floats > self.scratch.shape[0]:
            self.scratch = np.empty(scratch_floats, dtype=np.float32)


def _anonymous(nbytes: int):
    """A writable buffer of nbytes of zero pages, mapped privately where mmap can (its pages
    cost memory only once written, and go back to the OS when the last view is dropped)."""
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if None in flags:
        return np.empty(nbytes, dtype=np.uint8)
    return mmap.mmap(-1, max(1, nbytes), flags=flags[0] | flags[1])


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


class Linear:
    """y = x W^T + b with W packed once for the kernel table: fp32; bf16 (weights in bf16,
    the input converted by the GEMM call, fp32 sums over all of K); or int8 (s8 weights with
    a scale per output channel and group of 64 k; the input quantised per token and group
    when it runs, with a zero point).

    Args:
        w: the packed weight (N, K): a `_kernels.PackedF32` (Kernels.pack or load_packed),
            a `_kernels.PackedBF16` (Kernels.bpack or load_packed), which runs in bf16, or a
            `_kernels.PackedQ8` (Kernels.qpack or load_packed), which runs in int8.
        b: (N,) float32, the bias.
    """

    def __init__(self, w, b: np.ndarray):
        self.w, self.b = w, b
        self.int8 = isinstance(w, _kernels.PackedQ8)
        self.bf16 = isinstance(w, _kernels.PackedBF16)

    @staticmethod
    def packed_bytes(kernels, N: int, K: int, kind) -> int:
        """Bytes the packed weight (N, K) needs; kind "fp32", "bf16" or "int8" (or a bool:
        int8 or not)."""
        if kind is True or kind == "int8":
            return kernels.qpacked_bytes(K, N)
        if kind == "bf16":
            return kernels.bpacked_bytes(K, N)
        return kernels.packed_bytes(K, N)

    def __call__(self, k, x: np.ndarray, out: np.ndarray, ws: "Workspace", threads: int,
                 epilogue: str = "bias", res: Optional[np.ndarray] = None) -> None:
        if self.bf16:
            k.bgemm(x, self.w, self.b, out, epilogue, res=res, scratch=ws.xb, threads=threads)
            return
        if not self.int8:
            k.gemm(x, self.w, self.b, out, epilogue, res=res, threads=threads)
            return
        # x quantised per token and group into the workspace, then the int8 GEMM: one call
        k.qlinear(x, self.w, self.b, out, ws.q, ws.q_scale, ws.q_zp, epilogue, res=res,
                  threads=threads)


class PackedLayer:
    """One encoder layer: its four Linear layers and its LayerNorm vectors.

    Args:
        packed: {name: packed weight} for every name of MATMULS (see Linear).
        v: the layer's biases and LayerNorm vectors, as `Checkpoint.biases` gives them.
    """

    def __init__(self, packed: dict, v: dict):
        self.qkv = Linear(packed["qkv"], v["qkv_b"])
        self.out = Linear(packed["out"], v["out_b"])
        self.ln1_g, self.ln1_b = v["ln1_g"], v["ln1_b"]
        self.up = Linear(packed["up"], v["up_b"])
        self.down = Linear(packed["down"], v["down_b"])
        self.ln2_g, self.ln2_b = v["ln2_g"], v["ln2_b"]

    @staticmethod
    def arena_bytes(kernels, H: int, F: int, int8: frozenset,
                    bf16: frozenset = frozenset()) -> int:
        """Bytes of one layer's packed weights, each slot rounded up to 64."""
        return sum(-(-n // 64) * 64 for n in _slot_bytes(kernels, H, F, int8, bf16))


def _kind(name: str, int8: frozenset, bf16: frozenset) -> str:
    """How the matmul `name` runs: "int8", "bf16" or "fp32"."""
    return "int8" if name in int8 else "bf16" if name in bf16 else "fp32"


def _slot_bytes(kernels, H: int, F: int, int8: frozenset,
                bf16: frozenset = frozenset()) -> List[int]:
    """Bytes of each matmul's packed weight in a layer, in MATMULS order."""
    shapes = ((3 * H, H), (H, H), (F, H), (H, F))  # (N, K) of qkv, out, up, down
    return [Linear.packed_bytes(kernels, N, K, _kind(m, int8, bf16))
            for m, (N, K) in zip(MATMULS, shapes)]


def _slot_offsets(kernels, H: int, F: int, int8: frozenset,
                  bf16: frozenset = frozenset()) -> List[int]:
    """Where each matmul's packed weight starts in its layer's part of the arena, in MATMULS
    order, each on 64 bytes."""
    offsets, at = [], 0
    for n in _slot_bytes(kernels, H, F, int8, bf16):
        offsets.append(at)
        at += -(-n // 64) * 64
    return offsets


class MatmulLoad:
    """Every layer's matmul weights read from the checkpoint, checked and packed into one
    arena (layer i from byte i * per_layer, at _slot_offsets), on `threads` threads of
    their own from construction on; `result()` waits for them.

    Weights stored as float32 go to `Kernels.load_packed`: read, checked for NaN and
    infinity, quantised where int8 and packed in one call that never holds the GIL and
    needs no numpy before its C work. So `Engine(...)` starts it before numpy is imported,
    and numpy's import, the tokenizer's build (which holds the GIL for ~25 ms) and the
    embeddings run beside it on the caller's thread. (With a Python step between matrices,
    the loading threads stalled behind the tokenizer: Zen 3, 2 threads, `Engine(...)` took
    91-129 ms that way, 61-105 in one call.) Others (float16) are read by
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
        self.kernels, self.ckpt, self.int8, self.threads = kernels, ckpt, int8, threads
        self.bf16 = bf16
        per_layer = PackedLayer.arena_bytes(kernels, cfg.hidden, cfg.intermediate, int8, bf16)
        self.arena = _kernels.Arena(per_layer * cfg.layers)
        offsets = _slot_offsets(kernels, cfg.hidden, cfg.intermediate, int8, bf16)
        self._direct, self._by_python = [], []
        for i in range(cfg.layers):
            for name, at in zip(MATMULS, offsets):
                parts, (N, K) = ckpt.matrix_sources(i, name)
                slot = i * per_layer + at
                if parts is None:
                    self._by_python.append((i, name, slot))
                else:
                    self._direct.append((i, name, (parts, N, K, _kind(name, int8, bf16), slot)))
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
                kind = _kind(name, self.int8, self.bf16)
                dst = arena[slot:slot + Linear.packed_bytes(self.kernels, *w.shape, kind)]
                if kind == "int8":
                    q, scale = local.scratch.int8(*w.shape)
                    return self.kernels.qpack(*quantize_weight(w, q=q, scale=scale), out=dst)
                if kind == "bf16":
                    return self.kernels.bpack(w, out=dst)
                return self.kernels.pack(w, out=dst)

            loaded = run_on_threads(load, len(self._by_python), self.threads)
            for (i, name, _slot), p in zip(self._by_python, loaded):
                out[i][name] = p
        return out


def run_on_threads(fn: Callable[[int], T], n: int, threads: int) -> List[T]:
    """[fn(0), ..., fn(n - 1)] computed on up to `threads` threads, each taking the next
    index; the first exception raised is raised here once every thread has stopped.
    (Plain threads: concurrent.futures would cost the cold start ~5 ms of imports.)"""
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


class BertModel:
    """A BERT encoder ready to run: weights packed once for `kernels`.

    Args:
        ckpt: the opened checkpoint; each layer is read, packed and dropped in turn.
        kernels: a `_kernels.Kernels` table.
        int8: the Linear layers to run in int8 (names from MATMULS).
        threads: threads to pack the weights with at load.
        matmuls: the matmul weights, loading already (Engine starts the load first); by
            default a MatmulLoad of `int8` and `bf16` on `threads` threads, started here.
        bf16: the Linear layers to run in bf16 (names from MATMULS); the rest run in fp32.
    """

    def __init__(self, ckpt: Checkpoint, kernels, int8=(), threads: int = 1,
                 matmuls: Optional[MatmulLoad] = None, bf16=()):
        if matmuls is None:
            matmuls = MatmulLoad(kernels, ckpt, int8, threads, bf16=bf16)
        cfg = self.config = ckpt.config
        self.kernels = kernels
        # The matmul weights are read, checked and packed on their own threads meanwhile,
        # each thread with its own buffers, reused matrix after matrix, so at most one raw
        # weight per thread is in memory beside the packed ones, which go to one arena.
        # The embeddings are read first: the first of them imports numpy, beside that load.
        try:
            self.word, self.pos, self.type = ckpt.word, ckpt.pos, ckpt.type
            self.emb_ln_g, self.emb_ln_b = ckpt.emb_ln_g, ckpt.emb_ln_b
            packed = matmuls.result()
        finally:
            matmuls.join()  # no loading thread left behind a failed read
        self.layers = [PackedLayer(packed[i], ckpt.biases(i)) for i in range(cfg.layers)]
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def new_workspace(self, reserve: int = 0) -> Workspace:
        """A workspace; `reserve` tokens of address space are set aside up front (see
        Workspace), so that batches up to that size never re-allocate."""
        return Workspace(self.config.hidden, self.config.intermediate, reserve)

    def forward(self, ids: np.ndarray, offsets: np.ndarray, ws: Workspace, threads: int,
                hidden_states: Optional[List[np.ndarray]] = None) -> np.ndarray:
        """Runs the encoder on a ragged batch.

        Args:
            ids: (T,) int32 token ids of all texts, one after another.
            offsets: (n + 1,) int32; text i owns tokens offsets[i] .. offsets[i+1]-1.
            ws: the workspace to compute in.
            threads: threads each kernel may use.
            hidden_states: if a list, receives a copy of the embeddings output and of every
                layer's output, (T, H) each (for the golden tests).

        Returns:
            (T, H) view of ws: the last hidden states.
        """
        k, cfg = self.kernels, self.config
        T = ids.shape[0]
        bounds = offsets.tolist()
        max_len = max(b - a for a, b in zip(bounds, bounds[1:]))
        ws.ensure(T, k.attention_scratch_size(max_len, cfg.head_dim, threads))
        h, qkv, ctx, up = ws.h[:T], ws.qkv[:T], ws.ctx[:T], ws.up[:T]

        # embeddings: word + token type 0 + position, then LayerNorm (the word rows the
        # batch uses are read from the checkpoint, and ids renumbered into them; a short
        # batch reads its rows as they come, repeats and all)
        if T <= SHORT_BATCH:
            used, local_ids = ids, np.arange(T, dtype=np.int32)
        else:
            used, local_ids = np.unique(ids, return_inverse=True)
            local_ids = local_ids.astype(np.int32)
        k.embed(local_ids, offsets, self.word.rows(used), self.pos, self.type, h)
        k.layernorm(h, self.emb_ln_g, self.emb_ln_b, cfg.eps, h, threads)
        if hidden_states is not None:
            hidden_states.append(h.copy())

        for layer in self.layers:
            # self-attention: Q, K, V in one GEMM, softmax(Q K^T / sqrt(d)) V per text and head
            layer.qkv(k, h, qkv, ws, threads)
            k.attention(qkv, offsets, cfg.heads, self.scale, ctx, ws.scratch, threads)
            # attention output: dense + residual, then LayerNorm
            layer.out(k, ctx, h, ws, threads, "residual", res=h)
            k.layernorm(h, layer.ln1_g, layer.ln1_b, cfg.eps, h, threads)
            # feed-forward: GELU(h W1 + b1) W2 + b2 + residual, then LayerNorm
            layer.up(k, h, up, ws, threads, "gelu")
            layer.down(k, up, h, ws, threads, "residual", res=h)
            k.layernorm(h, layer.ln2_g, layer.ln2_b, cfg.eps, h, threads)
            if hidden_states is not None:
                hidden_states.append(h.copy())
        return h

    def pool(self, h: np.ndarray, offsets: np.ndarray, pooling: str,
             normalize: bool) -> np.ndarray:
        """(n, H): each text's [CLS] row or mean row, L2-normalised if asked."""
        out = np.empty((offsets.shape[0] - 1, self.config.hidden), dtype=np.float32)
        self.kernels.pool(h, offsets, pooling, out)
        if normalize:
            self.kernels.l2norm(out)
        return out
