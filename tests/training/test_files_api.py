"""OpenAI's /v1/files (purpose fine-tune): the SDK end to end, OpenAI's shapes, tenancy, errors."""

import io

import httpx
import openai
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from ai.models import Dataset
from tests.openai_schema import validate
from tests.training.helpers import chat_line, jsonl

BASES = ["/v1", "/api/v1", "/api/ai/openai/v1"]


def _client(key: str | None) -> APIClient:
    client = APIClient()
    if key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _create(key, data: bytes, purpose: str | None = "fine-tune", base: str = "/v1", name="t.jsonl"):
    fields = {"file": SimpleUploadedFile(name, data)}
    if purpose is not None:
        fields["purpose"] = purpose
    return _client(key).post(f"{base}/files", fields, format="multipart")


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


@pytest.mark.django_db(transaction=True)
def test_the_openai_sdk_uploads_lists_reads_and_deletes_a_file(asgi_server, training_keys):
    sdk = openai.OpenAI(
        base_url=f"{asgi_server.url}/v1", api_key=training_keys["tina"], max_retries=0
    )
    data = jsonl(chat_line(), chat_line("Capital of France?", "Paris"))
    created = sdk.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.status) == ("file", "fine-tune", "processed")
    assert (created.filename, created.bytes) == ("train.jsonl", len(data))
    assert Dataset.objects.get(public_id=created.id).lines == 2

    assert [f.id for f in sdk.files.list(purpose="fine-tune")] == [created.id]
    assert list(sdk.files.list(purpose="assistants")) == []
    assert sdk.files.retrieve(created.id).bytes == len(data)
    assert sdk.files.content(created.id).content == data

    deleted = sdk.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    assert not Dataset.objects.exists()
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_gets_the_bad_line_in_a_bad_request_error(asgi_server, training_keys):
    sdk = openai.OpenAI(
        base_url=f"{asgi_server.url}/v1", api_key=training_keys["tina"], max_retries=0
    )
    data = jsonl(chat_line(), '{"messages": [{"role": "user", "content": "no answer"}]}')
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("bad.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert caught.value.body["message"] == "line 2: messages needs at least one assistant message"
    assert caught.value.body["param"] == "file"
    assert not Dataset.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_raw_jsonl_body_uploads_through_the_asgi_server(asgi_server, training_keys, settings):
    data = jsonl(chat_line(), chat_line())
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10
    response = httpx.post(
        f"{asgi_server.url}/api/v1/ai/datasets?name=my-training-data",
        content=data,
        headers={
            "Authorization": f"Bearer {training_keys['tina']}",
            "Content-Type": "application/jsonl",
        },
    )
    assert response.status_code == 201, response.text
    assert bytes(Dataset.objects.get(name="my-training-data").content) == data


@pytest.mark.parametrize("base", BASES)
def test_its_shapes_are_openais_under_every_base_url(training_keys, base):
    response = _create(training_keys["tina"], jsonl(chat_line()), base=base)
    assert response.status_code == 200, response.content
    file = response.json()
    validate(file, "OpenAIFile")
    listed = _client(training_keys["bob"]).get(f"{base}/files").json()
    validate(listed, "ListFilesResponse")
    assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (
        file["id"],
        file["id"],
        False,
    )
    deleted = _client(training_keys["tina"]).delete(f"{base}/files/{file['id']}").json()
    validate(deleted, "DeleteFileResponse")
    assert deleted == {"id": file["id"], "object": "file", "deleted": True}


@pytest.mark.parametrize("purpose", ["assistants", "batch", "", None])
def test_a_purpose_other_than_fine_tune_is_refused(training_keys, purpose):
    error = _error(_create(training_keys["tina"], jsonl(chat_line()), purpose=purpose), 400)
    assert error["param"] == "purpose" and "fine-tune" in error["message"]
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "The file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "line 1: not UTF-8 text"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', "line 1: not UTF-8 text"),
        (b"\x00\x00\x00junk\n", "line 1: not valid JSON"),
    ],
    ids=["empty", "binary", "latin-1", "nul-bytes"],
)
def test_a_file_that_is_no_dataset_is_refused_in_the_envelope(training_keys, data, reason):
    error = _error(_create(training_keys["tina"], data), 400)
    assert error["message"].startswith(reason)
    assert (error["type"], error["param"]) == ("invalid_request_error", "file")
    assert not Dataset.objects.exists()


