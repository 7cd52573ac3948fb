"""numpy, imported when a function first uses it rather than with bge_engine.

`Engine(...)` starts reading and packing the weights on its own threads (C, no numpy) before
anything needs numpy, so that numpy's import, a large part of a cold start, runs beside that
load instead of before it. A module that
uses numpy binds

    np = numpy_on_first_use(globals())

and uses `np` as usual: the first attribute looked up on it imports numpy and puts the
module itself in that module's globals, so every later use is plain numpy (`_kernels.pyx`
binds it the same way). Nothing at a module's top level may touch `np`.
"""

from __future__ import annotations


class _NumpyOnFirstUse:
    def __init__(self, module_globals: dict):
        self._globals = module_globals

    def __getattr__(self, name: str):
        import numpy

        self._globals["np"] = numpy
        return getattr(numpy, name)


def numpy_on_first_use(module_globals: dict):
    """A stand-in for numpy in the module whose globals() these are (see above)."""
    return _NumpyOnFirstUse(module_globals)
