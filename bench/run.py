"""The benchmark: every door of the gateway against a direct call to the same stand-in upstream, in one run.

    python -m bench.run                              # every row, every store (about ten minutes)
    python -m bench.run --only tail --soak 60        # the 60 s tail-latency run
    python -m bench.run --only new,mode2 --stores sqlite --seconds 5 --rounds 5
    python -m bench.run --extras                     # also: stream events/s, forwarding gaps, parser cost

It starts the stand-ins (tests/standins/openai_api.py and codex.py) and the gateway as separate
processes on 127.0.0.1 (their output goes to files, shown when something fails), drives them with wrk
(apt-get install wrk) and, for time to first event, with a small asyncio client. Every figure stands
next to its baseline measured in the same run: the stand-in called directly with the very request the
gateway sent upstream (read back from the stand-in's ``/_last``), or the original route. Runs of the
gateway and its baselines alternate ``--rounds`` times and the medians are kept. A row whose requests
got anything but 2xx (or socket errors) prints FAILED and the reason, never a number. The machine is
shared: each row waits (``--wait-quiet``) for others to leave the CPU, and its "other load" column says
how much of the CPU processes outside the bench (and outside Redis/PostgreSQL) used while it ran; a
figure marked ⚠ (10% or more) is not to be trusted.

Rows (``--only``): new, responses, chat, mode2 (new conversations through every door, one alternated
group), followup, history128k (a 1,000-turn conversation), responses_followup, stream, responses_stream,
workers (SQLite only), tail. Stores (``--stores``): sqlite, redis (its own key prefix, deleted after),
postgresql (its own schema, dropped after).
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-benchmark-key-000000000000"
PY = sys.executable
MODEL = "gpt-3.5-turbo"  # the gateway's default model in this bench (cl100k, as the original's)
BIG_MODEL = "gpt-4o-mini"  # 128k window at the stand-in, for the long-history rows
CODEX_MODEL = "gpt-5"
SYSTEM = "Be brief."
AUTH_CLAIM = "https://api.openai.com/auth"
ROWS = ("new", "responses", "chat", "mode2", "followup", "history128k", "responses_followup", "stream",
        "responses_stream", "workers", "tail")  # fmt: skip
STORES = ("sqlite", "redis", "postgresql")
# ~95 words, each one o200k/cl100k token with its leading space: messages of ~100 tokens.
COMMON = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part"
)
WORDS = tuple(COMMON.split())


class RowFailed(Exception):
    """A measurement that cannot give a number: what went wrong, for the table's footnotes."""


@dataclass
class Config:
    seconds: int
    rounds: int
    soak: int
    samples: int
    turns: int
    wait_quiet: int
    work: Path  # bodies, Lua scripts, logs, SQLite files
    rows: set[str]
    notes: list[str] = field(default_factory=list)  # footnotes under the table

    def wants(self, *rows: str) -> bool:
        return any(r in self.rows for r in rows)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- processes ------------------------------------------------------------------------------------
@dataclass
class Proc:
    url: str
    pid: int
    log: Path

    def tail(self, lines: int = 8) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextmanager
def process(name: str, args: list[str], port: int, cfg: Config, env: dict[str, str] | None = None) -> Iterator[Proc]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    full_env.update(env or {})
    log_path = cfg.work / f"{name}-{port}.log"
    # Output goes to a file: a pipe nobody reads fills up and then blocks the process writing to it.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        found = Proc(f"http://127.0.0.1:{port}", proc.pid, log_path)
        try:
            for _ in range(400):
                try:
                    httpx.get(found.url + "/", timeout=0.5)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited at start-up:\n{found.tail(30)}") from None
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"{name} did not answer within 20 s:\n{found.tail(30)}")
            yield found
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def openai_standin(cfg: Config, chunk_delay: float = 0.0) -> Any:
    port = free_port()
    args = [PY, "-m", "tests.standins.openai_api", "--port", str(port), "--chunk-delay", str(chunk_delay)]
    return process("openai-standin", args, port, cfg)


def codex_standin(cfg: Config) -> Any:
    port = free_port()
    return process("codex-standin", [PY, "-m", "tests.standins.codex", "--port", str(port), "--no-auth"], port, cfg)


