"""Datasets: the JSONL check line by line, /api/v1/ai/datasets, tenancy and roles, the admin page."""

import hashlib
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from accounts.services import apikey_create
from ai.models import Dataset, TrainingJob
from ai.training.datasets import dataset_check
from panel.errors import ApiError
from tests.factories import OrganisationFactory, UserFactory
from tests.training.helpers import chat_line, jsonl, trainer_group

URL = "/api/v1/ai/datasets"
ROLE_LIST = "system, user, assistant, tool"


def _bad(*rows: str) -> bytes:
    """A file whose first line is good and whose next lines are ``rows``."""
    return jsonl(chat_line(), *rows)


def _messages(*messages, **extra) -> str:
    return json.dumps({"messages": list(messages), **extra})


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}

BROKEN_FILES = [
    (_bad("{not json"), "line 2: not valid JSON"),
    (_bad("[1, 2]"), "line 2: must be a JSON object"),
    (_bad('{"prompt": "hi", "completion": "ho"}'), "line 2: messages must be a non-empty list"),
    (_bad('{"messages": []}'), "line 2: messages must be a non-empty list"),
    (_bad('{"messages": "hi"}'), "line 2: messages must be a non-empty list"),
    (_bad(chat_line(), _messages(USER, "hi")), "line 3: messages[1] must be an object"),
    (
        _bad(chat_line(), chat_line(), _messages(USER, ASSISTANT, {"role": "bot", "content": "x"})),
        f"line 4: messages[2].role must be one of {ROLE_LIST}",
    ),
    (_bad(_messages({"content": "hi"}, ASSISTANT)), "line 2: messages[0].role must be one of"),
    (
        _bad(_messages({"role": "user", "content": 7}, ASSISTANT)),
        "line 2: messages[0].content must be a string or a list of text parts",
    ),
    (
        _bad(_messages({"role": "user", "content": None}, ASSISTANT)),
        "line 2: messages[0].content must be a string or a list of text parts",
    ),
    (
        _bad(_messages({"role": "user"}, ASSISTANT)),
        "line 2: messages[0].content must be a string or a list of text parts",
    ),
    (
        _bad(_messages(USER, {"role": "assistant", "content": None})),
        "line 2: messages[1].content must be a string or a list of text parts",
    ),
    (
        _bad(_messages({"role": "user", "content": [{"type": "image_url", "image_url": {}}]})),
        "line 2: messages[0].content must be a string or a list of text parts",
    ),
    (_bad(_messages(USER, {"role": "system", "content": "x"})), "line 2: messages needs at least"),
    (
        _bad(_messages(USER, {**ASSISTANT, "weight": 2})),
        "line 2: messages[1].weight must be 0 or 1",
    ),
    (
        _bad(_messages(USER, {**ASSISTANT, "weight": True})),
        "line 2: messages[1].weight must be 0 or 1",
    ),
    (
        _bad(_messages({**USER, "weight": 1}, ASSISTANT)),
        "line 2: messages[0].weight is only allowed on assistant messages",
    ),
    (
        _bad(_messages({**USER, "tool_calls": [{"id": "c1"}]}, ASSISTANT)),
        "line 2: messages[0].tool_calls must be a non-empty list of objects",
    ),
    (
        _bad(_messages(USER, {"role": "assistant", "content": None, "tool_calls": []})),
        "line 2: messages[1].tool_calls must be a non-empty list of objects",
    ),
    (_bad(_messages(USER, ASSISTANT, tools="search")), "line 2: tools must be a list of objects"),
    (jsonl(chat_line(), "", chat_line()), "line 2: blank line"),
    (jsonl("[" * 100 + "]" * 100), "line 1: nested too deeply"),
    (b"", "The file is empty"),
    (b"\n\n  \n", "The file is empty"),
    (jsonl(chat_line()) + b"\xff\xfe" + jsonl(chat_line()), "line 2: not UTF-8 text"),
    (bytes(range(128, 256)) * 4, "line 1: not UTF-8 text (byte 1)"),
    (b"\x00\x01\x02binary\x00junk", "line 1: not valid JSON"),
]


