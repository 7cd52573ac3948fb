"""The loader in C (csrc/load.c, Kernels.load_packed) and its arena (bge_arena_alloc,
_kernels.Arena), on small files: the bytes of pack and qpack, on 1 and 3 threads; a short
read, a NaN, an unreadable file, reported per job while the others load; jobs and buffers
refused before anything is read. Runs in the sanitizer tier with the kernel tests."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bge_engine import _kernels


def _slot(n: int) -> int:
    return -(-n // 64) * 64


@pytest.mark.parametrize("threads", [1, 3])
def test_load_packed_gives_the_bytes_of_pack_and_qpack(tmp_path, threads):
    """Five weights of odd shapes (one stacked from three parts, one float32 column), fp32
    and int8, in one call: each slot holds what pack, or quantize_weight then qpack, give."""
    rng = np.random.default_rng(threads)
    shapes = [(7, 17), (33, 65), (1, 1), (48, 384), (5, 3)]
    ws = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    blob, offs = b"\0" * 12, []
    for w in ws:
        offs.append(len(blob))
        blob += w.tobytes()
    path = tmp_path / "w.bin"
    path.write_bytes(blob)
    for int8 in (False, True):
        k = _kernels.Kernels()
        jobs, at = [], 0
        for i, ((N, K), off) in enumerate(zip(shapes, offs)):
            parts = [(off, N)] if i != 3 else [(off, 16), (off + 16 * K * 4, 16),
                                               (off + 32 * K * 4, 16)]
            jobs.append((parts, N, K, int8, at))
            at += _slot(k.qpacked_bytes(K, N) if int8 else k.packed_bytes(K, N))
        arena = _kernels.Arena(at)
        fd = os.open(path, os.O_RDONLY)
        try:
            packed, errors = k.load_packed(fd, jobs, arena, threads=threads)
        finally:
            os.close(fd)
        assert errors == []
        for w, p in zip(ws, packed):
            want = k.qpack(*_kernels.quantize_weight(w)) if int8 else k.pack(w)
            assert (p.dtype, p.K, p.N, p.isa) == (want.dtype, want.K, want.N, want.isa)
            assert np.array_equal(p.data, want.data)


def test_load_packed_reports_nan_and_infinity_by_part(tmp_path):
    k = _kernels.Kernels()
    w = np.ones((6, 8), np.float32)
    bad = w.copy()
    bad[4, 2] = np.nan
    inf = w.copy()
    inf[0, 7] = -np.inf
    path = tmp_path / "w.bin"
    path.write_bytes(w.tobytes() + bad.tobytes() + inf.tobytes())
    n = w.nbytes
    slot = _slot(k.qpacked_bytes(8, 6))
    jobs = [([(0, 6)], 6, 8, True, 0), ([(n, 3), (n + 3 * 32, 3)], 6, 8, False, slot),
            ([(2 * n, 6)], 6, 8, True, 2 * slot)]
    fd = os.open(path, os.O_RDONLY)
    try:
        packed, errors = k.load_packed(fd, jobs, _kernels.Arena(3 * slot), threads=2)
    finally:
        os.close(fd)
    assert errors == [(1, 1, "holds NaN or infinity"), (2, 0, "holds NaN or infinity")]
    assert packed[0] is not None and packed[1] is None and packed[2] is None


def test_load_packed_reports_a_short_read_and_bad_jobs(tmp_path):
    """Kernels.load_packed on a small file: a weight in two parts; a part running past the
    end of the file (reported, the other job still packed); jobs it refuses to start."""
    k = _kernels.Kernels()
    w = np.random.default_rng(0).standard_normal((40, 24), dtype=np.float32)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 16 + w.tobytes())
    slot = -(-k.packed_bytes(24, 40) // 64) * 64
    arena = _kernels._aligned_bytes(2 * slot)
    rows30 = 16 + 30 * 24 * 4  # byte offset of w's row 30
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = ([(16, 30), (rows30, 10)], 40, 24, False, 0)
        past_end = ([(16, 30), (rows30 + 24 * 4, 10)], 40, 24, False, slot)
        packed, errors = k.load_packed(fd, [whole, past_end], arena, threads=2)
        assert np.array_equal(packed[0].data, k.pack(w).data)
        assert errors == [(1, 1, "is cut short")] and packed[1] is None
        for bad, match in [
            (([(16, 30)], 40, 24, False, 0), "summing to N = 40"),
            (([(16, 40)], 40, 24, False, 32), "64-byte aligned"),
            (([(16, 40)], 40, 24, False, slot + 64), "inside the arena"),
            (([(16, 10)] * 5, 50, 24, False, 0), "1 to 4 parts"),
            (([(-4, 40)], 40, 24, False, 0), "offsets >= 0"),
        ]:
            with pytest.raises(ValueError, match=match):
                k.load_packed(fd, [whole, bad], arena)
        assert k.load_packed(fd, [], arena) == ([], [])
    finally:
        os.close(fd)
    packed, errors = k.load_packed(fd, [whole], arena)  # a closed file: EBADF
    assert errors == [(0, 0, "could not be read")]


def test_arena_is_a_writable_buffer_on_a_2mib_boundary():
    arena = _kernels.Arena(3 << 20)
    view = memoryview(arena)
    assert (view.format, view.nbytes, view.readonly, arena.nbytes) == ("B", 3 << 20, False, 3 << 20)
    a = np.frombuffer(arena, np.uint8)
    assert a.flags.writeable and a.ctypes.data % (2 << 20) == 0
    del arena, view
    a[:] = 7  # the views keep the memory alive
    assert int(a.sum()) == 7 * (3 << 20)
    with pytest.raises(ValueError, match="positive size"):
        _kernels.Arena(0)


def test_load_packed_takes_an_arena_and_refuses_other_buffers(tmp_path):
    k = _kernels.Kernels()
    w = np.random.default_rng(1).standard_normal((7, 17), dtype=np.float32)
    path = tmp_path / "w.bin"
    path.write_bytes(w.tobytes())
    job = ([(0, 7)], 7, 17, False, 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        packed, errors = k.load_packed(fd, [job], _kernels.Arena(4096))
        assert errors == [] and np.array_equal(packed[0].data, k.pack(w).data)
        for bad, match in [(b"\0" * 4096, "writable C-contiguous uint8 buffer"),
                           (_kernels._aligned_bytes(4160)[1:], "64-byte boundary"),
                           (np.zeros(1024, np.float32), "writable C-contiguous uint8 buffer")]:
            with pytest.raises(ValueError, match=match):
                k.load_packed(fd, [job], bad)
    finally:
        os.close(fd)
