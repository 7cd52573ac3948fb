"""Builds a probe: a small C file that #includes a kernel's .c file (so its static tile
functions are reachable) and defines `void probe_entry(const uint64_t *args)`, compiled with
the flags setup.py gives csrc/x86/amx (plus any extra ones), linked without libc at a fixed
address and turned into a flat image.

  - No libc: probes/rt.h gives memcpy, memset, memmove and memcmp (rep movsb/stosb). The
    kernel keeps the compiler's builtins (no -ffreestanding), so its code is what the
    extension's is; a builtin the compiler still calls lands on rt.h.
  - -ffunction-sections + --gc-sections keep only what probe_entry reaches: the driver slots
    (BGE_Q8_GEMM_SLOTS) and bge_amx_request, which reference gemm_driver.c and libc, drop
    out. A reference from reachable code to anything undefined fails the link (BuildError),
    so nothing the probe runs can jump to an unresolved address.
  - `sources`: more files of csrc/ linked in (the shared driver and what it calls), each
    compiled on its own with the release flags setup.py gives csrc/ and csrc/ref/ (no ISA
    flags) minus -fopenmp: their OpenMP pragmas fall away, so a call with nthreads = 1 runs
    serially, and nothing can reach libgomp (a GOMP_* call would fail the link).
  - The image is linked at IMAGE_BASE; `symbols` (nm) name the function around an address,
    `insns` (objdump -d) the instruction that ends at one, `amx` the AMX instructions the
    machine executes on its AMX unit.
"""

from __future__ import annotations

import ast
import atexit
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .amx_unit import decode

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
PROBES = Path(__file__).resolve().parent / "probes"
IMAGE_BASE = 0x200000
IMAGE_LIMIT = 0x3F0000  # the image (with .bss) must end below: the sentinel page follows

# setup.py's release flags for every C file (BASE_CFLAGS without -fopenmp, -Wall, -g0: the
# kernels under test use no OpenMP) and the freestanding ones a probe needs.
BASE_CFLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-ffp-contract=off"]
PROBE_CFLAGS = ["-fno-pic", "-fno-pie", "-fno-stack-protector", "-fcf-protection=none",
                "-fno-asynchronous-unwind-tables", "-ffunction-sections", "-fdata-sections",
                "-mno-red-zone", "-Werror=implicit-function-declaration"]

LINKER_SCRIPT = f"""
ENTRY(probe_entry)
SECTIONS {{
  . = {IMAGE_BASE:#x};
  .text : {{ *(.text.probe_entry) *(.text .text.*) }}
  .rodata : {{ *(.rodata .rodata.*) }}
  .data : {{ *(.data .data.*) }}
  .bss : {{ *(.bss .bss.* COMMON) }}
  _probe_end = .;
  /DISCARD/ : {{ *(.eh_frame*) *(.note*) *(.comment) }}
}}
"""


class BuildError(Exception):
    """The probe did not compile or link (the compiler's message included)."""


@dataclass
class Probe:
    name: str
    image: bytes
    base: int
    end: int                      # _probe_end: the image with its .bss ends here
    entry: int
    symbols: list = field(default_factory=list)  # (address, name), sorted
    insns: dict = field(default_factory=dict)    # end address -> (start, text)
    amx: dict = field(default_factory=dict)      # end address -> amx_unit.Insn

    def where(self, addr: int) -> str:
        """`0x... <function+0x..>` for an address of the image, else the bare address."""
        best = None
        for a, n in self.symbols:
            if a <= addr:
                best = (a, n)
        if best and self.base <= addr < self.end:
            return f"{addr:#x} <{best[1]}+{addr - best[0]:#x}>"
        return f"{addr:#x} (outside the probe image)"


def amx_isa_flags():
    """The flags setup.py's ISA_FOLDERS gives csrc/x86/amx (read from setup.py itself, so the
    probe follows any change to them)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ISA_FOLDERS"
                                                for t in node.targets):
            for name, folder, flags in ast.literal_eval(node.value):
                if name == "amx":
                    return list(flags)
    raise BuildError("setup.py has no amx entry in ISA_FOLDERS")


def tools_missing():
    """Why probes can't be built here (a missing tool or flag), or None."""
    for tool in ("gcc", "ld", "objcopy", "nm", "objdump"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH"
    try:
        build_source("int probe_entry(void) { return 0; }\n", name="flags-check",
                     extra_flags=("-mamx-bf16",))
    except BuildError as e:
        return f"the compiler refuses the AMX probe flags: {e}"
    return None


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(map(str, cmd))}\n{r.stderr.strip()}")
    return r.stdout


