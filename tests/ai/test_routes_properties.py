"""Property-based: whatever a client sends to an AI route, the answer is never a 5xx,
errors come in the envelope, and nothing stored changes but one UsageEvent per
admitted request. Generated with hypothesis against the running server."""

import json
import time
from decimal import Decimal
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import APIKey, Tier, User
from ai.models import AIModel, Conversation, LimitCounter, Message, ModelLink, Upstream, UsageEvent
from orgs.models import LedgerEntry, Membership, Organisation, Wallet
from orgs.services import wallet_for, wallet_topup

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run, like schemathesis' seed
    database=None,  # nothing written outside the test
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (method, path, what the body is about); {model} is a generated model name.
ROUTES = [
    ("POST", "/v1/chat/completions", "chat"),
    ("POST", "/v1/completions", "completion"),
    ("POST", "/v1/embeddings", "embedding"),
    ("POST", "/v1/images/generations", "image"),
    ("GET", "/v1/models", "list"),
    ("GET", "/v1/models/{model}", "list"),
    ("POST", "/api/v1/ai/chat/completions", "chat"),
    ("POST", "/api/v1/ai/inference", "chat"),
    ("POST", "/api/v1/ai/embeddings", "embedding"),
    ("POST", "/api/ai/chat", "panel"),
    ("POST", "/api/ai/studio", "panel"),
    ("GET", "/api/ai/models", "list"),
    ("GET", "/api/ai/my-models", "list"),
    ("GET", "/api/ai/usage", "usage"),
]
PANEL_CHAT = ("/api/ai/chat", "/api/ai/studio")
ENVELOPE = {"message", "type", "param", "code"}

# --- what clients send ------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
model_names = st.sampled_from(["acme-chat", "acme-embed", "acme-image", "charlie-chat", "nope", ""])
texts = st.text(max_size=20)
roles = st.sampled_from(["system", "user", "assistant"])
text_parts = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
sound_messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": texts | st.lists(text_parts, max_size=2)}),
    min_size=1,
    max_size=3,
)
wild_contents = json_values | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": json_values}) | json_values, max_size=2
)
wild_messages = st.lists(
    st.fixed_dictionaries({"role": roles | json_values}, optional={"content": wild_contents})
    | json_values,
    max_size=3,
)


# What each kind of route needs to succeed; generated fields are laid over it.
SOUND = {
    "chat": {"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]},
    "completion": {"model": "acme-chat", "prompt": "Hi"},
    "embedding": {"model": "acme-embed", "input": "Hi"},
    "image": {"model": "acme-image", "prompt": "a cat"},
    "panel": {"message": "Hi"},
}


def fields_for(kind: str, *, wild: bool) -> dict:
    """Every field a route reads, plus some it passes on: sensible values, or (wild)
    mostly sensible ones and now and then anything at all."""

    def field(sound, odd=json_values):
        return st.one_of(sound, sound, sound, odd) if wild else sound

    if kind == "panel":
        return {
            "message": field(texts),
            "history": field(
                st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), max_size=2),
                wild_messages | json_values,
            ),
            "systemPrompt": field(texts),
            "modelId": field(st.none(), st.integers() | json_values),
            "maxTokens": field(st.integers(min_value=1, max_value=50), st.integers() | json_values),
            "temperature": field(st.floats(min_value=0, max_value=2)),
        }
    return {
        "model": field(st.just(SOUND[kind]["model"]), model_names | texts | json_values),
        "modelId": field(st.none(), st.integers(min_value=0, max_value=2**66) | json_values),
        "messages": field(sound_messages, wild_messages | json_values),
        "prompt": field(texts | st.lists(texts, max_size=3)),
        "input": field(texts | st.lists(texts, max_size=3)),
        "stream": field(st.booleans()),
        "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "n": field(st.integers(min_value=1, max_value=4), st.integers() | json_values),
        "max_tokens": field(st.integers(min_value=1, max_value=50), st.integers() | json_values),
        "temperature": field(st.floats(min_value=0, max_value=2)),
        "user": field(texts, json_values),
        "metadata": field(st.dictionaries(texts, texts, max_size=2), json_values),
    }


def json_bodies(kind: str, *, wild: bool) -> st.SearchStrategy[bytes]:
    generated = st.fixed_dictionaries({}, optional=fields_for(kind, wild=wild))
    sound = SOUND[kind]
    # Over a sound body; when wild, maybe with one of its fields left out, or from nothing.
    dropped = st.sets(st.sampled_from(sorted(sound)), max_size=1) if wild else st.just(set())
    over_sound = st.builds(
        lambda extra, drop: {**{k: v for k, v in sound.items() if k not in drop}, **extra},
        generated,
        dropped,
    )
    objects = st.one_of(over_sound, over_sound, over_sound, generated) if wild else over_sound
    return objects.map(lambda body: json.dumps(body).encode())


