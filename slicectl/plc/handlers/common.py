"""Helpers the handler modules share: generic Get entries and small lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select

from .. import crud
from .. import schema as s
from ..call import Call
from ..errors import InvalidArgument
from ..fields import Field
from ..methods import TABLE, Fields, Filter, Ref, ReturnFields, arg
from ..objects import ROLE_IDS, ROLES, TAG_TYPE, Obj

Restrict = Callable[[Call], ColumnElement[bool] | None]


def register_get(obj: Obj, roles: frozenset[str], name: str | None = None,
                 restrict: Restrict | None = None, doc: str | None = None) -> None:
    """``Get<Objs>(auth, filter=None, return_fields=None)``: a list of structs."""
    method = name or f"Get{obj.name}s"

    def handler(call: Call, filt: object, wanted: object) -> list[dict[str, Any]]:
        return crud.get(call.conn, obj, filt, wanted, call.now,
                        restrict(call) if restrict else None)

    handler.__doc__ = doc or (f"Return the {obj.name} objects matching the filter (all if "
                              f"none), with the fields asked for (all if none).")
    TABLE.method(method, roles, arg("filter", Filter(obj), True),
                 arg("return_fields", ReturnFields(obj), True),
                 returns="array of struct", writes=False)(handler)


def lookup(name: str, roles: frozenset[str], values: Callable[[], list[Any]], doc: str) -> None:
    def handler(call: Call) -> list[Any]:
        return values()
    handler.__doc__ = doc
    TABLE.method(name, roles, returns="array", writes=False)(handler)


def role_id(value: object) -> int:
    """A role named by id or name."""
    if isinstance(value, str) and value in ROLE_IDS:
        return ROLE_IDS[value]
    if isinstance(value, int) and value in ROLES:
        return value
    raise InvalidArgument(f"Invalid role value: expected one of {', '.join(ROLE_IDS)} or their "
                          f"ids, got {str(value)[:40]!r}")


ROLE = Field("string", 20, nullable=False)


class RoleArg:
    xmlrpc = "int or string"

    def describe(self) -> str:
        return "role_id or role name (admin, pi, user, tech)"

    def check(self, name: str, value: object) -> object:
        return role_id(value)


def tag_type(call: Call, ref: object) -> dict[str, Any]:
    """A tag type by id or tagname, with the role names allowed to write it."""
    row = crud.resolve(call.conn, TAG_TYPE, ref)
    rids = call.conn.execute(select(s.tag_type_role.c.role_id).where(
        s.tag_type_role.c.tag_type_id == row["tag_type_id"])).scalars().all()
    row["roles"] = [ROLES[r] for r in rids if r in ROLES]
    return row


def link(call: Call, table: Any, present: bool, **keys: Any) -> bool:
    """Make the association row ``keys`` exist (or not); True if that changed anything."""
    cond = [table.c[k] == v for k, v in keys.items()]
    exists = call.conn.execute(select(*[table.c[k] for k in keys]).where(*cond)).first()
    if present and exists is None:
        call.conn.execute(insert(table).values(**keys))
        return True
    if not present and exists is not None:
        call.conn.execute(delete(table).where(*cond))
        return True
    return False


# generic Add/Update/Delete entries --------------------------------------------------------------

#: Decides on the row a write touches (the parent for Add); raises PermissionDenied.
Guard = Callable[[Call, dict[str, Any]], None]


def key_free(call: Call, obj: Obj, fields: dict[str, Any], except_id: int | None = None) -> None:
    """Fault 102 if ``fields`` names a natural key another row already has."""
    if obj.key is None or obj.key not in fields:
        return
    value = fields[obj.key]
    col = obj.table.c[obj.key_column or obj.key]
    found = call.conn.execute(select(obj.table.c[obj.id]).where(
        col == (value.lower() if obj.key_lower else value))).scalar()
    if found is not None and found != except_id:
        raise InvalidArgument(f"Invalid {obj.key} value: expected an unused {obj.key}, got "
                              f"{value!r} (taken)")


def register_add(obj: Obj, roles: frozenset[str], *, parent: Obj | None = None,
                 guard: Guard | None = None, name: str | None = None, doc: str | None = None
                 ) -> None:
    """``Add<Obj>(auth, [parent,] fields) -> id``; the guard sees the parent row (or {})."""
    method = name or f"Add{obj.name}"

    def handler(call: Call, *args: Any) -> int:
        fields: dict[str, Any] = args[-1]
        prow: dict[str, Any] = {}
        values = {**obj.defaults, **fields}
        if parent is not None:
            prow = crud.resolve(call.conn, parent, args[0])
            values[parent.id] = prow[parent.id]
        if guard is not None:
            guard(call, prow)
        key_free(call, obj, fields)
        new_id = crud.insert_row(call.conn, obj, values)
        call.event(obj.name, [new_id], fields)
        return new_id

    handler.__doc__ = doc or (f"Add a {obj.name}" + (f" to a {parent.name}" if parent else "")
                              + f"; returns its {obj.id}.")
    args = ([arg(f"{parent.id}_or_{parent.key}" if parent.key else parent.id, Ref(parent))]
            if parent is not None else [])
    TABLE.method(method, roles, *args, arg(f"{obj.name.lower()}_fields", Fields(obj, "add")),
                 returns="int", writes=True)(handler)


def register_update(obj: Obj, roles: frozenset[str], *, guard: Guard | None = None,
                    name: str | None = None, doc: str | None = None) -> None:
    """``Update<Obj>(auth, id, fields) -> 1``; the guard sees the row."""
    def handler(call: Call, ref: object, fields: dict[str, Any]) -> int:
        row = crud.resolve(call.conn, obj, ref)
        if guard is not None:
            guard(call, row)
        key_free(call, obj, fields, row[obj.id])
        crud.update_row(call.conn, obj, row[obj.id], fields)
        call.event(obj.name, [row[obj.id]], fields)
        return 1

    handler.__doc__ = doc or f"Update a {obj.name}; returns 1."
    TABLE.method(name or f"Update{obj.name}", roles, arg(obj.id, Ref(obj)),
                 arg(f"{obj.name.lower()}_fields", Fields(obj, "update")),
                 returns="int", writes=True)(handler)


def register_delete(obj: Obj, roles: frozenset[str], *, guard: Guard | None = None,
                    name: str | None = None, doc: str | None = None) -> None:
    """``Delete<Obj>(auth, id) -> 1``; the guard sees the row."""
    def handler(call: Call, ref: object) -> int:
        row = crud.resolve(call.conn, obj, ref)
        if guard is not None:
            guard(call, row)
        crud.delete_row(call.conn, obj, row[obj.id])
        call.event(obj.name, [row[obj.id]])
        return 1

    handler.__doc__ = doc or f"Delete a {obj.name}; returns 1."
    TABLE.method(name or f"Delete{obj.name}", roles, arg(obj.id, Ref(obj)), returns="int",
                 writes=True)(handler)


def register_link(name: str, roles: frozenset[str], table: Any, left: Obj, right: Obj,
                  present: bool, *, guard: Guard | None = None, guard_right: bool = False,
                  extra: tuple[str, Field] | None = None, doc: str) -> None:
    """``<name>(auth, left, right[, extra]) -> 1``: make the association row exist (or not);
    idempotent. The guard sees the left row (the right one with ``guard_right``)."""
    def handler(call: Call, lref: object, rref: object, *rest: Any) -> int:
        lrow = crud.resolve(call.conn, left, lref)
        rrow = crud.resolve(call.conn, right, rref)
        if guard is not None:
            guard(call, rrow if guard_right else lrow)
        keys = {left.id: lrow[left.id], right.id: rrow[right.id]}
        if present and extra is not None:
            cond = [table.c[k] == v for k, v in keys.items()]
            call.conn.execute(delete(table).where(*cond))
            call.conn.execute(insert(table).values(**keys, **{extra[0]: rest[0]}))
            call.event(left.name, [lrow[left.id]], {right.id: rrow[right.id], extra[0]: rest[0]})
        elif link(call, table, present, **keys):
            call.event(left.name, [lrow[left.id]], {right.id: rrow[right.id]})
        return 1

    handler.__doc__ = doc
    args = [arg(f"{left.id}_or_{left.key}" if left.key else left.id, Ref(left)),
            arg(f"{right.id}_or_{right.key}" if right.key else right.id, Ref(right))]
    if extra is not None and present:
        args.append(arg(extra[0], extra[1]))
    TABLE.method(name, roles, *args, returns="int", writes=True)(handler)
