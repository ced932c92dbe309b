"""Node rows: where each node's agent answers, with which key, and where its instances listen.

This host's node (INSTANCE_NODE) needs no setup: its row is made from the
settings (INSTANCE_AGENT_URL, INSTANCE_AGENT_KEY, INSTANCE_HOST) the first time
a write needs it, and `make run` keeps it in step with them. Reads never write:
until the row exists, the local node is answered from the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from panel.errors import ErrorCode, InvalidRequest, NotFound

from ..models import Node
from . import procs
from .selectors import is_valid_name

PORT_MIN, PORT_MAX = 1024, 65535


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    """How to reach one node: its agent's base URL and key, and its instances' host."""

    name: str
    address: str
    api_key: str = field(repr=False)
    instance_host: str


def _local_fields() -> dict:
    return {
        "address": settings.INSTANCE_AGENT_URL,
        "api_key": settings.INSTANCE_AGENT_KEY,
        "instance_host": settings.INSTANCE_HOST,
    }


def is_local(name: str) -> bool:
    return name == settings.INSTANCE_NODE


def node_ensure_local(*, update: bool = False) -> Node:
    """This host's node row, made from the settings when missing (and, with ``update``,
    brought in step with them: `make run` starts the agent those settings describe)."""
    if update:
        node, _ = Node.objects.update_or_create(
            name=settings.INSTANCE_NODE, defaults=_local_fields()
        )
        return node
    node, _ = Node.objects.get_or_create(name=settings.INSTANCE_NODE, defaults=_local_fields())
    return node


def _row(name: str, *, create_local: bool) -> Node | None:
    node = Node.objects.filter(name=name).first()
    if node is None and is_local(name):
        node = node_ensure_local() if create_local else Node(name=name, **_local_fields())
    return node


def node_endpoint(name: str, *, create_local: bool = False) -> NodeEndpoint | None:
    """The endpoint of the node ``name`` (None when no such node exists)."""
    node = _row(name, create_local=create_local)
    if node is None:
        return None
    return NodeEndpoint(
        name=node.name,
        address=node.address.rstrip("/"),
        api_key=node.api_key,
        instance_host=node.instance_host,
    )


def instance_hosts() -> dict[str, str]:
    """Every node's instance host, by node name (one query)."""
    hosts = dict(Node.objects.values_list("name", "instance_host"))
    hosts.setdefault(settings.INSTANCE_NODE, settings.INSTANCE_HOST)
    return hosts


def node_check(name: str) -> None:
    """Raises a ValidationError unless instances may be placed on the node ``name``."""
    if is_local(name):
        node_ensure_local()
    elif not Node.objects.filter(name=name).exists():
        message = (
            f"No node is named '{name}'; add it first (admin: Nodes) or use "
            f"'{settings.INSTANCE_NODE}', this host's node."
        )
        raise ValidationError(message, code="unknown_node")


def nodes_list() -> list[Node]:
    """Every node by name, this host's included even before its row exists."""
    nodes = list(Node.objects.order_by("name"))
    if not any(is_local(node.name) for node in nodes):
        nodes.append(Node(name=settings.INSTANCE_NODE, **_local_fields()))
        nodes.sort(key=lambda node: node.name)
    return nodes


def node_get(*, name: str) -> Node:
    """The node named ``name``; 400 for a name no node can have, else 404."""
    if not is_valid_name(name):
        raise InvalidRequest(
            "A node name is 1 to 63 lower-case letters, digits and hyphens, starting and "
            "ending with a letter or digit.",
            param="name",
            code=ErrorCode.INVALID_NAME,
        )
    node = _row(name, create_local=False)
    if node is None:
        raise NotFound(f"No node is named '{name}'.")
    return node


def shown_address(address: str) -> str:
    """An agent address as it may be shown: any user and password in it left out."""
    parts = urlsplit(address)
    if parts.username is None and parts.password is None:
        return address
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def address_check(address: str) -> None:
    """Raises ValueError with a message unless ``address`` is an agent's base URL."""
    try:
        parts = urlsplit(address)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError("Write the agent's base URL, e.g. http://10.0.0.5:9201.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Write the agent's base URL, e.g. http://10.0.0.5:9201.")
    if parts.username is not None or parts.password is not None:
        raise ValueError("Leave the user and password out; the key has a field of its own.")
    if parts.query or parts.fragment:
        raise ValueError("The address takes no query or fragment.")


def port_range_check(text: str) -> None:
    """Raises ValueError with a message unless ``text`` is empty or "first-last"."""
    if not text:
        return
    try:
        ports = procs.parse_port_range(text)
    except ValueError:
        raise ValueError('Write the range as "first-last", e.g. 8200-8999.') from None
    if not ports or ports.start < PORT_MIN or ports.stop - 1 > PORT_MAX:
        raise ValueError(f"Use ports from {PORT_MIN} to {PORT_MAX}, the first not above the last.")