@functools.lru_cache(maxsize=None)
def _build_dir() -> Path:
    """This process's build folder, removed when it exits."""
    d = Path(tempfile.mkdtemp(prefix="bge-amx-probes-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


@functools.lru_cache(maxsize=None)
def _object(source: str) -> Path:
    """csrc/<source> compiled as setup.py compiles csrc/ and csrc/ref/ (BASE_CFLAGS, no ISA
    flags, no -fopenmp) plus the probe flags; cached per process."""
    path = CSRC / source
    key = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    d = _build_dir() / "objects"
    d.mkdir(exist_ok=True)
    obj = d / f"{source.replace('/', '_')}-{key}.o"
    _run(["gcc", *BASE_CFLAGS, *PROBE_CFLAGS, "-I", str(CSRC), "-c", str(path), "-o",
          str(obj)], d)
    return obj


@functools.lru_cache(maxsize=None)
def build_source(source: str, name: str = "probe", extra_flags=(), sources=()) -> Probe:
    """Compiles and links `source` (C text; it may #include "x86/amx/qgemm.c" and "rt.h"),
    with the csrc/ files `sources` (paths under csrc/, e.g. "gemm_driver.c"), into a Probe.
    Cached per process on the text, flags and sources."""
    flags = BASE_CFLAGS + amx_isa_flags() + list(extra_flags) + PROBE_CFLAGS
    objects = [str(_object(s)) for s in sources]
    key = hashlib.sha256((source + "\0".join(flags + objects)).encode()).hexdigest()[:16]
    d = _build_dir() / f"{name}-{key}"
    d.mkdir(exist_ok=True)
    (d / "probe.c").write_text(source)
    (d / "link.ld").write_text(LINKER_SCRIPT)
    _run(["gcc", *flags, "-I", str(CSRC), "-I", str(PROBES), "-c", "probe.c", "-o",
          "probe.o"], d)
    _run(["ld", "-static", "-nostdlib", "--gc-sections", "-T", "link.ld", "probe.o", *objects,
          "-o", "probe.elf"], d)
    _run(["objcopy", "-O", "binary", "probe.elf", "probe.bin"], d)
    symbols = []
    for line in _run(["nm", "-n", "probe.elf"], d).splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols.append((int(parts[0], 16), parts[2]))
    syms = dict((n, a) for a, n in symbols)
    if "probe_entry" not in syms:
        raise BuildError(f"{name}: no probe_entry")
    probe = Probe(name, (d / "probe.bin").read_bytes(), IMAGE_BASE, syms["_probe_end"],
                  syms["probe_entry"], symbols)
    if probe.end > IMAGE_LIMIT:
        raise BuildError(f"{name}: the image ends at {probe.end:#x}, past {IMAGE_LIMIT:#x}")
    _disassemble(probe, _run(["objdump", "-d", "-w", "probe.elf"], d))
    return probe


def build_file(path, name=None, extra_flags=(), sources=()) -> Probe:
    """build_source on a probe file of probes/ (or any path)."""
    path = Path(path)
    if not path.is_absolute():
        path = PROBES / path
    return build_source(path.read_text(), name or path.stem, tuple(extra_flags),
                        tuple(sources))


def _disassemble(probe: Probe, text: str) -> None:
    """Fills probe.insns and probe.amx from `objdump -d -w` output lines
    `  addr:\\tbytes \\tmnemonic operands  # comment`."""
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        try:
            start = int(parts[0].strip()[:-1], 16)
        except ValueError:
            continue
        nbytes = len(parts[1].split())
        asm = parts[2].split("#")[0].strip()
        end = start + nbytes
        probe.insns[end] = (start, asm)
        mnemonic, _, operands = asm.partition(" ")
        insn = decode(start, end, mnemonic, operands.strip(), asm)
        if insn is not None:
            probe.amx[end] = insn


@functools.lru_cache(maxsize=None)
def glibc_shim() -> str:
    """The shared library of probes/glibc_shim.c (built once per process): the worker loads
    it before bochscpu where glibc lacks the C23 symbols bochscpu's wheel imports."""
    out = _build_dir() / "glibc_shim.so"
    _run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(PROBES / "glibc_shim.c")],
         _build_dir())
    return str(out)
