"""Bounds on the request head for uvicorn's httptools protocol.

uvicorn + httptools put no limit on the size of the request line and headers, nor on how long a client may take
to send them: httptools itself joins the pieces of a header with ``+=`` until the header ends (so one endless
header costs memory and quadratic copying, and the protocol never sees it before it is complete), and uvicorn
joins the pieces of the URL the same way. This protocol keeps uvicorn and httptools, and adds:

* ``max_head_bytes``: bytes fed to the parser while a request head is incomplete. Data is fed in slices so that
  the parser never holds more than that; a head that does not end within it is answered 431 (414 when it is
  still in the URL) and the connection closed.
* ``max_headers``: header fields in one head, answered 431.
* ``head_timeout_s``: from the connection's start, or from the first byte of a later request, to the end of the
  head; a connection still without a complete head then is closed (with a 408 if part of a head came). The time
  between requests is uvicorn's keep-alive timeout, and the time a body takes is not limited here.
* What a chunked body carries besides its data (chunk sizes, extensions, and the trailer fields after it, which
  httptools hands on as headers and joins with ``+=`` as it does a head's) is bounded like a head: at most
  ``max_head_bytes`` beyond eight times the data's own size, then 431.

It also serves a request that asks for an upgrade as plain HTTP/1.1, body included (httptools would skip the
body), and answers a body whose chunked framing cannot be read at once (uvicorn would wait for the app, which
waits for the body).

Use: ``uvicorn.run(app, http=protocol_class(...), loop="uvloop")``.

Counting is exact except in one case: a pipelined request whose head starts in the middle of a read (after the
previous request ended in that read) and does not end in it. Where it started is not known, so its bytes in that
read are counted from what is known (its URL, its complete header lines, its last partial line once the request
line has ended): a lower bound, so that a head within the limit is never refused. Such a head can exceed the bound
by less than one read (uvloop reads 256,000 bytes at most); memory stays bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from .core.activity import GONE, REFUSED, TRANSPORT
from .edges.envelope import head_error_body, is_openai_path
from .edges.messages import pick_language
from .one_send import OneSend

__all__ = [
    "DEFAULT_HEAD_TIMEOUT_S",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEAD_BYTES",
    "LimitedHttpToolsProtocol",
    "protocol_class",
]

DEFAULT_MAX_HEAD_BYTES = 32 * 1024  # nginx's default is 4 x 8 KiB buffers; room for big cookies and bearer tokens
DEFAULT_MAX_HEADERS = 100  # Apache's LimitRequestFields and gunicorn's limit_request_fields
DEFAULT_HEAD_TIMEOUT_S = 10.0

# Phases of the request being parsed
_IDLE = 0  # no byte of a request yet: the connection's start, or the previous request has ended
_HEAD = 1  # on_message_begin came, on_headers_complete not yet
_BODY = 2  # the head is complete, the body (if any) is not
_UPGRADE = 3  # the head asked for an upgrade this server does not make: it is parsed again without it

# When the bound is crossed with no more than this many bytes besides the URL, the crossing is in the request line.
_REQUEST_LINE_SLACK = 32


# RFC 9110 7.2: Host = uri-host [ ":" port ], the host an IP literal, an IPv4 address or a reg-name (empty
# allowed: a request whose target names no authority).
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(:[0-9]*)?")


class _HeadRejected(Exception):
    """Raised in a parser callback to stop httptools; the status to answer is in the protocol."""


# What a refused head is told, in English and Chinese: by the refusal's own reason, else by its status.
HEAD_MESSAGES: dict[str | int, tuple[str, str]] = {
    "host": ("a request must carry exactly one Host header, naming a host (and port)",
             "请求必须带且只带一个 Host 头, 写明主机 (及端口)"),
    "version": ("this server speaks HTTP/1.1 (and 1.0) only", "此服务器只支持 HTTP/1.1 (及 1.0)"),
    "method": ("this server knows no such method (methods are case-sensitive)",
               "此服务器不支持该请求方法 (方法区分大小写)"),
    "target": ("the request target (its URL) cannot be read", "无法解析请求目标 (URL)"),
    "chunked": ("the request body cannot be read: its chunked framing is broken",
                "无法读取请求体: 其分块编码有误"),
    400: ("Bad Request", "请求无法解析"),
    408: ("Request Timeout", "请求超时"),
    414: ("URI Too Long", "请求的 URL 过长"),
    431: ("Request Header Fields Too Large", "请求头过大"),
}  # fmt: skip


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = DEFAULT_MAX_HEAD_BYTES
    language: ClassVar[str] = "zh"  # the server's language (CHATGPT_SERVER_LANGUAGE)
    max_headers: ClassVar[int] = DEFAULT_MAX_HEADERS
    head_timeout_s: ClassVar[float] = DEFAULT_HEAD_TIMEOUT_S

    # Per-connection state, in slots: uvicorn's instance has 28 attributes already, and past 29 or so CPython 3.11
    # stops sharing the keys of instance dicts; attribute access, all of uvicorn's included, is then ~15 % slower.
    __slots__ = ("_body_bytes", "_body_fed", "_body_phase_bytes", "_head_bytes", "_head_timer", "_message_ended",
                 "_owed", "_phase", "_reject_message", "_reject_status", "_rejected")  # fmt: skip
    _body_fed: int  # reads that brought body bytes (a stalled body is one that stops bringing any)
    _body_bytes: int  # the current body's data
    _body_phase_bytes: int  # bytes fed while the current body was incomplete: data, framing and trailers
    _phase: int
    _head_bytes: int  # bytes fed while the current head is incomplete
    _message_ended: bool  # a request ended during the current feed
    _rejected: bool  # answered or condemned: further input is dropped
    _reject_status: int
    _reject_message: str | None  # what the refusal says (a key of HEAD_MESSAGES), when its status would not say enough
    _head_timer: asyncio.TimerHandle | None
    _owed: RequestResponseCycle | None  # the request before the current one, if its response was still owed

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._phase = _IDLE
        self._head_bytes = 0
        self._message_ended = self._rejected = False
        self._reject_status = 0
        self._reject_message = None
        self._owed = None
        self.url, self.headers = b"", []  # a refusal before any request began reads them
        self._body_fed = self._body_bytes = self._body_phase_bytes = 0
        super().connection_made(cast(asyncio.Transport, OneSend(transport, asyncio.get_running_loop())))
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:  # a stream's own ending handles a stream
            left = cycle.scope.get(GONE)
            if callable(left):
                left()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _BODY:
            self._body_fed += 1
        self._feed(data)
        # A body that is not all here (the common request comes whole: nothing to do) may not stall
        # longer than a head may take; checked by one timer, not per read.
        if self._phase == _BODY and self._head_timer is None and not self._rejected:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._body_stalled, self._body_fed)

    def _feed(self, data: bytes) -> None:
        if self._rejected:
            return
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        start, size = 0, len(data)
        chunk: bytes | memoryview = data
        again: bytes | None = None  # a head to parse again without its upgrade, before data[start:]
        while True:
            end = size
            refed = again is not None
            if again is not None:
                chunk, again = again, None  # counted as it came: not again
            else:
                if self._phase != _BODY and size - start > self.max_head_bytes - self._head_bytes:
                    end = start + self.max_head_bytes - self._head_bytes  # no more than the head may still take
                if start or end < size:
                    chunk = memoryview(data)[start:end]
            in_body = self._phase == _BODY
            self._message_ended = False
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade as exc:
                if self._phase != _UPGRADE:  # CONNECT: answered by the app (405); what follows is never read
                    self._rejected = True  # as a request (a body it carried would be), and the connection closes
                    if self.cycle is not None:
                        self.cycle.keep_alive = False
                    self.flow.pause_reading()
                    return
                start += exc.args[0]  # where the request's body (or the next request) begins
                again = self._without_upgrade()
                continue
            except httptools.HttpParserError as exc:
                line = bytes(chunk[:2048]).split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
                if (isinstance(exc, httptools.HttpParserInvalidMethodError) and self._phase != _BODY
                        and len(line) == 3 and line[2].startswith(b"HTTP/")):  # fmt: skip
                    # RFC 9110 15.6.2: a request line whose method the server does not recognise (else 400)
                    self._reject_status = 501
                    self._reject_message = "method"
                    self.url = line[1] if line[1].startswith((b"/", b"http")) else b""  # its door's shape
                if not self._reject_status and "HTTP version" in str(exc):  # llhttp reads HTTP/1.x and 2.0, 0.9
                    self._reject_status = 505
                    self._reject_message = "version"
                if not self._reject_status:
                    self.logger.warning("Invalid HTTP request received.")
                if self._phase == _BODY and isinstance(exc, httptools.HttpParserCallbackError):
                    self._phase = _HEAD  # the head's end refused its target (uvicorn reads the URL there)
                    self._reject_status, self._reject_message = 400, "target"
                if self._phase == _BODY:  # this request's body cannot be read: the app waiting for it never
                    self._reject_message = "chunked"
                    self._refuse_body(400, "Request body unreadable")  # would answer
                else:  # a pipelined request before the unreadable one is answered first, then the connection closes
                    self._reject(self._reject_status or 400)
                return
            if refed:  # the head parsed again: on with what followed it
                if start >= size:
                    return
                continue
            if in_body and self._phase == _BODY:  # all of it the body's: data, framing or trailers
                self._body_phase_bytes += end - start
                if self._body_phase_bytes - self._body_bytes > self.max_head_bytes + 8 * self._body_bytes:
                    self._refuse_body()
                    return
            if (self._phase == _HEAD or (self._phase == _IDLE and not self._message_ended)) and not self._count(
                data, start, end
            ):
                return
            if end == size:
                return
            start = end  # the head ended inside the slice: feed the rest

    def _count(self, data: bytes, start: int, end: int) -> bool:
        """After data[start:end] left a head incomplete (or brought only blank lines): bound it; False if refused."""
        if self._phase == _HEAD:
            if self._message_ended:  # the head began inside this chunk, after the previous request
                self._head_bytes = self._head_bytes_at_least(data, start, end)
            else:  # all of the chunk belongs to this head
                self._head_bytes += end - start
            if self._head_bytes >= self.max_head_bytes:  # the bound is reached and the head goes on
                self._reject(self._status_for_overflow())
                return False
            if len(self.headers) > self.max_headers:
                self._reject(431)
                return False
        else:  # blank lines before a request: they count, and time out, too
            self._head_bytes += end - start
            if self._head_bytes >= self.max_head_bytes:
                self._reject(400)
                return False
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        return True

    # Parser callbacks (called once per request: the base is called directly, without the cost of super())

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._phase = _HEAD

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.headers) > self.max_headers:
            self._reject_status = 431
            raise _HeadRejected
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):  # httptools reads "HTTP/2.0" and "HTTP/0.9" lines as requests
            self._reject_status = 505
            self._reject_message = "version"
            raise _HeadRejected
        # RFC 9112 3.2: a request with no Host (HTTP/1.1) or more than one is answered 400: which host it
        # names would otherwise be for each proxy on the way to decide, and not all decide alike.
        hosts = [value for name, value in self.headers if name == b"host"]
        if (len(hosts) > 1 or (not hosts and version != "1.0")
                or (hosts and not _HOST.fullmatch(hosts[0]))):  # fmt: skip
            self._reject_status = 400
            self._reject_message = "host"
            raise _HeadRejected
        if self.parser.should_upgrade() and self.parser.get_method() != b"CONNECT":
            # RFC 9110 7.8: a server that does not upgrade serves the request as HTTP/1.1 (curl --http2 asks
            # for h2c with every request). llhttp, told of an upgrade, would skip the body: the parse stops at
            # the head's end, and the head is parsed again without the upgrade.
            self._phase = _UPGRADE
            return
        self._phase = _BODY
        self._body_bytes = self._body_phase_bytes = 0
        self.scope[TRANSPORT] = self.transport  # type: ignore[literal-required]
        owed = self.cycle
        self._owed = owed if owed is not None and not owed.response_complete else None
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._phase == _UPGRADE:  # the upgrade's "end": the request is parsed again
            return
        HttpToolsProtocol.on_message_complete(self)
        self.url = b""  # a head refused before the next request's begins must not name this one's path
        self._cancel_head_timer()  # a body timer, if the body came in pieces
        self._phase = _IDLE
        self._head_bytes = 0
        self._message_ended = True

    def _without_upgrade(self) -> bytes:
        """The head just parsed, without its Upgrade header and the Connection header's upgrade token, for
        a new parser (this one would skip the body of a request it was told is upgraded)."""
        head = [b"%s %s HTTP/%s" % (self.parser.get_method(), self.url, self.parser.get_http_version().encode())]
        for name, value in self.headers:
            if name == b"upgrade":
                continue
            if name == b"connection":
                value = b",".join(t for t in value.split(b",") if t.strip().lower() != b"upgrade")
                if not value.strip():
                    continue
            head.append(name + b": " + value)
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own parser
        self._phase = _IDLE
        return b"\r\n".join(head) + b"\r\n\r\n"

    # Limits

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_bytes_at_least(self, data: bytes, start: int, end: int) -> int:
        """A lower bound on the bytes of a head that began inside data[start:end] and did not end there.

        Where it began is not known: count its URL, its complete header lines and, once the request line has
        ended (so the last line break of the chunk is the head's), the partial line after that line break.
        """
        known = len(self.url) + sum(len(name) + len(value) + 2 for name, value in self.headers)
        if self.headers:
            known += end - 1 - data.rfind(b"\n", start, end)
        return known

    def _status_for_overflow(self) -> int:
        if self._phase == _HEAD and self._head_bytes - len(self.url) <= _REQUEST_LINE_SLACK:
            return 414
        return 431

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._phase == _HEAD:
            self._reject(408)
        elif self.cycle is None or self.cycle.response_complete:  # not one byte of a request (or blank lines)
            self._rejected = True
            self.transport.close()
        # else blank lines came while a response is owed: its end arms uvicorn's keep-alive timeout

    def _body_stalled(self, fed: int) -> None:
        self._head_timer = None
        if self._phase != _BODY or self.transport.is_closing():
            return
        if self._body_fed != fed or self.flow.read_paused:  # more came, or we stopped reading (the app has not
            # read what is buffered yet): look again a timeout from now
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._body_stalled, self._body_fed)
            return
        # Nothing for a whole timeout: 408, and the connection closes; the app reading the body sees its
        # client gone (it cannot answer: the answer is this one).
        self._rejected = True
        if self._answer_owed_first("Request body stalled: 408"):
            return
        if self.cycle is None or not self.cycle.response_started:  # else the app answered already
            self.transport.write(self._plain_response(408, log="Request body stalled"))
        else:
            self.logger.info("Request body stalled: 408")
        self.transport.close()

    def _plain_response(self, status: int, message: str | None = None, log: str = "Request head refused") -> bytes:
        """The answer to a head refused before the app saw it, in the app's own shape (the JSON envelope,
        or OpenAI's error under /v1) with a request id, as every other answer has: the URL, if it came,
        says which. The log line names the id, so a client's report of it finds the line. Its words are
        the server's language (Accept-Language, if it came, chooses), English under /v1 as OpenAI's."""
        request_id = os.urandom(8).hex()
        self.logger.info("%s: %d (request id %s)", log, status, request_id)
        if self.cycle is not None and not self.cycle.response_started:  # its app's access log line says so
            self.cycle.scope[REFUSED] = (status, request_id)  # type: ignore[literal-required]
        path = bytes(self.url).split(b"?", 1)[0].decode("latin-1") if self.url else ""
        if "://" in path:  # absolute-form (http://host/path): the door is the path's
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        language = self.language
        if is_openai_path(path):
            language = "en"
        else:
            for name, value in self.headers:
                if name == b"accept-language":
                    language = pick_language(value.decode("latin-1"), language)
        words = HEAD_MESSAGES.get(message or status) or (STATUS_LINE[status][13:-2].decode(), "")
        body = head_error_body(status, words[1] if language == "zh" and words[1] else words[0], path)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"x-request-id: " + request_id.encode() + b"\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        return b"".join(content)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(self._plain_response(400, msg))
        self.transport.close()

    def _refuse_body(self, status: int = 431, log: str = "Request body framing refused") -> None:
        """Too much besides a body's data (431), or a body the parser cannot read (400): the request is
        answered if nothing was answered yet, and the connection closed (the application, waiting for the
        body's end, sees the client gone)."""
        self._rejected = True
        self._cancel_head_timer()
        if self._answer_owed_first(f"{log}: {status}"):
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(self._plain_response(status, self._reject_message, log=log))
        else:
            self.logger.info("%s: %d", log, status)
        self.transport.close()

    def _answer_owed_first(self, what: str) -> bool:
        """A pipelined request refused while the one before it is still being answered: that answer goes
        out whole first (a refusal now would be read as its answer), then the connection closes; the
        refused request, never started, is dropped."""
        owed, cycle = self._owed, self.cycle
        if owed is None or owed.response_complete or cycle is None or cycle.response_started:
            return False
        for queued in list(self.pipeline):
            if queued[0] is cycle:
                self.pipeline.remove(queued)
        self.cycle = owed
        owed.keep_alive = False
        self.flow.pause_reading()
        self.logger.info("%s (after the response owed)", what)
        return True

    def _reject(self, status: int) -> None:
        self._rejected = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A response (or a pipelined request) is still owed on this connection: let it finish, then close.
            self.logger.info("Request head refused: %d (after the response owed)", status)
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(self._plain_response(status, self._reject_message))
        self.transport.close()


def protocol_class(
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(..., http=...)`` with these bounds on each request head."""
    if max_head_bytes < 64:
        raise ValueError("max_head_bytes must be at least 64")
    if max_headers < 1:
        raise ValueError("max_headers must be at least 1")
    if not head_timeout_s > 0:
        raise ValueError("head_timeout_s must be positive")

    class Limited(LimitedHttpToolsProtocol):
        pass

    Limited.max_head_bytes = max_head_bytes
    Limited.max_headers = max_headers
    Limited.head_timeout_s = float(head_timeout_s)
    return Limited


def configure(max_head_bytes: int, max_headers: int, head_timeout_s: float,
              language: str = "zh") -> type[LimitedHttpToolsProtocol]:  # fmt: skip
    """Set this process's bounds on the module-level class itself and return it. Worker processes get
    the class by name (uvicorn pickles its config to start them), so each one calls this from the
    settings it reads; a class made inside a function could not be sent to them."""
    configured = protocol_class(max_head_bytes, max_headers, head_timeout_s)
    LimitedHttpToolsProtocol.max_head_bytes = configured.max_head_bytes
    LimitedHttpToolsProtocol.max_headers = configured.max_headers
    LimitedHttpToolsProtocol.head_timeout_s = configured.head_timeout_s
    LimitedHttpToolsProtocol.language = language
    return LimitedHttpToolsProtocol
