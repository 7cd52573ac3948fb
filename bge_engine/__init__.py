"""bge-engine: a CPU inference engine for BAAI/bge-small-en-v1.5 text embeddings.

    import bge_engine
    bge_engine.embed({"text": "This is a story about an orange cloud"})
    # {"shape": [1, 384], "data": [[...]], "pooling": "mean"}

    engine = bge_engine.Engine("BAAI/bge-small-en-v1.5")
    engine.encode(["a", "b"])          # numpy (2, 384), the checkpoint's pooling (CLS)

docs/contract.md is the whole public contract.
"""

from __future__ import annotations

import os
import platform
import threading
import warnings
from typing import Optional

# GNU OpenMP keeps idle worker threads spinning long after each parallel region; between two
# kernel calls of a forward pass a short spin is enough, and a longer one only takes the cores
# from the tokenizer and the rest of the process (docs/performance.md). A value the user set
# is kept; libgomp reads it once, when _kernels loads it below.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
# numpy's OpenBLAS spins its idle threads too, after numpy loads and after every BLAS call,
# against the kernels' OpenMP threads; 2^16 ticks is short enough not to, and long enough for
# numpy's own matmuls (docs/performance.md). OpenBLAS reads it when numpy loads, so it only
# takes effect where bge_engine is imported first (docs/design/threads.md); a value the user
# set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from . import _kernels, schema  # noqa: E402
from .engine import Engine, default_threads
from .errors import BgeError, InputTooLong, InvalidInput, ModelFormatError, ModelNotFound
from .hub import DEFAULT_MODEL

__version__ = "0.1.0"
__all__ = ["embed", "Engine", "cpu_info", "default_engine", "BgeError", "InvalidInput",
           "InputTooLong", "ModelNotFound", "ModelFormatError", "__version__"]

if _kernels.isa_env_unknown():
    # Located at the variable, not at a line of the importer (a console script's path said
    # nothing useful): "<environment>:0: RuntimeWarning: BGE_ISA='...' names no known level".
    warnings.warn_explicit(
        f"BGE_ISA={os.environ.get('BGE_ISA', '')!r} names no known level; expected one of "
        f"{', '.join(_kernels.isa_names())}; using the best level this machine has",
        RuntimeWarning, "<environment>", 0, module="bge_engine")

_default: Optional[Engine] = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The shared Engine behind `embed`, made on first use from BGE_ENGINE_MODEL (a folder or a
    hub id), else BAAI/bge-small-en-v1.5."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()  # BGE_ENGINE_MODEL, else the default model: hub.default_model
        return _default


def embed(payload: dict) -> dict:
    """Embeds texts with the Workers AI contract of @cf/baai/bge-small-en-v1.5.

    Args:
        payload: {"text": str | list[str], "pooling"?: "mean" | "cls"} or
            {"requests": [{"text": ..., "pooling"?: ...}, ...]}.

    Returns:
        {"shape": [n, 384], "data": [[...], ...], "pooling": ...}, or
        {"responses": [{"id": i, "result": {...}, "success": True}, ...]}.

    Raises:
        InvalidInput: the payload breaks the contract; ModelNotFound: no model to load.
    """
    schema.parse(payload)  # bad input is InvalidInput even where no model can be loaded
    return default_engine().embed(payload)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """The CPU features seen, the ISA levels built and usable, and each slot's kernel."""
    return {
        "version": __version__,
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "features": _kernels.cpu_features(),
        "built": _kernels.built_isas(),
        "usable": _kernels.usable_isas(),
        "cap": os.environ.get("BGE_ISA") or None,
        "isa": _kernels.Kernels().isa,
        "kernels": _kernels.Kernels().names,
        "threads": default_threads(),
    }
