"""Typed records for what crosses the node manager's socket, and the one place that turns
them into XML-RPC structs and back.

Servers build records and :func:`to_struct` them; clients :func:`from_struct` what they
receive, so a missing or mistyped field fails once, here, with the field named. Unknown
fields are ignored, so an older client keeps working against a newer server.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from slicectl.core.errors import ValidationError

R = TypeVar("R")


@dataclass(frozen=True)
class NetEntry:
    """One sliver's network identity and socket rights (``net_map``): what the shim and
    the admin sniffer need to tag and check its packets."""

    slice: str
    xid: int
    address: str
    container_id: str
    raw_sockets: bool
    admin_sniffer: bool
    tcp_ports: list[int]
    udp_ports: list[int]
    #: The privileged operations the slice may call, and its overlay range (a CIDR).
    vsys: list[str]
    vsys_vnet: str


@dataclass(frozen=True)
class RcapInfo:
    """An rcap as ``rcap_info`` and ``list_rcaps`` show it."""

    rcap: str
    state: str
    slice: str | None
    owner: str
    parent: str | None
    rspec: dict[str, Any]
    created: str


@dataclass(frozen=True)
class SliverView:
    """A sliver as ``get_sliver``, ``list`` and ``bind`` return it (``pid`` is None in
    ``list``, which asks the engine once for all slivers)."""

    name: str
    state: str
    desired: str
    container: str
    container_id: str | None
    pid: int | None
    address: str | None
    xid: int
    uid: int | None
    rspec: dict[str, Any]
    expires: str
    created: str
    created_by: str
    contacts: list[str]
    description: str
    keys: int
    rcaps: list[str]
    net: dict[str, Any]
    #: for a sliver that is meant to be stopped: who stopped it, when and why
    #: (``by``, ``at``, ``reason``); None otherwise
    stopped: dict[str, str] | None = None


def stop_line(stopped: object) -> str:
    """A sliver's ``stopped`` (as :class:`SliverView` carries it over the wire) in one
    line, ``<at> by <by>[: <reason>]``; "" for none."""
    if not isinstance(stopped, dict):
        return ""
    why = f": {stopped.get('reason')}" if stopped.get("reason") else ""
    return f"{stopped.get('at', '')} by {stopped.get('by', '')}{why}"


def to_struct(value: Any) -> Any:
    """A record (or a list of them) as plain XML-RPC data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_struct(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_struct(v) for v in value]
    if isinstance(value, dict):
        return {k: to_struct(v) for k, v in value.items()}
    return value


def _fits(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return False


def _shown(hint: Any) -> str:
    """A type as a reader writes it: ``int``, ``list[int]``, ``str | None``."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def from_struct(cls: type[R], data: object) -> R:
    """Build record ``cls`` from an XML-RPC struct.

    Raises:
        ValidationError: ``data`` is no struct, or a field is missing or of the wrong type.
    """
    name = cls.__name__
    if not isinstance(data, dict):
        raise ValidationError(name, "a struct", data)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data and f.default is not dataclasses.MISSING:
            values[f.name] = f.default
            continue
        if f.name not in data:
            raise ValidationError(f"{name}.{f.name}", "a field of the struct", "none",
                                  as_text=True)
        value = data[f.name]
        if not _fits(value, hints[f.name]):
            raise ValidationError(f"{name}.{f.name}", _shown(hints[f.name]), value)
        values[f.name] = value
    return cls(**values)
