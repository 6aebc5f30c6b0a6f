"""Service container plans, as tables; the NM's gate for service callers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slicectl.core.containerplan import NodeFacts, SliverIdentity, container_plan
from slicectl.core.errors import PermissionDenied, ValidationError
from slicectl.core.netplan import chain_names, input_rules, jump_rules, node_gateway
from slicectl.core.rspec import parse_rspec
from slicectl.node.config import NodeConfig
from slicectl.node.nm.api import SERVICE_METHODS, NodeManagerAPI
from slicectl.node.nm.callers import Caller
from slicectl.node.services import (
    AUDITD,
    IN_CGROUP,
    LABEL_PLAN,
    SENSORS,
    ServiceMount,
    ServiceSpec,
    node_services,
    service_plan,
    service_sources,
)

CFG = NodeConfig(node_id="n1", state_dir=Path("/var/lib/slicectl"), run_dir=Path("/run/slicectl"),
                 engine_sock=Path("/run/slicectl/docker.sock"), hostname="node1")
AUDIT = ServiceSpec(name="auditd", module="auditd", port=80, keeps_state=True,
                    mounts=(ServiceMount(Path("/srv/x"), "/x", read_only=False),))


def test_sensor_plan() -> None:
    kw = service_plan(SENSORS, CFG, "slicectl/service:abc").kwargs
    assert kw["name"] == "slicectl-n1-sensors"
    assert kw["command"] == ["/opt/venv/bin/python", "-m", "sensors"]
    assert {k: v for k, v in kw["labels"].items() if k != LABEL_PLAN} == {
        "org.slicectl.kind": "service", "org.slicectl.node": "n1",
        "org.slicectl.service": "sensors"}
    assert kw["network_mode"] == "host"
    assert (kw["cap_drop"], kw["cap_add"]) == (["ALL"], [])
    assert kw["read_only"] is True and kw["restart_policy"] == {"Name": "unless-stopped"}
    assert kw["log_config"]["Config"] == {"max-size": "1m", "max-file": "2"}
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in kw["mounts"]] == [
        ("/run/slicectl/nm", "/run/slicectl/nm", True),
        ("/run/slicectl/sniffer", "/run/slicectl/sniffer", True),
        ("/sys/fs/cgroup/cpu", f"{IN_CGROUP}/cpu", True),
        ("/sys/fs/cgroup/cpuacct", f"{IN_CGROUP}/cpuacct", True),
        ("/sys/fs/cgroup/memory", f"{IN_CGROUP}/memory", True),
    ]
    env = kw["environment"]
    assert env["SLICECTL_NODE_ID"] == "n1" and env["SLICECTL_SERVICE_PORT"] == "33080"
    assert env["SLICECTL_NM_SOCK"] == "/run/slicectl/nm/nm.sock"
    assert env["SLICECTL_SNIFFER_SOCK"] == "/run/slicectl/sniffer/records.sock"
    assert "SLICECTL_SERVICE_STATE" not in env


def test_a_low_port_and_state_and_extra_mounts() -> None:
    plan = service_plan(AUDIT, CFG, "img")
    kw = plan.kwargs
    assert kw["cap_add"] == ["NET_BIND_SERVICE"]
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in kw["mounts"]}
    assert mounts["/var/lib/slicectl-service"] == ("/var/lib/slicectl/services/auditd", False)
    assert mounts["/x"] == ("/srv/x", False)
    assert Path("/var/lib/slicectl/services/auditd") in plan.dirs
    assert kw["environment"]["SLICECTL_SERVICE_STATE"] == "/var/lib/slicectl-service"


@pytest.mark.parametrize(
    ("change", "same"),
    [
        (lambda: service_plan(SENSORS, CFG, "img"), True),
        (lambda: service_plan(SENSORS, CFG, "img2"), False),
        (lambda: service_plan(node_services({"sensors": 40001})[0], CFG, "img"), False),
        (lambda: service_plan(SENSORS, CFG.with_(node_id="n2"), "img"), False),
    ],
)
def test_plan_label_tells_when_to_replace(change: Any, same: bool) -> None:
    base = service_plan(SENSORS, CFG, "img").kwargs["labels"][LABEL_PLAN]
    assert (change().kwargs["labels"][LABEL_PLAN] == base) is same


def test_private_ports() -> None:
    assert node_services() == [SENSORS, AUDITD]
    moved = node_services({"sensors": 40001})[0]
    assert moved.port == 40001 and moved.local_only
    assert service_plan(moved, CFG, "i").kwargs["environment"]["SLICECTL_SERVICE_PORT"] == "40001"


@pytest.mark.parametrize(("name", "port"), [("bad name", 1), ("ok", 0), ("ok", 70000)])
def test_spec_validation(name: str, port: int) -> None:
    with pytest.raises(ValidationError):
        ServiceSpec(name=name, module="m", port=port)


def test_image_sources_are_stdlib_only_project_code() -> None:
    rels = [rel for _, rel in service_sources()]
    assert "Dockerfile" in rels and "app/sensors/app.py" in rels
    assert "app/slicectl/core/sniffrecord.py" in rels
    shared = [src for src, rel in service_sources() if rel.startswith("app/")]
    for src in shared:
        text = src.read_text()
        assert "import docker" not in text and "pyroute2" not in text, src


# the sensor port stays node-local ---------------------------------------------------------

def test_input_rules() -> None:
    chains = chain_names("test-abc")
    assert chains["input"] == "SLICECTL-INPUT-test-abc"
    text = input_rules([33080], "slicectl0", chains)
    lines = text.splitlines()
    assert lines[:2] == ["*filter", ":SLICECTL-INPUT-test-abc - [0:0]"]
    rules = [ln.split(" -m comment")[0] for ln in lines if ln.startswith("-A")]
    assert rules == [
        "-A SLICECTL-INPUT-test-abc -i lo -p tcp -m tcp --dport 33080",
        "-A SLICECTL-INPUT-test-abc -i slicectl0 -p tcp -m tcp --dport 33080",
        "-A SLICECTL-INPUT-test-abc -p tcp -m tcp --dport 33080",
    ]
    assert [ln.rsplit(" ", 1)[1] for ln in lines if ln.startswith("-A")] == [
        "RETURN", "RETURN", "DROP"]
    assert lines[-1] == "COMMIT"
    assert ("filter", "INPUT", ["-j", chains["input"]]) in jump_rules(chains)
    assert input_rules([], "b", chains).splitlines()[-1] == "COMMIT"


@pytest.mark.parametrize(("subnet", "gw"), [("172.30.0.0/16", "172.30.0.1"),
                                            ("172.31.8.0/22", "172.31.8.1")])
def test_slivers_know_the_node(subnet: str, gw: str) -> None:
    facts = NodeFacts(node_id="n1", ncpus=2, image="i", image_bytes=0, network="net",
                      cgroup_parent="/slicectl", hostname="h", nm_sock_dir=Path("/x"),
                      subnet=subnet)
    plan = container_plan(SliverIdentity("pl_a", 3, 20003, Path("/e")),
                          parse_rspec({}, 1_800_000_000.0), facts)
    assert node_gateway(subnet) == gw
    assert plan.kwargs["extra_hosts"] == {"node": gw}


# NM: services may read, nothing else -----------------------------------------------------------

class _NM:
    """The node manager's surface the API needs: who calls, and the methods."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    def caller_for(self, peer: object) -> Caller:
        return self.caller

    def __getattr__(self, name: str) -> Any:
        return lambda caller, *args: (name, caller.name)


