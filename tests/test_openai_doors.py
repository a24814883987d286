"""OpenAI's Responses, Conversations and Chat Completions APIs over a chat-completions upstream, with
the official ``openai`` SDK as the client (sync and async), against the running server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import KEY, OTHER_KEY, Upstreams, ask
from .harness import ServerProcess
from .standins.openai_api import prompt_tokens

# gpt-4 (counted exactly, with cl100k_base) gets a small window here, so a few turns fill it.
ROUTES = """
[[models]]
name = "gpt-4"
context_window = 2048

[[models]]
name = "o3-*"
base_url = "{alt}"
"""
ALT_KEY = "sk-alt-0123456789abcdefALTKEY"  # known to the alternative upstream only


@pytest.fixture(scope="module")
def v1_server(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("v1")
    (workdir / "models.toml").write_text(ROUTES.format(alt=upstreams.alt_openai_url))
    env = upstreams.env(CHATGPT_SERVER_MODELS_FILE=str(workdir / "models.toml"))
    proc = ServerProcess(workdir, env).start()
    yield proc
    proc.stop()


@pytest.fixture
def sdk(v1_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=KEY, max_retries=0) as client:
        yield client


def first_item(response: Any) -> dict[str, Any]:
    item: dict[str, Any] = response.output[0].to_dict()
    return item


def text_of(item: Any) -> str:
    """The text of a listed message item (the SDK's types are a wide union)."""
    return str(item.to_dict()["content"][0]["text"])


def sent(upstreams: Upstreams) -> dict[str, Any]:
    assert upstreams.openai.requests, "nothing reached the upstream"
    body: dict[str, Any] = upstreams.openai.requests[-1]["body"]
    return body


def test_three_turns_by_previous_response_id(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    first = sdk.responses.create(model="gpt-3.5-turbo", input="one")
    second = sdk.responses.create(model="gpt-3.5-turbo", input="two", previous_response_id=first.id)
    third = sdk.responses.create(model="gpt-3.5-turbo", input="three", previous_response_id=second.id)
    assert (first.output_text, second.output_text, third.output_text) == (
        "echo(1): one", "echo(2): two", "echo(3): three"
    )  # fmt: skip
    assert sent(upstreams)["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo(1): one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "echo(2): two"},
        {"role": "user", "content": "three"},
    ]
    assert third.status == "completed" and third.previous_response_id == second.id
    assert third.usage is not None and third.usage.input_tokens == prompt_tokens(
        "gpt-3.5-turbo", sent(upstreams)["messages"]
    )
    # The upstream's cached-input count is passed on (the stand-in says a quarter), in the stored one too.
    assert third.usage.input_tokens_details.cached_tokens == third.usage.input_tokens // 4 > 0
    stored = sdk.responses.retrieve(third.id).usage
    assert stored is not None and stored.input_tokens_details.cached_tokens == third.usage.input_tokens // 4
    assert str(first_item(third)["id"]).startswith("msg_") and third.id.startswith("resp_")


def test_input_tokens_are_counted_as_create_would_send_them(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """responses.input_tokens.count: the prompt create would send (history, instructions, input),
    counted here, nothing sent upstream; the same number the upstream then reports for it."""
    first = sdk.responses.create(model="gpt-3.5-turbo", input="one two three")
    calls = len(upstreams.openai.requests)
    ask: Any = {"model": "gpt-3.5-turbo", "input": "and four?", "previous_response_id": first.id,
                "instructions": "Count well."}  # fmt: skip
    counted = sdk.responses.input_tokens.count(**ask)
    assert counted.object == "response.input_tokens" and len(upstreams.openai.requests) == calls
    made = sdk.responses.create(**ask)
    assert made.usage is not None and counted.input_tokens == made.usage.input_tokens > 0
    bare = sdk.responses.input_tokens.count(input="hi", personality="friendly")  # the default model
    assert 0 < bare.input_tokens < counted.input_tokens
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.responses.input_tokens.count(model="gpt-3.5-turbo", input="x", previous_response_id="resp_nope")
    assert unknown.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as over:
        sdk.responses.input_tokens.count(model="gpt-3.5-turbo", input="word " * 20_000)
    assert over.value.code == "context_length_exceeded"


def test_input_shapes_the_sdk_allows_are_taken(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """An item_reference without its (optional) type, and an image's detail "original"."""
    first = sdk.responses.create(model="gpt-3.5-turbo", input="remember me")
    reference: Any = [{"id": first.output[0].id}]
    again = sdk.responses.create(model="gpt-3.5-turbo", input=reference)
    assert sent(upstreams)["messages"][-1] == {"role": "assistant", "content": "echo(1): remember me"}
    assert again.status == "completed"
    image: Any = [{"role": "user", "content": [{"type": "input_text", "text": "see"}, {
        "type": "input_image", "image_url": "https://example.com/a.png", "detail": "original"}]}]  # fmt: skip
    sdk.responses.create(model="gpt-4o-mini", input=image)
    assert sent(upstreams)["messages"][-1]["content"][1]["image_url"]["detail"] == "original"


def test_instructions_apply_to_one_response_only(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    first = sdk.responses.create(model="gpt-3.5-turbo", input="hi", instructions="Talk like a pirate.")
    assert sent(upstreams)["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    sdk.responses.create(model="gpt-3.5-turbo", input="and now?", previous_response_id=first.id)
    assert all(m["role"] != "system" for m in sent(upstreams)["messages"])
    assert first.instructions == "Talk like a pirate."


def test_conversation_and_previous_response_together_are_refused(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    first = sdk.responses.create(model="gpt-3.5-turbo", input="x")
    conversation = sdk.conversations.create()
    upstreams.openai.requests.clear()
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(model="gpt-3.5-turbo", input="y", previous_response_id=first.id,
                             conversation=conversation.id)  # fmt: skip
    assert "previous_response_id and conversation" in str(raised.value)
    assert raised.value.param == "conversation"
    assert not upstreams.openai.requests
    with pytest.raises(openai.NotFoundError) as unknown:  # a conversation that is not there: named, as OpenAI does
        sdk.responses.create(model="gpt-3.5-turbo", input="y", conversation="conv_nope")
    assert (unknown.value.code, unknown.value.param) == ("conversation_not_found", "conversation")
    with pytest.raises(openai.NotFoundError) as retrieved:
        sdk.conversations.retrieve("conv_nope")
    assert retrieved.value.code == "conversation_not_found"
    assert not upstreams.openai.requests


@pytest.mark.parametrize(
    ("metadata", "param", "code", "words"),
    [
        ({"k": 1}, "metadata.k", "invalid_type", "expected a string, but got an integer instead"),
        ({"k": "v" * 513}, "metadata.k", "string_above_max_length", "but got a string with length 513 instead"),
        ({f"k{i}": "v" for i in range(17)}, "metadata", "object_above_max_properties", "got an object with 17"),
        ({"k" * 65: "v"}, "metadata", "string_above_max_length", "keys of at most 64 characters"),
        (["k"], "metadata", "invalid_type", "expected an object, but got an array instead"),
    ],
)
def test_metadata_is_refused_in_openais_words_per_key(
    sdk: openai.OpenAI, upstreams: Upstreams, metadata: Any, param: str, code: str, words: str
) -> None:
    """OpenAI names the key at fault and the kind of fault (clients branch on code and param)."""
    upstreams.openai.requests.clear()
    for call in (lambda: sdk.responses.create(model="gpt-3.5-turbo", input="x", metadata=metadata),
                 lambda: sdk.conversations.create(metadata=metadata)):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        error = raised.value
        assert (error.code, error.param) == (code, param), error.body
        assert words in error.message
    assert not upstreams.openai.requests
    ok = {f"k{i}": "v" * 512 for i in range(16)}
    assert sdk.responses.create(model="gpt-3.5-turbo", input="x", metadata=ok).metadata == ok


def test_stream_helper_and_final_response(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    first = sdk.responses.create(model="gpt-3.5-turbo", input="before")
    kinds: list[str] = []
    deltas: list[str] = []
    with sdk.responses.stream(model="gpt-3.5-turbo", input="stream this please", previous_response_id=first.id) as s:
        for event in s:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = s.get_final_response()
    assert final.output_text == "echo(2): stream this please" == "".join(deltas)
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for name in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):  # fmt: skip
        assert kinds.count(name) == 1, name
    # What was streamed is what is stored, and a follow-up sent at once finds it.
    stored = sdk.responses.retrieve(final.id)
    assert first_item(stored)["id"] == first_item(final)["id"] and stored.output_text == final.output_text
    follow = sdk.responses.create(model="gpt-3.5-turbo", input="next", previous_response_id=final.id)
    assert follow.output_text == "echo(3): next"


def test_async_client_and_raw_sequence_numbers(v1_server: ServerProcess) -> None:
    async def go() -> tuple[str, list[int]]:
        async with openai.AsyncOpenAI(base_url=v1_server.url + "/v1", api_key=KEY, max_retries=0) as client:
            first = await client.responses.create(model="gpt-3.5-turbo", input="async one")
            numbers = []
            stream = await client.responses.create(model="gpt-3.5-turbo", input="async two",
                                                   previous_response_id=first.id, stream=True)  # fmt: skip
            text = ""
            async for event in stream:
                numbers.append(event.sequence_number)
                if event.type == "response.completed":
                    text = event.response.output_text
            return text, numbers

    text, numbers = asyncio.run(go())
    assert text == "echo(2): async two"
    assert numbers == list(range(len(numbers)))


def test_retrieve_delete_and_input_items(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="gpt-3.5-turbo", input="first")
    for i in range(12):
        response = sdk.responses.create(model="gpt-3.5-turbo", input=f"turn {i}", previous_response_id=response.id)
    items = list(sdk.responses.input_items.list(response.id, limit=5))  # auto-pagination: 5 pages
    assert len(items) == 25  # 13 questions and 12 answers before the last answer
    assert items[0].type == "message" and items[0].role == "user"  # newest first
    texts = [text_of(item) for item in items]
    assert texts[0] == "turn 11" and texts[-1] == "first"
    ascending = list(sdk.responses.input_items.list(response.id, limit=7, order="asc"))
    assert [i.id for i in ascending] == [i.id for i in items][::-1]
    before = sdk.responses.input_items.list(response.id, limit=2, extra_query={"before": items[4].id})
    assert [i.id for i in before.data] == [items[2].id, items[3].id] and before.has_more
    assert sdk.responses.input_items.list(response.id, extra_query={"before": items[0].id}).data == []
    retrieved = sdk.responses.retrieve(response.id)
    assert retrieved.output_text == response.output_text
    sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    # Deleting a response does not break what follows from it: its items stay as history.
    follow = sdk.responses.create(
        model="gpt-3.5-turbo", input="after delete", previous_response_id=retrieved.output[0].id
    )
    assert follow.output_text == "echo(14): after delete"


def test_conversations_end_to_end(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    conversation = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "seed"}],
                                            metadata={"topic": "demo"})  # fmt: skip
    assert conversation.metadata == {"topic": "demo"}
    for i in range(3):
        reply = sdk.responses.create(model="gpt-3.5-turbo", input=f"q{i}", conversation=conversation.id)
    assert reply.output_text == "echo(4): q2" and reply.conversation is not None
    added = sdk.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "user", "content": "note one"},
        {"type": "message", "role": "assistant", "content": "noted"},
    ])  # fmt: skip
    assert len(added.data) == 2
    listed = list(sdk.conversations.items.list(conversation.id, limit=3, order="asc"))  # 3 pages and a bit
    assert len(listed) == 9
    assert [text_of(i) for i in listed][:3] == ["seed", "q0", "echo(2): q0"]
    q0 = str(listed[1].id)
    one = sdk.conversations.items.retrieve(q0, conversation_id=conversation.id)
    assert one.id == q0
    sdk.conversations.items.delete(q0, conversation_id=conversation.id)  # "q0" goes
    after = sdk.responses.create(model="gpt-3.5-turbo", input="what now", conversation=conversation.id)
    texts = [m["content"] for m in sent(upstreams)["messages"]]
    assert "q0" not in texts and "seed" in texts and "noted" in texts
    assert after.output_text == "echo(5): what now"  # seed, q1, q2, note one, what now
    updated = sdk.conversations.update(conversation.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    assert sdk.conversations.retrieve(conversation.id).metadata == {"topic": "changed"}
    deleted = sdk.conversations.delete(conversation.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(conversation.id)


def test_list_my_conversations_newest_first(v1_server: ServerProcess) -> None:
    key = "sk-test-lister-0123456789"
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=key, max_retries=0) as client:
        made = [client.conversations.create(metadata={"n": str(i)}).id for i in range(5)]
        first = client.get("/conversations?limit=2", cast_to=httpx.Response).json()
        assert [c["id"] for c in first["data"]] == made[::-1][:2] and first["has_more"]
        rest = client.get(f"/conversations?limit=10&after={first['last_id']}", cast_to=httpx.Response).json()
        assert [c["id"] for c in rest["data"]] == made[::-1][2:] and not rest["has_more"]
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:
        theirs = other.get("/conversations", cast_to=httpx.Response).json()
        assert not set(made) & {c["id"] for c in theirs["data"]}


def test_function_tool_round_trip(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    tools: list[Any] = [{"type": "function", "name": "lookup", "description": "Look something up",
                         "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}]  # fmt: skip
    first = sdk.responses.create(model="gpt-3.5-turbo", input="call:lookup", tools=tools)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "lookup" and json.loads(call.arguments) == {"x": 1}
    assert sent(upstreams)["tools"][0]["function"]["name"] == "lookup"
    second = sdk.responses.create(
        model="gpt-3.5-turbo", previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "forty-two"}],
    )  # fmt: skip
    assert second.output_text == "echo(1): call:lookup [tool: forty-two]"
    messages = sent(upstreams)["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call.call_id == messages[-1]["tool_call_id"]
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "forty-two"}
    # The tool's output without tools (OpenAI does not carry them over, and accepts this): the called
    # tool is defined for the upstream (servers that require it refuse otherwise), and none may be called.
    third = sdk.responses.create(
        model="gpt-3.5-turbo", previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "no tools sent"}],
    )  # fmt: skip
    assert third.output_text == "echo(1): call:lookup [tool: no tools sent]"
    assert sent(upstreams)["tools"] == [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    ]
    assert sent(upstreams)["tool_choice"] == "none"
    # The same, streamed: the function-call events, and the same ids in the events and the stored object.
    kinds: list[str] = []
    with sdk.responses.stream(model="gpt-3.5-turbo", input="call:lookup", tools=tools) as s:
        for event in s:
            kinds.append(event.type)
        streamed = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert streamed.output[0].type == "function_call"
    assert sdk.responses.retrieve(streamed.id).output[0].id == streamed.output[0].id


def test_a_refusal_is_shown_as_a_refusal_part_and_kept_as_one(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """An upstream's refusal (chat completions' ``refusal``) is a ``refusal`` content part, whole and
    streamed (refusal events, no output_text), stored and listed so; a follow-up sends it as the
    assistant's words, and the original route shows it as the reply's text."""
    declined = "I can't help with that."
    whole = sdk.responses.create(model="gpt-3.5-turbo", input="refuse: something")
    assert whole.output[0].model_dump()["content"] == [{"type": "refusal", "refusal": declined}]
    assert whole.output_text == ""  # as OpenAI's: a refusal is no output text
    kinds: list[str] = []
    with sdk.responses.stream(model="gpt-3.5-turbo", input="refuse: again") as stream:
        for event in stream:
            kinds.append(event.type)
        streamed = stream.get_final_response()
    assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds
    assert not [k for k in kinds if k.startswith("response.output_text")]
    assert streamed.output[0].model_dump()["content"] == [{"type": "refusal", "refusal": declined}]
    stored = sdk.responses.retrieve(streamed.id).output[0].model_dump()["content"]
    assert stored == [{"type": "refusal", "refusal": declined}]
    follow = sdk.responses.create(model="gpt-3.5-turbo", input="why?", previous_response_id=whole.id)
    assert follow.output_text == "echo(2): why?"
    assert sent(upstreams)["messages"][1] == {"role": "assistant", "content": declined}
    with httpx.Client(base_url=v1_server.url, timeout=30) as c:
        assert ask(c, "refuse: the original route").json()["data"]["text"] == declined
    # A refusal given back as input (client-kept history, items.create) is kept as one too.
    given: Any = [{"role": "user", "content": "q"},
                  {"role": "assistant", "content": [{"type": "refusal", "refusal": declined}]}]  # fmt: skip
    conversation = sdk.conversations.create(items=given)
    listed = [item.model_dump()["content"] for item in sdk.conversations.items.list(conversation.id, order="asc")]
    assert listed[1] == [{"type": "refusal", "refusal": declined}], listed


def test_tool_arguments_sent_as_a_json_object_reach_clients_as_its_text(sdk: openai.OpenAI) -> None:
    """Some servers send a tool call's arguments as the JSON object itself: every door gives them as
    OpenAI does, as text (a client parses it), whole and streamed, passed through or stored."""
    tools: list[Any] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    asked: Any = [{"role": "user", "content": "callobj:lookup"}]
    whole = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=asked, tools=tools)
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"x": 1}  # type: ignore[union-attr]
    pieces = []
    for chunk in sdk.chat.completions.create(model="gpt-3.5-turbo", messages=asked, tools=tools, stream=True):
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta_call.function and delta_call.function.arguments is not None:
                assert isinstance(delta_call.function.arguments, str)
                pieces.append(delta_call.function.arguments)
    assert json.loads("".join(pieces)) == {"x": 1}
    flat: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    with sdk.responses.stream(model="gpt-3.5-turbo", input="callobj:lookup", tools=flat) as events:
        streamed = events.get_final_response()
    whole_response = sdk.responses.create(model="gpt-3.5-turbo", input="callobj:lookup", tools=flat)
    for response in (streamed, whole_response):
        assert response.output[0].type == "function_call"
        assert json.loads(response.output[0].arguments) == {"x": 1}


def test_a_message_given_before_the_calls_outputs_follows_them(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """Responses input may put a message before the outputs it comes with; chat completions wants each
    call's output right after the calling message, so the message follows the outputs."""
    tools: list[Any] = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    first = sdk.responses.create(model="gpt-3.5-turbo", input="call:lookup", tools=tools)
    call_id = first.output[0].call_id  # type: ignore[union-attr]
    given: Any = [{"role": "user", "content": "here it is"},
                  {"type": "function_call_output", "call_id": call_id, "output": "forty-two"}]  # fmt: skip
    second = sdk.responses.create(model="gpt-3.5-turbo", previous_response_id=first.id, tools=tools, input=given)
    assert second.status == "completed"
    assert [m["role"] for m in sent(upstreams)["messages"]] == ["user", "assistant", "tool", "user"]
    listed = [item.type for item in sdk.responses.input_items.list(second.id, order="asc")]
    assert listed[-2:] == ["message", "function_call_output"]  # stored as the client gave them


@pytest.mark.parametrize("stream", [True, False])
def test_text_a_model_says_after_its_call_goes_with_the_call(sdk: openai.OpenAI, upstreams: Upstreams,
                                                            stream: bool) -> None:  # fmt: skip
    """A streamed reply may say something after its tool call ("Checking now."): it is kept, and the
    next prompt carries it in the calling message, which the tool message must directly follow (a
    strict upstream refuses an assistant message between them)."""
    tools: list[Any] = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    first: Any
    if stream:
        with sdk.responses.stream(model="gpt-3.5-turbo", input="callsay:lookup", tools=tools) as s:
            first = s.get_final_response()
    else:
        first = sdk.responses.create(model="gpt-3.5-turbo", input="callsay:lookup", tools=tools)
    assert sorted(item.type for item in first.output) == ["function_call", "message"]
    assert first.output_text == "Checking now."
    call = next(item for item in first.output if item.type == "function_call")
    second = sdk.responses.create(
        model="gpt-3.5-turbo", previous_response_id=first.id, tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "forty-two"}],
    )  # fmt: skip
    assert second.output_text == "echo(1): callsay:lookup [tool: forty-two]"
    messages = sent(upstreams)["messages"]
    assert [m["role"] for m in messages[-3:]] == ["user", "assistant", "tool"]
    assert messages[-2]["content"] == "Checking now." and messages[-2]["tool_calls"][0]["id"] == call.call_id


