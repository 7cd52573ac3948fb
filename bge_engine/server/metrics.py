"""Prometheus metrics of one app, in a registry of its own (two apps in one process, as in
the tests, never share or clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets (seconds): a short text takes ~2-5 ms on 2 cores, a full 2048-text
# request tens of seconds.
LATENCY = (.001, .0025, .005, .0075, .01, .015, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10,
           30, 60, 120)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The counters, gauges and histograms /metrics shows.

    Attributes:
        requests: requests by route family and status.
        latency: request seconds by route family (arrival to reply).
        texts, tokens: texts and tokens embedded.
        batches, batch_tokens, batch_seconds: texts, tokens and seconds per forward pass.
        dropped_texts: texts dropped before compute, by reason (disconnect, timeout, error).
        queue: texts waiting (set to read the batcher at scrape time).
    """

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("bge_requests", "HTTP requests by route and status",
                                ("route", "status"), registry=r)
        self.latency = Histogram("bge_request_seconds", "HTTP request latency by route",
                                 ("route",), buckets=LATENCY, registry=r)
        self.texts = Counter("bge_texts", "texts embedded", registry=r)
        self.tokens = Counter("bge_tokens", "tokens embedded, [CLS] and [SEP] included",
                              registry=r)
        self.batches = Histogram("bge_batch_texts", "texts per forward pass", buckets=SIZES,
                                 registry=r)
        self.batch_tokens = Histogram("bge_batch_tokens", "tokens per forward pass",
                                      buckets=TOKENS, registry=r)
        self.batch_seconds = Histogram("bge_batch_seconds", "seconds per forward pass",
                                       buckets=LATENCY, registry=r)
        self.dropped_texts = Counter("bge_dropped_texts",
                                     "texts dropped before compute (client gone, timed out)",
                                     ("reason",), registry=r)
        self.queue = Gauge("bge_queue_texts", "texts waiting for a batch", registry=r)
        self.rejected_texts = Counter("bge_rejected_texts",
                                      "texts refused at admission (429)", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
