"""The SIMD non-GEMM fp32 kernels (csrc/x86/<isa>/ops.c, csrc/arm/neon/ops.c, vmath.h) against
the reference.

Run once per SIMD level; a level the host can't run is skipped, never passed silently.
  - vmath.h: exp, erf and GELU on dense sweeps of [-10, 10], random bit patterns over the
    whole float range and the extremes (+-0, subnormals, overflow and underflow edges, +-inf,
    NaN), against the bounds written beside them; both levels give the same bits. These
    tests compile a tiny shim with the C compiler (skipped when there is none).
  - every slot against csrc/ref on the odd sizes of DESIGN.md section 5, outputs pre-filled
    with a sentinel and a guard region after them that must stay untouched; tolerances from
    the approximation bounds and the usual gamma_n accumulation bounds;
  - attention over ragged batches (lengths 1 .. 512, an empty text), heads 12 x D 32 and
    odd D (1, 7, 17, 33, 64); bit-identical results for threads 1 vs 2 and for a text alone
    vs inside a batch (also as a Hypothesis property);
  - bad arguments raise ValueError, for the SIMD level exactly as for the reference.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bge_engine import _kernels
from kernel_cases import level

SIMD = ("avx2", "avx512", "neon")
REF = _kernels.Kernels("ref")
SENTINEL = np.float32(-7.25e30)
GUARD = 67
U = 2.0**-24  # fp32 unit roundoff
SIZES = (1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 383, 384, 385, 1152, 1536,
         1537)

# The bounds written in csrc/x86/*/vmath.h.
EXP_ULPS = 2.0           # BGE_VMATH_EXP_BOUND: normal results, vs the exact e^x
EXP_SUBNORMAL = 2.0**-149  # ... subnormal results: absolute
ERF_ABS = 6e-8           # BGE_VMATH_ERF_BOUND: vs the exact erf
GELU_REL_X = 1.5e-7      # BGE_VMATH_GELU_BOUND: |gelu - ref| <= 1.5e-7 |x|
TINY = 2.0**-149


@pytest.fixture(params=SIMD)
def kern(request):
    return level(request.param, "ops")


def guarded(shape, fill=SENTINEL):
    """A float32 array of `shape` filled with `fill`, followed in memory by a guard region
    of the sentinel: returns (the whole flat buffer, its head viewed as `shape`)."""
    n = int(np.prod(shape))
    buf = np.full(n + GUARD, SENTINEL, dtype=np.float32)
    buf[:n] = fill
    return buf, buf[:n].reshape(shape)


def assert_guard(buf, n):
    """The GUARD floats after the first n of buf still hold the sentinel, bit for bit."""
    tail = buf[n:].view(np.uint32)
    assert np.all(tail == SENTINEL.view(np.uint32)), "a kernel wrote past its output"


def assert_close(got, want, tol, what):
    """|got - want| <= tol elementwise (tol broadcastable), NaN only where want is NaN."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN pattern differs"
    ok = ~np.isnan(want)
    same = got[ok] == want[ok]  # also equal infinities
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(got[ok] - want[ok]))
    tol = np.broadcast_to(np.asarray(tol, np.float64), want.shape)[ok]
    bad = err > tol
    if np.any(bad):
        i = np.argmax(err - tol)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements off; worst "
                             f"|{got[ok][i]} - {want[ok][i]}| = {err[i]:.3g} > {tol[i]:.3g}")


# ---------------------------------------------------------------------------------------
# vmath.h through a compiled shim
# ---------------------------------------------------------------------------------------

