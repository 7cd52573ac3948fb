"""One emulated x86-64 CPU (bochscpu, Bochs's CPU as a library) that runs a probe's
probe_entry(args) and returns, with the AMX unit of amx_unit.py trapped in.

The guest: long mode, ring 0, flat segments, 4-level page tables with 4 KB pages that map
every guest address to the same physical address; only the pages the run uses are present
(VA 0 .. 2 MB never is: a call through a null or unresolved pointer faults). CR0 PE/PG/NE/MP
(no EM/TS), CR4 PAE/OSFXSR/OSXMMEXCPT/OSXSAVE, XCR0 = x87 | SSE | AVX | AVX-512 (opmask,
ZMM_Hi256, Hi16_ZMM) | AMX (XTILECFG 17, XTILEDATA 18), MXCSR 0x1F80. The CPU model is
Bochs's Sapphire Rapids (AVX-512 VNNI, BF16, FP16).
A call: RSP at the top of the stack with the return address SENTINEL pushed, RDI = the args
block; the run ends when RIP reaches SENTINEL (a page holding `hlt`, whose hook stops the
CPU). Any exception is a GuestFault naming the vector, the error code, CR2 for a page fault
and the faulting instruction (address, function, text), except the #UD of an AMX
instruction, which the AMX unit executes before the run resumes after it.

This module imports bochscpu; it runs in the worker process (worker.py), never in pytest's.
"""

from __future__ import annotations

import ctypes
import struct

import bochscpu
import bochscpu.cpu
import bochscpu.memory as bxmem

from .amx_unit import AmxFault, AmxUnit
from .job import HEAP_LIMIT, PAGE

PML4, PDPT, PD, PT0 = 0x1000, 0x2000, 0x3000, 0x10000  # physical only (VA < 2 MB unmapped)
MAPPED_LIMIT = HEAP_LIMIT   # page tables cover VA 0 .. 64 MB (32 page tables)
SENTINEL = 0x3FF000         # the return address: a page holding hlt
STACK_TOP = 0x480000        # 256 KB of stack below it
STACK_BYTES = 0x40000
MAX_TRAPS = 2_000_000       # AMX instructions in one call: past it the call is stuck

VECTORS = {0: "#DE divide error", 1: "#DB debug", 3: "#BP breakpoint", 4: "#OF overflow",
           5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
           8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
           12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
           16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
           19: "#XM SIMD floating-point", 21: "#CP control protection"}

# bochscpu-python 0.4.0's cpu.model enum is Bochs 3.0's cpudb order (its own list of names
# is out of date, so the index is set): 30 = sapphire_rapids.
SAPPHIRE_RAPIDS = 30
_model_set = False


class GuestFault(Exception):
    """The guest raised an exception (or reached memory outside its buffers)."""


def _select_cpu_model():
    """Bochs builds a CPU's CPUID model when the CPU is created: set the model first, once."""
    global _model_set
    if _model_set:
        return
    lib = ctypes.CDLL(bochscpu._bochscpu.__file__)
    lib.sim_get_param_enum.restype = ctypes.c_void_p
    lib.sim_get_param_enum.argtypes = [ctypes.c_char_p]
    param = lib.sim_get_param_enum(b"cpu.model")
    set_range = getattr(lib, "_ZN14bx_param_num_c9set_rangeEmm")
    set_range.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    set_value = getattr(lib, "_ZN15bx_param_enum_c3setEl")
    set_value.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    set_range(param, 0, SAPPHIRE_RAPIDS)
    set_value(param, SAPPHIRE_RAPIDS)
    _model_set = True


class Memory:
    """Guest physical pages (host pages from bochscpu), identity-mapped by the page tables."""

    def __init__(self):
        self.hva = {}

    def back(self, addr, nbytes):
        """Makes the pages over [addr, addr + nbytes) present (zeroed)."""
        for page in range(addr & ~(PAGE - 1), addr + nbytes, PAGE):
            if page not in self.hva:
                h = bxmem.allocate_host_page()
                if not h:
                    raise MemoryError("bochscpu could not allocate a host page")
                ctypes.memset(h, 0, PAGE)
                bxmem.page_insert(page, h)
                self.hva[page] = h

    def write(self, addr, data):
        data = memoryview(bytes(data))
        while len(data):
            page, off = addr & ~(PAGE - 1), addr & (PAGE - 1)
            n = min(len(data), PAGE - off)
            if page not in self.hva:
                raise AmxFault(f"#PF: write of unmapped guest memory at {addr:#x}")
            ctypes.memmove(self.hva[page] + off, bytes(data[:n]), n)
            data, addr = data[n:], addr + n

    def read(self, addr, nbytes):
        out = bytearray()
        while nbytes:
            page, off = addr & ~(PAGE - 1), addr & (PAGE - 1)
            n = min(nbytes, PAGE - off)
            if page not in self.hva:
                raise AmxFault(f"#PF: read of unmapped guest memory at {addr:#x}")
            out += ctypes.string_at(self.hva[page] + off, n)
            nbytes, addr = nbytes - n, addr + n
        return bytes(out)

    def page_tables(self):
        """PML4 -> PDPT -> PD -> 4 KB page tables; present: the backed pages >= 2 MB."""
        self.back(PML4, 3 * PAGE)
        npt = MAPPED_LIMIT >> 21
        self.back(PT0, npt * PAGE)
        self.write(PML4, struct.pack("<Q", PDPT | 3))
        self.write(PDPT, struct.pack("<Q", PD | 3))
        self.write(PD, b"".join(struct.pack("<Q", (PT0 + i * PAGE) | 3) for i in range(npt)))
        for page in self.hva:
            if (2 << 20) <= page < MAPPED_LIMIT:
                self.write(PT0 + (page >> 12) * 8, struct.pack("<Q", page | 3))

    def release(self):
        for page, h in self.hva.items():
            bxmem.page_remove(page)
            bxmem.release_host_page(h)
        self.hva.clear()


