"""Upstreams that misbehave (issue 8 §1-4), end to end: the gateway as a subprocess, real HTTP, the
evil stand-ins of ``tests/standins/evil.py``.

- Ids are ours: an upstream that repeats ids (Ollama), sends none, or echoes ours changes nothing.
- A redirect is never followed: a 502 naming the upstream, and nothing reaches the target.
- A reply of any wrong shape is a 502 (type 1) or an ``error`` event after which the text that
  arrived is stored as incomplete (type 2).
- A reply past ``CHATGPT_SERVER_MAX_REPLY_BYTES`` is cut, stored as incomplete, and the client told.
- The caller's credential, in any spelling an upstream echoes, never reaches a response or the log;
  ``Retry-After`` passes only as seconds or an HTTP date.
"""

from __future__ import annotations

import contextlib
import email.utils
import html
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest

from .conftest import Upstreams
from .harness import ServerProcess, within
from .standins.chatgpt_web import mint
from .standins.evil import (
    ODD_REPLIES,
    OTHER_SECRETS,
    STREAM_FRAMES,
    TEN_KB,
    WHOLE_REPLIES,
    AnyRedirector,
    ChatHostile,
    ChatIds,
    ChatLeaky,
    Endless,
    Recording,
    Redirector,
    Trap,
    WebHostile,
    WebIds,
    WebLeaky,
    WebRecording,
    echo_text,
    echoed_ids,
    empty_ids,
    junk_retry_after,
    ollama_ids,
    otherwise_spellings,
    spellings,
    web_hostile_frames,
)

CAP = 65536  # CHATGPT_SERVER_MAX_REPLY_BYTES of the gateway under test
OURS = re.compile(r"chatcmpl-[0-9a-f]{32}")  # a mode-1 reply id the gateway minted
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
BAD_REPLY = "answered with something other than the expected reply"
WEB_PATH = "/backend-api/conversation"


@dataclass
class Evil:
    ollama: ChatIds
    empty: ChatIds
    echo: ChatIds
    web_tiny: WebIds
    web_echo: WebIds
    trap: Trap
    redirector: Redirector
    hostile: ChatHostile
    web_hostile: WebHostile
    endless: Endless
    leaky: ChatLeaky
    web_leaky: WebLeaky
    urls: dict[str, str] = field(default_factory=dict)  # name -> apiBaseUrl / apiReverseProxyUrl

    def host(self, name: str) -> str:
        return self.urls[name].split("/")[2]


@pytest.fixture(scope="module")
def evil(upstreams: Upstreams) -> Evil:
    trap = Trap()
    trap_url = upstreams.apps.serve(trap.app())
    found = Evil(ollama=ChatIds(ollama_ids), empty=ChatIds(empty_ids), echo=ChatIds(echoed_ids),
                 web_tiny=WebIds("tiny"), web_echo=WebIds("echo"), trap=trap, redirector=Redirector(trap_url),
                 hostile=ChatHostile(), web_hostile=WebHostile(), endless=Endless(), leaky=ChatLeaky(),
                 web_leaky=WebLeaky())  # fmt: skip
    found.urls["trap"] = trap_url
    for name in ("ollama", "empty", "echo", "hostile", "leaky"):
        found.urls[name] = upstreams.apps.serve(getattr(found, name).app()) + "/v1"
    for name in ("web_tiny", "web_echo", "web_hostile", "web_leaky"):
        found.urls[name] = upstreams.apps.serve(getattr(found, name).app()) + WEB_PATH
    for name, app in (("redirector", found.redirector.app()), ("endless", found.endless.app())):
        base = upstreams.apps.serve(app)
        found.urls[name], found.urls["web_" + name] = base + "/v1", base + WEB_PATH
    return found


