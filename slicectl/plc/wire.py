"""A methodResponse writer for PLCAPI's answers, about three times faster than
``xmlrpc.client.dumps`` on GetSlivers-sized structs (the standard marshaller dispatches
through a dict and a callback per value). Pure; the same XML-RPC any client parses."""

from __future__ import annotations

from .fields import INT_MAX, INT_MIN

_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _dump(value: object, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
        if "&" in text or "<" in text or ">" in text:
            text = text.translate(_ESCAPE)
        out.append(f"<value><string>{text}</string></value>\n")
    elif kind is int:
        if not INT_MIN <= value <= INT_MAX:  # type: ignore[operator]
            raise OverflowError("int exceeds XML-RPC limits")
        out.append(f"<value><int>{value}</int></value>\n")
    elif kind is Prerendered:
        out.append("<value><struct>\n")
        out.append(render_members(value))  # type: ignore[arg-type]
        out.append(value.tail)  # type: ignore[attr-defined]
        out.append("</struct></value>\n")
    elif kind is dict:
        out.append("<value><struct>\n")
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                if not isinstance(k, str):
                    raise TypeError("dictionary key must be string")
                k = str(k)
            if "&" in k or "<" in k or ">" in k:
                k = k.translate(_ESCAPE)
            out.append(f"<member>\n<name>{k}</name>\n")
            _dump(v, out)
            out.append("</member>\n")
        out.append("</struct></value>\n")
    elif kind is list or kind is tuple:
        out.append("<value><array><data>\n")
        for v in value:  # type: ignore[attr-defined]
            _dump(v, out)
        out.append("</data></array></value>\n")
    elif value is None:
        out.append("<value><nil/></value>")
    elif kind is bool:
        out.append(f"<value><boolean>{int(value)}</boolean></value>\n")  # type: ignore[call-overload]
    elif kind is float:
        out.append(f"<value><double>{value!r}</double></value>\n")
    elif isinstance(value, bool | int | float | str):  # subclasses (SQLAlchemy's quoted_name)
        _dump(bool(value) if isinstance(value, bool) else
              int(value) if isinstance(value, int) else
              float(value) if isinstance(value, float) else str(value), out)
    else:
        raise TypeError(f"cannot marshal {kind.__name__} objects")


def dumps_response(value: object) -> bytes:
    """The methodResponse carrying ``value`` (str, int, bool, float, None, lists, structs).

    Raises:
        OverflowError: an int outside 32 bits. TypeError: a value XML-RPC cannot carry.
    """
    out = ["<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"]
    _dump(value, out)
    out.append("</param>\n</params>\n</methodResponse>\n")
    return "".join(out).encode("utf-8", "xmlcharrefreplace")


class Prerendered(dict[str, object]):
    """A struct whose members are ``head`` (rendered at each call) followed by ``tail``,
    members already rendered as XML-RPC text (``<member>...</member>``): how a cached
    GetSlivers answer goes out with a fresh timestamp and nothing else rendered again."""

    def __init__(self, head: dict[str, object], tail: str) -> None:
        super().__init__(head)
        self.tail = tail


def render_members(struct: dict[str, object]) -> str:
    """``struct``'s members as XML-RPC text (for :class:`Prerendered`)."""
    out: list[str] = []
    for k, v in struct.items():
        out.append(f"<member>\n<name>{k.translate(_ESCAPE)}</name>\n")
        _dump(v, out)
        out.append("</member>\n")
    return "".join(out)
