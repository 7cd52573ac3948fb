"""`bge-engine serve`: its parser and its runner (uvicorn, one process, one Engine)."""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from .options import Options, add_arguments, from_args

DESCRIPTION = ("Serve the model over HTTP: the Workers AI route "
               "(POST /client/v4/accounts/{id}/ai/run/@cf/baai/bge-small-en-v1.5, or "
               "/ai/run/...) and OpenAI's POST /v1/embeddings, with /health, /info, /metrics.")


def add_parser(sub) -> argparse.ArgumentParser:
    """Registers `serve` on the CLI's subparsers."""
    p = sub.add_parser("serve", help="HTTP service: Workers AI and OpenAI embeddings routes",
                       description=DESCRIPTION)
    return add_arguments(p)


def configure_logging(level: str, *, to_stderr: bool = False) -> None:
    """Sets the server's log level (info: one access line per request); with `to_stderr`,
    also prints the records (the factory's case: the command line has done it already)."""
    from .. import log

    number = {"debug": 10, "info": 20, "warning": 30, "error": 40}[level]
    if to_stderr:
        log.to_stderr(number)
    else:
        log.logger().setLevel(number)


def serve(options: Options) -> int:
    """Runs the server until interrupted; raises the load error if the model fails to load."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise SystemExit(f"bge-engine serve needs the server extra ({exc}): "
                         "pip install 'bge-engine[server]'") from None
    from .. import hub

    configure_logging(options.log_level)
    hub.locate(options.model)  # a model that cannot be found fails here, before the port opens
    failure: List[BaseException] = []
    server: Optional[uvicorn.Server] = None

    def stop(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    app = create_app(options, on_load_error=stop)
    config = uvicorn.Config(app, host=options.host, port=options.port,
                            log_level=options.log_level, access_log=False, lifespan="on",
                            server_header=False)
    server = uvicorn.Server(config)
    server.run()
    if failure:
        raise failure[0]
    return 0


def run(args: argparse.Namespace) -> int:
    """The `serve` subcommand."""
    return serve(from_args(args))
