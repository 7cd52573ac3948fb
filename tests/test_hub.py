"""Model resolution (bge_engine.hub) and the shared default engine behind `bge_engine.embed`.

CONTRACT.md section 2: a model is a folder at that path, else the hub id's snapshot in the
Hugging Face cache, else a download through huggingface_hub; when none works, ModelNotFound
says how to point at a local folder. Section 1: `bge_engine.embed` uses one default Engine, made
once (thread-safe) from BGE_ENGINE_MODEL, else BAAI/bge-small-en-v1.5.

No test here touches the network: the cache is a tmp folder, huggingface_hub is a fake module.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import pytest

import bge_engine
from bge_engine import Engine, InvalidInput, ModelNotFound, hub

TEXT = {"text": ["resolved from somewhere", "x"]}
REQUIRED = {"config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"}


def link_model(src: Path, dst: Path) -> Path:
    """A model folder of symlinks to src's files (as the HF cache lays out a snapshot)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name.startswith("."):
            continue
        if item.is_dir():
            link_model(item, dst / item.name)
        else:
            (dst / item.name).symlink_to(item)
    return dst


def make_cache(cache: Path, repo_id: str, src: Path, revision: str = "0123abcd" * 5) -> Path:
    """A Hugging Face cache entry for repo_id whose refs/main snapshot links to src's files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)  # no newline, as huggingface_hub writes it
    return link_model(src, repo / "snapshots" / revision)


class FakeHub(types.ModuleType):
    """A stand-in for huggingface_hub: snapshot_download records its call and returns a folder,
    or raises `error`."""

    def __init__(self, folder: Path = None, error: BaseException = None):
        super().__init__("huggingface_hub")
        self.folder, self.error, self.calls = folder, error, []

    def snapshot_download(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return str(self.folder)


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """An empty HF cache, no offline flag, a cwd with no model folders; returns the cache."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BGE_ENGINE_MODEL", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


