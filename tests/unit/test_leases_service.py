"""The lease service's loop on a fake node manager: leases made once, ended at their end,
refusals reported and not retried, and a restart (its record kept, lost, or a crash mid
bind) neither duplicates nor loses a lease. And its bundle: a zip app that runs on a bare
python3, in an initscript the node manager accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slicectl.core.errors import AdmissionError, NotFoundError, PermissionDenied
from slicectl.core.labels import SLIVER_NM_DIR
from slicectl.core.units import iso
from slicectl.leases.install import bundle, leases_initscript
from slicectl.leases.main import SLIVER_NM_SOCK
from slicectl.leases.requests import parse_requests
from slicectl.leases.service import step
from slicectl.node.nm.reports import validate_report
from slicectl.node.nm.slicestate import MAX_INITSCRIPT

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


class FakeNM:
    """Slivers of this caller (``list`` shows only them); names held by other creators."""

    def __init__(self) -> None:
        self.slivers: dict[str, dict[str, Any]] = {}
        self.rcaps: dict[str, dict[str, Any]] = {}
        self.others = {"pu_taken": "slice:t_agent"}
        self.full = False
        self.calls: list[str] = []
        self.crash_after_bind = False
        self.made = 0
        self.reports: list[dict[str, Any]] = []

    def __call__(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        return getattr(self, method)(*args)

    def report_service(self, report: dict[str, Any]) -> bool:
        self.reports.append(validate_report(report))  # the node manager's own check
        return True

    def acquire(self, rspec: dict[str, Any]) -> str:
        if self.full:
            raise AdmissionError("cpu_share: asked for 1, free 0")
        rcap = f"r{self.made}"
        self.made += 1
        self.rcaps[rcap] = rspec
        return rcap

    def bind(self, name: str, rcap: str, attrs: dict[str, Any]) -> dict[str, Any]:
        if name in self.others:
            raise PermissionDenied(f"slice {name}: the name belongs to {self.others[name]} on "
                                   "this node, not slice:t_leases; only it or root may bind it")
        self.slivers[name] = {"name": name, "rspec": {"end": self.rcaps[rcap]["end"]},
                              "rcaps": [rcap], "keys": len(attrs["keys"])}
        if self.crash_after_bind:
            raise SystemExit("crash")
        return self.slivers[name]

    def list(self) -> list[dict[str, Any]]:
        return list(self.slivers.values())

    def destroy(self, name: str) -> bool:
        if self.slivers.pop(name, None) is None:
            raise NotFoundError(f"slice {name}: no such sliver")
        return True

    def release(self, rcap: str) -> bool:
        if self.rcaps.pop(rcap, None) is None:
            raise NotFoundError(f"rcap {rcap}: no such rcap")
        return True

    def release_name(self, name: str) -> bool:
        return True


REQUESTS = parse_requests([
    {"slice": "pu_short", "keys": ["ssh-ed25519 AAAA k@x"], "duration": "20s", "mem_mb": 64},
    {"slice": "pu_long", "duration": "2h"},
    {"slice": "pu_taken", "duration": "1h"},
])


def status(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "status.json").read_text())
    return data


def test_leases_are_made_once_and_ended_at_their_end(tmp_path: Path) -> None:
    nm = FakeNM()
    wake = step(nm, REQUESTS, tmp_path, clock=lambda: NOW)
    assert set(nm.slivers) == {"pu_short", "pu_long"} and wake == NOW + 20
    assert nm.rcaps["r0"] == {"mem_mb": 64, "end": iso(NOW + 20)}
    st = status(tmp_path)
    assert [(a["slice"], a["end"]) for a in st["active"]] == [("pu_short", iso(NOW + 20)),
                                                              ("pu_long", iso(NOW + 7200))]
    assert st["refused"] == [{"slice": "pu_taken", "id": "pu_taken", "reason":
                              "slice pu_taken: the name belongs to slice:t_agent on this node, "
                              "not slice:t_leases; only it or root may bind it"}]
    told = nm.reports[-1]  # the node manager hears of it (node status, the sensors)
    assert (told["kind"], told["state"], told["slivers"]) == ("leases", "ok", 2)
    # the refused name is not asked for again, and nothing is made twice
    nm.calls.clear()
    step(nm, REQUESTS, tmp_path, clock=lambda: NOW + 10)
    assert nm.calls == ["list", "report_service"]
    step(nm, REQUESTS, tmp_path, clock=lambda: NOW + 20)
    assert set(nm.slivers) == {"pu_long"} and "r0" not in nm.rcaps
    st = status(tmp_path)
    assert [e["slice"] for e in st["ended"]] == ["pu_short"]
    assert [e["slice"] for e in st["active"]] == ["pu_long"]
    nm.calls.clear()
    step(nm, REQUESTS, tmp_path, clock=lambda: NOW + 30)  # an ended lease is not made again
    assert nm.calls == ["list", "report_service"]


def test_a_restart_neither_duplicates_nor_loses(tmp_path: Path) -> None:
    nm = FakeNM()
    step(nm, REQUESTS, tmp_path, clock=lambda: NOW)
    made = dict(nm.rcaps)
    # the record lost (a new disk): its slivers are found again by name, not made twice
    (tmp_path / "record.json").write_text("{not json")
    step(nm, REQUESTS, tmp_path, clock=lambda: NOW + 1)
    assert nm.rcaps == made and (tmp_path / "record.json.bad").exists()
    assert {a["slice"]: a["end"] for a in status(tmp_path)["active"]}["pu_short"] == iso(NOW + 20)
    step(nm, REQUESTS, tmp_path, clock=lambda: NOW + 20)  # and still ended at its end
    assert set(nm.slivers) == {"pu_long"}


def test_a_crash_mid_bind_is_finished_on_restart(tmp_path: Path) -> None:
    nm = FakeNM()
    one = parse_requests([{"slice": "pu_short", "duration": "20s"}])
    nm.crash_after_bind = True
    with pytest.raises(SystemExit):
        step(nm, one, tmp_path, clock=lambda: NOW)
    nm.crash_after_bind = False
    step(nm, one, tmp_path, clock=lambda: NOW + 1)  # the sliver exists: adopted
    assert list(nm.rcaps) == ["r0"] and status(tmp_path)["active"][0]["end"] == iso(NOW + 20)
    # a crash before the bind took: the rcap goes back and the lease is made again
    nm2 = FakeNM()
    nm2.bind = lambda *a: (_ for _ in ()).throw(SystemExit("crash"))  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        step(nm2, one, tmp_path / "b", clock=lambda: NOW)
    del nm2.bind
    step(nm2, one, tmp_path / "b", clock=lambda: NOW + 1)
    assert list(nm2.rcaps) == ["r1"] and list(nm2.slivers) == ["pu_short"]


def test_no_room_is_tried_again_later_not_at_once(tmp_path: Path) -> None:
    nm = FakeNM()
    nm.full = True
    one = parse_requests([{"slice": "pu_long", "duration": "2h"}])
    assert step(nm, one, tmp_path, clock=lambda: NOW) == NOW + 5
    (waiting,) = status(tmp_path)["waiting"]
    assert waiting["tries"] == 1 and "cpu_share: asked for 1" in waiting["reason"]
    nm.calls.clear()
    step(nm, one, tmp_path, clock=lambda: NOW + 4)
    assert nm.calls == ["list", "report_service"]
    nm.full = False
    step(nm, one, tmp_path, clock=lambda: NOW + 5)
    assert list(nm.slivers) == ["pu_long"]


def test_the_bundle_runs_without_site_packages(tmp_path: Path) -> None:
    app = tmp_path / "leases.pyz"
    app.write_bytes(bundle())
    run = subprocess.run([sys.executable, "-I", "-S", str(app), "run", "--once",
                          "--requests", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("slicectl-leases: request list ") and run.stderr.count("\n") == 1
    (tmp_path / "bad.json").write_text('[{"slice": "pu_a", "duration": "soon"}]')
    run = subprocess.run([sys.executable, "-I", "-S", str(app), "run", "--once",
                          "--requests", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "requests[0].duration: expected a duration" in run.stderr
    assert bundle() == bundle() and f"{SLIVER_NM_DIR}/nm.sock" == SLIVER_NM_SOCK


def test_the_initscript_carries_the_list_and_fits(tmp_path: Path) -> None:
    text = leases_initscript(REQUESTS)
    assert len(text.encode()) <= MAX_INITSCRIPT - 20_000  # room for a list of some length
    script = text.replace("/var/lib/slicectl-leases", str(tmp_path)).replace(
        "( while :;", "exit 0; ( while :;")
    run = subprocess.run(["sh", "-c", script, "rc.vinit", "start"], capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "leases.pyz").read_bytes() == bundle()
    got = json.loads((tmp_path / "requests.json").read_text())
    assert parse_requests(got) == REQUESTS
