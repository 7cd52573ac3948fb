"""Checkpoint reading (weights.py) and the loader's buffers (model.py): the pread path gives
the tensors safetensors itself reads, into the caller's buffers; the workspace reserves
without touching and grows without sharing."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from bge_engine import _kernels
from bge_engine.model import MATMULS, BertModel, Workspace
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


def test_packed_weights_share_one_aligned_arena(minilm_path):
    ckpt = load_checkpoint(minilm_path)
    for int8 in ((), MATMULS):
        model = BertModel(ckpt, _kernels.Kernels(), int8=int8, threads=2)
        datas = [getattr(layer, m).w.data for layer in model.layers for m in MATMULS]
        base = datas[0].base
        assert all(d.base is base for d in datas)  # one buffer behind every weight
        assert all(d.ctypes.data % 64 == 0 for d in datas)
        assert datas[0].ctypes.data % (2 << 20) == 0  # the arena starts on a 2 MiB page
        starts = sorted((d.ctypes.data, d.nbytes) for d in datas)
        assert all(a + n <= b for (a, n), (b, _) in zip(starts, starts[1:]))  # no overlap


def test_workspace_reserves_then_grows_with_separate_buffers():
    ws = Workspace(384, 1536, reserve=512)
    ws.ensure(16, 10)
    assert ws.tokens == 512 and ws.h.shape == (512, 384) and ws.up.shape == (512, 1536)
    names = ("h", "qkv", "ctx", "up", "q", "q_scale", "q_zp")
    views = [getattr(ws, n) for n in names]
    for i, a in enumerate(views):
        assert a.flags.writeable and a.flags.c_contiguous and a.ctypes.data % 64 == 0
        for b in views[i + 1:]:
            assert not np.shares_memory(a, b)
    ws.h[:] = 1.0
    ws.ensure(600, 10)  # grows: new buffers, the size rounded up to 64 tokens
    assert ws.tokens == 640 and ws.qkv.shape == (640, 1152) and ws.scratch.shape == (10,)
    ws.ensure(100, 20)  # never shrinks
    assert ws.tokens == 640 and ws.scratch.shape == (20,)


def test_run_on_threads_keeps_order_and_raises_the_error():
    from bge_engine.model import run_on_threads

    assert run_on_threads(lambda i: i * i, 9, 3) == [i * i for i in range(9)]
    assert run_on_threads(lambda i: i, 0, 4) == []

    def boom(i):
        if i == 5:
            raise KeyError("layer 5")
        return i

    with pytest.raises(KeyError, match="layer 5"):
        run_on_threads(boom, 12, 2)
