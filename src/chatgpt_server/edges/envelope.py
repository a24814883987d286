"""The one place errors become responses, in the shape of the door they came through.

The original's routes (everything outside ``/v1``) answer with the contract's envelope
``{status, success, message, data, timestamp[, path]}``; the OpenAI-shaped doors under ``/v1`` with
``{"error": {"message", "type", "param", "code"}}`` and the status the official SDKs map to their
exception classes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ..core.activity import current_log
from ..errors import ServiceError, StoreUnavailable, ValidationFailed
from .http import JSONBody
from .messages import error_message, shown

log = logging.getLogger("chatgpt_server")

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",  # as OpenAI types its invalid_api_key answer
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ok(data: Any, status: int = 200) -> JSONBody:
    return JSONBody({"status": 200, "success": True, "message": "ok", "data": data, "timestamp": now_ms()},
                    status_code=status)  # fmt: skip


def success(data: Any) -> dict[str, Any]:
    return {"status": 200, "success": True, "message": "ok", "data": data, "timestamp": now_ms()}


def original_status(error: ServiceError) -> int:
    """The status the original's routes answer: its contract says a body that is not JSON gets 400."""
    return 400 if error.status == 415 else error.status


def error_body(error: ServiceError, path: str, language: str) -> dict[str, Any]:
    return {
        "status": original_status(error),
        "success": False,
        "message": error_message(error, language),
        "data": {},
        "timestamp": now_ms(),
        "path": shown(path),  # scope["path"] never carries the query string (the original echoed passwords)
    }


# OpenAI's codes for what our keys name otherwise (clients branch on them, e.g. to retry without a field).
OPENAI_CODES = {
    "unknown_param": "unknown_parameter",
    "missing_param": "missing_required_parameter",
    "conversation_not_found_here": "conversation_not_found",  # "_here": the original route's key is another
}


def openai_error_body(error: ServiceError) -> dict[str, Any]:
    param = error.params.get("param")
    if isinstance(error, ValidationFailed) and error.problems:
        param = error.problems[0][1].get("field") or error.problems[0][1].get("name")
    code = error.params.get("code") or OPENAI_CODES.get(error.key, error.key)
    if isinstance(param, str):  # a field name the client wrote: quoted as any of its words are
        param = shown(param)
    kind = OPENAI_TYPES.get(error.status, "server_error")
    if error.status == 429 and error.key in ("upstream_quota", "usage_limit"):
        kind = "insufficient_quota"
    return {"error": {"message": error_message(error, "en"), "type": kind, "param": param, "code": code}}


def head_error_body(status: int, message: str, path: str) -> bytes:
    """The body for a request refused before routing (a malformed or oversized head), in the shape its
    path's door answers with."""
    if is_openai_path(path):
        kind = OPENAI_TYPES.get(status, "invalid_request_error")
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": "bad_request"}})
    return orjson.dumps({"status": status, "success": False, "message": message, "data": {},
                         "timestamp": now_ms(), "path": shown(path)})  # fmt: skip


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_response(error: ServiceError, path: str, language: str) -> JSONBody:
    headers = dict(error.headers) if error.headers else None
    if is_openai_path(path):
        return JSONBody(openai_error_body(error), status_code=error.status, headers=headers)
    return JSONBody(error_body(error, path, language), status_code=original_status(error), headers=headers)


def log_stream_failure(error: ServiceError, message: str | None = None, outcome: str = "error") -> None:
    """A failure after a stream began, for the access log (``message``, else the error's own words) and,
    when the store is why, the operator's log with its reason, as a failure before the stream would."""
    entry = current_log()
    entry.outcome, entry.message = outcome, message or error_message(error, "en")
    if isinstance(error, StoreUnavailable) and error.reason:
        log.warning("store unavailable: %s", error.reason)