def gateway(cfg: Config, name: str, openai_url: str, store_url: str, codex_url: str = "", workers: int = 1,
            src: Path | None = None, settings: dict[str, str] | None = None) -> Any:  # fmt: skip
    """The gateway as a process; ``src``: run that source tree instead (bench/before_after.py)."""
    port = free_port()
    data_dir = cfg.work / f"data-{name}"
    data_dir.mkdir(exist_ok=True)
    env = {
        "CHATGPT_SERVER_OPENAI_BASE_URL": openai_url + "/v1",
        "CHATGPT_SERVER_STORE_URL": store_url,
        "CHATGPT_SERVER_DATA_DIR": str(data_dir),
        "CHATGPT_SERVER_DEFAULT_MODEL": MODEL,
        "CHATGPT_SERVER_LOG_LEVEL": "WARNING",
        "CHATGPT_SERVER_CHATGPT_BACKEND": "codex",
        # Mode 2's tokens cannot be verified here (nothing listens there): the gateway binds each
        # conversation to the token itself, as it does when the issuer's JWKS is unreachable.
        "CHATGPT_SERVER_CHATGPT_AUTH_ISSUER": f"http://127.0.0.1:{free_port()}",
    }
    if codex_url:
        env["CHATGPT_SERVER_CODEX_URL"] = codex_url + "/backend-api/codex"
    if src is not None:
        env["PYTHONPATH"] = str(src)  # ahead of the installed (editable) package
    env.update(settings or {})
    args = [PY, "-m", "chatgpt_server", "serve", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    return process(f"gateway-{name}", args, port, cfg, env)


def worker_pids(pid: int) -> list[int]:
    """The processes that serve requests: the spawned workers under a supervisor, else the process itself."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                children.append(int(entry.name))
    return sorted(children) or [pid]


def rss_mb(pid: int) -> list[float]:
    sizes = []
    for worker in worker_pids(pid):
        status = Path(f"/proc/{worker}/status").read_text()
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert m, status
        sizes.append(int(m.group(1)) / 1024)
    return sizes


# -- targets and wrk ------------------------------------------------------------------------------
@dataclass
class Target:
    """One kind of request: where, what, and how to tell a good answer (checked once before wrk runs)."""

    label: str
    url: str
    body: bytes
    headers: dict[str, str]
    check: Callable[[httpx.Response], str | None]
    lua: str = ""  # a request() function; default: the fixed body and headers
    script: Path = Path()


_counter = itertools.count()


def make_target(cfg: Config, label: str, url: str, body: bytes | str, headers: dict[str, str] | None = None,
                check: Callable[[httpx.Response], str | None] | None = None, lua: str = "") -> Target:  # fmt: skip
    data = body.encode() if isinstance(body, str) else body
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    n = next(_counter)
    body_file = cfg.work / f"body-{n}.json"
    body_file.write_bytes(data)
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in all_headers.items()]
    # The body is read from a file: a 500 kB history needs no escaping into a Lua literal.
    lines += [f"local f = assert(io.open({json.dumps(str(body_file))}, 'rb'))", "wrk.body = f:read('*a')", "f:close()"]
    script = cfg.work / f"script-{n}.lua"
    script.write_text("\n".join(lines) + "\n" + lua)
    return Target(label, url, data, all_headers, check or status_only, lua, script)


def status_only(response: httpx.Response) -> str | None:
    return None


def probe(target: Target) -> httpx.Response:
    """One request first: a target that does not answer well fails its rows before any timing."""
    try:
        response = httpx.post(target.url, content=target.body, headers=target.headers, timeout=60)
    except httpx.HTTPError as exc:
        raise RowFailed(f"{target.label}: {type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise RowFailed(f"{target.label}: HTTP {response.status_code}: {response.text[:300]}")
    problem = target.check(response)
    if problem:
        raise RowFailed(f"{target.label}: {problem}: {response.text[:300]}")
    return response


@dataclass
class Figure:
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    requests: int = 0
    problem: str = ""


def wrk(target: Target, connections: int, seconds: int, every: Callable[[], None] | None = None) -> Figure:
    """One wrk run; ``every`` is called about once a second while it runs."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", "--timeout", "10s", "--latency", "-s",
            str(target.script), target.url]  # fmt: skip
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True)
        while True:
            try:
                proc.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                if every is not None:
                    every()
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return 0.0
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    done = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    figure = Figure(float(rps.group(1)) if rps else 0.0, ms("50%"), ms("99%"), int(done.group(1)) if done else 0)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if bad:
        figure.problem = f"{target.label}: {bad.group(1)} of {figure.requests} responses not 2xx"
    elif sockets and any(int(n) for n in sockets.groups()):
        figure.problem = f"{target.label}: socket errors ({sockets.group(0)}) in {figure.requests} requests"
    elif figure.requests == 0:
        said = (err.strip() or out.strip()).splitlines()
        figure.problem = f"{target.label}: no request completed (wrk exit {proc.returncode}): {said[:3]}"
    return figure


def alternate(cfg: Config, targets: list[Target], clients: int) -> dict[str, Figure]:
    """Each target in turn, ``rounds`` times; the median of each figure. On a shared 2-core machine one
    run can land on a busy moment: alternating and taking medians keeps the comparison fair."""
    runs: dict[str, list[Figure]] = {t.label: [] for t in targets}
    for _ in range(cfg.rounds):
        for target in targets:
            runs[target.label].append(wrk(target, clients, cfg.seconds))
    result = {}
    for label, figures in runs.items():
        problems = [f.problem for f in figures if f.problem]
        result[label] = Figure(
            statistics.median(f.rps for f in figures), statistics.median(f.p50 for f in figures),
            statistics.median(f.p99 for f in figures), sum(f.requests for f in figures),
            problems[0] if problems else "",
        )  # fmt: skip
    return result


def warm(targets: list[Target]) -> None:
    for target in targets:
        probe(target)
        figure = wrk(target, 8, 1)
        if figure.problem:
            raise RowFailed(figure.problem)


# -- the table ------------------------------------------------------------------------------------
COLUMNS = ("store", "row", "measure", "gateway", "original route", "direct", "vs original route", "vs direct",
           "target", "met", "other load")  # fmt: skip


@dataclass
class Line:
    store: str
    row: str
    measure: str
    gateway: str = "—"
    original: str = "—"
    direct: str = "—"
    vs_original: str = "—"
    vs_direct: str = "—"
    target: str = "—"
    met: str = "—"
    other: str = "—"  # CPU used by processes outside the bench while the row was measured

    def cells(self) -> list[str]:
        return [self.store, self.row, self.measure, self.gateway, self.original, self.direct, self.vs_original,
                self.vs_direct, self.target, self.met, self.other]  # fmt: skip


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def failed(cfg: Config, store: str, row: str, measure: str, reason: str, log: Proc | None = None) -> Line:
    cfg.notes.append(f"{store} / {row}: {reason}" + (f"\n  gateway log tail:\n{_indent(log.tail())}" if log else ""))
    return Line(store, row, measure, gateway=f"**FAILED** (note {len(cfg.notes)})", met="**FAILED**")


def start_failure(exc: RuntimeError) -> str:
    text = str(exc).splitlines()
    return text[0] + "\n" + _indent("\n".join(text[-6:]))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def rps(f: Figure) -> str:
    return f"{f.rps:,.0f} req/s"


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def first_problem(*figures: Figure) -> str:
    return next((f.problem for f in figures if f.problem), "")


