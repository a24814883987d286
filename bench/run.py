"""The benchmark: the gateway against a direct call to the same stand-in upstream, in one run.

    python -m bench.run                 # everything (about three minutes)
    python -m bench.run --only mode1    # mode1, history, stores, mode2, stream

It starts the stand-ins and the gateway as separate processes on 127.0.0.1, drives them with wrk
(apt-get install wrk) and, for streams, with a small asyncio client; persistence is on (SQLite by
default). Figures are printed as markdown, gateway next to direct, with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-benchmark-key-000000000000"
PY = sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    full_env.update(env or {})
    # Output goes to a file: a pipe nobody reads fills up and then blocks the process writing to it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    httpx.get(url + "/", timeout=0.5)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        log.seek(0)
                        raise RuntimeError(log.read().decode(errors="replace")) from None
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def openai_standin(chunk_delay: float = 0.0) -> Any:
    port = free_port()
    args = [PY, "-m", "tests.standins.openai_api", "--port", str(port), "--chunk-delay", str(chunk_delay)]
    return process(args, port)


def chatgpt_standin() -> Any:
    port = free_port()
    return process([PY, "-m", "tests.standins.chatgpt_web", "--port", str(port)], port)


def gateway(openai_url: str, store_url: str, data_dir: str, chatgpt_url: str = "") -> Any:
    port = free_port()
    env = {
        "CHATGPT_SERVER_OPENAI_BASE_URL": openai_url + "/v1",
        "CHATGPT_SERVER_STORE_URL": store_url,
        "CHATGPT_SERVER_DATA_DIR": data_dir,
        "CHATGPT_SERVER_DEFAULT_MODEL": "gpt-3.5-turbo",
        "CHATGPT_SERVER_LOG_LEVEL": "WARNING",
    }
    if chatgpt_url:
        env["CHATGPT_SERVER_CHATGPT_URL"] = chatgpt_url + "/backend-api/conversation"
    return process([PY, "-m", "chatgpt_server", "serve", "--port", str(port)], port, env)


# -- wrk ------------------------------------------------------------------------------------------
def lua_post(body: str, headers: dict[str, str] | None = None) -> str:
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()]
    lines.append(f"wrk.body = {json.dumps(body)}")
    return "\n".join(lines)


def wrk(url: str, script: str, connections: int, seconds: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", f.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%")}


def paired(gateway_url: str, gateway_script: str, direct_url: str, direct_script: str, clients: int,
           seconds: float, rounds: int = 3) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Gateway and direct, alternated ``rounds`` times; the median of each figure. On a shared 2-core
    machine one run can land on a busy moment: alternating and taking medians keeps the pair fair."""
    through, direct = [], []
    for _ in range(rounds):
        direct.append(wrk(direct_url, direct_script, clients, seconds))
        through.append(wrk(gateway_url, gateway_script, clients, seconds))

    def median(runs: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    return median(through), median(direct)


def gpt_body(content: str, parent: str | None = None, **options: Any) -> str:
    opts: dict[str, Any] = {"key": KEY, "content": content, "isFollow": parent is not None}
    if parent:
        opts["parentMessageId"] = parent
    if options:
        opts["opts"] = options
    return json.dumps({"mode": "1", "type": "1", "opts": opts})


DIRECT_BODY = json.dumps(
    {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        "max_tokens": 1000,
    }
)


def row(name: str, gw: dict[str, float], direct: dict[str, float]) -> str:
    return (
        f"| {name} | {gw['rps']:.0f} | {direct['rps']:.0f} | {gw['rps'] / direct['rps']:.1%} "
        f"| {gw['p50']:.2f} | {direct['p50']:.2f} | {gw['p50'] - direct['p50']:+.2f} | {gw['p99']:.2f} |"
    )


HEADER = (
    "| scenario | gateway req/s | direct req/s | ratio | gateway p50 ms | direct p50 ms | added p50 ms "
    "| gateway p99 ms |\n|---|---|---|---|---|---|---|---|"
)


# -- scenarios -------------------------------------------------------------------------------------
def bench_mode1(seconds: float, tmp: str) -> list[str]:
    lines = ["### Mode 1, new conversation per request (SQLite, persistence on; medians of 3 alternated runs)", "",
             HEADER]  # fmt: skip
    with openai_standin() as up, gateway(up, f"sqlite:///{tmp}/m1.db", tmp) as gw:
        warm = lua_post(gpt_body("hello there", systemMessage="Be brief."))
        direct_script = lua_post(DIRECT_BODY, {"Authorization": f"Bearer {KEY}"})
        wrk(gw + "/api/v1/gpt/getInfo", warm, 8, 2)  # warm-up
        for clients in (1, 32):
            through, direct = paired(gw + "/api/v1/gpt/getInfo", warm, up + "/v1/chat/completions", direct_script,
                                     clients, seconds)  # fmt: skip
            lines.append(row(f"{clients} client{'s' if clients > 1 else ''}", through, direct))
    return lines


def build_conversation(url: str, depth: int) -> str:
    parent = None
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(depth):
            body = json.loads(gpt_body(f"question number {i}", parent, systemMessage="Be brief."))
            parent = c.post("/api/v1/gpt/getInfo", json=body).json()["data"]["id"]
    assert parent
    return str(parent)


def store_urls(tmp: str) -> dict[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect("postgresql://127.0.0.1:5432/test")
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.close()

    asyncio.run(create())
    return {
        "sqlite": f"sqlite:///{tmp}/history.db",
        "redis": f"redis://127.0.0.1:6379/0?prefix=bench-{uuid.uuid4().hex[:8]}:",
        "postgresql": f"postgresql://127.0.0.1:5432/test?search_path={schema}",
    }


def bench_stores(seconds: float, tmp: str) -> list[str]:
    """Per store: throughput, and follow-up latency by depth.

    With the default budget (4000 - 1000 tokens) a deeper conversation also means a longer prompt, up
    to the budget, which costs the upstream as much as us: so each follow-up is compared with the very
    same upstream request sent directly. With a small budget (150 tokens, about 8 turns) every depth
    sends the same prompt, which isolates what depth itself costs.
    """
    lines = [
        "### Stores: throughput, and follow-up latency by conversation depth",
        "",
        "| store | req/s at 32 clients | depth | p50 ms, budget 3000 | direct p50 ms, same upstream request "
        "| added ms | p50 ms, budget 150 |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    with openai_standin() as up:
        for name, url in store_urls(tmp).items():
            with gateway(up, url, tmp) as gw:
                script = lua_post(gpt_body("hello there", systemMessage="Be brief."))
                wrk(gw + "/api/v1/gpt/getInfo", script, 8, 1)
                throughput = wrk(gw + "/api/v1/gpt/getInfo", script, 32, seconds)
                small: dict[int, float] = {}
                for depth in (10, 100, 1000):
                    tip = build_conversation(gw, depth)
                    follow = wrk(gw + "/api/v1/gpt/getInfo", lua_post(gpt_body("and now?", tip,
                                 systemMessage="Be brief.")), 1, seconds)  # fmt: skip
                    same = httpx.get(up + "/_last").text
                    direct = wrk(up + "/v1/chat/completions", lua_post(same, {"Authorization": f"Bearer {KEY}"}),
                                 1, seconds)  # fmt: skip
                    small[depth] = wrk(gw + "/api/v1/gpt/getInfo", lua_post(gpt_body("and now?", tip,
                                       systemMessage="Be brief.", maxModelTokens=1150)), 1, seconds)["p50"]  # fmt: skip
                    lines.append(
                        f"| {name} | {throughput['rps']:.0f} | {depth} | {follow['p50']:.2f} | {direct['p50']:.2f} "
                        f"| {follow['p50'] - direct['p50']:+.2f} | {small[depth]:.2f} |"
                    )
                ratios.append(f"{name} {small[1000] / small[10]:.2f}x")
    lines += ["", "Depth 1000 against depth 10 at the same prompt size (budget 150): " + ", ".join(ratios) + "."]
    return lines


def bench_mode2(seconds: float, tmp: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from tests.standins.chatgpt_web import mint

    tokens = [mint(f"bench{i}@example.com", ttl=86400) for i in range(64)]
    token_list = "{" + ",".join(json.dumps(t) for t in tokens) + "}"
    message = {"id": str(uuid.uuid4()), "author": {"role": "user"}, "content": {"content_type": "text",
               "parts": ["hello there"]}}  # fmt: skip
    direct_body = json.dumps({"action": "next", "messages": [message], "model": "auto",
                              "parent_message_id": str(uuid.uuid4()), "supported_encodings": ["v1"]})  # fmt: skip
    # wrk: a different account per request, as many users would be (one account is served one at a time).
    direct_script = f"""
tokens = {token_list}
n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {{["Content-Type"]="application/json", ["Accept"]="text/event-stream",
    ["Authorization"]="Bearer " .. tokens[n % #tokens + 1]}}, {json.dumps(direct_body)})
end"""
    gateway_script = f"""
tokens = {token_list}
n = 0
request = function()
  n = n + 1
  local body = '{{"mode":"2","type":"1","opts":{{"key":"' .. tokens[n % #tokens + 1] ..
    '","content":"hello there","isFollow":false}}}}'
  return wrk.format("POST", nil, {{["Content-Type"]="application/json"}}, body)
end"""
    lines = ["### Mode 2 (ChatGPT web backend stand-in, v1 delta encoding, 64 accounts; medians of 3)", "", HEADER]
    with openai_standin() as up, chatgpt_standin() as web, gateway(up, f"sqlite:///{tmp}/m2.db", tmp, web) as gw:
        wrk(gw + "/api/v1/gpt/getInfo", gateway_script, 8, 2)
        for clients in (1, 32):
            through, direct = paired(gw + "/api/v1/gpt/getInfo", gateway_script, web + "/backend-api/conversation",
                                     direct_script, clients, seconds)  # fmt: skip
            lines.append(row(f"{clients} client{'s' if clients > 1 else ''}", through, direct))
    lines += ["", *parser_cost()]
    return lines


def parser_cost() -> list[str]:
    from tests.test_parsers import classic_stream, delta_stream

    from chatgpt_server.upstreams.sse import SSEDecoder
    from chatgpt_server.upstreams.web_reply import WebReplyParser

    pieces = [f" word{i}" for i in range(300)]
    lines = ["| reply parser (300 chunks, ~2,100 characters) | µs per reply | µs per frame |", "|---|---|---|"]
    for name, form in (("v1 delta", delta_stream), ("classic", classic_stream)):
        data = form(pieces)
        chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
        runs = 200
        started = time.perf_counter()
        for _ in range(runs):
            decoder, parser = SSEDecoder(), WebReplyParser()
            for chunk in chunks:
                for event in decoder.feed(chunk):
                    parser.feed(event)
        per_reply = (time.perf_counter() - started) / runs * 1e6
        lines.append(f"| {name} | {per_reply:.0f} | {per_reply / (len(pieces) + 4):.2f} |")
    return lines


async def first_byte(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                     marker: bytes) -> float:  # fmt: skip
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            if marker in buffer:
                elapsed = time.perf_counter() - started
                break
        else:
            raise RuntimeError(f"no {marker!r} in {buffer[:200]!r}")
        await response.read()
    return elapsed


async def stream_events(url: str, body: bytes, headers: dict[str, str], marker: bytes, seconds: float,
                        concurrency: int) -> float:  # fmt: skip
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            async with session.post(url, data=body, headers=headers) as response:
                async for line in response.content:
                    if line.startswith(marker):
                        count += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


async def forwarding_gaps(url: str, body: bytes) -> list[float]:
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
        async for line in response.content:
            if line.startswith(b"event: delta"):
                arrivals.append(time.perf_counter())
    return [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]


def bench_stream(seconds: float, tmp: str) -> list[str]:
    words = " ".join(f"w{i}" for i in range(100))
    direct_body = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": words}],
                              "stream": True}).encode()  # fmt: skip
    gateway_body = json.dumps({"mode": "1", "type": "2", "opts": {"key": KEY, "content": words, "isFollow": False,
                               "opts": {"systemMessage": ""}}}).encode()  # fmt: skip
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    lines = ['### Streams (mode 1, type "2", 101 chunks per reply)', ""]
    with openai_standin() as up, gateway(up, f"sqlite:///{tmp}/s.db", tmp) as gw:

        async def ttfb() -> tuple[float, float]:
            async with aiohttp.ClientSession() as s:
                d, g = [], []
                for _ in range(200):
                    d.append(await first_byte(s, up + "/v1/chat/completions", direct_body, auth, b'"content":"echo'))
                    g.append(await first_byte(s, gw + "/api/v1/gpt/getInfo", gateway_body, plain, b"event: delta"))
                return statistics.median(d) * 1000, statistics.median(g) * 1000

        direct_ms, gateway_ms = asyncio.run(ttfb())
        direct_eps = asyncio.run(stream_events(up + "/v1/chat/completions", direct_body, auth, b"data: {", seconds, 32))
        gateway_eps = asyncio.run(
            stream_events(gw + "/api/v1/gpt/getInfo", gateway_body, plain, b"event: delta", seconds, 32)
        )
        # wrk, lighter than any Python client: the whole of a two-chunk stream bounds its time to first text.
        short_direct = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
                                   "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
        short_gateway = json.dumps({"mode": "1", "type": "2", "opts": {"key": KEY, "content": "hi", "isFollow": False,
                                    "opts": {"systemMessage": ""}}})  # fmt: skip
        wrk(gw + "/api/v1/gpt/getInfo", lua_post(short_gateway), 1, 1)
        whole_direct = wrk(up + "/v1/chat/completions", lua_post(short_direct, {"Authorization": f"Bearer {KEY}"}), 1,
                           seconds)["p50"]  # fmt: skip
        whole_gateway = wrk(gw + "/api/v1/gpt/getInfo", lua_post(short_gateway), 1, seconds)["p50"]
    added = gateway_ms - direct_ms
    lines += [
        "| measure | gateway | direct | difference |",
        "|---|---|---|---|",
        f"| whole two-chunk stream, wrk p50 (ms): bounds time to first text | {whole_gateway:.2f} "
        f"| {whole_direct:.2f} | {whole_gateway - whole_direct:+.2f} |",
        f"| time to first text, Python client, median of 200 (ms) | {gateway_ms:.2f} | {direct_ms:.2f} "
        f"| {added:+.2f} |",
        f"| events/s, 32 concurrent streams | {gateway_eps:.0f} | {direct_eps:.0f} | {gateway_eps / direct_eps:.1%} |",
    ]
    with openai_standin(chunk_delay=0.02) as slow, gateway(slow, f"sqlite:///{tmp}/s2.db", tmp) as gw:
        body = json.dumps({"mode": "1", "type": "2", "opts": {"key": KEY, "content": " ".join(["x"] * 30),
                           "isFollow": False, "opts": {"systemMessage": ""}}}).encode()  # fmt: skip
        gaps = asyncio.run(forwarding_gaps(gw + "/api/v1/gpt/getInfo", body))
    lines += [
        "",
        f"Forwarding with the upstream writing a chunk every 20 ms: {len(gaps) + 1} chunks in, "
        f"{len(gaps) + 1} delta events out; gap between events min {min(gaps):.1f} ms, "
        f"median {statistics.median(gaps):.1f} ms (no batching: each chunk leaves before the next arrives).",
    ]
    return lines


SCENARIOS = {"mode1": bench_mode1, "stores": bench_stores, "mode2": bench_mode2, "stream": bench_stream}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    print(f"# chatgpt-server benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores\n")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            print("\n".join(SCENARIOS[name](args.seconds, tmp)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
