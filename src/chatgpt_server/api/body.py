"""Reading request bodies: bounded in size, JSON or form, with precise errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request

from ..errors import BadRequest, PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("body_too_large", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("body_too_large", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_values(request: Request, limit: int, *, form: bool = False) -> Any:
    """A JSON body, whatever its declared type (curl -d declares a form), or with ``form`` a
    url-encoded form. An empty body reads as {} so that validation lists what is missing."""
    raw = await read_body(request, limit)
    is_form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    if form and is_form and not raw.lstrip().startswith(b"{"):
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("bad_json", reason=str(exc).split(":", 1)[0]) from exc