@pytest.mark.parametrize(("data", "reason"), BROKEN_FILES, ids=[r for _, r in BROKEN_FILES])
def test_it_names_the_first_bad_line_and_its_reason(data, reason):
    with pytest.raises(ApiError) as caught:
        dataset_check(data)
    assert caught.value.status_code == 400
    assert caught.value.message.startswith(reason), caught.value.message
    assert caught.value.param == "file"


def test_it_takes_every_valid_shape_of_a_training_example():
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rows = [
        chat_line(),
        _messages(USER, {**ASSISTANT, "weight": 0}, {**USER}, {**ASSISTANT, "weight": 1}),
        _messages({"role": "user", "content": [{"type": "text", "text": "hi"}]}, ASSISTANT),
        _messages(
            USER,
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ASSISTANT,
            tools=[{"type": "function", "function": {"name": "f"}}],
        ),
    ]
    data = b"\xef\xbb\xbf" + jsonl(*rows) + b"\n\r\n  \n"
    summary = dataset_check(data)
    assert summary.lines == 4
    assert summary.bytes == len(data)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()


def test_it_takes_windows_line_ends():
    assert dataset_check(f"{chat_line()}\r\n{chat_line()}\r\n".encode()).lines == 2


def test_it_refuses_a_dataset_over_the_size_limit(settings):
    data = jsonl(chat_line(), chat_line())
    settings.TRAINING_DATASET_MAX_BYTES = len(data) - 1
    with pytest.raises(ApiError) as caught:
        dataset_check(data)
    assert caught.value.status_code == 413


# --- /api/v1/ai/datasets ---------------------------------------------------------------


def _client(key: str | None = None) -> APIClient:
    client = APIClient()
    if key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _upload(key, data: bytes, name: str = "train.jsonl", **fields):
    upload = SimpleUploadedFile(name, data, content_type="application/jsonl")
    return _client(key).post(URL, {"file": upload, **fields}, format="multipart")


def _raw(key, data: bytes, query: str = "?name=raw.jsonl"):
    return _client(key).generic("POST", f"{URL}{query}", data, content_type="application/jsonl")


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def test_it_stores_a_trainers_upload_for_their_only_organisation(training_keys, tina, acme):
    data = jsonl(chat_line(), chat_line("Capital of France?", "Paris"))
    response = _upload(training_keys["tina"], data)
    assert response.status_code == 201, response.content
    body = response.json()
    dataset = Dataset.objects.get()
    assert body["id"] == dataset.public_id and body["id"].startswith("file-")
    assert body["organisation"] == "acme" and body["created_by"] == "tina"
    assert (body["name"], body["lines"], body["bytes"]) == ("train.jsonl", 2, len(data))
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert "content" not in body
    assert bytes(dataset.content) == data
    assert (dataset.organisation, dataset.created_by, dataset.lines) == (acme, tina, 2)


def test_it_stores_a_raw_jsonl_body_under_the_name_given(training_keys):
    response = _raw(training_keys["tina"], jsonl(chat_line()), "?name=my-training-data")
    assert response.status_code == 201, response.content
    assert Dataset.objects.get().name == "my-training-data"


def test_a_raw_body_needs_a_name(training_keys):
    error = _error(_raw(training_keys["tina"], jsonl(chat_line()), ""), 400)
    assert error["param"] == "name"
    assert not Dataset.objects.exists()


def test_an_unknown_form_field_is_refused_by_name(training_keys):
    error = _error(_upload(training_keys["tina"], jsonl(chat_line()), epochs="3"), 400)
    assert (error["param"], error["message"]) == ("epochs", "Unknown field.")
    assert not Dataset.objects.exists()


