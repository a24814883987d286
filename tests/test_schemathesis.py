"""Schemathesis against the running server: every operation of /api-json, with every check.

The server runs as in production (Codex mode 2, stored accounts, SQLite) against the stand-in upstreams,
so nothing leaves the machine. ``st run`` (as a subprocess, ``--checks all``) goes through all its phases:
coverage (boundaries, every documented status, undeclared methods and media types), fuzzing (positive and
negative data) and stateful (the document's links, and the ones it infers). Seed and example counts are
fixed, so a run is reproducible; it takes some 30 to 45 s on the 2-core development machine.

Every operation is tested; none is excluded. What the stand-ins cannot produce is not reached, and is
still checked for server errors and for conformance of whatever the server does answer:

* 502, 503 and 504 (an upstream or the store failing) never happen here; other suites provoke them;
* ``POST /api/v1/token/device/poll`` never reaches "signed_in": a person would have to approve the code
  (tests/test_accounts.py plays that person);
* mode 2 runs on the Codex backend; the legacy web backend's extra ``headers`` are only validated.

Three things are told to schemathesis explicitly, here and in ``_config``:

* Positive (schema-valid) requests to the doors that call an upstream are made servable by the stand-ins
  (``map_case`` below): the stand-in's key, model names, account and password, an allow-listed upstream
  URL, a token budget and timeouts the prompt fits in. The schema cannot know which keys, models or
  URLs a deployment has; without this, every positive request would end in the upstream's 400 or 401 and
  no success answer (201, the streams, the stored response objects) would ever be checked. Negative
  requests are left as generated.
* A ``function_call_output`` added to a conversation must answer a call before it, once (``map_case``
  makes one that does not a message): the schema cannot say which calls a conversation holds.
* ``POST /v1/responses/{id}/cancel`` answers 400 by design for every response (no background mode): its
  positive-data check accepts 400.

Two identities (two keys) take part, so ``object_level_authorization`` checks that one key never sees
what another created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from chatgpt_server.app import routes
from chatgpt_server.edges.openapi import openapi_document

from .conftest import KEY, OTHER_KEY, Upstreams
from .harness import ROOT, ServerProcess

SEED = 20240611
MAX_EXAMPLES = 25  # per operation and phase; the run stays well under 90 s on two cores
EMAIL, PASSWORD = "schemathesis@example.com", "st-password-1"
HOOKS_ENV = "CHATGPT_SERVER_ST_HOOKS"  # set only in the st subprocess, where this module is its hooks module


# -- the hooks module (loaded by st) ------------------------------------------------------------------
CHAT_MODEL = "gpt-3.5-turbo"  # a model the OpenAI stand-in knows
CODEX_MODEL = "gpt-5"  # one the Codex stand-in serves to a plus account


def _hook_env(name: str) -> str:
    return os.environ[f"{HOOKS_ENV}_{name}"]


def _first_text(value: Any) -> str:
    """Some text of a generated value, to keep what was generated where the upstream needs text."""
    if isinstance(value, str):
        return value
    values = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
    return next((text for text in map(_first_text, values) if text), "")


def _servable_gpt(body: dict[str, Any], query: dict[str, Any]) -> None:
    opts = body.get("opts")
    if not isinstance(opts, dict):
        return
    mode = str(body.get("mode")).strip()
    opts["key"] = _hook_env("KEY") if mode == "1" else _hook_env("ACCOUNT_TOKEN")
    options = opts.get("opts")
    if not isinstance(options, dict):
        return
    replacements = {"apiBaseUrl": _hook_env("ALT_URL"), "apiReverseProxyUrl": _hook_env("CHATGPT_URL"),
                    "model": CHAT_MODEL if mode == "1" else CODEX_MODEL, "completionParams": {}}  # fmt: skip
    for name, value in replacements.items():
        if options.get(name) is not None:
            options[name] = value
    for name in ("maxModelTokens", "maxResponseTokens", "timeoutMs", "idleTimeoutMs"):
        if isinstance(options.get(name), str):  # digits, as the original took them: read as their number
            options[name] = int(options[name])
    if options.get("maxModelTokens") is not None:  # room for the default system message and the question
        options["maxModelTokens"] = max(options["maxModelTokens"], 2000)
    if options.get("maxResponseTokens") is not None:  # below every maxModelTokens, within the stand-in's window
        options["maxResponseTokens"] = min(options["maxResponseTokens"], 500)
    for name in ("timeoutMs", "idleTimeoutMs"):  # a millisecond is valid, and ends in the documented 504
        if options.get(name) is not None:
            options[name] = max(options[name], 30_000)


def _servable_chat(body: dict[str, Any], query: dict[str, Any]) -> None:
    """The gateway passes the body through; the stand-in refuses what the real API refuses."""
    text = _first_text(body.get("messages")) or "hello"
    stream = body.get("stream")
    body.clear()
    body.update(model=CHAT_MODEL, messages=[{"role": "user", "content": text}], stream=stream)


def _servable_response(body: dict[str, Any], query: dict[str, Any]) -> None:
    body["model"] = CHAT_MODEL
    if not isinstance(body.get("input"), str):  # items the stand-in cannot take (a call without tools, ...)
        body["input"] = _first_text(body.get("input")) or "hello"
    if body.get("max_output_tokens") is not None:
        body["max_output_tokens"] = min(body["max_output_tokens"], 1000)
    if isinstance(body.get("tool_choice"), dict):  # it must name one of the request's tools
        body["tool_choice"] = "auto"
    # A made-up conversation is a 404: keep some, to reach the rest. A made-up previous_response_id is a 400
    # (OpenAI's status), which a schema-valid request must not get: none.
    body["previous_response_id"] = None
    if body.get("conversation") is not None and len(str(body["conversation"])) % 2:
        body["conversation"] = None


def _servable_items(body: dict[str, Any], query: dict[str, Any]) -> None:
    """A function_call_output answers a call before it, once (the schema cannot say so; OpenAI refuses the
    next response else, the gateway the items): one that does not becomes a message."""
    items = body.get("items")
    if not isinstance(items, list):
        return
    calls: set[Any] = set()
    answered: set[Any] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        call_id = item.get("call_id")
        if item.get("type") == "function_call":
            calls.add(call_id)
        elif item.get("type") == "function_call_output":
            if call_id in calls and call_id not in answered:
                answered.add(call_id)
            else:
                items[index] = {"type": "message", "role": "user", "content": "hello"}


def _servable_token(body: dict[str, Any], query: dict[str, Any]) -> None:
    values = body if body else query
    values["email"], values["password"] = _hook_env("EMAIL"), _hook_env("PASSWORD")


SERVABLE = {
    ("POST", "/api/v1/gpt/getInfo"): _servable_gpt,
    ("POST", "/v1/chat/completions"): _servable_chat,
    ("POST", "/v1/responses"): _servable_response,
    ("POST", "/v1/responses/input_tokens"): _servable_response,
    ("POST", "/v1/conversations"): _servable_items,
    ("POST", "/v1/conversations/{id}/items"): _servable_items,
    ("GET", "/api/v1/token/getInfo"): _servable_token,
    ("POST", "/api/v1/token/getInfo"): _servable_token,
}


def map_case(context: schemathesis.HookContext, case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
    """Positive requests only: they stay schema-valid, with values the stand-ins know."""
    make_servable = SERVABLE.get((case.method.upper(), case.operation.path))
    if make_servable is None or case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query if isinstance(case.query, dict) else {}
    if body or query:
        make_servable(body, query)
    return case


if os.environ.get(HOOKS_ENV):
    schemathesis.hook(map_case)


# -- the test ---------------------------------------------------------------------------------------
def _config(work: Path) -> Path:
    identities = [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {key}"}]}
        for name, key in (("one", KEY), ("two", OTHER_KEY))
    ]
    (work / "identities.json").write_text(json.dumps({"auth": identities}))
    config = work / "schemathesis.toml"
    config.write_text(f"""