def test_truncation_auto_drops_exactly_the_oldest_and_disabled_refuses(
    sdk: openai.OpenAI, upstreams: Upstreams
) -> None:
    long = "lorem ipsum dolor sit amet " * 40  # ~200 tokens a turn: the 2048-token window fills after a few
    chain: list[dict[str, str]] = []
    response = sdk.responses.create(model="gpt-4", input="start " + long, max_output_tokens=100)
    chain += [{"role": "user", "content": "start " + long}, {"role": "assistant", "content": response.output_text}]
    for i in range(8):
        question = f"turn {i} {long}"
        response = sdk.responses.create(model="gpt-4", input=question, truncation="auto",
                                        previous_response_id=response.id, max_output_tokens=100)  # fmt: skip
        assert response.status == "completed"
        chain += [{"role": "user", "content": question}, {"role": "assistant", "content": response.output_text}]
    messages = sent(upstreams)["messages"]
    budget = 2048 - 100
    assert prompt_tokens("gpt-4", messages) <= budget
    assert messages[-1]["content"].startswith("turn 7") and len(messages) < len(chain) - 1
    kept = len(messages) - 1  # the history sent before the question
    assert messages[:-1] == chain[-2 - kept : -2]  # the newest turns, in order
    next_older = chain[-2 - kept - 1]  # exactly: the next older message would not have fitted
    assert prompt_tokens("gpt-4", [next_older, *messages]) > budget
    before = len(upstreams.openai.requests)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.responses.create(model="gpt-4", input="one more " + long, previous_response_id=response.id,
                             max_output_tokens=100)  # fmt: skip
    assert "context window" in str(raised.value) and raised.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as alone:  # the input alone is over the window
        sdk.responses.create(model="gpt-4", input=long * 12, max_output_tokens=100)
    assert "context window" in str(alone.value) and alone.value.code == "context_length_exceeded"
    assert len(upstreams.openai.requests) == before  # refused before the upstream was called