@pytest.mark.parametrize("method", ["acquire", "bind", "destroy", "set_node", "list_rcaps",
                                    "set_keys", "net_map", "claim_port"])
def test_service_callers_are_refused_writes(method: str) -> None:
    api = NodeManagerAPI(_NM(Caller(uid=0, pid=1, service="sensors")))  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied, match="service:sensors"):
        api(method, (), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sorted(SERVICE_METHODS))
def test_service_callers_may_read(method: str) -> None:
    api = NodeManagerAPI(_NM(Caller(uid=0, pid=1, service="sensors")))  # type: ignore[arg-type]
    assert api(method, (), None)[1] == "service:sensors"  # type: ignore[arg-type]


def test_a_service_caller_is_not_root() -> None:
    c = Caller(uid=0, pid=1, service="sensors")
    assert not c.is_root and c.reads_all and c.name == "service:sensors"
    assert Caller(uid=0, pid=1).reads_all and not Caller(uid=0, pid=1, slice="pl_a").reads_all


@pytest.mark.parametrize(("cmdline", "ours"), [
    ([b"/v/bin/python3", b"-m", b"slicectl.node.nm.daemon", b""], True),
    ([b"/v/bin/python3", b"-m", b"slicectl.daemon", b""], True),  # before the layout change
    ([b"/v/bin/python3", b"-m", b"slicectlx.daemon", b""], False),
    ([b"/usr/bin/python3", b"/srv/app.py", b"slicectl.daemon", b""], False),
    ([b"sleep", b"100", b""], False),
    ([b""], False),
])
def test_a_pidfile_process_is_ours_only_if_it_runs_a_slicectl_module(
        cmdline: list[bytes], ours: bool) -> None:
    from slicectl.node.daemons import runs_our_module

    assert runs_our_module(cmdline) is ours
