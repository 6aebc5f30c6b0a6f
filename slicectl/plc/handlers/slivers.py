"""What nodes run, as they report it (slicectl's extension of PLCAPI): ``ReportSlivers``
from a node's agent after each convergence, ``GetSliverStates`` for the people of a slice
("where is my slice live?"). A report records no event: it changes no node's view, and
nodes waiting for a change (WaitForChange) must not be woken by one another's reports."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select

from .. import schema as s
from ..call import Call
from ..errors import bad_value
from ..methods import TABLE, Ref, arg
from ..objects import SLICE
from ..policy import ADMIN, NODE, PERSONS, deny
from .slices import live_slice

#: What a node may report of a sliver ("refused": the node's local policy refuses the
#: slice; the report's detail says which).
STATES = ("running", "stopped", "starting", "missing", "failed", "dormant", "refused")
#: The longest detail a report may carry.
MAX_DETAIL = 300
#: Most slivers one report may carry.
MAX_REPORTED = 20_000


class Reports:
    """The ReportSlivers argument: [{name, state[, detail]}], names unique."""

    xmlrpc = "array"

    def describe(self) -> str:
        return f"array of {{name, state[, detail]}} (state one of {', '.join(STATES)})"

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, list) or len(value) > MAX_REPORTED:
            raise bad_value(name, f"array of at most {MAX_REPORTED} structs", value)
        out: dict[str, tuple[str, str]] = {}
        for item in value:
            if not isinstance(item, dict) or not {"name", "state"} <= set(item) \
                    or not set(item) <= {"name", "state", "detail"}:
                raise bad_value(name, "struct with name, state and maybe detail", item)
            sl, st, detail = item["name"], item["state"], item.get("detail", "")
            if not isinstance(sl, str) or not 1 <= len(sl) <= 64 or sl in out:
                raise bad_value(f"{name} name", "a distinct slice name of 1 to 64 chars", sl)
            if st not in STATES:
                raise bad_value(f"{name} state", f"one of {', '.join(STATES)}", st)
            if not isinstance(detail, str) or len(detail) > MAX_DETAIL \
                    or not detail.isprintable():
                raise bad_value(f"{name} detail", f"printable text of at most {MAX_DETAIL} "
                                "characters", detail)
            out[sl] = (st, detail)
        return out


@TABLE.method("ReportSlivers", NODE, arg("slivers", Reports()), returns="int", writes=True)
def report_slivers(call: Call, slivers: dict[str, tuple[str, str]]) -> int:
    """slicectl's extension for node agents: what the node runs now (every sliver the
    agent made, with its state); replaces the node's previous report. Returns how many."""
    if call.caller.node_id is None:
        raise deny("Only a node reports its slivers")
    nid = call.caller.node_id
    call.conn.execute(delete(s.sliver_reports).where(s.sliver_reports.c.node_id == nid))
    if slivers:
        call.conn.execute(insert(s.sliver_reports), [
            {"node_id": nid, "slice_name": n, "state": st, "detail": detail,
             "updated": call.now} for n, (st, detail) in sorted(slivers.items())])
    return len(slivers)


@TABLE.method("GetSliverStates", ADMIN | PERSONS, arg("slice_id_or_name", Ref(SLICE)),
              returns="array", writes=False)
def get_sliver_states(call: Call, ref: object) -> list[dict[str, Any]]:
    """slicectl's extension: where a slice is live. One struct per node PLC lists the
    slice on or that reports a sliver of it: {node_id, hostname, listed, state, detail,
    updated, last_contact}; state 'unreported' where the node has not reported it, detail
    why where the node said (a refusal by its policy, say). Admins, the
    slice's members and the persons of its site may ask."""
    row = live_slice(call, ref)
    c = call.caller
    if not (c.is_admin or row["site_id"] in c.site_ids or c.person_id in row["person_ids"]):
        raise deny("Not a member of this slice or a person of its site")
    listed = set(call.conn.execute(select(s.slice_node.c.node_id).where(
        s.slice_node.c.slice_id == row["slice_id"])).scalars())
    reports = {nid: (st, up, detail) for nid, st, up, detail in call.conn.execute(
        select(s.sliver_reports.c.node_id, s.sliver_reports.c.state,
               s.sliver_reports.c.updated, s.sliver_reports.c.detail)
        .where(s.sliver_reports.c.slice_name == row["name"]))}
    ids = sorted(listed | set(reports))
    nodes = {nid: (h, lc) for nid, h, lc in call.conn.execute(
        select(s.nodes.c.node_id, s.nodes.c.hostname, s.nodes.c.last_contact)
        .where(s.nodes.c.node_id.in_(ids)))} if ids else {}
    out = []
    for nid in ids:
        if nid not in nodes:
            continue
        st, up, detail = reports.get(nid, ("unreported", None, ""))
        out.append({"node_id": nid, "hostname": nodes[nid][0], "listed": nid in listed,
                    "state": st, "detail": detail, "updated": up,
                    "last_contact": nodes[nid][1]})
    return out

