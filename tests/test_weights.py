"""Checkpoint reading (weights.py): the pread path gives the tensors safetensors itself
reads, into the caller's buffers."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from bge_engine.weights import load_checkpoint


def test_matrix_and_biases_are_the_file_s_tensors(minilm_path):
    ckpt = load_checkpoint(minilm_path)
    want = load_file(str(minilm_path / "model.safetensors"))
    pre = "" if "encoder.layer.1.output.dense.weight" in want else "bert."

    def t(name):
        return want[pre + "encoder.layer.1." + name]

    buf = np.full(ckpt.matrix_floats() + 7, np.nan, dtype=np.float32)
    qkv = ckpt.matrix(1, "qkv", buf)
    assert np.shares_memory(qkv, buf)
    np.testing.assert_array_equal(qkv, np.concatenate(
        [t(f"attention.self.{n}.weight") for n in ("query", "key", "value")]))
    np.testing.assert_array_equal(ckpt.matrix(1, "down", buf), t("output.dense.weight"))
    np.testing.assert_array_equal(ckpt.matrix(1, "up"), t("intermediate.dense.weight"))
    b = ckpt.biases(1)
    np.testing.assert_array_equal(b["ln2_g"], t("output.LayerNorm.weight"))
    np.testing.assert_array_equal(b["qkv_b"], np.concatenate(
        [t(f"attention.self.{n}.bias") for n in ("query", "key", "value")]))
    with pytest.raises(ValueError, match="out: expected a flat float32 buffer"):
        ckpt.matrix(1, "up", buf[:100])
    with pytest.raises(ValueError, match="matrix: expected one of"):
        ckpt.matrix(1, "gate", buf)
