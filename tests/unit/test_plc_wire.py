"""PLC's methodResponse writer reads back, through the standard client, exactly as
``xmlrpc.client.dumps`` would."""

from __future__ import annotations

import xmlrpc.client

import pytest

from slicectl.plc.wire import dumps_response

VALUES = [
    1, -2**31, 2**31 - 1, 0.1, -1e300, True, False, None, "", "plain", "a<b>&c;]]>",
    "Ünïcødé 日本 🎉\ttab\nnl", [], {}, [1, [2, [3, {"k": None}]]],
    {"<odd&key>": "v", "n": [{"a": 1.5, "b": [True, None, "x"]}]}, ("tu", "ple"),
]


@pytest.mark.parametrize("value", VALUES)
def test_round_trip(value: object) -> None:
    (got,), _ = xmlrpc.client.loads(dumps_response(value))
    (want,), _ = xmlrpc.client.loads(xmlrpc.client.dumps((value,), methodresponse=True,
                                                         allow_none=True))
    assert got == want


@pytest.mark.parametrize("value,error", [
    (2**31, OverflowError), (-2**31 - 1, OverflowError), ({1: "x"}, TypeError),
    (object(), TypeError), ([b"bytes"], TypeError),
])
def test_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        dumps_response(value)


def test_str_subclasses_as_keys_and_values() -> None:
    class Name(str):
        pass

    (got,), _ = xmlrpc.client.loads(dumps_response({Name("k"): Name("v")}))
    assert got == {"k": "v"}
