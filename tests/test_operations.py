"""Operable under faults (issue 9): no reply bought that cannot be stored, timeouts that hold, clean
recovery, a clean shutdown, an access log worth reading, and a command line that explains itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import KEY, Upstreams, ask
from .harness import ROOT, ServerProcess, within
from .shared_stores import POSTGRES_PORT, store_url
from .tcp_proxy import TCPProxy
from .test_api_contract import assert_error
from .test_streaming import events, first_delta


def wait_for(condition: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    assert within(timeout, condition), f"timed out waiting for {what}"


# -- a reply that cannot be stored is never bought -------------------------------------------------
def test_no_upstream_call_while_the_store_is_away(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=url)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
            store_proxy.stop()
            before = len(upstreams.openai.requests)
            for _ in range(5):  # new conversations, and follow-ups, right after the store went
                assert "conversation store unavailable" in assert_error(ask(c, "new"), 503)
                assert_error(ask(c, "follow", parent=first["id"]), 503)
            streamed = ask(c, "streamed", kind="2")
            assert streamed.status_code == 503  # before the stream began: a plain error
            with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk:
                with pytest.raises(openai.InternalServerError) as raised:
                    sdk.responses.create(model="gpt-3.5-turbo", input="x")
                assert raised.value.status_code == 503
            assert len(upstreams.openai.requests) == before  # nothing was bought
            store_proxy.start()
            wait_for(lambda: ask(c, "back").status_code == 201, what="the store to come back")
            assert ask(c, "and on", parent=first["id"]).json()["data"]["text"] == "echo(2): and on"
    finally:
        server.stop()


def test_a_hanging_store_costs_at_most_the_store_timeout(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=url, CHATGPT_SERVER_STORE_TIMEOUT_MS="500")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
            store_proxy.freeze()
            before = len(upstreams.openai.requests)
            for body in ({}, {"parent": first["id"]}):
                started = time.monotonic()
                assert_error(ask(c, "frozen", **body), 503)
                assert time.monotonic() - started < 1.0
            started = time.monotonic()
            assert c.get("/readyz").status_code == 503
            assert time.monotonic() - started < 1.2
            assert len(upstreams.openai.requests) == before
            store_proxy.thaw()
            wait_for(lambda: c.get("/readyz").status_code == 200, what="readiness")
    finally:
        store_proxy.thaw()
        server.stop()


def test_a_conversation_frozen_in_the_middle_of_taking_its_lock_is_free_once_the_store_thaws(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    """A conversation's lock asked for while the store hangs times out for its turn (503), but the
    write still lands when the store answers again: that lease is this process's own and nobody holds
    it, so the next turn takes it over at once instead of meeting conversation_locked for ten minutes."""
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=url, CHATGPT_SERVER_STORE_TIMEOUT_MS="500")
    server = ServerProcess(tmp_path, env).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk:
            conversation = sdk.conversations.create()
            sdk.responses.create(model="gpt-3.5-turbo", input="one", conversation=conversation.id)
            store_proxy.freeze()
            try:
                with pytest.raises(openai.InternalServerError) as frozen:
                    sdk.responses.create(model="gpt-3.5-turbo", input="frozen", conversation=conversation.id)
                assert frozen.value.status_code == 503
            finally:
                store_proxy.thaw()
            after = sdk.responses.create(model="gpt-3.5-turbo", input="two", conversation=conversation.id)
            assert after.output_text == "echo(2): two"
            sdk.conversations.items.create(conversation.id, items=[{"role": "user", "content": "three"}])
    finally:
        server.stop()


def test_a_retry_after_a_timeout_waits_for_the_abandoned_turn_to_let_go(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    """The SDK's retry after its timeout comes while the turn it gave up on is still letting go of the
    conversation (here the store is slow to hear of it): the retry waits for that instead of meeting
    its own abandoned turn as conversation_locked (seen under load with a fast store too)."""
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=url)).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk:
            conversation = sdk.conversations.create()
            asked = len(upstreams.openai.requests)
            upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:4"))

            def freeze_once_asked() -> None:  # the turn holds the conversation and waits on its upstream
                wait_for(lambda: len(upstreams.openai.requests) > asked, timeout=5, what="the upstream asked")
                store_proxy.freeze()

            freezer = threading.Thread(target=freeze_once_asked)
            freezer.start()
            try:
                with pytest.raises(openai.APITimeoutError):
                    sdk.with_options(timeout=1).responses.create(
                        model="gpt-3.5-turbo", input="abandoned", conversation=conversation.id
                    )
                freezer.join()
                thaw = threading.Timer(1.0, store_proxy.thaw)  # the store hears of the give-back a second late
                thaw.start()
                again = sdk.responses.create(model="gpt-3.5-turbo", input="again", conversation=conversation.id)
                thaw.join()
            finally:
                store_proxy.thaw()
            assert again.output_text == "echo(1): again"
            # A stream its client leaves: what arrived is stored first, and the retry waits for it too.
            upstreams.openai.chunk_delay = 0.2
            body = {"model": "gpt-3.5-turbo", "input": "a b c d e f g h", "conversation": conversation.id,
                    "stream": True}  # fmt: skip
            headers = {"Authorization": f"Bearer {KEY}"}
            try:
                with httpx.stream("POST", server.url + "/v1/responses", json=body, headers=headers) as stream:
                    lines = stream.iter_lines()
                    while "output_text.delta" not in next(lines):
                        pass
                    store_proxy.freeze()
                thaw = threading.Timer(1.0, store_proxy.thaw)
                thaw.start()
                upstreams.openai.chunk_delay = 0.0
                last = sdk.responses.create(model="gpt-3.5-turbo", input="last", conversation=conversation.id)
                thaw.join()
            finally:
                upstreams.openai.chunk_delay = 0.0
                store_proxy.thaw()
            assert last.output_text == "echo(3): last"
            prompt = upstreams.openai.requests[-1]["body"]["messages"]
            assert prompt[-2]["role"] == "assistant" and prompt[-2]["content"].startswith("echo(2):")
    finally:
        server.stop()


def test_a_conversation_an_instance_died_holding_is_free_within_the_lock_lease(
    tmp_path: Path, upstreams: Upstreams, network_kind: str
) -> None:
    """Instance A dies (SIGKILL) in the middle of a conversation's streamed turn. While A lived, its
    lock outlived the lease time (renewed); once A is gone, instance B may go on within the lease time,
    not after the turn's whole timeout plus 30 s (630 s by default)."""
    url = store_url(network_kind, tmp_path)
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=url, CHATGPT_SERVER_LOCK_LEASE_MS="900",
                        CHATGPT_SERVER_STORE_TIMEOUT_MS="300")  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = ServerProcess(tmp_path / "a", env).start(), ServerProcess(tmp_path / "b", env).start()
    upstreams.openai.chunk_delay = 0.25
    try:
        with openai.OpenAI(base_url=b.url + "/v1", api_key=KEY, max_retries=0) as sdk:
            conversation = sdk.conversations.create()
            body = {"model": "gpt-3.5-turbo", "input": "a b c d e f g h i j k l", "conversation": conversation.id,
                    "stream": True}  # fmt: skip
            headers = {"Authorization": f"Bearer {KEY}"}
            with httpx.stream("POST", a.url + "/v1/responses", json=body, headers=headers, timeout=30) as stream:
                lines = stream.iter_lines()
                while "output_text.delta" not in next(lines):
                    pass
                time.sleep(1.5)  # past the lease time: A renews its lock
                with pytest.raises(openai.BadRequestError) as locked:
                    sdk.responses.create(model="gpt-3.5-turbo", input="meanwhile", conversation=conversation.id)
                assert locked.value.code == "conversation_locked"
                a.kill()
                died = time.monotonic()
            while True:
                try:
                    after = sdk.responses.create(model="gpt-3.5-turbo", input="after", conversation=conversation.id)
                    break
                except openai.BadRequestError as exc:
                    assert exc.code == "conversation_locked" and time.monotonic() - died < 5, exc
                    time.sleep(0.1)
            assert after.output_text == "echo(1): after"  # A's turn never landed; B's stands alone
    finally:
        upstreams.openai.chunk_delay = 0.0
        a.stop()
        b.stop()


