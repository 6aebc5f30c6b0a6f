"""Get* filters and return_fields, turned into SQL. Pure: no connection needed.

A filter is None (all), an int (the id), a string (the natural key), a list of ids and
keys (any of them) or a struct. In a struct every field must match (or any, with
``-OR``); a list value means IN; ``*`` or ``%`` in a string is a wildcard; a field name
may carry one operator prefix: ``~`` not, ``<``, ``>``, ``[`` (<=), ``]`` (>=). The keys
``-SORT`` (a field or list, ``-`` before a name sorts descending), ``-LIMIT`` and
``-OFFSET`` shape the result. Unknown fields are fault 102.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, true

from .errors import InvalidArgument, bad_value
from .fields import Field
from .objects import Obj

ID = Field("int", None, nullable=False)

OPERATORS = ("~", "<", ">", "[", "]")


@dataclass
class Query:
    where: list[ColumnElement[bool]] = field(default_factory=list)
    order_by: list[ColumnElement[Any]] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


def column(obj: Obj, name: str) -> ColumnElement[Any]:
    if name in obj.derived:
        return obj.derived[name]()
    return obj.table.c[name]


def key_match(obj: Obj, keys: list[str]) -> ColumnElement[bool]:
    if obj.key is None:
        raise InvalidArgument(f"Invalid {obj.name} filter: expected an id, got a string")
    limit = obj.field_of(obj.key).max_len
    for k in keys:
        Field("string", limit).check(obj.key, k)
    col = obj.table.c[obj.key_column or obj.key]
    return col.in_([k.lower() for k in keys] if obj.key_lower else keys)


def like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("_", "\\_")
    return escaped.replace("*", "%")


def _scalar(obj: Obj, name: str, value: object) -> object:
    f = obj.field_of(name)
    if f.kind == "string":
        if value is not None and not isinstance(value, str):
            raise bad_value(name, "string", value)
        if isinstance(value, str) and f.max_len is not None:
            Field("string", f.max_len).check(name, value)
        return value
    if f.kind in ("timestamp", "int", "boolean", "double"):
        return f.check(name, value)
    return value


def _condition(obj: Obj, key: str, value: object) -> ColumnElement[bool]:
    op = key[0] if key[:1] in OPERATORS else ""
    name = key[1:] if op else key
    if name not in obj.filterable:
        raise InvalidArgument(f"Invalid {obj.name} filter field {name!r}: expected one of "
                              f"{', '.join(sorted(obj.filterable))}, got an unknown field")
    col = column(obj, name)
    if op in ("<", ">", "[", "]"):
        if isinstance(value, list | dict) or value is None:
            raise bad_value(name, "a single value for a comparison", value)
        v = _scalar(obj, name, value)
        return {"<": col < v, ">": col > v, "[": col <= v, "]": col >= v}[op]
    if isinstance(value, list):
        vals = [_scalar(obj, name, v) for v in value]
        cond: ColumnElement[bool] = col.in_(vals) if vals else false()
    elif value is None:
        cond = col.is_(None)
    elif isinstance(value, dict):
        raise bad_value(name, obj.field_of(name).xmlrpc, value)
    else:
        v = _scalar(obj, name, value)
        if isinstance(v, str) and ("*" in v or "%" in v):
            cond = col.like(like_pattern(v), escape="\\")
        else:
            cond = col == v
    return not_(cond) if op == "~" else cond


def _sort(obj: Obj, value: object) -> list[ColumnElement[Any]]:
    names = value if isinstance(value, list) else [value]
    out: list[ColumnElement[Any]] = []
    for n in names:
        if not isinstance(n, str):
            raise bad_value("-SORT", "string", n)
        desc = n.startswith("-")
        name = n.lstrip("+-")
        if name not in obj.filterable:
            raise InvalidArgument(f"Invalid -SORT value: expected a field of {obj.name}, "
                                  f"got {name!r}")
        col = column(obj, name)
        out.append(col.desc() if desc else col.asc())
    return out


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_value(name, "a non-negative int", value)
    return value


def build(obj: Obj, filt: object, now: int | None = None) -> Query:
    """The SQL for ``filt`` on ``obj``; ``now`` hides rows that are no longer live
    (expired slices)."""
    q = Query()
    if now is not None and obj.live is not None:
        q.where.append(obj.live(now))
    idcol = obj.table.c[obj.id]
    if filt is None:
        pass
    elif isinstance(filt, bool):
        raise bad_value(f"{obj.name} filter", "int, string, array or struct", filt)
    elif isinstance(filt, int):
        q.where.append(idcol == ID.check(obj.id, filt))
    elif isinstance(filt, str):
        q.where.append(key_match(obj, [filt]))
    elif isinstance(filt, list):
        ids = [ID.check(obj.id, v) for v in filt if isinstance(v, int) and not isinstance(v, bool)]
        names = [v for v in filt if isinstance(v, str)]
        if len(ids) + len(names) != len(filt):
            bad = next(v for v in filt if v not in ids and v not in names)
            raise bad_value(f"{obj.name} filter", "int or string", bad)
        parts: list[ColumnElement[bool]] = []
        if ids:
            parts.append(idcol.in_(ids))
        if names:
            parts.append(key_match(obj, names))
        q.where.append(or_(*parts) if parts else false())
    elif isinstance(filt, dict):
        conds: list[ColumnElement[bool]] = []
        use_or = False
        for key, value in filt.items():
            if key == "-SORT":
                q.order_by = _sort(obj, value)
            elif key == "-LIMIT":
                q.limit = _count(key, value)
            elif key == "-OFFSET":
                q.offset = _count(key, value)
            elif key == "-OR":
                use_or = bool(value)
            elif key == "-AND":
                use_or = not bool(value)
            else:
                conds.append(_condition(obj, key, value))
        if conds:
            q.where.append(or_(*conds) if use_or else and_(*conds))
        elif use_or:
            q.where.append(true())
    else:
        raise bad_value(f"{obj.name} filter", "int, string, array or struct", filt)
    if not q.order_by:
        q.order_by = [idcol.asc()]
    return q


def return_fields(obj: Obj, wanted: object) -> list[str]:
    """The fields to return, in the object's order; unknown names are fault 102."""
    if wanted is None:
        return list(obj.readable)
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
        raise bad_value("return_fields", "array of strings", wanted)
    unknown = [w for w in wanted if w not in obj.readable]
    if unknown:
        raise InvalidArgument(f"Invalid return_fields value: expected fields of {obj.name}, "
                              f"got {unknown[0]!r}")
    return [f for f in obj.readable if f in wanted]


