"""Exact token costs with the model's own encoding, counted offline.

toktok carries the cl100k_base and o200k_base tables compiled in (tiktoken would download them on
first use) and gives counts identical to tiktoken's; tests/test_tokens.py checks that. Each table
takes 20-60 MB once loaded, so a table is loaded the first time a model needs it, never at import.

A message costs its content's tokens plus ``PER_MESSAGE`` (the chat format's framing and the role
name); every prompt adds ``REPLY_PRIMING`` for the assistant turn it opens. That is how OpenAI counts
``usage.prompt_tokens`` for the chat models. Models that are not OpenAI's are counted with
``o200k_base``: an estimate (README says so), kept under the budget by a margin.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import toktok

PER_MESSAGE = 4
REPLY_PRIMING = 3
ENCODINGS = ("cl100k_base", "o200k_base")
_CL100K_PREFIXES = ("gpt-3.5", "gpt-35", "gpt-4-", "gpt-4", "text-embedding-3", "text-embedding-ada")
_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss", "codex")
_COMPLETION_TOKEN_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_OPENAI_PREFIXES = _CL100K_PREFIXES + _O200K_PREFIXES

_tables: dict[str, Any] = {}
# Texts counted again and again (system messages, the default one above all): their counts, by encoding.
_recent: OrderedDict[tuple[str, str], int] = OrderedDict()
_RECENT_MAX = 256
_RECENT_TEXT_MAX = 4096


def _bare(model: str) -> str:
    return model.lower().split("/")[-1]


def encoding_for(model: str) -> str:
    name = _bare(model)
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"  # not an OpenAI model: an estimate


def is_exact(model: str) -> bool:
    """Whether counts for ``model`` are OpenAI's own (else an o200k_base estimate)."""
    return _bare(model).startswith(_OPENAI_PREFIXES)


def uses_max_completion_tokens(model: str) -> bool:
    """Reasoning models refuse ``max_tokens`` and fixed sampling values."""
    return _bare(model).startswith(_COMPLETION_TOKEN_PREFIXES)


def _table(encoding: str) -> Any:
    table = _tables.get(encoding)
    if table is None:
        if encoding not in ENCODINGS:
            raise ValueError(encoding)
        # The tokenizer object itself: its count() costs microseconds, where batch_count() pays
        # ~30 µs per call to dispatch to its thread pool (measured).
        table = _tables[encoding] = toktok._encoding(encoding)
    return table


def loaded() -> list[str]:
    return sorted(_tables)


def count(text: str, encoding: str) -> int:
    """Tokens of ``text`` as ordinary text (special-token strings count as the text they are)."""
    if len(text) > _RECENT_TEXT_MAX:
        return int(_table(encoding).count(text))
    key = (encoding, text)
    found = _recent.get(key)
    if found is None:
        found = int(_table(encoding).count(text)) if text else 0
        _recent[key] = found
        if len(_recent) > _RECENT_MAX:
            _recent.popitem(last=False)
    return found


def message_cost(text: str, encoding: str) -> int:
    """What one chat message with this text costs in a prompt."""
    return PER_MESSAGE + count(text, encoding)