def test_a_lock_renewed_through_a_long_turn_is_given_back_at_its_end(tmp_path: Path, upstreams: Upstreams) -> None:
    """A turn longer than the lease time renews its lock (a new version each time); at its end the lock
    given back is the version last written, so the next turn, on another instance, never meets it."""
    env = upstreams.env(CHATGPT_SERVER_LOCK_LEASE_MS="300", CHATGPT_SERVER_STORE_TIMEOUT_MS="100",
                        CHATGPT_SERVER_STORE_URL=f"sqlite:///{tmp_path}/c.db")  # fmt: skip
    (tmp_path / "b").mkdir()
    server, other = ServerProcess(tmp_path, env).start(), ServerProcess(tmp_path / "b", env).start()
    upstreams.openai.chunk_delay = 0.15
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk, \
                openai.OpenAI(base_url=other.url + "/v1", api_key=KEY, max_retries=0) as sdk_b:  # fmt: skip
            conversation = sdk.conversations.create()
            started = time.monotonic()
            with sdk.responses.stream(model="gpt-3.5-turbo", input="a b c d e f g h i",
                                      conversation=conversation.id) as stream:  # fmt: skip
                long = stream.get_final_response()
            assert time.monotonic() - started > 1.0  # three lease times and more: renewed, not lost
            upstreams.openai.chunk_delay = 0.0
            after = sdk_b.responses.create(model="gpt-3.5-turbo", input="next", conversation=conversation.id)
            assert (long.status, after.output_text) == ("completed", "echo(2): next")
    finally:
        upstreams.openai.chunk_delay = 0.0
        server.stop()
        other.stop()


def test_a_store_that_hangs_at_the_end_of_a_stream_costs_it_the_store_timeout_once(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    """The store hangs while a conversation's reply streams: the write that ends the turn times out and
    the client is told (response.failed) once the store timeout has passed, not after a second write of
    the partial and a wait for the conversation's lock to be given back (3x the timeout before)."""
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=url, CHATGPT_SERVER_STORE_TIMEOUT_MS="600")
    server = ServerProcess(tmp_path, env).start()
    upstreams.openai.chunk_delay = 0.05
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk:
            conversation = sdk.conversations.create()
            stream = sdk.responses.create(model="gpt-3.5-turbo", input="a b c d e f", conversation=conversation.id,
                                          stream=True)  # fmt: skip
            last = time.monotonic()
            for event in stream:
                if event.type == "response.output_text.delta":
                    store_proxy.freeze()
                    last = time.monotonic()
            told = time.monotonic() - last
            assert event.type == "response.failed", event.type
            assert told < 0.6 * 1.6, f"told {told:.2f} s after the last piece of text"
    finally:
        upstreams.openai.chunk_delay = 0.0
        store_proxy.thaw()
        server.stop()
    # and the log says why, as it does for a failure before a stream begins
    why = re.search(r"store unavailable: .*(did not answer|no answer) within 0.6 s", server.log())
    assert why, server.log()[-2000:]


KEY_CHANGED = "is not the key this store's conversations were stored under"