seed = {SEED}
request-timeout = 20
[generation]
max-examples = {MAX_EXAMPLES}
database = "none"
[auth.wfc]
path = "{work / "identities.json"}"
peers = ["one", "two"]

[[operations]]
include-operation-id = "cancelResponse"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
""")
    return config


@pytest.fixture(scope="module")
def st_server(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    upstreams.apps.call(lambda: upstreams.signin.accounts.__setitem__(EMAIL, PASSWORD))
    proc = ServerProcess(tmp_path_factory.mktemp("schemathesis-server"), upstreams.codex_env()).start()
    yield proc
    proc.stop()


def test_the_document_describes_every_route_and_method() -> None:
    router = routes()
    served = {path: route for path, route in router.exact.items()}
    served.update({"/" + "/".join(parts): route for parts, route in router.patterns})
    paths = openapi_document()["paths"]
    assert set(paths) - {"/api/static/{file}"} == set(served)
    for path, route in served.items():
        assert {m.upper() for m in paths[path]} == set(route.handlers), path
        for operation in paths[path].values():
            allow = operation["responses"]["405"]["headers"]["Allow"]["schema"]["const"]
            assert allow == route.allow, path


def test_schemathesis_finds_nothing(st_server: ServerProcess, upstreams: Upstreams, tmp_path: Path) -> None:
    account_token = upstreams.apps.call(lambda: upstreams.auth.mint("st@example.com", "acct-schemathesis").access_token)
    report = tmp_path / "report.json"
    # From a file: st skips the operation that serves the document it was loaded from, GET /api-json included.
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(f"{st_server.url}/api-json", timeout=10).content)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": __name__,
        HOOKS_ENV: "1",
        f"{HOOKS_ENV}_KEY": KEY,
        f"{HOOKS_ENV}_ACCOUNT_TOKEN": account_token,
        f"{HOOKS_ENV}_ALT_URL": upstreams.alt_openai_url,
        f"{HOOKS_ENV}_CHATGPT_URL": upstreams.chatgpt_url,
        f"{HOOKS_ENV}_EMAIL": EMAIL,
        f"{HOOKS_ENV}_PASSWORD": PASSWORD,
    }
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(_config(tmp_path)), "run",
               str(document), "--url", st_server.url, "--checks", "all", "--no-color",
               "--report", "json", "--report-json-path", str(report)]  # fmt: skip
    started = time.monotonic()
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert report.exists(), output[-5000:]
    result = json.loads(report.read_text())
    summary = output[output.find("=== FAILURES") :] if "=== FAILURES" in output else output[-3000:]
    counts = result["operations"]
    operations = sum(len(item) for item in openapi_document()["paths"].values())
    assert counts["tested"] == counts["total"] == operations, summary
    assert counts["errored"] == counts["skipped"] == 0, summary
    assert not result["errors"], summary
    assert not result["failures"], f"{result['test_cases']} in {took:.0f} s\n{summary}"
    assert run.returncode == 0, summary
