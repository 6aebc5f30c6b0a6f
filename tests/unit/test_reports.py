"""What slice creation services report to the node manager: the fields it takes, who
may report and who may read, and that a destroyed service's report is forgotten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slicectl.agent.daemon import Status
from slicectl.core.errors import PermissionDenied, ValidationError
from slicectl.node.nm.callers import ROOT
from slicectl.node.nm.reports import ServiceReports, validate_report
from tests.unit.nm_fakes import SERVICE, FakeNode, bound, fake_node, plain, privileged

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {"kind": "agent", "state": "ok", "authority": "https://plc/PLCAPI/",
                        "last_contact": 1_800_000_000.5, "failures_in_a_row": 0, "slivers": 3,
                        "last_error": ""}


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return fake_node(tmp_path)


@pytest.mark.parametrize(("report", "field"), [
    ("ok", "report"),
    ({**GOOD, "shell": "rm -rf /"}, "report"),
    ({"state": "ok"}, "report.kind"),
    ({**GOOD, "kind": 'agent"} x{'}, "report.kind"),
    ({**GOOD, "kind": "a" * 33}, "report.kind"),
    ({**GOOD, "state": "ok\nroot"}, "report.state"),
    ({**GOOD, "last_contact": -1}, "report.last_contact"),
    ({**GOOD, "last_contact": float("nan")}, "report.last_contact"),
    ({**GOOD, "last_contact": True}, "report.last_contact"),
    ({**GOOD, "slivers": -1}, "report.slivers"),
    ({**GOOD, "slivers": 1.5}, "report.slivers"),
    ({**GOOD, "failures_in_a_row": False}, "report.failures_in_a_row"),
    ({**GOOD, "last_error": "x" * 301}, "report.last_error"),
    ({**GOOD, "last_error": "line\nbreak"}, "report.last_error"),
    ({**GOOD, "authority": 7}, "report.authority"),
])
def test_a_bad_report_is_refused_naming_the_field(report: object, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        validate_report(report)
    assert e.value.field == field and "\n" not in str(e.value)


def test_an_empty_last_contact_means_never() -> None:
    assert validate_report({**GOOD, "last_contact": ""})["last_contact"] is None


def test_the_agent_status_makes_a_valid_report() -> None:
    st = Status(plc="unreachable", last_error="PLC at https://plc: timed out\n(after 10 s)",
                failures_in_a_row=4)
    kept = validate_report(st.report("https://plc/PLCAPI/"))
    assert kept["state"] == "unreachable" and kept["last_contact"] is None
    assert kept["failures_in_a_row"] == 4 and "\n" not in kept["last_error"]
    assert validate_report(Status().report(""))["state"] == "never-reached"


def test_reports_are_kept_per_slice_with_their_age() -> None:
    now = [100.0]
    book = ServiceReports(lambda: now[0])
    book.put("pl_a", GOOD)
    book.put("pl_a", {**GOOD, "state": "unreachable"})
    book.put("pl_b", {**GOOD, "kind": "leases"})
    now[0] = 112.0
    rows = book.view({"pl_a", "pl_b"})
    assert [(r["slice"], r["state"], r["age_s"]) for r in rows] == [
        ("pl_a", "unreachable", 12.0), ("pl_b", "ok", 12.0)]
    assert [r["slice"] for r in book.view({"pl_b"})] == ["pl_b"]  # pl_a was destroyed
    assert [r["slice"] for r in book.view({"pl_a", "pl_b"})] == ["pl_b"]  # and stays gone


def test_who_may_report_and_who_may_read(node: FakeNode) -> None:
    agent, other = privileged("pl_agent"), privileged("pl_other")
    bound(node, "pl_agent")
    bound(node, "pl_other")
    bound(node, "pl_plain")
    with pytest.raises(PermissionDenied):
        node.nm.report_service(plain("pl_plain"), GOOD)
    with pytest.raises(PermissionDenied):
        node.nm.report_service(SERVICE, GOOD)
    assert node.nm.report_service(agent, GOOD) is True
    assert node.nm.report_service(other, {**GOOD, "kind": "leases"}) is True
    assert [r["slice"] for r in node.nm.services(ROOT)] == ["pl_agent", "pl_other"]
    assert [r["slice"] for r in node.nm.services(SERVICE)] == ["pl_agent", "pl_other"]
    assert [r["slice"] for r in node.nm.services(other)] == ["pl_other"]
    with pytest.raises(PermissionDenied):
        node.nm.services(plain("pl_plain"))
    node.nm.destroy(ROOT, "pl_other")
    assert [r["slice"] for r in node.nm.services(ROOT)] == ["pl_agent"]
