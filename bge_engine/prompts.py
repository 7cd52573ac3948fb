"""Prompts: text put before every text `Engine.encode` embeds, as sentence-transformers does.

A checkpoint's prompts come from its `config_sentence_transformers.json` ("prompts", a name ->
string map, and "default_prompt_name"). As in sentence-transformers 3+, the names "query" and
"document" always exist (the empty prompt unless the file gives one). The bge `*-en-v1.5`
checkpoints carry no prompts in their files, while their model card asks retrieval queries to
start with `BGE_QUERY`; an engine loaded by such a hub id gets it as its "query" prompt.

A prompt is prepended to the text as a string before tokenisation (sentence-transformers does
the same), so its tokens count towards the model's limit and truncation cuts the joined text.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, NamedTuple, Optional

from . import schema
from .errors import InvalidInput, ModelFormatError

# The retrieval instruction of the BAAI/bge-*-en-v1.5 model cards, for queries (not passages).
BGE_QUERY = "Represent this sentence for searching relevant passages: "
# Hub ids whose "query" prompt is BGE_QUERY when their files carry none (ids match without case
# on the hub, as here).
_BGE_EN_V15 = re.compile(r"^BAAI/bge-(small|base|large)-en-v1\.5$", re.IGNORECASE)
# encode_document's prompt: the first of these names the checkpoint has (sentence-transformers'
# order); "document" always exists, so it is the empty prompt where the file gives none.
DOCUMENT_NAMES = ("document", "passage", "corpus")


class Prompts(NamedTuple):
    """A checkpoint's prompts (name -> prompt) and the name `encode` uses when given none."""

    prompts: Dict[str, str]
    default_name: Optional[str]
    include_prompt: bool  # 1_Pooling/config.json: do prompt tokens take part in pooling?

    def resolve(self, prompt: Optional[str], prompt_name: Optional[str]) -> str:
        """The prompt a call uses: `prompt` where given, else the prompt named `prompt_name`,
        else the checkpoint's default prompt, else "" (sentence-transformers' rule; a prompt
        given beside a name wins, as there).

        Raises:
            InvalidInput: a prompt that is no str, an unknown or non-str prompt name, or a
                prompt on a checkpoint whose pooling excludes prompt tokens.
        """
        if prompt_name is not None and (not isinstance(prompt_name, str)
                                        or prompt_name not in self.prompts):
            raise InvalidInput(
                f"prompt_name: {schema.show(prompt_name)} is not one of this checkpoint's "
                f"prompts {sorted(self.prompts)}; pass prompt='...' for a prompt of your own")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidInput(f"prompt: expected a str or None, got {type(prompt).__name__}")
        if prompt is None:
            name = prompt_name if prompt_name is not None else self.default_name
            prompt = self.prompts[name] if name is not None else ""
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"prompt: not valid Unicode (lone surrogate at position "
                               f"{exc.start}); send UTF-8 text") from None
        if prompt and not self.include_prompt:
            raise InvalidInput(
                "prompt: this checkpoint pools without its prompt tokens (1_Pooling/config.json "
                "include_prompt: false), which bge-engine does not run; embed without a prompt")
        return prompt


def load(folder: str, hub_id: Optional[str]) -> Prompts:
    """The prompts of the checkpoint in `folder`, loaded by `hub_id` (None for a local folder).

    Raises:
        ModelFormatError: config_sentence_transformers.json or 1_Pooling/config.json is not JSON,
            or its prompts are not a map of str, or its default prompt name is not among them.
    """
    path = os.path.join(folder, "config_sentence_transformers.json")
    config = _read_object(path) if os.path.isfile(path) else {}
    found = config.get("prompts") or {}
    if not isinstance(found, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in found.items()):
        raise ModelFormatError(f"{path}: 'prompts' must map names to strings")
    prompts = {"query": "", "document": ""}
    prompts.update({k: v or "" for k, v in found.items()})
    if hub_id is not None and _BGE_EN_V15.match(hub_id) and not prompts["query"]:
        prompts["query"] = BGE_QUERY
    default_name = config.get("default_prompt_name")
    if default_name is not None and default_name not in prompts:
        raise ModelFormatError(f"{path}: default_prompt_name {schema.show(default_name)} names "
                               f"none of its prompts {sorted(prompts)}")
    pooling_path = os.path.join(folder, "1_Pooling", "config.json")
    pooling = _read_object(pooling_path) if os.path.isfile(pooling_path) else {}
    return Prompts(prompts, default_name, pooling.get("include_prompt", True) is not False)


def _read_object(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
