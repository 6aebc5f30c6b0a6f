"""Bounded decoding of what slivers send to host daemons, and the shim's requests.

Pure. Every refusal is a :class:`ValidationError` naming the field: a host daemon turns it
into an error for that one request or session, never into its own death.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from slicectl.core.errors import ValidationError

#: Largest JSON request a host daemon decodes (a real shim request is under 100 bytes).
MAX_REQUEST_BYTES = 4096
#: Deepest nesting of arrays and objects in one (a real one has depth 1).
MAX_DEPTH = 8

PROTOS = ("tcp", "udp", "icmp")
OPS = ("open", "sniff", "stats")


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside JSON strings (no recursion)."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def loads_bounded(data: bytes, max_bytes: int = MAX_REQUEST_BYTES,
                  max_depth: int = MAX_DEPTH) -> dict[str, object]:
    """Decode one JSON object of at most ``max_bytes`` and ``max_depth``.

    Raises:
        ValidationError: too big, too deep, not UTF-8, not JSON, or not an object.
    """
    if len(data) > max_bytes:
        raise ValidationError("request", f"at most {max_bytes} bytes", f"{len(data)} bytes",
                              as_text=True)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ValidationError("request", "UTF-8 text", "other bytes", as_text=True) from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValidationError("request", f"JSON nested at most {max_depth} deep",
                              f"depth {depth}", as_text=True)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValidationError("request", "a JSON object", f"invalid JSON ({str(e)[:60]})",
                              as_text=True) from None
    if not isinstance(obj, dict):
        raise field_refusal("request", "a JSON object", obj)
    return obj


@dataclass(frozen=True)
class ShimRequest:
    """A checked first message on a shim connection."""

    op: str
    proto: str = ""
    port: int = 0
    icmp_id: int = 0


def field_refusal(name: str, expected: str, value: object) -> ValidationError:
    """The error for a bad field: a scalar is shown (cut to 40 characters), a container
    by its kind."""
    if isinstance(value, (bool, int, float, type(None))):
        return ValidationError(name, expected, value)
    if isinstance(value, str):
        return ValidationError(name, expected, value[:40])
    kind = "a list" if isinstance(value, list) else \
        "an object" if isinstance(value, dict) else type(value).__name__
    return ValidationError(name, expected, kind, as_text=True)


def _int_field(req: dict[str, object], name: str, lo: int, hi: int) -> int:
    value = req.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        if name not in req:
            raise ValidationError(name, f"an integer from {lo} to {hi}", "none given",
                                  as_text=True)
        raise field_refusal(name, f"an integer from {lo} to {hi}", value)
    return value


def shim_request(req: dict[str, object]) -> ShimRequest:
    """Check a decoded shim request field by field.

    Raises:
        ValidationError: naming the first bad or unknown field.
    """
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise field_refusal("op", f"one of {', '.join(OPS)}", op)
    allowed = {"op"} if op == "stats" else {"op", "proto", "port", "icmp_id"}
    for key in req:
        if key not in allowed:
            raise ValidationError(str(key)[:40], f"one of the fields {', '.join(sorted(allowed))}",
                                  "an unknown field", as_text=True)
    if op == "stats":
        return ShimRequest(op)
    proto = req.get("proto")
    if not isinstance(proto, str) or proto not in PROTOS:
        raise field_refusal("proto", f"one of {', '.join(PROTOS)}", proto)
    if proto == "icmp":
        if op == "sniff":
            raise ValidationError("proto", "tcp or udp for a sniffer socket", proto)
        if "port" in req:
            raise field_refusal("port", "no port for ICMP (give icmp_id)", req["port"])
        return ShimRequest(op, proto, icmp_id=_int_field(req, "icmp_id", 0, 0xFFFF))
    if "icmp_id" in req:
        raise ValidationError("icmp_id", f"no icmp_id for {proto} (give port)", "a value",
                              as_text=True)
    return ShimRequest(op, proto, port=_int_field(req, "port", 1, 65535))
