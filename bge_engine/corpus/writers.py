"""Writers: an output file written chunk by chunk, rows in input order.

    .npy      float32 (n, dim), rows in input order; a row without an embedding cannot be
              written (the pipeline refuses --on-error skip for it). No pyarrow needed.
    .jsonl    one object per row: the input's fields (`text` for a .txt input) plus
              `embedding`, a list of floats or null. No pyarrow needed.
    .parquet  the input's columns plus `embedding`, fixed_size_list<float32>[dim] (null where
              a row has none), in row groups of about ROW_GROUP_ROWS rows.
"""

from __future__ import annotations

import json
import struct
from typing import List, Sequence

import numpy as np

from ..errors import InvalidInput

FORMATS = (".npy", ".jsonl", ".parquet")
OUTPUT_COLUMN = "embedding"
# Rows per Parquet row group: ~12 MB of bge-small embeddings, large enough for readers to
# scan well, small enough that the buffer keeps memory flat.
ROW_GROUP_ROWS = 8192


class Writer:
    """Takes each chunk of rows with its vectors, then `close()` completes the file."""

    def write(self, chunk, vectors: np.ndarray, refused: Sequence[int]) -> None:
        """chunk: a readers.Chunk; vectors: float32 (len(chunk), dim), row i's embedding in
        row i (rows named in `refused` have none and hold anything)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Releases the file after a failure (the caller removes it)."""


NPY_HEADER_BYTES = 128  # magic (6) + version (2) + length (2) + the dict, padded, ending "\n"


def npy_header(rows: int, dim: int) -> bytes:
    """The .npy 1.0 header of a float32 (rows, dim) array, NPY_HEADER_BYTES long whatever the
    numbers (a multiple of 64, as the format asks)."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    text = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    assert len(text) == NPY_HEADER_BYTES - 10, "a shape too long for the header"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class NpyWriter(Writer):
    """NumPy's .npy format 1.0, written as the rows come: a header of HEADER_BYTES whose shape
    is written again, with the final row count, when the file is closed. The header is
    padded with spaces, as the format allows, so that any row count fits in it."""

    def __init__(self, path: str, dim: int):
        self.dim, self.rows = dim, 0
        self._file = open(path, "wb")
        self._file.write(npy_header(0, dim))

    def write(self, chunk, vectors, refused):
        assert not refused, "rows without an embedding cannot go to .npy"
        self._file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.rows += vectors.shape[0]

    def close(self):
        self._file.seek(0)
        self._file.write(npy_header(self.rows, self.dim))
        self._file.close()

    def abort(self):
        self._file.close()


def _json_default(value):
    """JSON for the values a .csv or .parquet input's rows may hold beyond JSON's own types:
    dates and times in ISO 8601, bytes as latin-1 text, anything else as its str()."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin1")
    return str(value)


class JsonlWriter(Writer):
    """One JSON object per row. Floats are float32 values printed as Python floats (the
    shortest text that reads back to the same float32, as `embed` prints them)."""

    def __init__(self, path: str):
        self._file = open(path, "w", encoding="utf-8", newline="\n")

    def write(self, chunk, vectors, refused):
        records = chunk.records(refused)
        rows: List = vectors.tolist()
        for i in refused:
            rows[i] = None
        lines = []
        for i, (record, row) in enumerate(zip(records, rows)):
            if OUTPUT_COLUMN in record:
                raise InvalidInput(f"{chunk.where(i)}: the input already has a field "
                                   f"{OUTPUT_COLUMN!r}, which the output would overwrite")
            lines.append(json.dumps({**record, OUTPUT_COLUMN: row}, default=_json_default))
        lines.append("")
        self._file.write("\n".join(lines))

    def close(self):
        self._file.close()

    def abort(self):
        self._file.close()


class ParquetWriter(Writer):
    """The input's columns plus the embedding column; the schema is the first chunk's."""

    def __init__(self, path: str, dim: int):
        self.path, self.dim = path, dim
        self._writer = None
        self._pending, self._pending_rows = [], 0

    def write(self, chunk, vectors, refused):
        import pyarrow as pa

        from .arrow import embedding_array, embedding_type

        table = chunk.table(refused)
        if OUTPUT_COLUMN in table.column_names:
            raise InvalidInput(f"the input already has a column {OUTPUT_COLUMN!r}, which the "
                               "output would overwrite")
        valid = None
        if refused:
            valid = np.ones(len(chunk), dtype=bool)
            valid[list(refused)] = False
        table = table.append_column(pa.field(OUTPUT_COLUMN, embedding_type(self.dim)),
                                    embedding_array(vectors, valid))
        if self._writer is None:
            self._open(table.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _open(self, schema):
        from pyarrow import parquet

        inputs = [n for n in schema.names if n != OUTPUT_COLUMN]
        # No dictionary encoding or statistics for the embeddings: float vectors have no
        # repeats to share and no useful min/max, and both cost time on every row group.
        self._writer = parquet.ParquetWriter(self.path, schema, use_dictionary=inputs,
                                             write_statistics=inputs)

    def _flush(self):
        import pyarrow as pa

        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._pending, self._pending_rows = [], 0

    def close(self):
        self._flush()
        self._writer.close()  # the pipeline writes at least one (maybe empty) chunk

    def abort(self):
        if self._writer is not None:
            self._writer.close()


def needs_pyarrow(suffix: str) -> bool:
    return suffix == ".parquet"


def open_writer(path: str, suffix: str, dim: int) -> Writer:
    """The writer of `path` by the output's suffix (one of FORMATS)."""
    if suffix == ".npy":
        return NpyWriter(path, dim)
    if suffix == ".jsonl":
        return JsonlWriter(path)
    return ParquetWriter(path, dim)
