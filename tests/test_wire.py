"""The lean upstream HTTP client (upstreams/wire.py) against a raw TCP server that sends exactly the
bytes each test gives it: what well-behaved servers send, and what hostile or broken ones do."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chatgpt_server.errors import BadGateway, ServiceError
from chatgpt_server.upstreams import wire as wire_module
from chatgpt_server.upstreams.http import finish_response, read_limited, transport_error
from chatgpt_server.upstreams.wire import MAX_HEAD, ConnectFailed, CutOff, Disconnected, NotHTTP, Wire

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello"


class Raw:
    """A TCP server running ``script`` for each connection; counts connections and requests."""

    def __init__(self, script: Script):
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.script(reader, writer)

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body


def run(script: Callable[[Raw], Script], body: Callable[[Wire, str, Raw], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        holder: list[Raw] = []
        raw = Raw(lambda r, w: script(holder[0])(r, w))
        holder.append(raw)
        wire = Wire()
        async with raw as url:
            try:
                return await asyncio.wait_for(body(wire, url, raw), 10)  # a regression fails, never hangs
            finally:
                wire.close()

    return asyncio.run(go())


def test_a_request_is_one_well_formed_write_and_the_connection_is_reused() -> None:
    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await raw.request(reader)
                writer.write(OK)

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        for i in range(3):
            response = await wire.post(url, b'{"n": %d}' % i, {"Authorization": "Bearer k", "X-A": "b"})
            assert response.status == 200 and response.headers["content-type"] == "application/json"
            assert await response.content.read() == b"hello"
            response.release()
        assert raw.connections == 1
        first = raw.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nContent-Length: 8\r\n" in first and b"\r\nAuthorization: Bearer k\r\n" in first
        assert first.endswith(b'\r\n\r\n{"n": 0}')

    run(script, body)


def test_a_chunked_stream_arrives_piece_by_piece_and_a_close_tells_the_server() -> None:
    more = asyncio.Event()

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await raw.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await more.wait()
            writer.write(b"6\r\nsecond\r\n")
            await writer.drain()
            await reader.read()  # until the client closes
            raw.closed_by_client.set()

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        response = await wire.post(url, b"{}", {})
        pieces = response.content.iter_any()
        assert await anext(pieces) == b"first"  # before the rest was even written
        more.set()
        assert await anext(pieces) == b"second"
        response.close()  # given up before the end
        await asyncio.wait_for(raw.closed_by_client.wait(), 2)

    run(script, body)


@pytest.mark.parametrize(
    ("answer", "error", "detail"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (MAX_HEAD + 10), NotHTTP, "the answer is not valid HTTP"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", NotHTTP, "the answer is not valid HTTP"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx",
            NotHTTP,
            "the answer is not valid HTTP",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            NotHTTP,
            "the answer is not valid HTTP",
        ),
        (b"", Disconnected, "the server closed the connection"),
        (b"HTTP/1.1 200 OK\r\nCont", Disconnected, "the server closed the connection"),
    ],
    ids=["endless-head", "not-http", "content-coding", "length-and-chunked", "closed", "closed-in-head"],
)
def test_a_broken_head_is_a_precise_error(answer: bytes, error: type[Exception], detail: str) -> None:
    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await raw.request(reader)
            writer.write(answer)
            await writer.drain()
            writer.close()

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        with pytest.raises(error) as raised:
            await wire.post(url, b"{}", {})
        shown = transport_error(raised.value, "upstream.test", 0)
        assert isinstance(shown, BadGateway) and detail == shown.params["detail"], shown.params

    run(script, body)


def test_a_body_cut_short_is_an_error_and_a_body_until_close_is_whole() -> None:
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly5", b"HTTP/1.1 200 OK\r\n\r\nuntil the end"]

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await raw.request(reader)
            writer.write(answers[raw.connections - 1])
            await writer.drain()
            writer.close()

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        cut = await wire.post(url, b"{}", {})
        with pytest.raises(CutOff):
            await read_limited(cut, 1000, "upstream.test")
        whole = await wire.post(url, b"{}", {})
        assert await read_limited(whole, 1000, "upstream.test") == b"until the end"
        whole.release()
        assert raw.connections == 2

    run(script, body)


def test_a_second_answer_to_one_request_is_never_read() -> None:
    smuggled = b"HTTP/1.1 500 Smuggled\r\nContent-Length: 3\r\n\r\nbad"

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await raw.request(reader)
                writer.write(OK + smuggled)

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        for _ in range(2):
            response = await wire.post(url, b"{}", {})
            assert response.status == 200 and await response.content.read() == b"hello"
            response.release()
        assert raw.connections == 2  # the connection that carried more was not used again

    run(script, body)


def test_connect_failure_and_header_injection_are_refused() -> None:
    async def go() -> None:
        wire = Wire()
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        with pytest.raises(ConnectFailed) as raised:
            await wire.post(f"http://127.0.0.1:{port}/v1", b"{}", {})
        shown: ServiceError = transport_error(raised.value, "upstream.test", 0)
        assert shown.params["detail"] == "connection failed (Connection refused)"
        with pytest.raises(ValueError, match="line break"):
            await wire.post(f"http://127.0.0.1:{port}/v1", b"{}", {"X-A": "v\r\nInjected: yes"})

    asyncio.run(go())


@pytest.mark.parametrize(
    "interim", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"]
)
def test_an_informational_answer_is_skipped_and_never_taken_for_the_answer(interim: bytes) -> None:
    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                request = await raw.request(reader)
                writer.write(interim)
                await writer.drain()
                await asyncio.sleep(0.02)
                answer = request[request.index(b"\r\n\r\n") + 4 :]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        for mine in (b"for A", b"for B"):
            response = await wire.post(url, mine, {})
            assert response.status == 200 and "link" not in response.headers
            assert await response.content.read() == mine
            response.release()

    run(script, body)


def test_endless_trailers_and_a_switch_of_protocols_are_refused() -> None:
    trailer = b"X-T: " + b"a" * 1000 + b"\r\n"
    answers = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n" + trailer,
               b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"]  # fmt: skip

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await raw.request(reader)
            answer = answers[raw.connections - 1]
            writer.write(answer)
            for _ in range(MAX_HEAD // 1000 + 10 if raw.connections == 1 else 0):  # trailer lines, no end
                writer.write(b"X-T: " + b"a" * 1000 + b"\r\n")
                await writer.drain()
            await reader.read()

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        trailing = await wire.post(url, b"{}", {})
        with pytest.raises(NotHTTP, match="not valid HTTP"):
            await trailing.content.read()
        with pytest.raises(NotHTTP):
            await wire.post(url, b"{}", {})

    run(script, body)


def test_what_follows_the_end_of_a_stream_is_drained_within_bounds() -> None:
    """A stream that keeps sending after its last event: the connection is given up, not read forever."""

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await raw.request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                while True:
                    writer.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                    await writer.drain()
            except ConnectionError:
                raw.closed_by_client.set()

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        response = await wire.post(url, b"{}", {})
        await anext(response.content.iter_any())
        finish_response(response, complete=True)  # read to its end, as far as the caller knows
        await asyncio.wait_for(raw.closed_by_client.wait(), 3)

    run(script, body)


def test_a_connection_whose_request_was_answered_before_it_was_sent_is_not_reused() -> None:
    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the head only: answered at once, the body read later
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno")
            await writer.drain()
            await asyncio.sleep(1)
            while await reader.read(1 << 20):
                pass

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        first = await wire.post(url, b"x" * (20 << 20), {})
        assert first.status == 401 and await first.content.read() == b"no"
        first.release()
        second = await asyncio.wait_for(wire.post(url, b"{}", {}), 0.5)  # not queued behind 20 MB
        assert second.status == 401
        second.close()
        assert raw.connections == 2

    run(script, body)


def _end_connection(writer: asyncio.StreamWriter, how: str) -> None:
    if how == "reset":  # an abortive close: the client reads a reset, not an end of stream
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


@pytest.mark.parametrize("how", ["end", "reset"])
def test_a_kept_alive_connection_closed_as_our_request_went_out_is_retried_once_on_a_new_one(
    how: str, monkeypatch: Any
) -> None:
    """The upstream closes a connection it kept alive just as the next request arrives on it (its idle
    timer fired): that request is sent again on a new connection instead of failing the turn."""
    monkeypatch.setattr(wire_module, "STALE_IDLE_S", 0.1)

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = raw.connections == 1
            await raw.request(reader)
            writer.write(OK)
            await writer.drain()
            await raw.request(reader)
            if first:
                _end_connection(writer, how)
                return
            writer.write(OK)
            await writer.drain()

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        for n in range(2):
            response = await wire.post(url, b'{"n": %d}' % n, {})
            assert response.status == 200 and await response.content.read() == b"hello"
            response.release()
            await asyncio.sleep(0.15)  # idle, as a connection an upstream's idle timer closes has been
        assert raw.connections == 2
        assert [r.rsplit(b"\r\n", 1)[1] for r in raw.requests] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 1}']

    run(script, body)


@pytest.mark.parametrize("case", ["new connection", "part of a head", "too late", "reset late", "busy connection"])
def test_a_request_the_upstream_may_have_acted_on_is_never_sent_twice(case: str, monkeypatch: Any) -> None:
    """Only a reused connection that had been idle, and ended at once before any byte of an answer, is
    retried: an end on a new connection or on one in use moments before, after part of an answer, or
    a while after the request is a failure of the upstream, and the request (which may have been
    acted on, and paid for) is not sent again."""
    monkeypatch.setattr(wire_module, "STALE_S", 0.2)
    monkeypatch.setattr(wire_module, "STALE_IDLE_S", 0.0 if case != "busy connection" else 10.0)

    def script(raw: Raw) -> Script:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if case != "new connection":
                await raw.request(reader)
                writer.write(OK)
                await writer.drain()
            await raw.request(reader)
            if case == "part of a head":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-")
                await writer.drain()
            elif case in ("too late", "reset late"):
                await asyncio.sleep(0.4)
            _end_connection(writer, "reset" if case == "reset late" else "end")

        return serve

    async def body(wire: Wire, url: str, raw: Raw) -> None:
        if case != "new connection":
            response = await wire.post(url, b"{}", {})
            assert await response.content.read() == b"hello"
            response.release()
        with pytest.raises(Disconnected):
            await wire.post(url, b'{"last": 1}', {})
        assert raw.connections == 1
        assert sum(r.endswith(b'{"last": 1}') for r in raw.requests) == 1

    run(script, body)


def _authority_and_server_context(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throw-away certificate authority, and a server context holding a certificate it signed for
    ``name`` (127.0.0.1 as an IP address, or a DNS name)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test authority")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    alt = x509.IPAddress(ipaddress.ip_address(name)) if name[0].isdigit() else x509.DNSName(name)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    (tmp_path / "server.pem").write_bytes(
        cert.public_bytes(pem) + key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "server.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return client, server


@pytest.mark.parametrize("name", ["127.0.0.1", "upstream.invalid"])
def test_https_is_verified_against_the_authority_and_the_host_name(tmp_path: Path, name: str) -> None:
    """Over TLS the answer is read as over plain TCP when the certificate is the host's; a certificate
    for another name fails the connection, never falls back."""
    client, server = _authority_and_server_context(tmp_path, name)

    async def go() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    await reader.readexactly(2)
                    writer.write(OK)

        tls_server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = tls_server.sockets[0].getsockname()[1]
        wire = Wire(client)
        try:
            url = f"https://127.0.0.1:{port}/v1/chat/completions"
            if name == "127.0.0.1":
                for _ in range(2):
                    response = await asyncio.wait_for(wire.post(url, b"{}", {}), 5)
                    assert response.status == 200 and await response.content.read() == b"hello"
                    response.release()
            else:
                with pytest.raises(ConnectFailed) as raised:
                    await asyncio.wait_for(wire.post(url, b"{}", {}), 5)
                assert "TLS" in str(transport_error(raised.value, "upstream.test", 0).params["detail"])
        finally:
            wire.close()
            tls_server.close()

    asyncio.run(go())