def test_an_unknown_form_field_is_refused_on_the_openai_route(training_keys):
    fields = {"file": SimpleUploadedFile("t.jsonl", jsonl(chat_line())), "purpose": "fine-tune"}
    response = _client(training_keys["tina"]).post(
        "/v1/files", {**fields, "name": "x"}, format="multipart"
    )
    assert _error(response, 400)["param"] == "name"
    assert not Dataset.objects.exists()


def test_a_raw_body_is_refused_on_the_openai_route(training_keys):
    response = _client(training_keys["tina"]).generic(
        "POST", "/v1/files", jsonl(chat_line()), content_type="application/jsonl"
    )
    assert _error(response, 400)["param"] == "file"


def test_a_file_over_the_limit_is_refused_with_413(training_keys, settings):
    data = jsonl(chat_line(), chat_line())
    settings.TRAINING_DATASET_MAX_BYTES = len(data) - 1
    assert _error(_create(training_keys["tina"], data), 413)["code"] == "request_too_large"
    assert not Dataset.objects.exists()


def test_an_outsider_gets_404_on_get_delete_and_content(training_keys):
    file_id = _create(training_keys["tina"], jsonl(chat_line())).json()["id"]
    charlie = _client(training_keys["charlie"])
    for response in (
        charlie.get(f"/v1/files/{file_id}"),
        charlie.delete(f"/v1/files/{file_id}"),
        charlie.get(f"/v1/files/{file_id}/content"),
    ):
        assert _error(response, 404)["code"] == "not_found"
    assert charlie.get("/v1/files").json()["data"] == []
    assert Dataset.objects.filter(public_id=file_id).exists()


def test_a_member_reads_the_content_but_cannot_upload_or_delete(training_keys):
    data = jsonl(chat_line())
    file_id = _create(training_keys["tina"], data).json()["id"]
    bob = _client(training_keys["bob"])
    content = bob.get(f"/v1/files/{file_id}/content")
    assert content.status_code == 200 and content.content == data
    assert _error(_create(training_keys["bob"], data), 403)["type"] == "permission_error"
    _error(bob.delete(f"/v1/files/{file_id}"), 403)
    assert Dataset.objects.count() == 1


def test_the_list_pages_with_limit_and_after(training_keys):
    ids = [_create(training_keys["tina"], jsonl(chat_line())).json()["id"] for _ in range(3)]
    tina = _client(training_keys["tina"])
    first = tina.get("/v1/files?limit=2").json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = tina.get(f"/v1/files?limit=2&after={first['last_id']}").json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    ascending = tina.get("/v1/files?order=asc").json()
    assert [f["id"] for f in ascending["data"]] == ids


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "limit=10001", "order=up"])
def test_a_bad_list_query_is_refused(training_keys, query):
    error = _error(_client(training_keys["tina"]).get(f"/v1/files?{query}"), 400)
    assert error["param"] == query.split("=")[0]


def test_an_unknown_after_cursor_is_404(training_keys):
    _error(_client(training_keys["tina"]).get("/v1/files?after=file-nope"), 404)


def test_an_anonymous_caller_gets_401_in_the_envelope(db):
    assert _error(APIClient().get("/v1/files"), 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "query, status, param",
    [("purpose=fine-tune%00", 400, "purpose"), ("after=file-x%00", 404, "file_id")],
)
def test_a_nul_in_the_list_query_is_refused_not_a_500(query, status, param, training_keys):
    response = _client(training_keys["staff"]).get(f"/api/v1/files?{query}")
    assert response.status_code == status, response.content
    assert response.json()["error"]["param"] == param