CSRC = Path(__file__).resolve().parent.parent / "csrc"
# The compile flags of each folder (as setup.py), and the vector width.
SHIM_FLAGS = {
    "avx2": (["-mavx2", "-mfma", "-mf16c"], 8, "__m256", "_mm256"),
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mavx2"], 16,
               "__m512", "_mm512"),
}
SHIM_SRC = """
#include <stddef.h>
#include "vmath.h"
/* y[i] = f(x[i]) for n floats, n a multiple of the vector width */
void shim_exp(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i += WIDTH)
        PFX_storeu_ps(y + i, bge_ISA_exp_ps(PFX_loadu_ps(x + i)));
}
void shim_erf(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i += WIDTH)
        PFX_storeu_ps(y + i, bge_ISA_erf_ps(PFX_loadu_ps(x + i)));
}
void shim_gelu(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i += WIDTH)
        PFX_storeu_ps(y + i, bge_ISA_gelu_ps(PFX_loadu_ps(x + i)));
}
"""
UNUSED_SRC = '#include "vmath.h"\nint bge_shim_nothing(void) { return 0; }\n'


def _compiler():
    """A C compiler for the x86 shims, or None (also on other machines: the flags are x86's;
    under qemu-aarch64 the arm64 Python would find the host's cross compiler)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    """{isa: ctypes library with shim_exp, shim_erf, shim_gelu} for the usable SIMD levels."""
    cc = _compiler()
    if cc is None:
        pytest.skip("vmath shim: no C compiler for the x86 shims on this host")
    out = {}
    tmp = tmp_path_factory.mktemp("vmath")
    for isa, (flags, width, _, pfx) in SHIM_FLAGS.items():
        if isa not in _kernels.usable_isas():
            continue
        src = tmp / f"shim_{isa}.c"
        src.write_text(SHIM_SRC.replace("bge_ISA", f"bge_{isa}").replace("PFX", pfx)
                       .replace("WIDTH", str(width)))
        lib = tmp / f"shim_{isa}.so"
        cmd = [cc, "-O2", "-std=gnu11", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
               *flags, f"-I{CSRC / 'x86' / isa}", str(src),
               "-o", str(lib)]
        subprocess.run(cmd, check=True, capture_output=True)
        out[isa] = ctypes.CDLL(str(lib))
    return out


def _shim(shims, isa):
    if isa not in SHIM_FLAGS:  # neon: its vmath.h is held to the bounds by test_gelu* and
        # test_softmax* through the kernels (under qemu, .ci/aarch64, with no compiler to shim)
        pytest.skip(f"vmath {isa}: the shim is built for the x86 levels only")
    if isa not in shims:
        pytest.skip(f"vmath {isa}: host lacks {isa}")
    lib = shims[isa]
    width = SHIM_FLAGS[isa][1]

    def call(name, x):
        x = np.ascontiguousarray(x, np.float32).ravel()
        n = (x.size + width - 1) // width * width
        xp = np.zeros(n, np.float32)
        xp[: x.size] = x
        y = np.empty(n, np.float32)
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        fn(xp.ctypes.data, y.ctypes.data, n)
        return y[: x.size]

    return call


def _sweep():
    """Dense [-10, 10], random bit patterns over all floats, and the extremes."""
    rng = np.random.default_rng(11)
    dense = np.linspace(-10, 10, 400_001, dtype=np.float32)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    fmax = np.finfo(np.float32).max
    special = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 1e-30, 1.0, -1.0, 88.72, 88.7228, 88.7229,
         88.73, 89.0, 100.0, -87.33, -87.34, -100.0, -103.97, -103.98, -104.0, -150.0, 3.9192,
         5.55, -5.55, 5.6, -5.6, 6.0, -6.0, 30.0, -30.0, 1e10, -1e10, fmax, -fmax, np.inf,
         -np.inf, np.nan], np.float32)
    return np.concatenate([dense, bits, special])


def test_vmath_header_alone_is_warning_free(tmp_path):
    """Including vmath.h and using none of it draws no warning under -Wall -Wextra."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler for the x86 shims on this host")
    src = tmp_path / "unused.c"
    src.write_text(UNUSED_SRC)
    for isa, (flags, *_rest) in SHIM_FLAGS.items():
        r = subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *flags,
                            f"-I{CSRC / 'x86' / isa}", "-c", str(src), "-o",
                            str(tmp_path / f"unused_{isa}.o")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("isa", SIMD)
