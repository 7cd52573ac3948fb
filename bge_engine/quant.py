"""Weight quantisation for dtype="int8" (the scheme: csrc/bge.h, "int8 GEMM").

Weights are symmetric per output channel: w_scale[n] = max_k |w[n, k]| / 127 and
w_s8[n, k] = round_half_even(w[n, k] / w_scale[n]), in [-127, 127] (a zero row gets scale 1).
Activations are quantised per token at run time, in C (Kernels.quantize).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def quantize_weight(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """w (N, K) float32 -> (w_s8 (N, K) int8, w_scale (N,) float32)."""
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.rint(w / scale[:, None])
    np.clip(q, -127, 127, out=q)
    return q.astype(np.int8), scale
