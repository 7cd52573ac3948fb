"""Loading (loader.py): every matmul weight packed into one aligned arena, the C path
(Kernels.load_packed) and the Python one (float16) giving the same bytes; the load starts
before numpy is imported and leaves no thread behind a failed engine."""

from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bge_engine import _kernels
from bge_engine.loader import MatmulLoad
from bge_engine.model import BertModel
from bge_engine.weights import MATMULS, load_checkpoint


def _model(ckpt, k, int8=(), threads=1):
    return BertModel(ckpt, k, MatmulLoad(k, ckpt, int8, threads))


def test_packed_weights_share_one_aligned_arena(minilm_path):
    ckpt = load_checkpoint(minilm_path)
    for int8 in ((), MATMULS):
        model = _model(ckpt, _kernels.Kernels(), int8, 2)
        datas = [getattr(layer, m).w.data for layer in model.layers for m in MATMULS]
        base = datas[0].base
        assert all(d.base is base for d in datas)  # one buffer behind every weight
        assert all(d.ctypes.data % 64 == 0 for d in datas)
        assert datas[0].ctypes.data % (2 << 20) == 0  # the arena starts on a 2 MiB page
        starts = sorted((d.ctypes.data, d.nbytes) for d in datas)
        assert all(a + n <= b for (a, n), (b, _) in zip(starts, starts[1:]))  # no overlap


def _arena(model) -> np.ndarray:
    """Every packed weight's bytes, layer by layer, one after another (not the padding
    between the arena's slots, which nothing writes)."""
    return np.concatenate([getattr(layer, m).w.data.view(np.uint8)
                           for layer in model.layers for m in MATMULS])


@pytest.mark.parametrize("int8", [(), MATMULS, ("up", "down")], ids=["fp32", "int8", "mixed"])
def test_load_packed_gives_the_bytes_of_pack_and_qpack(minilm_path, monkeypatch, int8):
    """Kernels.load_packed (read, check, quantise, pack in one call without the GIL) and the
    Python path (Checkpoint.matrix, then quantize_weight and qpack, or pack) fill the arena
    with the same bytes, on 1 and 3 threads."""
    ckpt = load_checkpoint(minilm_path)
    k = _kernels.Kernels()
    direct = [_arena(_model(ckpt, k, int8, t)) for t in (1, 3)]
    real = ckpt.matrix_sources
    calls = []

    def python_path(i, name):  # as for float16 tensors: read by Checkpoint.matrix
        calls.append((i, name))
        return None, real(i, name)[1]

    monkeypatch.setattr(ckpt, "matrix_sources", python_path)
    by_python = _arena(_model(ckpt, k, int8, 2))
    assert len(calls) == ckpt.config.layers * len(MATMULS)
    for a in direct:
        assert a.nbytes == by_python.nbytes
        assert np.array_equal(a, by_python)


def test_float16_checkpoint_loads_through_python(tmp_path, minilm_path):
    """A checkpoint whose weights are float16 loads (Checkpoint.matrix converts them), with
    the bits of a float32 file holding the same values."""
    tensors = load_file(str(minilm_path / "model.safetensors"))
    half = {n: (a.astype(np.float16) if n.endswith("dense.weight") else a)
            for n, a in tensors.items()}
    same = {n: a.astype(np.float32) for n, a in half.items()}
    folders = []
    for name, ts in (("f16", half), ("f32", same)):
        folder = tmp_path / name
        folder.mkdir()
        for item in minilm_path.iterdir():
            if item.is_file() and item.name != "model.safetensors":
                (folder / item.name).symlink_to(item)
        save_file(ts, str(folder / "model.safetensors"))
        folders.append(folder)
    k = _kernels.Kernels()
    ckpts = [load_checkpoint(f) for f in folders]
    assert ckpts[0].matrix_sources(0, "up")[0] is None  # float16: the Python path
    assert ckpts[1].matrix_sources(0, "up")[0] is not None
    for int8 in ((), MATMULS):
        a, b = (_arena(_model(c, k, int8, 2)) for c in ckpts)
        assert np.array_equal(a, b)