def test_a_multipart_upload_needs_the_file_field(training_keys):
    response = _client(training_keys["tina"]).post(URL, {"name": "x"}, format="multipart")
    assert _error(response, 400)["param"] == "file"


def test_a_broken_line_is_refused_in_the_envelope_and_nothing_is_stored(training_keys):
    data = jsonl(chat_line(), chat_line(), _messages(USER, {"role": "robot", "content": "x"}))
    error = _error(_upload(training_keys["tina"], data), 400)
    assert error == {
        "message": f"line 3: messages[1].role must be one of {ROLE_LIST}",
        "type": "invalid_request_error",
        "param": "file",
        "code": "invalid_value",
    }
    assert not Dataset.objects.exists()


@pytest.mark.parametrize("send", [_upload, _raw])
def test_a_dataset_over_the_limit_is_refused_with_413(training_keys, settings, send):
    data = jsonl(*[chat_line()] * 20)
    settings.TRAINING_DATASET_MAX_BYTES = len(data) - 1
    error = _error(send(training_keys["tina"], data), 413)
    assert error["code"] == "request_too_large"
    assert str(len(data) - 1) in error["message"]
    assert not Dataset.objects.exists()


def test_a_body_far_over_the_limit_is_refused_before_it_is_read(training_keys, settings):
    settings.TRAINING_DATASET_MAX_BYTES = 10
    data = jsonl(*[chat_line()] * 2000)
    assert _error(_upload(training_keys["tina"], data), 413)["param"] == "file"


def test_a_raw_body_is_held_to_the_dataset_limit_not_djangos_memory_limit(training_keys, settings):
    data = jsonl(*[chat_line()] * 5)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    assert _raw(training_keys["tina"], data).status_code == 201
    assert Dataset.objects.get().bytes == len(data)


@pytest.mark.parametrize("send", [_upload, _raw])
def test_a_caller_without_the_role_is_refused_before_the_file_is_looked_at(
    training_keys, settings, send
):
    settings.TRAINING_DATASET_MAX_BYTES = 10
    error = _error(send(training_keys["bob"], b"{broken" * 100), 403)
    assert error["message"] == "Uploading a dataset needs the admin or trainer role."


def test_a_member_without_the_trainer_role_reads_but_cannot_upload_or_delete(training_keys, tina):
    dataset_id = _upload(training_keys["tina"], jsonl(chat_line())).json()["id"]
    for persona in ("bob", "alice"):
        assert _error(_upload(training_keys[persona], jsonl(chat_line())), 403)["code"] == (
            "permission_denied"
        )
        listed = _client(training_keys[persona]).get(URL).json()
        assert [row["id"] for row in listed["results"]] == [dataset_id]
        assert _client(training_keys[persona]).get(f"{URL}/{dataset_id}").status_code == 200
        _error(_client(training_keys[persona]).delete(f"{URL}/{dataset_id}"), 403)
    assert Dataset.objects.count() == 1


def test_an_outsider_sees_nothing(training_keys, tina):
    dataset_id = _upload(training_keys["tina"], jsonl(chat_line())).json()["id"]
    charlie = _client(training_keys["charlie"])
    assert charlie.get(URL).json()["results"] == []
    assert _error(charlie.get(f"{URL}/{dataset_id}"), 404)["code"] == "not_found"
    assert _error(charlie.delete(f"{URL}/{dataset_id}"), 404)["code"] == "not_found"
    assert Dataset.objects.filter(public_id=dataset_id).exists()


def test_an_outsider_cannot_upload_into_another_organisation(training_keys, charlie):
    charlie.groups.add(trainer_group())
    response = _upload(training_keys["charlie"], jsonl(chat_line()), organisation="acme")
    assert _error(response, 400)["param"] == "organisation"
    assert not Dataset.objects.exists()


