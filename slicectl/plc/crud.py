"""Generic Get/Add/Update/Delete of one object class on one connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from . import filters
from .errors import InvalidArgument, bad_value
from .objects import Obj


def check_fields(obj: Obj, values: object, mode: str, allowed: frozenset[str] | None = None
                 ) -> dict[str, Any]:
    """Validate a fields struct for Add (``mode="add"``) or Update; fault 102 on an unknown
    or read-only field, a bad value, or (Add) a missing required field."""
    if not isinstance(values, dict):
        raise bad_value(f"{obj.name} fields", "struct", values)
    allowed = allowed if allowed is not None else (obj.add if mode == "add" else obj.update)
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k not in allowed:
            raise InvalidArgument(f"Invalid {obj.name} field {k!r}: expected one of "
                                  f"{', '.join(sorted(allowed))}, got an unknown or read-only field")
        out[k] = obj.fields[k].check(k, v)
    if mode == "add":
        missing = sorted(obj.required - set(out))
        if missing:
            raise InvalidArgument(f"Invalid {obj.name} fields: expected {missing[0]}, got none")
    return out


def get(conn: Connection, obj: Obj, filt: object = None, wanted: object = None,
        now: int | None = None, restrict: ColumnElement[bool] | None = None) -> list[dict[str, Any]]:
    """Rows of ``obj`` matching ``filt``, with the ``wanted`` fields."""
    q = filters.build(obj, filt, now)
    names = filters.return_fields(obj, wanted)
    idcol = obj.table.c[obj.id]
    cols: list[Any] = [idcol.label("__id")]
    for n in names:
        if n in obj.derived:
            cols.append(obj.derived[n]().label(n))
        elif n in obj.fields:
            cols.append(obj.table.c[n].label(n))
    stmt = select(*cols).select_from(obj.table).where(*q.where)
    if restrict is not None:
        stmt = stmt.where(restrict)
    stmt = stmt.order_by(*q.order_by)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    if q.offset is not None:
        stmt = stmt.offset(q.offset)
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    ids = [r["__id"] for r in rows]
    wanted_computed = [n for n in names if n in obj.computed]
    if rows and wanted_computed:
        t = now if now is not None else 0
        for n in wanted_computed:
            values = obj.computed[n](conn, ids, t)
            for r in rows:
                r[n] = values.get(r["__id"])
    for r in rows:
        del r["__id"]
    return [{n: r[n] for n in names} for r in rows]


def resolve(conn: Connection, obj: Obj, ref: object, now: int | None = None) -> dict[str, Any]:
    """The one row an id or natural key names (all columns); fault 102 if none."""
    if isinstance(ref, bool) or not isinstance(ref, int | str):
        raise bad_value(f"{obj.name} id", "int or string", ref)
    q = filters.build(obj, ref, now)
    row = conn.execute(select(obj.table).where(*q.where)).mappings().first()
    if row is None:
        raise InvalidArgument(f"No such {obj.name.lower()}: {str(ref)[:80]!r}")
    return dict(row)


def resolve_many(conn: Connection, obj: Obj, refs: object, now: int | None = None
                 ) -> list[dict[str, Any]]:
    if not isinstance(refs, list):
        raise bad_value(f"{obj.name} ids", "array", refs)
    return [resolve(conn, obj, r, now) for r in refs]


def insert_row(conn: Connection, obj: Obj, values: Mapping[str, Any]) -> int:
    result = conn.execute(insert(obj.table).values(**values))
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def update_row(conn: Connection, obj: Obj, row_id: int, values: Mapping[str, Any]) -> None:
    if values:
        conn.execute(update(obj.table).where(obj.table.c[obj.id] == row_id).values(**values))


def delete_row(conn: Connection, obj: Obj, row_id: int) -> None:
    conn.execute(delete(obj.table).where(obj.table.c[obj.id] == row_id))


def count(conn: Connection, obj: Obj, where: ColumnElement[bool] | None = None) -> int:
    stmt = select(func.count()).select_from(obj.table)
    if where is not None:
        stmt = stmt.where(where)
    return int(conn.execute(stmt).scalar_one())
