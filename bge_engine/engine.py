"""Engine: owns a model's weights, tokenizer and workspaces; serves embed() and encode().

A call tokenises its texts, orders them by length, cuts them into ragged batches (at most
`batch_size` texts and `TOKEN_BUDGET` tokens each), runs the forward pass on each, pools,
and returns the rows in the caller's order. Every row depends only on its own text, so the
batching never changes a bit of the result.
"""

from __future__ import annotations

import os
import queue
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

from . import _kernels, hub, prompts, schema
from ._lazy import numpy_on_first_use
from .errors import InputTooLong, InvalidInput
from .log import logger
from .loader import MatmulLoad
from .model import BertModel
from .tokenizer import Tokenizer
from .weights import load_checkpoint

if TYPE_CHECKING:
    from pathlib import Path

np = numpy_on_first_use(globals())


# The most tokens one forward pass holds: bounds the workspace (about 14 MB for bge-small)
# while keeping batches large enough for the GEMMs (M = 1024 runs them at full speed).
TOKEN_BUDGET = 1024
DTYPES = ("fp32", "bf16", "int8")
# The Linear layers dtype="int8" runs in int8 (the others stay fp32); docs/design/int8.md.
INT8_MATMULS = ("qkv", "out", "up", "down")
# The Linear layers dtype="bf16" runs in bf16 (docs/bf16.md): all four; attention, LayerNorm,
# softmax, GELU and pooling stay fp32.
BF16_MATMULS = ("qkv", "out", "up", "down")


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """OMP_NUM_THREADS where it is a positive integer, else the cores this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return available_cores()


class Engine:
    """A loaded embedding model.

    Args:
        model: a local folder in the Hugging Face layout, or a hub id resolved through the
            Hugging Face cache or a download (see `bge_engine.hub`); None (the default):
            BGE_ENGINE_MODEL where it is set, else BAAI/bge-small-en-v1.5.
        dtype: "fp32" (matches PyTorch to float rounding), "bf16" (matmul inputs in bfloat16
            with fp32 sums; LayerNorm, softmax, GELU, attention and pooling in fp32) or
            "int8" (quantised matmuls; LayerNorm, softmax, GELU, attention and pooling stay
            fp32).
        threads: threads one call may use; default: OMP_NUM_THREADS, else the cores this
            process may run on.
        truncate: cut texts past the model's limit to it (with a logged warning), or raise
            InputTooLong when False.

    Raises:
        ModelNotFound: no folder, cached copy or download.
        ModelFormatError: the checkpoint is not a BERT encoder in the expected layout.
        InvalidInput: a bad dtype or threads (a ValueError).
        ValueError: a model that is no str or path-like.
    """

    def __init__(self, model: Union[str, os.PathLike, None] = None, *,
                 dtype: str = "fp32", threads: Optional[int] = None, truncate: bool = True):
        if dtype not in DTYPES:
            raise InvalidInput(f"dtype: expected one of {list(DTYPES)}, got {schema.show(dtype)}")
        if threads is None:
            threads = default_threads()
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise InvalidInput(
                f"threads: expected a positive int or None, got {schema.show(threads)}")
        if model is None:
            model = hub.default_model()
        self._folder = hub.locate(model)
        ckpt = load_checkpoint(self._folder)  # config, pooling, the tensors' index: no numpy
        # The hub id the model was loaded by (None for a local folder): it picks the built-in
        # bge query prompt.
        name = os.fspath(model)
        self._prompts = prompts.load(
            self._folder, None if os.path.isdir(os.path.expanduser(name)) else name)
        self.config = ckpt.config
        self.dtype, self.threads, self.truncate = dtype, threads, truncate
        self._pooling = ckpt.pooling
        kernels = _kernels.Kernels()
        # The matmul weights load on their own threads from here (C, no GIL, no numpy), so
        # that numpy's import, the tokenizer's build and the embeddings run beside the load on
        # this thread, which keeps a core to itself (docs/design/loading.md).
        loaders = max(1, min(threads, available_cores() - 1))
        matmuls = MatmulLoad(kernels, ckpt, INT8_MATMULS if dtype == "int8" else (), loaders,
                             bf16=BF16_MATMULS if dtype == "bf16" else ())
        try:
            self.tokenizer = Tokenizer(os.path.join(self._folder, "tokenizer.json"),
                                       ckpt.config.vocab)
            self._model = BertModel(ckpt, kernels, matmuls)
        finally:
            matmuls.join()  # a failed construction leaves no loading thread behind
        # Concurrent calls: at most cores // threads of them compute at once, so threads
        # never oversubscribe the cores. Each takes a slot from the queue (waiting while
        # none is free): a workspace, or None until the slot's first call makes one.
        self._slots = queue.SimpleQueue()
        for _ in range(max(1, available_cores() // threads)):
            self._slots.put(None)

    @property
    def folder(self) -> "Path":
        """The model's local folder (where `model` was found: a folder, the Hugging Face
        cache, or a download)."""
        from pathlib import Path  # here, not at import: see hub.py

        return Path(self._folder)

    @property
    def dim(self) -> int:
        """The embedding width (384 for bge-small)."""
        return self.config.hidden

    @property
    def max_tokens(self) -> int:
        """The most tokens a text may have, [CLS] and [SEP] included (512 for bge-small)."""
        return self.config.max_positions

    @property
    def pooling(self) -> str:
        """The checkpoint's own pooling ("cls" for bge, from 1_Pooling/config.json)."""
        return self._pooling

    def __repr__(self) -> str:
        return (f"Engine(model={self._folder!r}, dtype={self.dtype!r}, "
                f"threads={self.threads}, dim={self.dim}, pooling={self.pooling!r})")

    @property
    def prompts(self) -> Dict[str, str]:
        """The checkpoint's prompts, name -> text ("query" and "document" always; see
        `bge_engine.prompts`)."""
        return dict(self._prompts.prompts)

    def count_tokens(self, texts: Union[str, Sequence[str]], *, prompt: Optional[str] = None,
                     prompt_name: Optional[str] = None) -> List[int]:
        """Tokens each text has before truncation, [CLS] and [SEP] included, counted as
        `encode` with the same prompt arguments embeds it (the prompt's tokens included)."""
        texts = self._prompted(texts, prompt, prompt_name)[0]
        return [int(ids.shape[0]) for ids in self.tokenizer.encode(texts)]

    def embed(self, payload: dict) -> dict:
        """The Workers AI contract: {"text": ..., "pooling"?: ...} or {"requests": [...]}.

        Returns:
            {"shape": [n, dim], "data": [[...], ...], "pooling": ...}, or for the requests
            form {"responses": [{"id": i, "result": {...}, "success": True}, ...]}.

        Raises:
            InvalidInput: the payload breaks the contract (names the key or index).
            InputTooLong: a text over max_tokens on an engine made with truncate=False.
        """
        requests, batched = schema.parse(payload)
        replies = []
        for i, req in enumerate(requests):
            try:
                vectors = self._embed(req.texts, req.pooling, normalize=True, batch_size=None)
            except InputTooLong as exc:
                if not batched:
                    raise
                raise InputTooLong(f"requests[{i}].{exc}", index=exc.index,
                                   n_tokens=exc.n_tokens, limit=exc.limit) from None
            replies.append(schema.reply(vectors, req.pooling))
        return schema.batch_reply(replies) if batched else replies[0]

    def encode(self, texts: Union[str, Sequence[str], "np.ndarray"], *, batch_size: int = 32,
               pooling: Optional[str] = None, normalize: bool = True,
               prompt: Optional[str] = None, prompt_name: Optional[str] = None,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embeds texts, sentence-transformers style.

        Args:
            texts: a string, or a list, tuple or 1-D numpy array of strings (no limit on
                their number).
            batch_size: the most texts per forward pass.
            pooling: "cls" or "mean"; None for the checkpoint's own.
            normalize: L2-normalise each row.
            prompt: a string put before every text (its tokens count towards max_tokens).
            prompt_name: one of `self.prompts` (e.g. "query"), when `prompt` is None; with
                neither, the checkpoint's default prompt (config_sentence_transformers.json
                "default_prompt_name"), usually none.
            show_progress_bar: a tqdm bar over the texts on stderr.

        Returns:
            float32 array (n, dim); a bare string gives (dim,), [] gives (0, dim).

        Raises:
            InvalidInput: a bad text (named by index) or argument, an unknown prompt name.
            InputTooLong: a text over max_tokens, prompt included, with truncate=False.
        """
        texts, bare = self._prompted(texts, prompt, prompt_name)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidInput(f"batch_size: expected a positive int, got {schema.show(batch_size)}")
        if pooling is None:
            pooling = self._pooling
        if pooling not in schema.POOLINGS:
            raise InvalidInput(f"pooling: expected 'mean', 'cls' or None, got {schema.show(pooling)}")
        out = self._embed(texts, pooling, normalize=bool(normalize), batch_size=batch_size,
                          progress=show_progress_bar)
        return out[0] if bare else out

    def encode_query(self, texts: Union[str, Sequence[str], "np.ndarray"], **kwargs) -> np.ndarray:
        """`encode` with the checkpoint's "query" prompt (the retrieval instruction for bge
        `*-en-v1.5` loaded by hub id), unless `prompt` or `prompt_name` is given."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "query"
        return self.encode(texts, **kwargs)

    def encode_document(self, texts: Union[str, Sequence[str], "np.ndarray"],
                        **kwargs) -> np.ndarray:
        """`encode` with the checkpoint's document prompt (the first of "document", "passage",
        "corpus" it has; the empty prompt for bge), unless `prompt` or `prompt_name` is given."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = next(n for n in prompts.DOCUMENT_NAMES
                                         if n in self._prompts.prompts)
        return self.encode(texts, **kwargs)

    def hidden_states(self, text: str) -> List[np.ndarray]:
        """Every layer's output (embeddings first) for one text, (tokens, dim) each."""
        ids = self._tokenize([schema.check_text(text, "text")])[0]
        offsets = np.array([0, ids.shape[0]], dtype=np.int32)
        states: List[np.ndarray] = []
        with self._compute() as ws:
            self._model.forward(ids, offsets, ws, self.threads, hidden_states=states)
        return states

    # -- internals ------------------------------------------------------------------------

    def _prompted(self, texts, prompt: Optional[str], prompt_name: Optional[str]):
        """(the checked texts with the prompt put before each, whether `texts` was a bare
        str). Texts are checked as given (so an empty one is refused even with a prompt)."""
        texts, bare = _as_list(texts)
        texts = schema.check_texts(texts, "texts", max_texts=None)
        text = self._prompts.resolve(prompt, prompt_name)
        return ([text + t for t in texts] if text else texts), bare

    def _tokenize(self, texts: List[str]) -> List[np.ndarray]:
        """Token ids per text, truncated to max_tokens or refused (InputTooLong)."""
        all_ids = self.tokenizer.encode(texts)
        limit = self.max_tokens
        cut = 0
        for i, ids in enumerate(all_ids):
            if ids.shape[0] <= limit:
                continue
            if not self.truncate:
                raise InputTooLong(
                    f"text[{i}]: {ids.shape[0]} tokens, over the model's limit of {limit}; "
                    "shorten it, or use an Engine made with truncate=True",
                    index=i, n_tokens=int(ids.shape[0]), limit=limit)
            all_ids[i] = self.tokenizer.truncate(ids, limit)
            cut += 1
        if cut:
            logger().warning("truncated %d of %d texts to the model's %d tokens", cut, len(texts),
                         limit)
        return all_ids

    def _embed(self, texts: List[str], pooling: str, *, normalize: bool,
               batch_size: Optional[int], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        all_ids = self._tokenize(texts)
        if len(texts) == 1 and not progress:  # one text: one forward pass, nothing to sort
            ids = all_ids[0]
            return self._pooled(ids, np.array([0, ids.shape[0]], dtype=np.int32), pooling,
                                normalize)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: all_ids[i].shape[0])
        bar = _progress(len(texts)) if progress else None
        try:
            for batch in _batches(order, all_ids, batch_size or len(texts), TOKEN_BUDGET):
                ids = np.concatenate([all_ids[i] for i in batch])
                lengths = [all_ids[i].shape[0] for i in batch]
                offsets = np.zeros(len(batch) + 1, dtype=np.int32)
                np.cumsum(lengths, out=offsets[1:])
                out[batch] = self._pooled(ids, offsets, pooling, normalize)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return out

    def _pooled(self, ids: np.ndarray, offsets: np.ndarray,
                pooling: Union[str, Sequence[str]], normalize: bool) -> np.ndarray:
        """The pooled rows of one ragged batch: its forward pass, in a compute slot.

        `pooling` is one pooling for every text, or a sequence with one per text.
        """
        with self._compute() as ws:
            h = self._model.forward(ids, offsets, ws, self.threads)
            if isinstance(pooling, str):
                return self._model.pool(h, offsets, pooling, normalize)
            return self._pool_each(h, offsets, pooling, normalize)

    def _pool_each(self, h: np.ndarray, offsets: np.ndarray, poolings: Sequence[str],
                   normalize: bool) -> np.ndarray:
        """(n, dim): text i of the ragged batch h (T, dim) pooled as poolings[i] says.

        Pooling and normalising are per row, so pooling every text both ways and keeping
        the asked row gives each text the bits it has alone (pooling costs ~T x dim adds,
        nothing beside the forward pass).
        """
        kinds = set(poolings)
        if len(kinds) == 1:
            return self._model.pool(h, offsets, kinds.pop(), normalize)
        unknown = kinds.difference(schema.POOLINGS)
        if unknown:
            raise InvalidInput(f"poolings: expected 'mean' or 'cls', got {sorted(unknown)!r}")
        cls = np.fromiter((p == "cls" for p in poolings), dtype=bool, count=len(poolings))
        out = self._model.pool(h, offsets, "mean", normalize)
        out[cls] = self._model.pool(h, offsets, "cls", normalize)[cls]
        return out

    def _embed_tokenized(self, all_ids: Sequence[np.ndarray], poolings: Sequence[str],
                         normalize: bool = True) -> np.ndarray:
        """Rows (n, dim) of pre-tokenised texts (as `_tokenize` gives them) in ONE ragged
        forward pass, text i pooled as poolings[i] says, in the given order.

        For the server's batcher, which tokenises on arrival and cuts its own batches by a
        token budget: the caller bounds the batch's tokens (the workspace grows to fit).
        """
        if len(all_ids) != len(poolings):
            raise ValueError(f"poolings: {len(poolings)} for {len(all_ids)} texts")
        if not all_ids:
            return np.empty((0, self.dim), dtype=np.float32)
        offsets = np.zeros(len(all_ids) + 1, dtype=np.int32)
        np.cumsum([ids.shape[0] for ids in all_ids], out=offsets[1:])
        return self._pooled(np.concatenate(all_ids), offsets, poolings, normalize)

    def _compute(self):
        return _ComputeSlot(self)


