"""`bge-engine serve` with real clients, each reply compared bit for bit with the in-process
Engine: the model page's Python `requests` and `curl -d` examples, the official openai SDK
(base64, its default, and float), both Workers forms, and 16 client threads of mixed requests
against the serial in-process results. The server is a real subprocess on a loopback port."""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from bge_engine.bench import sentences
from server_harness import API_KEY, WORKERS_PATH, Server

# The model page's own examples (Workers AI, @cf/baai/bge-small-en-v1.5)
STORIES = ["This is a story about an orange cloud", "This is a story about a llama",
           "This is a story about a hugging emoji"]


@pytest.fixture(scope="module")
def server(synthetic_path):
    s = Server(synthetic_path, log_level="info")
    yield s
    s.close()


def test_model_page_python_example(server, bge):
    # the page's code, with its URL pointed at the server
    response = requests.post(
        f"{server.url}{WORKERS_PATH}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"text": STORIES},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    assert body["result"] == bge.embed({"text": STORIES})  # every float, bit for bit


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_model_page_curl_example(server, bge):
    # curl -d sends Content-Type: application/x-www-form-urlencoded; the body is JSON all the same
    data = json.dumps({"text": STORIES})
    out = subprocess.run(
        ["curl", "-sS", f"{server.url}{WORKERS_PATH}", "-X", "POST",
         "-H", f"Authorization: Bearer {API_KEY}", "-d", data],
        capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(out)["result"] == bge.embed({"text": STORIES})


def _openai(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def test_openai_sdk_base64_default(server, bge):
    client = _openai(server)
    reply = client.embeddings.create(model="text-embedding-3-small", input=STORIES)
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert [d.embedding for d in reply.data] == bge.embed({"text": STORIES})["data"]
    assert reply.model == "text-embedding-3-small"  # echoed
    tokens = sum(bge.count_tokens(STORIES))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens


def test_openai_sdk_float_and_one_string(server, bge):
    client = _openai(server)
    reply = client.embeddings.create(model="m", input=STORIES[0], encoding_format="float",
                                     dimensions=bge.dim)
    assert len(reply.data) == 1
    assert reply.data[0].embedding == bge.embed({"text": STORIES[0]})["data"][0]


def test_openai_base64_is_little_endian_float32(server, bge):
    r = server.post("/v1/embeddings", {"input": STORIES, "encoding_format": "base64",
                                       "pooling": "cls"})
    assert r.status_code == 200
    rows = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                     for d in r.json()["data"]])
    want = bge.encode(STORIES, pooling="cls")
    assert rows.tobytes() == want.astype("<f4").tobytes()


def test_openai_route_aliases_and_models(server, bge):
    r = server.post("/embeddings", {"input": ["a"], "model": "x"})
    assert r.status_code == 200 and r.json()["data"][0]["embedding"] == \
        bge.embed({"text": "a"})["data"][0]
    models = server.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [server.get("/info").json()["served_model_name"]]
    assert models["data"][0]["owned_by"] == "bge-engine"
    assert isinstance(models["data"][0]["created"], int)


def test_workers_forms_and_paths(server, bge):
    served = server.get("/info").json()["served_model_name"]
    payload = {"requests": [{"text": "a"}, {"text": ["b", "c"], "pooling": "cls"},
                            {"text": []}]}
    for path in (WORKERS_PATH, "/ai/run/@cf/baai/bge-small-en-v1.5", f"/ai/run/{served}"):
        r = server.post(path, payload)
        assert r.status_code == 200, r.text
        assert r.json()["result"] == bge.embed(payload)
    r = server.post(WORKERS_PATH, {"text": []})
    assert r.json()["result"] == {"shape": [0, bge.dim], "data": [], "pooling": "mean"}


def test_health_info_metrics_openapi(server, bge):
    assert requests.get(server.url + "/health").json() == {"status": "ok"}
    info = server.get("/info").json()
    assert info["dim"] == bge.dim and info["max_tokens"] == bge.max_tokens
    assert info["dtype"] == "fp32" and info["pooling"] == "mean"
    limits = info["limits"]
    for key in ("max_tokens_per_text", "max_texts_per_workers_request",
                "max_texts_per_openai_request", "payload_limit_bytes", "max_batch_tokens",
                "max_queued_texts", "request_timeout_s"):
        assert key in limits
    assert limits["max_texts_per_workers_request"] == 100
    assert limits["max_texts_per_openai_request"] == 2048
    assert info["cpu"]["kernels"] and info["version"]
    metrics = requests.get(server.url + "/metrics")  # open without the key
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    for name in ("bge_requests_total", "bge_texts_total", "bge_tokens_total",
                 "bge_batch_texts_bucket", "bge_queue_texts", "bge_request_seconds_bucket",
                 "bge_dropped_texts"):
        assert name in metrics.text
    doc = server.get("/openapi.json").json()
    assert "/v1/embeddings" in doc["paths"] and "/ai/run/{model}" in doc["paths"]


def test_access_log_one_line_per_request(server):
    before = server.output().count('"GET /v1/models HTTP/1.1" 200')
    for _ in range(3):
        server.get("/v1/models")
    assert server.output().count('"GET /v1/models HTTP/1.1" 200') == before + 3


def _mixed_requests(n: int, seed: int = 7):
    """n requests over both routes and poolings, 1-5 texts each, short and long."""
    rng = random.Random(seed)
    pool = sentences() + [" ".join(sentences()[i:i + 12]) for i in range(0, 240, 12)]
    out = []
    for _ in range(n):
        texts = [rng.choice(pool) for _ in range(rng.randint(1, 5))]
        pooling = rng.choice(["mean", "cls", None])
        out.append((rng.choice(["workers", "openai"]), texts, pooling))
    return out


def _send(server, route, texts, pooling):
    if route == "workers":
        body = {"text": texts, **({"pooling": pooling} if pooling else {})}
        r = server.post(WORKERS_PATH, body)
        assert r.status_code == 200, r.text
        return r.json()["result"]["data"]
    body = {"input": texts, "model": "m", **({"pooling": pooling} if pooling else {})}
    r = server.post("/v1/embeddings", body)
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]]


def test_concurrent_mixed_requests_bit_identical(server, bge):
    reqs = _mixed_requests(64)
    want = [bge.embed({"text": t, "pooling": p or "mean"})["data"] for _, t, p in reqs]
    batches_before = server.metric("bge_batch_texts_count")
    singles_before = server.metric("bge_batch_texts_bucket", le="1.0")
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda r: _send(server, *r), reqs))
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"request {i} differs from the in-process result"
    # the requests were co-batched: some forward pass held more than one text
    batches = server.metric("bge_batch_texts_count") - batches_before
    singles = server.metric("bge_batch_texts_bucket", le="1.0") - singles_before
    assert batches < sum(len(t) for _, t, _ in reqs)
    assert singles < batches