def test_another_key_sees_nothing(sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams) -> None:
    mine = sdk.responses.create(model="gpt-3.5-turbo", input="private")
    conversation = sdk.conversations.create()
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.BadRequestError) as previous:  # OpenAI's status for it: 400
            other.responses.create(model="gpt-3.5-turbo", input="steal", previous_response_id=mine.id)
        assert (previous.value.code, previous.value.param) == ("previous_response_not_found", "previous_response_id")
        assert previous.value.message.endswith(f" - Previous response with id '{mine.id}' not found.")
        with pytest.raises(openai.BadRequestError):
            other.responses.create(model="gpt-3.5-turbo", input="steal", previous_response_id=mine.output[0].id)
        with pytest.raises(openai.NotFoundError):
            other.conversations.retrieve(conversation.id)
        with pytest.raises(openai.NotFoundError):
            list(other.conversations.items.list(conversation.id))
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(mine.id)
    assert sdk.responses.retrieve(mine.id).id == mine.id


def test_one_conversation_through_both_doors(sdk: openai.OpenAI, v1_server: ServerProcess) -> None:
    with httpx.Client(base_url=v1_server.url, timeout=30) as c:
        original = ask(c, "from the original route").json()["data"]
        via_sdk = sdk.responses.create(model="gpt-3.5-turbo", input="through the sdk",
                                       previous_response_id=original["id"])  # fmt: skip
        assert via_sdk.output_text == "echo(2): through the sdk"
        back = ask(c, "and back", parent=via_sdk.output[0].id).json()["data"]
        assert back["text"] == "echo(3): and back"
        items = list(sdk.conversations.items.list(back["conversationId"], order="asc"))
        assert [text_of(i) for i in items][-1] == "echo(3): and back"


def test_store_false_keeps_nothing(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model="gpt-3.5-turbo", input="forget me", store=False)
    assert response.output_text == "echo(1): forget me" and response.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="gpt-3.5-turbo", input="x", previous_response_id=response.id)