def test_vmath_exp(shims, isa):
    call = _shim(shims, isa)
    x = _sweep()
    y = call("shim_exp", x).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.exp(x.astype(np.float64))
        tf = t.astype(np.float32)
    nan = np.isnan(x)
    assert np.all(np.isnan(y[nan])) and not np.any(np.isnan(y[~nan]))
    inf = np.isinf(tf) & ~nan
    assert np.all(y[inf] == np.inf), "exp must overflow to +inf past 88.7228"
    normal = ~nan & ~inf & (tf >= np.finfo(np.float32).tiny)
    ulp = np.spacing(tf[normal]).astype(np.float64)
    ulps = np.abs(y[normal] - t[normal]) / ulp
    assert ulps.max() <= EXP_ULPS, f"exp: {ulps.max():.2f} ulp at {x[normal][ulps.argmax()]}"
    sub = ~nan & ~inf & ~normal
    assert np.all(np.abs(y[sub] - t[sub]) <= EXP_SUBNORMAL)
    assert call("shim_exp", np.array([-np.inf, -1e30], np.float32)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("isa", SIMD)
def test_vmath_erf(shims, isa):
    call = _shim(shims, isa)
    x = _sweep()
    x = x[~np.isnan(x)]
    y = call("shim_erf", x).astype(np.float64)
    t = np.array([math.erf(float(v)) for v in x])
    err = np.abs(y - t)
    assert err.max() <= ERF_ABS, f"erf: {err.max():.3g} at {x[err.argmax()]}"
    assert np.all(np.sign(y) * np.sign(x) >= 0)  # odd, sign kept (also of -0)
    assert np.isnan(call("shim_erf", np.array([np.nan], np.float32))[0])


@pytest.mark.parametrize("isa", SIMD)
def test_vmath_gelu_against_reference_and_exact(shims, isa):
    """gelu within 1.5e-7 |x| of the reference's 0.5 x (1 + erff(x / sqrt 2)), specials as the
    reference (+inf -> inf, -inf -> NaN, NaN -> NaN); and within 1e-7 |x| of the exact GELU."""
    call = _shim(shims, isa)
    x = _sweep()
    y = call("shim_gelu", x)
    ref = x.copy()
    REF.gelu(ref)
    with np.errstate(invalid="ignore"):
        tol = GELU_REL_X * np.abs(x.astype(np.float64)) + TINY
    assert_close(y, ref, tol, "gelu vs ref")
    fin = np.isfinite(x)
    exact = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in
                      x[fin].astype(np.float64)])
    assert_close(y[fin], exact, 1e-7 * np.abs(x[fin].astype(np.float64)) + TINY,
                 "gelu vs exact")


def test_vmath_levels_agree_bit_for_bit(shims):
    """avx2/vmath.h and avx512/vmath.h compute the same bits (the header comments say so)."""
    if len(shims) < 2:
        pytest.skip("needs both avx2 and avx512")
    x = _sweep()
    for fn in ("shim_exp", "shim_erf", "shim_gelu"):
        a = _shim(shims, "avx2")(fn, x)
        b = _shim(shims, "avx512")(fn, x)
        ok = ~np.isnan(a)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.array_equal(a[ok].view(np.uint32), b[ok].view(np.uint32)), fn


# ---------------------------------------------------------------------------------------
# GELU, softmax, LayerNorm, L2 norm
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES + (3 * 1537, 17 * 1536 + 5))
def test_gelu(kern, n):
    rng = np.random.default_rng(n)
    buf, x = guarded((n,))
    x[:] = rng.standard_normal(n, dtype=np.float32) * 4
    x[: min(n, 6)] = np.array([0.0, -0.0, 1e-40, 30.0, -30.0, np.inf], np.float32)[: min(n, 6)]
    want = x.copy()
    REF.gelu(want)
    xin = x.astype(np.float64)
    kern.gelu(x)
    assert_close(x, want, GELU_REL_X * np.abs(xin) + TINY, f"gelu n={n}")
    assert_guard(buf, n)


