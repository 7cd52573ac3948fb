"""The `encode` subcommand: `bge-engine encode INPUT -o OUTPUT [options]` (CONTRACT 4).

cli.py registers it with one row of its COMMANDS (add_parser, run); everything else is here.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..cliargs import add_model_options, engine, positive_int

HELP = "embed a corpus from a file to a file (.txt/.jsonl/.csv/.parquet -> .npy/.parquet/.jsonl)"


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds `encode` to the subparsers `sub` of the bge-engine parser."""
    p = sub.add_parser("encode", help=HELP, description=HELP + ". Rows keep their order; "
                       "the output appears under its name only when complete.")
    p.add_argument("input", metavar="INPUT",
                   help=".txt (a text per line), .jsonl, .csv or .parquet (the text under "
                        "--column)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help=".npy (float32 rows), .parquet or .jsonl (the input's columns plus "
                        "'embedding')")
    add_model_options(p)
    p.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="default: the checkpoint's own (cls for bge)")
    p.add_argument("--column", default="text",
                   help="the text's field (.jsonl) or column (.csv, .parquet); default: text")
    p.add_argument("--prompt-name", default=None, metavar="NAME",
                   help="a prompt of the checkpoint put before every text (e.g. query)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="texts per forward pass (default 32)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="a row whose text is empty or no string: stop with exit 2 (fail, the "
                        "default) or write it with a null embedding (skip; not for .npy)")
    return p


def run(args) -> int:
    """Runs `bge-engine encode`; errors propagate to cli.main, which prints and maps them."""
    from .pipeline import encode_file, suffixes

    suffixes(args.input, args.output, args.on_error)  # bad paths fail before the model loads
    eng = engine(args)
    # SIGTERM unwinds like Ctrl-C, so the temporary output is removed there too.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = encode_file(eng, args.input, args.output, column=args.column,
                              pooling=args.pooling, prompt_name=args.prompt_name,
                              batch_size=args.batch_size, on_error=args.on_error)
    finally:
        signal.signal(signal.SIGTERM, previous)
    skipped = f", {summary.skipped} without an embedding" if summary.skipped else ""
    rate = summary.rows / summary.seconds if summary.seconds > 0 else 0.0
    print(f"bge-engine: encoded {summary.rows} rows{skipped} in {summary.seconds:.1f} s "
          f"({rate:.1f} texts/s) -> {args.output}", file=sys.stderr)
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)
