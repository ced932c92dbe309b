"""The Responses API (``/v1/responses``) with the OpenAI SDK, on a chat-completions upstream."""

import json
import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from ai.gateway import responses_store
from ai.models import StoredResponse, UsageStatus
from ai.tasks import responses_purge_task
from panel.celery import app as celery_app
from tests.ai.conftest import make_model, slow_response_writes, wait_for_usage
from tests.openai_schema import validate

pytestmark = pytest.mark.django_db(transaction=True)

BASES = ["/v1", "/api/v1", "/api/ai/openai/v1"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}


def _client(world, key=None, base="/v1"):
    return openai.OpenAI(base_url=world.base(base), api_key=key or world.alice_key, max_retries=0)


def _post(world, body, key=None):
    return httpx.post(
        f"{world.base()}/responses",
        headers={"Authorization": f"Bearer {key or world.alice_key}"},
        json=body,
        timeout=10,
    )


def _stored(count: int = 1) -> list[StoredResponse]:
    """The stored responses once ``count`` are written (they are written off the path)."""
    for _ in range(500):
        if responses_store.is_idle() and StoredResponse.objects.count() >= count:
            return list(StoredResponse.objects.order_by("created_at"))
        time.sleep(0.01)
    raise AssertionError(f"expected {count} stored responses")


@pytest.mark.parametrize("base", BASES)
def test_it_answers_a_plain_response_under_every_base_url(world, base):
    response = _client(world, base=base).responses.create(model="acme-chat", input="Hello there")
    assert response.id.startswith("resp_")
    assert response.object == "response" and response.status == "completed"
    assert response.model == "acme-chat"
    assert response.output_text.startswith("tok0 tok1 ")
    assert response.usage.input_tokens == 2 and response.usage.output_tokens == 20
    assert response.usage.total_tokens == 22
    (event,) = wait_for_usage(1)
    assert event.route == "responses" and event.prompt_tokens == 2
    assert event.completion_tokens == 20 and not event.is_stream


def test_it_returns_a_response_that_matches_openais_schema(world):
    reply = _post(world, {"model": "acme-chat", "input": "Hi", "metadata": {"k": "v"}})
    assert reply.status_code == 200
    body = reply.json()
    validate(body, "Response")
    assert body["metadata"] == {"k": "v"} and body["store"] is True
    (message,) = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text"
    assert reply.headers["x-switchboard-upstream"] == "acme-chat-primary"