def test_a_secret_key_set_or_changed_after_conversations_were_stored_is_told(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """Conversations belong to a keyed hash of their credential: a key set or changed later leaves them
    out of reach, which requests can only show as 404s. The log says why, at start-up; the key they
    were stored under brings them back."""

    def served(env: dict[str, str], work: Any) -> str:
        server = ServerProcess(tmp_path, env).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                work(c)
        finally:
            server.stop()
        return server.log()

    env = upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{tmp_path / 'keyed.db'}")
    first: dict[str, Any] = {}
    assert KEY_CHANGED not in served(env, lambda c: first.update(ask(c, "hello").json()["data"]))
    changed = {**env, "CHATGPT_SERVER_SECRET_KEY": "another-secret-key-0123456789"}
    assert KEY_CHANGED in served(changed, lambda c: assert_error(ask(c, "on", parent=first["id"]), 404))
    assert KEY_CHANGED not in served(env, lambda c: ask(c, "back", parent=first["id"]).raise_for_status())
    # A key set where one had been generated and kept in the store.
    unset = {k: v for k, v in env.items() if k != "CHATGPT_SERVER_SECRET_KEY"}
    unset["CHATGPT_SERVER_STORE_URL"] = f"sqlite:///{tmp_path / 'generated.db'}"
    assert KEY_CHANGED not in served(unset, lambda c: ask(c, "hello").raise_for_status())
    assert KEY_CHANGED in served({**unset, "CHATGPT_SERVER_SECRET_KEY": "set-later-0123456789"}, lambda c: None)


def test_sqlite_locked_by_another_process_buys_no_reply(tmp_path: Path, upstreams: Upstreams) -> None:
    """Another process holds SQLite's write lock (a backup, the sqlite3 shell): reads still work, but no
    turn's write could land, so no turn calls the upstream (503 within the store timeout, new and
    follow-up, JSON and stream) and /readyz says not ready, until the lock is let go."""
    db = tmp_path / "x.db"
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{db}", CHATGPT_SERVER_STORE_TIMEOUT_MS="500")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            try:
                before = len(upstreams.openai.requests)
                for options in ({}, {"parent": first["id"]}, {"kind": "2"}, {"parent": first["id"], "kind": "2"}):
                    started = time.monotonic()
                    assert_error(ask(c, "locked", **options), 503)
                    assert time.monotonic() - started < 1.5
                assert c.get("/readyz").status_code == 503
                assert len(upstreams.openai.requests) == before
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert ask(c, "after", parent=first["id"]).status_code == 201
            assert c.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_a_full_disk_buys_no_more_replies_and_says_why(tmp_path: Path, upstreams: Upstreams) -> None:
    """SQLite cannot grow its files (here the process's file-size limit, which the kernel enforces as a
    full disk's refusal): the turn whose write failed is a 503 and the log says why (not a second error
    of the rollback); after it no reply is bought until a write of a turn's size passes again, and
    /readyz says not ready meanwhile. Room again: the same process goes on."""
    import resource

    db = tmp_path / "full.db"
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{db}")).start()
    assert server.proc is not None
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
            sizes = [p.stat().st_size for p in (*tmp_path.glob("full.db*"), server.log_path)]
            limit = max(sizes) + 512 * 1024
            _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
            big = "many words " * 1000  # ~11 kB a question (within the budget), and as much again its echo
            for _ in range(200):
                if ask(c, big).status_code == 503:
                    break
            else:
                raise AssertionError("the store never ran out of room")
            wait_for(lambda: "disk" in server.log(), what="the reason in the log")
            assert "cannot rollback" not in server.log()
            before = len(upstreams.openai.requests)
            for options in ({}, {"parent": first["id"]}, {"kind": "2"}):
                assert_error(ask(c, "no room", **options), 503)
            assert c.get("/readyz").status_code == 503
            assert len(upstreams.openai.requests) == before  # nothing more was bought
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
            wait_for(lambda: ask(c, "room again").status_code == 201, what="the store to take writes again")
            assert ask(c, "and on", parent=first["id"]).json()["data"]["text"] == "echo(2): and on"
            assert c.get("/readyz").status_code == 200
    finally:
        server.stop()


def _restore_a_backup_over(db: Path) -> None:
    """What an operator does with a backup: made with SQLite's backup, then moved over the live file."""
    staged = db.with_name("backup.db")
    backup, source = sqlite3.connect(staged), sqlite3.connect(db)
    source.backup(backup)
    source.close()  # closed: an open connection is another process holding the old file
    backup.close()
    os.replace(staged, db)


def _take_away(db: Path, how: str) -> None:
    """What an operator does to the file under a running server: ``rm`` (the file alone, its -wal and -shm
    left), ``rm *`` (all three) or ``mv backup`` (a backup put in its place)."""
    if how == "mv backup":
        _restore_a_backup_over(db)
        return
    for path in db.parent.glob(db.name + ("*" if how == "rm *" else "")):
        path.unlink()


@pytest.mark.parametrize("how", ["rm", "rm *", "mv backup"])
def test_a_database_file_removed_under_the_server_is_opened_again(tmp_path: Path, upstreams: Upstreams,
                                                                  how: str) -> None:  # fmt: skip
    """An operator removes the SQLite file (``rm`` of the file alone leaves its -wal and -shm) or puts a
    backup in its place: the server opens the path again within moments, and says so, instead of storing
    the replies it tells about in a file nobody will read (or refusing until a restart)."""
    db = tmp_path / "gone.db"
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{db}")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
            _take_away(db, how)

            def opened() -> bool:
                return ask(c, "after").status_code == 201 and "was removed or replaced" in server.log() and db.exists()

            wait_for(opened, what="the path opened again")
            told = ask(c, "kept").json()["data"]
            if how == "mv backup":  # the backup's conversations go on
                assert ask(c, "on", parent=first["id"]).json()["data"]["text"] == "echo(2): on"
        assert "was removed or replaced" in server.log() and "restart" not in server.log()
    finally:
        server.stop()
    again = ServerProcess(tmp_path, env).start()  # what was told since is in the file at the path
    try:
        with httpx.Client(base_url=again.url, timeout=30) as c:
            got = ask(c, "on", parent=told["id"]).json()
            assert got["data"].get("text") == "echo(2): on", got
    finally:
        again.stop()


@pytest.mark.parametrize("how", ["rm", "mv backup"])
def test_a_database_file_replaced_under_two_workers_is_opened_again_by_both(tmp_path: Path, upstreams: Upstreams,
                                                                            how: str) -> None:  # fmt: skip
    """With ``--workers 2`` each worker holds the old file until it notices: the first to let go waits for
    the other (which lets go within moments, busy or idle), then both use the new file, and nothing told
    after is lost (the new file's -wal and -shm are never taken for the old one's)."""
    db = tmp_path / "shared.db"
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{db}", CHATGPT_SERVER_WORKERS="2")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
            _take_away(db, how)
            wait_for(lambda: server.log().count("was removed or replaced") >= 2, what="both workers letting go")

            def steady() -> bool:  # every worker answers from the new file
                return all(ask(c, "after").status_code == 201 for _ in range(10))

            wait_for(steady, what="both workers on the new file")
            told = [ask(c, f"kept {i}").json()["data"]["id"] for i in range(6)]
    finally:
        server.stop()
    again = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{db}")).start()
    try:
        with httpx.Client(base_url=again.url, timeout=30) as c:
            for reply in told:  # each one is in the file at the path
                assert ask(c, "on", parent=reply).status_code == 201
            if how == "mv backup":
                assert ask(c, "on", parent=first["id"]).status_code == 201
    finally:
        again.stop()


def test_a_database_file_replaced_while_another_process_has_it_open_is_refused(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """Another process (a worker, the sqlite3 shell) still has the old file open: its WAL stays at the
    path, and a new file there would read the old one's pages as its own. The server refuses (503) and
    says why, until that process lets go; then it opens the new file."""
    db = tmp_path / "swapped.db"
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{db}")).start()
    other = None
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert ask(c, "before").status_code == 201
            other = sqlite3.connect(db)  # as the sqlite3 shell would
            other.execute("SELECT count(*) FROM items").fetchone()
            restored = sqlite3.connect(tmp_path / "restored.db")
            restored.execute("CREATE TABLE t (x)")
            restored.close()
            os.replace(tmp_path / "restored.db", db)  # a backup put in place with mv
            wait_for(lambda: ask(c, "after").status_code == 503, what="the refusal")
            assert "once that process lets go of it" in server.log()
            assert c.get("/readyz").status_code == 503
            other.close()  # the shell quits: the old file's WAL is nobody's now, and the new file is opened
            other = None
            wait_for(lambda: ask(c, "back").status_code == 201, what="the new file opened")
            assert "the other process let go" in server.log()
    finally:
        if other is not None:
            other.close()
        server.stop()


def test_coming_back_after_a_restart_loses_no_request(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    """Every pooled connection dies with the store; once it answers again, none of that shows."""
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=url)).start()
    try:
        statuses: list[int] = []

        def burst(n: int) -> None:
            def one() -> None:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    statuses.append(ask(c, "warm").status_code)

            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        burst(16)  # fill the pool
        assert statuses == [201] * 16
        store_proxy.stop()  # the store restarts: every pooled connection is reset
        store_proxy.start()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200, what="readiness")
        statuses.clear()
        for _ in range(5):
            burst(16)
        assert statuses == [201] * 80
    finally:
        server.stop()


