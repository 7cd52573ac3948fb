"""Argument parsing shared by every `bge-engine` subcommand (cli.py and the subcommands that
live in their own packages): a parser whose errors are `InvalidInput`, option value types
that refuse bad values in the user's terms, and the model options every command takes."""

from __future__ import annotations

import argparse

from .engine import DTYPES, Engine
from .errors import InvalidInput
from .hub import DEFAULT_MODEL


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises InvalidInput (one `invalid_input` line on
    stderr, exit status 2, from cli.main) instead of printing the usage block and exiting."""

    def error(self, message):
        raise InvalidInput(f"{self.prog}: {message} (see `{self.prog} --help`)")


def positive_int(value: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def add_model_options(p: argparse.ArgumentParser, *, threads: bool = True) -> None:
    """--model, --dtype and (unless threads=False) --threads, as every command spells them."""
    p.add_argument("--model", default=None,
                   help=f"a model folder or hub id (default: $BGE_ENGINE_MODEL, else {DEFAULT_MODEL})")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights' dtype (default: fp32)")
    if threads:
        p.add_argument("--threads", type=positive_int, default=None,
                       help="threads per call (default: $OMP_NUM_THREADS, else the cores)")


def engine(args: argparse.Namespace, **kwargs) -> Engine:
    """The Engine that add_model_options' arguments describe (kwargs: Engine's others)."""
    return Engine(args.model, dtype=args.dtype, threads=getattr(args, "threads", None), **kwargs)