def test_chat_completions_pass_through(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    completion = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "plain"}])
    assert completion.choices[0].message.content == "echo(1): plain"
    assert sent(upstreams)["messages"] == [{"role": "user", "content": "plain"}]
    assert upstreams.openai.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    chunks = list(sdk.chat.completions.create(model="gpt-3.5-turbo", stream=True,
                                              messages=[{"role": "user", "content": "streamed words"}]))  # fmt: skip
    assert all(c.choices for c in chunks)  # usage not asked for: no chunk without choices (as OpenAI does)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo(1): streamed words"
    asked = list(sdk.chat.completions.create(model="gpt-3.5-turbo", stream=True, stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": "with usage"}]))  # fmt: skip
    assert asked[-1].usage is not None and not asked[-1].choices
    assert [m.id for m in sdk.models.list()]


@pytest.mark.parametrize(
    ("failure", "error", "code"),
    [
        ("rate", openai.RateLimitError, "rate_limit_exceeded"),
        ("quota", openai.RateLimitError, "insufficient_quota"),
        ("403", openai.PermissionDeniedError, "model_not_found"),
        ("500", openai.InternalServerError, "upstream_error"),
        ("html", openai.InternalServerError, "upstream_bad_reply"),
    ],
)
def test_upstream_errors_map_to_the_sdk_exceptions(
    sdk: openai.OpenAI, upstreams: Upstreams, failure: str, error: type[openai.APIStatusError], code: str
) -> None:
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append(failure))
    with pytest.raises(error) as raised:
        sdk.responses.create(model="gpt-3.5-turbo", input="fail")
    assert "127.0.0.1:" in raised.value.message and KEY not in str(raised.value.body)
    assert raised.value.code == code  # the upstream's own code, where it gave one, as OpenAI's clients branch on it


def test_an_unknown_model_is_the_upstreams_404_with_its_param(sdk: openai.OpenAI) -> None:
    """The upstream's 404 (OpenAI's for a model it does not have) stays a 404, NotFoundError in the SDK,
    on both doors, with the upstream's code; and a 400 keeps the field the upstream named."""
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.code == "model_not_found" and "gpt-nope" in unknown.value.message
    with pytest.raises(openai.NotFoundError) as responses:
        sdk.responses.create(model="gpt-nope", input="x")
    assert responses.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as named:
        sdk.chat.completions.create(model="o3-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert named.value.code == "unsupported_parameter" and named.value.param == "max_tokens"


def test_client_errors_map_to_the_sdk_exceptions(v1_server: ServerProcess, sdk: openai.OpenAI) -> None:
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key="sk-wrong-key-123456", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as raised:
            bad.responses.create(model="gpt-3.5-turbo", input="x")
        assert "wrong-key" not in str(raised.value.body)
        assert (raised.value.type, raised.value.code) == ("invalid_request_error", "invalid_api_key")  # OpenAI's
    for params, code in (({"temperature": 7}, "decimal_above_max_value"), ({"top_p": -0.5}, "decimal_below_min_value"),
                         ({"temperature": "hot"}, "invalid_type")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="gpt-3.5-turbo", input="x", extra_body=params)
        assert (refused.value.param, refused.value.code) == (next(iter(params)), code)
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.responses.create(model="gpt-3.5-turbo", input="x", extra_body={"nonsense": 1})
    assert "nonsense" in str(unknown.value) and unknown.value.code == "unknown_parameter"  # OpenAI's code
    with pytest.raises(openai.BadRequestError) as missing:
        sdk.responses.create(model="gpt-3.5-turbo", extra_body={"input": None})
    assert (missing.value.code, missing.value.param) == ("missing_required_parameter", "input")
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_doesnotexist")
    response = httpx.post(v1_server.url + "/v1/responses", json={"model": "gpt-3.5-turbo", "input": "x"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    plain = httpx.post(v1_server.url + "/v1/responses", content=b'{"model":"m","input":"x"}',
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"})  # fmt: skip
    assert plain.status_code == 415


def test_timeout_is_504(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_TIMEOUT_MS="400")).start()
    try:
        upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:2"))
        with (
            openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as client,
            pytest.raises(openai.InternalServerError) as raised,
        ):
            client.responses.create(model="gpt-3.5-turbo", input="slow")
        assert raised.value.status_code == 504
    finally:
        server.stop()


def test_continuity_across_a_sigkill_restart(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env()).start()
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as client:
        first = client.responses.create(model="gpt-3.5-turbo", input="remember me")
        conversation = client.conversations.create()
        client.responses.create(model="gpt-3.5-turbo", input="in a conversation", conversation=conversation.id)
    server.kill()  # SIGKILL right after answering
    server.start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as client:
            again = client.responses.create(model="gpt-3.5-turbo", input="still there?", previous_response_id=first.id)
            assert again.output_text == "echo(2): still there?"
            more = client.responses.create(model="gpt-3.5-turbo", input="and here?", conversation=conversation.id)
            assert more.output_text == "echo(2): and here?"
    finally:
        server.stop()


def test_two_instances_share_responses_and_conversations(
    tmp_path: Path, upstreams: Upstreams, network_kind: str
) -> None:
    from .shared_stores import store_url

    url = store_url(network_kind, tmp_path)
    a = ServerProcess(tmp_path / "a", upstreams.env(CHATGPT_SERVER_STORE_URL=url))
    b = ServerProcess(tmp_path / "b", upstreams.env(CHATGPT_SERVER_STORE_URL=url))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a.start()
    b.start()
    try:
        ca = openai.OpenAI(base_url=a.url + "/v1", api_key=KEY, max_retries=0)
        cb = openai.OpenAI(base_url=b.url + "/v1", api_key=KEY, max_retries=0)
        response = ca.responses.create(model="gpt-3.5-turbo", input="on a")
        for turn in range(4):  # back and forth: every follow-up lands on the other instance
            client = cb if turn % 2 == 0 else ca
            response = client.responses.create(model="gpt-3.5-turbo", input=f"hop {turn}",
                                               previous_response_id=response.id)  # fmt: skip
        assert response.output_text == "echo(5): hop 3"
        conversation = cb.conversations.create()
        ca.responses.create(model="gpt-3.5-turbo", input="conv on a", conversation=conversation.id)
        last = cb.responses.create(model="gpt-3.5-turbo", input="conv on b", conversation=conversation.id)
        assert last.output_text == "echo(2): conv on b"
        assert [i.id for i in cb.conversations.items.list(conversation.id)] == [
            i.id for i in ca.conversations.items.list(conversation.id)
        ]
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()


def test_a_key_its_upstream_refuses_stores_nothing(v1_server: ServerProcess) -> None:
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key="made-up-key-1234567", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.conversations.create(metadata={"a": "b"})
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            bad.responses.retrieve("resp_anything")
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=KEY, max_retries=0) as good:
        assert good.conversations.create().id.startswith("conv_")


def test_a_stream_client_that_leaves_cancels_and_keeps_the_partial(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    upstreams.openai.chunk_delay = 0.2
    closed = upstreams.openai.closed_streams
    words = " ".join(f"w{i}" for i in range(30))
    response_id = None
    try:
        with httpx.stream("POST", v1_server.url + "/v1/responses", timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "gpt-3.5-turbo", "input": words, "stream": True}) as stream:  # fmt: skip
            for line in stream.iter_lines():
                if line.startswith("data: ") and '"response.created"' in line:
                    response_id = json.loads(line[6:])["response"]["id"]
                if '"response.output_text.delta"' in line:
                    break  # the client goes away after the first piece of text
    finally:
        upstreams.openai.chunk_delay = 0.0
    assert response_id is not None
    deadline = time.monotonic() + 3
    while upstreams.openai.closed_streams == closed:  # the upstream request was cancelled
        assert time.monotonic() < deadline
        time.sleep(0.02)
    while True:  # and the partial response was stored, incomplete
        try:
            stored = sdk.responses.retrieve(response_id)
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # cancelled, as OpenAI calls a response stopped before its end; what had arrived is kept
    assert stored.status == "cancelled" and stored.incomplete_details is None
    assert stored.output_text and stored.output_text != f"echo(1): {words}"
    # The access line says so, as one logfmt field (a value with a space is quoted).
    line = next(line for line in v1_server.log().splitlines() if "route=\"responses stream\"" in line
                and "client left" in line)  # fmt: skip
    assert 'outcome="client left"' in line, line


def test_a_routed_models_key_is_checked_and_sent_only_where_the_model_goes(
    v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """A key for the upstream the routes file sends a model to works through every door, and is not
    shown to the default upstream when that one is not needed."""
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=ALT_KEY, max_retries=0) as alt:
        first = alt.responses.create(model="o3-mini", input="one")
        second = alt.responses.create(model="o3-mini", input="two", previous_response_id=first.id)
        assert second.output_text == "echo(2): two"
        assert alt.responses.retrieve(second.id).output_text == "echo(2): two"
        conversation = alt.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
        assert alt.conversations.retrieve(conversation.id).id == conversation.id
    assert ALT_KEY not in upstreams.apps.call(lambda: list(upstreams.openai.models_asked))
    assert upstreams.apps.call(lambda: list(upstreams.alt_openai.models_asked)).count(ALT_KEY) >= 1
    nobody = openai.OpenAI(base_url=v1_server.url + "/v1", api_key="sk-nobody-0123456789abcdef", max_retries=0)
    with nobody, pytest.raises(openai.AuthenticationError):
        nobody.conversations.create()


def test_a_conversation_whose_oldest_turns_retention_removed_goes_on(tmp_path: Path, upstreams: Upstreams) -> None:
    """Retention deletes the oldest items of a long conversation; with truncation disabled (the
    Responses default) the rest is still the whole history, not a prompt too long."""
    import sqlite3

    database = tmp_path / "conversations.db"
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{database}")).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as sdk:
            response = sdk.responses.create(model="gpt-3.5-turbo", input="first")
            for text in ("second", "third"):
                response = sdk.responses.create(model="gpt-3.5-turbo", input=text, previous_response_id=response.id)
            with sqlite3.connect(database) as db:  # what the daily purge does to the oldest turn
                removed = db.execute("DELETE FROM items WHERE seq <= (SELECT MIN(seq) + 1 FROM items)").rowcount
            assert removed == 2
            last = sdk.responses.create(model="gpt-3.5-turbo", input="fourth", previous_response_id=response.id)
        assert last.status == "completed"
        assert [m["content"] for m in sent(upstreams)["messages"]] == [
            "second", "echo(2): second", "third", "echo(3): third", "fourth"
        ]  # fmt: skip
    finally:
        server.stop()


def test_one_writer_per_conversation(sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams) -> None:
    """While a turn of a conversation is being answered, another turn (or added items) for the same
    conversation is refused with OpenAI's ``conversation_locked``, not forked; once it ends, all goes on."""
    conversation = sdk.conversations.create()
    upstreams.openai.chunk_delay = 0.1
    try:
        with httpx.stream("POST", v1_server.url + "/v1/responses", timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "gpt-3.5-turbo", "input": "first of all", "stream": True,
                                "conversation": conversation.id}) as stream:  # fmt: skip
            lines = stream.iter_lines()
            for line in lines:
                if '"response.output_text.delta"' in line:
                    break  # the first turn is under way
            with pytest.raises(openai.BadRequestError) as refused:
                sdk.responses.create(model="gpt-3.5-turbo", input="meanwhile", conversation=conversation.id)
            assert refused.value.code == "conversation_locked"
            with pytest.raises(openai.BadRequestError) as also:
                sdk.conversations.items.create(conversation.id, items=[
                    {"type": "message", "role": "user", "content": "a note"}])  # fmt: skip
            assert also.value.code == "conversation_locked"
            rest = "".join(lines)
    finally:
        upstreams.openai.chunk_delay = 0.0
    assert '"response.completed"' in rest
    after = sdk.responses.create(model="gpt-3.5-turbo", input="then", conversation=conversation.id)
    assert after.output_text == "echo(2): then"
    texts = [m["content"] for m in sent(upstreams)["messages"]]
    assert texts == ["first of all", "echo(1): first of all", "then"]
    for i in range(5):  # a turn told about (streamed or not) has let go of its conversation: no retry needed
        with sdk.responses.stream(model="gpt-3.5-turbo", input=f"s{i}", conversation=conversation.id) as events:
            streamed = events.get_final_response()
        items = sdk.conversations.items.create(conversation.id, items=[
            {"type": "message", "role": "user", "content": f"n{i}"}])  # fmt: skip
        assert streamed.output_text == f"echo({3 + 3 * i}): s{i}" and len(items.data) == 1
        sdk.responses.create(model="gpt-3.5-turbo", input=f"r{i}", conversation=conversation.id)


def test_a_conversation_tip_moves_with_turns_from_any_door(sdk: openai.OpenAI, v1_server: ServerProcess,
                                                           upstreams: Upstreams) -> None:  # fmt: skip
    """A ``previous_response_id`` turn from a conversation's last response continues the conversation;
    one from an older response is a branch and leaves the conversation where it was."""
    conversation = sdk.conversations.create()
    one = sdk.responses.create(model="gpt-3.5-turbo", input="one", conversation=conversation.id)
    two = sdk.responses.create(model="gpt-3.5-turbo", input="two", previous_response_id=one.id)
    sdk.responses.create(model="gpt-3.5-turbo", input="three", conversation=conversation.id)
    assert [m["content"] for m in sent(upstreams)["messages"]] == [
        "one", "echo(1): one", "two", "echo(2): two", "three"
    ]  # fmt: skip
    sdk.responses.create(model="gpt-3.5-turbo", input="a branch", previous_response_id=two.id)
    four = sdk.responses.create(model="gpt-3.5-turbo", input="four", conversation=conversation.id)
    texts = [m["content"] for m in sent(upstreams)["messages"]]
    assert "a branch" not in texts and texts[-3:] == ["three", "echo(3): three", "four"]
    assert four.output_text == "echo(4): four"
    with httpx.Client(base_url=v1_server.url, timeout=30) as c:  # and the original route from the tip
        data = ask(c, "five", parent=four.output[0].id).json()["data"]
    assert data["conversationId"] == conversation.id
    items = list(sdk.conversations.items.list(conversation.id, order="asc"))
    line = [f"{word}" if n % 2 == 0 else f"echo({n // 2 + 1}): {word}" for n, word in
            enumerate(w for w in ("one", "two", "three", "four", "five") for _ in (0, 1))]  # fmt: skip
    assert [text_of(i) for i in items] == line  # the branch is not the conversation's
    paged = list(sdk.conversations.items.list(conversation.id, order="desc", limit=3))  # every page filled
    assert [text_of(i) for i in paged] == line[::-1]


def test_a_conversation_begun_on_the_original_route_goes_on_by_its_id(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    with httpx.Client(base_url=v1_server.url, timeout=30) as c:
        data = ask(c, "begun on the original route").json()["data"]
    reply = sdk.responses.create(model="gpt-3.5-turbo", input="and on", conversation=data["conversationId"])
    assert reply.output_text == "echo(2): and on"
    assert sent(upstreams)["messages"][0]["content"] == "begun on the original route"
    other = openai.OpenAI(base_url=v1_server.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with other, pytest.raises(openai.NotFoundError):
        other.responses.create(model="gpt-3.5-turbo", input="mine?", conversation=data["conversationId"])


def test_a_conversation_begun_on_the_original_route_is_listed_and_its_tip_moves_by_every_doors_rule(
    v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """From its first turn, as one made with conversations.create: listed, and continued with
    ``conversation=`` from its tip as the rule moves it (a turn from an older item is a branch; one
    that failed before any output moves nothing), not from whichever item is newest."""
    key = "sk-test-own-" + uuid.uuid4().hex
    with httpx.Client(base_url=v1_server.url, timeout=30) as c:
        upstreams.apps.call(lambda: upstreams.openai.fail_next.append("cut0"))
        ask(c, "cut before its first word", key=key, kind="2")  # told no conversation: none is listed
        data = ask(c, "start", key=key).json()["data"]
        listed = c.get("/v1/conversations", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    conversation = data["conversationId"]
    assert [entry["id"] for entry in listed] == [conversation]
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=key, max_retries=0) as mine:
        a = mine.responses.create(model="gpt-3.5-turbo", input="branch A", previous_response_id=data["id"])
        mine.responses.create(model="gpt-3.5-turbo", input="branch B", previous_response_id=data["id"])
        upstreams.apps.call(lambda: upstreams.openai.fail_next.append("cut0"))
        failed = _failed_stream(v1_server, {"input": "lost question", "previous_response_id": a.id}, key)
        assert failed[-1]["type"] == "response.failed"
        mine.responses.create(model="gpt-3.5-turbo", input="next", conversation=conversation)
    contents = [m["content"] for m in sent(upstreams)["messages"]]
    assert contents == ["start", "echo(1): start", "branch A", a.output_text, "next"], contents


def test_logprobs_are_refused_not_dropped_and_other_extras_are_accepted(
    sdk: openai.OpenAI, upstreams: Upstreams
) -> None:
    calls = len(upstreams.openai.requests)
    for extra in ({"include": ["message.output_text.logprobs"]}, {"top_logprobs": 3}, {"include": "all"}):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="gpt-3.5-turbo", input="with logprobs", **extra)
        assert refused.value.body["param"] in extra  # type: ignore[index]
    assert len(upstreams.openai.requests) == calls  # nothing was sent upstream
    fine = sdk.responses.create(model="gpt-3.5-turbo", input="as Codex asks", include=["reasoning.encrypted_content"],
                                top_logprobs=0)  # fmt: skip
    assert fine.status == "completed"
    with pytest.raises(openai.BadRequestError) as refused:  # a value OpenAI does not know: its words and code
        unknown: Any = ["file_search_call.results", "not.a.value"]
        sdk.responses.create(model="gpt-3.5-turbo", input="x", include=unknown)
    assert (refused.value.code, refused.value.param) == ("invalid_value", "include[1]")
    assert "Supported values are:" in refused.value.message and "'reasoning.encrypted_content'" in refused.value.message
    assert len(upstreams.openai.requests) == calls + 1


def test_a_stream_the_upstream_cuts_fails_with_the_text_that_arrived(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append("cut"))
    events = []
    body = {"model": "gpt-3.5-turbo", "input": "one two three four", "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", v1_server.url + "/v1/responses", timeout=30, headers=headers, json=body) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    failed = events[-1]
    assert failed["type"] == "response.failed"
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert streamed and failed["response"]["output"][0]["content"][0]["text"] == streamed
    assert failed["response"]["output"][0]["status"] == "incomplete"
    error = failed["response"]["error"]
    assert error["code"] == "server_error" and error["type"] == "upstream_bad_reply" and "cut" in error["message"]
    stored = sdk.responses.retrieve(failed["response"]["id"])  # what arrived is stored, as it was told
    assert stored.status == "failed" and stored.output_text == streamed and stored.incomplete_details is None
    assert stored.error is not None and stored.model_dump(exclude_none=True)["error"] == error
    assert stored.model_dump()["output"][0]["status"] == "incomplete"
    # ... and continued from, as any stored response is
    follow = sdk.responses.create(model="gpt-3.5-turbo", input="go on", previous_response_id=stored.id)
    assert follow.status == "completed"


def _failed_stream(v1_server: ServerProcess, body: dict[str, Any], key: str = KEY) -> list[dict[str, Any]]:
    events = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", v1_server.url + "/v1/responses", timeout=30, headers=headers,
                      json={"model": "gpt-3.5-turbo", "stream": True, **body}) as stream:  # fmt: skip
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_a_stream_cut_before_its_first_word_is_kept_as_failed_and_leaves_its_conversation_as_it_was(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """The client has the response's id from response.created: a reply that failed before any output
    is stored as failed, as told, with no output; its input is listed and can be continued from. In a
    conversation the tip stays where it was, so the client's retry is not doubled there."""
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append("cut0"))
    events = _failed_stream(v1_server, {"input": "lost question"})
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1]["response"]
    assert failed["output"] == [] and failed["error"]["code"] == "server_error"
    stored = sdk.responses.retrieve(failed["id"])
    assert stored.status == "failed" and stored.output == []
    assert stored.model_dump(exclude_none=True)["error"] == failed["error"]
    assert [i.model_dump()["content"][0]["text"] for i in sdk.responses.input_items.list(failed["id"])] == [
        "lost question"
    ]
    follow = sdk.responses.create(model="gpt-3.5-turbo", input="again", previous_response_id=failed["id"])
    assert follow.output_text == "echo(2): again"  # the unanswered question is history, no empty answer
    assert [m["role"] for m in sent(upstreams)["messages"]] == ["user", "user"]

    conversation = sdk.conversations.create()
    first = sdk.responses.create(model="gpt-3.5-turbo", input="first", conversation=conversation.id)
    before = [item.id for item in sdk.conversations.items.list(conversation.id)]
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append("cut0"))
    events = _failed_stream(v1_server, {"input": "retried", "conversation": conversation.id})
    assert events[-1]["type"] == "response.failed"
    assert sdk.responses.retrieve(events[-1]["response"]["id"]).status == "failed"
    assert [item.id for item in sdk.conversations.items.list(conversation.id)] == before
    retry = sdk.responses.create(model="gpt-3.5-turbo", input="retried", conversation=conversation.id)
    assert retry.output_text == "echo(2): retried"  # "first" and the retry: the failed try is not in it
    assert [m["content"] for m in sent(upstreams)["messages"]] == ["first", first.output_text, "retried"]


def test_a_turn_from_another_door_while_the_conversation_answers_is_kept(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """Only ``conversation=`` turns hold the conversation. A follow-up of its tip through the original
    route, answered while a ``conversation=`` turn streams, stays in the conversation: the streaming
    turn is written after it, and the next turn's history holds both."""
    conversation = sdk.conversations.create()
    first = sdk.responses.create(model="gpt-3.5-turbo", input="first", conversation=conversation.id)
    upstreams.openai.chunk_delay = 0.1
    try:
        body = {"model": "gpt-3.5-turbo", "input": "slow one", "stream": True, "conversation": conversation.id}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", v1_server.url + "/v1/responses", timeout=30, headers=headers, json=body) as stream:
            lines = stream.iter_lines()
            for line in lines:
                if '"response.output_text.delta"' in line:
                    break
            with httpx.Client(base_url=v1_server.url, timeout=30) as c:
                side = ask(c, "side", parent=first.output[0].id)
            assert side.status_code == 201, side.text
            rest = "".join(lines)
    finally:
        upstreams.openai.chunk_delay = 0.0
    assert '"response.completed"' in rest
    sdk.responses.create(model="gpt-3.5-turbo", input="next", conversation=conversation.id)
    texts = [m["content"] for m in sent(upstreams)["messages"]]
    assert [t for t in texts if not t.startswith("echo")] == ["first", "side", "slow one", "next"]


def test_a_deleted_item_cannot_be_referenced(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    conversation = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "forget me"}])
    item = next(iter(sdk.conversations.items.list(conversation.id)))
    sdk.conversations.items.delete(str(item.id), conversation_id=conversation.id)
    calls = len(upstreams.openai.requests)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="gpt-3.5-turbo", input=[{"type": "item_reference", "id": str(item.id)}])
    assert len(upstreams.openai.requests) == calls  # its text went nowhere


