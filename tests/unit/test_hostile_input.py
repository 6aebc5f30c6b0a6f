"""What slivers send to host daemons is hostile: bounded decoding and field checks refuse
any shape with one ValidationError naming the field, and never raise anything else."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from slicectl.core.errors import ValidationError
from slicectl.core.policy import NodePolicy, parse_policy
from slicectl.core.requests import MAX_REQUEST_BYTES, ShimRequest, loads_bounded, shim_request
from slicectl.node.procfs import container_ids, container_in

A, B = "a" * 64, "b" * 64


@pytest.mark.parametrize(("data", "field_or_value"), [
    (b'{"op": "open", "proto": "udp", "port": 53}', {"op": "open", "proto": "udp", "port": 53}),
    (b"[" * 9 + b"]" * 9, "nested at most 8 deep"),
    (b"[" * 4000, "nested at most 8 deep"),
    (b"[" * 100000, "at most 4096 bytes"),
    (b'"[[[[[[[[[[[[[["', "a JSON object"),          # brackets inside a string do not count
    (b"x" * (MAX_REQUEST_BYTES + 1), f"at most {MAX_REQUEST_BYTES} bytes"),
    (b"\xff\xfe", "UTF-8 text"),
    (b"{", "invalid JSON"),
    (b"[1, 2]", "found a list"),
    (b"1e999999", "found inf"),
    (b"", "invalid JSON"),
])
def test_loads_bounded(data: bytes, field_or_value: object) -> None:
    if isinstance(field_or_value, dict):
        assert loads_bounded(data) == field_or_value
    else:
        with pytest.raises(ValidationError, match=str(field_or_value).replace("[", r"\[")):
            loads_bounded(data)


@pytest.mark.parametrize(("req", "expect"), [
    ({"op": "open", "proto": "udp", "port": 53}, ShimRequest("open", "udp", port=53)),
    ({"op": "sniff", "proto": "tcp", "port": 80}, ShimRequest("sniff", "tcp", port=80)),
    ({"op": "open", "proto": "icmp", "icmp_id": 7}, ShimRequest("open", "icmp", icmp_id=7)),
    ({"op": "stats"}, ShimRequest("stats")),
    ({"op": "open", "proto": []}, "proto: expected one of tcp, udp, icmp, found a list"),
    ({"op": "open", "proto": "udp", "port": True}, "port: expected an integer from 1 to 65535"),
    ({"op": "open", "proto": "udp", "port": 0}, "port: expected an integer from 1 to 65535"),
    ({"op": "open", "proto": "udp", "port": 65536}, "port"),
    ({"op": "open", "proto": "udp", "port": 5.0}, "port"),
    ({"op": "open", "proto": "udp"}, "port: expected an integer from 1 to 65535, found none given"),
    ({"op": "sniff", "proto": "icmp", "icmp_id": 1}, "proto: expected tcp or udp"),
    ({"op": "open", "proto": "icmp", "port": 1}, "port: expected no port for ICMP"),
    ({"op": "open", "proto": "udp", "port": 1, "icmp_id": 1}, "icmp_id"),
    ({"op": "open", "proto": "udp", "port": 1, "x": 1}, "x: expected one of the fields"),
    ({"op": "stats", "proto": "udp"}, "proto: expected one of the fields op"),
    ({"op": {"a": 1}}, "op: expected one of open, sniff, stats, found an object"),
    ({}, "op: expected"),
])
def test_shim_request(req: dict[str, Any], expect: object) -> None:
    if isinstance(expect, ShimRequest):
        assert shim_request(req) == expect
    else:
        with pytest.raises(ValidationError, match=f"^{expect}"):
            shim_request(req)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "big", "float", "str", "none", "bool"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-70000, 70000)
    if kind == "big":
        return rng.choice([1 << 70, -(1 << 70), 0])
    if kind == "float":
        return rng.choice([0.5, float("nan"), float("inf"), 53.0])
    if kind == "str":
        return rng.choice(["open", "sniff", "stats", "udp", "tcp", "icmp", "", "\x00", "é" * 50])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["op", "proto", "port", "icmp_id", "x"]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def test_fuzz_shim_requests_raise_only_validation_errors() -> None:
    rng = random.Random(11)
    accepted = 0
    for _ in range(20000):
        req = _random_value(rng)
        raw = json.dumps(req, allow_nan=True).encode()
        if rng.random() < 0.2:
            raw = raw[: rng.randint(0, len(raw))]  # truncated
        try:
            checked = shim_request(loads_bounded(raw))
        except ValidationError as e:
            assert "\n" not in str(e) and len(str(e)) < 300
            continue
        accepted += 1
        assert checked.op in ("open", "sniff", "stats")
    assert accepted > 0  # the generator reaches valid requests too


def test_cgroup_names_the_innermost_container_beyond_our_own() -> None:
    v1 = f"12:pids:/slicectl/{A}\n11:memory:/slicectl/{A}\n0::/\n"
    assert container_ids(v1) == [A]
    assert container_in(v1) == A
    nested = f"12:pids:/docker/{B}/slicectl/{A}\n"
    assert container_in(nested, own=frozenset({B})) == A   # a node that is a container
    assert container_in(f"12:pids:/docker/{B}\n", own=frozenset({B})) is None  # its host
    assert container_in("12:pids:/user.slice\n") is None
    assert container_ids(f"1:x:/{A}{A[:10]}\n") == []     # 74 hex digits is no id


@pytest.mark.parametrize(("data", "expect"), [
    (None, NodePolicy()),
    ({"mem_overcommit": 3}, NodePolicy(mem_overcommit=3.0)),
    ({"allow_link_local": True}, NodePolicy(allow_link_local=True)),
    ({"shim_sessions_per_sliver": 0}, "shim_sessions_per_sliver: expected an integer"),
    ({"shim_sessions_per_sliver": True}, "shim_sessions_per_sliver: expected an integer"),
    ({"allow_link_local": 1}, "allow_link_local: expected true or false"),
    ({"mem_overcommit": 0.5}, "mem_overcommit: expected a factor from 1 to 100"),
    ({"nope": 1}, "nope: expected one of"),
    ([1], "policy: expected a mapping"),
])
def test_parse_policy(data: object, expect: object) -> None:
    if isinstance(expect, NodePolicy):
        assert parse_policy(data) == expect
    else:
        with pytest.raises(ValidationError, match=f"^{expect}"):
            parse_policy(data)


def test_host_listeners_from_proc_net() -> None:
    from slicectl.node.procfs import parse_net_table

    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue\n"
           "   0: 00000000:0016 00000000:0000 0A 00000000:00000000\n"     # :22 listening
           "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000\n"     # :8080 established
           "   2: 00000000:0000 00000000:0000 0A 00000000:00000000\n"     # port 0
           "   garbage\n")
    assert parse_net_table(tcp, tcp=True) == {22}
    assert parse_net_table(tcp, tcp=False) == {22, 8080}
