"""Build of bge-engine's one extension, `bge_engine._kernels`.

The C sources are compiled in groups: `csrc/` and `csrc/ref/` with the baseline flags of
the platform, and each ISA folder `csrc/<arch>/<isa>/` with the flags of its instruction
set. Before a folder is compiled, the compiler is probed with its flags; a folder whose
flags are refused is left out (and dispatch.c never offers its level), so the build never
fails because of an old compiler. `-march=native` is never used: the wheel runs on any CPU
of its architecture and picks kernels at run time.

Environment:
    BGE_SKIP_ISA   comma-separated level names to leave out, e.g. "avx512,avx2".
    BGE_SANITIZE   "1" builds with AddressSanitizer + UndefinedBehaviorSanitizer.
    BGE_DEBUG      "1" keeps debug information (-g); release builds have none (-g0), which
                   makes the extension several times smaller.
"""

import glob
import os
import platform
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# The machine the extension is built for: the host's, or the target's when cross-compiling
# (sysconfig honours _PYTHON_HOST_PLATFORM, e.g. "linux-aarch64": .ci/aarch64 sets it).
TARGET = (os.environ.get("_PYTHON_HOST_PLATFORM", "").rsplit("-", 1)[-1]
          or platform.machine()).lower()
IS_X86 = TARGET in ("x86_64", "amd64", "i386", "i686")
IS_ARM64 = TARGET in ("aarch64", "arm64")
MSVC = sys.platform == "win32"

# level (its name in csrc/registry.h's BGE_LEVELS), folder, gcc/clang flags. A folder that
# compiles gets BGE_BUILT_<LEVEL> defined, which puts its overlay into dispatch.c's table.
ISA_FOLDERS = [
    ("avx2", "csrc/x86/avx2", ["-mavx2", "-mfma", "-mf16c"]),
    ("avxvnni", "csrc/x86/avxvnni", ["-mavx2", "-mfma", "-mavxvnni"]),
    ("avx512", "csrc/x86/avx512",
     ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mavx2"]),
    ("avx512vnni", "csrc/x86/avx512vnni",
     # -fno-tree-pre: gcc 12's partial redundancy elimination makes the grouped int8
     # kernel copy its 12 sum registers twice per k-quad (qgemm.c, gukernel).
     ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma",
      "-fno-tree-pre"]),
    ("avx512bf16", "csrc/x86/avx512bf16",
     ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mfma"]),
    ("amx", "csrc/x86/amx",
     ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma",
      "-mavx512bf16", "-mamx-tile", "-mamx-int8", "-mamx-bf16"]),
]
# AArch64: -march names the architecture, never a core (-mcpu=native is never used). NEON is
# part of every AArch64 CPU (armv8-a); dotprod came with Armv8.2 (Cortex-A55/A76, Neoverse
# N1), i8mm with Armv8.6 (Neoverse V1 has it as an Armv8.4 option, hence +i8mm on 8.2),
# and so did BF16 (BFDOT, BFMMLA: the neonbf16 level; likewise an option on 8.2).
ARM_FOLDERS = [
    ("neon", "csrc/arm/neon", ["-march=armv8-a"]),
    ("dotprod", "csrc/arm/dotprod", ["-march=armv8.2-a+dotprod"]),
    ("i8mm", "csrc/arm/i8mm", ["-march=armv8.2-a+dotprod+i8mm"]),
    ("neonbf16", "csrc/arm/neonbf16", ["-march=armv8.2-a+bf16"]),
]
# former level names BGE_SKIP_ISA still accepts
ISA_ALIASES = {"vnni": "avx512vnni"}

SANITIZE = os.environ.get("BGE_SANITIZE") == "1"
DEBUG = os.environ.get("BGE_DEBUG") == "1"
# -ffp-contract=off: the compiler never fuses a multiply and an add on its own. Kernels that
# want an FMA say so with an intrinsic, so every rounding step is written in the source and
# the same on every build (which the int8 dequantisation, exact across ISAs, relies on).
# -g0 last: it overrides the -g that Python's own build flags put first.
BASE_CFLAGS = [] if MSVC else ["-O3", "-std=gnu11", "-fopenmp", "-fno-math-errno",
                               "-ffp-contract=off", "-Wall", "-g" if DEBUG else "-g0"]
BASE_LDFLAGS = [] if MSVC else ["-fopenmp"]
if SANITIZE:
    BASE_CFLAGS = ["-O1", "-g", "-std=gnu11", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wall",
                   "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=undefined"]
    BASE_LDFLAGS = ["-fopenmp", "-fsanitize=address,undefined"]


def c_files(folder):
    path = os.path.join(HERE, folder)
    if not os.path.isdir(path):
        return []
    return sorted(
        os.path.join(folder, f) for f in os.listdir(path) if f.endswith(".c")
    )


class BuildExt(build_ext):
    """build_ext that compiles each ISA folder with its own probed flags."""

    def _flags_work(self, flags):
        """Whether the compiler accepts `flags` on a file that uses nothing from them."""
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("int bge_probe(void) { return 0; }\n")
            try:
                self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            except Exception:  # the compiler refused: any CompileError or spawn failure
                return False
        return True

    def build_extension(self, ext):
        skip = {s.strip() for s in os.environ.get("BGE_SKIP_ISA", "").split(",") if s.strip()}
        skip |= {ISA_ALIASES[s] for s in skip if s in ISA_ALIASES}
        objects, macros = [], []
        folders = ISA_FOLDERS if IS_X86 else ARM_FOLDERS if IS_ARM64 else []
        for name, folder, flags in folders if not MSVC else []:
            sources = c_files(folder)
            if not sources or name in skip:
                continue
            if not self._flags_work(flags):
                print(f"bge-engine: compiler refuses {' '.join(flags)}; leaving out {folder}")
                continue
            objects += self.compiler.compile(
                sources,
                output_dir=self.build_temp,
                include_dirs=["csrc"],
                extra_postargs=BASE_CFLAGS + flags,
                depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),  # folders share headers
            )
            macros.append(("BGE_BUILT_" + name.upper(), "1"))
        ext.extra_objects = list(ext.extra_objects or []) + objects
        ext.define_macros = list(ext.define_macros or []) + macros
        super().build_extension(ext)


extension = Extension(
    "bge_engine._kernels",
    sources=["bge_engine/_kernels.pyx"] + c_files("csrc") + c_files("csrc/ref"),
    include_dirs=["csrc"],
    extra_compile_args=BASE_CFLAGS,
    extra_link_args=BASE_LDFLAGS,
    # every C file and header, ISA folders included: a change to any of them relinks the
    # extension (the ISA objects reach the link as extra_objects, which setuptools ignores)
    depends=sorted(glob.glob("csrc/**/*.[ch]", recursive=True))
    + ["bge_engine/_kernels.pxd", "bge_engine/_load.pxi"],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
    cmdclass={"build_ext": BuildExt},
)
