"""The corpus pipeline: read a chunk of rows -> check each row's text -> Engine.encode the
good ones -> write the chunk, with a progress bar; the output appears under its name only
once complete.

Each chunk is one Engine.encode call. A row's embedding does not depend on the batch it is
in (CONTRACT 2), so the rows equal Engine.encode of the texts bit for bit whatever the
chunking. Each chunk is written on a thread of its own while the next one encodes. Memory
holds two chunks (plus a Parquet row group): it stays flat for any corpus.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from ..errors import BgeError, InvalidInput
from ..schema import check_text
from . import readers, writers
from .atomic import atomic_output

ON_ERROR = ("fail", "skip")
SHOWN_SKIPS = 10  # skipped rows logged one by one; the rest only counted


class Summary(NamedTuple):
    rows: int       # rows written
    skipped: int    # of which without an embedding (--on-error skip)
    seconds: float  # from the first read to the rename


def suffixes(input: str, output: str, on_error: str = "fail") -> Tuple[str, str]:
    """Checks the paths and options before any model is loaded; returns the two suffixes.

    Raises:
        InvalidInput: an unknown format, a missing input or output folder, a bad on_error,
            or on_error="skip" with a .npy output (whose rows cannot be null).
        BgeError: a format that needs pyarrow where it is not installed.
    """
    in_suffix = os.path.splitext(input)[1].lower()
    out_suffix = os.path.splitext(output)[1].lower()
    if in_suffix not in readers.FORMATS:
        raise InvalidInput(f"INPUT {input!r}: expected a file ending in "
                           f"{', '.join(readers.FORMATS)}")
    if out_suffix not in writers.FORMATS:
        raise InvalidInput(f"OUTPUT {output!r}: expected a file ending in "
                           f"{', '.join(writers.FORMATS)}")
    if on_error not in ON_ERROR:
        raise InvalidInput(f"on_error: expected 'fail' or 'skip', got {on_error!r}")
    if on_error == "skip" and out_suffix == ".npy":
        raise InvalidInput("--on-error skip: a .npy output cannot hold a row without an "
                           "embedding; write .parquet or .jsonl, or use --on-error fail")
    if not os.path.isfile(input):
        raise InvalidInput(f"INPUT {input!r}: no such file")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise InvalidInput(f"OUTPUT {output!r}: no folder {folder!r}; create it first")
    if readers.needs_pyarrow(in_suffix) or writers.needs_pyarrow(out_suffix):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise BgeError(f"{in_suffix} to {out_suffix} needs pyarrow: "
                           "pip install 'bge-engine[io]'") from None
    return in_suffix, out_suffix


def encode_file(engine, input: str, output: str, *, column: str = "text",
                pooling: Optional[str] = None, prompt_name: Optional[str] = None,
                batch_size: int = 32, on_error: str = "fail",
                progress: Optional[bool] = None) -> Summary:
    """Embeds every row of `input` into `output` (CONTRACT 4, `bge-engine encode`).

    Args:
        engine: the bge_engine.Engine to encode with.
        input: a .txt, .jsonl, .csv or .parquet file.
        output: a .npy, .parquet or .jsonl file, replaced if it exists.
        column: the text's field (.jsonl) or column (.csv, .parquet).
        pooling, prompt_name, batch_size: as Engine.encode.
        on_error: "fail" (a row whose text is empty or no string raises InvalidInput naming
            it, and no output is written) or "skip" (the row gets a null embedding).
        progress: a tqdm bar on stderr: True, False, or None for only where stderr is a
            terminal.
    """
    in_suffix, out_suffix = suffixes(input, output, on_error)
    started = time.monotonic()
    rows = skipped = 0
    reader = readers.open_reader(input, in_suffix, column)
    try:
        with atomic_output(output) as tmp:
            writer = writers.open_writer(tmp, out_suffix, engine.dim)
            bar = _bar(reader, progress)
            behind = _WriteBehind()
            try:
                for chunk in reader.chunks():
                    refused = _refused(chunk, column, on_error, skipped)
                    vectors = _encode(engine, chunk, refused, pooling=pooling,
                                      prompt_name=prompt_name, batch_size=batch_size)
                    behind.submit(writer.write, chunk, vectors, refused)
                    rows += len(chunk)
                    skipped += len(refused)
                    _advance(bar, reader, len(chunk))
                behind.flush()
                if rows == 0:
                    writer.write(reader.empty(), np.empty((0, engine.dim), np.float32), [])
                writer.close()
            except BaseException:
                behind.close()  # the write in flight ends before the file is released
                writer.abort()
                raise
            finally:
                behind.close()
                bar.close()
    finally:
        reader.close()
    return Summary(rows, skipped, time.monotonic() - started)


def _refused(chunk, column: str, on_error: str, skipped_before: int) -> List[int]:
    """The chunk's rows whose text is refused (empty, not a string, not valid Unicode).

    Raises:
        InvalidInput: the first such row, with on_error="fail".
    """
    refused = []
    for i, value in enumerate(chunk.texts):
        if type(value) is str and value:
            try:
                value.encode("utf-8")
                continue
            except UnicodeEncodeError:
                pass
        where = f"{chunk.where(i)}, column {column!r}"
        if value is readers.MISSING:
            message = f"{where}: missing"
        elif value is None:
            message = f"{where}: null, expected a non-empty string"
        else:
            try:
                check_text(value, where)
            except InvalidInput as exc:
                message = str(exc)
        if on_error == "fail":
            raise InvalidInput(f"{message}; fix the row, or pass --on-error skip to write it "
                               "with a null embedding (.parquet or .jsonl output)")
        if skipped_before + len(refused) < SHOWN_SKIPS:
            _log().warning("%s; written with a null embedding", message)
        refused.append(i)
    return refused


def _encode(engine, chunk, refused: List[int], **kw) -> np.ndarray:
    """float32 (len(chunk), dim): the embeddings of the chunk's accepted rows in their rows
    (refused rows are zeros)."""
    if not refused:
        return engine.encode(chunk.texts, **kw)
    keep = sorted(set(range(len(chunk))) - set(refused))
    vectors = np.zeros((len(chunk), engine.dim), dtype=np.float32)
    if keep:
        vectors[keep] = engine.encode([chunk.texts[i] for i in keep], **kw)
    return vectors


class _WriteBehind:
    """Writes chunk i on a thread of its own while chunk i + 1 encodes (the kernels release
    the GIL): at most one write in flight, so chunks reach the file in input order and memory
    holds two chunks. A write's exception is raised by the next `submit` or by `flush`."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bge-engine-write")
        self._pending = None

    def submit(self, fn, *args) -> None:
        self.flush()
        self._pending = self._pool.submit(fn, *args)

    def flush(self) -> None:
        """Waits for the write in flight; raises its exception."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Waits for the write in flight (its exception dropped: the caller is failing
        already or has flushed) and ends the thread."""
        self._pending = None
        self._pool.shutdown(wait=True)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _bar(reader, progress: Optional[bool]):
    """A tqdm bar in texts (texts/s), its total the row count where the input knows it."""
    if progress is False:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=reader.total, desc="encode", unit=" texts", file=sys.stderr,
                disable=None if progress is None else False, mininterval=0.5, smoothing=0.1)


def _advance(bar, reader, n: int) -> None:
    bar.update(n)
    fraction = reader.fraction()
    if fraction is not None and hasattr(bar, "set_postfix_str"):
        bar.set_postfix_str(f"{fraction:.0%} of input", refresh=False)


def _log():
    return logging.getLogger("bge_engine")