def test_it_sends_instructions_as_a_system_message(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    response = _client(world).responses.create(
        model="echo",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "No emojis."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
        max_output_tokens=50,
        temperature=0.5,
        top_p=0.9,
        user="end-user",
    )
    sent = json.loads(response.output_text)
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "No emojis."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert sent["user"] == "end-user" and sent["model"] == "fake-chat"
    assert response.instructions == "Be brief." and response.max_output_tokens == 50


def test_it_returns_a_function_call_and_continues_with_its_output(world):
    client = _client(world)
    first = client.responses.create(model="acme-chat", input="Weather in Paris?", tools=[WEATHER])
    validate(first.model_dump(exclude_unset=True), "Response")
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"query": "Weather in Paris?"}
    assert call.call_id.startswith("call_")
    assert first.tools[0].name == "get_weather"
    _stored(1)
    second = client.responses.create(
        model="acme-chat",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text.startswith("tok0 ")
    assert second.previous_response_id == first.id


def test_it_sends_the_whole_conversation_upstream_when_continuing(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    client = _client(world)
    first = client.responses.create(model="acme-chat", input="My name is Ada.")
    second = client.responses.create(model="echo", previous_response_id=first.id, input="Name?")
    sent = json.loads(second.output_text)["messages"]
    assert sent == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Name?"},
    ]


def test_it_translates_function_call_items_into_one_assistant_turn(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    calls = [
        {"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"}
        for i in (1, 2)
    ]
    outputs = [{"type": "function_call_output", "call_id": f"c{i}", "output": "ok"} for i in (1, 2)]
    response = _client(world).responses.create(
        model="echo", input=[{"role": "user", "content": "go"}, *calls, *outputs]
    )
    messages = json.loads(response.output_text)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "ok"}


def test_it_streams_the_responses_events(world):
    stream = _client(world).responses.create(model="acme-chat", input="Hi", stream=True)
    events = list(stream)
    for event in events:
        validate(event.model_dump(exclude_unset=True), "ResponseStreamEvent")
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas and deltas.startswith("tok0 tok1 ")
    assert final.usage.output_tokens == 20 and final.status == "completed"
    (event,) = wait_for_usage(1)
    assert event.route == "responses" and event.is_stream and event.completion_tokens == 20
    assert _stored(1)[0].response["output"][0]["content"][0]["text"] == deltas


def test_it_streams_function_call_arguments(world):
    stream = _client(world).responses.create(
        model="acme-chat", input="Weather in Rome?", tools=[WEATHER], stream=True
    )
    events = list(stream)
    for event in events:
        validate(event.model_dump(exclude_unset=True), "ResponseStreamEvent")
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert "".join(deltas) == done.arguments == json.dumps({"query": "Weather in Rome?"})
    assert done.name == "get_weather"
    (call,) = events[-1].response.output
    assert call.type == "function_call" and call.arguments == done.arguments


def test_it_marks_a_response_cut_at_max_output_tokens_incomplete(world):
    client = _client(world)
    response = client.responses.create(model="acme-chat", input="Hi", max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 "
    events = list(
        client.responses.create(model="acme-chat", input="Hi", max_output_tokens=5, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    validate(events[-1].model_dump(exclude_unset=True), "ResponseStreamEvent")


def test_it_ends_a_stream_that_fails_midway_with_response_failed(world, acme, fake_upstream):
    make_model("flaky", owner=acme, base_urls=[fake_upstream.base_url(drop_after=3)])
    events = list(_client(world).responses.create(model="flaky", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    validate(events[-1].model_dump(exclude_unset=True), "ResponseStreamEvent")
    assert events[-1].response.error.code == "server_error"
    (event,) = wait_for_usage(1)
    assert event.status == UsageStatus.UPSTREAM_ERROR and event.route == "responses"
    assert responses_store.is_idle() and not StoredResponse.objects.exists()


def test_a_client_leaving_mid_stream_leaves_one_cancelled_event(world, acme, fake_upstream):
    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=50)])
    with httpx.stream(
        "POST",
        f"{world.base()}/responses",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "slow", "input": "Hi", "stream": True},
        timeout=10,
    ) as reply:
        lines = reply.iter_lines()
        while "response.output_text.delta" not in next(lines):
            pass
    (event,) = wait_for_usage(1)
    assert event.status == UsageStatus.CLIENT_CANCELLED and event.route == "responses"


def test_it_retrieves_and_deletes_a_stored_response(world):
    client = _client(world)
    created = client.responses.create(model="acme-chat", input="Hi")
    _stored(1)
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    validate(fetched.model_dump(exclude_unset=True), "Response")
    items = httpx.get(
        f"{world.base()}/responses/{created.id}/input_items",
        headers={"Authorization": f"Bearer {world.alice_key}"},
    ).json()
    validate(items, "ResponseItemList")
    assert [i["content"][0]["text"] for i in items["data"]] == ["Hi"]
    assert items["first_id"] == items["data"][0]["id"] and items["has_more"] is False
    client.responses.delete(created.id)
    assert not StoredResponse.objects.exists()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_it_finds_a_response_at_once_before_it_is_written(world):
    client = _client(world)
    created = client.responses.create(model="acme-chat", input="Hi")
    assert client.responses.retrieve(created.id).id == created.id


def test_it_does_not_store_a_response_with_store_false(world):
    client = _client(world)
    created = client.responses.create(model="acme-chat", input="Hi", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert responses_store.is_idle() and not StoredResponse.objects.exists()


@pytest.mark.parametrize("who", ["bob_key", "charlie_key"])
def test_nobody_else_can_see_continue_or_delete_a_response(world, who):
    created = _client(world).responses.create(model="acme-chat", input="Secret")
    _stored(1)
    other = _client(world, key=getattr(world, who))
    with pytest.raises(openai.NotFoundError) as retrieved:
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    model = "acme-chat" if who == "bob_key" else "charlie-chat"
    with pytest.raises(openai.NotFoundError) as continued:
        other.responses.create(model=model, input="Hi", previous_response_id=created.id)
    assert retrieved.value.body["message"] == f"Response with id '{created.id}' not found."
    assert continued.value.body["param"] == "previous_response_id"
    assert StoredResponse.objects.count() == 1


def test_an_expired_response_is_gone(world):
    client = _client(world)
    created = client.responses.create(model="acme-chat", input="Hi")
    (row,) = _stored(1)
    StoredResponse.objects.filter(id=row.id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="acme-chat", input="Hi", previous_response_id=created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    responses_purge_task()  # what beat runs hourly
    assert not StoredResponse.objects.exists()


def test_beat_purges_expired_responses():
    entries = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert responses_purge_task.name in entries


def test_an_outsider_cannot_use_a_model_through_responses(world):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(world, key=world.charlie_key).responses.create(model="acme-chat", input="Hi")
    assert caught.value.body["code"] == "model_not_found"
    assert "acme-chat" not in caught.value.body.get("available_models", [])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"background": True}, "background"),
        ({"reasoning": "high"}, "reasoning"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"reasoning": {"summary": 1}}, "reasoning.summary"),
        ({"include": "reasoning.encrypted_content"}, "include"),
        ({"include": [1]}, "include"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"truncation": True}, "truncation"),
        ({"background": "yes"}, "background"),
        ({"input": 7}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        ({"max_output_tokens": -1}, "max_output_tokens"),
        ({"max_output_tokens": 2**40}, "max_output_tokens"),
        ({"max_output_tokens": "many"}, "max_output_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_it_refuses_what_it_cannot_honour_with_a_400(world, body, param):
    reply = _post(world, {"model": "acme-chat", "input": "Hi", **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert wait_for_usage(0) == []


def test_it_names_unsupported_fields_in_its_message(world):
    reply = _post(world, {"model": "acme-chat", "input": "Hi", "prompt": {}, "conversation": "c"})
    assert "conversation, prompt" in reply.json()["error"]["message"]


def test_it_refuses_a_max_output_tokens_above_the_models_limit(world):
    world.chat.config = {"max_output_tokens": 100}
    world.chat.save()
    reply = _post(world, {"model": "acme-chat", "input": "Hi", "max_output_tokens": 101})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "max_output_tokens"
    assert "max_output_tokens" in reply.json()["error"]["message"]


def test_an_unknown_model_is_a_404_for_the_sdk(world):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(world).responses.create(model="no-such-model", input="Hi")
    assert caught.value.body["code"] == "model_not_found"


EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
}


@pytest.mark.parametrize("tools", [[], [WEATHER]])
def test_each_event_on_the_wire_matches_its_schema(world, tools):
    body = {"model": "acme-chat", "input": "Hi", "stream": True, "tools": tools}
    with httpx.stream(
        "POST",
        f"{world.base()}/responses",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json=body,
        timeout=10,
    ) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        blocks = reply.read().decode().strip().split("\n\n")
    kinds = []
    for block in blocks:
        name_line, data_line = block.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {event['type']}"
        validate(event, EVENT_SCHEMAS[event["type"]])
        kinds.append(event["type"])
    assert kinds[-1] == "response.completed"
    assert ("response.function_call_arguments.done" in kinds) == bool(tools)


def test_it_pages_the_input_items_of_a_continued_conversation(world):
    client = _client(world)
    first = client.responses.create(model="acme-chat", input="One")
    second = client.responses.create(model="acme-chat", previous_response_id=first.id, input="Two")
    url = f"{world.base()}/responses/{second.id}/input_items"
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    page = httpx.get(url, params={"order": "asc", "limit": 2}, headers=auth).json()
    validate(page, "ResponseItemList")
    assert [i["role"] for i in page["data"]] == ["user", "assistant"] and page["has_more"]
    rest = httpx.get(url, params={"order": "asc", "after": page["last_id"]}, headers=auth).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["Two"] and not rest["has_more"]
    assert httpx.get(url, params={"limit": 0}, headers=auth).status_code == 400


def test_it_reports_the_upstreams_cached_and_reasoning_tokens():
    from ai.gateway.pricing import usage_from_block
    from ai.gateway.responses_output import usage_block

    block = {
        "prompt_tokens": 100,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    usage = usage_block(usage_from_block(block))
    validate(usage, "ResponseUsage")
    assert usage["input_tokens_details"]["cached_tokens"] == 60
    assert usage["output_tokens_details"]["reasoning_tokens"] == 12
    assert usage["total_tokens"] == 130


def test_it_sends_an_image_part_as_a_chat_image_url(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}
    text = {"type": "input_text", "text": "What is it?"}
    response = _client(world).responses.create(
        model="echo", input=[{"role": "user", "content": [text, image]}]
    )
    (message,) = json.loads(response.output_text)["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]


# --- reasoning, include, truncation; a stored response replayed as its stream ---------------


def test_reasoning_effort_is_sent_as_chat_reasoning_effort_and_echoed(world, acme, fake_upstream):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    response = _client(world).responses.create(
        model="echo",
        input="Hi",
        reasoning={"effort": "high", "summary": "auto"},
        include=["reasoning.encrypted_content", "message.output_text.logprobs"],
        truncation="disabled",
    )
    sent = json.loads(response.output_text)
    assert sent["reasoning_effort"] == "high"
    assert not {"reasoning", "include", "truncation"} & set(sent)
    assert (response.reasoning.effort, response.reasoning.summary) == ("high", "auto")
    assert response.truncation == "disabled"


def _long(word: str) -> str:
    return " ".join([word] * 100)


@pytest.mark.parametrize("context", [106, None])
def test_truncation_auto_drops_the_oldest_items_until_the_prompt_fits(
    world, acme, fake_upstream, context
):
    model = make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    model.config = {"context_window": context} if context else {}
    model.save()
    items = [
        {"role": "user", "content": _long("old")},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"role": "user", "content": _long("new")},
        {"role": "user", "content": "Name?"},
    ]
    response = _client(world).responses.create(
        model="echo", instructions="Be brief.", input=items, truncation="auto"
    )
    sent = json.loads(response.output_text)["messages"]
    if context:  # the instructions stay; the call went with its output
        assert sent == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": _long("new")},
            {"role": "user", "content": "Name?"},
        ]
    else:  # no context size known: nothing dropped
        assert len(sent) == 6
    assert response.truncation == "auto"
    (row,) = _stored(1)
    assert len(row.input_items) == 5  # the stored conversation is whole


def test_replaying_a_stored_response_gives_its_event_stream(world):
    client = _client(world)
    created = client.responses.create(model="acme-chat", input="Hi")
    events = list(client.responses.retrieve(created.id, stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[4].delta == created.output_text
    assert events[-1].response.id == created.id
    assert events[-1].response.output_text == created.output_text


def test_replaying_another_tenants_response_is_a_404(world):
    created = _client(world).responses.create(model="acme-chat", input="Secret")
    _stored(1)
    reply = httpx.get(
        f"{world.base()}/responses/{created.id}?stream=true",
        headers={"Authorization": f"Bearer {world.charlie_key}"},
    )
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "response_id"


def test_replaying_with_a_bad_stream_flag_is_a_400(world):
    created = _client(world).responses.create(model="acme-chat", input="Hi")
    reply = httpx.get(
        f"{world.base()}/responses/{created.id}?stream=yes",
        headers={"Authorization": f"Bearer {world.alice_key}"},
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "stream"


def test_background_is_refused_naming_it(world):
    reply = _post(world, {"model": "acme-chat", "input": "Hi", "background": True})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "background"
    assert "background" in reply.json()["error"]["message"]
    assert wait_for_usage(0) == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_another_process_finds_a_response_the_moment_its_create_returns(world, monkeypatch, stream):
    slow_response_writes(monkeypatch, 0.3)
    client = _client(world)
    if stream:
        events = list(client.responses.create(model="acme-chat", input="Hi", stream=True))
        assert events[-1].type == "response.completed"
        created_id = events[-1].response.id
    else:
        created_id = client.responses.create(model="acme-chat", input="Hi").id
    # The row is what another process reads; and this one forgets what it held in memory.
    assert StoredResponse.objects.filter(id=created_id).exists()
    monkeypatch.setattr(responses_store, "_pending", {})
    assert client.responses.retrieve(created_id).id == created_id
    follow = client.responses.create(
        model="acme-chat", input="And then?", previous_response_id=created_id
    )
    assert follow.previous_response_id == created_id


def test_a_response_created_on_one_process_is_found_at_once_on_another(world):
    from tests.servers import start_gateway, wait_until_serving

    servers = [start_gateway(None) for _ in range(2)]
    try:
        for url, _ in servers:
            wait_until_serving(f"{url}/healthz")
        first, second = (
            openai.OpenAI(base_url=f"{url}/v1", api_key=world.alice_key, max_retries=0)
            for url, _ in servers
        )
        for _ in range(3):
            created = first.responses.create(model="acme-chat", input="Hi")
            assert second.responses.retrieve(created.id).id == created.id
            events = list(second.responses.create(model="acme-chat", input="Hi", stream=True))
            streamed = events[-1].response.id
            follow = first.responses.create(
                model="acme-chat", input="More", previous_response_id=streamed
            )
            assert follow.previous_response_id == streamed
    finally:
        for _, process in servers:
            process.terminate()
            process.wait(timeout=10)


def test_a_failed_write_still_answers_and_is_retried(world, monkeypatch):
    from django.db import DatabaseError

    insert, calls = responses_store._insert, []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise DatabaseError("the database went away")
        insert(batch)

    monkeypatch.setattr(responses_store, "_insert", flaky)
    monkeypatch.setattr(responses_store, "RETRY_SECONDS", 0.01)
    client = _client(world)
    created = client.responses.create(model="acme-chat", input="Hi")
    assert client.responses.retrieve(created.id).id == created.id  # from this process's memory
    [row] = _stored(1)
    assert row.id == created.id and len(calls) == 2
