"""Checkpoint loading: config.json, 1_Pooling/config.json and model.safetensors.

`load_checkpoint` validates a Hugging Face BERT folder and returns its config, its pooling
and its tensors as float32 numpy arrays, with Q, K and V fused into one (3H, H) weight.
Every failure is a `ModelFormatError` naming the file and, where one is at fault, the tensor.
"""

from __future__ import annotations

import json
import math
import os
import sys
from functools import cached_property
from typing import NamedTuple, Optional, Union

from ._lazy import numpy_on_first_use
from .errors import ModelFormatError

np = numpy_on_first_use(globals())

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# The Linear layers of an encoder layer, by the names Checkpoint.matrix takes.
MATMULS = ("qkv", "out", "up", "down")


# The records below are NamedTuples and a plain class, not dataclasses, and paths are
# strings, not pathlib's: `import dataclasses` with the classes it builds and `import pathlib`
# would count against the cold start, and nothing else on that path imports them.
FolderPath = Union[str, os.PathLike]


class BertConfig(NamedTuple):
    """The sizes of a BERT encoder, as its config.json gives them."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class LayerWeights(NamedTuple):
    """One encoder layer, in torch Linear layout (out_features, in_features)."""

    qkv_w: np.ndarray  # (3H, H): query, key, value stacked
    qkv_b: np.ndarray  # (3H,)
    out_w: np.ndarray  # (H, H)
    out_b: np.ndarray
    ln1_g: np.ndarray  # attention.output.LayerNorm
    ln1_b: np.ndarray
    up_w: np.ndarray  # (F, H) intermediate.dense
    up_b: np.ndarray
    down_w: np.ndarray  # (H, F) output.dense
    down_b: np.ndarray
    ln2_g: np.ndarray  # output.LayerNorm
    ln2_b: np.ndarray


class Checkpoint:
    """A BERT checkpoint: its config, pooling and the index of its tensors from the start
    (no numpy needed, so the engine can start loading the matmul weights before numpy is
    imported); the embeddings when first used; the layers read on demand by `layer(i)` so
    that a caller can pack one layer and drop it before reading the next (peak memory stays
    near one copy of the weights)."""

    def __init__(self, folder: FolderPath, config: BertConfig, pooling: str,
                 reader: "_TensorReader"):
        self.folder = folder
        self.config = config
        self.pooling = pooling  # the checkpoint's own: "cls" or "mean"
        self.reader = reader

    def __repr__(self) -> str:
        return f"Checkpoint({os.fspath(self.folder)!r}, pooling={self.pooling!r})"

    @cached_property
    def word(self) -> "WordTable":
        """The word embeddings (vocab, H), read row by row."""
        return self.reader.word_table("embeddings.word_embeddings.weight",
                                      (self.config.vocab, self.config.hidden))

    @cached_property
    def pos(self) -> np.ndarray:
        """The position embeddings (max_positions, H)."""
        return self.reader.get("embeddings.position_embeddings.weight",
                               (self.config.max_positions, self.config.hidden))

    @cached_property
    def type(self) -> np.ndarray:
        """The token type embeddings (type_vocab, H)."""
        return self.reader.get("embeddings.token_type_embeddings.weight",
                               (self.config.type_vocab, self.config.hidden))

    @cached_property
    def emb_ln_g(self) -> np.ndarray:
        return self.reader.get("embeddings.LayerNorm.weight", (self.config.hidden,))

    @cached_property
    def emb_ln_b(self) -> np.ndarray:
        return self.reader.get("embeddings.LayerNorm.bias", (self.config.hidden,))

    def _matrix_parts(self, name: str):
        """The tensors matmul `name` is read from, each with its (rows, K), stacked by rows
        (Q, K and V make one (3H, H) weight)."""
        H, F = self.config.hidden, self.config.intermediate
        parts = {
            "qkv": [(f"attention.self.{n}", (H, H)) for n in ("query", "key", "value")],
            "out": [("attention.output.dense", (H, H))],
            "up": [("intermediate.dense", (F, H))],
            "down": [("output.dense", (H, F))],
        }
        if name not in parts:
            raise ValueError(f"matrix: expected one of {list(parts)}, got {name!r}")
        return parts[name]

    def matrix_floats(self) -> int:
        """Floats of the largest matmul weight of a layer: the size of a `matrix` buffer."""
        return max(sum(r * c for _, (r, c) in self._matrix_parts(m))
                   for m in MATMULS)

    def matrix(self, i: int, name: str, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Weight `name` ("qkv", "out", "up" or "down") of encoder layer i, (N, K) float32
        in torch Linear layout, read into the start of `out` (a float32 buffer of at least
        `matrix_floats()`; the result is a view of it) or into a new array."""
        parts = self._matrix_parts(name)
        N, K = sum(r for _, (r, _c) in parts), parts[0][1][1]
        if out is None:
            out = np.empty(N * K, dtype=np.float32)
        elif out.dtype != np.float32 or out.ndim != 1 or out.size < N * K:
            raise ValueError(f"out: expected a flat float32 buffer of at least {N * K}")
        w = out[:N * K].reshape(N, K)
        row = 0
        for tensor, (r, c) in parts:
            self.reader.get(f"encoder.layer.{i}.{tensor}.weight", (r, c), w[row:row + r])
            row += r
        return w

    def matrix_sources(self, i: int, name: str):
        """Where weight `name` of layer i lies in the file, for `Kernels.load_packed`:
        ([(byte offset, rows), ...] of the tensors stacked by rows, (N, K)); the list is None
        when a tensor's bytes are not float32 as they lie (float16, or a big-endian host),
        which `matrix` reads instead. Raises ModelFormatError as `matrix` would for a missing
        tensor, a wrong shape or dtype."""
        parts = self._matrix_parts(name)
        N, K = sum(r for _, (r, _c) in parts), parts[0][1][1]
        offsets = [self.reader.f32_offset(f"encoder.layer.{i}.{tensor}.weight", (r, c))
                   for tensor, (r, c) in parts]
        if None in offsets:
            return None, (N, K)
        return [(o, r) for o, (_t, (r, _c)) in zip(offsets, parts)], (N, K)

    def matrix_tensor(self, i: int, name: str, part: int) -> str:
        """The file's name of part `part` of weight `name` of layer i (for error messages)."""
        tensor = self._matrix_parts(name)[part][0]
        return self.reader.full_name(f"encoder.layer.{i}.{tensor}.weight")

    def biases(self, i: int) -> dict:
        """Encoder layer i's biases and LayerNorm vectors, by LayerWeights field name."""
        H, F = self.config.hidden, self.config.intermediate
        p = f"encoder.layer.{i}."

        def get(name, n):
            return self.reader.get(p + name, (n,))

        return dict(
            qkv_b=np.concatenate([get(f"attention.self.{n}.bias", H)
                                  for n in ("query", "key", "value")]),
            out_b=get("attention.output.dense.bias", H),
            ln1_g=get("attention.output.LayerNorm.weight", H),
            ln1_b=get("attention.output.LayerNorm.bias", H),
            up_b=get("intermediate.dense.bias", F),
            down_b=get("output.dense.bias", H),
            ln2_g=get("output.LayerNorm.weight", H),
            ln2_b=get("output.LayerNorm.bias", H),
        )

    def layer(self, i: int) -> LayerWeights:
        """Encoder layer i, every tensor in new arrays."""
        return LayerWeights(qkv_w=self.matrix(i, "qkv"), out_w=self.matrix(i, "out"),
                            up_w=self.matrix(i, "up"), down_w=self.matrix(i, "down"),
                            **self.biases(i))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return data