def throughput_line(store: str, row: str, measure: str, gw: Figure, original: Figure | None, direct: Figure | None,
                    target: str, ok: bool | None) -> Line:  # fmt: skip
    line = Line(store, row, measure, gateway=rps(gw), target=target, met="—" if ok is None else verdict(ok))
    if original is not None:
        line.original, line.vs_original = rps(original), f"{gw.rps / original.rps:.0%}"
    if direct is not None:
        line.direct, line.vs_direct = rps(direct), f"{gw.rps / direct.rps:.1%}"
    return line


def latency_line(store: str, row: str, measure: str, gw: float, original: float | None, direct: float | None,
                 target: str, ok: bool | None) -> Line:  # fmt: skip
    line = Line(store, row, measure, gateway=ms(gw), target=target, met="—" if ok is None else verdict(ok))
    if original is not None:
        line.original, line.vs_original = ms(original), f"{gw - original:+.2f} ms"
    if direct is not None:
        line.direct, line.vs_direct = ms(direct), f"{gw - direct:+.2f} ms"
    return line


# -- bodies ---------------------------------------------------------------------------------------
def gpt_body(content: str, parent: str | None = None, kind: str = "1", **options: Any) -> str:
    opts: dict[str, Any] = {"key": KEY, "content": content, "isFollow": parent is not None}
    if parent:
        opts["parentMessageId"] = parent
    if options:
        opts["opts"] = options
    return json.dumps({"mode": "1", "type": kind, "opts": opts})


AUTH = {"Authorization": f"Bearer {KEY}"}


def original_ok(response: httpx.Response) -> str | None:
    data = response.json()
    return None if data.get("success") is True and data["data"].get("text") else "no reply text"


def responses_ok(response: httpx.Response) -> str | None:
    return None if response.json().get("status") == "completed" else "status is not completed"


def chat_ok(response: httpx.Response) -> str | None:
    return None if response.json().get("choices") else "no choices"


def stream_ok(marker: bytes) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        return None if marker in response.content else f"no {marker!r} in the stream"

    return check


def last_upstream_body(up: Proc) -> bytes:
    """What the gateway last sent the OpenAI stand-in, byte for byte."""
    return httpx.get(up.url + "/_last", timeout=30).content


def direct_target(cfg: Config, label: str, up: Proc, check: Callable[[httpx.Response], str | None]) -> Target:
    return make_target(cfg, label, up.url + "/v1/chat/completions", last_upstream_body(up), AUTH, check)


def message(i: int) -> str:
    """About 100 tokens: 'question i:' and 96 common words."""
    return f"question {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(96))


def codex_tokens(count: int) -> list[str]:
    """JWT-shaped access tokens, one account each (an account is served one request at a time)."""
    now = int(time.time())
    return [
        jwt.encode({"iss": "https://auth.bench.invalid", "aud": ["https://api.openai.com/v1"], "sub": f"user-{i}",
                    "exp": now + 86400, AUTH_CLAIM: {"chatgpt_account_id": f"acct-bench-{i:03d}",
                                                      "chatgpt_plan_type": "plus"}},
                   "bench-signing-key-not-a-secret-00", algorithm="HS256", headers={"kid": "bench"})
        for i in range(count)
    ]  # fmt: skip


def codex_targets(cfg: Config, gw: Proc, codex: Proc) -> tuple[Target, Target]:
    tokens = codex_tokens(64)
    accounts = [f"acct-bench-{i:03d}" for i in range(64)]
    lua_tokens = "{" + ",".join(json.dumps(t) for t in tokens) + "}"
    lua_accounts = "{" + ",".join(json.dumps(a) for a in accounts) + "}"
    session = str(uuid.uuid4())
    # What the gateway sends the Codex backend for a new conversation (upstreams/codex.py build_body).
    direct_body = json.dumps({
        "model": CODEX_MODEL, "instructions": SYSTEM,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
        "store": False, "stream": True, "tools": [], "tool_choice": "auto", "parallel_tool_calls": False,
        "prompt_cache_key": session,
    })  # fmt: skip
    codex_headers = {"Accept": "text/event-stream", "originator": "chatgpt_server",
                     "User-Agent": "chatgpt-server/bench", "session_id": session}  # fmt: skip
    header_lua = ", ".join(f"[{json.dumps(k)}]={json.dumps(v)}" for k, v in codex_headers.items())
    direct_lua = f"""
tokens = {lua_tokens}
accounts = {lua_accounts}
n = 0
request = function()
  n = n + 1
  local i = n % #tokens + 1
  return wrk.format("POST", nil, {{["Content-Type"]="application/json", {header_lua},
    ["Authorization"]="Bearer " .. tokens[i], ["ChatGPT-Account-Id"]=accounts[i]}}, wrk.body)
end
"""
    gateway_lua = f"""
tokens = {lua_tokens}
n = 0
request = function()
  n = n + 1
  local body = '{{"mode":"2","type":"1","opts":{{"key":"' .. tokens[n % #tokens + 1] ..
    '","content":"hello there","isFollow":false,"opts":{{"systemMessage":"{SYSTEM}"}}}}}}'
  return wrk.format("POST", nil, {{["Content-Type"]="application/json"}}, body)
end
"""
    opts = {"key": tokens[0], "content": "hello there", "isFollow": False, "opts": {"systemMessage": SYSTEM}}
    gateway_body = json.dumps({"mode": "2", "type": "1", "opts": opts})
    direct = make_target(
        cfg, "Codex stand-in direct", codex.url + "/backend-api/codex/responses", direct_body,
        {**codex_headers, "Authorization": f"Bearer {tokens[0]}", "ChatGPT-Account-Id": accounts[0]},
        stream_ok(b"response.completed"), direct_lua,
    )  # fmt: skip
    through = make_target(cfg, "mode 2", gw.url + "/api/v1/gpt/getInfo", gateway_body, None, original_ok, gateway_lua)
    return through, direct


