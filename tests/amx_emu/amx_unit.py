"""The AMX unit the emulated CPU lacks: the tile registers and the AMX-TILE, AMX-INT8 and
AMX-BF16 instructions, executed in numpy as the Intel SDM states them.

bochscpu-python 0.4.0 is built without Bochs's AMX support (its Sapphire Rapids model
decodes every AMX opcode as #UD), so the machine (machine.py) traps each #UD, looks the
faulting instruction up in the probe's own disassembly (by the address it ends at: Bochs
has advanced RIP past an instruction when it raises #UD for it) and, when it is an AMX
instruction, executes it here on the guest's registers and memory, then resumes after it.
Every other instruction of the kernel runs on Bochs's CPU.

Instructions (AT&T, as objdump prints them): ldtilecfg, sttilecfg, tilerelease, tilezero,
tileloadd, tileloaddt1, tilestored, tdpbssd, tdpbsud, tdpbusd, tdpbuud, tdpbf16ps.
Checks of the SDM that make the real CPU raise #UD (no configuration, a tile beyond the
palette's, mismatched tile shapes, colsb not a multiple of 4) raise AmxFault here, which
the machine reports like any fault of the guest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import tdpbf16ps as bf16

TILES, ROWS, COLSB = 8, 16, 64

_MEM = re.compile(r"^(?P<disp>-?0x[0-9a-f]+|-?\d+)?\((?P<base>%\w+)?"
                  r"(?:,(?P<index>%\w+)(?:,(?P<scale>\d))?)?\)$")
_TMM = re.compile(r"^%tmm([0-7])$")
MNEMONICS = {"ldtilecfg", "sttilecfg", "tilerelease", "tilezero", "tileloadd", "tileloaddt1",
             "tilestored", "tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud", "tdpbf16ps"}


class AmxFault(Exception):
    """What makes a real AMX CPU raise #UD or #GP: the machine reports it as a guest fault."""


@dataclass(frozen=True)
class Mem:
    """An AT&T memory operand: disp(base, index, scale); base "rip" is the instruction's
    end."""
    disp: int
    base: str | None
    index: str | None
    scale: int


@dataclass(frozen=True)
class Insn:
    start: int
    end: int
    mnemonic: str
    operands: tuple  # ints (tile numbers) and Mem, in AT&T order (sources first)
    text: str


def _operand(s: str):
    s = s.strip()
    t = _TMM.match(s)
    if t:
        return int(t.group(1))
    m = _MEM.match(s)
    if not m:
        raise ValueError(f"unsupported AMX operand {s!r}")
    disp = m.group("disp")
    return Mem(int(disp, 0) if disp else 0, (m.group("base") or "%")[1:] or None,
               (m.group("index") or "%")[1:] or None, int(m.group("scale") or 1))


def decode(start: int, end: int, mnemonic: str, operands: str, text: str) -> Insn | None:
    """The AMX instruction objdump printed as `mnemonic operands`, or None for any other."""
    if mnemonic not in MNEMONICS:
        return None
    ops = tuple(_operand(o) for o in _split(operands)) if operands else ()
    return Insn(start, end, mnemonic, ops, text)


