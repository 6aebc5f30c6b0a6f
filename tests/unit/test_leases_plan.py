"""The lease service's planner (pure), as tables: requests + what it made + what the node
manager lists for it + now -> actions."""

from __future__ import annotations

import pytest

from slicectl.leases.plan import Action, Lease, Mine, plan, retry_after_s, wake_at
from slicectl.leases.requests import Request

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
A = Request("pu_a", ("k",), 60)
B = Request("pu_b", (), 600)
A2 = Request("pu_a", (), 60, id="again")


def lease(r: Request, state: str, **kw: object) -> Lease:
    return Lease(r.key, r.slice, r.digest, state, **kw)  # type: ignore[arg-type]


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.key) for a in actions]


@pytest.mark.parametrize("case, requests, leases, mine, want", [
    ("new requests are made", [A, B], [], {}, [("create", "pu_a"), ("create", "pu_b")]),
    ("an active lease before its end: nothing", [A], [lease(A, "active", rcap="r", end=NOW + 1)],
     {"pu_a": Mine(NOW + 1)}, []),
    ("an active lease at its end is ended", [A], [lease(A, "active", rcap="r", end=NOW)],
     {"pu_a": Mine(NOW)}, [("end", "pu_a")]),
    ("a lease ends even when its request left the list", [],
     [lease(A, "active", rcap="r", end=NOW - 5)], {}, [("end", "pu_a")]),
    ("a lease whose sliver went early is lost", [A],
     [lease(A, "active", rcap="r", end=NOW + 50)], {}, [("lost", "pu_a")]),
    ("an ended lease is not made again", [A], [lease(A, "ended", end=NOW - 9)], {}, []),
    ("a refused request is not tried again", [A], [lease(A, "refused", reason="x")], {}, []),
    ("a refused request that changed is tried again", [Request("pu_a", (), 120)],
     [lease(A, "refused", reason="x")], {}, [("create", "pu_a")]),
    ("a failed request waits for its retry", [A],
     [lease(A, "failed", retry_at=NOW + 1, tries=1)], {}, []),
    ("a failed request is tried at its retry", [A],
     [lease(A, "failed", retry_at=NOW, tries=1)], {}, [("create", "pu_a")]),
    ("a bind a crash cut short, sliver made: adopted", [A],
     [lease(A, "binding", rcap="r", end=NOW + 60)], {"pu_a": Mine(NOW + 60, ("r",))},
     [("adopt", "pu_a")]),
    ("a bind a crash cut short, no sliver: rcap back, made again", [A],
     [lease(A, "binding", rcap="r", end=NOW + 60)], {}, [("abandon", "pu_a"), ("create", "pu_a")]),
    ("a lost record: the sliver it made is adopted, not made twice", [A], [],
     {"pu_a": Mine(NOW + 30, ("r",))}, [("adopt", "pu_a")]),
    ("a second request for a held name waits", [A, A2],
     [lease(A, "active", rcap="r", end=NOW + 5)], {"pu_a": Mine(NOW + 5)}, []),
    ("... and still waits the round its holder ends", [A, A2],
     [lease(A, "active", rcap="r", end=NOW)], {"pu_a": Mine(NOW)}, [("end", "pu_a")]),
    ("... and is made after", [A, A2], [lease(A, "ended", end=NOW - 1)], {},
     [("create", "again")]),
    ("slivers of the service no request names are left alone", [], [], {"pu_x": Mine(NOW + 9)},
     []),
])
def test_plan(case: str, requests: list[Request], leases: list[Lease], mine: dict[str, Mine],
              want: list[tuple[str, str]]) -> None:
    assert kinds(plan(requests, {x.key: x for x in leases}, mine, NOW)) == want, case


def test_adopt_takes_the_end_and_rcap_the_node_shows() -> None:
    (a,) = plan([A], {}, {"pu_a": Mine(NOW + 30, ("r1", "r2"))}, NOW)
    assert (a.kind, a.rcap, a.end, a.request) == ("adopt", "r1", NOW + 30, A)


@pytest.mark.parametrize("tries, wait", [(1, 5.0), (2, 10.0), (4, 40.0), (20, 600.0)])
def test_retries_back_off(tries: int, wait: float) -> None:
    assert retry_after_s(tries) == wait


def test_the_service_wakes_at_the_next_end_or_retry() -> None:
    leases = {"a": lease(A, "active", end=NOW + 20), "b": lease(B, "failed", retry_at=NOW + 7),
              "c": lease(A2, "ended", end=NOW - 1)}
    assert wake_at(leases, NOW, 30) == NOW + 7
    assert wake_at({}, NOW, 30) == NOW + 30
