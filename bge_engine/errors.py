"""The typed error family of bge-engine (docs/contract.md, section 3).

Every error carries a stable `code` string and a message that says what was wrong, where,
and what to do.
"""

from __future__ import annotations


class BgeError(Exception):
    """Base of every error bge-engine raises on purpose."""

    code = "error"


class InvalidInput(BgeError, ValueError):
    """A payload or text that breaks the input contract."""

    code = "invalid_input"


class InputTooLong(InvalidInput):
    """A text over the model's token limit, with truncation turned off.

    Attributes:
        index: the first such text's index in its list.
        n_tokens: its token count, [CLS] and [SEP] included.
        limit: the model's limit (512 for bge-small).
    """

    code = "input_too_long"

    def __init__(self, message: str, *, index: int, n_tokens: int, limit: int):
        super().__init__(message)
        self.index = index
        self.n_tokens = n_tokens
        self.limit = limit


class ModelNotFound(BgeError, FileNotFoundError):
    """No folder, no cached copy, and no download possible."""

    code = "model_not_found"


class ModelFormatError(BgeError, ValueError):
    """A checkpoint that is not a BERT encoder in the expected layout."""

    code = "model_format"
