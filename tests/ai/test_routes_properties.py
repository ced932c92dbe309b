"""Property-based: whatever a client sends to an AI route, the answer is never a 5xx,
errors come in the envelope, and nothing stored changes but one UsageEvent per
admitted request. Generated with hypothesis against the running server."""

import json
import time
from decimal import Decimal
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from accounts.models import APIKey, Tier, User
from ai.models import AIModel, Conversation, LimitCounter, Message, ModelLink, Upstream, UsageEvent
from orgs.models import LedgerEntry, Membership, Organisation, Wallet
from orgs.services import wallet_for, wallet_topup

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = settings(
    max_examples=80,
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


def fields_for(kind: str) -> dict[str, tuple]:
    """Every field a route reads, plus some it passes on: (sensible values, odd values)."""
    odd_ints = st.integers() | json_values
    if kind == "panel":
        return {
            "message": (texts, json_values),
            "history": (
                st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), max_size=2),
                wild_messages | json_values,
            ),
            "systemPrompt": (texts, json_values),
            "modelId": (st.none(), odd_ints),
            "maxTokens": (st.integers(min_value=1, max_value=50), odd_ints),
            "temperature": (st.floats(min_value=0, max_value=2), json_values),
        }
    return {
        "model": (st.just(SOUND[kind]["model"]), model_names | texts | json_values),
        "modelId": (st.none(), st.integers(min_value=0, max_value=2**66) | json_values),
        "messages": (sound_messages, wild_messages | json_values),
        "prompt": (texts | st.lists(texts, max_size=3), json_values),
        "input": (texts | st.lists(texts, max_size=3), json_values),
        "stream": (st.booleans(), json_values),
        "stream_options": (st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
        "n": (st.integers(min_value=1, max_value=4), odd_ints),
        "max_tokens": (st.integers(min_value=1, max_value=50), odd_ints),
        "temperature": (st.floats(min_value=0, max_value=2), json_values),
        "user": (texts, json_values),
        "metadata": (st.dictionaries(texts, texts, max_size=2), json_values),
    }


@st.composite
def json_bodies(draw, kind: str, *, odd: int) -> bytes:
    """A sound body with sensible optional fields, ``odd`` of them given odd values
    (maybe one the route needs); with ``odd`` above 1, sometimes from nothing at all."""
    fields = fields_for(kind)
    body = dict(SOUND[kind]) if odd <= 1 or draw(st.booleans()) else {}
    body.update(draw(st.fixed_dictionaries({}, optional={k: v[0] for k, v in fields.items()})))
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=odd, unique=True)):
        body[name] = draw(fields[name][1])
    if odd and draw(st.integers(0, 7)) == 0:
        body.pop(draw(st.sampled_from(sorted(SOUND[kind]))), None)
    return json.dumps(body).encode()


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
    st.sampled_from([2, 64, 65, 1_000, 100_000]).map(nested),
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
    """Sound requests (alice's key, a body the route can serve), ones with one odd field,
    and wild ones: any key, content type or method, odd fields and odd bodies."""
    mode = draw(st.sampled_from(["sound", "one odd field", "wild"]))
    if "{model}" in path:
        name = draw(model_names | st.text(min_size=1, max_size=12))
        path = path.replace("{model}", quote(name, safe=""))
    request = {"method": method, "path": path, "key": "alice", "body": None, "query": {}}
    request["content_type"] = "application/json"
    if mode == "wild":
        request["key"] = draw(st.sampled_from(["alice", "charlie", "read_only", None, "junk"]))
        request["content_type"] = draw(st.sampled_from(["application/json", "text/plain", None]))
        if draw(st.integers(0, 9)) == 9:
            request["method"] = "PUT" if method == "POST" else "POST"  # a wrong method
    if kind == "usage":
        request["query"] = draw(queries)
    elif request["method"] == "POST" and kind in SOUND:
        odd = {"sound": 0, "one odd field": 1, "wild": 3}[mode]
        bodies = json_bodies(kind, odd=odd)
        request["body"] = draw(st.one_of(bodies, odd_bodies) if mode == "wild" else bodies)
    return request


def known_cases(method: str, path: str, kind: str) -> list[dict]:
    """Inputs that once answered 500 (issue 11), tried first on every run."""
    base = {"method": method, "path": path, "key": "alice", "content_type": "application/json"}
    if kind == "usage":
        return [{**base, "body": None, "query": {"from": "2024-13-45"}}]
    if method != "POST":
        return []
    bodies = [nested(1_000), nested(100_000)]
    if kind in ("chat", "completion"):
        bodies.append(json.dumps({**SOUND[kind], "stream": "yes"}).encode())
    if kind == "chat":
        part = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
        bodies += [json.dumps({**SOUND[kind], "messages": m}).encode() for m in (True, 5, part)]
    return [{**base, "body": body, "query": {}} for body in bodies]


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
        assert isinstance(body, dict), body
        assert set(body["error"]) - {"available_models"} == ENVELOPE, body
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

    def answer_is_sound(request):
        response = send(world, request)
        is_admitted = check_answer(path, response)
        # Every AI route names its request; a path no route matches has no id.
        request_id = response.headers.get("x-request-id")
        assert request_id or not is_admitted
        (admitted if is_admitted else refused).add(request_id)
        assert stored_state() == before

    check = EXAMPLES(given(request=requests(method, path, kind))(answer_is_sound))
    for case in known_cases(method, path, kind):
        check = example(request=case)(check)
    check()
    events = settled_events(len(admitted))
    assert sorted(events) == sorted(admitted)
    assert not refused & set(events)
