"""Readers: an input file as a stream of chunks of rows, in file order.

A chunk holds its rows' values of the text column (anything: the pipeline checks them) and
gives its rows in the two forms the writers want: dicts (.jsonl output) and an Arrow table
(.parquet output). Rows are numbered from 1: a .txt's line, a .jsonl's object (blank lines
are skipped, and a message names the line too), a .csv's data row after its header, a
.parquet's row. .txt and .jsonl are read without pyarrow; .csv and .parquet need it.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, List, Optional, Sequence

from ..errors import InvalidInput

CHUNK_ROWS = 1024  # rows per Engine.encode call: about a second of work, a progress step
FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
# The value of a .jsonl row that has no field under the text column.
MISSING = type("Missing", (), {"__repr__": lambda self: "<missing>"})()


def clean(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes) replaced by U+FFFD, so that a refused
    row's text can still be written (UTF-8 and Arrow strings must be valid Unicode)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Chunk:
    """Rows first .. first + len(texts) - 1 of an input."""

    def __init__(self, first: int, texts: list):
        self.first = first
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, i: int) -> str:
        """How a message names the chunk's row i (from 0)."""
        return f"row {self.first + i}"

    def records(self, refused: Sequence[int]) -> List[dict]:
        """The rows as dicts of the input's fields; refused: rows whose text was refused."""
        raise NotImplementedError

    def table(self, refused: Sequence[int]):
        """The rows as a pyarrow.Table of the input's columns."""
        raise NotImplementedError


class Reader:
    """An open input. `total` is its row count where known up front (else None);
    `fraction()` how much of it has been read, for the progress bar."""

    total: Optional[int] = None

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def empty(self) -> Chunk:
        """A chunk of no rows with the input's columns (what an empty input writes)."""
        raise NotImplementedError

    def fraction(self) -> Optional[float]:
        return None

    def close(self) -> None:
        pass


class _FileReader(Reader):
    """A reader of a text format, byte by byte from a file it opens."""

    def __init__(self, path: str):
        self._size = os.path.getsize(path)
        self._file = open(path, "rb")

    def fraction(self) -> Optional[float]:
        return self._file.tell() / self._size if self._size else None

    def close(self) -> None:
        self._file.close()


# -- .txt -----------------------------------------------------------------------------------

class _TxtChunk(Chunk):
    def records(self, refused):
        texts = self.texts
        if refused:
            texts = list(texts)
            for i in refused:
                texts[i] = clean(texts[i])
        return [{"text": t} for t in texts]

    def table(self, refused):
        import pyarrow as pa

        return pa.table({"text": pa.array([r["text"] for r in self.records(refused)],
                                          type=pa.string())})


class TxtReader(_FileReader):
    """One text per line ("\\n" or "\\r\\n" ends a line, nothing else); every line is a row,
    an empty one too (it is refused as an empty text). Bytes that are not UTF-8 become lone
    surrogates, which the pipeline refuses as invalid Unicode naming the row."""

    def chunks(self):
        texts, first = [], 1
        for line in self._file:
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            texts.append(line.decode("utf-8", "surrogateescape"))
            if len(texts) == CHUNK_ROWS:
                yield _TxtChunk(first, texts)
                first += len(texts)
                texts = []
        if texts:
            yield _TxtChunk(first, texts)

    def empty(self):
        return _TxtChunk(1, [])


# -- .jsonl ---------------------------------------------------------------------------------

class _JsonlChunk(Chunk):
    def __init__(self, first, texts, objects, lines, reader):
        super().__init__(first, texts)
        self.objects, self.lines, self._reader = objects, lines, reader

    def where(self, i):
        return f"row {self.first + i} (line {self.lines[i]})"

    def records(self, refused):
        return self.objects

    def table(self, refused):
        return self._reader.arrow(self, refused)


