"""The server's options: one argparse definition shared by `bge-engine serve` and by the ASGI
factory (which reads the same options from the environment variable BGE_ENGINE_SERVE_OPTIONS).

Nothing here imports Starlette or uvicorn: `bge-engine --help` must work without the extra.
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import List, NamedTuple, Optional

from ..cliargs import ArgumentParser, add_model_options, positive_int
from ..engine import TOKEN_BUDGET
from ..hub import default_model

# The model path of the Workers AI routes (CONTRACT.md 5); the served name also stands in.
WORKERS_MODEL = "@cf/baai/bge-small-en-v1.5"
# The most texts one OpenAI request may hold (OpenAI's own limit).
OPENAI_MAX_TEXTS = 2048
ENV_OPTIONS = "BGE_ENGINE_SERVE_OPTIONS"
ENV_API_KEY = "BGE_ENGINE_API_KEY"

# Tokens per forward pass: the Engine's own budget (M = 1024 runs the GEMMs at full speed and
# bounds the workspace). It binds only when more than one pass's worth is queued; a larger one
# makes the texts queued behind a pass wait longer. `bench/serve.py --calibrate` measures
# tokens/s by budget for choosing another.
DEFAULT_MAX_BATCH_TOKENS = TOKEN_BUDGET
DEFAULT_MAX_QUEUED_TEXTS = 4096
DEFAULT_PAYLOAD_LIMIT = 16 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 120.0
LOG_LEVELS = ("debug", "info", "warning", "error")


class Options(NamedTuple):
    """Everything `bge-engine serve` takes (CONTRACT.md 5)."""

    model: str
    dtype: str = "fp32"
    threads: Optional[int] = None
    pooling: str = "mean"
    truncate: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: Optional[str] = None
    served_model_name: Optional[str] = None
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    batch_wait_ms: float = 0.0
    log_level: str = "info"

    @property
    def served_name(self) -> str:
        """--served-model-name, else the model as given (a hub id), or a folder's name."""
        if self.served_model_name:
            return self.served_model_name
        if os.path.isdir(self.model):
            return os.path.basename(os.path.normpath(self.model))
        return self.model


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the server's options to a parser (the `serve` subcommand's, or the factory's)."""
    add_model_options(p)
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                   help="pooling of a request that names none (default: mean, as on Workers AI)")
    p.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="refuse texts over the model's limit (400) instead of truncating them")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default: 8080; 0: any free)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${ENV_API_KEY}, else none)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model's name in /v1/models and the Workers path "
                        "(default: the hub id, or the folder's name)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   metavar="N", help=f"most tokens per forward pass (default: {DEFAULT_MAX_BATCH_TOKENS})")
    p.add_argument("--max-queued-texts", type=positive_int, default=DEFAULT_MAX_QUEUED_TEXTS,
                   metavar="N", help="texts that may wait before requests get 429 "
                                     f"(default: {DEFAULT_MAX_QUEUED_TEXTS})")
    p.add_argument("--payload-limit", type=positive_int, default=DEFAULT_PAYLOAD_LIMIT,
                   metavar="BYTES", help=f"largest request body (default: {DEFAULT_PAYLOAD_LIMIT})")
    p.add_argument("--request-timeout", type=_seconds, default=DEFAULT_REQUEST_TIMEOUT,
                   metavar="S", help="seconds a request may wait before a 408 "
                                     f"(default: {DEFAULT_REQUEST_TIMEOUT:g}; 0: no limit)")
    p.add_argument("--batch-wait-ms", type=_seconds, default=0.0, metavar="MS",
                   help="wait this long for a fuller batch (default: 0, batch what queued)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="info logs one access line per request; warning turns it off")
    return p


def from_args(args: argparse.Namespace) -> Options:
    """Options from parsed arguments (the model and key fall back on the environment)."""
    model = args.model or default_model()
    api_key = args.api_key if args.api_key is not None else os.environ.get(ENV_API_KEY) or None
    return Options(model=model, dtype=args.dtype, threads=args.threads, pooling=args.pooling,
                   truncate=args.truncate, host=args.host, port=args.port, api_key=api_key,
                   served_model_name=args.served_model_name,
                   max_batch_tokens=args.max_batch_tokens,
                   max_queued_texts=args.max_queued_texts, payload_limit=args.payload_limit,
                   request_timeout=args.request_timeout, batch_wait_ms=args.batch_wait_ms,
                   log_level=args.log_level)


def parse(argv: Optional[List[str]] = None) -> Options:
    """Options from a command line; None reads BGE_ENGINE_SERVE_OPTIONS (a shell-quoted
    string of the same options, for `uvicorn --factory bge_engine.server:create_app`)."""
    if argv is None:
        argv = shlex.split(os.environ.get(ENV_OPTIONS, ""))
    parser = add_arguments(ArgumentParser(prog=ENV_OPTIONS))
    return from_args(parser.parse_args(argv))