def test_run_on_threads_keeps_order_and_raises_the_error():
    from bge_engine.loader import run_on_threads

    assert run_on_threads(lambda i: i * i, 9, 3) == [i * i for i in range(9)]
    assert run_on_threads(lambda i: i, 0, 4) == []

    def boom(i):
        if i == 5:
            raise KeyError("layer 5")
        return i

    with pytest.raises(KeyError, match="layer 5"):
        run_on_threads(boom, 12, 2)


# ---------------------------------------------------------------------------------------
# The load starts before numpy is imported (the cold start's overlap)
# ---------------------------------------------------------------------------------------

def _run(code: str, *options: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, *options, "-c", code], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_bge_engine_leaves_numpy_out():
    out = _run("import sys, bge_engine; bge_engine.cpu_info(); "
               "print('numpy' in sys.modules)")
    assert out.split() == ["False"]


def test_the_cold_path_imports_neither_pathlib_nor_dataclasses(minilm_path):
    """Engine() up to the first vector imports no pathlib and no dataclasses (~9 ms of the
    cold start; neither numpy nor tokenizers needs them). Run without `site`: a development
    install's import hook imports pathlib in every process (site-packages and the package
    are put on the path by hand instead)."""
    import site

    import bge_engine

    root = os.path.dirname(os.path.dirname(os.path.abspath(bge_engine.__file__)))
    paths = [root] + site.getsitepackages()
    code = (f"import sys; sys.path[:0] = {paths!r}; import bge_engine; "
            f"bge_engine.Engine({str(minilm_path)!r}, threads=1).encode('hello'); "
            "print([m for m in ('pathlib', 'dataclasses') if m in sys.modules])")
    assert _run(code, "-S").split() == ["[]"]


def test_the_load_starts_on_the_main_thread_without_numpy(minilm_path):
    """load_checkpoint and MatmulLoad (which starts the loading threads) touch no numpy on
    the calling thread: an import of numpy there fails in this process; the loading thread
    may import it once its C work is done, and the weights are the ones BertModel packs."""
    out = _run(f"""
import sys, threading
class NoNumpyHere:  # refuses numpy to the main thread
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "numpy" and threading.current_thread() is threading.main_thread():
            raise ImportError("numpy imported on the main thread")
sys.meta_path.insert(0, NoNumpyHere())
from pathlib import Path
from bge_engine import _kernels
from bge_engine.loader import MatmulLoad
from bge_engine.model import BertModel
from bge_engine.weights import MATMULS, load_checkpoint
ckpt = load_checkpoint(Path({str(minilm_path)!r}))
for int8 in ((), MATMULS):
    load = MatmulLoad(_kernels.Kernels(), ckpt, int8, threads=2)
    load.join()
    del sys.meta_path[0]
    import numpy as np
    model = BertModel(ckpt, _kernels.Kernels(), load)
    k = _kernels.Kernels()
    again = BertModel(ckpt, k, MatmulLoad(k, ckpt, int8, threads=1))
    for a, b in zip(model.layers, again.layers):
        for m in MATMULS:
            assert np.array_equal(getattr(a, m).w.data, getattr(b, m).w.data)
    sys.meta_path.insert(0, NoNumpyHere())
print("same")
""")
    assert out.split() == ["same"]


def test_a_failed_engine_leaves_no_loading_thread(tmp_path, minilm_path):
    import threading

    from bge_engine import Engine, ModelFormatError

    folder = tmp_path / "m"
    folder.mkdir()
    for item in minilm_path.iterdir():
        if item.is_file() and item.name != "tokenizer.json":
            (folder / item.name).symlink_to(item)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        Engine(str(folder))
    assert not [t for t in threading.enumerate() if t.name == "bge-load"]
