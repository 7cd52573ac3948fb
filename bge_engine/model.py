"""The BERT forward pass over a ragged batch, read as the model card.

All texts' tokens sit in one (T, H) matrix; `offsets` (n + 1) says where each text starts.
There is no padding and no attention mask. Every step is one kernel call into the
workspace's buffers, so a forward pass allocates nothing beyond the pooled output.
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from .weights import Checkpoint


class Workspace:
    """The activation buffers of one forward pass, grown when a batch needs more.

    One workspace serves one call at a time; the engine keeps a pool of them so that
    concurrent calls never share buffers.
    """

    def __init__(self, hidden: int, intermediate: int):
        self.hidden, self.intermediate = hidden, intermediate
        self.tokens = 0
        self.scratch = np.empty(0, dtype=np.float32)

    def ensure(self, tokens: int, scratch_floats: int) -> None:
        """Makes room for `tokens` rows and `scratch_floats` floats of attention scratch."""
        if tokens > self.tokens:
            cap = -(-tokens // 64) * 64
            H, F = self.hidden, self.intermediate
            self.h = np.empty((cap, H), dtype=np.float32)  # hidden states
            self.qkv = np.empty((cap, 3 * H), dtype=np.float32)  # Q | K | V
            self.ctx = np.empty((cap, H), dtype=np.float32)  # attention output
            self.up = np.empty((cap, F), dtype=np.float32)  # FFN intermediate
            self.tokens = cap
        if scratch_floats > self.scratch.shape[0]:
            self.scratch = np.empty(scratch_floats, dtype=np.float32)


class PackedLayer:
    """One encoder layer with its matrices packed for the kernel table's GEMM."""

    def __init__(self, kernels, w):
        self.qkv, self.qkv_b = kernels.pack(w.qkv_w), w.qkv_b
        self.out, self.out_b = kernels.pack(w.out_w), w.out_b
        self.ln1_g, self.ln1_b = w.ln1_g, w.ln1_b
        self.up, self.up_b = kernels.pack(w.up_w), w.up_b
        self.down, self.down_b = kernels.pack(w.down_w), w.down_b
        self.ln2_g, self.ln2_b = w.ln2_g, w.ln2_b


class BertModel:
    """A BERT encoder ready to run: weights packed once for `kernels`.

    Args:
        ckpt: the opened checkpoint; each layer is read, packed and dropped in turn.
        kernels: a `_kernels.Kernels` table.
    """

    def __init__(self, ckpt: Checkpoint, kernels):
        self.config = ckpt.config
        self.kernels = kernels
        self.word, self.pos, self.type = ckpt.word, ckpt.pos, ckpt.type
        self.emb_ln_g, self.emb_ln_b = ckpt.emb_ln_g, ckpt.emb_ln_b
        self.layers = [PackedLayer(kernels, ckpt.layer(i)) for i in range(self.config.layers)]
        self.scale = 1.0 / math.sqrt(self.config.head_dim)

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

        # embeddings: word + token type 0 + position, then LayerNorm
        k.embed(ids, offsets, self.word, self.pos, self.type, h)
        k.layernorm(h, self.emb_ln_g, self.emb_ln_b, cfg.eps, h, threads)
        if hidden_states is not None:
            hidden_states.append(h.copy())

        for layer in self.layers:
            # self-attention: Q, K, V in one GEMM, softmax(Q K^T / sqrt(d)) V per text and head
            k.gemm(h, layer.qkv, layer.qkv_b, qkv, "bias", threads=threads)
            k.attention(qkv, offsets, cfg.heads, self.scale, ctx, ws.scratch, threads)
            # attention output: dense + residual, then LayerNorm
            k.gemm(ctx, layer.out, layer.out_b, h, "residual", res=h, threads=threads)
            k.layernorm(h, layer.ln1_g, layer.ln1_b, cfg.eps, h, threads)
            # feed-forward: GELU(h W1 + b1) W2 + b2 + residual, then LayerNorm
            k.gemm(h, layer.up, layer.up_b, up, "gelu", threads=threads)
            k.gemm(up, layer.down, layer.down_b, h, "residual", res=h, threads=threads)
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
