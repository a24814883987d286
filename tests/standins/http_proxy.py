"""A minimal forward HTTP proxy (absolute-form requests, one request per connection), to check that
upstream calls really go through CHATGPT_SERVER_PROXY."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = [h for h in lines[1:] if h and not h.lower().startswith(("proxy-", "connection:"))]
            length = next((int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length)
            url = urlsplit(target)
            self.seen.append(f"{method} {target}")
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            path = url.path + (f"?{url.query}" if url.query else "")
            request = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
            up_writer.write(request.encode("latin-1") + body)
            await up_writer.drain()
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