class Machine:
    """A guest with a probe loaded: call(args_addr) runs probe_entry once."""

    def __init__(self, probe, buffers):
        """probe: build.Probe; buffers: (addr, nbytes, data or None) to make present."""
        _select_cpu_model()
        self.probe = probe
        self.mem = Memory()
        self.mem.back(probe.base, probe.end - probe.base)
        self.mem.write(probe.base, probe.image)
        self.mem.back(SENTINEL, PAGE)
        self.mem.write(SENTINEL, b"\xf4")  # hlt
        self.mem.back(STACK_TOP - STACK_BYTES, STACK_BYTES)
        for addr, nbytes, data in buffers:
            self.mem.back(addr, nbytes)
            if data is not None:
                self.mem.write(addr, data)
        self.mem.page_tables()
        self.session = bochscpu.Session()
        self.session.missing_page_handler = self._missing_page
        self.amx = AmxUnit(self._reg, self.mem.read, self.mem.write)
        self.hook = bochscpu.Hook()
        self.hook.exception = self._exception
        self.hook.hlt = self._hlt
        self.event = None
        self.traps = 0

    # -- hooks (they record and stop; raising through Bochs is never safe) -----------------
    def _exception(self, sess, cpu_id, vector, error):
        if self.event is None:
            self.event = ("exception", int(vector), int(error), sess.cpu.rip, sess.cpu.cr2)
        sess.stop()

    def _hlt(self, sess, cpu_id):
        if self.event is None:
            self.event = ("hlt", sess.cpu.rip)
        sess.stop()

    def _missing_page(self, gpa):
        # never expected (every present page is backed); back it so Bochs can go on, and
        # report it after the run
        if self.event is None:
            self.event = ("missing", gpa)
        self.mem.back(gpa, 1)
        self.session.stop()

    def _reg(self, name):
        return getattr(self.session.cpu, name)

    # -- a call ----------------------------------------------------------------------------
    def _state(self, args_addr):
        st = bochscpu.State()
        bochscpu.cpu.set_long_mode(st)
        st.cr0 = (st.cr0 | 0x2) & ~0xC  # MP; no EM, no TS
        st.cr4 = st.cr4 | (1 << 9) | (1 << 10) | (1 << 18)  # OSFXSR, OSXMMEXCPT, OSXSAVE
        st.cr3 = PML4
        st.xcr0 = 0x7 | 0xE0 | (1 << 17) | (1 << 18)
        st.mxcsr = 0x1F80
        st.rflags = 0x2
        st.rsp = STACK_TOP - 8
        st.rip = self.probe.entry
        st.rdi = args_addr
        cs = bochscpu.Segment()
        cs.present, cs.selector, cs.base, cs.limit, cs.attr = True, 0x8, 0, 0xFFFFFFFF, 0x209B
        ds = bochscpu.Segment()
        ds.present, ds.selector, ds.base, ds.limit, ds.attr = True, 0x10, 0, 0xFFFFFFFF, 0xC093
        st.cs = cs
        st.ds = st.es = st.fs = st.gs = st.ss = ds
        return st

    def call(self, args_addr):
        self.mem.write(STACK_TOP - 8, struct.pack("<Q", SENTINEL))
        self.session.cpu.state = self._state(args_addr)
        while True:
            self.event = None
            self.session.run([self.hook])
            ev = self.event
            if ev is None:
                raise GuestFault("the CPU stopped with no event (Bochs shut down?) at RIP "
                                 + self.probe.where(self.session.cpu.rip))
            if ev[0] == "hlt":
                if ev[1] != SENTINEL + 1:
                    raise GuestFault(f"hlt at {self.probe.where(ev[1] - 1)}")
                return
            if ev[0] == "missing":
                raise GuestFault(f"access to unbacked guest memory at {ev[1]:#x}, RIP "
                                 f"{self.probe.where(self.session.cpu.rip)}")
            _, vector, error, rip, cr2 = ev
            insn = self.probe.amx.get(rip) if vector == 6 else None
            if insn is None:
                raise GuestFault(self._describe(vector, error, rip, cr2))
            try:
                self.amx.execute(insn)
            except AmxFault as e:
                raise GuestFault(f"{e} at {self.probe.where(insn.start)}: {insn.text}") from None
            self.traps += 1
            if self.traps > MAX_TRAPS:
                raise GuestFault(f"more than {MAX_TRAPS} AMX instructions in one call")
            # Bochs had advanced RIP past the instruction before raising #UD: go on there
            st = self.session.cpu.state
            st.rip = insn.end
            self.session.cpu.state = st

    def _describe(self, vector, error, rip, cr2):
        """The fault in words: Bochs reports RIP past a faulting instruction that it had
        decoded, so the instruction is the one that ends there (else the fetch failed at
        RIP itself: a jump or call to an address with no code)."""
        name = VECTORS.get(vector, f"vector {vector}")
        what = f"{name} (error code {error:#x})"
        if vector == 14:
            what += f", CR2 {cr2:#x}"
        found = self.probe.insns.get(rip)
        if found:
            start, text = found
            return f"{what} at {self.probe.where(start)}: {text}"
        return f"{what} at RIP {self.probe.where(rip)} (instruction fetch)"

    def close(self):
        self.mem.release()