# -- rows -----------------------------------------------------------------------------------------
def new_doors(cfg: Config, store: str, gw: Proc, up: Proc, codex: Proc) -> list[Line]:
    """New conversations through every door, alternated in one group at 32 clients and at 1 client."""
    lines: list[Line] = []
    original = make_target(cfg, "original route", gw.url + "/api/v1/gpt/getInfo", gpt_body("hello there",
                           systemMessage=SYSTEM), check=original_ok)  # fmt: skip
    try:
        probe(original)
        direct = direct_target(cfg, "direct", up, chat_ok)
        warm([original, direct])
    except RowFailed as exc:
        return [failed(cfg, store, "new", "new conversation, original route", str(exc), gw)]
    group = [direct, original]
    doors: dict[str, Target] = {}
    broken: dict[str, str] = {}
    if "responses" in cfg.rows:
        body = json.dumps({"model": MODEL, "input": "hello there", "instructions": SYSTEM})
        doors["responses"] = make_target(cfg, "/v1/responses", gw.url + "/v1/responses", body, AUTH, responses_ok)
    if "chat" in cfg.rows:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello there"}]
        body = json.dumps({"model": MODEL, "messages": messages, "max_tokens": 1000})
        doors["chat"] = make_target(cfg, "/v1/chat/completions", gw.url + "/v1/chat/completions", body, AUTH, chat_ok)
    if "mode2" in cfg.rows:
        doors["mode2"], doors["codex"] = codex_targets(cfg, gw, codex)
    for name, target in doors.items():
        try:
            warm([target])
            group.append(target)
        except RowFailed as exc:
            broken["mode2" if name == "codex" else name] = str(exc)
    figures = {clients: alternate(cfg, group, clients) for clients in (32, 1)}

    def fig(label: str, clients: int) -> Figure:
        return figures[clients][label]

    new_share = 0.28 if store == "sqlite" else 0.24
    if "new" in cfg.rows:
        problem = first_problem(
            fig("original route", 32), fig("direct", 32), fig("original route", 1), fig("direct", 1)
        )
        if problem:
            lines.append(failed(cfg, store, "new", "new conversation, original route", problem, gw))
        else:
            g32, d32, g1, d1 = fig("original route", 32), fig("direct", 32), fig("original route", 1), fig("direct", 1)
            lines.append(throughput_line(store, "new", "new conversation, original route: 32 clients", g32, None, d32,
                                         f"≥ {new_share:.0%} of direct", g32.rps >= new_share * d32.rps))  # fmt: skip
            lines.append(latency_line(store, "new", "new conversation, original route: p50, 1 client", g1.p50, None,
                                      d1.p50, "≤ +0.45 ms", g1.p50 - d1.p50 <= 0.45))  # fmt: skip
    for name, label, measure in (("responses", "/v1/responses", "/v1/responses, new (JSON)"),
                                 ("chat", "/v1/chat/completions", "/v1/chat/completions (stateless)")):  # fmt: skip
        if name not in cfg.rows:
            continue
        if name in broken:
            lines.append(failed(cfg, store, name, measure, broken[name], gw))
            continue
        problem = first_problem(*(fig(x, c) for x in (label, "original route", "direct") for c in (32, 1)))
        if problem:
            lines.append(failed(cfg, store, name, measure, problem, gw))
            continue
        g32, o32, d32 = fig(label, 32), fig("original route", 32), fig("direct", 32)
        g1, o1, d1 = fig(label, 1), fig("original route", 1), fig("direct", 1)
        lines.append(throughput_line(store, name, measure + ": 32 clients", g32, o32, d32, "≥ 90% of original route",
                                     g32.rps >= 0.9 * o32.rps))  # fmt: skip
        lines.append(latency_line(store, name, measure + ": p50, 1 client", g1.p50, o1.p50, d1.p50,
                                  "≤ original route +0.2 ms", g1.p50 - o1.p50 <= 0.2))  # fmt: skip
    if "mode2" in cfg.rows:
        measure = "mode 2 (Codex stand-in), new conversation"
        if "mode2" in broken:
            lines.append(failed(cfg, store, "mode2", measure, broken["mode2"], gw))
        elif problem := first_problem(*(fig(x, c) for x in ("mode 2", "Codex stand-in direct") for c in (32, 1))):
            lines.append(failed(cfg, store, "mode2", measure, problem, gw))
        else:
            g32, d32, g1, d1 = (fig("mode 2", 32), fig("Codex stand-in direct", 32), fig("mode 2", 1),
                                fig("Codex stand-in direct", 1))  # fmt: skip
            m32, md32 = fig("original route", 32), fig("direct", 32)
            m1, md1 = fig("original route", 1), fig("direct", 1)
            line = throughput_line(store, "mode2", measure + ": 32 clients", g32, None, d32, "next to mode 1", None)
            line.original, line.vs_original = f"mode 1: {rps(m32)}", f"mode 1: {m32.rps / md32.rps:.1%} of its direct"
            lines.append(line)
            line = latency_line(
                store, "mode2", measure + ": p50, 1 client", g1.p50, None, d1.p50, "next to mode 1", None
            )
            line.original, line.vs_original = (
                f"mode 1: {ms(m1.p50)}",
                f"mode 1: {m1.p50 - md1.p50:+.2f} ms over its direct",
            )
            lines.append(line)
    return lines


def seed(gw: Proc, turns: int) -> tuple[str, float]:
    """A conversation of ``turns`` turns of ~100-token messages, through the original route. Seeded with
    the default budget: what is stored does not depend on the budget it was written with."""
    parent = None
    started = time.perf_counter()
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        for i in range(turns):
            body = json.loads(gpt_body(message(i), parent, systemMessage=SYSTEM, model=BIG_MODEL))
            response = client.post("/api/v1/gpt/getInfo", json=body)
            if response.status_code >= 300:
                raise RowFailed(f"seeding turn {i}: HTTP {response.status_code}: {response.text[:300]}")
            parent = response.json()["data"]["id"]
    assert parent
    return str(parent), time.perf_counter() - started