def test_an_item_is_in_a_prompt_once(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """Referenced twice, or referenced while the history it continues holds it: OpenAI's 400
    "Duplicate item found", before anything is sent, not a prompt that says it twice."""
    first = sdk.responses.create(model="gpt-3.5-turbo", input="base")
    said: Any = {"type": "item_reference", "id": first.output[0].id}
    conversation = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "kept"}])
    kept: Any = {"type": "item_reference", "id": next(iter(sdk.conversations.items.list(conversation.id))).id}
    calls = len(upstreams.openai.requests)
    twice: Any = [said, said]
    with_history: list[tuple[Any, dict[str, Any]]] = [
        ([said, {"role": "user", "content": "next"}], {"previous_response_id": first.id}),
        ([kept], {"conversation": conversation.id}),
    ]
    for given, where in [(twice, {}), *with_history]:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="gpt-3.5-turbo", input=given, **where)
        assert refused.value.param == "input" and "Duplicate item found with id" in refused.value.message
    assert len(upstreams.openai.requests) == calls
    elsewhere = sdk.responses.create(model="gpt-3.5-turbo", input=[kept], previous_response_id=first.id)
    assert elsewhere.status == "completed"  # an item of another conversation is no duplicate here
    assert [m["content"] for m in sent(upstreams)["messages"]] == ["base", first.output_text, "kept"]
    # A response's output passed back whole (with its ids), as ``input=previous.output + [...]`` does.
    passed_back: Any = [item.model_dump(exclude_none=True) for item in first.output]
    again: Any = [*passed_back, {"role": "user", "content": "next"}]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt-3.5-turbo", input=again, previous_response_id=first.id)
    assert f"Duplicate item found with id {first.output[0].id}" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="gpt-3.5-turbo", input=[*passed_back, *passed_back])
    kept_by_client = sdk.responses.create(model="gpt-3.5-turbo", input=[{"role": "user", "content": "base"}, *again])
    assert kept_by_client.status == "completed"  # the client's own history, no previous: nothing twice


