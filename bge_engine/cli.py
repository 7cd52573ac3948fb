"""The command line: `bge-engine embed | info`.

    bge-engine embed [--model M] [--pooling mean|cls] [--dtype fp32] TEXT...
    bge-engine embed [--model M] --input FILE.jsonl|-     # a payload per line in, a reply per line out
    bge-engine bench [--model M] [--dtype fp32] [--threads N] [--json]
    bge-engine info [--json]

Errors go to stderr as one line naming the error's code; the exit status is 2 for bad
input, 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from . import __version__, cpu_info
from .engine import DTYPES, Engine, default_threads
from .errors import BgeError, InvalidInput
from .hub import DEFAULT_MODEL


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"bge-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="embed texts; Workers AI JSON on stdout")
    e.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    e.add_argument("--model", default=None,
                   help=f"a model folder or hub id (default: $BGE_ENGINE_MODEL, else {DEFAULT_MODEL})")
    e.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="pooling for TEXT arguments (default: mean, as on Workers AI)")
    e.add_argument("--dtype", choices=DTYPES, default="fp32")
    e.add_argument("--threads", type=int, default=None, help="threads per call")
    e.add_argument("--input", default=None, metavar="FILE",
                   help="read one JSON payload per line from FILE ('-' for stdin)")

    b = sub.add_parser("bench", help="latency, throughput, peak RSS and cold start")
    b.add_argument("--model", default=None,
                   help=f"a model folder or hub id (default: $BGE_ENGINE_MODEL, else {DEFAULT_MODEL})")
    b.add_argument("--dtype", choices=DTYPES, default="fp32")
    b.add_argument("--threads", type=int, default=None, help="threads per call")
    b.add_argument("--json", action="store_true", help="print JSON")

    i = sub.add_parser("info", help="version, CPU features and the kernel of each slot")
    i.add_argument("--json", action="store_true", help="print JSON")
    return p


def _model(args) -> str:
    return args.model or os.environ.get("BGE_ENGINE_MODEL") or DEFAULT_MODEL


def _engine(args) -> Engine:
    return Engine(_model(args), dtype=args.dtype, threads=args.threads)


def _bench(args) -> int:
    from . import bench

    threads = args.threads or default_threads()
    print(f"bge-engine bench: {_model(args)}, {args.dtype}, {threads} threads "
          f"({cpu_info()['isa']} kernels) ...", file=sys.stderr)
    r = bench.run(_model(args), args.dtype, threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"model        {r['model']}")
    print(f"dtype        {r['dtype']}, {r['threads']} threads")
    for n, sec in r["latency_s"].items():
        print(f"latency {n:>3}  {sec * 1e3:8.2f} ms   (batch 1, {n} tokens, median)")
    print(f"throughput   {r['throughput_caller']:8.1f} sentences/s   "
          f"({len(bench.sentences())} sentences, batches of {bench.BATCH})")
    print(f"peak RSS     {r['peak_rss_mb']:8.1f} MB")
    print(f"cold start   {r['cold_start_s'] * 1e3:8.1f} ms   (process start to first vector)")
    return 0


def _embed(args) -> int:
    if args.input is None and not args.texts:
        raise InvalidInput("embed: give TEXT arguments or --input FILE")
    if args.input is not None and args.texts:
        raise InvalidInput("embed: give TEXT arguments or --input FILE, not both")
    if args.input is None:
        payload = {"text": args.texts}
        if args.pooling:
            payload["pooling"] = args.pooling
        engine = _engine(args)
        json.dump(engine.embed(payload), sys.stdout)
        sys.stdout.write("\n")
        return 0
    # Bytes that are not UTF-8 become lone surrogates, which the schema refuses as invalid
    # Unicode naming the line, as it does for standard input.
    stream = (sys.stdin if args.input == "-"
              else open(args.input, encoding="utf-8", errors="surrogateescape"))
    try:
        engine = _engine(args)
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                payload = json.loads(line)
            except ValueError as exc:
                raise InvalidInput(f"line {number}: not JSON ({exc})") from None
            try:
                reply = engine.embed(payload)
            except InvalidInput as exc:
                raise type(exc)(f"line {number}: {exc}", **_extra(exc)) from None
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        if stream is not sys.stdin:
            stream.close()
    return 0


def _extra(exc) -> dict:
    """The keyword attributes an InvalidInput subclass needs to be made again."""
    if hasattr(exc, "index"):
        return {"index": exc.index, "n_tokens": exc.n_tokens, "limit": exc.limit}
    return {}


def _info(args) -> int:
    info = cpu_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    have = [name for name, on in info["features"].items() if on]
    lack = [name for name, on in info["features"].items() if not on]
    print(f"bge-engine {info['version']}")
    print(f"cpu:      {info['cpu']} ({info['machine']})")
    print(f"features: {' '.join(have) or 'none'}")
    print(f"lacks:    {' '.join(lack) or 'none'}")
    print(f"built:    {' '.join(info['built'])}")
    print(f"usable:   {' '.join(info['usable'])}")
    print(f"chosen:   {info['isa']}" + (f" (BGE_ISA={info['cap']})" if info["cap"] else ""))
    print(f"threads:  {info['threads']}")
    print("kernels:")
    for slot, name in info["kernels"].items():
        print(f"  {slot:<14} {name}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="bge-engine: %(levelname)s: %(message)s")
    try:
        return {"embed": _embed, "bench": _bench, "info": _info}[args.command](args)
    except BgeError as exc:
        print(f"bge-engine: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInput) else 1
    except (OSError, ValueError) as exc:
        print(f"bge-engine: error [error]: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
