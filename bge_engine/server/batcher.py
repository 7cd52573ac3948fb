"""The batcher: one thread that owns compute, batching the texts of many requests together.

Handlers (on the event loop) tokenise a request's texts and `submit` them as one `Job`; the
job waits in a FIFO queue. The batcher thread takes, from the head of the queue, as many
texts as the token budget allows (a job's texts may span batches; at least one text per
batch), runs them as ONE ragged forward pass whatever their requests and poolings
(`Engine._embed_tokenized`), copies each row into its job, and resolves the jobs it
completed on the event loop. It takes whatever queued while the last batch ran (continuous
batching), so a lone request waits for nothing; `batch_wait_s` > 0 makes it wait that long
for a fuller batch first.

Admission is counted in texts waiting (queued, not yet taken into a running batch): over
`max_queued_texts` a request is refused at once (`Overloaded`, a 429). A job cancelled by its
handler (client gone, or past its deadline) has its untaken texts dropped, never computed.
Because a text's vector does not depend on its batch, co-batching is invisible to clients.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from typing import List, Optional, Sequence

import numpy as np

log = logging.getLogger("bge_engine.server")


class Overloaded(Exception):
    """The queue is full; `retry_after` is the estimated seconds until it drains."""

    def __init__(self, waiting: int, limit: int, retry_after: int):
        super().__init__(f"{waiting} texts are waiting, at most {limit} may; "
                         f"retry after {retry_after} s")
        self.retry_after = retry_after


class Stopped(Exception):
    """The batcher is stopping: no more work is taken."""


class Job:
    """One request's texts on their way through the batcher.

    Attributes:
        ids: the texts' token ids, (tokens_i,) int32 each, [CLS] and [SEP] included.
        poolings: "mean" or "cls" per text.
        rows: (n, dim) float32, filled row by row as batches complete.
        future: resolved on the event loop with `rows` once every row is in.
        next: the index of the first text not yet taken into a batch (batcher lock).
        left: rows still to compute (batcher thread only).
        dropped: the handler cancelled it, or it expired: its untaken texts are skipped.
        deadline: time.monotonic() past which its untaken texts are dropped.
    """

    __slots__ = ("ids", "poolings", "rows", "future", "next", "left", "dropped", "deadline")

    def __init__(self, ids: Sequence[np.ndarray], poolings: Sequence[str], dim: int,
                 future: asyncio.Future, deadline: float):
        self.ids, self.poolings = ids, poolings
        self.rows = np.empty((len(ids), dim), dtype=np.float32)
        self.future = future
        self.next = 0
        self.left = len(ids)
        self.dropped = False
        self.deadline = deadline


class Batcher:
    """Owns the engine's compute: one thread running token-budgeted ragged batches.

    Args:
        engine: the Engine (its `_embed_tokenized` runs every batch).
        max_batch_tokens: the most tokens one forward pass takes (a longer text runs alone).
        max_queued_texts: the most texts that may wait; a request that would pass it is
            refused (an empty queue admits a request of any size).
        batch_wait_s: how long to wait for a fuller batch once a text is queued (0: none).
        metrics: a `Metrics` to count batches, texts, tokens and dropped texts, or None.
    """

    def __init__(self, engine, *, max_batch_tokens: int, max_queued_texts: int,
                 batch_wait_s: float = 0.0, metrics=None):
        self.engine = engine
        self.dim = engine.dim
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_texts = max_queued_texts
        self.batch_wait_s = batch_wait_s
        self.metrics = metrics
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque = collections.deque()
        self.queued_texts = 0  # texts waiting, not yet taken (under _cond)
        self.queued_tokens = 0
        self._stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        # tokens per second of recent batches (for Retry-After); a guess until measured
        self._rate = 5000.0

    # -- the event loop's side ----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts the thread; jobs are resolved on `loop`."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="bge-engine-batcher",
                                        daemon=True)
        self._thread.start()

    def submit(self, ids: Sequence[np.ndarray], poolings: Sequence[str],
               deadline: float) -> Job:
        """Queues a request's texts (call on the event loop); await `job.future`.

        Raises:
            Overloaded: too many texts wait already.
            Stopped: the server is shutting down.
        """
        job = Job(ids, poolings, self.dim, self._loop.create_future(), deadline)
        n = len(ids)
        tokens = sum(a.shape[0] for a in ids)
        with self._cond:
            if self._stopping:
                raise Stopped("the server is shutting down")
            if self.queued_texts and self.queued_texts + n > self.max_queued_texts:
                wait = (self.queued_tokens + tokens) / self._rate
                raise Overloaded(self.queued_texts, self.max_queued_texts,
                                 max(1, math.ceil(wait)))
            self._jobs.append(job)
            self.queued_texts += n
            self.queued_tokens += tokens
            self._cond.notify()
        return job

    def cancel(self, job: Job, reason: str) -> int:
        """Drops a job's texts not yet taken into a batch (client gone or timed out);
        returns how many were dropped. Rows already computing finish and are discarded."""
        with self._cond:
            if job.dropped:
                return 0
            job.dropped = True
            dropped = len(job.ids) - job.next
            self.queued_texts -= dropped
            self.queued_tokens -= sum(a.shape[0] for a in job.ids[job.next:])
            job.next = len(job.ids)
        if dropped and self.metrics is not None:
            self.metrics.dropped_texts.labels(reason).inc(dropped)
        return dropped

    def stop(self) -> None:
        """Stops the thread after its running batch; waiting jobs fail with Stopped."""
        with self._cond:
            self._stopping = True
            jobs = list(self._jobs)
            self._jobs.clear()
            self.queued_texts = self.queued_tokens = 0
            self._cond.notify_all()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(Stopped("the server is shutting down"))
        if self._thread is not None:
            self._thread.join()

    # -- the batcher thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                if self.batch_wait_s > 0:
                    end = time.monotonic() + self.batch_wait_s
                    while (self.queued_tokens < self.max_batch_tokens and not self._stopping
                           and (left := end - time.monotonic()) > 0):
                        self._cond.wait(left)
                batch = self._take()
            if batch:
                self._compute(batch)

    def _take(self) -> List[tuple]:
        """(job, index) of the texts of the next batch, from the head of the queue (under
        the lock): at most max_batch_tokens tokens, at least one text. Jobs past their
        deadline are dropped on the way."""
        batch, tokens = [], 0
        now = time.monotonic()
        jobs, budget = self._jobs, self.max_batch_tokens
        while jobs:
            job = jobs[0]
            if job.dropped:
                jobs.popleft()
                continue
            if job.deadline < now:
                dropped = len(job.ids) - job.next
                self.queued_texts -= dropped
                self.queued_tokens -= sum(a.shape[0] for a in job.ids[job.next:])
                job.dropped = True
                jobs.popleft()
                if self.metrics is not None:
                    self.metrics.dropped_texts.labels("timeout").inc(dropped)
                continue
            ids = job.ids
            while job.next < len(ids):
                n = ids[job.next].shape[0]
                if batch and tokens + n > budget:
                    self.queued_texts -= len(batch)
                    self.queued_tokens -= tokens
                    return batch
                batch.append((job, job.next))
                tokens += n
                job.next += 1
            jobs.popleft()
        self.queued_texts -= len(batch)
        self.queued_tokens -= tokens
        return batch

    def _compute(self, batch: List[tuple]) -> None:
        ids = [job.ids[i] for job, i in batch]
        poolings = [job.poolings[i] for job, i in batch]
        tokens = sum(a.shape[0] for a in ids)
        start = time.perf_counter()
        try:
            rows = self.engine._embed_tokenized(ids, poolings)
        except BaseException as exc:  # never seen; a bug must fail its requests, not the thread
            log.exception("batch of %d texts failed", len(batch))
            failed = {id(job): job for job, _ in batch}
            for job in failed.values():
                self.cancel(job, "error")
            self._loop.call_soon_threadsafe(_fail, list(failed.values()), exc)
            return
        seconds = time.perf_counter() - start
        self._rate = 0.8 * self._rate + 0.2 * (tokens / max(seconds, 1e-6))
        done = []
        for k, (job, i) in enumerate(batch):
            job.rows[i] = rows[k]
            job.left -= 1
            if job.left == 0:
                done.append(job)
        if done:
            self._loop.call_soon_threadsafe(_resolve, done)
        m = self.metrics
        if m is not None:
            m.batches.observe(len(batch))
            m.batch_tokens.observe(tokens)
            m.batch_seconds.observe(seconds)
            m.texts.inc(len(batch))
            m.tokens.inc(tokens)


def _resolve(jobs: List[Job]) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_result(job.rows)


def _fail(jobs: List[Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