def test_gelu_on_the_vmath_sweep(kern):
    """The GELU slot on the sweep of the vmath tests (dense [-10, 10], random bit patterns
    over all floats, the extremes) within BGE_VMATH_GELU_BOUND of the reference: for neon,
    whose vmath.h no shim compiles, the stated bound checked through the kernel."""
    x = _sweep()
    want = x.copy()
    REF.gelu(want)
    got = x.copy()
    kern.gelu(got)
    with np.errstate(invalid="ignore"):
        tol = GELU_REL_X * np.abs(x.astype(np.float64)) + TINY
    assert_close(got, want, tol, "gelu sweep")


def test_gelu_any_shape_in_place(kern):
    x = np.linspace(-6, 6, 7 * 33, dtype=np.float32).reshape(7, 33)
    want = x.copy()
    REF.gelu(want)
    assert kern.gelu(x) is x
    assert_close(x, want, GELU_REL_X * 6 + TINY, "gelu 2-D")


def test_gelu_saturates(kern):
    """Past |x| = 5.55 GELU is x itself, bit for bit, and 0 below -5.55 (as the reference;
    ours gives +0 where the reference gives -0)."""
    big = np.array([5.55, 6.0, 100.0, 1e30, np.finfo(np.float32).max], np.float32)
    y = big.copy()
    kern.gelu(y)
    assert np.array_equal(y, big)
    y = -big
    kern.gelu(y)
    assert np.all(y == 0)


# Softmax: our exp is within 2 ulp of e^x, the reference's expf within 1; both sum in double
# and round 1 / sum to float (0.5 ulp each, and the sums' relative difference is at most
# 2 ulp of float); one rounding of the product each: 2 + 1 + 2 * 0.5 + 2 + 2 * 0.5 = 7 ulp.
SOFTMAX_RTOL = 7 * 2 * U