# -- timeouts --------------------------------------------------------------------------------------
def test_keep_alive_comments_do_not_defeat_the_idle_timeout(tmp_path: Path, upstreams: Upstreams) -> None:
    """An upstream that sends only comments is silent: the stream ends with a 504 error event."""
    from .test_accounts import sign_in, unique

    server = ServerProcess(tmp_path, upstreams.codex_env()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            email, account = unique("idle")
            token = sign_in(c, upstreams, email, account)["accessToken"]
            upstreams.apps.call(lambda: upstreams.codex.fail_next.append("keepalive:3"))
            started = time.monotonic()
            got = events(ask(c, "x", key=token, mode="2", kind="2", idleTimeoutMs=500).text)
            assert time.monotonic() - started < 2
            assert got[-1][0] == "error" and got[-1][1]["status"] == 504
            upstreams.apps.call(lambda: upstreams.codex.fail_next.append("keepalive:3"))
            whole = ask(c, "x", key=token, mode="2", idleTimeoutMs=500)
            assert "sent nothing for 0.5 s" in assert_error(whole, 504)
    finally:
        server.stop()


# -- shutdown --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_sigterm_ends_what_outlives_the_grace_period_cleanly(tmp_path: Path, upstreams: Upstreams,
                                                             sig: signal.Signals) -> None:  # fmt: skip
    """SIGTERM, and Ctrl-C or a closed terminal as it: the grace period, then a clean end for what is left."""
    env = upstreams.env(CHATGPT_SERVER_SHUTDOWN_GRACE_SECONDS="1")
    server = ServerProcess(tmp_path, env).start()
    results: dict[str, Any] = {}
    try:
        first = None
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = ask(c, "before").json()["data"]
        upstreams.openai.chunk_delay = 0.3  # a stream that takes ~3 s
        upstreams.apps.call(lambda: upstreams.alt_openai.fail_next.append("sleep:10"))  # an answer that takes 10 s

        def whole() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                results["whole"] = ask(c, "never answered in time", apiBaseUrl=upstreams.alt_openai_url)

        def stream() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                words = " ".join(f"w{i}" for i in range(10))
                results["stream"] = ask(c, words, parent=first["id"], kind="2")

        threads = [threading.Thread(target=whole), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        wait_for(lambda: httpx.get(server.url + "/healthz").json()["data"]["turns"] >= 2, what="two turns in flight")
        time.sleep(0.4)  # let the stream send some text first
        assert server.proc is not None
        server.proc.send_signal(sig)
        for t in threads:
            t.join(20)
        assert server.proc.wait(20) in (0, -sig, -signal.SIGTERM, 130)  # uvicorn re-raises the signal (Ctrl-C: 130)
    finally:
        upstreams.openai.chunk_delay = 0.0
        server.stop()
    whole_response = results["whole"]
    assert whole_response.headers["content-type"].startswith("application/json")
    assert assert_error(whole_response, 503) == "server shutting down"
    got = events(results["stream"].text)
    assert got[-1][0] == "error" and got[-1][1]["status"] == 503 and got[-1][1]["message"] == "server shutting down"
    partial = [e[1] for e in got if e[0] == "delta"]
    assert partial, "some text was streamed before the end"
    log = server.log()
    assert "Traceback" not in log
    # the answer that never came still counts as time spent upstream in the access log
    waited = re.search(r'POST /api/v1/gpt/getInfo 503 .*route="gpt mode1 type1" .*upstream_ms=([0-9.]+)', log)
    assert waited and float(waited.group(1)) >= 500, log[-3000:]
    server.start()  # the partial reply was stored, incomplete: a follow-up sees it
    try:
        upstreams.openai.chunk_delay = 0.0
        with httpx.Client(base_url=server.url, timeout=30) as c:
            follow = ask(c, "after", parent=partial[-1]["id"])
            assert follow.json()["data"]["text"] == "echo(3): after"
            history = upstreams.openai.requests[-1]["body"]["messages"]
            assert history[-2]["content"] == partial[-1]["text"]
    finally:
        server.stop()


def test_a_server_under_nohup_stays_up_on_sighup(tmp_path: Path, upstreams: Upstreams) -> None:
    """``nohup`` makes SIGHUP ignored, for a server meant to outlive its terminal: it stays so."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does; the server inherits it
    try:
        server = ServerProcess(tmp_path, upstreams.env()).start()
    finally:
        signal.signal(signal.SIGHUP, before)
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert ask(c, "still here").status_code == 201  # answered after the signal
        assert server.proc.poll() is None and "shutting down" not in server.log()
    finally:
        server.stop()


def test_sigterm_answers_what_is_not_a_turn_as_it_answers_turns(tmp_path: Path, upstreams: Upstreams) -> None:
    """A pass-through (whole or streamed) and a sign-in still waiting when the grace period ends are
    answered 503 in their door's shape (a stream: an error event), as turns are, with their access-log
    line: not cut by the server's own forced stop seconds later with a plain-text 500."""
    silent = socket.socket()  # an issuer that takes the connection and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = upstreams.codex_env(CHATGPT_SERVER_SHUTDOWN_GRACE_SECONDS="1", CHATGPT_SERVER_CHATGPT_AUTH_ISSUER=issuer)
    server = ServerProcess(tmp_path, env).start()
    results: dict[str, httpx.Response] = {}
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        seen = len(upstreams.openai.requests)
        upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:10"))

        def call(name: str, path: str, body: dict[str, Any]) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                results[name] = c.post(path, json=body, headers=headers)

        first_chunk = threading.Event()
        streamed_lines: list[str] = []

        def read_stream(body: dict[str, Any]) -> None:
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers,
                              timeout=30) as answer:  # fmt: skip
                streamed_lines.append(f"HTTP {answer.status_code}")
                for line in answer.iter_lines():
                    streamed_lines.append(line)
                    first_chunk.set()

        chat = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "never answered"}]}
        threads = [threading.Thread(target=call, args=("whole", "/v1/chat/completions", chat))]
        threads[0].start()
        wait_for(lambda: len(upstreams.openai.requests) > seen, what="the whole pass-through upstream")
        upstreams.openai.chunk_delay = 0.3  # a stream that takes ~6 s
        words = " ".join(f"w{i}" for i in range(20))
        streamed = {**chat, "messages": [{"role": "user", "content": words}], "stream": True}
        threads.append(threading.Thread(target=read_stream, args=(streamed,)))
        threads.append(threading.Thread(target=call, args=("device", "/api/v1/token/device", {})))
        for t in threads[1:]:
            t.start()
        silent.settimeout(10)
        held, _ = silent.accept()  # the sign-in is waiting on the issuer
        wait_for(lambda: len(upstreams.openai.requests) > seen + 1, what="the streamed pass-through upstream")
        assert first_chunk.wait(10), "no chunk was passed on"  # some of the reply first
        assert server.proc is not None
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        answered_in = time.monotonic() - stopped_at
        assert server.proc.wait(20) in (0, -signal.SIGTERM)
        held.close()
    finally:
        upstreams.openai.chunk_delay = 0.0
        silent.close()
        server.stop()
    assert answered_in < 4, answered_in  # the grace period (1 s), not the server's forced stop (5 s later)
    whole = results["whole"]
    assert whole.status_code == 503 and whole.json()["error"]["message"] == "server shutting down", whole.text
    assert streamed_lines[0] == "HTTP 200"
    lines = [line[6:] for line in streamed_lines if line.startswith("data: ")]
    assert json.loads(lines[0])["object"] == "chat.completion.chunk"  # some of the reply came first
    assert json.loads(lines[-1])["error"]["message"] == "server shutting down", lines[-3:]
    device = results["device"]
    assert device.status_code == 503 and device.json()["message"] == "server shutting down", device.text
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert re.search(r"POST /v1/chat/completions 503 .*shutting down", log), log[-3000:]
    assert re.search(r"POST /api/v1/token/device 503 ", log), log[-3000:]
    assert re.search(r'POST /v1/chat/completions 200 .*route="chat.completions stream" .*outcome=error', log)