def nested(depth: int) -> bytes:
    return (
        b'{"messages": [{"role": "user", "content": "Hi"}], "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


odd_bodies = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.integers(min_value=1, max_value=5_000).map(nested),
    st.just(b""),
    st.just(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'),
)


queries = st.dictionaries(
    st.sampled_from(["from", "to", "group_by", "page", "model"]),
    st.sampled_from(["2024-01-01", "2024-13-45", "2024-02-30T25:61", "model", "day", ""])
    | st.text(max_size=12)
    | st.integers(min_value=-(2**70), max_value=2**70).map(str),
    max_size=3,
)


@st.composite
def requests(draw, method: str, path: str, kind: str):
    """Half sound requests (alice's key, a body the route can serve), half wild ones."""
    wild = draw(st.booleans())
    if "{model}" in path:
        name = draw(model_names | st.text(min_size=1, max_size=12))
        path = path.replace("{model}", quote(name, safe=""))
    request = {"method": method, "path": path, "key": "alice", "body": None, "query": {}}
    request["content_type"] = "application/json"
    if wild:
        request["key"] = draw(st.sampled_from(["alice", "charlie", "read_only", None, "junk"]))
        request["content_type"] = draw(st.sampled_from(["application/json", "text/plain", None]))
        if draw(st.integers(0, 9)) == 9:
            request["method"] = "PUT" if method == "POST" else "POST"  # a wrong method
    if kind == "usage":
        request["query"] = draw(queries)
    elif request["method"] == "POST" and kind in SOUND:
        sound = json_bodies(kind, wild=wild)
        request["body"] = draw(st.one_of(sound, sound, sound, odd_bodies) if wild else sound)
    return request


# --- what must hold ---------------------------------------------------------------

STORED = [User, APIKey, Organisation, Membership, Wallet, LedgerEntry, AIModel, Upstream]
STORED += [ModelLink, LimitCounter, Conversation, Message]


def stored_state() -> dict:
    """Every row of the tables no request may change (keys' last use aside)."""
    state = {}
    for model in STORED:
        fields = [f.attname for f in model._meta.concrete_fields if f.attname != "last_used_at"]
        state[model.__name__] = list(model.objects.order_by("pk").values_list(*fields))
    return state


def send(world, request) -> httpx.Response:
    keys = {
        "alice": world.alice_key,
        "charlie": world.charlie_key,
        "read_only": world.read_only_key,
        "junk": "sb-not-a-key",
    }
    headers = {}
    if request["key"]:
        headers["Authorization"] = f"Bearer {keys[request['key']]}"
    if request["content_type"]:
        headers["Content-Type"] = request["content_type"]
    return httpx.request(
        request["method"],
        f"{world.url}{request['path']}",
        headers=headers,
        content=request["body"],
        params=request["query"],
        timeout=30,
    )


def check_answer(path: str, response: httpx.Response) -> bool:
    """Assert the answer's shape; return whether the request was admitted (used a model)."""
    assert response.status_code < 500, response.text
    if response.headers.get("content-type") == "text/event-stream":
        assert response.status_code == 200
        events = [e for e in response.text.split("\n\n") if e]
        assert events and all(e.startswith("data: ") for e in events), response.text
        for event in events[:-1]:
            json.loads(event.removeprefix("data: "))
        assert events[-1] == "data: [DONE]", response.text
        return True
    assert response.headers.get("content-type") == "application/json", response.text
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body, dict) and set(body["error"]) == ENVELOPE, body
        # An error naming an upstream is that upstream's own answer to an admitted request.
        return "x-switchboard-upstream" in response.headers
    if path in PANEL_CHAT:
        assert isinstance(body["reply"], str)
        return "model" in body  # without a model the panel answers a fixed reply
    if path in ("/api/ai/models", "/api/ai/my-models"):
        assert isinstance(body, list)
        return False
    if response.request.method == "GET":  # /api/ai/usage and the OpenAI model routes
        assert body["object"] in ("list", "model"), body
        return False
    assert isinstance(body["x_switchboard"], dict)  # an upstream's answer, relayed
    return True


def settled_events(expected: int) -> list[str]:
    """The request ids of the usage events, once ``expected`` have been written."""
    for _ in range(250):
        if UsageEvent.objects.count() >= expected:
            break
        time.sleep(0.02)
    time.sleep(0.1)  # let a wrongly written extra event show up too
    return list(UsageEvent.objects.values_list("request_id", flat=True))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("method", "path", "kind"), ROUTES, ids=[r[1] for r in ROUTES])
def test_it_never_fails_or_changes_anything_on_any_input(world, alice, acme, method, path, kind):
    alice.tier = Tier.PAID  # so that studio reads its input too
    alice.save()
    wallet_topup(wallet=wallet_for(organisation=acme), amount=Decimal("5"), reason="fuzz")
    before = stored_state()
    admitted, refused = set(), set()

    @EXAMPLES
    @given(request=requests(method, path, kind))
    def answer_is_sound(request):
        response = send(world, request)
        is_admitted = check_answer(path, response)
        # Every AI route names its request; a path no route matches has no id.
        request_id = response.headers.get("x-request-id")
        assert request_id or not is_admitted
        (admitted if is_admitted else refused).add(request_id)
        assert stored_state() == before

    answer_is_sound()
    events = settled_events(len(admitted))
    assert sorted(events) == sorted(admitted)
    assert not refused & set(events)
