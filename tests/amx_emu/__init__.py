"""Runs our compiled AMX kernels on an emulated CPU, so that they are checked on machines
without AMX (this one, CI's): see docs/design/amx_emulation.md.

  build.py     compiles a probe (a C file including a kernel's .c) into a flat image
  amx_unit.py  the AMX tile registers and instructions, executed as the Intel SDM states
  fp.py, tdpbf16ps.py   the exact fp32/bf16 arithmetic of TDPBF16PS in numpy
  machine.py   the x86-64 guest on bochscpu (Bochs's CPU), AMX trapped into amx_unit
  worker.py    the process that runs a job on a machine
  job.py       what a test uses: buffers, calls, outputs

unavailable() says why the harness cannot run here (None when it can)."""

from __future__ import annotations

import functools
import importlib.util
import sys


@functools.lru_cache(maxsize=None)
def unavailable():
    """None when bochscpu and the probe toolchain are there, else the reason."""
    if sys.platform != "linux" or importlib.util.find_spec("bochscpu") is None:
        return "bochscpu-python is not installed (the test extra has it on x86-64 Linux)"
    from .build import tools_missing
    return tools_missing()