def test_a_stream_stuck_on_a_client_that_stopped_reading_keeps_its_partial_at_shutdown(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """A stream whose client stopped reading is blocked in a send (within milliseconds; the grace period
    is a second): the grace period's abort cannot reach it, and the server's last resort (it cancels
    what still runs, 5 s after the grace period) does. What had arrived is still stored, and the turn
    let go, as when the client leaves; no traceback is logged."""
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_SHUTDOWN_GRACE_SECONDS="1")).start()
    # Each delta event of the original route carries the text so far: ~10 MB in all, far more than the
    # socket buffers hold, so the server blocks in a send once the client stops reading.
    words = " ".join(f"w{i}" for i in range(2000))
    budget = {"maxModelTokens": 16000, "maxResponseTokens": 4000}
    body = {"mode": "1", "type": "2", "opts": {"key": KEY, "content": words, "isFollow": False, "opts": budget}}
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            first = first_delta(s, body)
            # From here on nothing is read.
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert_partial_stored(c, upstreams, first)
    finally:
        server.stop()


def assert_partial_stored(c: httpx.Client, upstreams: Upstreams, first: dict[str, Any]) -> None:
    """What a stream had told by its first delta was stored: a follow-up from it carries it."""
    follow = ask(c, "after", parent=first["id"], maxModelTokens=16000, maxResponseTokens=4000)
    assert follow.status_code == 201, follow.text
    stored = upstreams.openai.requests[-1]["body"]["messages"][-2]
    assert stored["role"] == "assistant" and stored["content"].startswith(first["text"])


def big_stream(words: int) -> dict[str, Any]:
    """An original-route stream whose deltas each carry the text so far: megabytes from a few thousand words."""
    content = " ".join(f"w{i}" for i in range(words))
    budget = {"maxModelTokens": 16000, "maxResponseTokens": 4000}
    return {"mode": "1", "type": "2", "opts": {"key": KEY, "content": content, "isFollow": False, "opts": budget}}


def test_a_stream_whose_client_stopped_reading_is_let_go_after_the_idle_timeout(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """A client that stops reading (its socket buffers full, the server blocked in a send) would hold its
    turn, the upstream connection and its conversation for as long as it liked: after the idle timeout
    without a byte read it is taken as gone. What had arrived is stored, as when a client leaves."""
    env = upstreams.env(CHATGPT_SERVER_IDLE_TIMEOUT_MS="1500", CHATGPT_SERVER_HEARTBEAT_SECONDS="1")
    server = ServerProcess(tmp_path, env).start()
    body = big_stream(2000)  # ~10 MB in all
    try:
        with socket.socket() as s, httpx.Client(base_url=server.url, timeout=30) as c:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            first = first_delta(s, body)  # from here on nothing is read
            stalled = time.monotonic()
            wait_for(lambda: "read nothing for 1.5 s" in server.log(), 15, "the stalled stream to be let go")
            assert time.monotonic() - stalled >= 1.0
            wait_for(lambda: c.get("/healthz").json()["data"]["turns"] == 0, 5, "its turn to end")
            assert_partial_stored(c, upstreams, first)
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "without completing response" not in log, log[-3000:]


def test_a_stream_whose_client_reads_slowly_is_not_cut(tmp_path: Path, upstreams: Upstreams) -> None:
    """A client reading steadily, if slowly, is no stalled client: however long one send waits (the kernel
    wakes a writer only once much of its buffer has drained), what it takes is progress."""
    env = upstreams.env(CHATGPT_SERVER_IDLE_TIMEOUT_MS="1000", CHATGPT_SERVER_HEARTBEAT_SECONDS="1")
    server = ServerProcess(tmp_path, env).start()
    body = big_stream(1200)  # ~4 MB in all
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            first_delta(s, body)
            received = b""
            while b"event: done" not in received:
                time.sleep(0.01)  # a slow reader: a few kB at a time (its receive buffer is 4 kB)
                chunk = s.recv(32768)
                assert chunk, "the server cut a client that was reading"
                received = received[-64:] + chunk  # the last bytes kept: an event name cut between reads
    finally:
        server.stop()
    assert "read nothing for" not in server.log()


def test_a_client_that_leaves_before_any_event_leaves_no_empty_answer(tmp_path: Path, upstreams: Upstreams) -> None:
    """A stream left after its head but before its first word: nothing the client was not told of joins
    the conversation (no empty assistant message in later prompts, the tip where it was)."""
    server = ServerProcess(tmp_path, upstreams.env()).start()
    try:
        with (
            openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk,
            httpx.Client(base_url=server.url, timeout=30) as c,
        ):
            conversation = sdk.conversations.create().id
            sdk.responses.create(model="gpt-3.5-turbo", input="first", conversation=conversation)
            original = ask(c, "one").json()["data"]
            upstreams.openai.chunk_delay = 3.0  # the head, then a silence before the first word
            with sdk.responses.create(model="gpt-3.5-turbo", input="abandoned", conversation=conversation,
                                      stream=True) as stream:  # fmt: skip
                assert next(iter(stream)).type == "response.created"
            body = {"mode": "1", "type": "2", "opts": {"key": KEY, "content": "abandoned too", "isFollow": True,
                                                       "parentMessageId": original["id"]}}  # fmt: skip
            with c.stream("POST", "/api/v1/gpt/getInfo", json=body) as response:
                assert response.status_code == 200
            wait_for(lambda: c.get("/healthz").json()["data"]["turns"] == 0, 10, "the abandoned turns to end")
            upstreams.openai.chunk_delay = 0.0
            sdk.responses.create(model="gpt-3.5-turbo", input="next", conversation=conversation)
            sent = upstreams.openai.requests[-1]["body"]["messages"]
            assert [m["content"] for m in sent] == ["first", "echo(1): first", "next"], sent
            listed = sdk.conversations.items.list(original["conversationId"]).model_dump_json()
            assert "abandoned too" not in listed
    finally:
        upstreams.openai.chunk_delay = 0.0
        server.stop()


def test_a_client_that_leaves_before_its_answer_stops_its_turn_and_frees_its_conversation(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """A client that gives up on a JSON answer (the SDK's timeout, then its retry): the turn stops at
    once instead of at the server's timeout, so the conversation is not held for nobody (the retry
    would meet conversation_locked) and nothing nobody was told of is stored; the log says 499."""
    server = ServerProcess(tmp_path, upstreams.env()).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk:
            conversation = sdk.conversations.create()
            upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:4"))  # an answer in 4 s
            with pytest.raises(openai.APITimeoutError):
                sdk.with_options(timeout=1).responses.create(
                    model="gpt-3.5-turbo", input="abandoned", conversation=conversation.id
                )
            left = time.monotonic()
            again = sdk.responses.create(model="gpt-3.5-turbo", input="again", conversation=conversation.id)
            assert again.output_text == "echo(1): again" and time.monotonic() - left < 5
            items = sdk.conversations.items.list(conversation.id).model_dump_json()
            assert "abandoned" not in items and "again" in items
        with httpx.Client(base_url=server.url, timeout=1) as c:  # the original route, a new conversation
            upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:4"))
            with pytest.raises(httpx.ReadTimeout):
                ask(c, "given up")
        wait_for(lambda: len([m for m in access_lines(server.log()) if m["status"] == "499"]) == 2,
                 timeout=5, what="both requests logged as 499")  # fmt: skip
        # Not a turn: the Chat Completions pass-through stops waiting on its upstream all the same.
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=1) as sdk:
            upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:8"))
            with pytest.raises(openai.APITimeoutError):
                sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "gone"}])
        left = time.monotonic()
        passed = ("/v1/chat/completions", "499")
        wait_for(lambda: any((m["path"], m["status"]) == passed for m in access_lines(server.log())),
                 timeout=5, what="the pass-through logged as 499")  # fmt: skip
        assert time.monotonic() - left < 3  # at once, not when the upstream answered (8 s)
    finally:
        server.stop()


