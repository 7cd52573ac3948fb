"""A corpus from a file to a file: `bge-engine encode INPUT -o OUTPUT` (CONTRACT.md 4).

    readers.py   an input file (.txt, .jsonl, .csv, .parquet) as chunks of rows
    writers.py   an output file (.npy, .jsonl, .parquet) written chunk by chunk
    atomic.py    a temporary file in the output's folder, renamed onto the output at the end
    arrow.py     embeddings as an Arrow fixed-size list column (shared with bge_engine.ray)
    pipeline.py  read -> check each row -> Engine.encode -> write, with a progress bar
    command.py   the `encode` subcommand: its options and its run

Only .txt and .jsonl to .npy or .jsonl run without pyarrow (the `io` extra).
"""

from __future__ import annotations

__all__ = ["encode_file"]


def __getattr__(name):
    # Lazily: cli.py imports this package to register `encode`, and the other commands'
    # cold start must not pay for numpy here (bge_engine imports it on first use).
    if name == "encode_file":
        from .pipeline import encode_file

        return encode_file
    raise AttributeError(name)