def test_a_trainer_deletes_their_organisations_dataset(training_keys, tina):
    dataset_id = _upload(training_keys["tina"], jsonl(chat_line())).json()["id"]
    assert _client(training_keys["tina"]).delete(f"{URL}/{dataset_id}").status_code == 204
    assert not Dataset.objects.exists()
    _error(_client(training_keys["tina"]).get(f"{URL}/{dataset_id}"), 404)


def test_staff_see_every_dataset_and_upload_for_any_organisation(training_keys, tina, staff):
    other = OrganisationFactory(slug="globex")
    _upload(training_keys["tina"], jsonl(chat_line()))
    response = _upload(training_keys["staff"], jsonl(chat_line()), organisation="globex")
    assert response.status_code == 201, response.content
    assert Dataset.objects.get(public_id=response.json()["id"]).organisation == other
    by_id = _upload(training_keys["staff"], jsonl(chat_line()), organisation=str(other.pk))
    assert by_id.json()["organisation"] == "globex"
    staff_client = _client(training_keys["staff"])
    assert staff_client.get(URL).json()["count"] == 3
    assert staff_client.get(f"{URL}?organisation=acme").json()["count"] == 1
    assert staff_client.delete(f"{URL}/{response.json()['id']}").status_code == 204


def test_a_trainer_without_an_organisation_owns_the_upload_alone(tina, db):
    solo = UserFactory(username="solo")
    solo.groups.add(trainer_group())
    peer = UserFactory(username="peer")
    peer.groups.add(trainer_group())
    solo_key = apikey_create(user=solo, name="k", permissions=["read", "manage"])[1]
    peer_key = apikey_create(user=peer, name="k", permissions=["read", "manage"])[1]
    dataset_id = _upload(solo_key, jsonl(chat_line())).json()["id"]
    assert Dataset.objects.get().organisation is None
    assert _client(solo_key).get(f"{URL}/{dataset_id}").json()["organisation"] is None
    _error(_client(peer_key).get(f"{URL}/{dataset_id}"), 404)
    _error(_client(peer_key).delete(f"{URL}/{dataset_id}"), 404)
    assert _client(solo_key).delete(f"{URL}/{dataset_id}").status_code == 204


def test_an_upload_goes_to_the_organisation_of_the_key(tina, acme):
    OrganisationFactory(slug="labs").memberships.create(user=tina)
    key = apikey_create(user=tina, name="k", permissions=["read", "manage"], organisation=acme)[1]
    assert _upload(key, jsonl(chat_line())).json()["organisation"] == "acme"
    unscoped = apikey_create(user=tina, name="u", permissions=["read", "manage"])[1]
    # Two organisations and none named: the trainer's own.
    assert _upload(unscoped, jsonl(chat_line())).json()["organisation"] is None
    assert _upload(unscoped, jsonl(chat_line()), organisation="labs").json()["organisation"] == (
        "labs"
    )


def test_a_key_of_an_organisation_the_trainer_left_uploads_nothing(tina, acme):
    key = apikey_create(user=tina, name="k", permissions=["read", "manage"], organisation=acme)[1]
    acme.memberships.filter(user=tina).delete()
    assert (
        "trainer role in the organisation"
        in _error(_upload(key, jsonl(chat_line())), 403)["message"]
    )
    assert not Dataset.objects.exists()


def test_a_read_key_reads_and_a_manage_permission_is_needed_to_write(tina):
    read_key = apikey_create(user=tina, name="r", permissions=["read"])[1]
    proxy_key = apikey_create(user=tina, name="p", permissions=["proxy"])[1]
    assert "manage" in _error(_upload(read_key, jsonl(chat_line())), 403)["message"]
    assert _client(read_key).get(URL).status_code == 200
    assert "read" in _error(_client(proxy_key).get(URL), 403)["message"]
    assert not Dataset.objects.exists()


def test_an_anonymous_caller_gets_401(db):
    assert _error(APIClient().get(URL), 401)["code"] == "invalid_api_key"
    assert _error(_raw(None, jsonl(chat_line())), 401)["type"] == "authentication_error"


