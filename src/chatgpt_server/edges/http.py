"""HTTP plumbing every door shares: bounded bodies of the right media type, JSON responses."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import BadRequest, ClientGone, PayloadTooLarge, UnsupportedMediaType

FORM = "application/x-www-form-urlencoded"


class JSONBody(Response):
    """orjson-encoded JSON: measurably cheaper than the stdlib encoder on every reply."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(kind: str) -> bool:
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("body_too_large", limit=limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():  # a body that stalls is ended by http_limits (408)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge("body_too_large", limit=limit)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientGone("client_gone") from exc
    return b"".join(chunks)


def _check_type(request: Request, form: bool) -> str:
    """JSON (or, where ``form``, a url-encoded form). Anything else is 415: a cross-site page can send
    text/plain or a form without asking first, and must not reach a JSON route that way. A request
    without a content type (curl --data-binary) is read as JSON."""
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):  # read as it is, a gzip body is noise; so is a false claim of one
        raise UnsupportedMediaType("unsupported_encoding", coding=coding[:40])
    kind = media_type(request)
    if kind and not _is_json(kind) and not (form and kind == FORM):
        accepted = "application/json" + (" or " + FORM if form else "")
        raise UnsupportedMediaType("unsupported_media_type", type=kind[:80], accepted=accepted)
    return kind


async def read_json(request: Request, limit: int, *, form: bool = False) -> Any:
    """The body as JSON (or a form's fields). An empty body reads as {} so validation lists what is
    missing."""
    kind = _check_type(request, form)
    raw = await read_body(request, limit)
    if kind == FORM:  # a leading BOM is no part of the first field's name
        return dict(parse_qsl(raw.decode("utf-8", "replace").removeprefix("\ufeff"), keep_blank_values=True))
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        value = _lenient(raw)
        if value is _TOO_DEEP:
            raise BadRequest("bad_json", reason=f"nested more than {MAX_DEPTH} levels deep") from exc
        if value is _NOT_JSON:
            raise BadRequest("bad_json", reason=str(exc).split(":", 1)[0][:100]) from exc
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and not _shallow(value):
        raise BadRequest("bad_json", reason=f"nested more than {MAX_DEPTH} levels deep")
    return value


_NOT_JSON, _TOO_DEEP = object(), object()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lenient(raw: bytes) -> Any:
    """What JavaScript's JSON.parse (the original's body parser) reads and orjson does not: a leading
    byte order mark, bytes that are not UTF-8 (read as U+FFFD, as it decoded them), and a lone
    surrogate escape such as ``"\\ud83d"`` (what JSON.stringify writes for text cut inside an emoji),
    which becomes U+FFFD: no text that cannot be written as UTF-8 goes any further."""
    text = raw.decode("utf-8", "replace").removeprefix("\ufeff")
    try:
        return _mended(json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float))
    except RecursionError:
        return _TOO_DEEP
    except ValueError:  # json.JSONDecodeError is one
        return _NOT_JSON


# Numbers as orjson reads them, so what is read here can be written again: an integer past 64 bits is
# a float, and one past a float's range (JSON.parse's Infinity) the largest float of its sign, which
# every range check refuses as it would refuse Infinity and an option the original ignored leaves
# unread. NaN and Infinity themselves, which Python reads and JSON does not have, are refused.
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int(text: str) -> int | float:
    if len(text) > 20:  # past 64 bits (and Python's int() refuses past 4,300 digits)
        return _float(text)
    value = int(text)
    return value if -(2**63) <= value < 2**64 else _float(text)


def _float(text: str) -> float:
    value = float(text)
    return math.copysign(sys.float_info.max, value) if math.isinf(value) else value


def _mended(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_mended(v) for v in value]
    if isinstance(value, dict):
        return {_mended(k): _mended(v) for k, v in value.items()}
    return value


# orjson reads 1,024 levels but writes 254: a body we pass on (inside a few levels of our own) must be
# writable, so deeper ones are refused here rather than failing later as a 500.
MAX_DEPTH = 200
_MARGIN = 254 - MAX_DEPTH


def _shallow(value: Any) -> bool:
    wrapped = value
    for _ in range(_MARGIN):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except TypeError:  # orjson's JSONEncodeError, or "Recursion limit reached"
        return False
    return True


def allowed(methods: Iterable[str]) -> str:
    """The ``Allow`` header of a path serving ``methods`` (HEAD too, where GET is served)."""
    found = {m.upper() for m in methods}
    if "GET" in found:
        found.add("HEAD")
    return ", ".join(sorted(found))


def authorization(request: Request) -> str:
    """The request's one ``Authorization`` header ("" without one). Two are refused: which one is
    meant? A proxy in front may have checked the other."""
    found = request.headers.getlist("authorization")
    if len(found) > 1:
        raise BadRequest("duplicate_authorization")
    return found[0] if found else ""