def check_folder(folder: FolderPath) -> None:
    """Raises ModelFormatError naming the first required file the folder lacks."""
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise ModelFormatError(
                f"{folder}: missing {name}; a model folder in the Hugging Face layout holds "
                f"{', '.join(REQUIRED_FILES)} (and optionally 1_Pooling/config.json)")


def load_config(folder: FolderPath) -> BertConfig:
    """Reads and validates config.json: a BERT encoder with absolute positions and erf GELU."""
    path = os.path.join(folder, "config.json")
    c = _read_json(path)

    def refuse(key, why):
        raise ModelFormatError(f"{path}: {key} = {c.get(key)!r}: {why}")

    if c.get("model_type") != "bert":
        refuse("model_type", "only BERT encoders ('bert') run here")
    if c.get("position_embedding_type", "absolute") != "absolute":
        refuse("position_embedding_type", "only 'absolute' positions are supported")
    if c.get("hidden_act", "gelu") != "gelu":
        refuse("hidden_act", "only 'gelu' (the exact erf GELU) is supported")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        refuse("is_decoder", "decoders and cross-attention are not supported")

    def size(key, default=None):
        v = c.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            refuse(key, "expected a positive integer")
        return v

    hidden, heads = size("hidden_size"), size("num_attention_heads")
    if hidden % heads:
        refuse("num_attention_heads", f"does not divide hidden_size {hidden}")
    eps = c.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        refuse("layer_norm_eps", "expected a number in (0, 1)")
    return BertConfig(
        hidden=hidden,
        layers=size("num_hidden_layers"),
        heads=heads,
        intermediate=size("intermediate_size"),
        vocab=size("vocab_size"),
        max_positions=size("max_position_embeddings"),
        type_vocab=size("type_vocab_size", 2),
        eps=float(eps),
    )