@pytest.mark.parametrize("C", SIZES)
def test_softmax(kern, C):
    rng = np.random.default_rng(1000 + C)
    R = 5
    buf, x = guarded((R, C))
    x[:] = rng.standard_normal((R, C), dtype=np.float32) * np.float32(6)
    x[1] *= 20  # rows with outputs that underflow into subnormals and to zero
    x[2] = -np.inf
    x[2, C // 2] = 3.0  # one finite entry: exactly [0, .., 1, .., 0]
    if C > 2:
        x[3, :2] = -np.inf
    want = x.copy()
    REF.softmax(want)
    assert kern.softmax(x) is x
    assert_close(x, want, SOFTMAX_RTOL * np.abs(want) + 4 * TINY, f"softmax C={C}")
    assert_guard(buf, R * C)


def test_softmax_sweeps_exp(kern):
    """Rows [0, y] for y dense in [-10, 10]: exp over the softmax argument range [-10, 0]."""
    y = np.linspace(-10, 10, 20_001, dtype=np.float32)
    x = np.stack([np.zeros_like(y), y], axis=1)
    want = x.copy()
    REF.softmax(want)
    kern.softmax(x)
    assert_close(x, want, SOFTMAX_RTOL * np.abs(want) + 4 * TINY, "softmax [0, y]")


def _layernorm_tol(x, gamma, beta, eps):
    """Both kernels compute h = (x - mean) * rstd in double and round it to float (U |h|
    each; their double sums differ far below that), then h * gamma + beta in float: two
    roundings in the reference (U |h gamma| + U |h gamma + beta|), one in our FMA: at most
    5 U |h gamma| + 2 U |beta| apart."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    h = (x64 - mean) / np.sqrt(x64.var(axis=1, keepdims=True) + eps)
    return 6 * U * (np.abs(h * gamma) + np.abs(beta)) + TINY


@pytest.mark.parametrize("C", SIZES)
def test_layernorm(kern, C):
    rng = np.random.default_rng(2000 + C)
    T = (1, 7, 33)[C % 3]
    x = (rng.standard_normal((T, C), dtype=np.float32) * 2 + 3).astype(np.float32)
    gamma = rng.standard_normal(C, dtype=np.float32)
    beta = rng.standard_normal(C, dtype=np.float32)
    eps = np.float32(1e-12)
    want = np.empty((T, C), np.float32)
    REF.layernorm(x, gamma, beta, eps, want)
    buf, out = guarded((T, C))
    kern.layernorm(x, gamma, beta, eps, out)
    tol = _layernorm_tol(x, gamma, beta, eps)
    assert_close(out, want, tol, f"layernorm T={T} C={C}")
    assert_guard(buf, T * C)
    # in place (out = x), and thread counts: bit-identical to the above
    x2 = x.copy()
    kern.layernorm(x2, gamma, beta, eps, x2)
    assert np.array_equal(x2.view(np.uint32), out.view(np.uint32))
    out2 = np.empty_like(out)
    kern.layernorm(x, gamma, beta, eps, out2, threads=2)
    assert np.array_equal(out2.view(np.uint32), out.view(np.uint32))


def test_layernorm_constant_rows_and_eps(kern):
    """A constant row has variance 0: out = beta (with eps > 0) as in the reference."""
    C = 385
    x = np.full((3, C), 2.5, np.float32)
    gamma = np.ones(C, np.float32)
    beta = np.linspace(-1, 1, C, dtype=np.float32)
    out = np.empty_like(x)
    kern.layernorm(x, gamma, beta, np.float32(1e-5), out)
    want = np.empty_like(x)
    REF.layernorm(x, gamma, beta, np.float32(1e-5), want)
    assert np.array_equal(out, want)


@pytest.mark.parametrize("C", SIZES)
def test_l2norm(kern, C):
    rng = np.random.default_rng(3000 + C)
    n = 4
    buf, x = guarded((n, C))
    x[:] = rng.standard_normal((n, C), dtype=np.float32)
    x[1] = 0.0  # a zero row stays zero
    x[2] *= np.float32(1e-20)  # squares underflow in float, not in double
    want = x.copy()
    REF.l2norm(want)
    assert kern.l2norm(x) is x
    # both: double sum of squares (orders differ), one double product rounded to float
    np.testing.assert_array_max_ulp(x, want, maxulp=1)
    assert np.all(x[1] == 0)
    assert_guard(buf, n * C)


# ---------------------------------------------------------------------------------------
# Embeddings and pooling: bit-identical to the reference (same operations in the same order)
# ---------------------------------------------------------------------------------------


def _offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


@pytest.mark.parametrize("C", SIZES)
def test_embed(kern, C):
    rng = np.random.default_rng(4000 + C)
    lengths = [1, 3, 0, 17, 2]
    off = _offsets(lengths)
    T, V, P = int(off[-1]), 50, 20
    ids = rng.integers(0, V, T).astype(np.int32)
    word = rng.standard_normal((V, C), dtype=np.float32)
    pos = rng.standard_normal((P, C), dtype=np.float32)
    typ = rng.standard_normal((2, C), dtype=np.float32)
    want = np.empty((T, C), np.float32)
    REF.embed(ids, off, word, pos, typ, want)
    buf, out = guarded((T, C))
    kern.embed(ids, off, word, pos, typ, out)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
    assert_guard(buf, T * C)


@pytest.mark.parametrize("mode", ["cls", "mean"])
@pytest.mark.parametrize("C", SIZES)
def test_pool(kern, C, mode):
    rng = np.random.default_rng(5000 + C)
    lengths = [1, 2, 7, 64, 129, 3]
    off = _offsets(lengths)
    h = rng.standard_normal((int(off[-1]), C), dtype=np.float32)
    n = len(lengths)
    want = np.empty((n, C), np.float32)
    REF.pool(h, off, mode, want)
    buf, out = guarded((n, C))
    kern.pool(h, off, mode, out)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
    assert_guard(buf, n * C)


# ---------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------

RAGGED = [1, 2, 7, 17, 33, 64, 129, 512]


def _qkv(lengths, H, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(sum(lengths)), 3 * H), dtype=np.float32)


def _attention_tol(qkv, off, heads, scale):
    """A per-element bound on |ours - ref| from the usual gamma_n bounds, both kernels:
    each score s = scale q.k is within g_D * scale * sum|q||k| (|ds| <= e_s), so each
    weight p is within a relative 2 max e_s + exp and rounding error (10 ulp), and out =
    sum p v within that times sum p |v|, plus g_L * sum p |v| for the sum over keys."""
    T, H3 = qkv.shape
    H = H3 // 3
    D = H // heads
    tol = np.empty((T, H))
    x = qkv.astype(np.float64)
    gD, n = 2 * D * U, len(off) - 1
    for i in range(n):
        a, b = off[i], off[i + 1]
        L = b - a
        if L == 0:
            continue
        for h in range(heads):
            q = x[a:b, h * D:(h + 1) * D]
            k = x[a:b, H + h * D:H + (h + 1) * D]
            v = x[a:b, 2 * H + h * D:2 * H + (h + 1) * D]
            s = scale * q @ k.T
            es = gD * scale * (np.abs(q) @ np.abs(k).T)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            pv = p @ np.abs(v)
            rel = 2 * (4 * es.max(axis=1, keepdims=True) + 10 * U + 2 * L * U)
            tol[a:b, h * D:(h + 1) * D] = rel * pv + TINY
    return tol


def _attend(k, qkv, off, heads, scale, threads=1):
    """out of k.attention, in a guarded buffer, with a scratch of exactly the size the table
    asks for, filled with NaN: reading scratch the kernel did not write shows in out."""
    T, H = qkv.shape[0], qkv.shape[1] // 3
    buf, out = guarded((T, H))
    need = k.attention_scratch_size(int(np.diff(off).max()), H // heads, threads)
    scratch = np.full(need, np.nan, np.float32)
    k.attention(qkv, off, heads, scale, out, scratch=scratch, threads=threads)
    assert_guard(buf, T * H)
    return out


@pytest.mark.parametrize("heads,D", [(12, 32), (5, 1), (3, 7), (2, 17), (1, 33), (2, 64)])
def test_attention_ragged(kern, heads, D):
    lengths = RAGGED[:4] + [0] + RAGGED[4:] if D != 32 else RAGGED
    off = _offsets(lengths)
    H = heads * D
    qkv = _qkv(lengths, H, seed=6000 + D)
    scale = np.float32(1 / math.sqrt(D))
    want = _attend(REF, qkv, off, heads, scale)
    got = _attend(kern, qkv, off, heads, scale)
    assert_close(got, want, _attention_tol(qkv, off, heads, scale),
                 f"attention heads={heads} D={D}")
    # threads 1 vs 2, 3, 7 (jobs cut into whole texts or runs of heads, bge_attention_chunk):
    # the same bits
    for threads in (2, 3, 7):
        got2 = _attend(kern, qkv, off, heads, scale, threads=threads)
        assert np.array_equal(got2.view(np.uint32), got.view(np.uint32)), threads
    # each text alone: the same bits as inside the batch
    for i, L in enumerate(lengths):
        if L == 0:
            continue
        a, b = off[i], off[i + 1]
        alone = _attend(kern, np.ascontiguousarray(qkv[a:b]), _offsets([L]), heads, scale)
        assert np.array_equal(alone.view(np.uint32), got[a:b].view(np.uint32)), f"text {i}"


@pytest.mark.parametrize("lengths", [[16], [5, 127], [1, 16, 7, 33, 16, 0, 127, 2, 9]])
def test_attention_short_texts_any_threads(kern, lengths):
    """Texts under 128 tokens, whose jobs go out as whole texts or as runs of heads
    (bge_attention_chunk): the reference's values, the same bits on 1, 2, 3 and 7 threads."""
    heads, D = 12, 32
    off = _offsets(lengths)
    qkv = _qkv(lengths, heads * D, seed=len(lengths))
    scale = np.float32(1 / math.sqrt(D))
    one = _attend(kern, qkv, off, heads, scale)
    assert_close(one, _attend(REF, qkv, off, heads, scale),
                 _attention_tol(qkv, off, heads, scale), f"attention {lengths}")
    for threads in (2, 3, 7):
        got = _attend(kern, qkv, off, heads, scale, threads=threads)
        assert np.array_equal(got.view(np.uint32), one.view(np.uint32)), threads


def test_attention_peaked_scores(kern):
    """Large scores (softmax near one-hot, exp arguments down to -1e4 and below)."""
    lengths = [3, 40, 129]
    off = _offsets(lengths)
    heads, D = 4, 16
    qkv = _qkv(lengths, heads * D, seed=7) * np.float32(12)
    scale = np.float32(0.25)
    want = _attend(REF, qkv, off, heads, scale)
    got = _attend(kern, qkv, off, heads, scale)
    assert_close(got, want, _attention_tol(qkv, off, heads, scale), "attention peaked")


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6),
       hd=st.sampled_from([(12, 32), (1, 5), (2, 9), (3, 16)]),
       threads=st.sampled_from([2, 3, 7]), seed=st.integers(0, 2**31 - 1))
