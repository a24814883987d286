"""The one error tree of the service.

Every failure a client can see is a ``ServiceError``: it carries the HTTP status, a message key
(rendered in English or Chinese by ``api.messages``) and the values the message needs. The HTTP edge
maps the tree to the error envelope in one place (``api.envelope``).

    ServiceError (500)
    ├── BadRequest (400)
    │   └── ValidationFailed (400, every problem listed)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── MethodNotAllowed (405)
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── TooManyRequests (429)
    ├── BadGateway (502)
    ├── ServiceUnavailable (503)
    │   ├── StoreUnavailable (503)
    │   └── ShuttingDown (503)
    └── GatewayTimeout (504)
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500

    def __init__(self, key: str = "internal", /, *, headers: dict[str, str] | None = None, **params: Any):
        super().__init__(key)
        self.key = key
        self.params = params
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class BadRequest(ServiceError):
    status = 400


class ValidationFailed(BadRequest):
    """Every validation problem at once, each a (message key, params) pair."""

    def __init__(self, problems: list[tuple[str, dict[str, Any]]]):
        super().__init__("validation")
        self.problems = problems


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class MethodNotAllowed(ServiceError):
    status = 405


class Conflict(ServiceError):
    status = 409


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class TooManyRequests(ServiceError):
    status = 429


class BadGateway(ServiceError):
    status = 502


class ServiceUnavailable(ServiceError):
    status = 503


class StoreUnavailable(ServiceUnavailable):
    """The conversation store did not answer. ``reason`` (for the log only, credentials masked) says why."""

    def __init__(self, key: str = "store_unavailable", /, *, reason: str = "", **params: Any):
        super().__init__(key, **params)
        self.reason = reason


class ShuttingDown(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("shutting_down")


class ClientGone(ServiceError):
    """The client closed the connection before its request was read: nobody to answer (nginx's 499)."""

    status = 499


class GatewayTimeout(ServiceError):
    status = 504
