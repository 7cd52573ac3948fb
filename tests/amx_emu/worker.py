"""The emulator's process: reads one pickled job from stdin, runs its calls on a Machine and
writes the pickled result to stdout, then leaves with os._exit (bochscpu's objects are not
torn down at interpreter exit). Run as `python -m amx_emu.worker` with tests/ on sys.path;
job.py starts it, so a crash or hang of the emulator fails one test, never pytest."""

from __future__ import annotations

import ctypes
import os
import pickle
import sys
import time
import traceback


def _load_bochscpu(shim):
    """Imports bochscpu; where glibc lacks the C23 symbols its extension needs, loads the
    shim (build.glibc_shim) into the global namespace first."""
    try:
        import bochscpu  # noqa: F401
    except ImportError as e:
        if "__isoc23_" not in str(e):
            raise
        ctypes.CDLL(shim, mode=ctypes.RTLD_GLOBAL)
        import bochscpu  # noqa: F401


def main():
    job = pickle.load(sys.stdin.buffer)
    # configured: per call that returned, whether a tile configuration was still loaded
    # after it (a kernel must release its tiles)
    result = {"outputs": {}, "fault": None, "amx": {}, "configured": [], "seconds": 0.0}
    try:
        _load_bochscpu(job["shim"])
        from amx_emu.machine import GuestFault, Machine

        t0 = time.perf_counter()
        machine = Machine(job["probe"], job["buffers"])
        try:
            for args_addr in job["calls"]:
                machine.call(args_addr)
                result["configured"].append(machine.amx.configured)
            for name, addr, nbytes in job["reads"]:
                result["outputs"][name] = machine.mem.read(addr, nbytes)
        except GuestFault as e:
            result["fault"] = str(e)
        result["amx"] = dict(machine.amx.executed)
        result["seconds"] = time.perf_counter() - t0
        machine.close()
    except Exception:  # the harness's own failure: hand it to the test whole
        result["error"] = traceback.format_exc()
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