def test_attention_batch_and_thread_invariance(lengths, hd, threads, seed):
    """Property: a text's rows are the same bits alone, in any batch, with 1 or more
    threads."""
    heads, D = hd
    if not any(isa in _kernels.usable_isas() for isa in SIMD):
        pytest.skip(f"host lacks every SIMD level of {SIMD}")
    off = _offsets(lengths)
    if off[-1] == 0:
        return
    qkv = _qkv(lengths, heads * D, seed)
    for isa in SIMD:
        if isa not in _kernels.usable_isas():
            continue
        k = _kernels.Kernels(isa)
        one = _attend(k, qkv, off, heads, np.float32(0.3))
        two = _attend(k, qkv, off, heads, np.float32(0.3), threads=threads)
        assert np.array_equal(one.view(np.uint32), two.view(np.uint32))
        for i, L in enumerate(lengths):
            if L:
                a, b = off[i], off[i + 1]
                alone = _attend(k, np.ascontiguousarray(qkv[a:b]), _offsets([L]), heads,
                                np.float32(0.3))
                assert np.array_equal(alone.view(np.uint32), one[a:b].view(np.uint32))


def test_attention_scratch(kern):
    """The scratch the table asks for is enough and one float less is refused; the scratch
    grows with the longest text, the head width and the threads."""
    lengths = [5, 33]
    off = _offsets(lengths)
    heads, D = 3, 7
    qkv = _qkv(lengths, heads * D, 1)
    for threads in (1, 2):
        need = kern.attention_scratch_size(33, D, threads)
        assert need >= REF.attention_scratch_size(33, D, threads)
        out = np.empty((38, heads * D), np.float32)
        kern.attention(qkv, off, heads, np.float32(0.5), out,
                       scratch=np.full(need, np.nan, np.float32), threads=threads)
        with pytest.raises(ValueError, match="scratch"):
            kern.attention(qkv, off, heads, np.float32(0.5), out,
                           scratch=np.empty(need - 1, np.float32), threads=threads)
    assert kern.attention_scratch_size(34, D) > kern.attention_scratch_size(17, D)
    assert kern.attention_scratch_size(33, 2 * D) > kern.attention_scratch_size(33, D)
    assert kern.attention_scratch_size(0, D) == 0
    assert kern.attention_scratch_size(33, 0) == 0


