"""The request list: which slices to lease, to whom, for how long, with what. Pure.

A list (or ``{"requests": [...]}``) of mappings::

    - slice: site_name        # required, a PlanetLab slice name
      keys: ["ssh-ed25519 ..."]
      duration: 30m           # required: 90s, 30m, 2h, 3d, 2w
      cpu_share: 2            # optional rspec fields (see LEASE_FIELDS)
      initscript: "#!/bin/sh ..."
      id: monday              # optional: the request's identity (default: the slice)

A request is served once: to lease the same slice again after its lease ended, give it a
new ``id``. Every refusal is one line naming the field (``requests[2].duration: ...``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slicectl.core.errors import UsageError, ValidationError
from slicectl.core.rspec import FIELD_NAMES, parse_rspec, validate_slice_name
from slicectl.core.units import parse_duration_s

#: The rspec fields a request may set: not its window (the duration is), and no right only
#: the node's root grants.
LEASE_FIELDS = tuple(f for f in FIELD_NAMES if f not in
                     ("start", "end", "nm_privileged", "admin_sniffer", "create_vm"))
OWN_FIELDS = ("slice", "keys", "duration", "initscript", "id")


@dataclass(frozen=True)
class Request:
    """One validated request."""

    slice: str
    keys: tuple[str, ...]
    duration_s: int
    rspec: tuple[tuple[str, Any], ...] = ()
    initscript: str = ""
    id: str = ""

    @property
    def key(self) -> str:
        """The request's identity in the service's record."""
        return self.id or self.slice

    def to_json(self) -> dict[str, Any]:
        """The request as the list gives it (what :func:`parse_requests` reads back)."""
        out: dict[str, Any] = {"slice": self.slice, "keys": list(self.keys),
                               "duration": self.duration_s, **dict(self.rspec)}
        if self.initscript:
            out["initscript"] = self.initscript
        if self.id:
            out["id"] = self.id
        return out

    @property
    def digest(self) -> str:
        """Changes when anything of the request does (a refused one is tried again then)."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _within(where: str, e: ValidationError) -> ValidationError:
    found = e.message[len(f"{e.field}: expected {e.expected}, found "):]
    return ValidationError(f"{where}.{e.field}", e.expected, found, as_text=True)


def _strings(where: str, value: object, expected: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, str) and v.strip() and "\n" not in v.strip() for v in value):
        raise ValidationError(where, expected, value)
    return tuple(dict.fromkeys(v.strip() for v in value))


def parse_request(where: str, data: object) -> Request:
    if not isinstance(data, Mapping):
        raise ValidationError(where, "a mapping with slice, keys and duration", data)
    for name in data:
        if name not in OWN_FIELDS and name not in LEASE_FIELDS:
            raise ValidationError(f"{where}.{name}", "a request field "
                                  f"({', '.join((*OWN_FIELDS, *LEASE_FIELDS))})",
                                  "an unknown field", as_text=True)
    for name in ("slice", "duration"):
        if name not in data:
            raise ValidationError(f"{where}.{name}", "a value (it is required)", "none",
                                  as_text=True)
    try:
        name = validate_slice_name(data["slice"])
    except ValidationError as e:
        raise _within(where, e) from None
    duration = parse_duration_s(f"{where}.duration", data["duration"])
    if duration <= 0:
        raise ValidationError(f"{where}.duration", "a duration longer than 0s", data["duration"])
    keys = _strings(f"{where}.keys", data.get("keys", []), "a list of ssh public keys, one "
                    "line each")
    script = data.get("initscript", "")
    if not isinstance(script, str):
        raise ValidationError(f"{where}.initscript", "the text of a shell script", script)
    ident = data.get("id", "")
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise ValidationError(f"{where}.id", "a short text naming the request", ident)
    fields = {k: data[k] for k in LEASE_FIELDS if k in data}
    try:
        parse_rspec({**fields, "end": f"{duration}s"}, 0)
    except ValidationError as e:
        raise _within(where, e) from None
    return Request(name, keys, duration, tuple(sorted(fields.items())), script, str(ident))


def parse_requests(data: object) -> tuple[Request, ...]:
    """Validate a request list (a list, or a mapping whose ``requests`` is one).

    Raises:
        ValidationError: naming the first bad field, or a request whose identity (its
            ``id``, else its slice) another request in the list has.
    """
    if isinstance(data, Mapping) and set(data) <= {"requests"}:
        data = data.get("requests") or []
    if not isinstance(data, list):
        raise ValidationError("requests", "a list of requests (or requests: [...])", data)
    out: list[Request] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data):
        r = parse_request(f"requests[{i}]", item)
        if r.key in seen:
            raise ValidationError(f"requests[{i}].{'id' if r.id else 'slice'}",
                                  f"one not already in requests[{seen[r.key]}] (give an id "
                                  "to lease a slice again)", r.key)
        seen[r.key] = i
        out.append(r)
    return tuple(out)


def load_requests(text: str, source: str) -> tuple[Request, ...]:
    """Parse a request list's text: JSON, or YAML where PyYAML is installed (the host; the
    service's sliver gets JSON)."""
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml  # the host has it; the service's sliver does not and reads JSON
        except ImportError:
            raise UsageError(f"request list {source}: expected JSON, found text that is "
                             "not") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"request list {source}: expected YAML or JSON, found a syntax "
                             f"error{where}") from None
    return parse_requests([] if data is None else data)
