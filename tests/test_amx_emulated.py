"""The AMX kernels (csrc/x86/amx/qgemm.c, bgemm.c) run on an emulated CPU, on every machine:
this one and CI's have no AMX. tests/amx_emu compiles each kernel's .c into a probe, runs it
on Bochs's CPU (bochscpu-python) with the AMX instructions executed by the harness's AMX unit
as the Intel SDM states them, and reads the outputs back (docs/design/amx_emulation.md).

  - int8: the raw int32 tile (tile_amx) over whole GEMMs on odd shapes (mr < 16, nw < 48,
    K % 64 != 0, K = 384) equals numpy's integer matmul exactly; the grouped tile
    (gtile_amx) with the shared epilogue equals the reference exactly (bias, residual) and
    the avx512vnni level bit for bit (every epilogue, GELU included: the same vector GELU);
  - bf16: the coordinator's pass (pass_amx) equals, bit for bit, a numpy model of the SDM's
    TDPBF16PS applied per 32 k as the kernel does (amx_emu/tdpbf16ps.py), and lies within
    bge.h's bound of the reference; a hand-written tdpbf16ps probe pins the instruction's
    order on inputs where the SDM's two chains give 2^-24 and a single chain (even k first,
    or the reference's odd k first) gives 0;
  - bf16, the whole slot (bgemm_slot_probe.c, linked with the shared driver compiled
    without OpenMP): bge_bf16_gemm__amx with nthreads = 1 on weights bge_bf16_pack__amx
    packed in the guest: the argument/header/scratch checks, the vcvtneps2bf16 row
    conversion, begin/end, the passes and every epilogue give the SDM model's bits within
    bge.h's bound of the reference; the overlay's self-check agrees_with_reference() returns
    1, and 0 when built against a deliberately broken copy of amx.h; the peak loop counts
    its flops and releases its tiles;
  - the harness can fail: a wrong stride gives a mismatch, a null dereference, a tile used
    without a configuration and a read past a buffer are faults naming the instruction, a
    call to an undefined function fails the link; the fp32 FMA model equals libm's fmaf.
Skipped (with the reason) only where bochscpu-python or the compiler's AMX flags are
missing; the test extra installs bochscpu-python on x86-64 Linux with CPython 3.11.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
import pytest

import amx_emu
from bge_engine import _kernels

REASON = amx_emu.unavailable()
if REASON:
    pytest.skip(f"AMX emulation unavailable: {REASON}", allow_module_level=True)

from amx_emu import fp, tdpbf16ps  # noqa: E402
from amx_emu import build as amx_build  # noqa: E402
from amx_emu.build import CSRC, BuildError, build_file, build_source  # noqa: E402
from amx_emu.job import GuestFault, Job  # noqa: E402

REF = _kernels.Kernels("ref")
G = _kernels.Q8_GROUP
EPI = {"bias": 0, "gelu": 1, "residual": 2}
OP_I32, OP_GEMM = 1, 2
OP_TDP, OP_CPUID = 1, 2
OP_PASS = 0  # bgemm_probe has one operation
I_SENT, F_SENT = -0x5A5A5A5A, np.float32(-7.25e30)

# (M, K, N): rows tails (mr < 16), columns tails (nw < 48: 1, 2 or 3 blocks), K % 64 != 0
# (the short-group path), K < 64, K = 384 (the model's) and a model-wide N.
INT8_SHAPES = [(1, 1, 1), (3, 200, 70), (5, 63, 17), (15, 384, 47), (16, 384, 48),
               (17, 385, 100), (33, 130, 33), (17, 384, 1152)]
BF16_SHAPES = [(1, 2, 1), (2, 1, 3), (19, 70, 53), (16, 64, 48), (17, 384, 100),
               (33, 385, 17), (5, 33, 16), (17, 384, 1152)]


@pytest.fixture(scope="module")
def qprobe():
    return build_file("qgemm_probe.c")


@pytest.fixture(scope="module")
def bprobe():
    return build_file("bgemm_probe.c")


@pytest.fixture(scope="module")
def tprobe():
    return build_file("tdp_probe.c")


def vnni():
    """The avx512vnni table: its int8 packing has the AMX level's bytes (its own layout id
    aside, which the probe does not read) and its GEMM the AMX level's bits."""
    if "avx512vnni" not in _kernels.usable_isas():
        pytest.skip(f"avx512vnni not usable here ({_kernels.usable_isas()}): it packs the "
                    "int8 weights for the probe")
    return _kernels.Kernels("avx512vnni")