def test_attention_all_texts_empty(kern):
    """n texts, all empty: nothing to do, nothing written."""
    qkv = np.empty((0, 3 * 8), np.float32)
    out = np.empty((0, 8), np.float32)
    kern.attention(qkv, np.zeros(3, np.int32), 2, np.float32(1.0), out)


# ---------------------------------------------------------------------------------------
# Bad arguments: ValueError, exactly where the reference raises it
# ---------------------------------------------------------------------------------------


def _both_raise(kern, fn):
    with pytest.raises(ValueError):
        fn(REF)
    with pytest.raises(ValueError):
        fn(kern)


def test_bad_arguments(kern):
    x = np.ones((3, 8), np.float32)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    out = np.empty_like(x)
    _both_raise(kern, lambda k: k.layernorm(x, g, b, np.float32(-1.0), out))   # eps < 0
    _both_raise(kern, lambda k: k.layernorm(x, g, b, np.float32(np.nan), out))  # eps NaN
    _both_raise(kern, lambda k: k.layernorm(x, g, b, np.float32(1e-5), out, threads=0))
    _both_raise(kern, lambda k: k.layernorm(x, g[:7], b, np.float32(1e-5), out))
    _both_raise(kern, lambda k: k.softmax(x.astype(np.float64)))
    _both_raise(kern, lambda k: k.gelu(x[:, ::2]))
    _both_raise(kern, lambda k: k.l2norm(x.reshape(-1)))
    qkv = np.ones((4, 24), np.float32)
    o = np.empty((4, 8), np.float32)
    off = _offsets([1, 3])
    _both_raise(kern, lambda k: k.attention(qkv, off, 3, np.float32(1.0), o))  # 3 !| 8
    _both_raise(kern, lambda k: k.attention(qkv, _offsets([1, 2]), 2, np.float32(1.0), o))
    _both_raise(kern, lambda k: k.attention(qkv, np.array([0, 3, 2, 4], np.int32), 2,
                                            np.float32(1.0), o))
    _both_raise(kern, lambda k: k.attention(qkv, off, 2, np.float32(1.0), o, threads=0))
    _both_raise(kern, lambda k: k.attention(qkv, off, 2, np.float32(1.0), o,
                                            scratch=np.empty(1, np.float32)))
    ids = np.array([0, 5, 9], np.int32)
    word, pos, typ = np.ones((9, 8), np.float32), np.ones((2, 8), np.float32), np.ones(
        (1, 8), np.float32)
    e = np.empty((3, 8), np.float32)
    _both_raise(kern, lambda k: k.embed(ids, _offsets([3]), word, pos, typ, e))  # id 9 >= 9
    _both_raise(kern, lambda k: k.embed(ids - 1, _offsets([3]), word, pos, typ, e))  # id -1
    _both_raise(kern, lambda k: k.embed(ids % 9, _offsets([3]), word, pos, typ, e))  # 3 > 2
    h = np.ones((3, 8), np.float32)
    p = np.empty((2, 8), np.float32)
    _both_raise(kern, lambda k: k.pool(h, _offsets([0, 3]), "mean", p))  # an empty text
    _both_raise(kern, lambda k: k.pool(h, _offsets([1, 2]), "max", p))


