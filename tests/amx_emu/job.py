"""What a test writes: a Job places buffers in guest memory, queues calls of the probe's
probe_entry with an args block of 64-bit words, runs them all in one emulator process
(worker.py) and returns the output buffers as numpy arrays.

    job = Job(probe)
    q = job.put(q_array)                    # guest address of a copy of the array
    acc = job.output("acc", (M, N), np.int32, fill=-1)
    job.call(OP_I32, q, M, ldq, packed, acc)
    out = job.run()                         # {"acc": array}; GuestFault on a fault

Each buffer starts on a page of its own and is followed by an unmapped page, so a kernel
reading or writing past a buffer's last page faults (#PF) instead of passing.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

PAGE = 4096
HEAP = 0x500000            # buffers from here up (the stack and image are below)
HEAP_LIMIT = 64 << 20      # the page tables (machine.py) map guest addresses below this
TESTS = Path(__file__).resolve().parents[1]


class GuestFault(Exception):
    """The guest raised an exception: the message names it and the faulting instruction."""


class Job:
    def __init__(self, probe, timeout=120.0):
        self.probe = probe
        self.timeout = timeout
        self.next = HEAP
        self.buffers = []   # (addr, nbytes, data or None)
        self.outputs = {}   # name -> (addr, shape, dtype)
        self.calls = []
        self.result = None

    def _place(self, nbytes):
        addr = self.next
        pages = (max(nbytes, 1) + PAGE - 1) // PAGE
        self.next += (pages + 1) * PAGE  # and one unmapped page after it
        if self.next > HEAP_LIMIT:
            raise MemoryError("the job's buffers pass the mapped 64 MB")
        return addr

    def put(self, array, align_end=False):
        """A copy of `array` (C order) in guest memory; its address. align_end: place it so
        that it ends at a page end (a read past it faults at once)."""
        array = np.ascontiguousarray(array)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"put: a numeric array is needed, not {array.dtype}")
        data = array.tobytes()
        addr = self._place(len(data))
        if align_end and len(data) % PAGE:
            addr += PAGE - len(data) % PAGE
        self.buffers.append((addr, len(data), data))
        return addr

    def output(self, name, shape, dtype, fill=0, init=None):
        """A buffer the run reads back as `name`: filled with `fill` (or a copy of `init`)."""
        dtype = np.dtype(dtype)
        a = np.full(shape, fill, dtype) if init is None else np.array(init, dtype)
        addr = self.put(a)
        self.outputs[name] = (addr, a.shape, dtype)
        return addr

    def call(self, *words):
        """Queues probe_entry(args) with args = these words (ints: values or addresses)."""
        data = struct.pack(f"<{len(words)}Q", *[int(w) & (2**64 - 1) for w in words])
        self.calls.append(self.put(np.frombuffer(data, np.uint8)))

    def run(self):
        """Runs the calls in order; the outputs by name. GuestFault on a fault of the guest;
        RuntimeError when the emulator itself fails."""
        from .build import glibc_shim

        job = {"shim": glibc_shim(), "probe": self.probe, "buffers": self.buffers,
               "calls": self.calls,
               "reads": [(n, a, int(np.prod(s)) * d.itemsize)
                         for n, (a, s, d) in self.outputs.items()]}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(TESTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        proc = subprocess.run([sys.executable, "-m", "amx_emu.worker"], input=pickle.dumps(job),
                              capture_output=True, timeout=self.timeout, env=env)
        try:
            result = pickle.loads(proc.stdout)
        except Exception:
            raise RuntimeError(f"the emulator process failed (exit {proc.returncode}):\n"
                               f"{proc.stderr.decode(errors='replace')[-4000:]}") from None
        if "error" in result:
            raise RuntimeError("the emulator harness failed:\n" + result["error"])
        self.result = result
        if result["fault"]:
            raise GuestFault(f"{self.probe.name}: {result['fault']}")
        out = {}
        for name, (addr, shape, dtype) in self.outputs.items():
            out[name] = np.frombuffer(result["outputs"][name], dtype).reshape(shape).copy()
        return out
