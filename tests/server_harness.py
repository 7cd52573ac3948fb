"""Starts `bge-engine serve` as a real subprocess on a free loopback port, for the server tests.

Each `Server` is one process (uvicorn, one Engine, the batcher); `stop()` ends it (SIGINT,
then SIGKILL after a grace period). Its stderr goes to a file the tests can read (the
access log).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import requests

API_KEY = "test-key-0123456789"
WORKERS_PATH = "/client/v4/accounts/test-account/ai/run/@cf/baai/bge-small-en-v1.5"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `bge-engine serve` process.

    Args:
        model: the model folder.
        args: extra options (e.g. ["--max-queued-texts", "8"]).
        api_key: --api-key, or None for none.
        log_level: --log-level.
    """

    def __init__(self, model, args: Optional[List[str]] = None, api_key: Optional[str] = API_KEY,
                 log_level: str = "warning", env: Optional[dict] = None):
        self.api_key = api_key
        self.log = tempfile.NamedTemporaryFile(prefix="bge-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "bge_engine.cli", "serve", "--model", str(model),
               "--host", "127.0.0.1", "--log-level", log_level] + list(args or [])
        if api_key:
            cmd += ["--api-key", api_key]
        for _ in range(5):  # a port taken between free_port() and the bind: try another
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(cmd + ["--port", str(self.port)], stdout=self.log,
                                         stderr=subprocess.STDOUT,
                                         env=dict(os.environ, **(env or {})))
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"the server did not start; its log:\n{self.output()}")

    def _wait_ready(self, timeout: float = 120.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return True
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        return False

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body=None, data=None, **kw) -> requests.Response:
        headers = dict(self.headers, **kw.pop("headers", {}))
        return requests.post(self.url + path, json=body, data=data, headers=headers,
                             timeout=kw.pop("timeout", 300), **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers, timeout=60, **kw)

    def metric(self, name: str, **labels) -> float:
        """A sample's value from /metrics, e.g. metric("bge_texts_total") (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(self.url + "/metrics", timeout=60).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)
