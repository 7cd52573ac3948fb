"""The BERT forward pass over a ragged batch, read as the model card.

All texts' tokens sit in one (T, H) matrix; `offsets` (n + 1) says where each text starts.
There is no padding and no attention mask. Every step is one kernel call into the
workspace's buffers, so a forward pass allocates nothing beyond the pooled output.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np

from . import _kernels
from .quant import quantize_weight
from .weights import Checkpoint

# The Linear layers of an encoder layer, by name.
MATMULS = ("qkv", "out", "up", "down")


class Workspace:
    """The activation buffers of one forward pass, grown when a batch needs more.

    One workspace serves one call at a time; the engine keeps a pool of them so that
    concurrent calls never share buffers.
    """

    def __init__(self, hidden: int, intermediate: int):
        self.hidden, self.intermediate = hidden, intermediate
        self.tokens = 0
        self.scratch = np.empty(0, dtype=np.float32)
        self.row_bytes = _kernels.q8_row_bytes(max(hidden, intermediate))

    def ensure(self, tokens: int, scratch_floats: int) -> None:
        """Makes room for `tokens` rows and `scratch_floats` floats of attention scratch."""
        if tokens > self.tokens:
            cap = -(-tokens // 64) * 64
            H, F = self.hidden, self.intermediate
            self.h = np.empty((cap, H), dtype=np.float32)  # hidden states
            self.qkv = np.empty((cap, 3 * H), dtype=np.float32)  # Q | K | V
            self.ctx = np.empty((cap, H), dtype=np.float32)  # attention output
            self.up = np.empty((cap, F), dtype=np.float32)  # FFN intermediate
            self.q = np.empty(cap * self.row_bytes, dtype=np.uint8)  # int8: quantised input
            self.q_scale = np.empty(cap * _kernels.q8_groups(max(H, F)), np.float32)  # int8
            self.q_zp = np.empty(cap * _kernels.q8_groups(max(H, F)), np.int32)  # (T, groups)
            self.tokens = cap
        if scratch_floats > self.scratch.shape[0]:
            self.scratch = np.empty(scratch_floats, dtype=np.float32)


class LoadScratch:
    """The buffers one loading thread reuses layer after layer: the layer's fp32 matrices as
    read from the file, and an int8 weight with its scales on their way to being packed."""

    def __init__(self, ckpt: Checkpoint):
        H, F = ckpt.config.hidden, ckpt.config.intermediate
        rows, cols = max(3 * H, F), max(H, F)  # bounds every matrix of a layer
        self.floats = np.empty(ckpt.layer_floats(), dtype=np.float32)
        self.w_s8 = np.empty(rows * cols, dtype=np.int8)
        self.w_scale = np.empty(rows * _kernels.q8_groups(cols), dtype=np.float32)

    def int8(self, N: int, K: int):
        """(N, K) int8 and (N, groups) float32 views for quantize_weight to write."""
        ng = _kernels.q8_groups(K)
        return self.w_s8[:N * K].reshape(N, K), self.w_scale[:N * ng].reshape(N, ng)


class Linear:
    """y = x W^T + b with W packed once for the kernel table: fp32, or int8 (s8 weights with a
    scale per output channel and group of 64 k; the input quantised per token and group when
    it runs, with a zero point).

    Args:
        kernels: the kernel table to pack for.
        w: (N, K) float32, the torch Linear weight; b: (N,) its bias.
        int8: quantise and pack for the int8 GEMM.
        out: a uint8 slot of packed_bytes(...) to pack into (an arena's), or None.
        scratch: the loading thread's buffers, or None to allocate.
    """

    def __init__(self, kernels, w: np.ndarray, b: np.ndarray, int8: bool,
                 out: Optional[np.ndarray] = None, scratch: Optional[LoadScratch] = None):
        self.b, self.int8 = b, int8
        if int8:
            q, scale = scratch.int8(*w.shape) if scratch is not None else (None, None)
            self.w = kernels.qpack(*quantize_weight(w, q=q, scale=scale), out=out)
        else:
            self.w = kernels.pack(w, out=out)

    @staticmethod
    def packed_bytes(kernels, N: int, K: int, int8: bool) -> int:
        """Bytes the packed weight (N, K) needs."""
        return kernels.qpacked_bytes(K, N) if int8 else kernels.packed_bytes(K, N)

    def __call__(self, k, x: np.ndarray, out: np.ndarray, ws: "Workspace", threads: int,
                 epilogue: str = "bias", res: Optional[np.ndarray] = None) -> None:
        if not self.int8:
            k.gemm(x, self.w, self.b, out, epilogue, res=res, threads=threads)
            return
        # x quantised per token and group into the workspace, then the int8 GEMM: one call
        k.qlinear(x, self.w, self.b, out, ws.q, ws.q_scale, ws.q_zp, epilogue, res=res,
                  threads=threads)


class PackedLayer:
    """One encoder layer, its four Linear layers packed for the kernel table, into `arena`
    (a uint8 buffer of arena_bytes(...), 64-byte aligned) when one is given."""

    def __init__(self, kernels, w, int8: frozenset, arena: Optional[np.ndarray] = None,
                 scratch: Optional[LoadScratch] = None):
        H, F = w.qkv_w.shape[1], w.up_w.shape[0]
        slots = iter(_slots(kernels, H, F, int8, arena))

        def linear(name, weight, bias):
            return Linear(kernels, weight, bias, name in int8, next(slots), scratch)

        self.qkv = linear("qkv", w.qkv_w, w.qkv_b)
        self.out = linear("out", w.out_w, w.out_b)
        self.ln1_g, self.ln1_b = w.ln1_g, w.ln1_b
        self.up = linear("up", w.up_w, w.up_b)
        self.down = linear("down", w.down_w, w.down_b)
        self.ln2_g, self.ln2_b = w.ln2_g, w.ln2_b

    @staticmethod
    def arena_bytes(kernels, H: int, F: int, int8: frozenset) -> int:
        """Bytes of one layer's packed weights, each slot rounded up to 64."""
        return sum(_slot_sizes(kernels, H, F, int8))


def _shapes(H: int, F: int) -> List[tuple]:
    """The (N, K) of each matmul of a layer, in MATMULS order."""
    return [(3 * H, H), (H, H), (F, H), (H, F)]


def _slot_sizes(kernels, H: int, F: int, int8: frozenset) -> List[int]:
    return [-(-Linear.packed_bytes(kernels, N, K, m in int8) // 64) * 64
            for m, (N, K) in zip(MATMULS, _shapes(H, F))]


def _slots(kernels, H: int, F: int, int8: frozenset, arena: Optional[np.ndarray]) -> list:
    """Each matmul's slice of the layer's arena, in MATMULS order (None each without one)."""
    if arena is None:
        return [None] * len(MATMULS)
    slots, at = [], 0
    for m, (N, K), size in zip(MATMULS, _shapes(H, F), _slot_sizes(kernels, H, F, int8)):
        slots.append(arena[at:at + Linear.packed_bytes(kernels, N, K, m in int8)])
        at += size
    return slots


def weight_arena(nbytes: int) -> np.ndarray:
    """One buffer for every packed weight, starting on a 2 MiB boundary: numpy asks the
    kernel for transparent huge pages on allocations this large (madvise), and with 2 MiB
    pages packing 85 MB of weights takes ~40 page faults instead of ~20,000, each of which
    costs microseconds in a VM: most of the fp32 load time."""
    huge = 2 << 20
    buf = np.empty(nbytes + huge, dtype=np.uint8)
    start = (-buf.ctypes.data) % huge
    return buf[start:start + nbytes]


class BertModel:
    """A BERT encoder ready to run: weights packed once for `kernels`.

    Args:
        ckpt: the opened checkpoint; each layer is read, packed and dropped in turn.
        kernels: a `_kernels.Kernels` table.
        int8: the Linear layers to run in int8 (names from MATMULS); the rest run in fp32.
        threads: threads to pack the weights with at load.
    """

    def __init__(self, ckpt: Checkpoint, kernels, int8=(), threads: int = 1):
        unknown = set(int8) - set(MATMULS)
        if unknown:
            raise ValueError(f"int8: unknown matmuls {sorted(unknown)}; expected {MATMULS}")
        cfg = self.config = ckpt.config
        self.kernels = kernels
        self.word, self.pos, self.type = ckpt.word, ckpt.pos, ckpt.type
        self.emb_ln_g, self.emb_ln_b = ckpt.emb_ln_g, ckpt.emb_ln_b
        int8 = frozenset(int8)
        # Layers are read, checked and packed on `threads` threads at once (the C readers,
        # quantiser and packers release the GIL; the cold start is mostly this loop), each
        # thread with its own scratch buffers, reused layer after layer, so the raw weights
        # are never all in memory at once; the packed ones go to one arena.
        per_layer = PackedLayer.arena_bytes(kernels, cfg.hidden, cfg.intermediate, int8)
        arena = weight_arena(per_layer * cfg.layers)
        local = threading.local()

        def load(i: int) -> PackedLayer:
            if not hasattr(local, "scratch"):
                local.scratch = LoadScratch(ckpt)
            return PackedLayer(kernels, ckpt.layer(i, local.scratch.floats), int8,
                               arena[i * per_layer:(i + 1) * per_layer], local.scratch)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            self.layers = list(pool.map(load, range(cfg.layers)))
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def new_workspace(self) -> Workspace:
        return Workspace(self.config.hidden, self.config.intermediate)

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
        max_len = int(np.max(np.diff(offsets)))
        ws.ensure(T, k.attention_scratch_size(max_len, cfg.head_dim, threads))
        h, qkv, ctx, up = ws.h[:T], ws.qkv[:T], ws.ctx[:T], ws.up[:T]

        # embeddings: word + token type 0 + position, then LayerNorm (the word rows the
        # batch uses are read from the checkpoint, and ids renumbered into them)
        used, local_ids = np.unique(ids, return_inverse=True)
        k.embed(local_ids.astype(np.int32), offsets, self.word.rows(used), self.pos, self.type, h)
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
