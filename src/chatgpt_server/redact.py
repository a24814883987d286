"""Credentials kept out of what we show: a known secret in the spellings an echo may give it, and
anything shaped like a key or bearer token. Pure functions; the one place these shapes are defined."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Set as AbstractSet
from typing import AnyStr
from urllib.parse import quote, quote_plus

# Anything shaped like a credential: OpenAI-style keys, JWTs (whole, or a header and payload without
# their signature), bearer values, and the value after "key"/"token"-like words.
SECRETISH = re.compile(
    r"((?<![A-Za-z0-9])sk-[A-Za-z0-9_*\-]{4,}|eyJ[\w-]{6,}\.[\w-]{6,}(?:\.[\w-]*)?|Bearer\s+\S+|"
    r"(?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?[^\s\"',;]{6,})",
    re.IGNORECASE,
)
# Shorter "keys" are placeholders for servers that check none ("EMPTY" for vLLM, "ollama"), not
# secrets: masked, they would cut ordinary words out of replies passed on. Every real key is longer.
MIN_SECRET = 12
# Error text and logs are not replies: there a key is masked from this length, as a self-hosted
# server's operator may choose a short one ("secret1"); a few words of an error are worth less.
MIN_SHOWN_SECRET = 7  # "ollama" (6), the placeholder Ollama's docs give, is not masked
# A key's last 8 characters are masked too (what masked keys show), once the key is long enough for
# them to be its random part.
TAIL_FROM = 20
# An echo may cut a credential (its first characters taken for a prefix, its last dropped): any run
# of FRAGMENT of its characters is masked wherever it appears. A run that long of a key's random part
# is never chance; a shorter one may be (the "sk-proj-" every key starts with).
FRAGMENT = 12
_PROBE = FRAGMENT // 2  # a run of FRAGMENT holds a _PROBE-long piece that starts at a multiple of _PROBE


def secret_forms(secret: str, least: int = MIN_SHOWN_SECRET) -> list[str]:
    """The spellings of a credential a careless echo might give, matched in any letter case: as sent,
    URL-encoded (as a query string would carry it), and its last 8 characters (what masked keys
    show). None for one shorter than ``least``."""
    if len(secret) < least:
        return []
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    if len(secret) >= TAIL_FROM:
        forms.add(secret[-8:])
    return sorted(forms)


def has_secretish_word(value: str) -> bool:
    """Whether ``value`` holds a word every match of SECRETISH holds (case folded; "ı" is the one letter
    IGNORECASE matches to "i" that casefold keeps). Most labels hold none, and this costs 0.2-0.4 µs
    where the regex costs 3 µs for a 33-character id."""
    f = value.casefold().replace("ı", "i")
    return ("sk-" in f or "eyj" in f or "bearer" in f or "api" in f or "token" in f or "secret" in f
            or "password" in f or "authorization" in f)  # fmt: skip


@functools.lru_cache(maxsize=256)  # the same few keys on every request
def _forms_lower(secret: str) -> tuple[str, ...]:
    return tuple(form.lower() for form in secret_forms(secret))


@functools.lru_cache(maxsize=64)  # a mode-2 token is ~2k characters: 64 of them, a few MB at most
def _probes(low_secret: str) -> dict[str, tuple[int, ...]]:
    """Every ``_PROBE``-long piece of a (lower-cased) credential, with where each starts in it."""
    where: dict[str, list[int]] = {}
    for i in range(len(low_secret) - _PROBE + 1):
        where.setdefault(low_secret[i : i + _PROBE], []).append(i)
    return {piece: tuple(starts) for piece, starts in where.items()}


@functools.lru_cache(maxsize=64)
def _run_keys(secret: str) -> tuple[tuple[str, ...], AbstractSet[str]]:
    low = secret.lower()
    return tuple(low[i : i + _PROBE] for i in range(0, len(low) - _PROBE + 1, _PROBE)), _probes(low).keys()


@functools.lru_cache(maxsize=64)
def _run_keys_bytes(secret: str) -> tuple[tuple[bytes, ...], AbstractSet[bytes]]:
    pieces, every_piece = _run_keys(secret)
    return tuple(p.encode() for p in pieces), frozenset(p.encode() for p in every_piece)


def _may_hold(low: AnyStr, pieces: tuple[AnyStr, ...], every_piece: AbstractSet[AnyStr]) -> bool:
    """Whether lower-cased ``low`` may hold a run of ``FRAGMENT`` characters of a secret, by the
    cheaper of two exact tests (no run is missed; a "yes" is then looked at closely). A run holds one
    of the secret's pieces that start at multiples of ``_PROBE``, and it holds a piece of the text that
    starts at such a multiple: a search in C for each of a short key's few pieces, or one set test of
    the text's pieces against all of a long key's."""
    if len(pieces) <= 12:
        return any(piece in low for piece in pieces)
    return not every_piece.isdisjoint([low[i : i + _PROBE] for i in range(0, len(low) - _PROBE + 1, _PROBE)])


def may_hold_run(low_raw: bytes, secret: str) -> bool:
    """``_may_hold`` for bytes (lower-cased) passed on as they came."""
    return len(secret) >= MIN_SECRET and _may_hold(low_raw, *_run_keys_bytes(secret))


def lower(text: str) -> str:
    """``text`` lower-cased, one character for one (so positions still match ``text``'s): what
    ``fragment_spans`` reads."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def fragment_spans(low_text: str, secret: str) -> list[tuple[int, int]]:
    """Where ``low_text`` (a text as ``lower`` gives it) holds ``FRAGMENT`` or more consecutive
    characters of ``secret``, in any letter case: each run as long as it goes."""
    if len(secret) < MIN_SECRET or not _may_hold(low_text, *_run_keys(secret)):
        return []
    return _runs_in(low_text, secret.lower())


def _runs_in(low_text: str, low_secret: str) -> list[tuple[int, int]]:
    probes = _probes(low_secret)
    spans: list[tuple[int, int]] = []
    covered = 0
    for start in range(0, len(low_text) - _PROBE + 1, _PROBE):
        starts = probes.get(low_text[start : start + _PROBE]) if start >= covered else None
        if starts is None:
            continue
        best = (0, 0)
        for j in starts[:8]:  # the piece's places in the secret (a random key repeats none): the longest run
            left = 0
            while left < min(start, j) and low_text[start - left - 1] == low_secret[j - left - 1]:
                left += 1
            right = _PROBE
            while (
                start + right < len(low_text)
                and j + right < len(low_secret)
                and (low_text[start + right] == low_secret[j + right])
            ):
                right += 1
            if left + right > best[1] - best[0]:
                best = (start - left, start + right)
        if best[1] - best[0] >= FRAGMENT:
            spans.append(best)
            covered = best[1]
    return spans


def holds_secret(value: str, *secrets: str) -> bool:
    """Whether ``value`` holds one of ``secrets`` (in a spelling ``secret_forms`` gives, or a run of
    ``FRAGMENT`` of its characters) or anything shaped like a credential."""
    if secrets:
        low = lower(value)
        for secret in secrets:
            for form in _forms_lower(secret):
                if form in low:
                    return True
            if fragment_spans(low, secret):
                return True
    return has_secretish_word(value) and SECRETISH.search(value) is not None


def masked_runs(text: str, *secrets: str) -> str:
    """``text`` with every run of ``FRAGMENT`` or more characters of a secret written as ***."""
    low = lower(text)
    spans = sorted(span for secret in secrets for span in fragment_spans(low, secret))
    if not spans:
        return text
    pieces, at = [], 0
    for start, end in spans:
        if end > at:  # a run overlapping the one before is part of its ***
            pieces.append(text[at:start] + "***" if start >= at else "")
            at = end
    return "".join(pieces) + text[at:]


def masked(text: str, *secrets: str) -> str:
    """``text`` with every credential ``holds_secret`` finds written as ***."""
    if secrets:
        text = masked_runs(text, *secrets)
    forms = sorted({form for secret in secrets for form in secret_forms(secret)}, key=len, reverse=True)
    if forms:
        text = re.sub("|".join(re.escape(form) for form in forms), "***", text, flags=re.IGNORECASE)
    return SECRETISH.sub("***", text)


def spelled_otherwise(text: str, *secrets: str) -> bool:
    """Whether ``text`` spells a secret in a way its runs miss: with other characters between its own
    (spaces, dashes, zero-width ones), in full-width forms, or backwards, as an echoing upstream may. Only
    its letters and digits are compared (after NFKC), for secrets with at least ``MIN_SECRET`` of them."""
    plain = _alnum(text)
    for secret in secrets:
        key = _alnum(secret)
        if len(key) >= MIN_SECRET and (key in plain or key[::-1] in plain):
            return True
    return False


def _alnum(value: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", value).casefold() if c.isalnum())
