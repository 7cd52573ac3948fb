"""The forward pass's buffers (model.py): the workspace reserves without touching and grows
without sharing."""

from __future__ import annotations

import numpy as np

from bge_engine.model import Workspace


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
