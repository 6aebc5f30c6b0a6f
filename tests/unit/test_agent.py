"""The node agent's decisions: tags to rspecs, GetSlivers against the node, and the
calls it makes on a fake node manager (the lowest boundary)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from slicectl.agent.daemon import run
from slicectl.agent.plan import Have, Want, plan, sliver_info, wants
from slicectl.agent.sync import Record, converge
from slicectl.agent.tags import initscript, resources
from slicectl.core.errors import ConnectionFailed, NotFoundError, PermissionDenied
from slicectl.core.units import iso

pytestmark = pytest.mark.unit

NOW = 1_800_000_000
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 a@b"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOT1qgXc7cTr4GqKHDeqW4vQ4u9vOlDCcMG1PBlfpdXX c@d"


def tags(**kv: str) -> list[dict[str, str]]:
    return [{"tagname": k, "value": v} for k, v in kv.items()]


@pytest.mark.parametrize("given,rspec,enabled,problems", [
    ({}, {}, True, 0),
    ({"cpu_share": "30", "disk_max": "2097153", "net_max_rate": "2000"},
     {"cpu_share": 30, "disk_mb": 2049, "net_max_kbit": 2000}, True, 0),
    ({"cpu_share": "lots"}, {}, True, 1),                 # malformed: the default
    ({"cpu_share": "100000"}, {}, True, 1),               # out of range: the default
    ({"cpu_pct": "25"}, {"cpu_capped": True, "cpu_share": 250}, True, 0),
    ({"cpu_pct": "250"}, {}, True, 1),
    ({"enabled": "0"}, {}, False, 0),
    ({"enabled": "-1"}, {}, False, 0),
    ({"enabled": "yes"}, {}, True, 1),
    ({"net_min_rate": "500", "net_max_rate": "100"}, {"net_min_kbit": 500, "net_max_kbit": 500},
     True, 1),
    ({"frobnicate": "1"}, {}, True, 1),
    ({"vref": "debian", "initscript": "x"}, {}, True, 0),
    ({"tcp_ports": "9000, 8080,9000", "udp_ports": "5000"},
     {"tcp_ports": [8080, 9000], "udp_ports": [5000]}, True, 0),
    ({"tcp_ports": "80,http"}, {}, True, 1),
    ({"udp_ports": "70000"}, {}, True, 1),
])
def test_tags_become_rspec_fields(given: dict[str, str], rspec: dict[str, Any],
                                  enabled: bool, problems: int) -> None:
    res = resources(tags(**given))
    assert res.rspec == rspec and res.enabled is enabled and len(res.problems) == problems
    assert all(p.split(":")[0] in given for p in res.problems)


def test_the_first_tag_of_a_name_wins() -> None:
    """GetSlivers lists node-scoped tags before global ones."""
    res = resources([{"tagname": "cpu_share", "value": "50"},
                     {"tagname": "cpu_share", "value": "5"}])
    assert res.rspec == {"cpu_share": 50}


def test_initscripts_by_code_by_name_and_missing() -> None:
    scripts = [{"name": "stamp", "enabled": True, "script": "#!/bin/sh\ntouch /stamp\n"},
               {"name": "off", "enabled": False, "script": "x"}]
    assert initscript({"attributes": tags(initscript="stamp")}, scripts) == (
        "#!/bin/sh\ntouch /stamp\n", None)
    assert initscript({"attributes": tags(initscript="stamp", initscript_code="echo")},
                      scripts) == ("echo", None)
    assert initscript({"attributes": []}, scripts) == ("", None)
    text, problem = initscript({"attributes": tags(initscript="off")}, scripts)
    assert text == "" and problem and problem.startswith("initscript: expected")


def sliver(name: str, expires: int = NOW + 3600, keys: tuple[str, ...] = (KEY,),
           **kv: str) -> dict[str, Any]:
    return {"name": name, "slice_id": 1, "instantiation": "plc-instantiated",
            "expires": expires, "keys": [{"key_type": "ssh", "key": k} for k in keys],
            "attributes": tags(**kv)}


@pytest.mark.parametrize("entry,info", [
    ({}, ("", ())),  # a PLC without the extension
    ({"description": "d", "contacts": ["pi@x.org", "pi@x.org", "u@x.org"]},
     ("d", ("pi@x.org", "u@x.org"))),
    ({"description": 7, "contacts": ["not an address", 3, "a@b.c"]}, ("", ("a@b.c",))),
    ({"description": "x" * 5000, "contacts": "pi@x.org"}, ("x" * 2048, ())),
    ({"contacts": [f"u{i}@x.org" for i in range(30)]},
     ("", tuple(f"u{i}@x.org" for i in range(20)))),
])
def test_sliver_info_takes_only_what_the_node_manager_accepts(entry: dict[str, Any],
                                                              info: Any) -> None:
    assert sliver_info(entry) == info


def test_converge_passes_description_and_contacts_on(tmp_path: Path) -> None:
    nm, path = FakeNM(), tmp_path / "agent.json"
    entry = {**sliver("pu_a"), "description": "measuring", "contacts": ["pi@pu.edu"]}
    converge(nm, {"slivers": [entry], "initscripts": []}, Record(), path, NOW)
    assert nm.slivers["pu_a"]["info"] == ("measuring", ["pi@pu.edu"])
    entry["contacts"] = ["pi@pu.edu", "u@pu.edu"]
    out = converge(nm, {"slivers": [entry], "initscripts": []}, Record.load(path), path, NOW)
    assert out.done == ["set_info pu_a"]
    assert nm.slivers["pu_a"]["info"] == ("measuring", ["pi@pu.edu", "u@pu.edu"])


def test_wants_skip_expired_and_delegated_slices() -> None:
    view = {"slivers": [sliver("pu_a"), sliver("pu_old", expires=NOW - 1),
                        {**sliver("pu_del"), "instantiation": "delegated"}],
            "initscripts": []}
    assert set(wants(view, NOW).slivers) == {"pu_a"}


def want(name: str, **over: Any) -> Want:
    base = {"name": name, "rspec": (), "end": NOW + 3600, "keys": (KEY,), "initscript": "",
            "enabled": True}
    return Want(**{**base, **over})


def have(name: str, **over: Any) -> Have:
    base = {"name": name, "running": True, "rspec": (("cpu_share", 1),), "end": NOW + 3600,
            "keys": (KEY,), "initscript": "", "rcaps": ("rcap-old",), "info": ("", ())}
    return Have(**{**base, **over})


@pytest.mark.parametrize("w,h,kinds", [
    ({"a": want("a")}, {}, ["create"]),
    ({"a": want("a", enabled=False)}, {}, ["create", "stop"]),
    ({}, {"a": have("a")}, ["destroy"]),
    ({"a": want("a")}, {"a": have("a")}, []),
    ({"a": want("a", end=NOW + 7200)}, {"a": have("a")}, ["resize"]),        # renewal
    ({"a": want("a", rspec=(("cpu_share", 9),))}, {"a": have("a")}, ["resize"]),
    ({"a": want("a", keys=(KEY, KEY2))}, {"a": have("a")}, ["set_keys"]),
    ({"a": want("a", initscript="echo")}, {"a": have("a")}, ["set_initscript"]),
    ({"a": want("a", info=("d", ("pi@x.org",)))}, {"a": have("a")}, ["set_info"]),
    ({"a": want("a")}, {"a": have("a", info=None)}, ["set_info"]),  # an older agent's
    ({"a": want("a", enabled=False)}, {"a": have("a")}, ["stop"]),
    ({"a": want("a")}, {"a": have("a", running=False)}, ["start"]),
    ({"b": want("b")}, {"a": have("a")}, ["destroy", "create"]),  # destroys free room first
    # vsys as the tags give it (a list) and as the node shows it (XML-RPC: a list too);
    # the same ACL is no change, another one is; an empty one as the node shows it
    ({"a": want("a", rspec=(("vsys", ["fd_tuntap"]),))},
     {"a": have("a", rspec=(("cpu_share", 1), ("vsys", ["fd_tuntap"]), ("vsys_vnet", "")))}, []),
    ({"a": want("a", rspec=(("vsys", ["fd_tuntap", "slice_reboot"]),))},
     {"a": have("a", rspec=(("cpu_share", 1), ("vsys", ["fd_tuntap"])))}, ["resize"]),
    ({"a": want("a")}, {"a": have("a", rspec=(("cpu_share", 1), ("vsys", [])))}, []),
    ({"a": want("a", rspec=(("vsys_vnet", "100.64.9.0/24"),))}, {"a": have("a")}, ["resize"]),
])
def test_plan(w: dict[str, Want], h: dict[str, Have], kinds: list[str]) -> None:
    assert [a.kind for a in plan(w, h)] == kinds


def test_a_name_another_creator_holds_is_left_alone() -> None:
    assert plan({"a": want("a")}, {}, others=["a"]) == []


class FakeNM:
    """The node manager's calls the agent makes, with its rules: a creator sees and
    changes only its own slivers; bind adds an rcap to an existing sliver."""

    def __init__(self) -> None:
        self.slivers: dict[str, dict[str, Any]] = {}
        self.rcaps: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail_bind = False
        self.n = 0

    def __call__(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if method == "admin_tools":  # a node manager without the admin slice
            raise NotFoundError("method admin_tools: expected one of acquire, ...")
        if method == "acquire":
            self.n += 1
            self.rcaps[f"rcap-{self.n}"] = dict(args[0])
            return f"rcap-{self.n}"
        if method == "bind":
            name, rcap = args[0], args[1]
            if self.fail_bind:
                raise PermissionDenied(f"slice {name}: refused")
            s = self.slivers.setdefault(name, {"name": name, "desired": "running",
                                               "rcaps": [], "keys": [], "initscript": ""})
            s["rcaps"].append(rcap)
            if len(args) > 2:
                s["keys"] = args[2]["keys"]
                s["initscript"] = args[2]["initscript"]
                s["info"] = (args[2].get("description"), args[2].get("contacts"))
            return s
        if method == "release":
            self.rcaps.pop(args[0])
            for s in self.slivers.values():
                if args[0] in s["rcaps"]:
                    s["rcaps"].remove(args[0])
            return True
        if method == "list":
            out = []
            for s in self.slivers.values():
                spec = self.rcaps[s["rcaps"][-1]]
                out.append({**s, "rspec": {**spec, "end": spec["end"]},
                            "state": "running" if s["desired"] == "running" else "exited"})
            return out
        name = args[0]
        if method == "destroy":
            for r in self.slivers.pop(name)["rcaps"]:
                self.rcaps.pop(r)
            return True
        if method == "set_keys":
            self.slivers[name]["keys"] = args[1]
        elif method == "set_initscript":
            self.slivers[name]["initscript"] = args[1]
        elif method == "set_info":
            self.slivers[name]["info"] = (args[1]["description"], args[1]["contacts"])
        elif method in ("stop", "start"):
            self.slivers[name]["desired"] = "running" if method == "start" else "stopped"
            self.slivers[name]["why"] = args[1] if len(args) > 1 else ""
        return True


def test_converge_makes_renews_rekeys_and_removes(tmp_path: Path) -> None:
    nm, rec, path = FakeNM(), Record(), tmp_path / "agent.json"
    view = {"slivers": [sliver("pu_a", cpu_share="20"), sliver("pu_b", enabled="0")],
            "initscripts": []}
    out = converge(nm, view, rec, path, NOW)
    assert out.failed == [] and out.done == ["create pu_a", "create pu_b", "stop pu_b"]
    assert nm.slivers["pu_b"]["desired"] == "stopped"
    assert nm.slivers["pu_b"]["why"] == "stopped by PLC: the slice's enabled tag is 0 or less"
    assert nm.rcaps[nm.slivers["pu_a"]["rcaps"][0]] == {"cpu_share": 20, "end": iso(NOW + 3600)}
    # nothing changed: nothing done
    assert converge(nm, view, Record.load(path), path, NOW).done == []
    # renewed, a key added, b dropped from the node
    view2 = {"slivers": [sliver("pu_a", expires=NOW + 7200, keys=(KEY, KEY2), cpu_share="20")],
             "initscripts": []}
    out = converge(nm, view2, Record.load(path), path, NOW)
    assert out.done == ["destroy pu_b", "resize pu_a", "set_keys pu_a"]
    assert nm.slivers["pu_a"]["keys"] == [KEY, KEY2] and len(nm.slivers["pu_a"]["rcaps"]) == 1
    assert list(nm.rcaps.values()) == [{"cpu_share": 20, "end": iso(NOW + 7200)}]
    # the view lists nothing: all the agent's slivers go
    assert converge(nm, {"slivers": []}, Record.load(path), path, NOW).done == ["destroy pu_a"]
    assert nm.slivers == {} and nm.rcaps == {}


def test_reports_name_only_the_agents_slivers_in_states_plc_takes() -> None:
    from slicectl.agent.daemon import reported

    listing = [{"name": "a", "state": "running", "desired": "running"},
               {"name": "b", "state": "exited", "desired": "stopped"},
               {"name": "c", "state": "exited", "desired": "running"},
               {"name": "other", "state": "running", "desired": "running"}]
    assert reported(listing, {"a": {}, "b": {}, "c": {}}) == [
        {"name": "a", "state": "running"}, {"name": "b", "state": "stopped"},
        {"name": "c", "state": "failed"}]


def test_slivers_of_another_creator_are_never_touched(tmp_path: Path) -> None:
    nm, path = FakeNM(), tmp_path / "agent.json"
    nm("acquire", {"end": iso(NOW + 99)})
    nm("bind", "other_svc", "rcap-1", {"keys": [], "initscript": ""})
    nm.calls.clear()
    out = converge(nm, {"slivers": [sliver("other_svc")]}, Record(), path, NOW)
    assert out.done == [] and nm.calls == ["list"]
    assert converge(nm, {"slivers": []}, Record.load(path), path, NOW).done == []
    assert "other_svc" in nm.slivers


def test_a_refused_bind_gives_its_rcap_back(tmp_path: Path) -> None:
    nm, path = FakeNM(), tmp_path / "agent.json"
    nm.fail_bind = True
    out = converge(nm, {"slivers": [sliver("pu_a")]}, Record(), path, NOW)
    assert out.done == [] and out.failed[0].startswith("create pu_a: slice pu_a: refused")
    assert nm.rcaps == {} and Record.load(path).made == {}


def test_the_record_survives_a_restart_and_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    rec = Record(made={"pu_a": {"keys": [KEY], "initscript": ""}}, view={"slivers": []})
    rec.save(path)
    assert Record.load(path) == rec and path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not json")
    assert Record.load(path) == Record()


def test_problems_are_reported_once_per_slice(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    nm, path = FakeNM(), tmp_path / "agent.json"
    view = {"slivers": [sliver("pu_a", cpu_share="many")], "initscripts": []}
    converge(nm, view, Record(), path, NOW)
    converge(nm, view, Record.load(path), path, NOW)
    assert sum("cpu_share: expected" in r.message for r in caplog.records) == 1


class FakePLC:
    """A PLC whose view and change number the test sets; wait_for_change blocks until the
    number moves (or its timeout, shortened)."""

    def __init__(self) -> None:
        self.view: dict[str, Any] = {"slivers": []}
        self.number = 1
        self.changed = threading.Condition()
        self.polls = 0
        self.up = True
        self.reports: list[list[dict[str, str]]] = []

    def _check(self) -> None:
        if not self.up:
            raise ConnectionFailed("PLC at fake: expected an answer, found none")

    def slivers(self) -> dict[str, Any]:
        self._check()
        self.polls += 1
        return self.view

    def change_number(self) -> int:
        self._check()
        return self.number

    def wait_for_change(self, since: int, timeout_s: int) -> int:
        self._check()
        with self.changed:
            self.changed.wait_for(lambda: self.number != since, timeout=min(timeout_s, 0.5))
            return self.number

    def report(self, slivers: list[dict[str, str]]) -> None:
        self._check()
        self.reports.append(slivers)

    def change(self, view: dict[str, Any]) -> None:
        with self.changed:
            self.view = view
            self.number += 1
            self.changed.notify_all()


def _until(cond: Any, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_a_change_notice_converges_at_once_and_plc_away_changes_nothing(tmp_path: Path) -> None:
    plc, nm, stop = FakePLC(), FakeNM(), threading.Event()
    record, status = tmp_path / "record.json", tmp_path / "status.json"
    t = threading.Thread(target=run, args=(plc, nm, record, status, stop),
                         kwargs={"period_s": 3600, "jitter_s": 0}, daemon=True)
    t.start()
    assert _until(lambda: plc.polls == 1)
    plc.change({"slivers": [sliver("pu_a", expires=2**31 - 1)], "initscripts": []})
    assert _until(lambda: "pu_a" in nm.slivers)  # long before the hour's poll
    assert _until(lambda: plc.reports[-1:] == [[{"name": "pu_a", "state": "running"}]])
    plc.up = False
    plc.change({"slivers": [], "initscripts": []})
    assert _until(lambda: json.loads(status.read_text())["plc"] == "unreachable")
    assert "pu_a" in nm.slivers  # PLC away: nothing destroyed
    plc.up = True  # back (the backoff retries within a second or two)
    assert _until(lambda: "pu_a" not in nm.slivers)
    stop.set()
    t.join(5)
    assert not t.is_alive()


class NoNoticePLC(FakePLC):
    """A PLC without change notices (``plc serve --no-change-notices``)."""

    def change_number(self) -> int:
        raise ConnectionFailed("PLC at fake: WaitForChange: fault 109: change notices are off")

    def wait_for_change(self, since: int, timeout_s: int) -> int:
        raise AssertionError("the agent must not wait on a PLC that refused notices")


def test_without_notices_the_agent_polls_at_its_period_and_tells_the_node(tmp_path: Path) -> None:
    plc, nm, stop = NoNoticePLC(), FakeNM(), threading.Event()
    told: list[dict[str, Any]] = []

    def call(method: str, *args: Any) -> Any:
        if method == "report_service":
            told.append(args[0])
            return True
        return nm(method, *args)

    t = threading.Thread(target=run, args=(plc, call, tmp_path / "r.json", tmp_path / "s.json",
                                           stop),
                         kwargs={"period_s": 0.3, "jitter_s": 0, "authority": "https://plc/"},
                         daemon=True)
    t.start()
    assert _until(lambda: plc.polls >= 3)  # poll after poll, at the period
    plc.change({"slivers": [sliver("pu_a", expires=2**31 - 1)], "initscripts": []})
    assert _until(lambda: "pu_a" in nm.slivers)
    assert _until(lambda: bool(told) and told[-1]["slivers"] == 1)
    assert told[-1]["kind"] == "agent" and told[-1]["state"] == "ok"
    assert told[-1]["authority"] == "https://plc/"
    stop.set()
    t.join(5)
    assert not t.is_alive()


@pytest.mark.parametrize("text,given,expect", [
    ("NODE_ID=7\nNODE_KEY=abc123\n", None, (7, "abc123")),
    ('NODE_ID="7"\nNODE_KEY="abc123"\nIP_METHOD=dhcp\n', None, (7, "abc123")),
    ("abc123\n", 9, (9, "abc123")),
    ("NODE_KEY=abc123\n", 3, (3, "abc123")),
])
def test_node_key_files(tmp_path: Path, text: str, given: int | None,
                        expect: tuple[int, str]) -> None:
    from slicectl.agent.join import read_node_key

    (tmp_path / "k").write_text(text)
    assert read_node_key(tmp_path / "k", given) == expect


@pytest.mark.parametrize("text,given,message", [
    ("abc123\n", None, "--node-id: expected the node's id"),
    ("", 3, "expected the node's key"),
    ("two words", 3, "expected the node's key"),
    ("NODE_ID=x\nNODE_KEY=k\n", None, "NODE_ID: expected a number"),
])
def test_bad_node_key_files(tmp_path: Path, text: str, given: int | None, message: str) -> None:
    from slicectl.agent.join import read_node_key
    from slicectl.core.errors import UsageError

    (tmp_path / "k").write_text(text)
    with pytest.raises(UsageError, match=message):
        read_node_key(tmp_path / "k", given)


def test_a_bind_the_nodes_policy_refuses_is_reported_to_plc_not_failed(tmp_path: Path) -> None:
    from slicectl.agent.daemon import reported

    why = "slice pu_a: refused by this node's policy (refused_sites: pu)"
    nm, path = FakeNM(), tmp_path / "agent.json"
    real = nm.__call__

    def refusing(method: str, *args: Any) -> Any:
        if method == "bind" and args[0] == "pu_a":
            raise PermissionDenied(why)
        return real(method, *args)

    out = converge(refusing, {"slivers": [sliver("pu_a"), sliver("pu_b")]}, Record(), path, NOW)
    assert out.failed == [] and out.done == ["create pu_b"] and out.refused == {"pu_a": why}
    assert list(nm.rcaps) == [nm.slivers["pu_b"]["rcaps"][0]], "the refused rcap went back"
    assert reported(nm("list"), Record.load(path).made, out.refused) == [
        {"name": "pu_b", "state": "running"},
        {"name": "pu_a", "state": "refused", "detail": why}]


def test_a_sliver_the_node_stopped_for_its_policy_is_reported_refused() -> None:
    from slicectl.agent.daemon import reported

    why = "slice pu_x: refused by this node's policy (refused_slices)"
    listing = [{"name": "pu_x", "state": "exited", "desired": "stopped",
                "stopped": {"by": "node", "at": "2027-01-15T08:00:00Z", "reason": why}},
               {"name": "pu_y", "state": "exited", "desired": "stopped",
                "stopped": {"by": "slice:slicectl_agent", "at": "2027-01-15T08:00:00Z",
                            "reason": "stopped by PLC: the slice's enabled tag is 0 or less"}}]
    assert reported(listing, {"pu_x": {}, "pu_y": {}}) == [
        {"name": "pu_y", "state": "stopped"},
        {"name": "pu_x", "state": "refused", "detail": why}]


def test_the_agent_knows_the_words_of_a_policy_refusal() -> None:
    from slicectl.agent.sync import REFUSED
    from slicectl.core import policy

    assert REFUSED == policy.REFUSED
    assert REFUSED in (policy.NodePolicy(refused_slices=("pu_a",)).refusal("pu_a") or "")