def deep_followups(cfg: Config, store: str, gw: Proc, up: Proc) -> list[Line]:
    lines: list[Line] = []
    try:
        tip, took = seed(gw, cfg.turns)
    except RowFailed as exc:
        return [failed(cfg, store, row, "follow-up", str(exc), gw) for row in ("followup", "history128k")
                if row in cfg.rows]  # fmt: skip
    cfg.notes.append(f"{store}: {cfg.turns} turns seeded through the original route in {took:.1f} s "
                     f"({took / cfg.turns * 1000:.1f} ms a turn).")  # fmt: skip
    cases: list[tuple[str, str, dict[str, Any], float]] = [
             ("followup", f"follow-up, 4k budget, {cfg.turns:,}-turn conversation: p50, 1 client", {}, 0.8),
             ("history128k", "follow-up, 128k-token history: p50, 1 client",
              {"maxModelTokens": 128000, "maxResponseTokens": 4000}, 2.0)]  # fmt: skip
    for row, measure, budget, limit in cases:
        if row not in cfg.rows:
            continue
        through = make_target(cfg, row, gw.url + "/api/v1/gpt/getInfo", gpt_body("and now?", tip, systemMessage=SYSTEM,
                              model=BIG_MODEL, **budget), check=original_ok)  # fmt: skip
        try:
            reply = probe(through)
            sent = json.loads(last_upstream_body(up))
            direct = direct_target(cfg, row + " direct", up, chat_ok)
            warm([through, direct])
        except RowFailed as exc:
            lines.append(failed(cfg, store, row, measure, str(exc), gw))
            continue
        figures = alternate(cfg, [direct, through], 1)
        if problem := first_problem(*figures.values()):
            lines.append(failed(cfg, store, row, measure, problem, gw))
            continue
        usage = reply.json()["data"].get("detail", {}).get("usage", {})
        measure += f" ({len(sent['messages']):,} messages, {usage.get('prompt_tokens', 0):,} prompt tokens)"
        gw_p50, d_p50 = figures[row].p50, figures[row + " direct"].p50
        lines.append(latency_line(store, row, measure, gw_p50, None, d_p50, f"≤ +{limit} ms over the same upstream "
                                  "request", gw_p50 - d_p50 <= limit))  # fmt: skip
    return lines


def responses_followup(cfg: Config, store: str, gw: Proc, up: Proc) -> list[Line]:
    """Follow-ups on one 10-turn conversation made on /v1/responses: by previous_response_id, and on the
    original route by parentMessageId (the last output message id), next to each other."""
    measure = "/v1/responses follow-up (JSON), 10-turn conversation"
    try:
        previous, item = None, ""
        with httpx.Client(base_url=gw.url, headers=AUTH, timeout=30) as client:
            for i in range(10):
                ask: dict[str, Any] = {"model": MODEL, "input": f"question {i}", "instructions": SYSTEM}
                if previous:
                    ask["previous_response_id"] = previous
                response = client.post("/v1/responses", json=ask)
                if response.status_code != 200:
                    raise RowFailed(f"building the conversation: HTTP {response.status_code}: {response.text[:300]}")
                previous, item = response.json()["id"], response.json()["output"][0]["id"]
        follow = json.dumps({"model": MODEL, "input": "and now?", "instructions": SYSTEM,
                             "previous_response_id": previous})  # fmt: skip
        through = make_target(cfg, "responses follow-up", gw.url + "/v1/responses", follow, AUTH, responses_ok)
        probe(through)
        direct = direct_target(cfg, "direct", up, chat_ok)
        original = make_target(cfg, "original follow-up", gw.url + "/api/v1/gpt/getInfo",
                               gpt_body("and now?", item, systemMessage=SYSTEM), check=original_ok)  # fmt: skip
        warm([through, direct, original])
    except RowFailed as exc:
        return [failed(cfg, store, "responses_followup", measure, str(exc), gw)]
    f32 = alternate(cfg, [original, through], 32)
    f1 = alternate(cfg, [direct, original, through], 1)
    if problem := first_problem(*f32.values(), *f1.values()):
        return [failed(cfg, store, "responses_followup", measure, problem, gw)]
    g32, o32 = f32["responses follow-up"], f32["original follow-up"]
    g1, o1, d1 = f1["responses follow-up"], f1["original follow-up"], f1["direct"]
    return [
        throughput_line(store, "responses_followup", measure + ": 32 clients", g32, o32, None,
                        "≥ 90% of original route", g32.rps >= 0.9 * o32.rps),
        latency_line(store, "responses_followup", measure + ": p50, 1 client", g1.p50, o1.p50, d1.p50,
                     "≤ original route +0.2 ms", g1.p50 - o1.p50 <= 0.2),
    ]  # fmt: skip


async def first_event(session: aiohttp.ClientSession, target: Target, marker: bytes) -> float:
    started = time.perf_counter()
    async with session.post(target.url, data=target.body, headers=target.headers) as response:
        if response.status != 200:
            raise RowFailed(f"{target.label}: HTTP {response.status}: {(await response.read())[:300]!r}")
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            if marker in buffer:
                elapsed = time.perf_counter() - started
                break
        else:
            raise RowFailed(f"{target.label}: no {marker!r} in {buffer[:300]!r}")
        await response.read()
    return elapsed * 1000


async def first_events(pairs: list[tuple[Target, bytes]], samples: int) -> list[float]:
    """Time to the first marker for each target, alternated, ``samples`` times; the medians (ms)."""
    times: list[list[float]] = [[] for _ in pairs]
    async with aiohttp.ClientSession() as session:
        for _ in range(samples):
            for i, (target, marker) in enumerate(pairs):
                times[i].append(await first_event(session, target, marker))
    return [statistics.median(t) for t in times]


