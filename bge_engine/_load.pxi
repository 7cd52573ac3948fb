# The boundary of the weight loader (csrc/load.c): the arena it packs into and the one call
# that reads, checks and packs every weight. Included by _kernels.pyx (one extension module,
# one kernel table: `Kernels.load_packed` calls _load_packed with itself).

cdef char *_BYTE_FORMAT = "B"


cdef class Arena:
    """n bytes for packed weights (uint8, writable, through the buffer protocol) from
    bge_arena_alloc: on a 2 MiB boundary, huge pages asked for. Made without numpy, so that
    `Engine(...)` can start the load before numpy is imported; `np.frombuffer(arena,
    np.uint8)` views it, and the memory lives as long as any view."""

    cdef void *p
    cdef readonly size_t nbytes
    cdef Py_ssize_t shape[1]

    def __cinit__(self, size_t nbytes):
        if nbytes == 0:
            raise ValueError("nbytes: expected a positive size")
        self.p = bge_arena_alloc(nbytes)
        if self.p == NULL:
            raise MemoryError(f"cannot allocate a weight arena of {nbytes} bytes")
        self.nbytes, self.shape[0] = nbytes, <Py_ssize_t>nbytes

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf, view.obj, view.len = self.p, self, <Py_ssize_t>self.nbytes
        view.readonly, view.itemsize, view.ndim = 0, 1, 1
        view.format = _BYTE_FORMAT if flags & PyBUF_FORMAT else NULL  # NULL means "B" too
        view.shape, view.strides = self.shape, &view.itemsize
        view.suboffsets, view.internal = NULL, NULL

    def __dealloc__(self):
        bge_arena_free(self.p)


# a load job's dtype (its 4th field; True and False stand for "int8" and "fp32")
_KINDS = {False: BGE_LOAD_F32, True: BGE_LOAD_INT8, "fp32": BGE_LOAD_F32,
          "int8": BGE_LOAD_INT8, "bf16": BGE_LOAD_BF16}
# what went wrong with a job that did not load, and with one that was never started
LOAD_ERRORS = {BGE_LOAD_SHORT: "is cut short", BGE_LOAD_NONFINITE: "holds NaN or infinity",
               BGE_LOAD_PACK: "could not be packed", BGE_LOAD_IO: "could not be read"}
# what bge_load_packed found malformed in a job (it then starts none), with the job's fields
_BAD_JOB = {
    BGE_LOAD_BAD_KIND: "kind {3!r} is none of 'fp32', 'int8', 'bf16'",
    BGE_LOAD_BAD_PARTS: "expected 1 to {most} parts, got {n}",
    BGE_LOAD_BAD_SHAPE: "cannot pack shape ({1}, {2})",
    BGE_LOAD_BAD_ROWS: "expected parts of rows >= 1 at offsets >= 0, their rows summing to N = {1}",
    BGE_LOAD_BAD_SLOT: ("out_off {4} is not a 64-byte aligned slot of {size} bytes inside the "
                        "arena ({cap} bytes)")}


cdef object _load_packed(Kernels k, int fd, jobs, arena, threads):
    """Reads, checks and packs many weights from an open file (bge_load_packed: one C
    call, the GIL released, on `threads` threads, no numpy before the views it returns).

    Args:
        fd: the file (e.g. model.safetensors), read with pread.
        jobs: one (parts, N, K, kind, out_off) per weight (N, K) (bge_load_job): parts
            [(byte offset, rows)] of float32 tensors stacked by rows; kind "int8" (True)
            quantise and qpack, "bf16" bpack, "fp32" (False) pack; into arena[out_off:],
            64-byte aligned.
        arena: a writable C-contiguous uint8 buffer (an `Arena`), 64-byte aligned.

    Returns:
        (packed, errors): job i's Packed (a view of the arena) or None where it failed;
        (i, part, what) per failed job, `what` a phrase of LOAD_ERRORS.
    """
    cdef int nt = _threads(threads), st
    cdef Py_buffer v
    try:
        PyObject_GetBuffer(arena, &v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)
    except (TypeError, ValueError, BufferError):
        raise ValueError("arena: expected a writable C-contiguous uint8 buffer") from None
    cdef void *ap = v.buf
    cdef size_t cap = <size_t>v.len
    cdef bint bytes_ = v.itemsize == 1 and (v.format == NULL or v.format[0] in b"Bbc")
    PyBuffer_Release(&v)  # the caller holds arena through the call
    if not bytes_:
        raise ValueError("arena: expected a writable C-contiguous uint8 buffer")
    if cap == 0 or <uintptr_t>ap % 64:
        raise ValueError("arena: must be non-empty and start on a 64-byte boundary")
    cdef Py_ssize_t njobs = len(jobs), i, p
    if njobs == 0:
        return [], []
    cdef bge_load_job *js = <bge_load_job *>malloc(njobs * sizeof(bge_load_job))
    if js == NULL:
        raise MemoryError("load_packed: cannot allocate the jobs")
    try:
        for i in range(njobs):
            parts, N, K, kind, out_off = jobs[i]
            js[i].nparts, js[i].N, js[i].K, js[i].out_off = len(parts), N, K, out_off
            js[i].kind = _KINDS.get(kind, -1) if isinstance(kind, (bool, str)) else -1
            for p in range(min(len(parts), BGE_LOAD_MAX_PARTS)):
                js[i].off[p], js[i].rows[p] = parts[p]
        with nogil: st = bge_load_packed(k.t, fd, js, njobs, ap, cap, nt)
        if st == BGE_ERR_MEMORY:
            raise MemoryError("load_packed: cannot allocate the loading buffers")
        bad = [i for i in range(njobs) if js[i].status >= BGE_LOAD_BAD_PARTS]
        if st == BGE_ERR_ARG and bad:
            i = bad[0]
            raise ValueError(f"jobs[{i}]: " + _BAD_JOB[js[i].status].format(
                *jobs[i], cap=cap, size=bge_load_job_bytes(k.t, &js[i]),
                most=BGE_LOAD_MAX_PARTS, n=len(jobs[i][0])))
        _done(st, "load_packed", None)
        done = [(None if js[i].status == BGE_LOAD_OK
                 else LOAD_ERRORS.get(js[i].status, "was not read"), js[i].part,
                 bge_load_job_bytes(k.t, &js[i])) for i in range(njobs)]
    finally:
        free(js)
    return load_results(jobs, done, arena, k.isa)
