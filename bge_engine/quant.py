"""Weight quantisation for dtype="int8" (the scheme: csrc/bge.h, "int8 GEMM").

Weights are symmetric per output channel and group of G = Q8_GROUP (64) consecutive k
(group g: k in [G g, min(G g + G, K)), ngroups = ceil(K / G)):
w_scale[n, g] = max_{k in g} |w[n, k]| / 127 and
w_s8[n, k] = round_half_even(w[n, k] / w_scale[n, g]), clipped to [-127, 127] (an all-zero
group gets scale 1). It runs in C at load (the table's `qs8_quantize_weights` slot: the
plain-C `bge_qs8_quantize_weights`, or 8 lanes at a time on the AVX2 levels and 16 on the
AVX-512 VNNI ones, ~3x faster, the same bytes); tests hold it to a numpy transcription of
these lines, byte for byte, and every level to the plain-C one. Activations are quantised
per token and group at run time, in C (Kernels.quantize).
"""

from __future__ import annotations

from typing import Optional, Tuple

from . import _kernels
from ._lazy import numpy_on_first_use

np = numpy_on_first_use(globals())


def quantize_weight(w: np.ndarray, threads: int = 1, q: Optional[np.ndarray] = None,
                    scale: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """w (N, K) float32 -> (w_s8 (N, K) int8, w_scale (N, ngroups) float32), written into
    q and scale when given (a loader's reused buffers)."""
    return _kernels.quantize_weight(np.ascontiguousarray(w, dtype=np.float32), threads,
                                    q, scale)