def streams(cfg: Config, store: str, gw: Proc, up: Proc) -> list[Line]:
    """Time to the first text event: the original route's type "2" ``event: delta`` and /v1/responses'
    ``response.output_text.delta``, each over the upstream's first text chunk for the very request the
    gateway sent; and /v1/responses streamed next to the original route's stream under wrk."""
    lines: list[Line] = []
    text_chunk = b'"content":"echo'  # the stand-in's first chunk with text (the one before has the role only)
    body = gpt_body("hello there", kind="2", systemMessage=SYSTEM)
    original = make_target(cfg, "original type 2", gw.url + "/api/v1/gpt/getInfo", body,
                           check=stream_ok(b"event: done"))  # fmt: skip
    body = json.dumps({"model": MODEL, "input": "hello there", "instructions": SYSTEM, "stream": True})
    responses = make_target(cfg, "responses stream", gw.url + "/v1/responses", body, AUTH,
                            stream_ok(b"response.completed"))  # fmt: skip
    measure_o = 'stream, original route (type "2"): time to first delta, 1 client'
    measure_r = "/v1/responses streamed: time to first response.output_text.delta, 1 client"
    try:
        probe(original)
        direct_o = direct_target(cfg, "direct (type 2's request)", up, stream_ok(text_chunk))
        probe(responses)
        direct_r = direct_target(cfg, "direct (responses' request)", up, stream_ok(text_chunk))
        warm([original, responses, direct_o, direct_r])
        pairs = [(direct_o, text_chunk), (original, b"event: delta"), (direct_r, text_chunk),
                 (responses, b"event: response.output_text.delta")]  # fmt: skip
        d_o, g_o, d_r, g_r = asyncio.run(first_events(pairs, cfg.samples))
    except RowFailed as exc:
        return [failed(cfg, store, row, m, str(exc), gw) for row, m in (("stream", measure_o),
                ("responses_stream", measure_r)) if row in cfg.rows]  # fmt: skip
    how = f" (median of {cfg.samples}, Python client)"
    if "stream" in cfg.rows:
        lines.append(latency_line(store, "stream", measure_o + how, g_o, None, d_o,
                                  "≤ +0.8 ms over the upstream's first chunk", g_o - d_o <= 0.8))  # fmt: skip
    if "responses_stream" in cfg.rows:
        lines.append(latency_line(store, "responses_stream", measure_r + how, g_r, g_o, d_r,
                                  "≤ +1 ms over the upstream's first chunk", g_r - d_r <= 1.0))  # fmt: skip
        f32, f1 = alternate(cfg, [original, responses], 32), alternate(cfg, [original, responses], 1)
        measure = "/v1/responses streamed, whole stream (wrk)"
        if problem := first_problem(*f32.values(), *f1.values()):
            lines.append(failed(cfg, store, "responses_stream", measure, problem, gw))
        else:
            g32, o32 = f32["responses stream"], f32["original type 2"]
            g1, o1 = f1["responses stream"], f1["original type 2"]
            lines.append(throughput_line(store, "responses_stream", measure + ": 32 clients", g32, o32, None,
                                         "≥ 90% of original route (type 2)", g32.rps >= 0.9 * o32.rps))  # fmt: skip
            lines.append(latency_line(store, "responses_stream", measure + ": p50, 1 client", g1.p50, o1.p50, None,
                                      "≤ original route (type 2) +0.2 ms", g1.p50 - o1.p50 <= 0.2))  # fmt: skip
    return lines


def workers_row(cfg: Config, up: Proc) -> list[Line]:
    measure = "`serve --workers 2`, new conversation, original route: 32 clients"
    with ExitStack() as stack:
        try:
            gw = stack.enter_context(gateway(cfg, "sqlite-workers", up.url, f"sqlite:///{cfg.work}/workers.db",
                                             workers=2))  # fmt: skip
        except RuntimeError as exc:
            return [failed(cfg, "sqlite", "workers", measure, start_failure(exc))]
        through = make_target(cfg, "workers 2", gw.url + "/api/v1/gpt/getInfo", gpt_body("hello there",
                              systemMessage=SYSTEM), check=original_ok)  # fmt: skip
        try:
            probe(through)
            direct = direct_target(cfg, "direct", up, chat_ok)
            warm([through, direct])
            for _ in range(3):  # each worker takes connections of its own: warm both
                wrk(through, 32, 1)
        except RowFailed as exc:
            return [failed(cfg, "sqlite", "workers", measure, str(exc), gw)]
        figures = alternate(cfg, [direct, through], 32)
        sizes = rss_mb(gw.pid)
        if problem := first_problem(*figures.values()):
            return [failed(cfg, "sqlite", "workers", measure, problem, gw)]
    line = throughput_line("sqlite", "workers", measure, figures["workers 2"], None, figures["direct"],
                           "≥ 40% of direct", figures["workers 2"].rps >= 0.4 * figures["direct"].rps)  # fmt: skip
    rss = Line("sqlite", "workers", "`--workers 2`: RSS per worker after the row",
               gateway=", ".join(f"{s:.0f} MB" for s in sizes), target="≤ 120 MB per worker",
               met=verdict(max(sizes) <= 120))  # fmt: skip
    return [line, rss]