def test_names_follow_the_grammar(kern):
    for slot in ("f32_layernorm", "f32_softmax", "f32_gelu", "f32_attention", "f32_embed",
                 "f32_pool", "f32_l2norm"):
        assert kern.names[slot] == f"bge_{slot}__{kern.isa}"


if os.environ.get("BGE_VMATH_EXHAUSTIVE") == "1":  # long tier: every float, minutes

    @pytest.mark.parametrize("isa", SIMD)
    def test_vmath_every_float(shims, isa):
        call = _shim(shims, isa)
        worst_exp = worst_gelu = 0.0
        for hi in range(0, 2**32, 2**24):
            x = np.arange(hi, hi + 2**24, dtype=np.uint64).astype(np.uint32).view(np.float32)
            y = call("shim_exp", x).astype(np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                t = np.exp(x.astype(np.float64))
                tf = t.astype(np.float32)
                normal = np.isfinite(tf) & (tf >= np.finfo(np.float32).tiny)
                ulps = np.abs(y[normal] - t[normal]) / np.spacing(tf[normal])
            worst_exp = max(worst_exp, float(ulps.max(initial=0)))
            g = call("shim_gelu", x).astype(np.float64)
            r = x.copy()
            REF.gelu(r)
            fin = np.isfinite(r)
            rel = np.abs(g[fin] - r[fin]) / np.maximum(np.abs(x[fin]), 1e-30)
            worst_gelu = max(worst_gelu, float(rel.max(initial=0)))
        assert worst_exp <= EXP_ULPS and worst_gelu <= GELU_REL_X, (worst_exp, worst_gelu)
