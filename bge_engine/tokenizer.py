"""WordPiece tokenisation through `tokenizers`, from the checkpoint's tokenizer.json.

The file's own truncation and padding settings are switched off (all-MiniLM-L6-v2's pads
and cuts at 128): the engine never pads, and it truncates itself so that it can count the
tokens a text had and keep [SEP] last.
"""

from __future__ import annotations

import os
from typing import List, Union

from ._lazy import numpy_on_first_use
from .errors import ModelFormatError

np = numpy_on_first_use(globals())


class Tokenizer:
    """Turns texts into token ids, [CLS] ... [SEP] included, never truncated.

    Args:
        path: the checkpoint's tokenizer.json.
        vocab_size: the model's vocabulary size; every id must fall below it.
    """

    def __init__(self, path: Union[str, os.PathLike], vocab_size: int):
        # Imported here, not with bge_engine: the engine builds its tokenizer on one
        # thread while the weights load on the others, so the import runs beside the load.
        import tokenizers

        try:
            self._tok = tokenizers.Tokenizer.from_file(os.fspath(path))
        except Exception as exc:  # tokenizers raises its own exception type
            raise ModelFormatError(f"{path}: not a readable tokenizer.json ({exc})") from None
        self._tok.no_truncation()
        self._tok.no_padding()
        probe = self._tok.encode("a")
        if not probe.special_tokens_mask or probe.special_tokens_mask[-1] != 1:
            raise ModelFormatError(
                f"{path}: the tokenizer adds no closing special token ([SEP]); "
                "a BERT tokenizer.json with its TemplateProcessing post-processor is needed")
        self.sep_id = probe.ids[-1]
        self._vocab_size = vocab_size
        self._path = path

    def encode(self, texts: List[str]) -> List[np.ndarray]:
        """Returns each text's ids as int32, specials included, untruncated."""
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we never use
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        out = []
        for e in encode(texts, add_special_tokens=True):
            ids = e.ids
            if ids and max(ids) >= self._vocab_size:
                raise ModelFormatError(
                    f"{self._path}: the tokenizer gave id {max(ids)}, beyond the "
                    f"model's vocab_size {self._vocab_size}")
            out.append(np.asarray(ids, dtype=np.int32))
        return out

    def truncate(self, ids: np.ndarray, limit: int) -> np.ndarray:
        """ids cut to `limit` tokens: the first limit - 1, then [SEP]."""
        if ids.shape[0] <= limit:
            return ids
        return np.concatenate([ids[: limit - 1], np.asarray([self.sep_id], dtype=np.int32)])