def _split(operands: str):
    """AT&T operands split at the commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in operands:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    return out + [cur]


class AmxUnit:
    """The tile state (palette 1: 8 tiles of up to 16 rows x 64 bytes) of one CPU.

    `regs(name)` reads a 64-bit general register; `read(addr, n)` and `write(addr, data)`
    access guest memory (raising AmxFault for an unmapped byte, as the CPU's #PF)."""

    def __init__(self, regs, read, write):
        self.regs, self.read, self.write = regs, read, write
        self.tiles = np.zeros((TILES, ROWS, COLSB), np.uint8)
        self.rows = [0] * TILES
        self.colsb = [0] * TILES
        self.configured = False
        self.executed = {}

    # -- helpers -----------------------------------------------------------------------
    def _addr(self, m: Mem, insn: Insn, with_index=True) -> int:
        """The operand's address; for tile loads and stores (with_index False) the first
        row's: base + disp, the index register being the stride (the SDM's sibmem)."""
        base = insn.end if m.base == "rip" else (self.regs(m.base) if m.base else 0)
        index = self.regs(m.index) * m.scale if m.index and with_index else 0
        return (base + index + m.disp) & (2**64 - 1)

    def _stride(self, m: Mem) -> int:
        if not m.index:  # tileloadd/tilestored need a SIB index: the stride
            raise AmxFault("#UD: tile load/store without an index register (the stride)")
        v = self.regs(m.index) * m.scale
        return v - 2**64 if v >= 2**63 else v

    def _tile(self, t: int) -> int:
        if not self.configured:
            raise AmxFault("#UD: tile instruction with no tile configuration loaded")
        if self.rows[t] == 0:
            raise AmxFault(f"#UD: tmm{t} is not configured (rows 0)")
        return t

    # -- instructions --------------------------------------------------------------------
    def execute(self, insn: Insn) -> None:
        self.executed[insn.mnemonic] = self.executed.get(insn.mnemonic, 0) + 1
        getattr(self, "_" + insn.mnemonic)(insn)

    def _ldtilecfg(self, insn):
        cfg = np.frombuffer(self.read(self._addr(insn.operands[0], insn), 64), np.uint8)
        palette, start_row = int(cfg[0]), int(cfg[1])
        if palette == 0:
            return self._tilerelease(insn)
        colsb = cfg[16:48].view(np.uint16)
        rows = cfg[48:64]
        if palette != 1 or start_row or cfg[2:16].any() or colsb[8:].any() or rows[8:].any():
            raise AmxFault(f"#GP: ldtilecfg palette {palette}, start_row {start_row} or "
                           "reserved bytes set")
        for t in range(TILES):
            if colsb[t] > COLSB or rows[t] > ROWS or (rows[t] == 0) != (colsb[t] == 0):
                raise AmxFault(f"#GP: ldtilecfg tmm{t} {rows[t]} rows x {colsb[t]} bytes")
        self.tiles[:] = 0
        self.rows = [int(r) for r in rows[:TILES]]
        self.colsb = [int(c) for c in colsb[:TILES]]
        self.configured = True

    def _sttilecfg(self, insn):
        cfg = np.zeros(64, np.uint8)
        if self.configured:
            cfg[0] = 1
            cfg[16:32] = np.array(self.colsb, np.uint16).view(np.uint8)
            cfg[48:56] = self.rows
        self.write(self._addr(insn.operands[0], insn), cfg.tobytes())

    def _tilerelease(self, insn):
        self.tiles[:] = 0
        self.rows, self.colsb = [0] * TILES, [0] * TILES
        self.configured = False

    def _tilezero(self, insn):
        self.tiles[self._tile(insn.operands[0])] = 0

    def _tileloadd(self, insn):
        mem, t = insn.operands
        t = self._tile(t)
        base, stride = self._addr(mem, insn, False), self._stride(mem)
        rows, colsb = self.rows[t], self.colsb[t]
        self.tiles[t] = 0  # rows past `rows` and bytes past colsb are zeroed
        for r in range(rows):
            self.tiles[t, r, :colsb] = np.frombuffer(self.read(base + r * stride, colsb),
                                                     np.uint8)

    _tileloaddt1 = _tileloadd

    def _tilestored(self, insn):
        t, mem = insn.operands
        t = self._tile(t)
        base, stride = self._addr(mem, insn, False), self._stride(mem)
        for r in range(self.rows[t]):
            self.write(base + r * stride, self.tiles[t, r, :self.colsb[t]].tobytes())

    def _shapes(self, insn):
        """(dst, src1, src2, m, kt, n) after the SDM's checks: AT&T order is src2, src1,
        dst."""
        src2, src1, dst = (self._tile(t) for t in insn.operands)
        if len({dst, src1, src2}) != 3:
            raise AmxFault(f"#UD: {insn.mnemonic} with a tile used twice")
        if any(self.colsb[t] % 4 for t in (dst, src1, src2)):
            raise AmxFault(f"#UD: {insn.mnemonic} colsb not a multiple of 4")
        m, n, kt = self.rows[dst], self.colsb[dst] // 4, self.colsb[src1] // 4
        if self.colsb[src2] // 4 != n or self.rows[src1] != m or self.rows[src2] != kt:
            raise AmxFault(f"#UD: {insn.mnemonic} tile shapes do not fit: dst {m}x{n}, "
                           f"src1 {self.rows[src1]}x{kt}, src2 {self.rows[src2]}x"
                           f"{self.colsb[src2] // 4} (rows x dwords)")
        return dst, src1, src2, m, kt, n

    def _dot_int8(self, insn, a_signed, b_signed):
        dst, src1, src2, m, kt, n = self._shapes(insn)
        a = self.tiles[src1, :m, :4 * kt].view(np.int8 if a_signed else np.uint8)
        b = self.tiles[src2, :kt, :4 * n].view(np.int8 if b_signed else np.uint8)
        a = a.astype(np.int64).reshape(m, kt, 4)
        b = b.astype(np.int64).reshape(kt, n, 4)
        c = self.tiles[dst, :m, :4 * n].view(np.int32).astype(np.int64)
        c = (c + np.einsum("mkr,knr->mn", a, b)) & 0xFFFFFFFF  # int32 wraparound
        self._put_dst(dst, m, n, c.astype(np.uint32).view(np.uint8))

    def _put_dst(self, dst, m, n, rows_bytes):
        self.tiles[dst, :m, :4 * n] = rows_bytes.reshape(m, 4 * n)
        self.tiles[dst, :m, 4 * n:] = 0
        self.tiles[dst, m:] = 0

    def _tdpbssd(self, insn):
        self._dot_int8(insn, True, True)

    def _tdpbsud(self, insn):
        self._dot_int8(insn, True, False)

    def _tdpbusd(self, insn):
        self._dot_int8(insn, False, True)

    def _tdpbuud(self, insn):
        self._dot_int8(insn, False, False)

    def _tdpbf16ps(self, insn):
        dst, src1, src2, m, kt, n = self._shapes(insn)
        A = self.tiles[src1, :m, :4 * kt].copy().view(np.uint16)
        B = self.tiles[src2, :kt, :4 * n].copy().view(np.uint16)
        C = self.tiles[dst, :m, :4 * n].copy().view(np.float32)
        out = bf16.tdpbf16ps(C, A, B)
        self._put_dst(dst, m, n, np.ascontiguousarray(out).view(np.uint8))
