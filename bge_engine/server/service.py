"""The state one app serves from: its options, the Engine (loaded on a thread of its own, so
the port answers /health with 503 meanwhile), the batcher, the metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable, Optional

import numpy as np

from .batcher import Batcher
from .metrics import Metrics
from .options import Options

log = logging.getLogger("bge_engine.server")


class Service:
    """Everything the routes share.

    Args:
        options: the server's options.
        engine: an Engine to serve (tests pass one); None loads one from `options` when the
            app starts, on a thread, while /health answers 503.
        load: how to make the Engine (default: Engine(options.model, dtype=..., ...)).
        on_load_error: called (on the event loop) with the exception if loading fails; the
            `serve` command stops the server with it.
    """

    def __init__(self, options: Options, engine=None, load: Optional[Callable] = None,
                 on_load_error: Optional[Callable[[BaseException], None]] = None):
        self.options = options
        self.metrics = Metrics()
        self.engine = None
        self.batcher: Optional[Batcher] = None
        self.info: dict = {}
        self.load_error: Optional[BaseException] = None
        self._given = engine
        self._load = load or self._load_engine
        self._on_load_error = on_load_error
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def _load_engine(self):
        from ..engine import Engine

        o = self.options
        return Engine(o.model, dtype=o.dtype, threads=o.threads, truncate=o.truncate)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts serving: at once with a given engine, else once a thread has loaded it."""
        self._loop = loop
        if self._given is not None:
            self._serve(self._prepare(self._given))
            return
        threading.Thread(target=self._load_in_thread, name="bge-engine-load",
                         daemon=True).start()

    def _load_in_thread(self) -> None:
        try:
            engine = self._prepare(self._load())
        except BaseException as exc:  # reported on the loop; /health stays 503
            self._loop.call_soon_threadsafe(self._failed, exc)
            return
        self._loop.call_soon_threadsafe(self._serve, engine)

    def _prepare(self, engine):
        """Warms the engine up (its workspace, the kernels' first calls) and reads /info's
        fields, off the event loop where a thread loads."""
        from .. import __version__, cpu_info

        ids = engine._tokenize(["warm up"])
        engine._embed_tokenized(ids, ["mean"])
        o = self.options
        self.info = {
            "model": o.model, "folder": str(engine.folder), "served_model_name": o.served_name,
            "dim": engine.dim, "max_tokens": engine.max_tokens, "dtype": engine.dtype,
            "threads": engine.threads, "pooling": o.pooling,
            "checkpoint_pooling": engine.pooling, "truncate": engine.truncate,
            "limits": self.limits(engine), "version": __version__, "cpu": cpu_info(),
        }
        return engine

    def limits(self, engine) -> dict:
        """Every limit a client may need to chunk its work."""
        from .. import schema
        from .options import OPENAI_MAX_TEXTS

        o = self.options
        return {"max_tokens_per_text": engine.max_tokens,
                "truncate": engine.truncate,
                "max_texts_per_workers_request": schema.MAX_TEXTS,
                "max_texts_per_openai_request": OPENAI_MAX_TEXTS,
                "payload_limit_bytes": o.payload_limit,
                "max_batch_tokens": o.max_batch_tokens,
                "max_queued_texts": o.max_queued_texts,
                "request_timeout_s": o.request_timeout or None,
                "batch_wait_ms": o.batch_wait_ms}

    def _serve(self, engine) -> None:
        o = self.options
        batcher = Batcher(engine, max_batch_tokens=o.max_batch_tokens,
                          max_queued_texts=o.max_queued_texts,
                          batch_wait_s=o.batch_wait_ms / 1000.0, metrics=self.metrics)
        batcher.start(self._loop)
        self.metrics.queue.set_function(lambda: batcher.queued_texts)
        self.engine, self.batcher = engine, batcher
        log.info("serving %s (%s, %d threads, dim %d) as %r", o.model, engine.dtype,
                 engine.threads, engine.dim, o.served_name)

    def _failed(self, exc: BaseException) -> None:
        self.load_error = exc
        log.error("the model did not load: %s", exc)
        if self._on_load_error is not None:
            self._on_load_error(exc)

    def stop(self) -> None:
        """Stops the batcher (waiting requests get 503)."""
        if self.batcher is not None:
            self.batcher.stop()

    def empty_rows(self) -> np.ndarray:
        return np.empty((0, self.engine.dim), dtype=np.float32)