def test_a_browser_session_of_a_trainer_uploads(tina):
    client = APIClient()
    client.force_login(tina)
    upload = SimpleUploadedFile("s.jsonl", jsonl(chat_line()))
    assert client.post(URL, {"file": upload}, format="multipart").status_code == 201


def test_the_list_costs_the_same_queries_with_more_rows(
    training_keys, tina, acme, assert_fixed_queries
):
    client = _client(training_keys["bob"])

    def add_rows():
        for _ in range(2):
            Dataset.objects.create(organisation=acme, created_by=tina, name="d", content=b"x")

    assert_fixed_queries(4, lambda: len(client.get(URL).json()["results"]), add_rows)


def test_deleting_a_dataset_keeps_the_jobs_that_trained_on_it(training_keys, tina, acme):
    dataset_id = _upload(training_keys["tina"], jsonl(chat_line())).json()["id"]
    dataset = Dataset.objects.get(public_id=dataset_id)
    job = TrainingJob.objects.create(
        organisation=acme,
        created_by=tina,
        base_model_name="tiny",
        dataset=dataset,
        validation_dataset=dataset,
        trainer_kind="builtin",
    )
    assert _client(training_keys["tina"]).delete(f"{URL}/{dataset_id}").status_code == 204
    job.refresh_from_db()
    assert (job.dataset_id, job.validation_dataset_id) == (None, None)
    assert job.base_model_name == "tiny"


# --- The admin's Datasets page -----------------------------------------------------------


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


ADMIN_URL = "/admin/ai/dataset/"


def test_the_admin_upload_stores_a_checked_dataset(admin_client, superuser, acme):
    upload = SimpleUploadedFile("a.jsonl", jsonl(chat_line(), chat_line()))
    response = admin_client.post(
        f"{ADMIN_URL}add/", {"file": upload, "name": "", "organisation": acme.pk}
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    dataset = Dataset.objects.get()
    assert (dataset.name, dataset.lines, dataset.organisation) == ("a.jsonl", 2, acme)
    assert dataset.created_by == superuser


def test_the_admin_upload_shows_the_bad_line_and_saves_nothing(admin_client):
    upload = SimpleUploadedFile("b.jsonl", jsonl(chat_line(), "{oops"))
    response = admin_client.post(f"{ADMIN_URL}add/", {"file": upload, "name": "b"})
    assert response.status_code == 200
    assert "line 2: not valid JSON" in response.content.decode()
    assert not Dataset.objects.exists()


def test_the_admin_upload_refuses_a_file_over_the_limit(admin_client, settings):
    settings.TRAINING_DATASET_MAX_BYTES = 5
    upload = SimpleUploadedFile("c.jsonl", jsonl(chat_line()))
    response = admin_client.post(f"{ADMIN_URL}add/", {"file": upload, "name": "c"})
    assert "at most 5 bytes" in response.content.decode()
    assert not Dataset.objects.exists()


def test_the_admin_shows_three_lines_cut_short_never_the_whole_content(admin_client, acme, tina):
    long_answer = "L" * 500
    rows = [chat_line(answer=long_answer), chat_line(), chat_line(), chat_line("Fourth secret")]
    dataset = Dataset.objects.create(
        organisation=acme, created_by=tina, name="p.jsonl", content=jsonl(*rows), lines=4
    )
    listing = admin_client.get(ADMIN_URL).content.decode()
    assert "p.jsonl" in listing and "Acme" in listing
    page = admin_client.get(f"{ADMIN_URL}{dataset.pk}/change/").content.decode()
    assert "What is 2+2?" in page
    assert "Fourth secret" not in page
    assert long_answer not in page
    assert "…" in page


def test_the_admin_deletes_a_dataset(admin_client, acme, tina):
    dataset = Dataset.objects.create(organisation=acme, created_by=tina, name="d", content=b"x")
    response = admin_client.post(f"{ADMIN_URL}{dataset.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Dataset.objects.exists()
