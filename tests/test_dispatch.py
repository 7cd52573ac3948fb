"""Dispatch: CPUID + XCR0 features as the kernel reports them, the BGE_ISA cap, and
cpu_info() naming each slot's kernel."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bge_engine
from bge_engine import _kernels

# /proc/cpuinfo flag for each feature the C side reads from CPUID
PROC_FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
              "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512_vnni": "avx512_vnni",
              "avx_vnni": "avx_vnni", "avx512_bf16": "avx512_bf16",
              "avx512_fp16": "avx512_fp16", "amx_tile": "amx_tile", "amx_int8": "amx_int8",
              "amx_bf16": "amx_bf16"}


def proc_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo on this OS")
def test_features_agree_with_the_kernel():
    flags = proc_flags()
    if platform.machine() not in ("x86_64", "AMD64", "i686"):
        pytest.skip(f"not an x86 host: {platform.machine()}")
    if "avx2" not in flags and "fma" not in flags and "sse2" not in flags:
        pytest.skip("not an x86 host: /proc/cpuinfo has no x86 flags")
    features = _kernels.cpu_features()
    for name, flag in PROC_FLAGS.items():
        assert features[name] == (flag in flags), name


def test_arm_features_agree_with_the_kernel():
    """On Linux/AArch64, the HWCAP bits the C side reads against /proc/cpuinfo's Features."""
    if platform.machine() not in ("aarch64", "arm64"):
        pytest.skip(f"not an AArch64 host: {platform.machine()}")
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith("Features")]
    except OSError:
        lines = []
    if not lines:  # qemu-user shows the host's /proc/cpuinfo
        pytest.skip("/proc/cpuinfo has no AArch64 Features line (emulated?)")
    have = set(lines[0].split(":", 1)[1].split())
    features = _kernels.cpu_features()
    for name, flag in {"asimd": "asimd", "asimddp": "asimddp", "i8mm": "i8mm",
                       "arm_bf16": "bf16"}.items():
        assert features[name] == (flag in have), name


def test_cpu_info_names_every_slot():
    info = bge_engine.cpu_info()
    assert info["isa"] in info["usable"]
    assert set(info["usable"]) <= set(info["built"]) | {"ref"}
    assert "ref" in info["usable"]
    for slot, name in info["kernels"].items():
        assert name.startswith(f"bge_{slot}") and name.endswith(f"__{name.split('__')[-1]}")
    assert info["isa"] == max(info["usable"], key=_kernels.isa_names().index) or info["cap"]


def run_with_isa(value):
    env = dict(os.environ, BGE_ISA=value)
    code = "import json, bge_engine; print(json.dumps(bge_engine.cpu_info()))"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize("level", ["ref", "avx2", "avxvnni", "avx512", "avx512vnni",
                                   "avx512bf16", "amx", "neon", "dotprod", "i8mm",
                                   "neonbf16"])
def test_bge_isa_caps_the_level(level):
    info, _ = run_with_isa(level)
    names = _kernels.isa_names()
    allowed = [i for i in info["usable"] if names.index(i) <= names.index(level)]
    assert info["isa"] == allowed[-1]
    if level == "ref":
        assert all(name.endswith("__ref") for name in info["kernels"].values())


@pytest.mark.parametrize("old,level", [("vnni", "avx512vnni")])
def test_old_level_names_are_aliases(old, level):
    """A former spelling caps BGE_ISA and names a table as the level's one name does."""
    by_old, err = run_with_isa(old)
    by_name, _ = run_with_isa(level)
    assert "BGE_ISA" not in err
    assert by_old["isa"] == by_name["isa"] and by_old["kernels"] == by_name["kernels"]
    if level in _kernels.usable_isas():
        assert _kernels.Kernels(old).isa == level
        assert _kernels.Kernels(old).names == _kernels.Kernels(level).names
    assert old not in _kernels.isa_names()


def _registry(macro, column):
    """Column `column` of the X(...) lines of a list in csrc/registry.h."""
    text = (Path(__file__).parent.parent / "csrc" / "registry.h").read_text()
    body = text.split(f"#define {macro}(X)", 1)[1].split("\n\n", 1)[0]
    return [args.split(",")[column].strip() for args in re.findall(r"X\(([^)]*)\)", body)]


def test_slots_and_levels_come_from_the_registry():
    """Kernels.names has one entry per slot of BGE_SLOTS, in order, on every usable level,
    and isa_names() the levels of BGE_LEVELS: the Python view is generated from them."""
    slots = _registry("BGE_SLOTS", 0)
    assert len(slots) >= 19
    for isa in _kernels.usable_isas():
        names = _kernels.Kernels(isa).names
        assert list(names) == slots, isa
        for slot, fn in names.items():
            assert fn.startswith(f"bge_{slot}") and "__" in fn, (slot, fn)
    assert _kernels.isa_names() == _registry("BGE_LEVELS", 1)


def test_unknown_bge_isa_warns_and_runs():
    info, err = run_with_isa("avx9000")
    assert "BGE_ISA" in err and "RuntimeWarning" in err
    assert info["isa"] == info["usable"][-1]


def test_kernels_for_a_level_the_host_lacks_is_refused():
    missing = [i for i in _kernels.isa_names() if i not in _kernels.usable_isas()]
    if not missing:
        pytest.skip("this host runs every level")
    with pytest.raises(ValueError, match="not usable"):
        _kernels.Kernels(missing[0])
    with pytest.raises(ValueError, match="expected one of"):
        _kernels.Kernels("sse9")


@pytest.mark.parametrize("var,ours,users", [("GOMP_SPINCOUNT", "10000", "123"),
                                             ("OPENBLAS_THREAD_TIMEOUT", "16", "24")])
def test_import_sets_a_short_thread_spin_unless_the_user_chose_one(var, ours, users):
    """GNU OpenMP's and numpy's OpenBLAS idle threads: bge_engine's value, or the user's."""
    code = "import os, bge_engine; print(os.environ[%r])" % var
    env = {k: v for k, v in os.environ.items() if k != var}
    for given, want in ((None, ours), (users, users)):
        if given is not None:
            env[var] = given
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == want