def test_what_cannot_be_a_conversation_id_is_a_404_on_every_store(
    tmp_path: Path, upstreams: Upstreams, network_kind: str
) -> None:
    from .shared_stores import store_url

    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=store_url(network_kind, tmp_path))).start()
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        item = {"items": [{"type": "message", "role": "user", "content": "x"}]}
        for bad in ("conv_%00x", "%00", "c" * 3000):
            ask = {"model": "gpt-3.5-turbo", "input": "x", "conversation": bad.replace("%00", "\x00")}
            cases = [("POST", f"/v1/conversations/{bad}/items", item), ("GET", f"/v1/conversations/{bad}", None),
                     ("POST", "/v1/responses", ask)]  # fmt: skip
            for method, path, body in cases:
                response = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
                assert response.status_code in (400, 404), (bad[:20], path[:40], response.text[:200])
    finally:
        server.stop()
    assert "unexpected" not in server.log() and "store unavailable" not in server.log()


def test_a_turn_that_fails_lets_its_conversation_go_before_the_error_is_told(
    sdk: openai.OpenAI, upstreams: Upstreams
) -> None:
    conversation = sdk.conversations.create()
    for _ in range(5):  # the retry comes the instant the error arrives: it never meets the lock
        upstreams.apps.call(lambda: upstreams.openai.fail_next.append("500"))
        with pytest.raises(openai.InternalServerError):
            sdk.responses.create(model="gpt-3.5-turbo", input="fails", conversation=conversation.id)
        reply = sdk.responses.create(model="gpt-3.5-turbo", input="retried", conversation=conversation.id)
        assert reply.status == "completed"


def test_a_follow_up_from_memory_sends_what_a_read_from_the_store_sends(tmp_path: Path, upstreams: Upstreams) -> None:
    """The history cache against the store, after a deletion (the deleted item still counts toward the
    budget, as its place in the stored running totals does) and at budgets that cut inside the
    history: follow-ups served from memory send the very prompts the same follow-ups send after a
    restart, when each is read from the store."""
    server = ServerProcess(tmp_path, upstreams.env()).start()
    budgets = (150, 200, 300, 4000)  # growing: after a restart, none is covered by an earlier partial read

    def follow_ups(url: str, tip: str) -> tuple[list[Any], dict[str, int]]:
        prompts: list[Any] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for budget in budgets:
                response = ask(client, "and now?", parent=tip, maxModelTokens=budget, maxResponseTokens=50)
                assert response.status_code == 201, response.text
                prompts.append(sent(upstreams)["messages"])
            return prompts, client.get("/healthz").json()["data"]["historyCache"]

    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as client:
            conversation = client.conversations.create()
            for i in range(10):
                question = f"turn {i}: " + "lorem ipsum " * (2 + i % 4)
                reply = client.responses.create(model="gpt-3.5-turbo", input=question, conversation=conversation.id)
            items = list(client.conversations.items.list(conversation.id, order="asc", limit=100))
            doomed = items[16]  # the user message of turn 8: inside every window below
            gone = text_of(doomed)
            assert gone.startswith("turn 8:")
            client.conversations.items.delete(str(doomed.id), conversation_id=conversation.id)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            # Read from the store (the deletion changed the conversation); its path is kept in memory.
            first = ask(c, "after the deletion", parent=reply.output[0].id)
            assert first.status_code == 201, first.text
        tip = first.json()["data"]["id"]
        before = follow_ups(server.url, tip)[1]
        remembered, after = follow_ups(server.url, tip)
        assert after["hits"] - before["hits"] == len(budgets)  # every one of them from memory
        server.stop()
        server.start()
        read, counters = follow_ups(server.url, tip)
        assert counters["hits"] == 0 and counters["misses"] == len(budgets)  # every one of them from the store
    finally:
        server.stop()
    assert remembered == read
    assert len({len(prompt) for prompt in read}) == len(budgets)  # each budget cut the history elsewhere
    assert all(message["content"] != gone for prompt in read for message in prompt)


def test_calls_the_history_ends_with_must_be_answered_first(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """A response that ended in calls is followed by their outputs, as OpenAI's Responses API requires
    (a strict upstream refuses a call left open): a turn that leaves one unanswered is a 400 naming it,
    before any upstream call; answering it goes on."""
    tools: list[Any] = [FN]
    first = sdk.responses.create(model="gpt-3.5-turbo", input="call:f", tools=tools)
    call = first.output[0]
    assert call.type == "function_call"
    calls = len(upstreams.openai.requests)
    left_open: Any
    for left_open in ([{"role": "user", "content": "never mind"}],
                      [{"type": "function_call", "call_id": "call_z", "name": "f", "arguments": "{}"},
                       {"type": "function_call_output", "call_id": "call_z", "output": "z"}]):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="gpt-3.5-turbo", tools=tools, previous_response_id=first.id, input=left_open)
        assert call.call_id in refused.value.message and refused.value.param == "input"
    assert len(upstreams.openai.requests) == calls
    answered = sdk.responses.create(model="gpt-3.5-turbo", tools=tools, previous_response_id=first.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "done"},
        {"role": "user", "content": "thanks"}])  # fmt: skip
    assert answered.status == "completed"


