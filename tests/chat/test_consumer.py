"""The chat WebSocket, through the real ASGI application and session cookies."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from ai.models import Conversation, Message, ModelLink, UsageEvent
from panel.asgi import application
from tests.ai.conftest import clear_of_a_minute_turn, make_model
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _connect(user=None, origin=b"http://localhost"):
    headers = [(b"origin", origin), (b"host", b"localhost")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(_cookie)(user)))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def _until(communicator, kind, wait=10):
    seen = []
    while True:
        message = await communicator.receive_json_from(timeout=wait)
        seen.append(message)
        if message["type"] == kind:
            return message, seen


@pytest.fixture
def slow(acme, fake_upstream, world):
    return make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=80)])


async def test_it_refuses_a_socket_opened_from_a_foreign_origin(world, alice):
    # Issue 11: with DEBUG's ALLOWED_HOSTS=* any page on any site could open the chat
    # socket with the visitor's session cookie.
    _, connected, _ = await _connect(alice, origin=b"https://evil.example")
    assert not connected
    communicator, connected, _ = await _connect(alice, origin=b"http://127.0.0.1:8000")
    assert connected
    await communicator.disconnect()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        "42",
        "[" * 5000 + "]" * 5000,
        '{"type": ' + "[" * 100 + "]" * 100 + "}",
    ],
)
async def test_a_frame_that_is_not_a_request_gets_an_error_and_the_socket_stays_open(
    world, alice, frame
):
    communicator, connected, _ = await _connect(alice)
    assert connected
    await communicator.send_to(text_data=frame)
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "error",
        "message": "Unknown request.",
    }
    await communicator.send_json_to({"type": "list"})
    message, _ = await _until(communicator, "conversations")
    assert message["conversations"] == []
    await communicator.disconnect()


async def test_it_closes_an_anonymous_socket_with_a_clear_code(world):
    communicator, connected, code = await _connect()
    assert not connected and code == 4401


async def test_it_streams_a_reply_and_keeps_the_conversation(world, alice):
    communicator, connected, _ = await _connect(alice)
    assert connected
    await communicator.send_json_to(
        {
            "type": "send",
            "model_id": world.chat.id,
            "content": "Hello **there**",
            "system_prompt": "Be kind",
        }
    )
    done, seen = await _until(communicator, "done")
    deltas = [m for m in seen if m["type"] == "delta"]
    assert len(deltas) >= 3
    assert done["status"] == "complete"
    conversation = await Conversation.objects.aget(pk=done["conversation"])
    assert conversation.title == "Hello **there**" and conversation.system_prompt == "Be kind"
    messages = [m async for m in Message.objects.filter(conversation=conversation)]
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content == "".join(d["content"] for d in deltas)
    conversations, _ = await _until(communicator, "conversations")
    assert [c["id"] for c in conversations["conversations"]] == [conversation.id]
    await communicator.disconnect()
    await asyncio.sleep(0.1)
    assert await UsageEvent.objects.filter(user=alice, status="ok").acount() == 1


async def test_it_streams_a_reply_while_the_channel_layers_redis_is_down(world, alice, settings):
    # Production's channel layer is Redis. The chat socket uses no layer: a Redis
    # that is away must not close it (it did: the layer's receive failed to connect).
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    communicator, connected, _ = await _connect(alice)
    assert connected
    await communicator.send_json_to({"type": "send", "model_id": world.chat.id, "content": "Hi"})
    done, _ = await _until(communicator, "done")
    assert done["status"] == "complete"
    await communicator.send_json_to({"type": "list"})
    conversations, _ = await _until(communicator, "conversations")
    assert [c["id"] for c in conversations["conversations"]] == [done["conversation"]]
    await communicator.disconnect()


async def test_stop_cancels_the_reply_and_keeps_the_partial_text(slow, alice):
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to(
        {"type": "send", "model_id": slow.id, "content": "Tell me a story"}
    )
    deltas = 0
    while deltas < 2:
        message = await communicator.receive_json_from(timeout=10)
        deltas += message["type"] == "delta"
    await communicator.send_json_to({"type": "stop"})
    done, _ = await _until(communicator, "done")
    assert done["status"] == "stopped"
    reply = await Message.objects.aget(pk=done["message"])
    assert reply.status == "stopped" and reply.content.startswith("tok0 tok1 ")
    assert len(reply.content.split()) < 20
    await communicator.disconnect()
    for _ in range(50):
        event = await UsageEvent.objects.filter(model=slow).afirst()
        if event:
            break
        await asyncio.sleep(0.05)
    assert event.status == "client_cancelled" and 2 <= event.completion_tokens < 20


async def test_a_limit_shows_as_a_plain_error_in_the_conversation(world, alice):
    await ModelLink.objects.filter(model=world.chat).aupdate(requests_per_minute=1)
    await sync_to_async(world.chat.save)()
    clear_of_a_minute_turn()
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to({"type": "send", "model_id": world.chat.id, "content": "one"})
    first, _ = await _until(communicator, "done")
    assert first["quota"]["requests"] == {
        "limit": 1,
        "remaining": 0,
        "reset": first["quota"]["requests"]["reset"],
    }
    await communicator.send_json_to(
        {
            "type": "send",
            "conversation": first["conversation"],
            "model_id": world.chat.id,
            "content": "two",
        }
    )
    second, _ = await _until(communicator, "done")
    assert second["status"] == "error"
    assert "usage limit" in second["error"] and "resets in" in second["error"]
    await communicator.disconnect()


async def test_an_outsider_cannot_open_rename_or_delete_someone_elses_conversation(
    world, alice, charlie
):
    conversation = await Conversation.objects.acreate(user=alice, title="alice's secrets")
    await Message.objects.acreate(conversation=conversation, role="user", content="private")
    communicator, _, _ = await _connect(charlie)
    for request in (
        {"type": "open", "conversation": conversation.id},
        {"type": "rename", "conversation": conversation.id, "title": "mine now"},
        {"type": "delete", "conversation": conversation.id},
        {"type": "send", "conversation": conversation.id, "content": "hi"},
    ):
        await communicator.send_json_to(request)
        reply = await communicator.receive_json_from(timeout=5)
        assert reply == {"type": "error", "message": "No such conversation."}
    await communicator.send_json_to({"type": "list"})
    listed = await communicator.receive_json_from(timeout=5)
    assert listed["conversations"] == []
    await communicator.disconnect()
    await conversation.arefresh_from_db()
    assert conversation.title == "alice's secrets"
    assert await Message.objects.filter(conversation=conversation).acount() == 1


async def test_it_renames_and_deletes_a_conversation(world, alice):
    conversation = await Conversation.objects.acreate(user=alice, title="old")
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to(
        {"type": "rename", "conversation": conversation.id, "title": "new"}
    )
    listed = await communicator.receive_json_from(timeout=5)
    assert listed["conversations"][0]["title"] == "new"
    await communicator.send_json_to({"type": "delete", "conversation": conversation.id})
    listed = await communicator.receive_json_from(timeout=5)
    assert listed["conversations"] == []
    await communicator.disconnect()


async def test_it_refuses_to_chat_when_the_feature_is_off(world, alice):
    from panel.models import SiteSettings

    await SiteSettings.objects.aupdate_or_create(pk=1, defaults={"is_ai_enabled": False})
    communicator, _, _ = await _connect(alice)
    await communicator.send_json_to({"type": "send", "model_id": world.chat.id, "content": "hi"})
    reply = await communicator.receive_json_from(timeout=5)
    assert reply == {"type": "error", "message": "AI chat is turned off by the administrator."}
    await communicator.disconnect()
