"""Training datasets: OpenAI's chat fine-tuning JSONL, checked line by line; create and delete.

A dataset is one ``{"messages": [...]}`` object a line (optional ``tools``; optional
``weight`` 0 or 1 on assistant messages). ``dataset_check`` stops at the first bad
line and names it with the reason (``line 7: messages[2].role must be one of ...``),
so an upload is stored whole or not at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings

from orgs.models import Organisation
from panel.errors import ErrorCode, InvalidRequest, PayloadTooLarge, PermissionDenied
from panel.parsers import JSONTooDeep, json_loads

from ..models import Dataset
from . import selectors

ROLES = ("system", "user", "assistant", "tool")
PURPOSE = "fine-tune"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Summary:
    """What a valid dataset holds: training examples, size and digest."""

    lines: int
    bytes: int
    sha256: str


def _refused(message: str) -> InvalidRequest:
    """The error for a dataset that is not OpenAI's chat fine-tuning JSONL (400, param file)."""
    return InvalidRequest(message, param="file", code=ErrorCode.INVALID_VALUE)


def dataset_size_check(size: int) -> None:
    """Raises 413 for an upload over TRAINING_DATASET_MAX_BYTES."""
    limit = settings.TRAINING_DATASET_MAX_BYTES
    if size > limit:
        raise PayloadTooLarge(
            f"The file is too large: a dataset may have at most {limit} bytes "
            "(TRAINING_DATASET_MAX_BYTES).",
            param="file",
        )


def dataset_check(data: bytes) -> Summary:
    """The dataset's summary; a 400 naming the first bad line and why."""
    dataset_size_check(len(data))
    text = _text(data)
    rows = text.split("\n")
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows:
        raise _refused("The file is empty: a dataset needs at least one training example.")
    for number, row in enumerate(rows, start=1):
        reason = _example_error(row)
        if reason:
            raise _refused(f"line {number}: {reason}")
    return Summary(lines=len(rows), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _text(data: bytes) -> str:
    body = data[len(BOM) :] if data.startswith(BOM) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        raise _refused(f"line {line}: not UTF-8 text (byte {exc.start + 1})") from None


def _example_error(row: str) -> str | None:
    """Why one line is not a training example; None when it is one."""
    if not row.strip():
        return "blank line (only trailing blank lines are allowed)"
    try:
        example = json_loads(row)
    except JSONTooDeep:
        return "nested too deeply"
    except ValueError:
        return "not valid JSON"
    if not isinstance(example, dict):
        return "must be a JSON object"
    if "tools" in example and not _is_list_of_objects(example["tools"]):
        return "tools must be a list of objects"
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for index, message in enumerate(messages):
        reason = _message_error(message)
        if reason:
            return f"messages[{index}]{reason}"
    if not any(message["role"] == "assistant" for message in messages):
        return "messages needs at least one assistant message"
    return None


def _message_error(message) -> str | None:
    """Why one message is not valid, as the rest of ``messages[i]...``; None when valid."""
    if not isinstance(message, dict):
        return " must be an object"
    role = message.get("role")
    if role not in ROLES:
        return f".role must be one of {', '.join(ROLES)}"
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and (role != "assistant" or not _is_list_of_objects(tool_calls)):
        return ".tool_calls must be a non-empty list of objects, on an assistant message"
    content = message.get("content")
    if content is None and not (role == "assistant" and tool_calls):
        return ".content must be a string or a list of text parts"
    if content is not None and not _is_content(content):
        return ".content must be a string or a list of text parts"
    if "weight" in message:
        if role != "assistant":
            return ".weight is only allowed on assistant messages"
        if type(message["weight"]) is not int or message["weight"] not in (0, 1):
            return ".weight must be 0 or 1"
    return None


def _is_content(content) -> bool:
    if isinstance(content, str):
        return True
    return (
        isinstance(content, list)
        and bool(content)
        and all(
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
            for part in content
        )
    )


def _is_list_of_objects(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dataset_owner(*, user, organisation: str | None, key_organisation=None) -> Organisation | None:
    """The organisation that will own the user's upload; None: the user owns it.

    ``organisation`` (a slug or an id) names one the user belongs to (any, for staff);
    else the API key's organisation; else the user's only organisation.
    """
    if organisation not in (None, ""):
        found = _organisation_named(str(organisation), user)
        if found is None:
            raise InvalidRequest(
                f"Unknown organisation '{organisation}', or you are not a member of it.",
                param="organisation",
                code=ErrorCode.INVALID_VALUE,
            )
        return found
    if key_organisation is not None:
        return key_organisation
    own = list(Organisation.objects.filter(memberships__user=user)[:2])
    return own[0] if len(own) == 1 else None


def _organisation_named(ref: str, user) -> Organisation | None:
    orgs = Organisation.objects.all()
    if not user.is_staff:
        orgs = orgs.filter(memberships__user=user)
    if ref.isascii() and ref.isdigit() and len(ref) < 19:
        return orgs.filter(pk=int(ref)).first() or orgs.filter(slug=ref).first()
    if "\x00" in ref:  # no slug holds one (PostgreSQL refuses the query)
        return None
    return orgs.filter(slug=ref).first()


def dataset_create(
    *, user, organisation: Organisation | None, name: str, data: bytes, purpose: str = PURPOSE
) -> Dataset:
    """A checked dataset owned by ``organisation`` (else by ``user``); nothing on a bad file."""
    if not selectors.dataset_may_upload(user, organisation):
        raise PermissionDenied(
            "Uploading a dataset needs the admin role, or the trainer role in the organisation "
            "that will own it."
        )
    dataset = Dataset(organisation=organisation, created_by=user, name=name, purpose=purpose)
    dataset_content_set(dataset, data)
    dataset.save()
    return dataset


def dataset_content_set(dataset: Dataset, data: bytes) -> None:
    """Checks ``data`` and puts it with its summary on the (unsaved) row."""
    summary = dataset_check(data)
    dataset.content = data
    dataset.bytes, dataset.lines, dataset.sha256 = summary.bytes, summary.lines, summary.sha256


def dataset_delete(*, user, dataset: Dataset) -> None:
    """Deletes a dataset the user may change; its jobs keep their rows (dataset left empty)."""
    if not selectors.dataset_may_change(user, dataset):
        raise PermissionDenied(
            "Deleting a dataset needs the admin role, or the trainer role in its organisation."
        )
    dataset.delete()
