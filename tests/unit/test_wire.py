"""Typed wire records: round trips, and one-line errors naming the field."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from slicectl.core.errors import ValidationError
from slicectl.core.wire import NetEntry, RcapInfo, from_struct, to_struct

ENTRY = NetEntry("pl_a", 3, "172.30.128.3", "c" * 64, True, False, [8080], [], ["fd_tuntap"],
                 "100.64.3.0/24")


def test_round_trip_through_xmlrpc() -> None:
    text = xmlrpc.client.dumps((to_struct([ENTRY]),), methodresponse=True, allow_none=True)
    (got,), _ = xmlrpc.client.loads(text)
    assert [from_struct(NetEntry, r) for r in got] == [ENTRY]


def test_optional_fields_take_none() -> None:
    info = RcapInfo("a" * 32, "usable", None, "root", None, {"cpu_share": 1}, "now")
    assert from_struct(RcapInfo, to_struct(info)) == info


def test_unknown_fields_are_ignored() -> None:
    assert from_struct(NetEntry, {**to_struct(ENTRY), "later": 1}) == ENTRY


@pytest.mark.parametrize(("change", "match"), [
    ({"xid": "3"}, r"^NetEntry.xid: expected int, found '3'$"),
    ({"xid": True}, r"^NetEntry.xid: expected int"),
    ({"tcp_ports": [8080, "x"]}, r"^NetEntry.tcp_ports: expected list\[int\]"),
    ({"raw_sockets": 1}, r"^NetEntry.raw_sockets: expected bool"),
])
def test_bad_fields_are_named(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        from_struct(NetEntry, {**to_struct(ENTRY), **change})


def test_missing_field_and_non_struct() -> None:
    data = to_struct(ENTRY)
    del data["address"]
    with pytest.raises(ValidationError, match=r"^NetEntry.address: expected a field"):
        from_struct(NetEntry, data)
    with pytest.raises(ValidationError, match=r"^NetEntry: expected a struct"):
        from_struct(NetEntry, [1])