def load_pooling(folder: FolderPath) -> str:
    """The checkpoint's pooling from 1_Pooling/config.json ("cls" or "mean"); "mean" without it."""
    path = os.path.join(folder, "1_Pooling", "config.json")
    if not os.path.isfile(path):
        return "mean"
    c = _read_json(path)
    modes = [k for k, v in c.items() if k.startswith("pooling_mode_") and v is True]
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    raise ModelFormatError(
        f"{path}: pooling {modes or 'none'} is not supported; expected exactly one of "
        "pooling_mode_cls_token or pooling_mode_mean_tokens")


class WordTable:
    """The word-embedding table (vocab, H), of which a batch needs only a few rows.

    Stored as float32, it stays in the file: `rows` reads the rows a batch uses with pread
    into a fresh buffer. Mapping the table instead would make every row read resident, and
    more: the kernel maps whole page-cache folios around each fault, many times the rows'
    own bytes for a few hundred distinct tokens. Stored otherwise (float16), it is
    held in memory as float32.
    """

    def __init__(self, path: str, offset: int, shape: tuple, table: np.ndarray = None):
        self.shape = shape
        self._table = table
        self._fd = None if table is not None else os.open(path, os.O_RDONLY)
        self._offset = offset

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), H) float32: the rows of `ids`, each in [0, vocab)."""
        vocab, H = self.shape
        listed = ids.tolist()
        if listed and (min(listed) < 0 or max(listed) >= vocab):
            raise ValueError(f"ids: every id must be in [0, {vocab})")
        if self._table is not None:
            return self._table[ids]
        out = np.empty((ids.shape[0], H), dtype=np.float32)
        flat = out.reshape(-1).view(np.uint8)
        row_bytes = 4 * H
        for j, i in enumerate(listed):
            got = os.preadv(self._fd, [flat[j * row_bytes:(j + 1) * row_bytes]],
                            self._offset + i * row_bytes)
            if got != row_bytes:
                raise ModelFormatError(f"word embeddings: short read at row {i}")
        if sys.byteorder != "little":
            out.byteswap(inplace=True)
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


# safetensors' dtype codes, named as numpy names them
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool"}


class _TensorReader:
    """Reads named tensors from model.safetensors, with or without the 'bert.' prefix.

    The tensors are listed from the file's header (an 8-byte little-endian length, then that
    much JSON with each tensor's dtype, shape and byte offsets), read here without numpy so
    that `Kernels.load_packed` can start on the matmul weights at once: it reads only the
    ranges the header gives, and checks every read and value. `safetensors` checks the whole
    file (offsets, sizes) before the first tensor is read here (`get`, `word_table`).
    Float32 tensors are read with pread from their own byte ranges straight into the
    caller's buffer: the loader reads each weight into a buffer of its thread's, reused
    matrix after matrix, so loading neither maps the file (no page faults, no file pages left
    resident) nor holds more than a matrix per thread beyond the packed weights. Other dtypes
    (float16) go through safetensors' own reader.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                if not 2 <= header_len <= os.fstat(fh.fileno()).st_size - 8:
                    raise ValueError(f"a header of {header_len} bytes does not fit the file")
                header = json.loads(fh.read(header_len))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from None
        self._header = header
        self._names = {n for n in header if n != "__metadata__"}
        self._checked = False
        self._data_start = 8 + header_len
        self._fd = os.open(path, os.O_RDONLY)  # shared by the loading threads (pread)
        prefixed = any(n.startswith("bert.") for n in self._names)
        self._prefix = ("bert." if prefixed and "embeddings.word_embeddings.weight"
                        not in self._names else "")

    def _check_file(self) -> None:
        """Has safetensors validate the whole file once (it imports numpy)."""
        if self._checked:
            return
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as f:
                names = set(f.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFormatError(
                f"{self.path}: not a readable safetensors file ({exc})") from None
        if names != self._names:
            raise ModelFormatError(f"{self.path}: not a readable safetensors file (its "
                                   "header lists other tensors than safetensors reads)")
        self._checked = True

    def word_table(self, name: str, shape: tuple) -> WordTable:
        """The table `name` (vocab, H), left in the file when it is float32."""
        self._check_file()
        full = self._prefix + name
        info = self._header.get(full)
        if isinstance(info, dict) and info.get("dtype") == "F32" and \
                tuple(info.get("shape", ())) == shape:
            return WordTable(self.path, self._data_start + info["data_offsets"][0], shape)
        return WordTable(self.path, 0, shape, table=self.get(name, shape))

    @property
    def fd(self) -> int:
        """The file, open for pread by any thread."""
        return self._fd

    def full_name(self, name: str) -> str:
        """`name` as the file spells it (with the 'bert.' prefix where it has one)."""
        return self._prefix + name

    def _info(self, name: str, shape: tuple) -> dict:
        """The header entry of tensor `name`, checked for presence, shape and a dtype that
        loads (float32 or float16)."""
        full = self._prefix + name
        info = self._header.get(full)
        if full not in self._names or not isinstance(info, dict):
            raise ModelFormatError(f"{self.path}: tensor {full!r} is missing")
        if tuple(info.get("shape", ())) != shape:
            raise ModelFormatError(
                f"{self.path}: tensor {full!r} has shape {tuple(info.get('shape', ()))}; "
                f"expected {shape}")
        if info.get("dtype") not in ("F32", "F16"):
            code = str(info.get("dtype"))
            raise ModelFormatError(
                f"{self.path}: tensor {full!r} has dtype {_DTYPE_NAMES.get(code, code)} "
                f"({code}); expected float32 or float16")
        return info

    def f32_offset(self, name: str, shape: tuple) -> Optional[int]:
        """The file offset of tensor `name` (checked as `get` checks it) when its bytes are
        the float32 values themselves (float32 on a little-endian host), else None; its
        values are not checked here (`Kernels.load_packed` checks them as it reads)."""
        info = self._info(name, shape)
        if info["dtype"] != "F32" or sys.byteorder != "little":
            return None
        start, end = info["data_offsets"]
        if end - start != 4 * math.prod(shape):
            raise ModelFormatError(f"{self.path}: tensor {self._prefix + name!r} is cut short")
        return self._data_start + start

    def get(self, name: str, shape: tuple, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Tensor `name` as float32 `shape`, checked for presence, dtype, shape and NaN or
        infinity; read into `out` (C-contiguous float32 `shape`) when given, else into a new
        array. Float32 tensors are read with one pread from their byte range: no mapping, so
        no page faults on the file and nothing of it left resident."""
        self._check_file()
        full = self._prefix + name
        info = self._info(name, shape)
        a = np.empty(shape, dtype=np.float32) if out is None else out
        if info.get("dtype") == "F32":
            start, end = info["data_offsets"]
            flat = a.reshape(-1).view(np.uint8)
            got = os.preadv(self._fd, [flat], self._data_start + start)
            if got != flat.nbytes or end - start != flat.nbytes:
                raise ModelFormatError(f"{self.path}: tensor {full!r} is cut short")
            if sys.byteorder != "little":
                a.byteswap(inplace=True)
        else:  # F16
            from safetensors import safe_open

            with safe_open(str(self.path), framework="numpy") as f:
                a[...] = f.get_tensor(full)
        # min and max carry any NaN or infinity, in two passes with no temporary
        if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
            raise ModelFormatError(f"{self.path}: tensor {full!r} holds NaN or infinity")
        return a

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def load_checkpoint(folder: FolderPath) -> Checkpoint:
    """Opens a BERT checkpoint folder in the Hugging Face layout: its config and pooling
    validated and its tensors indexed now, without numpy; the file checked whole by
    safetensors before the first tensor is read through numpy (see _TensorReader)."""
    check_folder(folder)
    cfg = load_config(folder)
    pooling = load_pooling(folder)
    return Checkpoint(folder=folder, config=cfg, pooling=pooling,
                      reader=_TensorReader(os.path.join(folder, "model.safetensors")))
