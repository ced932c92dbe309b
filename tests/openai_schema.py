"""Validate API payloads against OpenAI's own OpenAPI spec (test helper).

Usage::

    from tests.openai_schema import validate, errors

    validate(body, "CreateChatCompletionResponse")  # raises AssertionError if invalid
    assert errors(body, "ErrorResponse") == []

The spec (``tests/reference/openai-openapi.yaml``, OpenAPI 3.1 / JSON Schema 2020-12) is a copy
kept in the repository with its MIT licence (``tests/reference/SOURCE.txt`` names the commit), so
a plain clone runs the suite. It takes about a second to parse with the C YAML loader, so the parsed document is pickled under the
project's ``.pytest_cache/`` (falling back to the system temp dir), keyed by the YAML's mtime and
size. Format assertions are off; OpenAPI annotations (``x-*``, ``discriminator``, ``example``,
``deprecated``) are ignored by jsonschema. The 3.0-style ``nullable: true`` that the spec still
uses in places is rewritten into 2020-12 form before validation (see ``_denullable``).
"""

from __future__ import annotations

import functools
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent / "reference" / "openai-openapi.yaml"
SPEC_URI = "urn:openai:openapi"
# Bump when the on-disk cache format or the preprocessing changes.
_CACHE_VERSION = 1
_PROJECT_CACHE_DIR = Path(__file__).resolve().parents[1] / ".pytest_cache" / "openai-openapi"


def _cache_dirs() -> list[Path]:
    return [_PROJECT_CACHE_DIR, Path(tempfile.gettempdir()) / f"openai-openapi-{os.getuid()}"]


def _parse_yaml(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        return yaml.load(fh, Loader=loader)  # CSafeLoader/SafeLoader: no arbitrary objects


def _load_raw_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """Parsed YAML, served from a pickle cache keyed by the YAML's mtime and size."""
    st = path.stat()
    name = f"spec-v{_CACHE_VERSION}-{st.st_mtime_ns}-{st.st_size}.pickle"
    for directory in _cache_dirs():
        try:
            with (directory / name).open("rb") as fh:
                return pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
    spec = _parse_yaml(path)
    for directory in _cache_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(spec, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, directory / name)  # atomic: safe with parallel workers
            break
        except OSError:
            continue
    return spec


def _denullable(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable`` into JSON Schema 2020-12, in place.

    * ``nullable: true`` + ``type: T``  -> ``type: [T, "null"]`` (and ``null`` added to ``enum``)
    * ``nullable: true`` without ``type`` (e.g. next to ``$ref``) -> ``anyOf: [<rest>, null]``
    * ``nullable: false`` is dropped.

    Only boolean ``nullable`` values are touched, so a *property* named ``nullable`` survives.
    """
    if isinstance(node, list):
        for item in node:
            _denullable(item)
        return node
    if not isinstance(node, dict):
        return node
    for value in node.values():
        _denullable(value)
    nullable = node.get("nullable")
    if not isinstance(nullable, bool):
        return node
    del node["nullable"]
    if not nullable:
        return node
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if "null" not in types:
            node["type"] = [*types, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
    else:
        rest = dict(node)
        node.clear()
        node["anyOf"] = [rest, {"type": "null"}]
    return node


@functools.cache
def spec() -> dict[str, Any]:
    """The whole (preprocessed) OpenAPI document. Treat as read-only."""
    return _denullable(_load_raw_spec())


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec()))


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    """A (cached) validator for ``#/components/schemas/<schema_name>``."""
    schemas = spec().get("components", {}).get("schemas", {})
    if schema_name not in schemas:
        raise KeyError(f"{schema_name!r} is not in #/components/schemas of {SPEC_PATH.name}")
    ref = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(ref, registry=_registry())  # no format_checker: formats off


def _fmt(error: ValidationError) -> str:
    text = f"{error.json_path}: {error.message}"
    if error.context:  # anyOf/oneOf: say why each branch failed
        why = list(dict.fromkeys(f"{e.json_path}: {e.message}" for e in error.context))
        text += " [" + "; ".join(why[:6]) + ("; ..." if len(why) > 6 else "") + "]"
    return text


def errors(instance: Any, schema_name: str) -> list[str]:
    """``"<json path>: <message>"`` for each top-level validation error; empty if valid."""
    found = validator(schema_name).iter_errors(instance)
    return [_fmt(e) for e in sorted(found, key=lambda e: (list(map(str, e.path)), e.message))]


def validate(instance: Any, schema_name: str) -> None:
    """Raise ``AssertionError`` if ``instance`` does not match the named schema."""
    error = best_match(validator(schema_name).iter_errors(instance))
    if error is None:
        return
    total = len(errors(instance, schema_name))
    more = f" (+{total - 1} more)" if total > 1 else ""
    raise AssertionError(f"not a valid {schema_name}: {_fmt(error)}{more}")