def kp(K):
    return (K + 3) // 4 * 4


def ng(K):
    return (K + G - 1) // G


def int8_case(M, K, N, seed):
    """x quantised by the reference (rows of mixed sign, >= 0, <= 0, tiny, zero), w_s8 at
    both ends, per-group weight scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K), dtype=np.float32)
    x[::3] = np.abs(x[::3])
    x[1::5] = -np.abs(x[1::5])
    x[2::7] *= np.float32(1e-20)
    if M > 3:
        x[M - 1] = 0
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[0] = 127
    w[-1] = -127
    ws = (rng.random((N, ng(K)), dtype=np.float32) + np.float32(0.5)) * np.float32(0.01)
    q = np.empty((M, kp(K)), np.uint8)
    scale = np.empty((M, ng(K)), np.float32)
    zp = np.empty((M, ng(K)), np.int32)
    REF.quantize(x, q, scale, zp)
    return q, scale, zp, w, ws


# ---------------------------------------------------------------------------------------
# int8: tile_amx and gtile_amx
# ---------------------------------------------------------------------------------------

def test_int8_raw_sums_equal_integer_matmul(qprobe):
    """tile_amx's int32 sums (tdpbusd per group of 64 k, vpdpbusd for a short last group)
    equal q @ w^T exactly, and the reference's qgemm_i32."""
    k = vnni()
    job, want = Job(qprobe), {}
    for i, (M, K, N) in enumerate(INT8_SHAPES):
        q, _, _, w, ws = int8_case(M, K, N, i)
        acc = job.output(f"acc{i}", (M, N), np.int32, fill=I_SENT)
        job.call(OP_I32, job.put(q), M, kp(K), job.put(k.qpack(w, ws).data), acc)
        want[i] = q[:, :K].astype(np.int64) @ w.T.astype(np.int64)
        ref = np.empty((M, N), np.int32)
        REF.qgemm_i32(q, REF.qpack(w, ws), ref)
        assert np.array_equal(ref, want[i])
    got = job.run()
    for i, shape in enumerate(INT8_SHAPES):
        bad = got[f"acc{i}"] != want[i]
        assert not bad.any(), (f"tile_amx {shape}: {bad.sum()} sums differ, first at "
                               f"{np.argwhere(bad)[0]}")
    assert job.result["amx"].get("tdpbusd", 0) > 100  # the tiles did run tdpbusd


def test_int8_grouped_gemm_equals_reference_and_vnni(qprobe):
    """gtile_amx + the shared epilogue: the reference's bits for bias and residual, the
    avx512vnni level's bits for every epilogue."""
    k = vnni()
    job, want, shape = Job(qprobe), {}, {}
    for i, (M, K, N) in enumerate(INT8_SHAPES):
        q, scale, zp, w, ws = int8_case(M, K, N, 100 + i)
        rng = np.random.default_rng(i)
        bias = rng.standard_normal(N, dtype=np.float32)
        res = rng.standard_normal((M, N), dtype=np.float32)
        args = [job.put(q), M, kp(K), job.put(k.qpack(w, ws).data), job.put(scale),
                job.put(zp), job.put(bias)]
        for epi, code in EPI.items():
            r = res if epi == "residual" else None
            out = job.output(f"{epi}{i}", (M, N), np.float32, fill=F_SENT)
            job.call(OP_GEMM, *args, job.put(r) if r is not None else 0, out, code)
            want[f"{epi}{i}"] = v = np.empty((M, N), np.float32)
            shape[f"{epi}{i}"] = (M, K, N)
            k.qgemm(q, scale, zp, k.qpack(w, ws), bias, v, epi, res=r)
            if epi != "gelu":
                ref = np.empty((M, N), np.float32)
                REF.qgemm(q, scale, zp, REF.qpack(w, ws), bias, ref, epi, res=r)
                assert np.array_equal(ref.view(np.int32), v.view(np.int32))
    got = job.run()
    for name, v in want.items():
        bad = got[name].view(np.int32) != v.view(np.int32)
        assert not bad.any(), (f"gtile_amx {name} {shape[name]}: {bad.sum()} differ, first "
                               f"at {np.argwhere(bad)[0]}")