def test_a_cut_between_parallel_calls_never_sends_an_output_without_its_call(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """Two calls made together, then their two outputs: a budget that keeps the second call but not
    the first must not send the first one's output (the upstream, like OpenAI, refuses a tool message
    that answers no call before it). Every budget from nothing to everything is tried."""
    tools: list[Any] = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    made = sdk.responses.create(model="gpt-3.5-turbo", tools=tools, input=[
        {"type": "message", "role": "user", "content": "look both up"},
        {"type": "function_call", "call_id": "call_a", "name": "f", "arguments": '{"q": "first thing"}'},
        {"type": "function_call", "call_id": "call_b", "name": "f", "arguments": '{"q": "second thing"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "the first answer, at some length"},
        {"type": "function_call_output", "call_id": "call_b", "output": "the second answer, at some length"},
    ])  # fmt: skip
    sizes = set()
    with httpx.Client(base_url=v1_server.url, timeout=30) as client:
        for budget in range(60, 260, 2):
            response = ask(client, "and?", parent=made.output[0].id, maxModelTokens=budget, maxResponseTokens=10,
                           model="gpt-3.5-turbo")  # fmt: skip
            if response.status_code == 400 and "maxModelTokens" in response.text:
                continue  # the question alone does not fit
            assert response.status_code == 201, (budget, response.text)
            messages = sent(upstreams)["messages"]
            sizes.add(len(messages))
            answered = {c["id"] for m in messages for c in m.get("tool_calls") or []}
            assert all(m["tool_call_id"] in answered for m in messages if m["role"] == "tool")
    assert len(sizes) >= 5  # the budgets cut the history in many places, between the two calls among them


FN: Any = {"type": "function", "name": "f", "parameters": {"type": "object"}}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"model": "x" * 300}, "model", "Invalid 'model'"),
        ({"model": "gpt-4o-mini\n"}, "model", "Invalid 'model'"),
        ({"reasoning": -1}, "reasoning", "expected an object"),
        ({"reasoning": {"effort": "bogus"}}, "reasoning.effort", "expected one of"),
        ({"text": {"a": 1}}, "text.a", "text.a"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity", "low, medium or high"),
        ({"max_tool_calls": -1}, "max_tool_calls", "positive integer"),
        ({"max_tool_calls": "x"}, "max_tool_calls", "positive integer"),
        ({"prompt_cache_key": 5}, "prompt_cache_key", "string"),
        ({"service_tier": "gold"}, "service_tier", "expected one of"),
        ({"max_output_tokens": 15}, "max_output_tokens", "Expected a value >= 16, but got 15 instead"),
        ({"max_output_tokens": 0}, "max_output_tokens", "Expected a value >= 16"),
        ({"max_output_tokens": -3.0}, "max_output_tokens", "Expected a value >= 16"),
        ({"max_output_tokens": 2.5}, "max_output_tokens", "expected an integer"),
        ({"stream_options": "yes"}, "stream_options", "include_obfuscation"),
        ({"tools": [{**FN, "name": "a b/\u0000"}]}, "tools[0].name", "letters, digits"),
        ({"tools": [{**FN, "strict": "yes"}]}, "tools[0].strict", "true or false"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ],
)
def test_a_field_in_a_shape_openai_refuses_is_refused_by_name(
    v1_server: ServerProcess, upstreams: Upstreams, extra: dict[str, Any], param: str, words: str
) -> None:
    """Fields taken for compatibility are still only taken in the shapes OpenAI takes, and the 400
    names the field, before any upstream call."""
    before = len(upstreams.openai.requests)
    body = {"model": "gpt-4o-mini", "input": "hi", **extra}
    response = httpx.post(v1_server.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert len(upstreams.openai.requests) == before


def test_chat_completions_says_which_field_is_wrong(v1_server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    hi = [{"role": "user", "content": "hi"}]
    for body, words in (({"model": "x" * 300, "messages": hi}, "Invalid 'model'"),
                        ({"model": "gpt-4o-mini", "messages": []}, "Invalid 'messages'"),
                        ({"model": "gpt-4o-mini", "messages": "hi"}, "Invalid 'messages'"),
                        ({"model": "gpt-4o-mini"}, "Missing required parameter: 'messages'"),
                        ({"messages": hi}, "Missing required parameter: 'model'")):  # fmt: skip
        response = httpx.post(v1_server.url + "/v1/chat/completions", json=body, headers=auth)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_a_response_says_when_it_completed_and_is_never_streamed_again(sdk: openai.OpenAI) -> None:
    """``completed_at`` on a completed response (null on any other); retrieving one as a stream is
    OpenAI's resume of a background response, which this gateway does not run: a 400, not a JSON body
    the SDK would read as an empty stream."""
    before = int(time.time())
    response = sdk.responses.create(model="gpt-3.5-turbo", input="when")
    assert response.completed_at is not None and before <= response.completed_at <= time.time() + 1
    assert sdk.responses.retrieve(response.id).completed_at == response.completed_at
    with pytest.raises(openai.BadRequestError) as refused:
        list(sdk.responses.retrieve(response.id, stream=True))
    assert refused.value.param == "stream"


def test_cache_key_tier_and_verbosity_reach_a_chat_upstream_only_when_given(
    sdk: openai.OpenAI, upstreams: Upstreams
) -> None:
    plain = sdk.responses.create(model="gpt-4o-mini", input="plain", max_output_tokens=16)
    body = sent(upstreams)
    assert body["max_tokens"] == 16  # OpenAI's smallest limit is taken
    assert not {"prompt_cache_key", "service_tier", "verbosity"} & set(body), body
    assert plain.prompt_cache_key is None and plain.service_tier is None
    asked = sdk.responses.create(model="gpt-4o-mini", input="cached", prompt_cache_key="tenant-7",
                                 service_tier="flex", text={"verbosity": "low"})  # fmt: skip
    body = sent(upstreams)
    assert (body["prompt_cache_key"], body["service_tier"], body["verbosity"]) == ("tenant-7", "flex", "low")
    assert asked.prompt_cache_key == "tenant-7" and asked.service_tier == "flex"
    assert asked.text is not None and asked.text.verbosity == "low"
    assert sdk.responses.retrieve(asked.id).service_tier == "flex"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt-4o-mini", input="too small", max_output_tokens=10)
    assert refused.value.code == "integer_below_min_value" and refused.value.param == "max_output_tokens"


def test_user_and_safety_identifier_are_each_passed_on_and_echoed(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    both = sdk.responses.create(model="gpt-4o-mini", input="who?", user="u-1", safety_identifier="sid-1",
                                max_tool_calls=3)  # fmt: skip
    body = sent(upstreams)
    assert (body["user"], body["safety_identifier"]) == ("u-1", "sid-1")
    assert (both.user, both.safety_identifier, both.max_tool_calls) == ("u-1", "sid-1", 3)
    kept = sdk.responses.retrieve(both.id)
    assert (kept.user, kept.safety_identifier, kept.max_tool_calls) == ("u-1", "sid-1", 3)
    alone = sdk.responses.create(model="gpt-4o-mini", input="who now?", safety_identifier="sid-2")
    body = sent(upstreams)
    assert body["safety_identifier"] == "sid-2" and "user" not in body
    assert (alone.user, alone.safety_identifier) == (None, "sid-2")


def test_allowed_tools_reach_a_chat_upstream_in_its_shape(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    tools: list[Any] = [{"type": "function", "name": name, "parameters": {"type": "object"}} for name in ("a", "b")]
    choice: Any = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "b"}]}
    allowed = sdk.responses.create(model="gpt-4o-mini", input="call:b", tools=tools, tool_choice=choice)
    only_b = [{"type": "function", "function": {"name": "b"}}]
    assert sent(upstreams)["tool_choice"] == {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "auto", "tools": only_b},
    }
    assert allowed.output[0].type == "function_call" and allowed.output[0].name == "b"
    assert allowed.tool_choice.type == "allowed_tools"  # type: ignore[union-attr]
    barred = sdk.responses.create(model="gpt-4o-mini", input="call:a", tools=tools, tool_choice=choice)
    assert barred.output[0].type == "message"  # "a" is not among the allowed: the model cannot call it
    calls = len(upstreams.openai.requests)
    unknown_tool = [{"type": "function", "name": "c"}]
    cases: list[tuple[Any, str]] = [({**choice, "tools": unknown_tool}, "tool_choice.tools[0].name"),
                                    ({**choice, "mode": "sometimes"}, "tool_choice.mode"),
                                    ({**choice, "tools": []}, "tool_choice.tools")]  # fmt: skip
    for wrong, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="gpt-4o-mini", input="x", tools=tools, tool_choice=wrong)
        assert refused.value.param == param
    assert len(upstreams.openai.requests) == calls


def test_at_most_twenty_items_are_added_at_a_time(sdk: openai.OpenAI) -> None:
    items: Any = [{"type": "message", "role": "user", "content": f"item {i}"} for i in range(21)]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.conversations.create(items=items)
    assert (refused.value.code, refused.value.param) == ("array_above_max_length", "items")
    assert "maximum length 20, but got an array with length 21" in refused.value.message
    conversation = sdk.conversations.create(items=items[:20])
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.conversations.items.create(conversation.id, items=items)
    assert refused.value.code == "array_above_max_length"
    assert len(sdk.conversations.items.create(conversation.id, items=items[:20]).data) == 20
    assert len(list(sdk.conversations.items.list(conversation.id, limit=100))) == 40


