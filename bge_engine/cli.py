"""The command line: `bge-engine COMMAND ...` (also `python -m bge_engine COMMAND ...`).

    bge-engine embed [--model M] [--pooling mean|cls] [--dtype D] [--threads N] [--no-truncate] TEXT...
    bge-engine embed [...] --input FILE.jsonl|-    # a payload per line in, a reply per line out
    bge-engine encode INPUT -o OUTPUT [...]         # a corpus from a file to a file (corpus/)
    bge-engine bench [--model M] [--dtype D] [--threads N] [--json]
    bge-engine serve [--model M] [--port P] [...]   # HTTP: Workers AI and OpenAI routes
    bge-engine info [--json]

Errors go to stderr as one line naming the error's code; the exit status is 2 for bad input
(payloads, option values, a missing --input file), 1 for anything else. A closed stdout
(`| head`) ends the command quietly. Subcommands are the rows of COMMANDS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, List, Optional, Tuple

from . import __version__, cpu_info, log
from .cliargs import ArgumentParser, add_model_options, engine
from .corpus import command as encode_command
from .engine import default_threads
from .errors import BgeError, InvalidInput
from .hub import default_model
from .server import cli as serve_cli


def _add_embed(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("embed", help="embed texts; Workers AI JSON on stdout")
    e.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    e.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="pooling for TEXT arguments (default: mean, as on Workers AI)")
    add_model_options(e)
    e.add_argument("--no-truncate", action="store_true",
                   help="refuse texts over the model's token limit (input_too_long) instead of "
                        "cutting them")
    e.add_argument("--input", default=None, metavar="FILE",
                   help="read one JSON payload per line from FILE ('-' for stdin)")
    return e


def _add_bench(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="latency, throughput, peak RSS and cold start")
    add_model_options(b)
    b.add_argument("--json", action="store_true", help="print JSON")
    return b


def _add_info(sub) -> argparse.ArgumentParser:
    i = sub.add_parser("info", help="version, CPU features and the kernel of each slot")
    i.add_argument("--json", action="store_true", help="print JSON")
    return i


def _bench(args) -> int:
    from . import bench

    threads = args.threads or default_threads()
    print(f"bge-engine bench: {args.model or default_model()}, {args.dtype}, {threads} threads "
          f"({cpu_info()['isa']} kernels) ...", file=sys.stderr)
    r = bench.run(args.model or default_model(), args.dtype, threads)
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
        reply = engine(args, truncate=not args.no_truncate).embed(payload)
        sys.stdout.write(json.dumps(reply) + "\n")
        return 0
    # Bytes that are not UTF-8 become lone surrogates, which the schema refuses as invalid
    # Unicode naming the line, as it does for standard input.
    try:
        stream = (sys.stdin if args.input == "-"
                  else open(args.input, encoding="utf-8", errors="surrogateescape"))
    except OSError as exc:  # opened before the model loads: a typo fails at once
        raise InvalidInput(f"--input {args.input!r}: {exc.strerror or exc}") from None
    try:
        return _embed_lines(stream, engine(args, truncate=not args.no_truncate))
    finally:
        if stream is not sys.stdin:
            stream.close()


def _embed_lines(stream, eng) -> int:
    """A reply per payload line on stdout; a bad line gets an error line on stderr naming its
    number, and the lines after it are still answered. Returns 2 if any line was bad."""
    bad = 0
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            try:
                payload = json.loads(line)
            except ValueError as exc:
                raise InvalidInput(f"not JSON ({exc})") from None
            reply = eng.embed(payload)
        except InvalidInput as exc:
            _report(exc, f"line {number}: ")
            bad += 1
            continue
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 2 if bad else 0


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


# The subcommands, in the order `--help` lists them: (name, add_parser(subparsers) -> the
# subcommand's parser, run(args) -> exit status). A subcommand that lives in its own module
# joins with one row here; its add_parser should import nothing heavy (it runs on every start).
Command = Tuple[str, Callable[..., argparse.ArgumentParser], Callable[[argparse.Namespace], int]]
COMMANDS: List[Command] = [
    ("embed", _add_embed, _embed),
    ("encode", encode_command.add_parser, encode_command.run),
    ("bench", _add_bench, _bench),
    ("serve", serve_cli.add_parser, serve_cli.run),
    ("info", _add_info, _info),
]


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bge-engine",
                       description="CPU text embeddings with BAAI/bge-small-en-v1.5 and other "
                                   "BERT encoders.")
    p.add_argument("--version", action="version", version=f"bge-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True, title="commands")
    for name, add_parser, run in COMMANDS:
        add_parser(sub).set_defaults(run=run)
    return p


def _report(exc: BaseException, where: str = "") -> None:
    code = exc.code if isinstance(exc, BgeError) else "error"
    print(f"bge-engine: error [{code}]: {where}{exc}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    log.to_stderr()
    try:
        args = _parser().parse_args(argv)
        status = args.run(args)
        sys.stdout.flush()  # here, so that a closed stdout is caught below, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Python would flush stdout again at
        # exit and complain, so stdout becomes /dev/null first. 141: killed by SIGPIPE, as
        # a C program in a pipeline is.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # a stdout with no file descriptor (an embedding app)
            pass
        return 141
    except BgeError as exc:
        _report(exc)
        return 2 if isinstance(exc, InvalidInput) else 1
    except (OSError, ValueError) as exc:
        _report(exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