# ---------------------------------------------------------------------------------------
# the harness fails where it must
# ---------------------------------------------------------------------------------------

def test_wrong_stride_is_a_mismatch(qprobe):
    """The same call with the q rows' stride off by 4 bytes gives other sums: a kernel that
    read its rows wrongly would not pass."""
    k = vnni()
    M, K, N = 17, 384, 70
    q, _, _, w, ws = int8_case(M, K, N, 7)
    job = Job(qprobe)
    qa, pa = job.put(np.vstack([q, q[:1]])), job.put(k.qpack(w, ws).data)  # room for +4
    job.output("ok", (M, N), np.int32)
    job.output("bad", (M, N), np.int32)
    job.call(OP_I32, qa, M, kp(K), pa, job.outputs["ok"][0])
    job.call(OP_I32, qa, M, kp(K) + 4, pa, job.outputs["bad"][0])
    got = job.run()
    want = q[:, :K].astype(np.int64) @ w.T.astype(np.int64)
    assert np.array_equal(got["ok"], want)
    assert (got["bad"][1:] != want[1:]).mean() > 0.9  # row 0 reads the same bytes


def test_fault_names_the_instruction():
    """A null dereference is a #PF with CR2 and the faulting instruction's function."""
    probe = build_source("#include <stdint.h>\n"
                         "void probe_entry(const uint64_t *a) {\n"
                         "  *(volatile uint64_t *)a[1] = 1;\n"
                         "}\n", name="null-store")
    job = Job(probe)
    job.call(0, 8)
    with pytest.raises(GuestFault, match=r"#PF page fault .*CR2 0x8 at 0x[0-9a-f]+ "
                                         r"<probe_entry\+0x[0-9a-f]+>: mov"):
        job.run()


def test_tile_without_configuration_is_a_fault():
    probe = build_source("#include <immintrin.h>\n#include <stdint.h>\n"
                         "void probe_entry(const uint64_t *a) {\n"
                         "  _tile_loadd(1, (const void *)a[1], 64);\n"
                         "}\n", name="no-config")
    job = Job(probe)
    job.call(0, job.put(np.zeros(1024, np.uint8)))
    with pytest.raises(GuestFault, match=r"#UD: tile instruction with no tile "
                                         r"configuration.*<probe_entry.*tileloadd"):
        job.run()


def test_read_past_a_buffer_is_a_fault(qprobe):
    """q one row short, ending at a page end: the tile's last row reads the unmapped page
    after it (every buffer has one)."""
    k = vnni()
    M, K, N = 16, 384, 48
    q, _, _, w, ws = int8_case(M, K, N, 3)
    job = Job(qprobe)
    qa = job.put(q[:M - 1], align_end=True)
    job.call(OP_I32, qa, M, kp(K), job.put(k.qpack(w, ws).data),
             job.output("acc", (M, N), np.int32))
    with pytest.raises(GuestFault, match=r"#PF: read of unmapped guest memory at "
                                         r".*<tile_amx.*tileloadd"):
        job.run()


def test_call_to_an_undefined_function_fails_the_link():
    with pytest.raises(BuildError, match="undefined reference to `bge_not_defined'"):
        build_source("#include <stdint.h>\nvoid bge_not_defined(void);\n"
                     "void probe_entry(const uint64_t *a) { bge_not_defined(); }\n",
                     name="undefined")


def test_emulated_cpu_has_avx512_vnni_and_bf16(tprobe):
    """The kernels' vector code needs AVX-512 VNNI (the int8 group step) and BF16 (the
    conversion): Bochs's Sapphire Rapids model has both."""
    job = Job(tprobe)
    job.call(OP_CPUID, job.output("id", (8,), np.uint32))
    ident = job.run()["id"]
    assert ident[2] >> 11 & 1, "CPUID.7.0:ECX.AVX512_VNNI"
    assert ident[4] >> 5 & 1, "CPUID.7.1:EAX.AVX512_BF16"


# ---------------------------------------------------------------------------------------
# bf16: the arithmetic of the model, the instruction, the kernel
# ---------------------------------------------------------------------------------------

