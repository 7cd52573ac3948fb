"""Weight quantisation for dtype="int8" (the scheme: csrc/bge.h, "int8 GEMM").

Weights are symmetric per output channel and group of G = Q8_GROUP (64) consecutive k
(group g: k in [G g, min(G g + G, K)), ngroups = ceil(K / G)):
w_scale[n, g] = max_{k in g} |w[n, k]| / 127 and
w_s8[n, k] = round_half_even(w[n, k] / w_scale[n, g]), clipped to [-127, 127] (an all-zero
group gets scale 1). Activations are quantised per token and group at run time, in C
(Kernels.quantize).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from . import _kernels


def quantize_weight(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """w (N, K) float32 -> (w_s8 (N, K) int8, w_scale (N, ngroups) float32)."""
    N, K = w.shape
    G = _kernels.Q8_GROUP
    ng = _kernels.q8_groups(K)
    if K % G:  # pad the last group with zeros; the model's widths need no copy
        wp = np.zeros((N, ng * G), dtype=np.float32)
        wp[:, :K] = w
    else:
        wp = np.asarray(w, dtype=np.float32)
    wg = wp.reshape(N, ng, G)
    amax = np.maximum(wg.max(axis=2), -wg.min(axis=2))  # max |w| without an |w| temporary
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.divide(wg, scale[:, :, None])
    np.rint(q, out=q)
    np.clip(q, -127, 127, out=q)
    return q.reshape(N, ng * G)[:, :K].astype(np.int8), scale