@pytest.fixture(scope="module")
def gateway(upstreams: Upstreams, evil: Evil, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    allowed = ",".join(url for name, url in evil.urls.items() if name != "trap")
    workdir = tmp_path_factory.mktemp("hostile")
    (workdir / "models.toml").write_text(
        f'[[models]]\nname = "hostile-*"\nbase_url = "{evil.urls["hostile"]}"\n'
        f'[[models]]\nname = "leaky-*"\nbase_url = "{evil.urls["leaky"]}"\n'
    )
    env = upstreams.env(CHATGPT_SERVER_ALLOWED_UPSTREAMS=allowed, CHATGPT_SERVER_MAX_REPLY_BYTES=str(CAP),
                        CHATGPT_SERVER_MODELS_FILE=str(workdir / "models.toml"))  # fmt: skip
    proc = ServerProcess(workdir, env).start()
    yield proc
    proc.stop()
    assert not re.search(r"unexpected \w+ on ", proc.log()), "the gateway met an error it did not map (a 500)"


@pytest.fixture(scope="module")
def http(gateway: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def new_key() -> str:
    """A mode-1 key of its own for each test (mixed case, so every spelling differs)."""
    return "sk-evil-" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")


def new_token() -> str:
    return mint(f"hostile-{uuid.uuid4().hex}@example.com")


# -- calling the gateway and reading what it says -----------------------------------------------
@dataclass
class Answer:
    status: int  # HTTP status; for a stream, the status of its final event (200 done, else the error's)
    data: dict[str, Any] | None  # the reply's data (type 1: 201; type 2: the done event)
    message: str  # the error's message, if it failed
    deltas: list[dict[str, Any]]
    response: httpx.Response

    @property
    def text(self) -> str:
        return str(self.data["text"]) if self.data else "".join(d["delta"] for d in self.deltas)

    @property
    def reply_id(self) -> str:
        return str(self.data["id"] if self.data else self.deltas[-1]["id"])


def sse_events(text: str) -> list[tuple[str, Any]]:
    """An independent, minimal event-stream reader: (event, parsed data) pairs; comments skipped."""
    out: list[tuple[str, Any]] = []
    for block in text.split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((name, json.loads("\n".join(data))))
    return out


def call(client: httpx.Client, content: str, url: str, *, key: str, mode: str = "1", kind: str = "1",
         parent: str | None = None, rid: str | None = None, **options: Any) -> Answer:  # fmt: skip
    opts: dict[str, Any] = {"key": key, "content": content, "isFollow": parent is not None}
    if parent:
        opts["parentMessageId"] = parent
    opts["opts"] = {"apiBaseUrl" if mode == "1" else "apiReverseProxyUrl": url, **options}
    if mode == "1":
        opts["opts"].setdefault("systemMessage", "")
    headers = {"X-Request-Id": rid} if rid else None
    response = client.post("/api/v1/gpt/getInfo", json={"mode": mode, "type": kind, "opts": opts}, headers=headers)
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        body = response.json()
        if response.status_code == 201:
            return Answer(201, body["data"], "", [], response)
        assert set(body) == {"status", "success", "message", "data", "timestamp", "path"}, body
        assert body["status"] == response.status_code and body["success"] is False
        return Answer(response.status_code, None, body["message"], [], response)
    assert response.status_code == 200
    got = sse_events(response.text)
    deltas = [d for name, d in got if name == "delta"]
    assert got, "an empty stream"
    name, last = got[-1]
    assert name in ("done", "error"), got[-1]
    assert [n for n, _ in got].count("done") + [n for n, _ in got].count("error") == 1
    if name == "done":
        return Answer(200, last["data"], "", deltas, response)
    assert last["success"] is False and last["data"] == {}
    return Answer(int(last["status"]), None, last["message"], deltas, response)


def seen(upstreams: Upstreams, app: Recording, question: str) -> dict[str, Any]:
    """What reached ``app`` for ``question`` (read on the stand-ins' loop)."""
    found: dict[str, Any] | None = upstreams.apps.call(lambda: app.seen.get(question))
    assert found is not None, f"{question!r} never reached the upstream"
    return found


def given(upstreams: Upstreams, app: WebRecording | Endless, question: str) -> tuple[Any, Any]:
    ids: tuple[Any, Any] = upstreams.apps.call(lambda: app.given[question])
    return ids


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# -- 1. ids are ours ----------------------------------------------------------------------------
def _chat_conversations(gateway: ServerProcess, upstreams: Upstreams, app: ChatIds, url: str, conversations: int,
                        turns: int, detail_id: Callable[[str], bool]) -> list[str]:  # fmt: skip
    """Conversations of ``turns`` replies each, several at once, types 1 and 2 mixed; every reply must
    be a 201/done, every request must carry exactly the turns before it. Returns the reply ids."""
    key = new_key()
    run = uuid.uuid4().hex[:8]

    def conversation(c: int) -> list[str]:
        ids: list[str] = []
        history: list[dict[str, str]] = []
        parent: str | None = None
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for t in range(turns):
                question = f"{run} c{c} t{t} after {parent} and {ids[-2:] if ids else ''}"  # ours, to echo
                got = call(client, question, url, key=key, kind="1" if (c + t) % 2 else "2", parent=parent)
                assert got.status in (200, 201) and got.data is not None, got.message
                assert seen(upstreams, app, question)["body"]["messages"] == [*history, user(question)]
                assert got.text == f"seen({len(history) + 1}): {question}"
                assert OURS.fullmatch(got.data["id"]), got.data["id"]
                assert detail_id(got.data["detail"]["id"]), got.data["detail"]["id"]
                history += [user(question), assistant(got.text)]
                ids.append(got.data["id"])
                parent = got.data["id"]
            # A branch from the second reply carries the first two turns only.
            question = f"{run} c{c} branch"
            got = call(client, question, url, key=key, parent=ids[1])
            assert got.status == 201, got.message
            assert seen(upstreams, app, question)["body"]["messages"] == [*history[:4], user(question)]
        return ids

    with ThreadPoolExecutor(8) as pool:
        every = [i for ids in pool.map(conversation, range(conversations)) for i in ids]
    assert len(set(every)) == len(every) == conversations * turns
    return every


def test_ollama_ids_hundreds_of_replies_no_error_histories_intact(
    gateway: ServerProcess, upstreams: Upstreams, evil: Evil, http: httpx.Client
) -> None:
    tiny = re.compile(r"chatcmpl-[0-6]")
    _chat_conversations(gateway, upstreams, evil.ollama, evil.urls["ollama"], 24, 10, lambda i: bool(tiny.fullmatch(i)))
    # The upstream's ids are labels: none of them names anything here.
    got = call(http, "follow chatcmpl-3", evil.urls["ollama"], key=new_key(), parent="chatcmpl-3")
    assert got.status == 404 and "chatcmpl-3" in got.message


def test_empty_and_missing_ids_change_nothing(gateway: ServerProcess, upstreams: Upstreams, evil: Evil) -> None:
    _chat_conversations(gateway, upstreams, evil.empty, evil.urls["empty"], 6, 5,
                        lambda i: bool(OURS.fullmatch(i)) or i.strip() == "")  # fmt: skip


def test_an_upstream_echoing_our_ids_changes_nothing(gateway: ServerProcess, upstreams: Upstreams,
                                                     evil: Evil) -> None:  # fmt: skip
    # The detail shows the upstream's id, which was one of ours: a label, never a key.
    echoed = re.compile(f"chatcmpl-nothing-to-echo|{OURS.pattern}|{UUID.pattern}")
    _chat_conversations(gateway, upstreams, evil.echo, evil.urls["echo"], 6, 6, lambda i: bool(echoed.fullmatch(i)))


def _web_conversations(gateway: ServerProcess, upstreams: Upstreams, app: WebIds, url: str, conversations: int,
                       turns: int) -> list[str]:  # fmt: skip
    """Mode-2 conversations (one account each, several at once): each follow-up must name the
    conversation and message ids the upstream gave for the reply it follows."""
    run = uuid.uuid4().hex[:8]

    def conversation(c: int) -> list[str]:
        token = new_token()
        ids: list[str] = []
        questions: list[str] = []
        parent: str | None = None
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for t in range(turns):
                question = f"{run} c{c} t{t}"
                got = call(client, question, url, key=token, mode="2", kind="1" if (c + t) % 2 else "2",
                           parent=parent)  # fmt: skip
                assert got.status in (200, 201) and got.data is not None, got.message
                assert got.text == f"web: {question}"
                assert UUID.fullmatch(got.data["id"]) and got.data["id"] != got.data["parentMessageId"]
                body = seen(upstreams, app, question)["body"]
                assert got.data["conversationId"] == given(upstreams, app, question)[0]
                if questions:
                    conversation_id, message_id = given(upstreams, app, questions[-1])
                    assert (body["conversation_id"], body["parent_message_id"]) == (conversation_id, message_id)
                else:
                    assert "conversation_id" not in body
                questions.append(question)
                ids.append(got.data["id"])
                parent = got.data["id"]
            question = f"{run} c{c} branch"  # back to the first reply
            assert call(client, question, url, key=token, mode="2", parent=ids[0]).status == 201
            body = seen(upstreams, app, question)["body"]
            assert (body["conversation_id"], body["parent_message_id"]) == given(upstreams, app, questions[0])
        return ids

    with ThreadPoolExecutor(8) as pool:
        every = [i for ids in pool.map(conversation, range(conversations)) for i in ids]
    assert len(set(every)) == len(every) == conversations * turns
    return every


def test_web_ids_from_a_tiny_range_change_nothing(gateway: ServerProcess, upstreams: Upstreams, evil: Evil) -> None:
    _web_conversations(gateway, upstreams, evil.web_tiny, evil.urls["web_tiny"], 12, 6)


def test_web_backend_echoing_the_user_message_id_changes_nothing(gateway: ServerProcess, upstreams: Upstreams,
                                                                 evil: Evil) -> None:  # fmt: skip
    _web_conversations(gateway, upstreams, evil.web_echo, evil.urls["web_echo"], 6, 6)


# -- 2. redirects -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["1", "2"])
def test_a_304_is_an_upstream_error_not_a_redirect(http: httpx.Client, evil: Evil, kind: str) -> None:
    """304 Not Modified redirects nowhere (and no request of ours asks for it): an answer in error."""
    got = call(http, f"304 {uuid.uuid4().hex}", evil.urls["redirector"], key=new_key(), kind=kind)
    assert got.status == 502 and "304" in got.message and "redirect" not in got.message, got.message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(("mode", "kind"), [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")])
def test_a_redirect_is_a_502_naming_only_the_upstream(http: httpx.Client, upstreams: Upstreams, evil: Evil,
                                                      status: int, mode: str, kind: str) -> None:  # fmt: skip
    url = evil.urls["redirector" if mode == "1" else "web_redirector"]
    key = new_key() if mode == "1" else new_token()
    question = f"{status} {uuid.uuid4().hex}"
    extra: dict[str, Any] = {"headers": {"X-Extra": "kept-secret"}} if mode == "2" else {}
    got = call(http, question, url, key=key, mode=mode, kind=kind, **extra)
    assert got.status == 502
    assert got.message == f"{evil.host('redirector')} answered with a redirect, which is never followed"
    seen(upstreams, evil.redirector, question)  # the request did reach the allowed upstream...
    assert upstreams.apps.call(lambda: list(evil.trap.hits)) == []  # ...and nothing went further
    trap_host = evil.urls["trap"].split("/")[2]
    everything = got.response.text + str(got.response.headers)
    assert trap_host not in everything and "trap-secret" not in everything and "TRAPPED" not in everything


def test_no_sign_in_step_follows_a_redirect(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams,
                                            evil: Evil) -> None:  # fmt: skip
    """Device sign-in, its polls and the legacy email/password flow, against an issuer and identity
    service that redirect everything elsewhere: a 502 naming the host, and nothing reaches the target."""
    redirector = AnyRedirector(evil.urls["trap"])
    base = upstreams.apps.serve(redirector.app())
    env = upstreams.codex_env(CHATGPT_SERVER_CHATGPT_AUTH_ISSUER=base, CHATGPT_SERVER_AUTH_URL=base,
                              CHATGPT_SERVER_CHATGPT_WEB_URL=base)  # fmt: skip
    server = ServerProcess(tmp_path_factory.mktemp("signin-redirect"), env).start()
    host = base.split("/")[2]
    trap_host = evil.urls["trap"].split("/")[2]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            answers = [
                c.post("/api/v1/token/device", json={}),
                c.post("/api/v1/token/getInfo", json={"email": "a@example.com", "password": "pw-secret", "type": "1"}),
            ]
        for answer in answers:
            assert answer.status_code == 502, answer.text
            assert answer.json()["message"].startswith(host), answer.text
            assert trap_host not in answer.text and "trap-secret" not in answer.text
        assert redirector.paths  # the calls did reach the allowed host...
        assert upstreams.apps.call(lambda: list(evil.trap.hits)) == []  # ...and went no further
    finally:
        server.stop()


# -- 4. hostile shapes --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(WHOLE_REPLIES))
def test_hostile_whole_reply_is_502(http: httpx.Client, evil: Evil, name: str) -> None:
    got = call(http, f"{name} {uuid.uuid4().hex}", evil.urls["hostile"], key=new_key())
    assert got.status == 502, got.response.text
    assert got.message.startswith(f"{evil.host('hostile')} {BAD_REPLY}: "), got.message
    assert len(got.response.content) < 2048


@pytest.mark.parametrize("name", sorted(ODD_REPLIES))
def test_odd_but_readable_whole_reply_is_ours(http: httpx.Client, evil: Evil, name: str) -> None:
    got = call(http, f"{name} {uuid.uuid4().hex}", evil.urls["hostile"], key=new_key())
    assert got.status == 201 and got.data is not None, got.message
    assert got.text == "hi" and OURS.fullmatch(got.data["id"])
    detail = got.data["detail"]
    assert detail["id"] in (got.data["id"], "chatcmpl-1") and TEN_KB not in got.response.text
    assert isinstance(detail["created"], int) and not isinstance(detail["created"], bool)
    assert detail["choices"][0]["finish_reason"] in ("stop", None)


def _follow_up_carries(http: httpx.Client, upstreams: Upstreams, app: Recording, url: str, key: str, parent: str,
                       earlier: list[dict[str, str]]) -> None:  # fmt: skip
    """A follow-up of ``parent`` sends ``earlier`` as its history (a budget that fits a whole capped reply)."""
    question = f"good {uuid.uuid4().hex}"
    got = call(http, question, url, key=key, parent=parent, maxModelTokens=200_000, maxResponseTokens=1000)
    assert got.status == 201, got.message
    assert seen(upstreams, app, question)["body"]["messages"] == [*earlier, user(question)]


@pytest.mark.parametrize("name", [*sorted(STREAM_FRAMES), "quiet"])
def test_hostile_stream_frame_is_an_error_event_and_the_text_is_kept(http: httpx.Client, upstreams: Upstreams,
                                                                     evil: Evil, name: str) -> None:  # fmt: skip
    key = new_key()
    question = f"{name} {uuid.uuid4().hex}"
    got = call(http, question, evil.urls["hostile"], key=key, kind="2")
    assert got.status == 502, got.response.text
    assert got.message.startswith(f"{evil.host('hostile')} {BAD_REPLY}: "), got.message
    assert [d["delta"] for d in got.deltas] == ["Hello", " there"]
    # What had arrived is stored (as incomplete) and is the history of a follow-up.
    _follow_up_carries(http, upstreams, evil.hostile, evil.urls["hostile"], key, got.deltas[-1]["id"],
                       [user(question), assistant("Hello there")])  # fmt: skip


def test_a_tool_call_cut_mid_way_is_never_sent_again(gateway: ServerProcess, evil: Evil) -> None:
    """A stream cut inside its second tool call's arguments fails, and what arrived is kept: the first
    call, which had ended, as completed; the cut one as incomplete, and it stays out of every later
    prompt (no output will ever answer it, its arguments end mid-way, and upstreams refuse an
    unanswered call). An output for it is refused by name; the first call can be answered."""
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        conversation = sdk.conversations.create()
        events = list(sdk.responses.create(model="hostile-1", conversation=conversation.id, tools=tools, stream=True,
                                           input="cutcall " + uuid.uuid4().hex))  # fmt: skip
        assert events[-1].type == "response.failed"
        told = [(o["type"], o["status"]) for o in events[-1].response.model_dump()["output"]]
        assert told == [("message", "incomplete"), ("function_call", "completed"), ("function_call", "incomplete")]
        stored = sdk.responses.retrieve(events[-1].response.id).model_dump()
        assert [(o["type"], o["status"]) for o in stored["output"]] == told
        whole, cut = stored["output"][1:]
        assert cut["arguments"] == '{"city": "Pa' and whole["arguments"] == '{"city": "Rome"}'
        before = evil.hostile.count
        answer_cut: Any = [{"type": "function_call_output", "call_id": cut["call_id"], "output": "sunny"}]
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="hostile-1", conversation=conversation.id, tools=tools, input=answer_cut)
        assert cut["call_id"] in refused.value.message and evil.hostile.count == before
        question = "good " + uuid.uuid4().hex
        answer: Any = [{"type": "function_call_output", "call_id": whole["call_id"], "output": "sunny"},
                       {"role": "user", "content": question}]  # fmt: skip
        sdk.responses.create(model="hostile-1", conversation=conversation.id, tools=tools, input=answer)
    sent = evil.hostile.seen[question]["body"]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["content"] == "Hello"
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == ['{"city": "Rome"}']
    assert [m["content"] for m in sent if m["role"] == "tool"] == ["sunny"]


def test_a_reply_the_upstream_filtered_is_incomplete_for_content_filter(gateway: ServerProcess, http: httpx.Client,
                                                                       evil: Evil) -> None:  # fmt: skip
    """``finish_reason: content_filter`` is the upstream withholding the rest: the response is
    ``incomplete`` for ``content_filter``, as OpenAI says it, and the original route says so too."""
    key = new_key()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        events = list(sdk.responses.create(model="hostile-1", input="filtered " + uuid.uuid4().hex, stream=True))
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
        assert response.status == "incomplete" and response.incomplete_details is not None
        assert response.incomplete_details.reason == "content_filter" and response.output_text == "Hello there"
        assert sdk.responses.retrieve(response.id).incomplete_details.reason == "content_filter"  # type: ignore[union-attr]
    got = call(http, "filtered " + uuid.uuid4().hex, evil.urls["hostile"], key=key, kind="2")
    assert got.data is not None and got.data["incompleteReason"] == "content_filter"


@pytest.mark.parametrize("kind", ["1", "2"])
def test_a_whole_json_answer_is_read_as_one_even_to_a_stream_request(http: httpx.Client, evil: Evil, kind: str) -> None:
    """Some servers answer a stream request with a whole completion: it is the reply (one delta), and an
    error object sent with a success status is a 502 that says the upstream's words (key masked)."""
    key = new_key()
    whole = call(http, "wholejson " + uuid.uuid4().hex, evil.urls["hostile"], key=key, kind=kind)
    assert whole.status in (200, 201) and whole.text == "Hello there", whole.message
    failed = call(http, "jsonerror " + uuid.uuid4().hex, evil.urls["hostile"], key=key, kind=kind)
    assert failed.status == 502 and "reported an error: overloaded for ***" in failed.message, failed.message
    assert key not in failed.response.text


def test_the_pass_through_streams_a_whole_json_answer_as_chunks(gateway: ServerProcess) -> None:
    """A server that answers a stream request with a whole completion: the client asked for a stream and
    gets one (the message, then [DONE]); an error object in a success status comes as the error, in the
    upstream's words with the key masked."""
    key = new_key()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": "wholejson " + uuid.uuid4().hex}]
        chunks = list(sdk.chat.completions.create(model="hostile-1", messages=messages, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
        assert chunks[-1].choices[0].finish_reason == "stop"
        messages = [{"role": "user", "content": "jsonerror " + uuid.uuid4().hex}]
        with pytest.raises(openai.APIStatusError) as failed:  # before the stream began: a plain error
            list(sdk.chat.completions.create(model="hostile-1", messages=messages, stream=True))
        assert failed.value.status_code == 502
        assert "overloaded for ***" in failed.value.message and key not in failed.value.message
        messages = [{"role": "user", "content": "badjson " + uuid.uuid4().hex}]
        with pytest.raises(openai.APIStatusError) as failed:  # as the other doors answer it
            list(sdk.chat.completions.create(model="hostile-1", messages=messages, stream=True))
        assert failed.value.status_code == 502 and "choices" in failed.value.message


def test_the_pass_through_ends_as_openai_does_whatever_the_upstream_wrote(gateway: ServerProcess) -> None:
    """A usage chunk the client did not ask for is not passed on even when its counts are not integers
    (code reading ``choices[0]`` would fail on it), and a padded ``[DONE]`` goes on as ``data: [DONE]``."""
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": "oddend " + uuid.uuid4().hex}]
        raw = sdk.chat.completions.with_raw_response.create(model="hostile-1", messages=messages, stream=True)
        body = raw.http_response.read().decode()
        chunks = list(sdk.chat.completions.create(model="hostile-1", messages=messages, stream=True))
    assert body.endswith("data: [DONE]\n\n") and '"choices":[]' not in body
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there"


@pytest.mark.parametrize("upstream", ["gemini", "ollama"])
def test_parallel_tool_calls_without_an_index_stay_two_calls(gateway: ServerProcess, evil: Evil, upstream: str) -> None:
    """Gemini's OpenAI layer streams parallel calls without ``index``, Ollama's numbers each 0: the client
    is told two calls, and the follow-up with both outputs sends the upstream both calls, each with its
    own arguments."""
    tools: Any = [
        {"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("get_weather", "get_time")
    ]
    city = {"gemini": "Paris", "ollama": "Lima"}[upstream]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        with sdk.responses.stream(model="hostile-1", input=f"{upstream} {uuid.uuid4().hex}", tools=tools) as stream:
            response = stream.get_final_response()
        calls = [o for o in response.output if o.type == "function_call"]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": city}),
                                                                      ("get_time", {})]  # fmt: skip
        question = "good " + uuid.uuid4().hex
        outputs: Any = [{"type": "function_call_output", "call_id": c.call_id, "output": c.name} for c in calls]
        sdk.responses.create(model="hostile-1", previous_response_id=response.id,
                             input=[*outputs, {"role": "user", "content": question}], tools=tools)  # fmt: skip
    sent = evil.hostile.seen[question]["body"]["messages"]
    asked = next(m for m in sent if m.get("tool_calls"))
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in asked["tool_calls"]] == [
        ("get_weather", f'{{"city": "{city}"}}'), ("get_time", "{}")]  # fmt: skip
    assert [m["content"] for m in sent if m["role"] == "tool"] == ["get_weather", "get_time"]


def told_one_at_a_time(events: list[Any]) -> tuple[dict[int, Any], dict[int, str]]:
    """Each item of a Responses stream added, its deltas, then done, before the next is added; the items
    as their done events told them, and the text of each item's deltas."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    open_item: int | None = None
    told: dict[int, Any] = {}
    texts: dict[int, str] = {}
    for e in events[2:-1]:
        index = e.output_index
        if e.type == "response.output_item.added":
            assert open_item is None, f"item {index} added while {open_item} is open"
            open_item = index
        else:
            assert index == open_item, f"{e.type} for item {index} while {open_item} is open"
        if e.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
            texts[index] = texts.get(index, "") + e.delta
        if e.type == "response.output_item.done":
            told[index] = e.item
            open_item = None
    assert open_item is None, f"item {open_item} was never done"
    return told, texts


def test_a_responses_stream_tells_one_item_at_a_time_even_when_the_upstream_interleaves(
    gateway: ServerProcess, evil: Evil
) -> None:
    """OpenAI streams each output item whole (added, its deltas, done) before the next is added, and
    clients keep one open item: text, then two calls whose argument pieces an upstream interleaves, are
    told in that grammar, the first item as it comes, and each told item is the final one; so is a
    stream that fails after its first call, and a reply of no words."""
    tools: Any = [
        {"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("get_weather", "get_time")
    ]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        events: list[Any] = list(sdk.responses.create(model="hostile-1", input="interleaved " + uuid.uuid4().hex,
                                                      tools=tools, stream=True))  # fmt: skip
        cut: list[Any] = list(sdk.responses.create(model="hostile-1", input="cutcall " + uuid.uuid4().hex,
                                                   tools=tools, stream=True))  # fmt: skip
        quiet: list[Any] = list(sdk.responses.create(model="hostile-1", input="nothing " + uuid.uuid4().hex,
                                                     stream=True))  # fmt: skip
    final = events[-1].response
    assert events[-1].type == "response.completed"
    assert [(o.type, getattr(o, "arguments", None)) for o in final.output] == [
        ("message", None), ("function_call", '{"city": "Oslo"}'), ("function_call", '{"zone": "UTC"}')]  # fmt: skip
    told, texts = told_one_at_a_time(events)
    assert sorted(told) == [0, 1, 2] and texts == {0: "Hello", 1: '{"city": "Oslo"}', 2: '{"zone": "UTC"}'}
    assert [told[i].model_dump() for i in range(3)] == [o.model_dump() for o in final.output]
    assert cut[-1].type == "response.failed"
    told, _ = told_one_at_a_time(cut)
    assert [told[i].model_dump() for i in sorted(told)] == [o.model_dump() for o in cut[-1].response.output]
    assert [o.status for o in cut[-1].response.output] == ["incomplete", "completed", "incomplete"]
    told, _ = told_one_at_a_time(quiet)  # a reply of no words: its message is told too, as the final one holds it
    assert [told[i].id for i in sorted(told)] == [o.id for o in quiet[-1].response.output] and len(told) == 1


def test_events_spread_over_several_data_lines_are_read_and_passed_on_whole(
    gateway: ServerProcess, http: httpx.Client, evil: Evil
) -> None:
    """SSE lets one event's data span several ``data:`` lines: the original route reads them, and the
    Chat Completions pass-through sends each on as valid SSE (the SDK parses every chunk)."""
    got = call(http, f"spread {uuid.uuid4().hex}", evil.urls["hostile"], key=new_key(), kind="2")
    assert got.status == 200 and "".join(d["delta"] for d in got.deltas) == "Hello there!", got.response.text
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model="hostile-1", stream=True, stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": "spread it"}])  # fmt: skip
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8


WEB_FRAMES = sorted(web_hostile_frames("c", "m"))


@pytest.mark.parametrize("name", [*WEB_FRAMES, "ten_kb_message_id"])
def test_hostile_web_frame_type1_is_502(http: httpx.Client, evil: Evil, name: str) -> None:
    got = call(http, f"{name} {uuid.uuid4().hex}", evil.urls["web_hostile"], key=new_token(), mode="2")
    assert got.status == 502, got.response.text
    assert got.message.startswith(f"{evil.host('web_hostile')} {BAD_REPLY}: "), got.message


@pytest.mark.parametrize("name", ["first-parts_object", "first-patch_not_objects", "first-pointer_integer",
                                  "first-conversation_number", "first-error_frame", "first-not_json"])  # fmt: skip
@pytest.mark.parametrize("kind", ["1", "2"])
def test_hostile_web_frame_before_any_text_is_502(http: httpx.Client, evil: Evil, name: str, kind: str) -> None:
    got = call(http, f"{name} {uuid.uuid4().hex}", evil.urls["web_hostile"], key=new_token(), mode="2", kind=kind)
    assert got.status == 502 and got.deltas == [], got.response.text
    assert got.message.startswith(f"{evil.host('web_hostile')} {BAD_REPLY}: "), got.message


@pytest.mark.parametrize("name", [*WEB_FRAMES, "ten_kb_message_id"])
def test_hostile_web_frame_type2_is_an_error_event_and_the_text_is_kept(http: httpx.Client, upstreams: Upstreams,
                                                                        evil: Evil, name: str) -> None:  # fmt: skip
    token = new_token()
    url = evil.urls["web_hostile"]
    question = f"{name} {uuid.uuid4().hex}"
    got = call(http, question, url, key=token, mode="2", kind="2")
    assert got.status == 502, got.response.text
    assert got.message.startswith(f"{evil.host('web_hostile')} {BAD_REPLY}: "), got.message
    assert "".join(d["delta"] for d in got.deltas) == "Hello there"
    follow = f"good {uuid.uuid4().hex}"
    again = call(http, follow, url, key=token, mode="2", parent=got.deltas[-1]["id"])
    if name == "ten_kb_message_id":  # no backend id was kept for it: it cannot be continued, and says so
        assert again.status == 400 and "gave no ids for it" in again.message, again.message
        return
    assert again.status == 201, again.message  # the partial reply was stored...
    body = seen(upstreams, evil.web_hostile, follow)["body"]
    # ...with the backend's ids, which the follow-up names
    assert (body["conversation_id"], body["parent_message_id"]) == given(upstreams, evil.web_hostile, question)


# -- 4. the size cap ----------------------------------------------------------------------------
def _disconnected(upstreams: Upstreams, app: Endless, before: int) -> bool:
    return within(5, lambda: upstreams.apps.call(lambda: app.disconnects) > before)


@pytest.mark.parametrize("form", ["stream", "body", "declared"])
def test_oversized_whole_reply_is_502_and_the_upstream_let_go(http: httpx.Client, upstreams: Upstreams, evil: Evil,
                                                              form: str) -> None:  # fmt: skip
    before = upstreams.apps.call(lambda: evil.endless.disconnects)
    got = call(http, f"{form} {uuid.uuid4().hex}", evil.urls["endless"], key=new_key())
    assert got.status == 502, got.response.text
    limit = f"{CAP} bytes (CHATGPT_SERVER_MAX_REPLY_BYTES)"
    assert got.message == f"{evil.host('endless')} sent a reply larger than {limit}"
    if form != "declared":
        assert _disconnected(upstreams, evil.endless, before)


@pytest.mark.parametrize("form", ["stream", "line"])
def test_oversized_stream_is_cut_stored_incomplete_and_told(http: httpx.Client, upstreams: Upstreams, evil: Evil,
                                                            form: str) -> None:  # fmt: skip
    key = new_key()
    before = upstreams.apps.call(lambda: evil.endless.disconnects)
    question = f"{form} {uuid.uuid4().hex}"
    got = call(http, question, evil.urls["endless"], key=key, kind="2")
    assert got.status == 200 and got.data is not None, got.message
    assert got.data["incomplete"] is True and got.data["incompleteReason"] == "max_reply_bytes"
    assert len(got.data["text"]) <= CAP and got.text == "".join(d["delta"] for d in got.deltas)
    # Cut at the cap, not before: all the text that came within it stands (framing takes < 10%).
    assert (len(got.text) > CAP * 0.85) == (form == "stream"), len(got.text)
    assert _disconnected(upstreams, evil.endless, before)
    if form == "stream":
        _follow_up_carries(http, upstreams, evil.endless, evil.urls["endless"], key, got.data["id"],
                           [user(question), assistant(got.text)])  # fmt: skip


@pytest.mark.parametrize("form", ["stream", "line"])
@pytest.mark.parametrize("kind", ["1", "2"])
def test_oversized_web_stream_is_cut_stored_incomplete_and_told(http: httpx.Client, upstreams: Upstreams, evil: Evil,
                                                                form: str, kind: str) -> None:  # fmt: skip
    token = new_token()
    url = evil.urls["web_endless"]
    before = upstreams.apps.call(lambda: evil.endless.disconnects)
    question = f"{form} {uuid.uuid4().hex}"
    got = call(http, question, url, key=token, mode="2", kind=kind)
    assert got.status in (200, 201) and got.data is not None, got.message
    assert got.data["incomplete"] is True and got.data["incompleteReason"] == "max_reply_bytes"
    assert len(got.data["text"]) <= CAP and (len(got.text) > CAP * 0.85) == (form == "stream"), len(got.text)
    assert _disconnected(upstreams, evil.endless, before)
    if form == "stream":
        follow = f"good {uuid.uuid4().hex}"
        again = call(http, follow, evil.urls["web_hostile"], key=token, mode="2", parent=got.data["id"])
        assert again.status == 201, again.message
        body = seen(upstreams, evil.web_hostile, follow)["body"]
        assert (body["conversation_id"], body["parent_message_id"]) == given(upstreams, evil.endless, question)


# -- 3. nothing secret comes back ---------------------------------------------------------------
def _allowed_retry_after(value: str) -> bool:
    if value.isascii() and value.isdigit():
        return True
    return value.isascii() and email.utils.parsedate_to_datetime(value) is not None


def assert_nothing_secret(answer: Answer, secret: str) -> None:
    """No spelling of ``secret`` (any case, whole or its last 8 characters), no other credential-shaped
    text, in the body or any header; a Retry-After only as seconds or an HTTP date."""
    response = answer.response
    everything = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    everything = (everything + "\n" + html.unescape(everything)).lower()  # as a browser showing it would read it
    for form in (secret[-8:], quote(secret, safe=""), *runs_of(secret)):
        assert form.lower() not in everything, f"{form!r} came back: {response.text[:500]}"
    for other in OTHER_SECRETS:
        assert other.split()[-1].split("=")[-1][-12:].lower() not in everything, other
    retry = response.headers.get("retry-after")
    assert retry is None or _allowed_retry_after(retry), retry


def assert_not_logged(gateway: ServerProcess, rid: str, secret: str) -> None:
    assert within(5, lambda: rid in gateway.log()), "the request's access log line never came"
    log = gateway.log()
    log = (log + html.unescape(log)).lower()
    for form in (secret[-8:], *runs_of(secret)):
        assert form.lower() not in log, f"{form!r} is in the server log"


def runs_of(secret: str) -> list[str]:
    """Every run of 12 characters of ``secret``: none may be shown, whatever an echo cut off."""
    return [secret[i : i + 12] for i in range(len(secret) - 11)]


LEAKY_CHAT = ["400", "401", "403", "404", "409", "422", "500", "502", "503", "text 400", "text 500", "html 403",
              "html 502", "entities 502", "entities 400", "whole", "code 401", "code 400", "code 403", "code 429",
              "code 500"]  # fmt: skip
RETRY_NAMES = sorted(junk_retry_after("k"))


@pytest.mark.parametrize("kind", ["1", "2"])
def test_a_reply_whose_id_and_model_are_the_key_shows_neither(gateway: ServerProcess, http: httpx.Client,
                                                              evil: Evil, kind: str) -> None:  # fmt: skip
    key = new_key()
    got = call(http, f"labels {uuid.uuid4().hex}", evil.urls["leaky"], key=key, kind=kind)
    assert got.status in (200, 201) and got.text == "Hello there", got.response.text
    assert_nothing_secret(got, key)
    # The Chat Completions pass-through passes the reply on as written, but for the caller's key.
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": "labels"}]
        raw = sdk.chat.completions.with_raw_response.create(model="leaky-1", messages=messages, stream=kind == "2")
        body = raw.http_response.read().decode()
    assert "Hello" in body and not [run for run in (key[-8:], *runs_of(key)) if run.lower() in body.lower()], body


@pytest.mark.parametrize("stream", [False, True])
def test_the_pass_through_masks_a_key_spelled_in_json_escapes(gateway: ServerProcess, stream: bool) -> None:
    key = new_key()
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": "escaped"}]
        if stream:
            chunks = list(sdk.chat.completions.create(model="leaky-1", messages=messages, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = sdk.chat.completions.create(model="leaky-1", messages=messages).choices[0].message.content or ""
    assert text.startswith("E:") and key not in text and key[-8:] not in text


def test_the_pass_through_keeps_escapes_that_hide_no_key_as_written(gateway: ServerProcess) -> None:
    """Escapes are decoded to look for the key; written again only when they hid it (a rewrite changes
    what JSON readers read differently: a number past 64 bits, a duplicate key)."""
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": "goescapes"}]
        body = sdk.chat.completions.with_raw_response.create(model="leaky-1", messages=messages).http_response.read()
    assert b'"a \\u003cb\\u003e"' in body and b'"x_big": 12345678901234567890123' in body, body


@pytest.mark.parametrize("key", ["EMPTY", "ollama", "x", "none", "sk-no-key"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_placeholder_key_masks_no_word_of_the_reply(gateway: ServerProcess, key: str, stream: bool) -> None:
    """Servers that check no key are sent a placeholder ("EMPTY" for vLLM, "ollama"): it is not a
    secret, and the words it spells stay in the reply, on every door."""
    question = "good The list is EMPTY, empty means nothing; x marks ollama running, none left, sk-no-key"
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": question}]
        if stream:
            chunks = list(sdk.chat.completions.create(model="hostile-1", messages=messages, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = sdk.chat.completions.create(model="hostile-1", messages=messages).choices[0].message.content or ""
        answered = sdk.responses.create(model="hostile-1", input=question, stream=False).output_text
    assert text.endswith(question) and "***" not in text
    assert answered.endswith(question) and "***" not in answered


def test_an_error_answer_past_64_kb_keeps_its_status_and_retry_after(http: httpx.Client, gateway: ServerProcess,
                                                                      evil: Evil) -> None:  # fmt: skip
    """A long error page is still that error: a 429 is a 429 (with its Retry-After), a 401 a 401, never
    a 502 blaming the reply size."""
    key = new_key()
    for kind in ("1", "2"):
        limited = call(http, "big 429", evil.urls["leaky"], key=key, kind=kind)
        assert limited.status == 429 and "larger than" not in limited.message, limited.message
        if kind == "1":
            assert limited.response.headers["Retry-After"] == "7"
        refused = call(http, "bightml 401", evil.urls["leaky"], key=key, kind=kind)
        assert refused.status == 401, refused.message
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.responses.create(model="leaky-1", input="big 429")
        assert raised.value.response.headers["Retry-After"] == "7"
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="leaky-1", messages=[{"role": "user", "content": "bightml 401"}])
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="leaky-1", messages=[{"role": "user", "content": "big 429"}], stream=True)


def test_a_key_echoed_url_encoded_never_comes_back(gateway: ServerProcess, http: httpx.Client, evil: Evil) -> None:
    key = "evil" + secrets.token_hex(12) + "/x+y=="  # not key-shaped, with characters a URL would encode
    rid = uuid.uuid4().hex
    got = call(http, f"400 {uuid.uuid4().hex}", evil.urls["leaky"], key=key, rid=rid)
    assert got.status == 400 and "in a URL" in got.message, got.message
    assert_nothing_secret(got, key)
    assert_not_logged(gateway, rid, key)
    assert quote(key, safe="").lower() not in gateway.log().lower()


@pytest.mark.parametrize("question", LEAKY_CHAT + [f"429 {name}" for name in RETRY_NAMES] + ["503 bearer"])
@pytest.mark.parametrize("kind", ["1", "2"])
def test_an_echoed_key_never_comes_back(gateway: ServerProcess, http: httpx.Client, evil: Evil, question: str,
                                        kind: str) -> None:  # fmt: skip
    key = new_key()
    rid = uuid.uuid4().hex
    got = call(http, f"{question} {uuid.uuid4().hex}", evil.urls["leaky"], key=key, kind=kind, rid=rid)
    assert got.status >= 400, got.response.text
    assert_nothing_secret(got, key)
    retry = got.response.headers.get("retry-after")
    name = question.split()[-1]
    expected = {"digits": "120", "date": "Wed, 21 Oct 2037 07:28:00 GMT", "spaced": "30"}.get(name)
    if question.startswith("429 "):
        assert retry == expected, (question, retry)
    assert_not_logged(gateway, rid, key)


@pytest.mark.parametrize("question", ["401", "code 401", "500", "text 500", "html 502"])
@pytest.mark.parametrize("kind", ["1", "2"])
def test_a_short_key_echoed_in_an_error_never_comes_back(gateway: ServerProcess, http: httpx.Client, evil: Evil,
                                                         question: str, kind: str) -> None:  # fmt: skip
    """A self-hosted server's operator may choose a key of a few characters: in error text and logs it
    is masked as a long one is (only replies passed on keep placeholder words)."""
    key = "pw-" + secrets.token_hex(4)[:5] + "Q"  # 9 characters, mixed case
    rid = uuid.uuid4().hex
    got = call(http, f"{question} {uuid.uuid4().hex}", evil.urls["leaky"], key=key, kind=kind, rid=rid)
    assert got.status >= 400, got.response.text
    assert key.lower() not in got.response.text.lower(), got.response.text
    assert "***" in got.message, got.message  # the echo was there, and masked
    assert within(5, lambda: rid in gateway.log()), "the request's access log line never came"
    assert key.lower() not in gateway.log().lower()


def test_an_error_chunk_echoing_the_key_never_comes_back(gateway: ServerProcess, http: httpx.Client,
                                                         evil: Evil) -> None:  # fmt: skip
    key = new_key()
    rid = uuid.uuid4().hex
    got = call(http, f"stream {uuid.uuid4().hex}", evil.urls["leaky"], key=key, kind="2", rid=rid)
    assert got.status == 502 and [d["delta"] for d in got.deltas] == ["Hello"]
    assert_nothing_secret(got, key)
    assert_not_logged(gateway, rid, key)


LEAKY_WEB = ["400", "401", "403", "403 obj", "404", "409", "500", "502", "503", "frame", "typed", "message", "429 obj"]


@pytest.mark.parametrize("question", LEAKY_WEB + [f"429 {name}" for name in RETRY_NAMES])
@pytest.mark.parametrize("kind", ["1", "2"])
def test_an_echoed_access_token_never_comes_back(gateway: ServerProcess, http: httpx.Client, evil: Evil,
                                                 question: str, kind: str) -> None:  # fmt: skip
    token = new_token()
    rid = uuid.uuid4().hex
    got = call(http, f"{question} {uuid.uuid4().hex}", evil.urls["web_leaky"], key=token, mode="2", kind=kind,
               rid=rid)  # fmt: skip
    assert got.status >= 400, got.response.text
    assert_nothing_secret(got, token)
    name = question.split()[1] if len(question.split()) > 1 else ""
    expected = {"digits": "120", "date": "Wed, 21 Oct 2037 07:28:00 GMT", "spaced": "30"}.get(name)
    if question.startswith("429 "):
        assert got.response.headers.get("retry-after") == expected, question
    assert_not_logged(gateway, rid, token)


@pytest.mark.parametrize("status", ["400", "500"])
@pytest.mark.parametrize("kind", ["1", "2"])
def test_a_key_echoed_spelled_otherwise_never_comes_back(gateway: ServerProcess, http: httpx.Client, evil: Evil,
                                                         status: str, kind: str) -> None:  # fmt: skip
    """Backwards, with spaces, dashes or zero-width characters between its own, in full-width forms: no run
    of the key is there to cut out, so the upstream's words are left out whole."""
    key = new_key()
    rid = uuid.uuid4().hex
    got = call(http, f"otherwise {status} {uuid.uuid4().hex}", evil.urls["leaky"], key=key, kind=kind, rid=rid)
    assert got.status >= 400 and "spelled the credential otherwise" in got.message, got.response.text
    assert within(5, lambda: rid in gateway.log())
    for shown in (got.response.text, gateway.log()):
        assert not [form for form in otherwise_spellings(key) if form in shown]


def test_the_stand_in_echoes_every_spelling() -> None:
    """The leaky stand-ins do echo what these tests say they do (a test of the test)."""
    key = new_key()
    for form in spellings(key):
        assert form in echo_text(key)


@contextlib.contextmanager
def _whole_on_the_stored_doors(gateway: ServerProcess, http: httpx.Client, upstreams: Upstreams, evil: Evil,
                               name: str) -> Iterator[openai.OpenAI]:  # fmt: skip
    """The hostile upstream's ``name`` reply is "Hello there", whole, through the original route's stream
    (and stored so: a follow-up carries it) and /v1/responses' stream; the SDK client is the caller's
    for the pass-through's own checks (Chat Completions passes the chunks on as they came)."""
    key = new_key()
    question = f"{name} {uuid.uuid4().hex}"
    got = call(http, question, evil.urls["hostile"], key=key, kind="2")
    assert got.status == 200 and got.text == "Hello there", got.response.text
    assert got.data is not None and "incomplete" not in got.data
    _follow_up_carries(http, upstreams, evil.hostile, evil.urls["hostile"], key, got.reply_id,
                       [user(question), assistant("Hello there")])  # fmt: skip
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=new_key(), max_retries=0) as sdk:
        yield sdk
        response = sdk.responses.create(model="hostile-1", input=f"{name} via responses", stream=True)
        final = [e for e in response if e.type in ("response.completed", "response.failed")][-1]
        assert final.type == "response.completed" and final.response.output_text == "Hello there"


def test_nothing_after_done_is_part_of_the_reply(gateway: ServerProcess, http: httpx.Client, upstreams: Upstreams,
                                                 evil: Evil) -> None:  # fmt: skip
    """An upstream that goes on after [DONE] (in the same write): the reply is what came before it,
    complete, through every door."""
    with _whole_on_the_stored_doors(gateway, http, upstreams, evil, "afterdone") as sdk:
        chunks = list(sdk.chat.completions.create(model="hostile-1", stream=True,
                                                  messages=[{"role": "user", "content": "afterdone"}]))  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"


@pytest.mark.parametrize("name", ["nodone", "donebare", "parts"])
def test_a_finished_stream_in_a_providers_own_spelling_is_whole(
    gateway: ServerProcess, http: httpx.Client, upstreams: Upstreams, evil: Evil, name: str
) -> None:
    """Whole replies as real providers write them, through every door: no [DONE] after the finish reason
    (llama.cpp before late 2024), [DONE] as the body's last bytes, content as a list of parts (thinking
    parts left out, as reasoning_content is)."""
    with _whole_on_the_stored_doors(gateway, http, upstreams, evil, name) as sdk:
        chunks = list(sdk.chat.completions.create(model="hostile-1", stream=True,
                                                  messages=[{"role": "user", "content": name}]))  # fmt: skip
        assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
        messages: Any = [{"role": "user", "content": name}]
        raw = sdk.chat.completions.with_raw_response.create(model="hostile-1", stream=True, messages=messages)
        assert raw.http_response.read().decode().endswith("data: [DONE]\n\n")  # as OpenAI ends a stream


def test_an_error_event_fails_the_stream_and_its_words_are_scrubbed(gateway: ServerProcess, http: httpx.Client,
                                                                    evil: Evil) -> None:  # fmt: skip
    key = new_key()
    got = call(http, f"errorevent {uuid.uuid4().hex}", evil.urls["hostile"], key=key, kind="2")
    assert got.status == 502 and "overloaded" in got.message, got.response.text
    assert [d["delta"] for d in got.deltas] == ["Hello", " there"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": "errorevent"}]
        raw = sdk.chat.completions.with_raw_response.create(model="hostile-1", stream=True, messages=messages)
        body = raw.http_response.read().decode()
    assert "overloaded" in body and '"error"' in body
    for text in (got.response.text, body, gateway.log()):
        assert key not in text and key[-8:] not in text
