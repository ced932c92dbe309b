"""Issue 18's chat page, server side: regenerate, edit and resend, titles, the picker, and
errors that name their real cause."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from ai.consumers import plain_words
from ai.models import Conversation, InstanceStatus, Message
from ai.services.chat import conversation_title
from panel.errors import (
    InsufficientQuota,
    ModelNotAvailable,
    ModelStarting,
    RateLimited,
    UpstreamError,
    UpstreamRateLimited,
)
from tests.ai.conftest import make_model
from tests.chat.test_consumer import _connect, _until
from tests.instances import local_world
from tests.instances.local_world import set_status

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server


@pytest.fixture
def echo(acme, fake_upstream, world):
    """A model that answers with the request it received: what the model was shown."""
    return make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])


def _seen_by_model(reply: Message) -> list[str]:
    return [m["content"] for m in json.loads(reply.content)["messages"]]


async def _say(communicator, model, text, conversation=None):
    await communicator.send_json_to(
        {"type": "send", "model_id": model.id, "content": text, "conversation": conversation}
    )
    done, seen = await _until(communicator, "done")
    return done, seen


async def _turns(conversation_id) -> list[tuple[str, str]]:
    return [
        (m.role, m.content)
        async for m in Message.objects.filter(conversation_id=conversation_id).order_by("id")
    ]


async def test_regenerate_replaces_the_last_reply_and_keeps_one_answer(echo, alice):
    communicator, _, _ = await _connect(alice)
    first, seen = await _say(communicator, echo, "Hello")
    asked = next(m for m in seen if m["type"] == "started")["user_message"]

    await communicator.send_json_to(
        {"type": "regenerate", "conversation": first["conversation"], "model_id": echo.id}
    )
    again, seen = await _until(communicator, "done")

    assert next(m for m in seen if m["type"] == "started")["user_message"] == asked
    assert again["status"] == "complete" and again["message"] != first["message"]
    turns = await _turns(first["conversation"])
    assert [role for role, _ in turns] == ["user", "assistant"]
    reply = await Message.objects.aget(pk=again["message"])
    assert _seen_by_model(reply) == ["Hello"]  # the old reply is not shown to the model
    await communicator.disconnect()


async def test_edit_and_resend_cuts_the_conversation_after_the_edited_message(echo, alice):
    communicator, _, _ = await _connect(alice)
    first, seen = await _say(communicator, echo, "one")
    first_question = next(m for m in seen if m["type"] == "started")["user_message"]
    await _say(communicator, echo, "two", conversation=first["conversation"])
    assert len(await _turns(first["conversation"])) == 4

    await communicator.send_json_to(
        {
            "type": "edit",
            "conversation": first["conversation"],
            "message": first_question,
            "content": "uno",
            "model_id": echo.id,
        }
    )
    done, _ = await _until(communicator, "done")

    turns = await _turns(first["conversation"])
    assert [role for role, _ in turns] == ["user", "assistant"]
    assert turns[0] == ("user", "uno")
    assert (await Conversation.objects.aget(pk=first["conversation"])).title == "uno"
    assert _seen_by_model(await Message.objects.aget(pk=done["message"])) == ["uno"]
    await communicator.disconnect()


async def test_no_one_edits_or_regenerates_a_conversation_or_message_not_theirs(
    echo, alice, charlie
):
    alices = await Conversation.objects.acreate(user=alice, title="alice's")
    secret = await Message.objects.acreate(conversation=alices, role="user", content="private")
    communicator, _, _ = await _connect(charlie)
    for request in (
        {"type": "edit", "conversation": alices.id, "message": secret.id, "content": "x"},
        {"type": "regenerate", "conversation": alices.id},
        {"type": "edit", "message": secret.id, "content": "x"},
    ):
        await communicator.send_json_to(request)
        assert await communicator.receive_json_from(timeout=5) == {
            "type": "error",
            "message": "No such conversation.",
        }
    charlies = await Conversation.objects.acreate(user=charlie, title="charlie's")
    await communicator.send_json_to(
        {"type": "edit", "conversation": charlies.id, "message": secret.id, "content": "x"}
    )
    assert (await communicator.receive_json_from(timeout=5))["message"] == "No such message."
    await communicator.disconnect()
    assert await _turns(alices.id) == [("user", "private")]


async def test_an_upstreams_rate_limit_is_not_called_the_users_limit(
    acme, fake_upstream, world, alice
):
    busy = await sync_to_async(make_model)(
        "busy", owner=acme, base_urls=[fake_upstream.base_url(status=429)]
    )
    communicator, _, _ = await _connect(alice)
    done, _ = await _say(communicator, busy, "Hi")
    assert done["status"] == "error"
    assert "unavailable" in done["error"] and "usage limit" not in done["error"]
    await communicator.disconnect()


async def test_a_model_whose_instance_is_starting_says_so(local, alice):
    await sync_to_async(set_status)(local.instance, InstanceStatus.STARTING)
    communicator, _, _ = await _connect(alice)
    done, _ = await _say(communicator, local.model, "Hi")
    assert done["status"] == "error"
    assert done["error"].startswith("The model is starting.")
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            RateLimited("x", headers={"Retry-After": "12"}),
            "You have reached your usage limit for this model. It resets in 12 seconds.",
        ),
        (RateLimited("x", code="quota_exceeded"), "You have reached your usage limit"),
        (InsufficientQuota("x"), "Your balance is too low"),
        (ModelStarting("x"), "The model is starting."),
        (UpstreamRateLimited(), "The model is unavailable right now: its provider is busy."),
        (ModelNotAvailable("x"), "The model is unavailable right now."),
        (UpstreamError("x"), "The model is unavailable right now."),
    ],
)
def test_each_refusal_names_its_real_cause(error, words):
    assert plain_words(error).startswith(words)


@pytest.mark.parametrize(
    ("first_message", "title"),
    [
        ("hi", "hi"),
        ("\n\n  Explain   this code:\n```py\nx = 1\n```", "Explain this code:"),
        (
            "Please write me a long story about dragons and knights and the castle on the hill",
            "Please write me a long story about dragons and knights and…",
        ),
        ("a" * 100, "a" * 60 + "…"),
        ("   \n ", "New chat"),
    ],
)
def test_a_title_is_the_first_line_of_the_first_message_cut_near_60(first_message, title):
    assert conversation_title(first_message) == title


def test_the_picker_offers_only_chat_models(world, alice):
    client = Client()
    client.force_login(alice)
    page = client.get("/chat/")
    names = [m["public"] for m in page.context["models"]]
    assert "acme-chat" in names
    assert "acme-embed" not in names and "acme-image" not in names


def test_an_edit_keeps_a_title_the_user_chose(world, alice):
    from ai.services import conversation_rewind

    conversation = Conversation.objects.create(user=alice, title="My trip")
    first = Message.objects.create(conversation=conversation, role="user", content="Plan a trip")
    Message.objects.create(conversation=conversation, role="assistant", content="Where to?")
    conversation_rewind(conversation=conversation, message_id=first.id, content="Plan two trips")
    conversation.refresh_from_db()
    assert conversation.title == "My trip"
    assert list(conversation.messages.values_list("content", flat=True)) == ["Plan two trips"]