# -- the access log --------------------------------------------------------------------------------
LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<rid>\S+) (?P<method>[A-Z]+) (?P<path>\S+) "
    r"(?P<status>\d{3}) (?P<ms>[\d.]+)ms(?P<rest>.*)$"
)


def access_lines(log: str) -> list[re.Match[str]]:
    return [m for line in log.splitlines() if (m := LINE.match(line))]


def test_one_access_line_per_request(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            mine = ask(c, "logged", key=KEY)
            assert re.fullmatch(r"[0-9a-f]{16}", mine.headers["x-request-id"])
            kept = c.get("/healthz", headers={"X-Request-Id": "trace-42.abc"})
            assert kept.headers["x-request-id"] == "trace-42.abc"
            replaced = c.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
            assert replaced.headers["x-request-id"] != "bad id\twith spaces"
            ask(c, "stream me", kind="2")
            c.get("/api/v1/token/getInfo?type=9&email=a@b.c&password=hunter2-secret")
            assert_error(ask(c, "x", parent="chatcmpl-none"), 404)
            forged = "/x%0a2026-11-28T06:28:31.241Z%20deadbeefdeadbeef%20POST%20/api/v1/gpt/getInfo%20201%201.0ms"
            c.get(forged)  # a path that decodes to a line break and a made-up request line
            c.get("/v1/responses/resp_%0d%0aforged%20line", headers={"Authorization": f"Bearer {KEY}"})
    finally:
        server.stop()
    assert not any(line.startswith(("2026-11-28T06:28:31.241Z", "forged")) for line in server.log().splitlines())
    lines = access_lines(server.log())
    by_rid = {m["rid"]: m for m in lines}
    first = by_rid[mine.headers["x-request-id"]]
    assert (first["method"], first["path"], first["status"]) == ("POST", "/api/v1/gpt/getInfo", "201")
    assert 'route="gpt mode1 type1"' in first["rest"] and "upstream=127.0.0.1:" in first["rest"]
    assert "upstream_ms=" in first["rest"] and "store_ms=" in first["rest"]
    assert "trace-42.abc" in by_rid
    streamed = next(m for m in lines if "type2" in m["rest"])
    assert "outcome=done" in streamed["rest"]
    token = next(m for m in lines if m["path"] == "/api/v1/token/getInfo")
    assert token["status"] == "400" and "message=" in token["rest"] and "hunter2" not in server.log()
    missing = next(m for m in lines if m["status"] == "404")
    assert "is not a message of a conversation" in missing["rest"]
    assert KEY not in server.log() and KEY[-8:] not in server.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_access_log_as_json(tmp_path: Path, upstreams: Upstreams, workers: str) -> None:
    """With ``LOG_FORMAT=json`` every line is JSON, the server's own (a request that is not HTTP, start
    and stop) included, in one process as in workers."""
    env = upstreams.env(CHATGPT_SERVER_LOG_FORMAT="json", CHATGPT_SERVER_WORKERS=workers)
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            rid = ask(c, "json line").headers["x-request-id"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every one: a plain-text line fails here
    assert any(e.get("logger") == "uvicorn.error" and "Invalid HTTP request" in e["message"] for e in entries)
    entry = next(e for e in entries if e.get("request_id") == rid)
    assert entry["method"] == "POST" and entry["status"] == 201 and entry["route"] == "gpt mode1 type1"
    assert entry["duration_ms"] >= entry["upstream_ms"] >= 0 and "store_ms" in entry


# -- why the store is away, and failing fast ---------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://127.0.0.1:5432/no_such_database_xyz", "no_such_database_xyz"),
        ("postgresql://127.0.0.1:9/test", "refused"),
        ("postgresql://postgres:s3cretpw@127.0.0.1:9/test", "refused"),
        ("redis://127.0.0.1:9/0", "refused"),
        ("sqlite:////proc/no/such/dir/x.db", "sqlite"),
    ],
)
def test_serve_check_says_why_the_store_cannot_open(tmp_path: Path, url: str, words: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--check", "--store-url", url],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    reason = result.stderr.splitlines()[-1]
    assert "store cannot be opened" in reason and words.lower() in reason.lower()
    assert "s3cretpw" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_serve_check_says_a_postgresql_that_hangs_did_not_answer(tmp_path: Path) -> None:
    """A server that takes the connection and then says nothing: the reason names the wait, not a bare
    "TimeoutError: TimeoutError"."""
    proxy = TCPProxy(POSTGRES_PORT).start()
    proxy.freeze()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
        env["CHATGPT_SERVER_STORE_TIMEOUT_MS"] = "300"
        url = f"postgresql://127.0.0.1:{proxy.port}/test?search_path=no_such_schema_{uuid.uuid4().hex[:8]}"
        result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--check", "--store-url", url],
                                env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    finally:
        proxy.thaw()
        proxy.stop()
    assert result.returncode == 1
    reason = result.stderr.splitlines()[-1]
    assert re.search(r"no answer within \d+\.\d s", reason) and f"127.0.0.1:{proxy.port}" in reason, reason


def test_serve_check_passes_with_a_store_that_opens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    env["CHATGPT_SERVER_DATA_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--check"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_variable_that_names_no_setting_is_warned_of(tmp_path: Path) -> None:
    """A misspelled variable (in the environment or .env) would leave its setting at the default unsaid:
    the start-up log names it, with the setting it is nearest to."""
    (tmp_path / ".env").write_text("CHATGPT_SERVER_MAX_RESPONSE_TOKEN=5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    env.update({"CHATGPT_SERVER_DATA_DIR": str(tmp_path), "CHATGPT_SERVER_MODEL_FILE": "m.toml",
                "CHATGPT_SERVER_ZZZ": "1", "CHATGPT_SERVER_PORT": "7003"})  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--check"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    warned = [line.split("chatgpt_server: ", 1)[1] for line in result.stderr.splitlines() if " WARNING " in line]
    assert warned == [
        "CHATGPT_SERVER_MAX_RESPONSE_TOKEN is not a setting (did you mean CHATGPT_SERVER_MAX_RESPONSE_TOKENS?): "
        "it is ignored",
        "CHATGPT_SERVER_MODEL_FILE is not a setting (did you mean CHATGPT_SERVER_MODELS_FILE?): it is ignored",
        "CHATGPT_SERVER_ZZZ is not a setting: it is ignored",
    ]


def test_env_example_uncommented_as_shown_gives_the_defaults(tmp_path: Path) -> None:
    """.env.example says its values are the defaults: every line uncommented as it stands (an empty value
    too) must start the server as no .env would, with the data where the default puts it."""
    example = (ROOT / ".env.example").read_text()
    (tmp_path / ".env").write_text(re.sub(r"^# (CHATGPT_SERVER_\w+=)", r"\1", example, flags=re.M))
    assert "\nCHATGPT_SERVER_MODELS_FILE=\n" in (tmp_path / ".env").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--check"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "xdg" / "chatgpt-server" / "conversations.db").exists()
    assert not list(tmp_path.glob("conversations.db*"))


def test_a_missing_schema_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    url = "postgresql://127.0.0.1:5432/test?search_path=no_such_schema_xyz"
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--check", "--store-url", url],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "schema" in result.stderr.splitlines()[-1].lower()


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--log-level", "loud"], {}, "--log-level (CHATGPT_SERVER_LOG_LEVEL): must be one of"),
        (["--store-url", "sqlite:/x"], {}, "--store-url (CHATGPT_SERVER_STORE_URL): an SQLite store is a file"),
        (["--store-url", "sqlite:////tmp/a-dir/"], {}, "an SQLite store is a file"),
        (["--store-url", "sqlite:///:memory:"], {}, "an SQLite store is a file"),  # it would keep nothing
        (["--store-url", "postgresql://"], {}, "a PostgreSQL URL names its host and database"),
        (["--store-url", "redis://localhost:notaport/0"], {}, "a port is a number"),
        (["--store-url", "foo://x"], {}, "--store-url (CHATGPT_SERVER_STORE_URL): must start with"),
        (["--store-url", "redis://:9f8e7d#Qq1@127.0.0.1:6379/0"], {}, "percent-encode special characters"),
        ([], {"CHATGPT_SERVER_STORE_URL": "redis://u:abc?9f8e7d@127.0.0.1:6379"}, "percent-encode special characters"),
        ([], {"CHATGPT_SERVER_PROXY": "not a url"}, "CHATGPT_SERVER_PROXY: must be one of"),
        ([], {"CHATGPT_SERVER_PORT": "seventy"}, "CHATGPT_SERVER_PORT"),
        (["--workers", "0"], {}, "--workers (CHATGPT_SERVER_WORKERS)"),
        ([], {"CHATGPT_SERVER_MODELS_FILE": "/no-such-models.toml"}, "CHATGPT_SERVER_MODELS_FILE: /no-such-models"),
        (["--check"], {"CHATGPT_SERVER_MODELS_FILE": "/no-such-models.toml"}, "CHATGPT_SERVER_MODELS_FILE"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path, args: list[str], env: dict[str, str], words: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    clean.update(env)
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", *args], env=clean,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert words in result.stderr
    assert "9f8e7d" not in result.stderr  # a password in a URL that cannot be read is never shown


def test_account_commands_say_in_one_line_that_the_store_is_away(tmp_path: Path) -> None:
    from .harness import free_port

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    clean.update({"CHATGPT_SERVER_SECRET_KEY": "k" * 32, "CHATGPT_SERVER_STORE_TIMEOUT_MS": "500",
                  "CHATGPT_SERVER_STORE_URL": f"redis://:9f8e7d@127.0.0.1:{free_port()}/0"})  # fmt: skip
    for command in (["accounts"], ["logout", "ada@example.com"]):
        result = subprocess.run([sys.executable, "-m", "chatgpt_server", *command], env=clean, capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "the conversation store is unavailable" in result.stderr.splitlines()[-1]
        assert "9f8e7d" not in result.stderr


def test_help_version_and_the_way_to_the_docs(tmp_path: Path, upstreams: Upstreams) -> None:
    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "chatgpt_server", *args], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert re.fullmatch(r"chatgpt-server \d+\.\d+\.\d+\n", run("--version"))
    serve_help = run("serve", "--help")
    for flag in (
        "--host",
        "--port",
        "--workers",
        "--store-url",
        "--language",
        "--log-level",
        "--log-format",
        "--check",
    ):
        assert flag in serve_help
    assert "CHATGPT_SERVER_STORE_URL" in serve_help and "default: 7002" in serve_help
    assert "OPENAI_API_KEY" in run("ask", "--help")
    for command in ("serve", "ask", "login", "accounts", "logout"):
        assert command in run("--help")
    server = ServerProcess(tmp_path, upstreams.env()).start()
    try:
        assert "Swagger UI: http://127.0.0.1:" in server.log()
        root = httpx.get(server.url + "/")
        assert root.status_code == 302 and root.headers["location"] == "/api"
    finally:
        server.stop()


def test_ask_reads_dot_env_as_serve_does(tmp_path: Path, upstreams: Upstreams) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGPT_SERVER_", "OPENAI_API_KEY"))}
    dotenv = "\n".join(f"{k}={v}" for k, v in upstreams.env(CHATGPT_SERVER_DATA_DIR=str(tmp_path / "d")).items())
    (tmp_path / ".env").write_text(dotenv + "\n")
    result = subprocess.run([sys.executable, "-m", "chatgpt_server", "ask", "from dot env", "--key", KEY], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "echo(1): from dot env"


def test_every_setting_is_in_env_example_and_readme() -> None:
    from chatgpt_server.settings import Settings, env_name

    root = Path(__file__).resolve().parent.parent
    example = (root / ".env.example").read_text()
    readme = (root / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"# {env_name(name)}=" in example, name
        assert env_name(name) in readme, name


def test_several_workers_serve_one_port_and_share_conversations(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_WORKERS="2",
                                                   CHATGPT_SERVER_HEADER_TIMEOUT_SECONDS="1")).start()  # fmt: skip
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2:  # both workers answer (each says which one it is)
            assert time.monotonic() < deadline, pids
            with httpx.Client(base_url=server.url, timeout=10) as c:
                pids.add(c.get("/healthz").json()["data"]["pid"])
        parent = None
        for i in range(6):  # new connections land on either worker; the conversation is one
            with httpx.Client(base_url=server.url, timeout=10) as c:
                reply = ask(c, f"turn {i}", parent=parent).json()["data"]
            assert reply["text"] == f"echo({i + 1}): turn {i}"
            parent = reply["id"]
        big = httpx.get(server.url + "/healthz", headers={"X-Big": "a" * 40000})
        assert big.status_code == 431  # the workers have the head limits too
    finally:
        server.stop()


def test_several_workers_refuse_new_connections_once_shutting_down(tmp_path: Path, upstreams: Upstreams) -> None:
    """SIGTERM with a turn still running: new connections are refused at once, as with one worker (a
    proxy then tries another instance), not queued until the last worker has drained and then reset."""
    env = upstreams.env(CHATGPT_SERVER_WORKERS="2", CHATGPT_SERVER_SHUTDOWN_GRACE_SECONDS="5")
    server = ServerProcess(tmp_path, env).start()
    try:
        upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:4"))  # keeps a worker busy

        answered: list[int] = []

        def slow_turn() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                answered.append(ask(c, "slow").status_code)

        slow = threading.Thread(target=slow_turn)
        slow.start()
        wait_for(lambda: not upstreams.openai.fail_next, what="the slow turn to reach the upstream")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        def refused() -> bool:
            with socket.socket() as probe:
                probe.settimeout(0.5)
                return probe.connect_ex(("127.0.0.1", server.port)) != 0

        while not refused():
            assert time.monotonic() - signalled < 2.5, "new connections are still taken"
            time.sleep(0.01)
        took = time.monotonic() - signalled
        # At once: the supervisor acts on the signal as it arrives, not at its next look (every 0.5 s).
        assert took < 0.3 and server.proc.poll() is None, took  # still draining
        slow.join(20)
        assert answered == [201]  # the turn in flight was still answered
    finally:
        server.stop()


def test_access_log_lines_from_several_workers_stay_whole() -> None:
    """Four writers (as worker processes do) share one pipe: every line read back is one of theirs,
    whole, because each write is whole lines of at most PIPE_BUF bytes."""
    import select

    from chatgpt_server.app import write_lines

    read_end, write_end = os.pipe()
    lines = {w: [f"worker {w} line {i} {'x' * (i % 300)}\n".encode() for i in range(400)] for w in range(4)}
    received: list[bytes] = []

    def slow_reader() -> None:  # a terminal or a log shipper that keeps the pipe full, so writers wait mid-way
        while piece := os.read(read_end, 4096):
            received.append(piece)
            time.sleep(0.0005)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    writers = [threading.Thread(target=write_lines, args=(write_end, lines[w])) for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    os.close(write_end)
    reader.join()
    os.close(read_end)
    got = b"".join(received).splitlines(keepends=True)
    assert sorted(got) == sorted(line for w in lines for line in lines[w])
    for w in range(4):  # and each writer's lines in its order
        assert [line for line in got if line.startswith(f"worker {w} ".encode())] == lines[w]
    assert max(len(line) for w in lines for line in lines[w]) < select.PIPE_BUF


def test_requests_never_queue_behind_connection_attempts_to_a_hanging_store(
    tmp_path: Path, upstreams: Upstreams, network_kind: str, store_proxy: TCPProxy
) -> None:
    """The store hangs from the start (it accepts connections and never answers): each of several
    requests at once is a 503 within the store timeout, not one connection attempt after another."""
    url = store_url(network_kind, tmp_path, port=store_proxy.port)
    store_proxy.freeze()
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=url, CHATGPT_SERVER_STORE_TIMEOUT_MS="500")
    server = ServerProcess(tmp_path, env).start()
    try:
        took: list[tuple[int, float]] = []

        def one() -> None:
            started = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=30) as c:
                status = ask(c, "while it hangs").status_code
            took.append((status, time.monotonic() - started))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [status for status, _ in took] == [503] * 4
        assert max(seconds for _, seconds in took) < 1.5, took
        store_proxy.thaw()  # and once it answers, the next attempt connects
        with httpx.Client(base_url=server.url, timeout=30) as c:
            wait_for(lambda: ask(c, "back").status_code == 201, timeout=20, what="the store to answer")
    finally:
        store_proxy.thaw()
        server.stop()


def test_a_stop_is_taken_back_only_when_it_is_ours_alone() -> None:
    """A request stopped twice (the shutdown, then its client leaving) is answered once, for the first
    reason; one the server also cancels (its forced stop) stays cancelled."""
    from chatgpt_server.core.activity import RequestLog
    from chatgpt_server.errors import ServiceError, ShuttingDown

    async def waiting(log: RequestLog, seen: list[ServiceError | None]) -> None:
        log.stoppable()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(log.stopped_here())
            if seen[-1] is None:
                raise

    async def main() -> None:
        log = RequestLog()
        seen: list[ServiceError | None] = []
        task = asyncio.ensure_future(waiting(log, seen))
        await asyncio.sleep(0)
        log.stop()
        log.client_left()
        await task
        assert len(seen) == 1 and isinstance(seen[0], ShuttingDown) and not task.cancelled()
        log, seen = RequestLog(), []
        task = asyncio.ensure_future(waiting(log, seen))
        await asyncio.sleep(0)
        log.stop()
        task.cancel()  # the server's own
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [None]
        log = RequestLog()  # not stoppable: never cancelled by us
        plain = asyncio.ensure_future(asyncio.sleep(0.01))
        log.stop()
        log.client_left()
        await plain

    asyncio.run(main())


def test_a_credential_sent_as_the_request_id_is_neither_kept_nor_logged(tmp_path: Path, upstreams: Upstreams) -> None:
    """X-Request-Id is echoed and written to the access log: one that is the request's own key, or is
    shaped like a credential, is replaced by a new id; a key sent in the body and as the id is masked."""
    server = ServerProcess(tmp_path, upstreams.env()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            as_header = c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": KEY})
            assert as_header.status_code == 200 and as_header.headers["x-request-id"] != KEY
            shaped = c.get("/healthz", headers={"X-Request-Id": "sk-proj-Q7wErTy9UiOp3AsDfGhJk"})
            assert shaped.headers["x-request-id"] != "sk-proj-Q7wErTy9UiOp3AsDfGhJk"
            body = {"mode": "1", "type": "1", "opts": {"key": KEY, "content": "x", "isFollow": False}}
            in_body = c.post("/api/v1/gpt/getInfo", headers={"X-Request-Id": KEY[3:]}, json=body)
            assert in_body.status_code == 201
            kept = c.get("/healthz", headers={"X-Request-Id": "trace-42.abc"})
            assert kept.headers["x-request-id"] == "trace-42.abc"
    finally:
        server.stop()
    log = server.log()
    assert KEY not in log and KEY[3:] not in log and "Q7wErTy9UiOp3AsDfGhJk" not in log
    assert "trace-42.abc" in log


def test_a_websocket_upgrade_is_answered_as_the_http_request_it_is(tmp_path: Path, upstreams: Upstreams) -> None:
    """No route speaks WebSocket: an upgrade request is answered as HTTP, with a request id and its
    access-log line, not a plain-text 500 from a handshake nobody completes."""
    server = ServerProcess(tmp_path, upstreams.env()).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
            head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ") and b"x-request-id:" in head.lower(), head[:200]
        wait_for(lambda: "/healthz" in server.log(), what="the access-log line")
    finally:
        server.stop()