def tail(cfg: Config, store: str, store_url: str, up: Proc) -> list[Line]:
    """A fresh gateway under new conversations for ``--soak`` seconds at 32 clients, then as long at 1 client."""
    lines: list[Line] = []
    how = f"{cfg.soak:g} s"
    with ExitStack() as stack:
        try:
            gw = stack.enter_context(gateway(cfg, f"{store}-tail", up.url, store_url))
        except RuntimeError as exc:
            return [failed(cfg, store, "tail", f"tail latency ({how})", start_failure(exc))]
        through = make_target(cfg, "tail", gw.url + "/api/v1/gpt/getInfo", gpt_body("hello there",
                              systemMessage=SYSTEM), check=original_ok)  # fmt: skip
        try:
            warm([through])
        except RowFailed as exc:
            return [failed(cfg, store, "tail", f"tail latency ({how})", str(exc), gw)]
        before = rss_mb(gw.pid)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()

        def sample() -> None:
            samples.append((time.monotonic() - started, sum(rss_mb(gw.pid))))

        runs = {clients: wrk(through, clients, cfg.soak, sample) for clients in (32, 1)}
        after = rss_mb(gw.pid)
        cache = ""
        with suppress(httpx.HTTPError, KeyError, ValueError, TypeError):
            counts = httpx.get(gw.url + "/healthz", timeout=5).json()["data"]["historyCache"]
            cache = f"; history cache (its own count): {counts['entries']:,} entries, {counts['bytes'] / 2**20:.0f} MB"
        marks = [cfg.soak * f for f in (0.25, 0.5, 0.75, 1.0, 1.5)]
        path = [min(samples, key=lambda s: abs(s[0] - mark))[1] for mark in marks] if samples else []
        for clients, limit in ((32, 15.0), (1, 5.0)):
            figure = runs[clients]
            measure = f"tail: p99 over {how}, {clients} client{'s' if clients > 1 else ''} (new conversations)"
            if figure.problem:
                lines.append(failed(cfg, store, "tail", measure, figure.problem, gw))
                continue
            line = Line(store, "tail", measure, gateway=f"{ms(figure.p99)} (p50 {figure.p50:.2f}, {rps(figure)})")
            if store == "sqlite":
                line.target, line.met = f"≤ {limit:g} ms", verdict(figure.p99 <= limit)
            lines.append(line)
    trajectory = " → ".join(f"{s:.0f}" for s in [sum(before), *path])
    lines.append(Line(store, "tail", f"RSS of the worker after the soak (MB after warm-up, at ¼, ½, ¾ and the end "
                      f"of the 32-client run, mid 1-client run: {trajectory}{cache})",
                      gateway=", ".join(f"{s:.0f} MB" for s in after), target="≤ 120 MB per worker",
                      met=verdict(max(after) <= 120)))  # fmt: skip
    return lines


# -- stores -----------------------------------------------------------------------------------------
@contextmanager
def store_url(kind: str, cfg: Config) -> Iterator[str]:
    """A store of this run's own: a SQLite file, a Redis key prefix or a PostgreSQL schema, removed after."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        yield f"sqlite:///{cfg.work}/{name}.db"
        return
    if kind == "redis":
        import redis

        try:
            yield f"redis://127.0.0.1:6379/0?prefix={name}:"
        finally:
            client = redis.Redis(host="127.0.0.1", port=6379)
            keys = list(client.scan_iter(match=f"{name}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            client.close()
        return
    import asyncpg

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect("postgresql://127.0.0.1:5432/test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f"CREATE SCHEMA {name}"))
    try:
        yield f"postgresql://127.0.0.1:5432/test?search_path={name}"
    finally:
        asyncio.run(execute(f"DROP SCHEMA {name} CASCADE"))


def bench_store(cfg: Config, kind: str, up: Proc, codex: Proc) -> list[Line]:
    lines: list[Line] = []
    with store_url(kind, cfg) as url:
        if cfg.wants("new", "responses", "chat", "mode2", "followup", "history128k", "responses_followup", "stream",
                     "responses_stream"):  # fmt: skip
            with ExitStack() as stack:
                try:
                    gw = stack.enter_context(gateway(cfg, kind, up.url, url, codex.url))
                except RuntimeError as exc:
                    return [failed(cfg, kind, ",".join(sorted(cfg.rows)), "gateway start", start_failure(exc))]
                if cfg.wants("new", "responses", "chat", "mode2"):
                    lines += watched(cfg, lambda: new_doors(cfg, kind, gw, up, codex))
                if cfg.wants("followup", "history128k"):
                    lines += watched(cfg, lambda: deep_followups(cfg, kind, gw, up))
                if cfg.wants("responses_followup"):
                    lines += watched(cfg, lambda: responses_followup(cfg, kind, gw, up))
                if cfg.wants("stream", "responses_stream"):
                    lines += watched(cfg, lambda: streams(cfg, kind, gw, up))
        if kind == "sqlite" and cfg.wants("workers"):
            lines += watched(cfg, lambda: workers_row(cfg, up))
        if cfg.wants("tail"):
            lines += watched(cfg, lambda: tail(cfg, kind, url, up))
    return lines


# -- load from outside the bench ------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")
STORE_SERVERS = ("redis-server", "postgres")


def cpu_seconds() -> tuple[float, float, float]:
    """(CPU time used on the machine, by this bench and its processes, by the store servers), seconds.

    The bench's own: this process with its waited children (wrk, stopped gateways) and its live
    descendants (stand-ins, the running gateway and its workers). Redis and PostgreSQL count apart:
    they work for the bench, and for whoever else uses them."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    busy = user + nice + system + irq + softirq + steal
    parents: dict[int, int] = {}
    spent: dict[int, int] = {}
    servers = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat.rsplit(")", 1)[1].split()
            pid = int(entry.name)
            parents[pid] = int(rest[1])
            spent[pid] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
            if name in STORE_SERVERS:
                servers += spent[pid]
    ours, mine = 0, os.getpid()
    for pid in spent:
        walk, seen = pid, 0
        while walk > 1 and walk != mine and seen < 64:
            walk, seen = parents.get(walk, 0), seen + 1
        if walk == mine:
            ours += spent[pid]
    return busy / TICK, ours / TICK, servers / TICK


def other_share(before: tuple[float, float, float], after: tuple[float, float, float], elapsed: float) -> float:
    other = (after[0] - before[0]) - (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, other) / (elapsed * (os.cpu_count() or 1))


def wait_quiet(cfg: Config) -> None:
    """Wait (at most ``--wait-quiet`` seconds) for a second in which others use under 10% of the machine."""
    deadline = time.monotonic() + cfg.wait_quiet
    while True:
        before, started = cpu_seconds(), time.monotonic()
        time.sleep(1)
        if other_share(before, cpu_seconds(), time.monotonic() - started) < 0.1 or time.monotonic() >= deadline:
            return