def test_a_call_whose_output_was_deleted_is_left_out_of_later_prompts(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """A client deleted a function_call_output from its conversation: the call it answered is left out
    with it (as a deleted call's output is), never sent unanswered (upstreams refuse that prompt)."""
    tools: list[Any] = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    conversation = sdk.conversations.create()
    called = sdk.responses.create(model="gpt-3.5-turbo", input="call:lookup", tools=tools, conversation=conversation.id)
    call_id = called.output[0].call_id  # type: ignore[union-attr]
    outputs: Any = [{"type": "function_call_output", "call_id": call_id, "output": "42"}]
    sdk.responses.create(model="gpt-3.5-turbo", tools=tools, conversation=conversation.id, input=outputs)
    output = next(i for i in sdk.conversations.items.list(conversation.id) if i.type == "function_call_output")
    sdk.conversations.items.delete(output.id, conversation_id=conversation.id)
    after = sdk.responses.create(model="gpt-3.5-turbo", input="next", tools=tools, conversation=conversation.id)
    assert after.status == "completed"
    messages = sent(upstreams)["messages"]
    assert not any(m.get("tool_calls") for m in messages) and not any(m["role"] == "tool" for m in messages)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"], messages


def test_conversation_update_and_items_create_refuse_unknown_fields(sdk: openai.OpenAI) -> None:
    conversation = sdk.conversations.create()
    item: Any = [{"type": "message", "role": "user", "content": "hi"}]
    bogus = {"bogus": 1}
    for call in (lambda: sdk.conversations.update(conversation.id, metadata={}, extra_body=bogus),
                 lambda: sdk.conversations.items.create(conversation.id, items=item, extra_body=bogus)):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert refused.value.param == "bogus"
    assert list(sdk.conversations.items.list(conversation.id)) == []  # nothing was added


def test_an_added_output_must_answer_a_call_of_its_conversation(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """A function_call_output added to a conversation (create or items.create) answers a call the
    conversation, or the items before it, hold; one that answers none would be left out of every prompt
    (OpenAI refuses the next response): it is refused where it is added, and nothing is added."""
    orphan: Any = [{"type": "function_call_output", "call_id": "call_nope", "output": "42"}]

    def listed() -> list[str]:
        page: Any = sdk.get("/conversations", cast_to=object)
        return [c["id"] for c in page["data"]]

    before = listed()
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.conversations.create(items=orphan)
    assert refused.value.param == "items[0].call_id" and "call_nope" in refused.value.message
    assert listed() == before  # no conversation was made
    paired: Any = [{"type": "function_call", "call_id": "call_a", "name": "lookup", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "call_a", "output": "seven"}]  # fmt: skip
    conversation = sdk.conversations.create(items=paired)
    tools: list[Any] = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    called = sdk.responses.create(model="gpt-3.5-turbo", input="call:lookup", tools=tools, conversation=conversation.id)
    call_id = called.output[0].call_id  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.conversations.items.create(conversation.id, items=[{"type": "message", "role": "user", "content": "x"},
                                                               *orphan])  # fmt: skip
    assert refused.value.param == "items[1].call_id"
    assert len(list(sdk.conversations.items.list(conversation.id))) == 4  # nothing was added
    answer: Any = [{"type": "function_call_output", "call_id": call_id, "output": "forty-two"}]
    sdk.conversations.items.create(conversation.id, items=answer)  # the call the conversation ends with
    after = sdk.responses.create(model="gpt-3.5-turbo", input="next", tools=tools, conversation=conversation.id)
    assert after.status == "completed"
    assert [m["role"] for m in sent(upstreams)["messages"]] == ["assistant", "tool", "user", "assistant", "tool",
                                                                 "user"]  # fmt: skip


def test_a_call_takes_one_output(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """A second function_call_output for a call (added to its conversation, twice in one batch, or sent
    as a turn's input) is refused where it is given: stored, it broke every later prompt."""
    tools: list[Any] = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    conversation = sdk.conversations.create()
    called = sdk.responses.create(model="gpt-3.5-turbo", input="call:lookup", tools=tools, conversation=conversation.id)
    call_id = called.output[0].call_id  # type: ignore[union-attr]
    answer: Any = {"type": "function_call_output", "call_id": call_id, "output": "1"}
    again: Any = {**answer, "output": "2"}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.conversations.items.create(conversation.id, items=[answer, again])
    assert refused.value.param == "items[1].call_id" and refused.value.code == "call_already_answered"
    sdk.conversations.items.create(conversation.id, items=[answer])
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.conversations.items.create(conversation.id, items=[again])
    assert refused.value.param == "items[0].call_id" and str(call_id) in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt-3.5-turbo", tools=tools, conversation=conversation.id,
                             input=[again])  # fmt: skip
    assert refused.value.code == "call_already_answered"
    after = sdk.responses.create(model="gpt-3.5-turbo", input="next", conversation=conversation.id)
    assert after.status == "completed"
    assert [m["role"] for m in sent(upstreams)["messages"]] == ["user", "assistant", "tool", "user"]


def test_a_deleted_item_is_no_place_to_go_on_from(sdk: openai.OpenAI, v1_server: ServerProcess) -> None:
    """An item deleted from its conversation is gone for every door: named as the parent of a follow-up
    (the original route's parentMessageId, Responses' previous_response_id) it is not found."""
    conversation = sdk.conversations.create()
    first = sdk.responses.create(model="gpt-3.5-turbo", input="one", conversation=conversation.id)
    sdk.responses.create(model="gpt-3.5-turbo", input="two", conversation=conversation.id)
    reply_id = str(first.output[0].id)
    sdk.conversations.items.delete(reply_id, conversation_id=conversation.id)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt-3.5-turbo", input="from it", previous_response_id=reply_id)
    assert refused.value.code == "previous_response_not_found"
    with httpx.Client(base_url=v1_server.url, timeout=30) as c:
        assert ask(c, "from it", parent=reply_id).status_code == 404
    later = sdk.responses.create(model="gpt-3.5-turbo", input="three", conversation=conversation.id)
    assert later.status == "completed"  # the conversation goes on without it


def test_a_json_schema_format_is_checked_and_passed_on_whole(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """text.format json_schema: name (required, OpenAI's pattern), schema, description and strict reach the
    upstream and the echo; what OpenAI refuses is refused with its param."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    fmt: Any = {"type": "json_schema", "name": "person-1", "description": "A person record", "schema": schema,
                "strict": True}  # fmt: skip
    response = sdk.responses.create(model="gpt-3.5-turbo", input="x", text={"format": fmt})
    assert sent(upstreams)["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "person-1", "description": "A person record", "schema": schema, "strict": True}}  # fmt: skip
    assert response.text.format.description == "A person record"  # type: ignore[union-attr]
    no_name = {k: v for k, v in fmt.items() if k != "name"}
    for bad, param, code in ((no_name, "text.format.name", "missing_required_parameter"),
                             ({**fmt, "name": "bad name!"}, "text.format.name", None),
                             ({**fmt, "strict": "yes"}, "text.format.strict", None),
                             ({**fmt, "schema": None}, "text.format.schema", "missing_required_parameter"),
                             ({**fmt, "bogus": 1}, "text.format.bogus", "unknown_parameter")):  # fmt: skip
        text: Any = {"format": bad}
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.responses.create(model="gpt-3.5-turbo", input="x", text=text)
        assert refused.value.param == param and (code is None or refused.value.code == code), refused.value.body


def test_an_image_in_a_function_call_output_is_refused_not_dropped(sdk: openai.OpenAI, upstreams: Upstreams) -> None:
    """A chat-completions tool message holds text only: an image in a call's output would be lost on the
    way, so it is refused with the part named; text parts are the output's text."""
    tools: list[Any] = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    called = sdk.responses.create(model="gpt-3.5-turbo", input="call:lookup", tools=tools)
    call_id = called.output[0].call_id  # type: ignore[union-attr]
    image: Any = [
        {
            "type": "function_call_output",
            "call_id": call_id,
            "output": [
                {"type": "input_text", "text": "see"},
                {"type": "input_image", "image_url": "https://example.com/a.png"},
            ],
        }
    ]
    asked = len(upstreams.openai.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt-3.5-turbo", previous_response_id=called.id, tools=tools, input=image)
    assert refused.value.param == "input[0].output[1].type"
    assert len(upstreams.openai.requests) == asked
    text: Any = [{"type": "function_call_output", "call_id": call_id, "output": [{"type": "input_text", "text": "7"}]}]
    sdk.responses.create(model="gpt-3.5-turbo", previous_response_id=called.id, tools=tools, input=text)
    assert sent(upstreams)["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": "7"}


def test_a_response_may_answer_its_history_without_input(
    sdk: openai.OpenAI, v1_server: ServerProcess, upstreams: Upstreams
) -> None:
    """``input`` is optional (the SDK's type): items added to a conversation, then a response on it, is
    the conversation's own question; so is a previous_response_id alone. With neither, input is missing."""
    conversation = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "hello there"}])
    answered = sdk.responses.create(model="gpt-3.5-turbo", conversation=conversation.id)
    assert answered.output_text == "echo(1): hello there"
    assert [m["role"] for m in sent(upstreams)["messages"]] == ["user"]
    assert [i.type for i in sdk.conversations.items.list(conversation.id, order="asc")] == ["message", "message"]
    again = sdk.responses.create(model="gpt-3.5-turbo", previous_response_id=answered.id)
    assert again.status == "completed"
    assert [m["role"] for m in sent(upstreams)["messages"]] == ["user", "assistant"]
    with pytest.raises(openai.BadRequestError) as missing:
        sdk.post("/responses", body={"model": "gpt-3.5-turbo"}, cast_to=object)
    assert (missing.value.param, missing.value.code) == ("input", "missing_required_parameter")
    # No input, and the reply failed before its first word: the response told of is kept, as failed.
    before = len(list(sdk.conversations.items.list(conversation.id)))
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append("cut0"))
    events = _failed_stream(v1_server, {"conversation": conversation.id})
    assert events[-1]["type"] == "response.failed"
    assert sdk.responses.retrieve(events[-1]["response"]["id"]).status == "failed"
    assert len(list(sdk.conversations.items.list(conversation.id))) == before
    with pytest.raises(openai.BadRequestError) as nothing:  # an empty conversation holds no question
        sdk.responses.create(model="gpt-3.5-turbo", conversation=sdk.conversations.create().id)
    assert nothing.value.param == "input"
    emptied = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "gone soon"}])
    only = next(iter(sdk.conversations.items.list(emptied.id)))
    sdk.conversations.items.delete(str(only.id), conversation_id=emptied.id)
    asked = len(upstreams.openai.requests)
    with pytest.raises(openai.BadRequestError) as nothing:  # nor does one whose items were all deleted
        sdk.responses.create(model="gpt-3.5-turbo", conversation=emptied.id)
    assert nothing.value.param == "input" and len(upstreams.openai.requests) == asked


def test_the_organization_and_project_the_client_names_reach_the_upstream(v1_server: ServerProcess,
                                                                          upstreams: Upstreams) -> None:  # fmt: skip
    """The SDK's organization= and project= (OpenAI-Organization, OpenAI-Project) scope and bill a key of
    several: passed on by the Responses and Chat Completions doors, as the original route's apiOrg is."""
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=KEY, max_retries=0, organization="org-123",
                       project="proj_abc") as scoped:  # fmt: skip
        scoped.responses.create(model="gpt-3.5-turbo", input="scoped")
        headers = upstreams.openai.requests[-1]["headers"]
        assert (headers["OpenAI-Organization"], headers["OpenAI-Project"]) == ("org-123", "proj_abc")
        for stream in (False, True):
            list(scoped.chat.completions.create(model="gpt-3.5-turbo", stream=stream,
                                                messages=[{"role": "user", "content": "scoped"}]))  # fmt: skip
            headers = upstreams.openai.requests[-1]["headers"]
            assert (headers["OpenAI-Organization"], headers["OpenAI-Project"]) == ("org-123", "proj_abc")
    with openai.OpenAI(base_url=v1_server.url + "/v1", api_key=KEY, max_retries=0) as plain:
        plain.responses.create(model="gpt-3.5-turbo", input="unscoped")
        assert "OpenAI-Organization" not in upstreams.openai.requests[-1]["headers"]
        with pytest.raises(openai.BadRequestError) as refused:
            plain.responses.create(model="gpt-3.5-turbo", input="x", extra_headers={"OpenAI-Project": "p" * 300})
        assert refused.value.param == "openai-project"


def test_an_output_may_answer_a_call_far_back(sdk: openai.OpenAI) -> None:
    """An added output's call is looked for in the last turns first, then as far back as any model's
    window goes: a call made some 20,000 tokens ago is found (and its answer, once given, is too)."""
    call: Any = [{"type": "function_call", "call_id": "call_old", "name": "lookup", "arguments": "{}"}]
    conversation = sdk.conversations.create(items=call)
    filler: Any = [{"type": "message", "role": "user", "content": "lorem ipsum dolor " * 300} for _ in range(20)]
    sdk.conversations.items.create(conversation.id, items=filler)  # ~20,000 tokens after the call
    answer: Any = [{"type": "function_call_output", "call_id": "call_old", "output": "late"}]
    sdk.conversations.items.create(conversation.id, items=answer)
    with pytest.raises(openai.BadRequestError) as again:
        sdk.conversations.items.create(conversation.id, items=answer)
    assert again.value.code == "call_already_answered"