def test_fma32_equals_libm_fmaf():
    """fp.fma32 (float64 with round-to-odd, then one rounding to fp32) against the C
    library's fmaf on random values of every magnitude, ties and cancellations."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.fmaf.restype = ctypes.c_float
    libm.fmaf.argtypes = [ctypes.c_float] * 3
    rng = np.random.default_rng(5)
    n = 20000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-60, 60, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-60, 60, n)).astype(np.float32)
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-120, 120, n)).astype(np.float32)
    c[::4] = -(a[::4].astype(np.float64) * b[::4]).astype(np.float32)  # cancellation
    c[1::4] = np.float32(1.0)                                             # ties near 1
    a[1::4], b[1::4] = np.float32(2.0**-12), np.float32(2.0**-12) * rng.integers(1, 8, n // 4)
    got = fp.fma32(a, b, c)
    want = np.array([libm.fmaf(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)],
                    np.float32)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    # the chain step tdpbf16ps uses is the same step, ftz'd (c never denormal there)
    c = fp.ftz(c)
    chain = fp.fma_chain_step(a.astype(np.float64) * b, c.astype(np.float64))
    assert np.array_equal(chain.astype(np.float32).view(np.int32),
                          fp.tdp_step(c, a, b).view(np.int32))


def bf16_bits(v):
    return _kernels.bf16_bits(np.ascontiguousarray(v, np.float32))


def run_tdp(tprobe, C, A, B, kt):
    """C (m, 16) fp32 after tdpbf16ps over the nk = A.shape[1] / (2 kt) blocks of A (m, Kp
    bf16 bits) and B (Kp / 2 pair rows x 32 bf16 bits)."""
    m = C.shape[0]
    nk = A.shape[1] // (2 * kt)
    job = Job(tprobe)
    c = job.output("C", (m, 16), np.float32, init=C)
    job.call(OP_TDP, job.put(A), job.put(B), c, m, kt, nk, A.shape[1] * 2)
    return job.run()["C"]


def test_tdpbf16ps_order_is_the_sdms(tprobe):
    """One instruction of 3 pairs on inputs where the orders part: the SDM's (the even and
    the odd k in two chains, added at the end) gives 2^-24; one chain with the even k first
    gives 0 (1 + 2^-24 is a tie, rounded to 1, then - 1); the reference's (odd first) 0 too
    (2^-24 + 1, the same tie). Row 1: random values of many magnitudes against the model,
    bit for bit."""
    h = 2.0**-12
    x = np.zeros((2, 6), np.float32)
    w = np.zeros((16, 6), np.float32)
    x[0, :6] = [1.0, h, -1.0, 0.0, 0.0, h]     # pairs (1, h), (-1, 0), (0, h)
    w[0, :6] = [1.0, h, 1.0, 0.0, 0.0, 0.0]    # even chain: 1 - 1 = 0; odd: h h = 2^-24
    rng = np.random.default_rng(9)
    x[1] = rng.standard_normal(6) * 2.0 ** rng.integers(-8, 8, 6)
    w[1:] = rng.standard_normal((15, 6)) * 2.0 ** rng.integers(-8, 8, (15, 6))
    A, Wb = bf16_bits(x), bf16_bits(w)
    B = Wb.reshape(16, 3, 2).transpose(1, 0, 2).reshape(3, 32)
    C0 = np.zeros((2, 16), np.float32)
    got = run_tdp(tprobe, C0, A, B, 3)
    want = tdpbf16ps.tdpbf16ps(C0, A, B)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert got[0, 0] == np.float32(2.0**-24)
    # the single even-first chain (1 + 2^-24 rounds to 1, then - 1) and the reference lose it
    ref = np.empty((1, 1), np.float32)
    REF.bgemm(x[:1], REF.bpack(w[:1]), np.zeros(1, np.float32), ref)
    assert ref[0, 0] == 0.0


@pytest.mark.parametrize("m,kt,nk", [(16, 16, 3), (3, 16, 1), (7, 5, 2), (1, 1, 4)])
def test_tdpbf16ps_tiles_equal_the_model(tprobe, m, kt, nk):
    """Accumulating tdpbf16ps over nk blocks into a non-zero C, odd tile shapes: bit for
    bit the model's."""
    rng = np.random.default_rng(m * 100 + kt * 10 + nk)
    Kp = 2 * kt * nk
    x = rng.standard_normal((m, Kp)) * 2.0 ** rng.integers(-10, 10, (m, Kp))
    w = rng.standard_normal((16, Kp)) * 2.0 ** rng.integers(-10, 10, (16, Kp))
    A, Wb = bf16_bits(x), bf16_bits(w)
    B = Wb.reshape(16, Kp // 2, 2).transpose(1, 0, 2).reshape(Kp // 2, 32)
    C0 = rng.standard_normal((m, 16)).astype(np.float32)
    got = run_tdp(tprobe, C0, A, B, kt)
    want = C0
    for b in range(nk):
        want = tdpbf16ps.tdpbf16ps(want, A[:, 2 * kt * b:2 * kt * (b + 1)],
                                   B[kt * b:kt * (b + 1)])
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def bf16_case(M, K, N, seed):
    """x, w of many magnitudes (2^-8 .. 2^8) with cancelling columns, bias, res."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((M, K)) * 2.0 ** rng.integers(-8, 8, (M, K))).astype(np.float32)
    w = (rng.standard_normal((N, K)) * 2.0 ** rng.integers(-8, 8, (N, K))).astype(np.float32)
    if K > 1:
        w[0, 1::2] = -w[0, 0:K - 1:2]  # column 0: pairs that cancel when x is flat
        x[0] = 1.0
    return (x, w, rng.standard_normal(N, dtype=np.float32),
            rng.standard_normal((M, N), dtype=np.float32))


def bge_bound(xb, wb):
    """csrc/bge.h's bound of the amx (and neonbf16) level from the reference, per output:
    1.01 (2 Kp + 2) 2^-24 sum_k |xb wb| + 4 Kp 2^-126."""
    Kp = xb.shape[1]
    A = np.abs(fp.bf16_to_f32(xb).astype(np.float64)) @ np.abs(fp.bf16_to_f32(wb).astype(
        np.float64)).T
    return 1.01 * (2 * Kp + 2) * 2.0**-24 * A + 4 * Kp * 2.0**-126


def check_bf16_outputs(got, i, x, w, xb, wb, bias, res, what):
    """Case i's outputs: the sums (bias 0) bit for bit the SDM model and within bge.h's bound
    of the reference; bias and residual bit for bit the model's sums plus them; GELU within
    the vector GELU's bound. Returns the residual output expected."""
    M, N = x.shape[0], w.shape[0]
    model = tdpbf16ps.gemm(xb, wb, 32)
    s = got[f"sum{i}"]
    want = (model + np.float32(0)).astype(np.float32)
    assert np.array_equal(s.view(np.int32), want.view(np.int32)), (
        f"{what}: {(s != want).sum()} sums differ from the SDM model")
    ref = np.empty((M, N), np.float32)
    REF.bgemm(x, REF.bpack(w), np.zeros(N, np.float32), ref)
    d = np.abs(s.astype(np.float64) - ref)
    assert np.all(d <= bge_bound(xb, wb)), f"{what}: past bge.h's bound"
    b = (model + bias).astype(np.float32)
    assert np.array_equal(got[f"bias{i}"].view(np.int32), b.view(np.int32)), what
    r = (b + res).astype(np.float32)
    assert np.array_equal(got[f"residual{i}"].view(np.int32), r.view(np.int32)), what
    g = 0.5 * b.astype(np.float64) * (1 + np.vectorize(math.erf)(b / math.sqrt(2)))
    assert np.all(np.abs(got[f"gelu{i}"] - g) <= 2e-7 * np.abs(b) + 1e-37), what
    return r


def test_bf16_pass_equals_the_sdm_model_and_is_within_the_bound(bprobe):
    """pass_amx over whole GEMMs (row tails with their own tile configuration, a Kp % 32
    tail in zero-filled tiles, 1-3 column blocks): the sums are the model's bit for bit
    (tdpbf16ps per 32 k, zero-filled last chunk), the epilogues add bias and res in fp32 as
    the model says (GELU within the vector GELU's bound), and the sums lie within bge.h's
    bound of the reference's."""
    if "avx512bf16" not in _kernels.usable_isas():
        pytest.skip("avx512bf16 not usable here: it packs the 48-column bf16 panels")
    pk = _kernels.Kernels("avx512bf16")
    job, cases = Job(bprobe), {}
    for i, (M, K, N) in enumerate(BF16_SHAPES):
        x, w, bias, res = bf16_case(M, K, N, i)
        Kp = K + K % 2
        xb = np.zeros((M, Kp), np.uint16)
        xb[:, :K] = bf16_bits(x)
        wb = np.zeros((N, Kp), np.uint16)
        wb[:, :K] = bf16_bits(w)
        args = [job.put(xb), M, Kp, job.put(pk.bpack(w).data)]
        zero = np.zeros(N, np.float32)
        job.call(OP_PASS, *args, job.put(zero), 0,
                 job.output(f"sum{i}", (M, N), np.float32, fill=F_SENT), EPI["bias"])
        for epi, code in EPI.items():
            job.call(OP_PASS, *args, job.put(bias), job.put(res) if epi == "residual" else 0,
                     job.output(f"{epi}{i}", (M, N), np.float32, fill=F_SENT), code)
        cases[i] = (x, w, bias, res, xb, wb)
    got = job.run()
    assert job.result["amx"].get("tdpbf16ps", 0) > 100
    for i, (M, K, N) in enumerate(BF16_SHAPES):
        x, w, bias, res, xb, wb = cases[i]
        check_bf16_outputs(got, i, x, w, xb, wb, bias, res, f"pass_amx {(M, K, N)}")


# ---------------------------------------------------------------------------------------
# bf16: the whole slot through the shared driver, the self-check, the peak loop
# ---------------------------------------------------------------------------------------

# the shared driver and what it calls, compiled as setup.py compiles csrc/ without -fopenmp
SLOT_SOURCES = ("gemm_driver.c", "schedule.c", "check.c", "pack.c", "ref/bgemm.c")
OP_BPACK, OP_SLOT, OP_CHECK, OP_DOT = 1, 2, 3, 4
ST_OK, ST_ARG, ST_SCRATCH, ST_PACKING = 0, 1, 2, 3  # bge.h
# (M, K, N): M < 16, M = 19 (the self-check's: a full row tile and 3 rows), 33 (three row
# tiles); K odd, K % 32 != 0 (a zero-filled last chunk), K = 1; N % 48 != 0 (1, 2 or 3
# blocks of the last panel), several panels
SLOT_SHAPES = [(1, 1, 1), (3, 33, 17), (19, 70, 53), (16, 95, 96), (33, 130, 150)]


@pytest.fixture(scope="module")
def sprobe():
    return build_file("bgemm_slot_probe.c", sources=SLOT_SOURCES)


def bf16_pk():
    if "avx512bf16" not in _kernels.usable_isas():
        pytest.skip("avx512bf16 not usable here: it packs the 48-column bf16 panels")
    return _kernels.Kernels("avx512bf16")


def test_slot_probe_links_no_openmp(sprobe):
    """The driver files are compiled without -fopenmp: no libgomp entry is in the image (a
    reachable one would have failed the link), so nthreads = 1 runs the serial loops."""
    assert not [n for _, n in sprobe.symbols if "GOMP" in n or n.startswith("omp_")]
    names = {n for _, n in sprobe.symbols}
    assert {"bge_bf16_gemm_run", "bge_run_each", "bge_bf16_check_header",
            "agrees_with_reference", "bge_bf16_gemm__ref"} <= names


def test_bf16_slot_through_the_driver(sprobe):
    """bge_bf16_gemm__amx as the extension calls it (nthreads = 1) on weights packed by
    bge_bf16_pack__amx in the guest (the avx512bf16 level's bytes): the rows converted by
    vcvtneps2bf16 (denormal x taken as 0, ties to even: bge.h's bf16, the host's bits), the
    sums the SDM model's bit for bit and within bge.h's bound of the reference, every
    epilogue (residual also with res == out), scratch of exactly the size the slot states
    (ending at a page end), status 0, the tiles released after each call."""
    pk = bf16_pk()
    job, cases = Job(sprobe), {}
    for i, (M, K, N) in enumerate(SLOT_SHAPES):
        x, w, bias, res = bf16_case(M, K, N, 50 + i)
        x.flat[1::9] *= np.float32(2.0**-140)  # denormals (taken as 0) and tiny values
        x.flat[2::11] = np.float32(1.0 + 2.0**-8)  # a tie: rounds to 1.0 (even)
        x.flat[3::11] = np.float32(1.0 + 3 * 2.0**-8)  # a tie: rounds up to 1 + 2^-6
        nbytes = pk.bpacked_bytes(K, N)
        packed = job.output(f"packed{i}", (nbytes,), np.uint8, fill=0xA5)
        job.call(OP_BPACK, job.put(w), K, N, packed, job.output(f"pst{i}", (2,), np.int64))
        need = M * (K + K % 2) * 2
        xa, ba = job.put(x), job.put(bias)
        runs = [("sum", job.put(np.zeros(N, np.float32)), 0, EPI["bias"], None)]
        runs += [(e, ba, job.put(res) if e == "residual" else 0, c, None) for e, c in EPI.items()]
        runs.append(("inplace", ba, None, EPI["residual"], res))
        for name, b, r, code, init in runs:
            out = job.output(f"{name}{i}", (M, N), np.float32, fill=F_SENT, init=init)
            scratch = job.put(np.zeros(need, np.uint8), align_end=True)
            job.call(OP_SLOT, xa, M, K, N, packed, b, out if r is None else r, out, code,
                     scratch, need, 1, job.output(f"st{name}{i}", (2,), np.int64))
        cases[i] = (x, w, bias, res)
    got = job.run()
    assert job.result["configured"] == [False] * len(job.calls)
    for i, (M, K, N) in enumerate(SLOT_SHAPES):
        x, w, bias, res = cases[i]
        shape = (M, K, N)
        assert list(got[f"pst{i}"]) == [ST_OK, pk.bpacked_bytes(K, N)]
        assert np.array_equal(got[f"packed{i}"], np.frombuffer(pk.bpack(w).data, np.uint8)), (
            f"bge_bf16_pack__amx {shape}: not the 48-column panels' bytes")
        for name in ("sum", *EPI, "inplace"):
            assert list(got[f"st{name}{i}"]) == [ST_OK, M * (K + K % 2) * 2], (name, shape)
        Kp = K + K % 2
        xb = np.zeros((M, Kp), np.uint16)
        xb[:, :K] = bf16_bits(x)
        wb = np.zeros((N, Kp), np.uint16)
        wb[:, :K] = bf16_bits(w)
        r = check_bf16_outputs(got, i, x, w, xb, wb, bias, res, f"bf16_gemm__amx {shape}")
        assert np.array_equal(got[f"inplace{i}"].view(np.int32), r.view(np.int32)), shape
    assert job.result["amx"].get("tdpbf16ps", 0) > 100


def test_bf16_slot_rejects_what_the_reference_rejects(sprobe):
    """The driver's checks under the slot: each bad call returns bge.h's status (those the
    reference returns for it) and leaves out untouched; no tile is configured after."""
    pk = bf16_pk()
    M, K, N = 3, 33, 17
    x, w, bias, res = bf16_case(M, K, N, 7)
    job = Job(sprobe)
    xa, ba, ra = job.put(x), job.put(bias), job.put(res)
    pa, refp = job.put(pk.bpack(w).data), job.put(REF.bpack(w).data)
    other_k = job.put(pk.bpack(np.zeros((N, K + 2), np.float32)).data)
    need = M * (K + 1) * 2
    scratch = job.put(np.zeros(need, np.uint8))
    good = dict(x=xa, M=M, K=K, N=N, packed=pa, bias=ba, res=0, epi=EPI["bias"],
                scratch=scratch, nbytes=need, nt=1)
    bad = {
        "x null": (dict(x=0), ST_ARG), "M 0": (dict(M=0), ST_ARG), "N 0": (dict(N=0), ST_ARG),
        "bias null": (dict(bias=0), ST_ARG), "epilogue 3": (dict(epi=3), ST_ARG),
        "residual, res null": (dict(epi=EPI["residual"]), ST_ARG),
        "nthreads 0": (dict(nt=0), ST_ARG),
        "reference packing": (dict(packed=refp), ST_PACKING),
        "packed for another K": (dict(packed=other_k), ST_ARG),
        "scratch null": (dict(scratch=0), ST_SCRATCH),
        "scratch 1 byte short": (dict(nbytes=need - 1), ST_SCRATCH),
    }
    for j, (name, (change, _)) in enumerate(bad.items()):
        a = {**good, **change}
        out = job.output(f"out{j}", (M, N), np.float32, fill=F_SENT)
        job.call(OP_SLOT, a["x"], a["M"], a["K"], a["N"], a["packed"], a["bias"], a["res"],
                 out, a["epi"], a["scratch"], a["nbytes"], a["nt"],
                 job.output(f"st{j}", (2,), np.int64))
    got = job.run()
    assert job.result["configured"] == [False] * len(bad)
    for j, (name, (_, status)) in enumerate(bad.items()):
        assert got[f"st{j}"][0] == status, name
        assert np.all(got[f"out{j}"] == F_SENT), f"{name}: out written"
    assert "tdpbf16ps" not in job.result["amx"]


HEAP_BYTES = 256 * 1024


def run_check(probe, heap_bytes=HEAP_BYTES):
    """agrees_with_reference() in the guest: (its value, heap bytes it took, the job)."""
    job = Job(probe)
    heap = job.put(np.zeros(heap_bytes, np.uint8), align_end=True)
    job.call(OP_CHECK, heap, heap_bytes, job.output("r", (2,), np.int64))
    r = job.run()["r"]
    return int(r[0]), int(r[1]), job


def test_self_check_agrees_with_the_reference(sprobe):
    """The check the overlay runs before it offers the level's GEMM (19 x 70 x 53, bias,
    nthreads = 1, the reference run in the same guest) passes on the SDM's tdpbf16ps, and
    returns the tiles released; with a heap too small for its buffer it returns 0."""
    ok, used, job = run_check(sprobe)
    assert ok == 1
    assert 0 < used <= HEAP_BYTES
    assert job.result["configured"] == [False]
    assert job.result["amx"].get("tdpbf16ps", 0) == 2 * 3 * 4  # 2 row tiles, 3 chunks, 3 + 1 blocks
    assert run_check(sprobe, 4096)[:2] == (0, 0)


def test_self_check_fails_on_a_broken_kernel(sprobe):
    """bgemm.c built against a copy of amx.h (in the build folder, never the tree; the copy
    is found first, beside a copy of bgemm.c) whose third B tile reads the second block's
    columns ((b) + 64 for (b) + 128): the same check returns 0, so it can fail; the
    allocation is the same as the good kernel's."""
    amx_dir = CSRC / "x86" / "amx"
    header = (amx_dir / "amx.h").read_text()
    good_line = "_tile_loadd(6, (b) + 128, (ldb));"
    assert header.count(good_line) == 1
    broken = amx_build._build_dir() / "broken-b-offset"
    broken.mkdir(exist_ok=True)
    (broken / "amx.h").write_text(header.replace(good_line, "_tile_loadd(6, (b) + 64, (ldb));"))
    (broken / "bgemm.c").write_text((amx_dir / "bgemm.c").read_text())
    bad = build_file("bgemm_slot_probe.c", name="bgemm_slot_broken", sources=SLOT_SOURCES,
                     extra_flags=(f'-DBGEMM_SOURCE="{broken / "bgemm.c"}"', "-I", str(amx_dir)))
    _, used_good, _ = run_check(sprobe)
    ok, used, _ = run_check(bad)
    assert ok == 0
    assert used == used_good


def test_dot_loop_counts_its_flops_and_releases_the_tiles(sprobe):
    """bge_bf16_dot_loop__amx(iters): 4 tdpbf16ps per iteration, returns their flops
    (2 x 4 x 16 x 16 x 32 x iters), the tiles released after."""
    iters = [1, 2, 5]
    job = Job(sprobe)
    for n in iters:
        job.call(OP_DOT, n, job.output(f"f{n}", (1,), np.float64))
    got = job.run()
    for n in iters:
        assert got[f"f{n}"][0] == 2 * 4 * 16 * 16 * 32 * n
    assert job.result["configured"] == [False] * len(iters)
    assert job.result["amx"]["tdpbf16ps"] == 4 * sum(iters)
    assert job.result["amx"]["tilerelease"] == len(iters)