@pytest.fixture
def no_download(monkeypatch) -> FakeHub:
    """huggingface_hub replaced by a fake that fails the test if it is asked to download."""
    fake = FakeHub(error=AssertionError("snapshot_download must not be called"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    return fake


# -- resolution ----------------------------------------------------------------------------------

def test_folder_resolves_to_itself(minilm_path):
    assert hub.resolve(str(minilm_path)) == minilm_path
    assert hub.resolve(minilm_path) == minilm_path


@pytest.mark.parametrize("model", [123, b"/tmp", ["BAAI/bge-small-en-v1.5"]])
def test_model_of_another_type_is_refused(model):
    with pytest.raises(ValueError, match=r"^model: expected a folder path or a hub id"):
        Engine(model)


def test_folder_takes_precedence_over_cache(isolated, tmp_path, minilm_path, no_download):
    make_cache(isolated, "org/name", minilm_path)
    local = link_model(minilm_path, Path.cwd() / "org" / "name")
    assert hub.resolve("org/name").resolve() == local.resolve()
    assert not no_download.calls


def test_hub_id_from_cache(isolated, minilm_path, minilm, no_download):
    snapshot = make_cache(isolated, "org/name", minilm_path)
    assert hub.resolve("org/name") == snapshot
    engine = Engine("org/name")
    assert engine.folder == snapshot
    assert engine.embed(TEXT) == minilm.embed(TEXT)
    assert not no_download.calls


def test_cache_follows_refs_main(isolated, minilm_path, synthetic_path, no_download):
    """Two snapshots in the cache: refs/main picks which."""
    old = make_cache(isolated, "org/name", synthetic_path, revision="1" * 40)
    new = make_cache(isolated, "org/name", minilm_path, revision="2" * 40)
    assert hub.resolve("org/name") == new
    (isolated / "models--org--name" / "refs" / "main").write_text("1" * 40 + "\n")
    assert hub.resolve("org/name") == old


def test_cache_found_with_hf_home(tmp_path, monkeypatch, minilm_path, no_download):
    """Without HF_HUB_CACHE the cache is HF_HOME/hub."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    snapshot = make_cache(tmp_path / "hf-home" / "hub", "org/name", minilm_path)
    assert hub.resolve("org/name") == snapshot


def test_incomplete_snapshot_falls_through_to_download(isolated, tmp_path, minilm_path,
                                                        monkeypatch):
    snapshot = make_cache(isolated, "org/name", minilm_path)
    (snapshot / "model.safetensors").unlink()  # an interrupted download
    fake = FakeHub(folder=link_model(minilm_path, tmp_path / "downloaded"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    assert hub.resolve("org/name") == tmp_path / "downloaded"
    assert len(fake.calls) == 1


def test_download(isolated, tmp_path, minilm_path, minilm, monkeypatch):
    folder = link_model(minilm_path, tmp_path / "downloaded")
    fake = FakeHub(folder=folder)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    engine = Engine("some-org/some-model")
    assert engine.folder == folder
    assert engine.embed(TEXT) == minilm.embed(TEXT)
    assert len(fake.calls) == 1
    args, kwargs = fake.calls[0]
    repo_id = kwargs.get("repo_id", args[0] if args else None)
    assert repo_id == "some-org/some-model"
    patterns = kwargs.get("allow_patterns")
    assert patterns is not None and REQUIRED <= set(patterns), patterns
    assert not any(p.endswith((".bin", ".onnx", ".h5", ".msgpack")) or p == "*"
                   for p in patterns), patterns


def test_download_error(isolated, monkeypatch):
    fake = FakeHub(error=OSError("connection refused by the test"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(ModelNotFound) as info:
        Engine("some-org/some-model")
    exc = info.value
    assert isinstance(exc, FileNotFoundError) and exc.code == "model_not_found"
    message = str(exc)
    assert "connection refused by the test" in message and "some-org/some-model" in message
    assert "local folder" in message
    assert len(fake.calls) == 1


def test_download_error_without_message(isolated, monkeypatch):
    fake = FakeHub(error=TimeoutError())
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(ModelNotFound) as info:
        Engine("some-org/some-model")
    assert "TimeoutError" in str(info.value) and "local folder" in str(info.value)


def test_offline_does_not_download(isolated, monkeypatch):
    fake = FakeHub(error=AssertionError("snapshot_download must not be called offline"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as info:
        Engine("some-org/some-model")
    assert "HF_HUB_OFFLINE" in str(info.value) and "local folder" in str(info.value)
    assert not fake.calls


def test_huggingface_hub_missing(isolated, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    with pytest.raises(ModelNotFound) as info:
        Engine("some-org/some-model")
    exc = info.value
    assert isinstance(exc, FileNotFoundError) and exc.code == "model_not_found"
    assert "pip install 'bge-engine[hub]'" in str(exc)
    assert "local folder" in str(exc)


# -- the default engine --------------------------------------------------------------------------

@pytest.fixture
def fresh_default(monkeypatch):
    """bge_engine._default reset to None before and after the test."""
    monkeypatch.setattr(bge_engine, "_default", None)
    yield
    bge_engine._default = None


def test_embed_uses_bge_engine_model(fresh_default, monkeypatch, minilm_path, minilm):
    monkeypatch.setenv("BGE_ENGINE_MODEL", str(minilm_path))
    assert bge_engine.embed(TEXT) == minilm.embed(TEXT)
    engine = bge_engine.default_engine()
    assert engine.folder == minilm_path
    assert bge_engine.default_engine() is engine
    assert bge_engine.embed({"text": "again"}) == minilm.embed({"text": "again"})
    assert bge_engine.default_engine() is engine  # made once


def test_default_model_is_bge_small(fresh_default, isolated, minilm_path, no_download):
    """Without BGE_ENGINE_MODEL, the default engine loads BAAI/bge-small-en-v1.5 (from the
    cache here, holding stand-in files)."""
    snapshot = make_cache(isolated, "BAAI/bge-small-en-v1.5", minilm_path)
    assert bge_engine.default_engine().folder == snapshot


def test_default_engine_thread_safe(fresh_default, monkeypatch, minilm_path):
    made = []

    class SlowEngine(Engine):
        def __init__(self, *args, **kwargs):
            made.append(self)
            time.sleep(0.2)  # widen the window a racing second construction would need
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bge_engine, "Engine", SlowEngine)
    monkeypatch.setenv("BGE_ENGINE_MODEL", str(minilm_path))
    barrier = threading.Barrier(4)
    got, errors = [None] * 4, []

    def worker(i):
        try:
            barrier.wait()
            got[i] = bge_engine.default_engine()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(made) == 1
    assert all(e is got[0] for e in got) and isinstance(got[0], SlowEngine)


def test_invalid_payload_before_model(fresh_default, monkeypatch, tmp_path):
    """Bad input is InvalidInput even when no model can be loaded; a good one is then
    ModelNotFound (the model is needed)."""
    monkeypatch.setenv("BGE_ENGINE_MODEL", str(tmp_path / "missing-model"))
    for payload in ({"text": 5}, {}, None, {"text": ["a", ""]}, {"requests": []}):
        with pytest.raises(InvalidInput) as info:
            bge_engine.embed(payload)
        assert type(info.value) is InvalidInput
    assert bge_engine._default is None
    with pytest.raises(ModelNotFound) as info:
        bge_engine.embed({"text": "fine"})
    assert "missing-model" in str(info.value)
    assert bge_engine._default is None