def watched(cfg: Config, measure: Callable[[], list[Line]]) -> list[Line]:
    """The row's lines, each with the share of the machine's CPU that others used meanwhile."""
    if cfg.wait_quiet > 0:
        wait_quiet(cfg)
    before, started = cpu_seconds(), time.monotonic()
    lines = measure()
    share = other_share(before, cpu_seconds(), time.monotonic() - started)
    for line in lines:
        line.other = f"{share:.0%}" + (" ⚠" if share >= 0.1 else "")
    return lines


def table(lines: list[Line]) -> list[str]:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(line.cells()) + " |" for line in lines]
    return out


# -- extras (not in the table) --------------------------------------------------------------------
def parser_cost() -> list[str]:
    from tests.test_parsers import classic_stream, delta_stream

    from chatgpt_server.upstreams.sse import SSEDecoder
    from chatgpt_server.upstreams.web_reply import WebReplyParser

    pieces = [f" word{i}" for i in range(300)]
    lines = ["| web reply parser (300 chunks, ~2,100 characters) | µs per reply | µs per frame |", "|---|---|---|"]
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


async def stream_events(target: Target, marker: bytes, seconds: int, concurrency: int) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            async with session.post(target.url, data=target.body, headers=target.headers) as response:
                if response.status != 200:
                    raise RowFailed(f"{target.label}: HTTP {response.status}: {(await response.read())[:300]!r}")
                async for line in response.content:
                    if line.startswith(marker):
                        count += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


async def forwarding_gaps(target: Target) -> list[float]:
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session, session.post(target.url, data=target.body,
                                                                headers=target.headers) as response:  # fmt: skip
        if response.status != 200:
            raise RowFailed(f"{target.label}: HTTP {response.status}: {(await response.read())[:300]!r}")
        async for line in response.content:
            if line.startswith(b"event: delta"):
                arrivals.append(time.perf_counter())
    return [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]


def extras(cfg: Config) -> list[str]:
    words = " ".join(f"w{i}" for i in range(100))
    lines = ['### Extras: streams of 101 chunks (mode 1, type "2", SQLite)', ""]
    with openai_standin(cfg) as up, gateway(cfg, "extras", up.url, f"sqlite:///{cfg.work}/extras.db") as gw:
        through = make_target(cfg, "type 2, 101 chunks", gw.url + "/api/v1/gpt/getInfo",
                              gpt_body(words, kind="2", systemMessage=""), check=stream_ok(b"event: done"))  # fmt: skip
        probe(through)
        direct = direct_target(cfg, "direct", up, stream_ok(b"[DONE]"))
        direct_eps = asyncio.run(stream_events(direct, b"data: {", cfg.seconds, 32))
        gateway_eps = asyncio.run(stream_events(through, b"event: delta", cfg.seconds, 32))
    lines += ["| measure | gateway | direct | ratio |", "|---|---|---|---|",
              f"| events/s, 32 concurrent streams | {gateway_eps:,.0f} | {direct_eps:,.0f} "
              f"| {gateway_eps / direct_eps:.1%} |"]  # fmt: skip
    with openai_standin(cfg, chunk_delay=0.02) as slow, gateway(cfg, "extras-slow", slow.url,
                                                                 f"sqlite:///{cfg.work}/extras2.db") as gw:  # fmt: skip
        slow_target = make_target(cfg, "type 2, 31 chunks 20 ms apart", gw.url + "/api/v1/gpt/getInfo",
                                  gpt_body(" ".join(["x"] * 30), kind="2", systemMessage=""))  # fmt: skip
        gaps = asyncio.run(forwarding_gaps(slow_target))
    lines += ["", f"Forwarding with the upstream writing a chunk every 20 ms: {len(gaps) + 1} delta events out of 31 "
              f"chunks; gap between events min {min(gaps):.1f} ms, median {statistics.median(gaps):.1f} ms.",
              ""]  # fmt: skip
    return [*lines, *parser_cost()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: " + ", ".join(STORES))
    parser.add_argument("--seconds", type=int, default=2, help="length of each wrk run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs per figure; the median is kept")
    parser.add_argument("--soak", type=int, default=5, help="length of each tail-latency run (default 5)")
    parser.add_argument("--samples", type=int, default=200, help="time-to-first-event samples per target")
    parser.add_argument("--turns", type=int, default=1000, help="turns of the long conversation (default 1,000)")
    parser.add_argument(
        "--wait-quiet",
        type=int,
        default=30,
        help="before each row, wait up to this many seconds "
        "for the machine to be quiet (others under 10%% of the CPU); 0: do not wait",
    )
    parser.add_argument("--extras", action="store_true", help="also: stream events/s, forwarding gaps, parser cost")
    args = parser.parse_args()
    rows, stores = set(args.only.split(",")), args.stores.split(",")
    if unknown := (rows - set(ROWS)) | (set(stores) - set(STORES)):
        raise SystemExit(f"unknown rows or stores: {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    started = time.time()
    print(f"# chatgpt-server benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores", flush=True)
    print(f"\n`python -m bench.run {' '.join(sys.argv[1:])}`: wrk runs of {args.seconds:g} s, medians of "
          f"{args.rounds} alternated runs, tail runs of {args.soak:g} s.\n", flush=True)  # fmt: skip
    lines: list[Line] = []
    with tempfile.TemporaryDirectory(prefix="chatgpt-bench-") as tmp:
        cfg = Config(args.seconds, args.rounds, args.soak, args.samples, args.turns, args.wait_quiet, Path(tmp), rows)
        with openai_standin(cfg) as up, codex_standin(cfg) as codex:
            for kind in stores:
                lines += bench_store(cfg, kind, up, codex)
                print(f"<!-- {kind} done after {time.time() - started:.0f} s -->", file=sys.stderr, flush=True)
        print("\n".join(table(lines)))
        if cfg.notes:
            print("\nNotes:\n")
            print("\n".join(f"{i}. {note}" for i, note in enumerate(cfg.notes, 1)))
        if args.extras:
            try:
                print("\n" + "\n".join(extras(cfg)))
            except RowFailed as exc:
                print(f"\n### Extras: **FAILED**: {exc}")
    print(f"\n(whole run: {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
