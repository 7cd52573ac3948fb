"""Every row of CONTRACT.md 5's error table with a concrete request, in both envelopes; the
overload (429 with Retry-After), the timeout (408), a client leaving mid-queue (its texts
dropped, never computed), not ready (503) and a failing batch (500, JSON all the same)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import requests

from bge_engine.bench import text_of_tokens
from server_harness import API_KEY, WORKERS_PATH, Server

LONG = text_of_tokens(400)


def workers_error(r: requests.Response, status: int, code: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["result"] is None and body["success"] is False and body["messages"] == []
    [err] = body["errors"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    return err["message"]


def openai_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    return err


@pytest.fixture(scope="module")
def server(synthetic_path):
    s = Server(synthetic_path, ["--no-truncate", "--payload-limit", "65536"])
    yield s
    s.close()


# -- 400 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, where", [
    (b"{not json", "not JSON"),
    (b"", "empty"),
    (b'{"text": "\\ud800"}', "not JSON"),  # a lone surrogate is no valid JSON text
])
def test_400_not_json(server, body, where):
    msg = workers_error(server.post(WORKERS_PATH, data=body), 400, 5006)
    assert where in msg
    assert where in openai_error(server.post("/v1/embeddings", data=body), 400)["message"]


@pytest.mark.parametrize("payload, where", [
    ([1, 2], "payload"),
    ({"text": ""}, "text"),
    ({"text": 5}, "text"),
    ({"text": ["a"] * 101}, "at most 100"),
    ({"text": "a", "pool": "cls"}, "'pool'"),
    ({"text": "a", "pooling": "max"}, "pooling"),
    ({"requests": []}, "requests"),
    ({"requests": [{"text": "a"}, {"text": [""]}]}, "requests[1].text[0]"),
])
def test_400_workers_invalid_input(server, payload, where):
    assert where in workers_error(server.post(WORKERS_PATH, payload), 400, 5006)


@pytest.mark.parametrize("payload, param, where", [
    ({"model": "m"}, "input", "missing key 'input'"),
    ({"input": ""}, "input", "input"),
    ({"input": ["a", 3]}, "input", "input[1]"),
    ({"input": ["a"] * 2049}, "input", "at most 2048"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "encoding_format"),
    ({"input": "a", "dimensions": 256}, "dimensions", "384"),
    ({"input": "a", "model": 3}, "model", "model"),
    ({"input": "a", "pooling": "max"}, "pooling", "pooling"),
    ({"input": "a", "temperature": 1}, "temperature", "unknown key"),
    ("a", None, "object"),
])
def test_400_openai_invalid_input(server, payload, param, where):
    err = openai_error(server.post("/v1/embeddings", payload), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert where in err["message"]


@pytest.mark.parametrize("ids", [[101, 2023, 102], [[101, 2023, 102], [101, 102]]])
def test_400_openai_token_ids_name_langchain_option(server, ids):
    err = openai_error(server.post("/v1/embeddings", {"input": ids, "model": "m"}), 400)
    assert "check_embedding_ctx_length=False" in err["message"]
    assert err["param"] == "input"


def test_400_input_too_long(server):
    too_long = text_of_tokens(600)
    msg = workers_error(server.post(WORKERS_PATH, {"text": ["a", too_long]}), 400, 5006)
    assert msg.startswith("text[1]: 600 tokens")
    msg = workers_error(server.post(WORKERS_PATH, {"requests": [{"text": "a"},
                                                                {"text": too_long}]}), 400, 5006)
    assert msg.startswith("requests[1].text[0]: 600 tokens")
    err = openai_error(server.post("/v1/embeddings", {"input": ["a", "b", too_long]}), 400)
    assert err["message"].startswith("input[2]: 600 tokens") and err["code"] == "input_too_long"


# -- 401, 404, 405, 413 -------------------------------------------------------------------

def test_401_missing_or_wrong_key(server):
    url = server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                    {"Authorization": f"Basic {API_KEY}"}):
        r = requests.post(url + WORKERS_PATH, json={"text": "a"}, headers=headers)
        workers_error(r, 401, 10000)
        assert r.headers["www-authenticate"] == "Bearer"
        err = openai_error(requests.post(url + "/v1/embeddings", json={"input": "a"},
                                         headers=headers), 401)
        assert err["code"] == "invalid_api_key"
        for path in ("/v1/models", "/info", "/openapi.json"):
            assert requests.get(url + path, headers=headers).status_code == 401
    # open without a key: probes and scrapers
    assert requests.get(url + "/health").status_code == 200
    assert requests.get(url + "/metrics").status_code == 200
    # the right key, any case of the scheme
    r = requests.post(url + "/v1/embeddings", json={"input": "a"},
                      headers={"Authorization": f"bearer {API_KEY}"})
    assert r.status_code == 200


def test_404_unknown_model_and_route(server):
    msg = workers_error(server.post("/ai/run/@cf/baai/bge-large-en-v1.5", {"text": "a"}),
                        404, 5007)
    assert "bge-large" in msg
    workers_error(server.post("/client/v4/accounts/x/ai/run/other", {"text": "a"}), 404, 5007)
    workers_error(server.get("/nowhere"), 404, 5007)
    assert openai_error(server.get("/v1/nowhere"), 404)["code"] == "not_found"


def test_405_wrong_method(server):
    err = openai_error(server.get("/v1/embeddings"), 405)
    assert "POST" in err["message"]
    r = requests.get(server.url + WORKERS_PATH, headers=server.headers)
    assert r.status_code == 405 and r.json()["success"] is False
    assert requests.post(server.url + "/health").status_code == 405


def test_413_payload_limit(server):
    big = {"text": ["x" * 1000] * 70}  # over the 65536 bytes this server takes
    workers_error(server.post(WORKERS_PATH, big), 413, 3006)
    openai_error(server.post("/v1/embeddings", {"input": big["text"]}), 413)

    def chunks():  # no Content-Length: the limit holds on the bytes read
        body = orjson.dumps(big)
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    r = requests.post(server.url + WORKERS_PATH, data=chunks(), headers=server.headers)
    workers_error(r, 413, 3006)
    assert server.post(WORKERS_PATH, {"text": "still fine"}).status_code == 200


# -- 429, 408, disconnect ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_queue(synthetic_path):
    s = Server(synthetic_path, ["--max-queued-texts", "8", "--max-batch-tokens", "512"])
    yield s
    s.close()


def test_429_overload_then_healthy(small_queue, bge):
    s = small_queue
    start = threading.Barrier(24)

    def hit(i):
        start.wait()
        if i % 2:
            return s.post(WORKERS_PATH, {"text": [LONG] * 8})
        return s.post("/v1/embeddings", {"input": [LONG] * 8})

    with ThreadPoolExecutor(24) as pool:
        replies = list(pool.map(hit, range(24)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    for i, r in enumerate(replies):
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            if i % 2:
                workers_error(r, 429, 3040)
            else:
                assert openai_error(r, 429)["type"] == "rate_limit_error"
    assert s.metric("bge_rejected_texts_total") >= 8
    assert requests.get(s.url + "/health").json() == {"status": "ok"}
    r = s.post(WORKERS_PATH, {"text": ["after the storm"]})
    assert r.json()["result"] == bge.embed({"text": ["after the storm"]})


def _wait_for(predicate, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_drops_queued_texts(small_queue):
    s = small_queue
    n = 60
    body = orjson.dumps({"text": [text_of_tokens(500)] * n})
    texts_before = s.metric("bge_texts_total")
    dropped_before = s.metric("bge_dropped_texts_total", reason="disconnect")
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"POST " + WORKERS_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    # one text per batch (512-token budget): leave once the first is computed
    assert _wait_for(lambda: s.metric("bge_texts_total") > texts_before)
    sock.close()
    assert _wait_for(lambda: s.metric("bge_queue_texts") == 0 and
                     s.metric("bge_texts_total") - texts_before
                     + s.metric("bge_dropped_texts_total", reason="disconnect")
                     - dropped_before == n)
    computed = s.metric("bge_texts_total") - texts_before
    dropped = s.metric("bge_dropped_texts_total", reason="disconnect") - dropped_before
    assert dropped >= n // 2 and computed + dropped == n
    assert s.metric("bge_requests_total", route="workers", status="499") >= 1
    assert requests.get(s.url + "/health").status_code == 200


def test_disconnect_mid_body_is_499_and_computes_nothing(small_queue):
    s = small_queue
    texts_before = s.metric("bge_texts_total")
    gone_before = s.metric("bge_requests_total", route="openai", status="499")
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                 b"Content-Length: 1000\r\n\r\n" + b'{"input": ["half a bo')
    time.sleep(0.2)
    sock.close()
    assert _wait_for(lambda: s.metric("bge_requests_total", route="openai", status="499")
                     == gone_before + 1)
    assert s.metric("bge_texts_total") == texts_before
    assert requests.get(s.url + "/health").status_code == 200


def test_408_request_timeout(synthetic_path):
    s = Server(synthetic_path, ["--request-timeout", "1", "--max-batch-tokens", "512"])
    try:
        # ~50,000 tokens: seconds of compute on any CPU this runs on (2.5 s at 20,000/s)
        many = [text_of_tokens(500)] * 100
        workers_error(s.post(WORKERS_PATH, {"text": many}), 408, 3007)
        assert openai_error(s.post("/v1/embeddings", {"input": many}), 408)["type"] == \
            "timeout_error"
        assert _wait_for(lambda: s.metric("bge_queue_texts") == 0)
        assert s.metric("bge_dropped_texts_total", reason="timeout") > 100
        assert s.post(WORKERS_PATH, {"text": "short"}).status_code == 200
    finally:
        s.close()
