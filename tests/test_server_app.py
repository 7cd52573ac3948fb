"""The ASGI app in-process (uvicorn on a thread): 503 until the engine is loaded, a failing
batch as a JSON 500, the factory's options from the environment, the serve command's exit
on a model that cannot be found."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import requests

pytest.importorskip("uvicorn")
import uvicorn  # noqa: E402

from bge_engine.server import create_app  # noqa: E402
from bge_engine.server.options import parse  # noqa: E402
from server_harness import WORKERS_PATH, free_port  # noqa: E402


class InThread:
    """uvicorn serving `app` on a thread (signal handlers stay with the main thread)."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(60)


def test_503_until_loaded(bge):
    release = threading.Event()

    def slow_load():
        release.wait(60)
        return bge

    srv = InThread(create_app(parse(["--model", str(bge.folder)]), load=slow_load))
    try:
        r = requests.get(srv.url + "/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = requests.post(srv.url + WORKERS_PATH, json={"text": "a"})
        assert r.status_code == 503 and r.json()["errors"][0]["code"] == 3040
        assert r.headers["retry-after"] == "1"
        r = requests.post(srv.url + "/v1/embeddings", json={"input": "a"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        release.set()
        end = time.monotonic() + 60
        while requests.get(srv.url + "/health").status_code != 200:
            assert time.monotonic() < end
            time.sleep(0.02)
        r = requests.post(srv.url + WORKERS_PATH, json={"text": "a"})
        assert r.json()["result"] == bge.embed({"text": "a"})
    finally:
        release.set()
        srv.stop()


def test_load_error_is_503_with_the_reason(synthetic_path):
    def broken():
        raise FileNotFoundError("no weights here")

    srv = InThread(create_app(parse(["--model", str(synthetic_path)]), load=broken))
    try:
        end = time.monotonic() + 30
        while requests.get(srv.url + "/health").json()["status"] == "loading":
            assert time.monotonic() < end
            time.sleep(0.02)
        r = requests.get(srv.url + "/health")
        assert r.status_code == 503 and "no weights here" in r.json()["error"]
    finally:
        srv.stop()


class Failing:
    """The real engine, but a batch holding the text "boom" fails."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _embed_tokenized(self, all_ids, poolings):
        boom = self._engine._tokenize(["boom"])[0]
        if any(ids.shape == boom.shape and (ids == boom).all() for ids in all_ids):
            raise RuntimeError("boom")
        return self._engine._embed_tokenized(all_ids, poolings)


def test_failing_batch_is_json_500_and_the_server_goes_on(bge):
    srv = InThread(create_app(parse(["--model", str(bge.folder)]), engine=Failing(bge)))
    try:
        r = requests.post(srv.url + WORKERS_PATH, json={"text": ["boom"]})
        assert r.status_code == 500 and r.json()["success"] is False
        assert r.json()["errors"][0]["message"].startswith("internal error")
        r = requests.post(srv.url + "/v1/embeddings", json={"input": "boom"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = requests.post(srv.url + WORKERS_PATH, json={"text": ["fine"]})
        assert r.json()["result"] == bge.embed({"text": ["fine"]})
    finally:
        srv.stop()


def test_factory_reads_options_from_the_environment(synthetic_path, tmp_path):
    port = free_port()
    env_opts = f"--model {synthetic_path} --served-model-name from-env --log-level warning"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bge_engine.server:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**__import__("os").environ, "BGE_ENGINE_SERVE_OPTIONS": env_opts})
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < end
            try:
                if requests.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        models = requests.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["id"] == "from-env"
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_without_a_model_exits_1(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bge_engine.cli", "serve", "--model",
                        str(tmp_path / "absent"), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "model_not_found" in r.stderr
