"""The method table: each PLCAPI method described once, as data.

An entry names the roles that may call it, its arguments (each with a type that checks
wire values), what it returns and what it does. The argument checks, ``system.listMethods``,
``system.methodSignature`` and ``system.methodHelp`` are all generated from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .crud import check_fields
from .errors import InvalidMethod, bad_value
from .fields import Field
from .filters import return_fields
from .objects import Obj


class ArgType(Protocol):
    @property
    def xmlrpc(self) -> str: ...

    def describe(self) -> str: ...

    def check(self, name: str, value: object) -> object: ...


@dataclass(frozen=True)
class Value:
    """A plain value of one field type."""

    field: Field

    @property
    def xmlrpc(self) -> str:
        return self.field.xmlrpc

    def describe(self) -> str:
        return self.field.doc or self.field.xmlrpc

    def check(self, name: str, value: object) -> object:
        return self.field.check(name, value)


@dataclass(frozen=True)
class Ref:
    """An object named by its id or (where it has one) its natural key."""

    obj: Obj

    @property
    def xmlrpc(self) -> str:
        return "int" if self.obj.key is None else "int or string"

    def describe(self) -> str:
        return f"{self.obj.id}" + (f" or {self.obj.key}" if self.obj.key else "")

    def check(self, name: str, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and self.obj.key is not None:
            return value
        raise bad_value(name, self.xmlrpc, value)


@dataclass(frozen=True)
class Refs:
    """A list of ids or natural keys."""

    obj: Obj

    @property
    def xmlrpc(self) -> str:
        return "array"

    def describe(self) -> str:
        return f"array of {Ref(self.obj).describe()}"

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, list):
            raise bad_value(name, "array", value)
        return [Ref(self.obj).check(name, v) for v in value]


@dataclass(frozen=True)
class Fields:
    """A struct of an object's fields, as Add (``mode="add"``) or Update accepts them."""

    obj: Obj
    mode: str

    @property
    def xmlrpc(self) -> str:
        return "struct"

    def allowed(self) -> frozenset[str]:
        return self.obj.add if self.mode == "add" else self.obj.update

    def describe(self) -> str:
        req = [f"{f}*" if self.mode == "add" and f in self.obj.required else f
               for f in sorted(self.allowed())]
        return f"struct of {self.obj.name} fields: {', '.join(req)}"

    def check(self, name: str, value: object) -> object:
        return check_fields(self.obj, value, self.mode)


@dataclass(frozen=True)
class OpenStruct:
    """A struct whose keys the method itself checks (fields plus tag names)."""

    obj: Obj
    mode: str

    @property
    def xmlrpc(self) -> str:
        return "struct"

    def describe(self) -> str:
        return Fields(self.obj, self.mode).describe() + ", and tag names"

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, dict):
            raise bad_value(name, "struct", value)
        return value


@dataclass(frozen=True)
class Filter:
    """None, an id, a natural key, a list of them, or a struct of fields (``filters``)."""

    obj: Obj

    @property
    def xmlrpc(self) -> str:
        return "int, string, array or struct"

    def describe(self) -> str:
        return f"{self.obj.name} filter"

    def check(self, name: str, value: object) -> object:
        if value is None or (isinstance(value, int | str | list | dict) and not isinstance(value, bool)):
            return value
        raise bad_value(name, self.xmlrpc, value)


@dataclass(frozen=True)
class ReturnFields:
    obj: Obj

    @property
    def xmlrpc(self) -> str:
        return "array"

    def describe(self) -> str:
        return f"fields of {self.obj.name} to return: {', '.join(self.obj.readable)}"

    def check(self, name: str, value: object) -> object:
        return_fields(self.obj, value)
        return value


@dataclass(frozen=True)
class Arg:
    name: str
    type: ArgType
    optional: bool = False


@dataclass(frozen=True)
class Method:
    """One entry of the table; ``handler(call, *args)`` runs in the call's transaction."""

    name: str
    roles: frozenset[str]
    args: tuple[Arg, ...]
    returns: str
    doc: str
    handler: Callable[..., Any]
    writes: bool
    auth: bool = True

    @property
    def min_args(self) -> int:
        return int(self.auth) + sum(1 for a in self.args if not a.optional)

    @property
    def max_args(self) -> int:
        return int(self.auth) + len(self.args)

    def check_args(self, args: list[object]) -> list[object]:
        """The checked arguments after the auth struct (optional ones filled with None)."""
        out: list[object] = []
        for i, a in enumerate(self.args):
            if i < len(args):
                if a.optional and args[i] is None:
                    out.append(None)
                else:
                    out.append(a.type.check(a.name, args[i]))
            else:
                out.append(None)
        return out

    def signatures(self) -> list[list[str]]:
        """XML-RPC signatures: the return type, then the argument types; one per arity."""
        def first(kind: str) -> str:
            return kind.replace(",", " ").split()[0]

        head = [first(self.returns)] + (["struct"] if self.auth else [])
        required = [first(a.type.xmlrpc) for a in self.args if not a.optional]
        sigs = [head + required]
        extra = [first(a.type.xmlrpc) for a in self.args if a.optional]
        for i in range(1, len(extra) + 1):
            sigs.append(head + required + extra[:i])
        return sigs

    def help(self) -> str:
        order = ("admin", "pi", "user", "tech", "node", "anonymous")
        roles = sorted(self.roles, key=lambda r: order.index(r) if r in order else len(order))
        lines = [self.doc, "", f"Roles: {', '.join(roles)}", "Parameters:"]
        if self.auth:
            lines.append("  auth (struct): an auth struct (AuthMethod password, session, hmac or "
                         "anonymous)")
        for a in self.args:
            opt = ", optional" if a.optional else ""
            lines.append(f"  {a.name} ({a.type.xmlrpc}{opt}): {a.type.describe()}")
        lines.append(f"Returns: {self.returns}")
        return "\n".join(lines)


class Table:
    """The method table; handler modules register their entries with :meth:`method`."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def method(self, name: str, roles: frozenset[str], *args: Arg, returns: str, writes: bool,
               auth: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.methods:
                raise ValueError(f"method {name} registered twice")
            doc = inspect.cleandoc(fn.__doc__ or name)
            self.methods[name] = Method(name, roles, tuple(args), returns, doc, fn, writes, auth)
            return fn
        return register

    def get(self, name: str) -> Method:
        if name not in self.methods:
            raise InvalidMethod(f"{name[:80]!r} is not a PLCAPI method")
        return self.methods[name]


def arg(name: str, type_: ArgType | Field, optional: bool = False) -> Arg:
    return Arg(name, Value(type_) if isinstance(type_, Field) else type_, optional)


TABLE = Table()
