"""Fakes at the node manager's lowest boundary (engine, host accounts, kernel network) and a
node manager built on them with a real SQLite store: the NM's decisions run unchanged."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core.admission import NodeCapacity
from slicectl.core.containerplan import ContainerPlan, NodeFacts
from slicectl.core.errors import EngineError
from slicectl.core.policy import NodePolicy
from slicectl.ipc.peer import Peer
from slicectl.node.config import NodeConfig
from slicectl.node.nm.boundary import NetIdentity, SliverStatus
from slicectl.node.nm.callers import Caller
from slicectl.node.nm.manager import NodeManager
from slicectl.node.procfs import PinnedPeer
from slicectl.node.store import Store


@dataclass
class FakeContainer:
    id: str
    plan: ContainerPlan
    status: str = "created"
    resources: dict[str, Any] = field(default_factory=dict)


class FakeEngine:
    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, str]] = []
        self.services: dict[str, str] = {}
        self.fail_start: set[str] = set()
        #: container id -> processes in its pids cgroup while it runs (default: init only)
        self.pids: dict[str, int] = {}
        self.on_remove: list[Any] = []
        self._n = 0

    def create(self, plan: ContainerPlan) -> str:
        self.calls.append(("create", plan.name))
        if plan.name not in self.containers:
            self._n += 1
            self.containers[plan.name] = FakeContainer(f"{self._n:064x}", plan)
        return self.containers[plan.name].id

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        if name in self.fail_start:
            raise EngineError(f"container {name}: could not start: fake failure")
        self.containers[name].status = "running"

    def confine(self, name: str, pid: int) -> None:
        self.calls.append(("confine", name))

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.containers[name].status = "exited"

    def _find(self, name: str) -> FakeContainer | None:
        """By name or id, as the engine finds containers."""
        c = self.containers.get(name)
        return c if c is not None else next(
            (x for x in self.containers.values() if x.id == name), None)

    def state(self, name: str) -> SliverStatus | None:
        c = self._find(name)
        if c is None:
            return None
        return SliverStatus(c.id, c.status, 4242 if c.status == "running" else None, None)

    def rename(self, container_id: str, name: str) -> bool:
        self.calls.append(("rename", name))
        c = self._find(container_id)
        if c is None:
            return False
        old = next(k for k, v in self.containers.items() if v is c)
        if old != name:
            self.containers[name] = self.containers.pop(old)
        return True

    def nudge(self, pid: int) -> None:
        self.calls.append(("nudge", str(pid)))

    def pool_summaries(self) -> dict[int, dict[str, Any]]:
        return {int(n.rsplit("-", 1)[1]): {"State": c.status, "Id": c.id}
                for n, c in self.containers.items() if n.startswith("slicepool-")}

    def update(self, name: str, resources: dict[str, Any]) -> None:
        self.calls.append(("update", name))
        self.containers[name].resources = dict(resources)

    def read_back(self, name: str, resources: dict[str, Any]) -> dict[str, int]:
        self.calls.append(("read_back", name))
        return {}

    def remove(self, name: str) -> bool:
        self.calls.append(("remove", name))
        for hook in self.on_remove:
            hook(name)
        c = self._find(name)
        self.containers = {k: v for k, v in self.containers.items() if v is not c}
        return c is not None

    def pid_counts(self, cgroup_parent: str, container_ids: list[str]) -> dict[str, int]:
        running = {c.id for c in self.containers.values() if c.status == "running"}
        return {cid: self.pids.get(cid, 2) for cid in container_ids if cid in running}

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {n.removeprefix("sliver-"): {"State": c.status, "Id": c.id}
                for n, c in self.containers.items() if n.startswith("sliver-")}

    def service_of(self, container_id: str) -> str | None:
        return self.services.get(container_id)

    def version(self) -> str:
        return "fake"


class FakeAccounts:
    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.keys: dict[str, list[str]] = {}
        self.initscripts: dict[str, str] = {}
        self.logins: dict[str, str] = {}

    def create(self, name: str, home: Path) -> int:
        return self.users.setdefault(name, 20000 + len(self.users))

    def remove(self, name: str, home: Path) -> None:
        self.users.pop(name, None)

    def ours(self, homes_under: Path) -> list[str]:
        return sorted(self.users)

    def write_keys(self, home: Path, keys: list[str]) -> None:
        self.keys[home.name] = list(keys)

    def write_initscript(self, etc: Path, text: str) -> None:
        self.initscripts[etc.parent.name] = text

    def write_login(self, home: Path, *, container: str, engine_sock: Path, uid: int,
                    slice_name: str, nm_sock: Path) -> None:
        self.logins[slice_name] = container


class FakeNetwork:
    def __init__(self, cap_kbit: int = 100_000) -> None:
        self._cap = cap_kbit
        self.attached: dict[str, NetIdentity] = {}
        self.updates: list[NetIdentity] = []
        self.port_syncs: list[list[str]] = []
        self.ports: dict[str, NetIdentity] = {}
        #: slice -> (bytes, packets) its classes sent, as the last poll folded them
        self.sent_by: dict[str, tuple[int, int]] = {}
        self.parked: list[str] = []

    @property
    def cap_kbit(self) -> int:
        return self._cap

    def address(self, xid: int) -> str:
        return f"172.30.128.{xid}"

    def attach(self, ident: NetIdentity, pid: int) -> None:
        self.attached[ident.slice] = ident

    def update(self, ident: NetIdentity) -> None:
        self.updates.append(ident)

    def detach(self, ident: NetIdentity) -> None:
        self.attached.pop(ident.slice, None)

    def apply_ports(self, slivers: list[NetIdentity]) -> None:
        self.ports = {s.slice: s for s in slivers}
        self.port_syncs.append(sorted(self.ports))

    def apply_slice_ports(self, slice_name: str, ident: NetIdentity | None) -> None:
        if ident is None:
            self.ports.pop(slice_name, None)
        else:
            self.ports[slice_name] = ident
        self.port_syncs.append(sorted(self.ports))

    def set_cap(self, kbit: int, guaranteed_kbit: int, slivers: list[NetIdentity]) -> None:
        self._cap = kbit

    def poll(self, slivers: list[NetIdentity]) -> None:
        pass

    def sent(self, slice_name: str) -> tuple[int, int] | None:
        return self.sent_by.get(slice_name)

    def park(self, slice_name: str) -> None:
        self.parked.append(slice_name)

    def counters(self, slice_name: str) -> dict[str, int]:
        return {"bytes_sent_today": 0}


@dataclass
class FakeNode:
    nm: NodeManager
    engine: FakeEngine
    accounts: FakeAccounts
    net: FakeNetwork
    store: Store


def fake_node(tmp: Path, now: float = 1_800_000_000.0,
              policy: NodePolicy | None = None) -> FakeNode:
    cfg = NodeConfig(node_id="n1", state_dir=tmp / "state", run_dir=tmp / "run",
                     engine_sock=tmp / "docker.sock")
    cfg.slivers_dir.mkdir(parents=True)
    facts = NodeFacts(node_id="n1", ncpus=2, image="sha256:ref", image_bytes=0,
                      network="slicectl", cgroup_parent="/slicectl", hostname="node.test",
                      nm_sock_dir=tmp / "run" / "nm")
    store = Store(cfg.db_path)
    engine, accounts, net = FakeEngine(), FakeAccounts(), FakeNetwork()
    nm = NodeManager(cfg, store, engine, accounts, facts, NodeCapacity(mem_mb=24_000,
                     disk_mb=100_000), net, clock=lambda: now, policy=policy)
    return FakeNode(nm, engine, accounts, net, store)


ROOT = Caller(uid=0, pid=1)


def privileged(slice_name: str) -> Caller:
    return Caller(uid=0, pid=2, slice=slice_name, privileged=True)


def plain(slice_name: str) -> Caller:
    return Caller(uid=0, pid=3, slice=slice_name)


SERVICE = Caller(uid=0, pid=4, service="sensors")

END = "2040-01-01T00:00:00Z"


def bound(node: FakeNode, name: str, by: Caller = ROOT, **rspec: Any) -> str:
    """Acquire and bind ``name`` as ``by``; the rcap."""
    rcap = node.nm.acquire(by, {"end": END, **rspec})
    node.nm.bind(by, name, rcap)
    return rcap


def pinned(uid: int = 0, container: str | None = None, alive: bool = True,
           same_pid_ns: bool = True) -> PinnedPeer:
    """A peer as :func:`slicectl.node.procfs.pin` makes it, with a real pidfd: of this
    test process (alive), or of a child that has exited (gone)."""
    if alive:
        fd = os.pidfd_open(os.getpid())
    else:
        child = subprocess.Popen(["true"])
        fd = os.pidfd_open(child.pid)
        child.wait()
    return PinnedPeer(Peer(pid=99, uid=uid, gid=0, pidfd=fd), container, same_pid_ns)
