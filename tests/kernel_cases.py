"""What the kernel tests (test_kernels_*.py) share: the odd shapes a GEMM test covers and
the kernel table of the level a test runs on."""

from __future__ import annotations

import pytest

from bge_engine import _kernels


def covering_shapes(Ms, Ks, Ns, count, max_work, extra):
    """`count` (M, K, N) drawn so that every M, K and N value comes at least twice, in varied
    combinations (strides coprime with the list lengths), M lowered until M * K * N <=
    max_work so that the scalar reference stays quick; with `extra` (the model's shapes,
    tails in M), sorted."""
    shapes = set()
    for i in range(count):
        M, K, N = Ms[i % len(Ms)], Ks[(3 * i + 1) % len(Ks)], Ns[(5 * i + 2) % len(Ns)]
        while M * K * N > max_work and M > 1:
            M = Ms[Ms.index(M) - 1]
        shapes.add((M, K, N))
    return sorted(shapes | set(extra))


def level(isa, what):
    """The kernel table of level `isa`; the test is skipped, saying why, where this host or
    build cannot run it (never passed silently)."""
    if isa not in _kernels.usable_isas():
        pytest.skip(f"{what} {isa}: this host/build can't run {isa} "
                    f"(usable: {_kernels.usable_isas()}, built: {_kernels.built_isas()})")
    return _kernels.Kernels(isa)