class JsonlReader(_FileReader):
    """One JSON object per line (blank lines skipped), the text under `column`. A line that is
    not a JSON object stops the run (InvalidInput naming it), whatever --on-error says."""

    def __init__(self, path: str, column: str):
        super().__init__(path)
        self.column = column
        self._schema = None  # the Arrow schema, fixed by the first chunk (.parquet output)

    def chunks(self):
        texts, objects, lines, first = [], [], [], 1
        for number, line in enumerate(self._file, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:  # UnicodeDecodeError (not UTF-8) is a ValueError
                raise InvalidInput(f"line {number}: not a JSON object ({exc})") from None
            if not isinstance(obj, dict):
                raise InvalidInput(
                    f"line {number}: expected a JSON object, got {type(obj).__name__}")
            objects.append(obj)
            lines.append(number)
            texts.append(obj.get(self.column, MISSING))
            if len(texts) == CHUNK_ROWS:
                yield _JsonlChunk(first, texts, objects, lines, self)
                first += len(texts)
                texts, objects, lines = [], [], []
        if texts:
            yield _JsonlChunk(first, texts, objects, lines, self)

    def empty(self):
        return _JsonlChunk(1, [], [], [], self)

    def arrow(self, chunk: _JsonlChunk, refused: Sequence[int]):
        """A chunk's objects as a table of the schema the first chunk set: its fields, with
        their types as Arrow infers them, the text column a string (null where a refused row
        has none). A field or type the first chunk did not have stops the run."""
        import pyarrow as pa

        rows = chunk.objects
        if refused:
            rows = list(rows)
            for i in refused:
                value = rows[i].get(self.column)
                rows[i] = {**rows[i],
                           self.column: clean(value) if isinstance(value, str) else None}
        if self._schema is None:
            schema = pa.Table.from_pylist(rows).schema
            text = pa.field(self.column, pa.string())
            k = schema.get_field_index(self.column)
            self._schema = schema.set(k, text) if k >= 0 else schema.append(text)
        names = set(self._schema.names)
        for i, row in enumerate(rows):
            extra = next((k for k in row if k not in names), None)
            if extra is not None:
                raise InvalidInput(
                    f"{chunk.where(i)}: field {extra!r} is not among the fields of the first "
                    f"{CHUNK_ROWS} rows {sorted(names)}, which fix the .parquet output's "
                    "columns; give every row the same fields, or write .jsonl")
        try:
            return pa.Table.from_pylist(rows, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidInput(
                f"rows {chunk.first}-{chunk.first + len(chunk) - 1}: a field's type differs "
                f"from the first rows' ({exc}); the .parquet output needs one type per "
                "column: make them agree, or write .jsonl") from None


# -- .csv and .parquet (pyarrow) ---------------------------------------------------------------

class _ArrowChunk(Chunk):
    def __init__(self, first, texts, batch):
        super().__init__(first, texts)
        self.batch = batch

    def records(self, refused):
        return self.batch.to_pylist()

    def table(self, refused):
        import pyarrow as pa

        return pa.Table.from_batches([self.batch])


def _arrow_chunks(batches, column: str, first: int = 1) -> Iterator[Chunk]:
    """Record batches cut into chunks of at most CHUNK_ROWS rows."""
    for batch in batches:
        for start in range(0, batch.num_rows, CHUNK_ROWS):
            part = batch.slice(start, CHUNK_ROWS)
            yield _ArrowChunk(first, part.column(column).to_pylist(), part)
            first += part.num_rows


def _empty_chunk(schema) -> Chunk:
    import pyarrow as pa

    return _ArrowChunk(1, [], pa.RecordBatch.from_pylist([], schema=schema))


def _need_column(names: List[str], column: str, path: str) -> None:
    if column not in names:
        raise InvalidInput(f"{path}: no column {column!r} (columns: {names}); "
                           "name the text column with --column")


class CsvReader(_FileReader):
    """A header row, then one row per line (RFC 4180 quoting). The text column is read as
    strings (an empty field is an empty text); the other columns' types are inferred by Arrow
    from the first block (1 MiB) of the file."""

    def __init__(self, path: str, column: str):
        super().__init__(path)
        import pyarrow as pa
        from pyarrow import csv

        self.path, self.column = path, column
        try:
            self._reader = csv.open_csv(
                self._file, convert_options=csv.ConvertOptions(column_types={column: pa.string()}))
            _need_column(self._reader.schema.names, column, path)
        except pa.ArrowInvalid as exc:
            self.close()
            raise InvalidInput(f"{path}: not a readable CSV file ({exc})") from None
        except BaseException:
            self.close()
            raise

    def chunks(self):
        import pyarrow as pa

        rows = 0

        def batches():
            nonlocal rows
            while True:
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as exc:
                    raise InvalidInput(
                        f"{self.path}: after row {rows}: {exc} (Arrow infers each column's "
                        "type from the first MiB of the file; convert the file to .parquet "
                        "or .jsonl with the types you want)") from None
                rows += batch.num_rows
                yield batch

        return _arrow_chunks(batches(), self.column)

    def empty(self):
        return _empty_chunk(self._reader.schema)


class ParquetReader(Reader):
    """A Parquet file read one record batch at a time; the text column must exist."""

    def __init__(self, path: str, column: str):
        from pyarrow import parquet

        self._file = parquet.ParquetFile(path)
        self.column = column
        _need_column(self._file.schema_arrow.names, column, path)
        self.total = self._file.metadata.num_rows

    def chunks(self):
        return _arrow_chunks(self._file.iter_batches(batch_size=CHUNK_ROWS), self.column)

    def empty(self):
        return _empty_chunk(self._file.schema_arrow)

    def close(self) -> None:
        self._file.close()


def needs_pyarrow(suffix: str) -> bool:
    return suffix in (".csv", ".parquet")


def open_reader(path: str, suffix: str, column: str) -> Reader:
    """The reader of `path` by its suffix (one of FORMATS)."""
    if suffix == ".txt":
        return TxtReader(path)
    if suffix == ".jsonl":
        return JsonlReader(path, column)
    if suffix == ".csv":
        return CsvReader(path, column)
    return ParquetReader(path, column)
