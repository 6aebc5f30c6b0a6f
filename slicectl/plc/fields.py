"""Field types: the one place that says what a value on the wire may be.

Pure. ``Field.check`` turns a wire value into the stored value or raises fault 102 with
"Invalid X value: expected T, got U". Strings are limited in UTF-8 bytes; ints to the 32
bits XML-RPC can carry; timestamps are ints (or "YYYY-MM-DD HH:MM:SS", read as UTC).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from .errors import InvalidArgument, bad_value

INT_MIN, INT_MAX = -(2**31), 2**31 - 1

#: How ``Field.kind`` reads in XML-RPC signatures.
XMLRPC_KIND = {"int": "int", "string": "string", "boolean": "boolean", "double": "double",
               "timestamp": "int", "array": "array", "struct": "struct"}


def parse_time(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidArgument(f"Invalid {name} value: expected a 32-bit time, got {value}")
        return value
    if isinstance(value, str):
        for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
            try:
                return calendar.timegm(time.strptime(value, fmt))
            except ValueError:
                continue
        raise InvalidArgument(
            f"Invalid {name} value: expected seconds or 'YYYY-MM-DD HH:MM:SS', got {value[:40]!r}")
    raise bad_value(name, "int", value)


@dataclass(frozen=True)
class Field:
    """One field of an object or one plain argument."""

    kind: str = "string"
    max_len: int | None = 254
    nullable: bool = True
    doc: str = ""
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    min_value: int | None = None

    @property
    def xmlrpc(self) -> str:
        return XMLRPC_KIND[self.kind]

    def check(self, name: str, value: object) -> object:
        """The value to store, or fault 102 naming ``name``."""
        if value is None:
            if self.nullable:
                return None
            raise bad_value(name, self.kind_text, value)
        if self.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad_value(name, "int", value)
            if not INT_MIN <= value <= INT_MAX:
                raise InvalidArgument(f"Invalid {name} value: expected a 32-bit int, got {value}")
            if self.min_value is not None and value < self.min_value:
                raise InvalidArgument(
                    f"Invalid {name} value: expected at least {self.min_value}, got {value}")
            return value
        if self.kind == "timestamp":
            return parse_time(name, value)
        if self.kind == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise bad_value(name, "boolean", value)
        if self.kind == "double":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad_value(name, "double", value)
            return float(value)
        if self.kind == "string":
            if not isinstance(value, str):
                raise bad_value(name, "string", value)
            if self.max_len is not None and len(value.encode("utf-8", "surrogatepass")) > self.max_len:
                raise InvalidArgument(f"Invalid {name} value: expected at most {self.max_len} "
                                      f"bytes, got {len(value.encode('utf-8', 'surrogatepass'))}")
            if self.choices is not None and value not in self.choices:
                raise InvalidArgument(f"Invalid {name} value: expected one of "
                                      f"{', '.join(self.choices)}, got {value[:40]!r}")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise InvalidArgument(
                    f"Invalid {name} value: expected {self.doc or self.pattern}, got {value[:40]!r}")
            return value
        raise bad_value(name, self.kind, value)

    @property
    def kind_text(self) -> str:
        return XMLRPC_KIND[self.kind]


INT = Field("int", None)
INT_RO = Field("int", None)
BOOL = Field("boolean", None)
DOUBLE = Field("double", None)
TIME = Field("timestamp", None)
STR = Field("string", 254)
TEXT = Field("string", 65535)
NAME = Field("string", 254, nullable=False)
