"""Frozen copies of rows, as the per-process caches (``panel.localcache``) keep them."""

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def snapshot_of(cls: type[T], row: Any, **values: Any) -> T:
    """A ``cls`` (a dataclass) from ``row``: a field not given in ``values`` is copied
    from the row's attribute of the same name."""
    copied = {f.name: getattr(row, f.name) for f in fields(cls) if f.name not in values}
    return cls(**copied, **values)
