"""Real servers for the tests: stand-in upstreams in a background thread, the app as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether condition becomes true within seconds (polled every 10 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedApps:
    """aiohttp applications served on 127.0.0.1 from one background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def serve(self, app: web.Application, port: int | None = None) -> str:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port or 0)
            await site.start()
            self._runners.append(runner)
            return int(runner.addresses[-1][1])

        bound = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return f"http://127.0.0.1:{bound}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the stand-ins' loop (their state is touched only there)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


class ServerProcess:
    """``chatgpt-server serve`` in a subprocess, with its log in a file."""

    logs: ClassVar[list[Path]] = []  # every log of the run, checked for secrets at the end

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None):
        self.workdir = workdir
        self.env = env
        self.port = port or free_port()
        self.log_path = workdir / f"server-{self.port}.log"
        ServerProcess.logs.append(self.log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        for attempt in range(3):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except RuntimeError:
                # The port we picked was taken meanwhile by another process of the run: pick again.
                if attempt == 2 or "address already in use" not in self.log():
                    raise
                self.port = free_port()
        return self

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
        env.update(self.env)
        env.setdefault("CHATGPT_SERVER_DATA_DIR", str(self.workdir / "data"))
        # The suite reads English messages; "default" leaves the setting unset (its default is checked).
        if env.setdefault("CHATGPT_SERVER_LANGUAGE", "en") == "default":
            del env["CHATGPT_SERVER_LANGUAGE"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatgpt_server", "serve", "--port", str(self.port)],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running(workdir: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(workdir, env).start()
    try:
        yield server
    finally:
        server.stop()
