"""Exact token costs with the model's own encoding, counted offline.

toktok carries the cl100k_base and o200k_base tables compiled in (tiktoken would download them on
first use) and gives counts identical to tiktoken's; tests/test_tokens.py checks that.

A message costs its content's tokens plus ``PER_MESSAGE`` (the chat format's framing and the role
name); every prompt adds ``REPLY_PRIMING`` for the assistant turn it opens. That is how OpenAI counts
``usage.prompt_tokens`` for the chat models.
"""

from __future__ import annotations

import toktok

PER_MESSAGE = 4
REPLY_PRIMING = 3
_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss")
_COMPLETION_TOKEN_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def encoding_for(model: str) -> str:
    name = model.lower().split("/")[-1]
    return "o200k_base" if name.startswith(_O200K_PREFIXES) else "cl100k_base"


def uses_max_completion_tokens(model: str) -> bool:
    """Reasoning models refuse ``max_tokens`` and fixed sampling values."""
    return model.lower().split("/")[-1].startswith(_COMPLETION_TOKEN_PREFIXES)


# The tokenizer objects themselves: their count() costs microseconds, where batch_count() pays
# ~30 µs per call to dispatch to its thread pool (measured; see bench/README.md).
_TOKENIZERS = {name: toktok._encoding(name) for name in ("cl100k_base", "o200k_base")}


def message_costs(texts: list[str]) -> list[tuple[int, int]]:
    """(cl100k_base, o200k_base) cost of each text as one chat message."""
    cl100k, o200k = _TOKENIZERS["cl100k_base"].count, _TOKENIZERS["o200k_base"].count
    return [(cl100k(t) + PER_MESSAGE, o200k(t) + PER_MESSAGE) for t in texts]


def count(text: str, encoding: str) -> int:
    """Tokens of ``text`` as ordinary text (special-token strings count as the text they are)."""
    return int(_TOKENIZERS[encoding].count(text))
