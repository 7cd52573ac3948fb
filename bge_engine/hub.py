"""Where a model comes from: a local folder, the Hugging Face cache, or a download.

`locate(model)` (a path string; `resolve(model)`: the same as a `pathlib.Path`) tries, in
order: a folder at that path; the snapshot of that hub id in the Hugging Face cache (read
directly, so no `huggingface_hub` is needed for it); a download with `huggingface_hub` (an
optional dependency: `pip install "bge-engine[hub]"`), which shows a progress bar. When none
works it raises `ModelNotFound` saying how to use a local folder. Paths are strings here
(os.path): `Engine()` goes through `locate`, and pathlib's import (urllib.parse with it)
would count against the cold start.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Optional, Union

from .errors import ModelNotFound

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_MODEL = "BAAI/bge-small-en-v1.5"
# The files the engine reads; a download fetches these and nothing else.
MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json",
               "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
               "config_sentence_transformers.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def hub_cache_dir() -> str:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def cached_snapshot(repo_id: str) -> Optional[str]:
    """The cached snapshot folder of `repo_id` that refs/main points at, if it holds a model."""
    repo = os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as f:
            revision = f.read().strip()
    except (OSError, ValueError):
        return None
    snapshot = os.path.join(repo, "snapshots", revision)
    if all(os.path.isfile(os.path.join(snapshot, name))
           for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return snapshot
    return None


def _download(repo_id: str) -> str:
    """Downloads `repo_id`'s model files; raises ModelNotFound with the reason on failure."""
    try:
        import huggingface_hub
    except ImportError:
        raise ModelNotFound(_not_found(repo_id, "huggingface_hub is not installed "
                                                "(pip install 'bge-engine[hub]')")) from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelNotFound(_not_found(repo_id, "HF_HUB_OFFLINE is set"))
    try:
        path = huggingface_hub.snapshot_download(repo_id, allow_patterns=MODEL_FILES)
    except Exception as exc:  # network, auth and missing-repo errors all end here
        first_line = (str(exc).splitlines() or [""])[0][:200]
        reason = f"the download failed: {type(exc).__name__}" + (f": {first_line}" if first_line else "")
        raise ModelNotFound(_not_found(repo_id, reason)) from None
    return os.fspath(path)


def _not_found(model: str, reason: str) -> str:
    return (f"model {model!r} not found: no folder at that path, no copy in the Hugging Face "
            f"cache ({hub_cache_dir()}), and {reason}. Point at a local folder in the Hugging "
            "Face layout (config.json, model.safetensors, tokenizer.json): "
            "Engine(model='/path/to/bge-small-en-v1.5'), BGE_ENGINE_MODEL=/path/to/folder, "
            "or `bge-engine embed --model /path/to/folder ...`")


def locate(model: Union[str, os.PathLike]) -> str:
    """Returns a local folder holding `model` (a folder path or a hub id such as
    "BAAI/bge-small-en-v1.5"), downloading it when it must and can.

    Raises:
        ModelNotFound: nothing found and nothing could be downloaded.
        ValueError: `model` is neither a str nor a path-like object naming a str path.
    """
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if not isinstance(name, str):
        raise ValueError("model: expected a folder path or a hub id (a str or a path-like "
                         f"object), got {type(model).__name__}")
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if not _HUB_ID.match(name) or os.path.exists(path):
        raise ModelNotFound(
            f"model {name!r} not found: no folder at that path (and it is no hub id like "
            "'BAAI/bge-small-en-v1.5'). Point at a folder holding config.json, "
            "model.safetensors and tokenizer.json")
    return cached_snapshot(name) or _download(name)


def resolve(model: Union[str, os.PathLike]) -> "Path":
    """`locate(model)` as a `pathlib.Path`."""
    from pathlib import Path

    return Path(locate(model))


def default_model() -> str:
    """The model `Engine()`, `embed()` and the command line use when given none: the
    environment variable BGE_ENGINE_MODEL (a folder or a hub id) where it is set, else
    BAAI/bge-small-en-v1.5."""
    return os.environ.get("BGE_ENGINE_MODEL") or DEFAULT_MODEL
