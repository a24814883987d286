"""The terminal client goes through the same service, settings and store as the server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import KEY, Upstreams


def run_cli(tmp_path: Path, upstreams: Upstreams, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGPT_SERVER_", "OPENAI_API_KEY"))}
    env.update(upstreams.env(CHATGPT_SERVER_DATA_DIR=str(tmp_path / "data")))
    env["OPENAI_API_KEY"] = KEY
    return subprocess.run(
        [sys.executable, "-m", "chatgpt_server", "ask", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_ask_then_follow_up_then_stream(tmp_path: Path, upstreams: Upstreams) -> None:
    first = run_cli(tmp_path, upstreams, "hello from the terminal")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "echo(1): hello from the terminal"
    reply_id = re.search(r"--follow (\S+)", first.stderr).group(1)  # type: ignore[union-attr]
    second = run_cli(tmp_path, upstreams, "and again", "--follow", reply_id, "--stream")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "echo(2): and again"
    assert upstreams.openai.requests[-1]["body"]["stream"] is True


def test_ask_reports_errors(tmp_path: Path, upstreams: Upstreams) -> None:
    failed = run_cli(tmp_path, upstreams, "x", "--follow", "nope")
    assert failed.returncode == 1
    assert "error 404" in failed.stderr and KEY not in failed.stderr + failed.stdout


def test_a_json_log_line_keeps_the_traceback_of_an_error() -> None:
    """uvicorn's own records reach our formatter: "Exception in ASGI application" keeps its stack."""
    import json
    import logging
    import sys

    from chatgpt_server.cli import JSONFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application",
                                   None, sys.exc_info())  # fmt: skip
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "Exception in ASGI application" and "ValueError: boom" in entry["traceback"]
