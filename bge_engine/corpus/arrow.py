"""Embeddings as an Arrow column: a fixed-size list of `dim` float32 per row, null where a row
has no embedding. Shared by the .parquet writer and bge_engine.ray."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa


def embedding_type(dim: int) -> pa.DataType:
    """fixed_size_list<item: float>[dim]."""
    return pa.list_(pa.float32(), dim)


def embedding_array(vectors: np.ndarray, valid: Optional[np.ndarray] = None) -> pa.Array:
    """A FixedSizeListArray over `vectors`, without copying them.

    Args:
        vectors: float32 (n, dim), C-contiguous; the rows of invalid entries are ignored.
        valid: bool (n,), False where the row's embedding is null; None: every row valid.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    values = pa.array(vectors.reshape(-1))
    if valid is None or bool(valid.all()):
        return pa.FixedSizeListArray.from_arrays(values, type=embedding_type(dim))
    # The validity bitmap: bit i (least significant first) set where row i has an embedding.
    bitmap = pa.py_buffer(np.packbits(np.asarray(valid, dtype=bool), bitorder="little"))
    return pa.Array.from_buffers(embedding_type(dim), n, [bitmap], children=[values],
                                 null_count=int(n - np.count_nonzero(valid)))