class _ComputeSlot:
    """Context manager: a compute slot and its workspace for one forward pass."""

    __slots__ = ("engine", "ws")

    def __init__(self, engine: Engine):
        self.engine = engine

    def __enter__(self):
        e = self.engine
        ws = e._slots.get()
        if ws is None:
            try:
                ws = e._model.new_workspace(max(TOKEN_BUDGET, e.max_tokens))
            except BaseException:
                e._slots.put(None)
                raise
        self.ws = ws
        return ws

    def __exit__(self, *exc):
        self.engine._slots.put(self.ws)
        return False


def _as_list(texts):
    """(texts as a list, whether they were one bare str), for the texts `encode` takes as
    sentence-transformers does: a str (or a 0-D numpy array of one), a list, a tuple, a 1-D numpy
    array. Anything else is left for schema.check_texts to refuse by name."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, tuple):
        return list(texts), False
    if type(texts).__module__ == "numpy" and isinstance(texts, np.ndarray):
        if texts.ndim > 1:
            raise InvalidInput(f"texts: expected a 1-D array of str, got shape {texts.shape}")
        return (texts.tolist(), False) if texts.ndim == 1 else ([texts.item()], True)
    return texts, False


def _batches(order: List[int], all_ids: List[np.ndarray], max_texts: int, max_tokens: int):
    """Cuts `order` into runs of at most max_texts texts and max_tokens tokens (at least one
    text per run)."""
    batch, tokens = [], 0
    for i in order:
        n = all_ids[i].shape[0]
        if batch and (len(batch) == max_texts or tokens + n > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(i)
        tokens += n
    if batch:
        yield batch


def _progress(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bge-engine", unit="text")
