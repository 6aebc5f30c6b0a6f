"""The lease service's request list: what it takes, and one line naming the field for what
it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from slicectl.core.errors import SlicectlError, UsageError, ValidationError
from slicectl.leases.requests import Request, load_requests, parse_requests

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 a@b"


def test_a_yaml_list_becomes_requests() -> None:
    text = f"""
requests:
  - slice: pu_one
    keys: ["{KEY}"]
    duration: 30m
    cpu_share: 2
    mem_mb: 256
    initscript: "#!/bin/sh\\necho hi"
  - {{slice: pu_two, duration: 2h, id: monday}}
"""
    one, two = load_requests(text, "r.yaml")
    assert one == Request("pu_one", (KEY,), 1800, (("cpu_share", 2), ("mem_mb", 256)),
                          "#!/bin/sh\necho hi")
    assert (two.key, two.duration_s, two.keys) == ("monday", 7200, ())
    # what the service's sliver reads back (JSON) is the same request
    again = load_requests(str([r.to_json() for r in (one, two)]).replace("'", '"'), "j")
    assert again == (one, two) and again[0].digest == one.digest
    assert load_requests("", "empty") == () and load_requests("[]", "j") == ()


@pytest.mark.parametrize("data, line", [
    ({"x": 1}, "requests: expected a list of requests (or requests: [...]), found {'x': 1}"),
    ([3], "requests[0]: expected a mapping with slice, keys and duration, found 3"),
    ([{"duration": "1h"}], "requests[0].slice: expected a value (it is required), found none"),
    ([{"slice": "pu_a"}], "requests[0].duration: expected a value (it is required), found none"),
    ([{"slice": "Bad", "duration": "1h"}], "requests[0].slice: expected a name like site_name"),
    ([{"slice": "pu_a", "duration": "soon"}],
     "requests[0].duration: expected a duration such as 90s, 2h or 2w, found 'soon'"),
    ([{"slice": "pu_a", "duration": 0}], "requests[0].duration: expected a duration longer"),
    ([{"slice": "pu_a", "duration": "1h", "keys": "k"}],
     "requests[0].keys: expected a list of ssh public keys, one line each, found 'k'"),
    ([{"slice": "pu_a", "duration": "1h", "mem_mb": 8}],
     "requests[0].mem_mb: expected an integer from 16 to 4194304, found 8"),
    ([{"slice": "pu_a", "duration": "1h", "nm_privileged": True}],
     "requests[0].nm_privileged: expected a request field (slice, keys,"),
    ([{"slice": "pu_a", "duration": "1h", "end": "2h"}], "requests[0].end: expected a request"),
    ([{"slice": "pu_a", "duration": "1h", "initscript": 5}],
     "requests[0].initscript: expected the text of a shell script, found 5"),
    ([{"slice": "pu_a", "duration": "1h"}, {"slice": "pu_a", "duration": "2h"}],
     "requests[1].slice: expected one not already in requests[0] (give an id to lease a "
     "slice again), found 'pu_a'"),
])
def test_bad_requests_are_refused_in_one_line(data: Any, line: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_requests(data)
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


def test_the_same_slice_twice_with_ids_is_two_requests() -> None:
    a, b = parse_requests([{"slice": "pu_a", "duration": "1h"},
                           {"slice": "pu_a", "duration": "1h", "id": "again"}])
    assert (a.key, b.key) == ("pu_a", "again") and a.digest != b.digest


@pytest.mark.parametrize("text, line", [
    ("- slice: [", "request list f: expected YAML or JSON, found a syntax error at line 1"),
])
def test_text_that_is_no_list(text: str, line: str) -> None:
    with pytest.raises(UsageError) as e:
        load_requests(text, "f")
    assert str(e.value).startswith(line)
    assert isinstance(e.value, SlicectlError) and e.value.exit_code == 2
