"""The original route before and after a change, in one run: another revision's ``src`` next to this tree's.

    python -m bench.before_after                    # ee5e9be (before the redesign) against the working tree
    python -m bench.before_after --rev HEAD~1 --seconds 3 --rounds 5

The other revision's ``src`` is taken with ``git archive`` into a temporary directory (the repository is
not touched) and run with this venv, ``PYTHONPATH`` ahead of the installed package. Both gateways, and
this tree's again with the access log off and the history cache off, serve new conversations on the
original route (SQLite) next to the OpenAI stand-in called directly; runs alternate ``--rounds`` times
and the medians are kept, as in ``bench.run``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from . import run
from .run import Config, Target, gateway, make_target


def checkout(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=run.ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="ee5e9be", help="the revision to compare with (default: before the redesign)")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="chatgpt-before-after-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        cfg = Config(args.seconds, args.rounds, 0, 0, 0, 0, work, set())
        old_src = checkout(args.rev, work / "old")
        up = stack.enter_context(run.openai_standin(cfg))
        quiet = {"CHATGPT_SERVER_ACCESS_LOG": "false", "CHATGPT_SERVER_HISTORY_CACHE_MB": "0"}
        kinds: list[tuple[str, Path | None, dict[str, str]]] = [
            (f"{args.rev} (before)", old_src, {}),
            ("working tree", None, {}),
            ("working tree, access log and history cache off", None, quiet),
        ]
        targets: list[Target] = []
        for i, (label, src, settings) in enumerate(kinds):
            gw = stack.enter_context(gateway(cfg, f"g{i}", up.url, f"sqlite:///{work}/g{i}.db", src=src,
                                             settings=settings))  # fmt: skip
            body = run.gpt_body("hello there", systemMessage=run.SYSTEM)
            targets.append(make_target(cfg, label, gw.url + "/api/v1/gpt/getInfo", body, check=run.original_ok))
            run.warm(targets[-1:])
        direct = run.direct_target(cfg, "direct", up, run.chat_ok)
        print(f"# new conversation, original route, SQLite: {args.rev} against the working tree, "
              f"{time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
        print("| gateway | clients | req/s | share of direct | p50 ms | added p50 ms |\n|---|---|---|---|---|---|")
        for clients in (32, 1):
            figures = run.alternate(cfg, [direct, *targets], clients)
            base = figures["direct"]
            for label, f in figures.items():
                shown = f"**FAILED**: {f.problem}" if f.problem else f"{f.rps:,.0f}"
                share, added = f"{f.rps / base.rps:.1%}", f"{f.p50 - base.p50:+.2f}"
                print(f"| {label} | {clients} | {shown} | {share} | {f.p50:.2f} | {added} |")


if __name__ == "__main__":
    main()
