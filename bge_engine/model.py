"""The BERT forward pass over a ragged batch, read as the model card.

All texts' tokens sit in one (T, H) matrix; `offsets` (n + 1) says where each text starts.
There is no padding and no attention mask. Every step is one kernel call into the
workspace's buffers, so a forward pass allocates nothing beyond the pooled output.
"""

from __future__ import annotations

import math
import mmap
from typing import List, Optional

from . import _kernels
from ._lazy import numpy_on_first_use
from .loader import MatmulLoad
from .weights import Checkpoint

np = numpy_on_first_use(globals())

# Batches of at most this many tokens read their word rows as the ids come (repeats read
# twice); larger ones read each distinct row once (np.unique costs more than the reads it
# saves on a short batch)
SHORT_BATCH = 64


class Workspace:
    """The activation buffers of one forward pass, grown when a batch needs more.

    One workspace serves one call at a time; the engine keeps a pool of them so that
    concurrent calls never share buffers. The buffers are views of one anonymous memory
    mapping reserved for at least `reserve` tokens: pages the batches never touch cost no
    memory, and growing unmaps the old mapping at once, where freed numpy buffers would
    linger in the C heap and raise the peak RSS.
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


class Linear:
    """y = x W^T + b with W packed once for the kernel table: fp32; bf16 (weights in bf16,
    the input converted by the GEMM call, fp32 sums over all of K); or int8 (s8 weights with
    a scale per output channel and group of 64 k; the input quantised per token and group
    when it runs, with a zero point).

    Args:
        w: the packed weight (N, K), a `_kernels.Packed` (Kernels.pack, bpack, qpack or
            load_packed) whose dtype ("fp32", "bf16", "int8") says how it runs.
        b: (N,) float32, the bias.
    """

    def __init__(self, w, b: np.ndarray):
        self.w, self.b = w, b

    def __call__(self, k, x: np.ndarray, out: np.ndarray, ws: "Workspace", threads: int,
                 epilogue: str = "bias", res: Optional[np.ndarray] = None) -> None:
        if self.w.dtype == "bf16":
            k.bgemm(x, self.w, self.b, out, epilogue, res=res, scratch=ws.xb, threads=threads)
        elif self.w.dtype == "int8":
            # x quantised per token and group into the workspace, then the int8 GEMM: one call
            k.qlinear(x, self.w, self.b, out, ws.q, ws.q_scale, ws.q_zp, epilogue, res=res,
                      threads=threads)
        else:
            k.gemm(x, self.w, self.b, out, epilogue, res=res, threads=threads)


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


class BertModel:
    """A BERT encoder ready to run: weights packed once for `kernels`.

    Args:
        ckpt: the opened checkpoint.
        kernels: a `_kernels.Kernels` table.
        matmuls: its matmul weights, loading already on threads of their own (a
            `loader.MatmulLoad` for `kernels`, started first so that the rest of the set-up
            runs beside it); which of them run in int8 is its choice.
    """

    def __init__(self, ckpt: Checkpoint, kernels, matmuls: MatmulLoad):
        cfg = self.config = ckpt.config
        self.kernels = kernels
        # The embeddings are read while the matmul weights load: the first of them imports
        # numpy, beside that load.
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
