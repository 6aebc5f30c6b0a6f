"""The node manager: the one privileged, local-only authority on a node.

It turns rspecs into rcaps (``acquire``, ``split``, ``release``) and rcaps into slivers
(``bind``), and keeps slivers in the state the database says they should be in
(``reconcile``, ``expire``). It decides; :mod:`slicectl.node.engine` and
:mod:`slicectl.node.accounts` act.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from docker.models.containers import Container

from slicectl import code_hash
from slicectl.core import admission
from slicectl.core.admission import NODE_SERVICE_PORTS, NodeCapacity
from slicectl.core.containerplan import (
    NodeFacts,
    SliverIdentity,
    container_name,
    container_plan,
    resource_update,
)
from slicectl.core.errors import AdmissionError, PermissionDenied, StateError, ValidationError
from slicectl.core.rspec import RSpec, combine, parse_rspec, split, validate_slice_name
from slicectl.core.units import iso
from slicectl.node.accounts import HostAccounts, validate_contacts, validate_keys
from slicectl.node.config import NodeConfig
from slicectl.node.engine import SliverEngine
from slicectl.node.network import NetIdentity, NodeNetwork, utc_day
from slicectl.node.store import CREATING, RUNNING, STOPPED, SliverRow, Store

log = logging.getLogger("slicectl.node.nm.manager")

RCAP = re.compile(r"^[0-9a-f]{32}$")
DESTROYED = "destroyed"
MAX_INITSCRIPT = 64 * 1024
MAX_DESCRIPTION = 2048
USAGE_KEEP_DAYS = 7


@dataclass(frozen=True)
class Caller:
    """Who is calling, as established from the socket's peer credentials."""

    uid: int
    pid: int
    slice: str | None = None
    privileged: bool = False
    #: a node-service sidecar of this node (read-only methods only, see api.SERVICE_METHODS)
    service: str | None = None

    @property
    def name(self) -> str:
        if self.service is not None:
            return f"service:{self.service}"
        return "root" if self.slice is None else f"slice:{self.slice}"

    @property
    def is_root(self) -> bool:
        return self.slice is None and self.service is None and self.uid == 0

    @property
    def reads_all(self) -> bool:
        """Root, or a node service: may see every sliver."""
        return self.is_root or self.service is not None


ROOT = Caller(uid=0, pid=0)


def validate_rcap(rcap: object) -> str:
    if not isinstance(rcap, str) or not RCAP.match(rcap):
        raise ValidationError("rcap", "32 lowercase hex digits", rcap)
    return rcap


def validate_attrs(attrs: object) -> dict[str, Any]:
    """Optional sliver attributes given at bind: keys, contacts, description, initscript."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise ValidationError("attrs", "a struct of keys, contacts, description, initscript",
                              attrs)
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key == "keys":
            out["keys"] = validate_keys(value)
        elif key == "contacts":
            out["contacts"] = validate_contacts(value)
        elif key == "description":
            if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
                raise ValidationError("description", f"text of at most {MAX_DESCRIPTION} "
                                      "characters", value)
            out["description"] = value
        elif key == "initscript":
            out["initscript"] = validate_initscript(value)
        else:
            raise ValidationError(str(key), "one of keys, contacts, description, initscript",
                                  "an unknown attribute", as_text=True)
    return out


def validate_initscript(text: object) -> str:
    if not isinstance(text, str) or len(text.encode()) > MAX_INITSCRIPT or "\0" in text:
        raise ValidationError("initscript", f"a script of at most {MAX_INITSCRIPT} bytes",
                              text if not isinstance(text, str) else f"{len(text)} characters")
    return text


class NodeManager:
    """Node manager logic. Thread-safe: the RPC server calls it from many threads.

    Args:
        cfg: the node's configuration.
        store: the node's database.
        engine: the Docker layer for this node's slivers.
        accounts: the host account layer.
        facts: the node facts container plans need (image, CPUs, network, ...).
        capacity: the node's limits for admission control.
        net: the node's sliver network (bandwidth classes, ports, counters).
        clock: returns the current time (tests pass their own).
    """

    def __init__(self, cfg: NodeConfig, store: Store, engine: SliverEngine,
                 accounts: HostAccounts, facts: NodeFacts, capacity: NodeCapacity,
                 net: NodeNetwork, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.engine = engine
        self.accounts = accounts
        self.facts = facts
        self.capacity = capacity
        self.net = net
        self.clock = clock
        self.started = clock()
        self.code = code_hash()
        self._admit = threading.Lock()
        self._locks_guard = threading.Lock()
        self._slice_locks: dict[str, threading.Lock] = {}

    # helpers --------------------------------------------------------------------------

    @contextmanager
    def _slice_lock(self, name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._slice_locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def _home(self, name: str) -> Path:
        return self.cfg.slivers_dir / name

    def _require_privileged(self, caller: Caller) -> None:
        if caller.is_root or (caller.slice is not None and caller.privileged):
            return
        raise PermissionDenied(f"caller {caller.name}: expected root or a slice with "
                               "nm_privileged, found neither")

    def _require_manage(self, caller: Caller, sliver: SliverRow) -> None:
        self._require_privileged(caller)
        if caller.is_root or sliver.created_by == caller.name:
            return
        raise PermissionDenied(f"slice {sliver.slice}: {caller.name} did not create it and "
                               "may not manage it")

    def _effective(self, name: str) -> RSpec:
        rows = self.store.rcaps(name)
        if not rows:
            raise StateError(f"slice {name}: expected at least one bound rcap, found none")
        return combine([r.rspec for r in rows])

    def _net_spec(self, specs: list[RSpec]) -> RSpec:
        # A sliver whose last rcap was just unbound (an undone bind) still needs an
        # identity to have its classes removed; the defaults serve.
        return combine(specs) if specs else parse_rspec({}, self.clock())

    def _ident(self, sliver: SliverRow) -> NetIdentity:
        specs = [r.rspec for r in self.store.rcaps(sliver.slice)]
        return NetIdentity(sliver.slice, sliver.xid, self._net_spec(specs))

    def _idents(self, desired: frozenset[str]) -> list[NetIdentity]:
        """Identities of all slivers in a desired state, from one read of the rcaps."""
        by_slice: dict[str, list[RSpec]] = {}
        for r in self.store.rcaps():
            if r.slice is not None:
                by_slice.setdefault(r.slice, []).append(r.rspec)
        return [NetIdentity(s.slice, s.xid, self._net_spec(by_slice.get(s.slice, [])))
                for s in self.store.slivers() if s.desired in desired]

    def _sync_ports(self) -> None:
        """Make the port manager's chains match the reserved ports of all slivers."""
        self.net.apply_ports(self._idents(frozenset({RUNNING, STOPPED})))

    def _attach(self, sliver: SliverRow, container: Container) -> None:
        container.reload()
        pid = container.attrs["State"].get("Pid")
        if container.status == "running" and pid:
            self.net.attach(self._ident(sliver), int(pid))

    def _owner_text(self, slice_name: str | None, rcap: str) -> str:
        return f"slice {slice_name}" if slice_name else f"unbound rcap {rcap[:8]}..."

    # rcaps ----------------------------------------------------------------------------

    def acquire(self, caller: Caller, data: object) -> str:
        """Admit an rspec and return an rcap naming it.

        Raises:
            ValidationError, AdmissionError, PermissionDenied.
        """
        self._require_privileged(caller)
        now = self.clock()
        spec = parse_rspec(data, now)
        with self._admit:
            live = [r for r in self.store.rcaps() if r.rspec.end > now]
            outstanding = {
                self._owner_text(r.slice, r.rcap) + f" ({r.rcap[:8]})": r.rspec for r in live
            }
            owners = {
                key: self._owner_text(r.slice, r.rcap)
                for r in live if r.rspec.start < spec.end and spec.start < r.rspec.end
                for key in r.rspec.ports()
            }
            capacity = replace(self.capacity, net_cap_kbit=self.net.cap_kbit)
            admission.check(spec, outstanding, capacity, owners)
            rcap = secrets.token_hex(16)
            self.store.add_rcap(rcap, spec, caller.name)
        log.info("acquire %s by %s: %s", rcap, caller.name, spec.to_wire())
        return rcap

    def _rcap_for(self, caller: Caller, rcap: object) -> Any:
        row = self.store.get_rcap(validate_rcap(rcap))
        if not caller.is_root and row.owner != caller.name:
            raise PermissionDenied(f"rcap {row.rcap}: held by {row.owner}, not {caller.name}")
        return row

    def split(self, caller: Caller, rcap: object, data: object) -> str:
        """Carve the part ``data`` describes off ``rcap``; return the new rcap."""
        self._require_privileged(caller)
        with self._admit:
            row = self._rcap_for(caller, rcap)
            if row.slice is not None:
                raise StateError(f"rcap {row.rcap}: expected an unbound rcap, found it bound to "
                                 f"slice {row.slice}")
            fields = dict(data) if isinstance(data, dict) else data
            if isinstance(fields, dict):
                fields.setdefault("start", iso(row.rspec.start))
                fields.setdefault("end", iso(row.rspec.end))
            part = parse_rspec(fields, self.clock())
            remaining = split(row.rspec, part)
            child = secrets.token_hex(16)
            with self.store.tx():
                self.store.set_rcap_rspec(row.rcap, remaining)
                self.store.add_rcap(child, part, caller.name, parent=row.rcap)
        log.info("split %s -> %s by %s", row.rcap, child, caller.name)
        return child

    def release(self, caller: Caller, rcap: object) -> bool:
        """Give back an rcap. A bound rcap may go only if its sliver keeps another."""
        self._require_privileged(caller)
        row = self._rcap_for(caller, rcap)
        if row.slice is None:
            self.store.delete_rcap(row.rcap)
            return True
        with self._slice_lock(row.slice):
            if len(self.store.rcaps(row.slice)) <= 1:
                raise StateError(f"rcap {row.rcap}: it is the last rcap of slice {row.slice}; "
                                 f"delete the slice instead")
            self.store.delete_rcap(row.rcap)
            self._apply_resources(self.store.get_sliver(row.slice))
        return True

    def rcap_info(self, caller: Caller, rcap: object) -> dict[str, Any]:
        row = self._rcap_for(caller, rcap)
        now = self.clock()
        state = ("bound" if row.slice else "pending" if row.rspec.start > now else "usable")
        return {"rcap": row.rcap, "state": state, "slice": row.slice, "owner": row.owner,
                "parent": row.parent, "rspec": row.rspec.to_wire(), "created": iso(row.created)}

    def list_rcaps(self, caller: Caller) -> list[dict[str, Any]]:
        self._require_privileged(caller)
        return [self.rcap_info(caller, r.rcap) for r in self.store.rcaps()
                if caller.is_root or r.owner == caller.name]

    def get_rspec(self, caller: Caller, name: object) -> dict[str, Any]:
        """The rspec of an rcap, or the effective rspec of a slice's sliver."""
        if isinstance(name, str) and RCAP.match(name):
            return dict(self.rcap_info(caller, name)["rspec"])
        sliver = self.store.get_sliver(validate_slice_name(name))
        self._require_manage(caller, sliver)
        return self._effective(sliver.slice).to_wire()

    # binding and slivers ----------------------------------------------------------------

    def bind(self, caller: Caller, slice_name: object, rcap: object,
             attrs: object = None) -> dict[str, Any]:
        """Bind ``rcap`` to a slice: create and start its sliver, or add to an existing one.

        ``attrs`` may carry keys, contacts, description and initscript for a new sliver
        (for an existing one, they replace the current values).
        """
        self._require_privileged(caller)
        name = validate_slice_name(slice_name)
        extra = validate_attrs(attrs)
        row = self._rcap_for(caller, rcap)
        now = self.clock()
        if row.rspec.start > now:
            raise StateError(f"rcap {row.rcap}: usable from {iso(row.rspec.start)}, "
                             f"now is {iso(now)}")
        if row.rspec.end <= now:
            raise StateError(f"rcap {row.rcap}: expired at {iso(row.rspec.end)}")
        with self._slice_lock(name):
            existing = self.store.find_sliver(name)
            if existing is not None:
                self._require_manage(caller, existing)
                if existing.desired == DESTROYED:
                    raise StateError(f"slice {name}: expected a live sliver, found one being "
                                     "destroyed; try again")
            elif not row.rspec.create_vm:
                raise StateError(f"rcap {row.rcap}: has create_vm false, so it can only add to "
                                 f"an existing sliver, and slice {name} has none here")
            sliver, new = self.store.begin_bind(name, row.rcap, caller.name, extra)
            try:
                if new:
                    self._materialize(sliver)
                else:
                    if extra:
                        self._set_attrs(sliver, extra)
                    self._apply_resources(self.store.get_sliver(name))
            except BaseException:
                self._undo_bind(name, row.rcap, new)
                raise
        log.info("bind %s to %s by %s (%s)", row.rcap, name, caller.name,
                 "new sliver" if new else "added")
        return self.describe(name)

    def _undo_bind(self, name: str, rcap: str, new: bool) -> None:
        """Leave nothing half-done: unbind the rcap and, for a new sliver, remove it all."""
        try:
            with self.store.tx() as db:
                db.execute("UPDATE rcaps SET slice = NULL WHERE rcap = ?", (rcap,))
            if new:
                self._teardown(name)
                self.store.delete_sliver(name)
                self._sync_ports()
            else:
                self._apply_resources(self.store.get_sliver(name))
        except Exception:  # the original error matters more; reconcile finishes the rest
            log.exception("undo of bind %s -> %s failed", rcap, name)

    def _set_attrs(self, sliver: SliverRow, extra: dict[str, Any]) -> None:
        self.store.update_sliver(sliver.slice, **extra)
        home = self._home(sliver.slice)
        if "keys" in extra:
            self.accounts.write_keys(home, extra["keys"])
        if "initscript" in extra:
            self.accounts.write_initscript(home / "etc", extra["initscript"])

    def _materialize(self, sliver: SliverRow) -> Container:
        """Make every piece of a sliver exist and run. Idempotent, so reconcile can finish
        a bind that a killed node manager left half-way."""
        name = sliver.slice
        home = self._home(name)
        etc = home / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        uid = self.accounts.create(name, home)
        if uid != sliver.uid:
            self.store.update_sliver(name, uid=uid)
        self.accounts.write_keys(home, sliver.keys)
        self.accounts.write_initscript(etc, sliver.initscript)
        (etc / "slice.json").write_text(json.dumps(
            {"slice": name, "xid": sliver.xid, "uid": uid, "node": self.cfg.node_id}) + "\n")
        spec = self._effective(name)
        plan = container_plan(SliverIdentity(name, sliver.xid, uid, etc), spec, self.facts)
        container = self.engine.create(plan)
        self.store.update_sliver(name, container_id=container.id)
        if sliver.desired == RUNNING:
            container.reload()
            if container.status != "running":
                self.engine.start(container)
            container.reload()
            self.engine.read_back(container, resource_update(spec, self.facts.ncpus))
            self._attach(sliver, container)
        self._sync_ports()
        self.accounts.write_login(home, container=container.id, engine_sock=self.cfg.engine_sock,
                                  uid=uid, slice_name=name)
        self.store.update_sliver(name, state=sliver.desired)
        return container

    def _apply_resources(self, sliver: SliverRow) -> None:
        container = self.engine.get(container_name(sliver.slice))
        if container is None:
            return
        spec = self._effective(sliver.slice)
        resources = resource_update(spec, self.facts.ncpus)
        self.engine.update(container, resources)
        container.reload()
        if container.status == "running":
            self.engine.read_back(container, resources)
        self.net.update(self._ident(sliver))
        self._sync_ports()

    def _teardown(self, name: str) -> None:
        """Remove the container, the bandwidth classes, the host account and the state
        directory of a sliver (its ports go with the next ``_sync_ports``)."""
        self.engine.remove(container_name(name))
        sliver = self.store.find_sliver(name)
        if sliver is not None:
            self.net.detach(self._ident(sliver))
        home = self._home(name)
        self.accounts.remove(name, home)
        shutil.rmtree(home, ignore_errors=True)

    def destroy(self, caller: Caller, slice_name: object) -> bool:
        """Stop and remove a sliver and free every resource bound to it."""
        name = validate_slice_name(slice_name)
        with self._slice_lock(name):
            sliver = self.store.get_sliver(name)
            self._require_manage(caller, sliver)
            self._destroy(name)
        log.info("destroy %s by %s", name, caller.name)
        return True

    def _destroy(self, name: str) -> None:
        self.store.update_sliver(name, desired=DESTROYED)
        self._teardown(name)
        self.store.delete_sliver(name)
        self._sync_ports()

    def start(self, caller: Caller, slice_name: object) -> dict[str, Any]:
        return self._set_desired(caller, slice_name, RUNNING)

    def stop(self, caller: Caller, slice_name: object) -> dict[str, Any]:
        return self._set_desired(caller, slice_name, STOPPED)

    def _set_desired(self, caller: Caller, slice_name: object, desired: str) -> dict[str, Any]:
        name = validate_slice_name(slice_name)
        with self._slice_lock(name):
            sliver = self.store.get_sliver(name)
            self._require_manage(caller, sliver)
            self.store.update_sliver(name, desired=desired)
            container = self.engine.get(container_name(name))
            if container is None:
                self._materialize(self.store.get_sliver(name))
            elif desired == RUNNING:
                self.engine.start(container)
                self._attach(sliver, container)
            else:
                self.engine.stop(container)
            self.store.update_sliver(name, state=desired)
        return self.describe(name)

    def get_keys(self, caller: Caller, slice_name: object) -> list[str]:
        sliver = self.store.get_sliver(validate_slice_name(slice_name))
        self._require_manage(caller, sliver)
        return sliver.keys

    def set_keys(self, caller: Caller, slice_name: object, keys: object) -> bool:
        name = validate_slice_name(slice_name)
        checked = validate_keys(keys)
        with self._slice_lock(name):
            sliver = self.store.get_sliver(name)
            self._require_manage(caller, sliver)
            self._set_attrs(sliver, {"keys": checked})
        return True

    def set_initscript(self, caller: Caller, slice_name: object, text: object) -> bool:
        """Store the sliver's /etc/rc.vinit; it runs at every start of the sliver from the
        next one on (set within a moment of the bind, it may also run in the first boot)."""
        name = validate_slice_name(slice_name)
        script = validate_initscript(text)
        with self._slice_lock(name):
            sliver = self.store.get_sliver(name)
            self._require_manage(caller, sliver)
            self._set_attrs(sliver, {"initscript": script})
        return True

    # views ------------------------------------------------------------------------------

    def describe(self, name: str, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sliver as ``slicectl show`` prints it. With ``summary`` (from the engine's
        list) no further engine call is made and ``pid`` is left out."""
        sliver = self.store.get_sliver(name)
        spec = self._effective(name)
        info: dict[str, Any] = {
            "name": name, "state": sliver.state, "desired": sliver.desired,
            "container": container_name(name), "container_id": sliver.container_id,
            "pid": None, "address": None, "xid": sliver.xid, "uid": sliver.uid,
            "rspec": spec.to_wire(), "expires": iso(spec.end),
            "created": iso(sliver.created), "created_by": sliver.created_by,
            "contacts": sliver.contacts, "description": sliver.description,
            "keys": len(sliver.keys), "rcaps": [r.rcap for r in self.store.rcaps(name)],
            "net": {"address": self.net.address(sliver.xid), **self.net.counters(name)},
        }
        if summary is not None:
            info["state"] = summary.get("State", sliver.state)
            nets = (summary.get("NetworkSettings") or {}).get("Networks") or {}
            info["address"] = (nets.get(self.facts.network) or {}).get("IPAddress") or None
            return info
        container = self.engine.get(container_name(name))
        if container is None:
            info["state"] = sliver.state if sliver.state == CREATING else "missing"
            return info
        st = self.engine.status(container, self.facts.network)
        info.update(state=st.status, pid=st.pid, address=st.address,
                    container_id=st.container_id)
        return info

    def get_sliver(self, caller: Caller, slice_name: object) -> dict[str, Any]:
        name = validate_slice_name(slice_name)
        sliver = self.store.get_sliver(name)
        if not (caller.reads_all or caller.slice == name):
            self._require_manage(caller, sliver)
        return self.describe(name)

    def list_slivers(self, caller: Caller) -> list[dict[str, Any]]:
        if not caller.reads_all:
            self._require_privileged(caller)
        summaries = self.engine.summaries()
        return [
            self.describe(s.slice, summaries.get(s.slice, {"State": "missing"}))
            for s in self.store.slivers()
            if caller.reads_all or s.created_by == caller.name
        ]

    def status(self, caller: Caller) -> dict[str, Any]:
        now = self.clock()
        live = [r for r in self.store.rcaps() if r.rspec.end > now]
        version = self.engine.client.version()
        return {
            "node_id": self.cfg.node_id, "hostname": self.facts.hostname,
            "uptime_s": int(now - self.started), "engine": version.get("Version"),
            "image": self.facts.image, "cpus": self.facts.ncpus,
            "slivers": len(self.store.slivers()), "rcaps": len(live),
            "cpu_shares_outstanding": sum(r.rspec.cpu_share for r in live
                                          if r.rspec.start <= now),
            "cpu_shares_total": self.capacity.cpu_shares,
            "mem_mb": self.capacity.mem_mb, "disk_mb": self.capacity.disk_mb,
            "caller": caller.name, "code": self.code,
            "net_cap_kbit": self.net.cap_kbit,
            "net_guaranteed_kbit": sum(r.rspec.net_min_kbit for r in live if r.rspec.start <= now),
        }

    # node services: the raw-socket shim and the admin sniffer -----------------------

    def _require_root(self, caller: Caller, what: str) -> None:
        if not caller.is_root:
            raise PermissionDenied(f"{what}: expected a node service running as root, "
                                   f"found {caller.name}")

    def net_map(self, caller: Caller) -> list[dict[str, Any]]:
        """Every sliver's network identity and socket rights, from the database alone
        (no engine call): what the shim and the admin sniffer need to tag and check."""
        self._require_root(caller, "net_map")
        by_container = {s.slice: s.container_id for s in self.store.slivers()}
        return [
            {"slice": i.slice, "xid": i.xid, "address": self.net.address(i.xid),
             "container_id": by_container.get(i.slice) or "",
             "raw_sockets": i.rspec.raw_sockets, "admin_sniffer": i.rspec.admin_sniffer,
             "tcp_ports": list(i.rspec.tcp_ports), "udp_ports": list(i.rspec.udp_ports)}
            for i in self._idents(frozenset({RUNNING, STOPPED}))
        ]

    def claim_port(self, caller: Caller, slice_name: object, proto: object, port: object,
                   kind: object) -> bool:
        """Record that a slice's safe raw (``raw``) or sniffer (``sniff``) socket holds a
        port. Refused if the port is a node service's, reserved to another slice, or held
        by another slice's socket."""
        self._require_root(caller, "claim_port")
        name = validate_slice_name(slice_name)
        if proto not in ("tcp", "udp") or kind not in ("raw", "sniff"):
            raise ValidationError("proto/kind", "tcp or udp / raw or sniff", f"{proto}/{kind}",
                                  as_text=True)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError("port", "a port number from 1 to 65535", port)
        with self._admit:
            if (proto, port) in NODE_SERVICE_PORTS:
                raise PermissionDenied(f"{proto} port {port}: a node service's, not a slice's")
            for ident in self._idents(frozenset({RUNNING, STOPPED})):
                if ident.slice != name and (proto, port) in ident.rspec.ports():
                    raise AdmissionError(f"{proto} port {port}: expected a free port, found it "
                                         f"reserved to slice {ident.slice}")
            for c_proto, c_port, c_slice, _ in self.store.claims():
                if (c_proto, c_port) == (proto, port) and c_slice != name:
                    raise AdmissionError(f"{proto} port {port}: expected a free port, found it "
                                         f"held by a socket of slice {c_slice}")
            self.store.get_sliver(name)
            self.store.add_claim(proto, port, name, kind)
        return True

    def release_port(self, caller: Caller, slice_name: object, proto: object, port: object,
                     kind: object) -> bool:
        self._require_root(caller, "release_port")
        if not isinstance(slice_name, str) or not isinstance(proto, str) \
                or not isinstance(port, int) or not isinstance(kind, str):
            raise ValidationError("release_port", "slice, proto, port, kind",
                                  (slice_name, proto, port, kind), as_text=True)
        return self.store.delete_claims(proto, port, slice_name, kind) > 0

    def release_claims(self, caller: Caller) -> int:
        """Forget every socket's port (the shim calls this when it starts afresh)."""
        self._require_root(caller, "release_claims")
        return self.store.delete_claims()

    def list_claims(self, caller: Caller) -> list[dict[str, Any]]:
        self._require_privileged(caller)
        return [{"proto": p, "port": n, "slice": s, "kind": k}
                for p, n, s, k in self.store.claims()]

    def set_node(self, caller: Caller, name: object, value: object) -> dict[str, Any]:
        """Change a node setting live (root on the node only). Settings: net_cap_kbit."""
        if not caller.is_root:
            raise PermissionDenied(f"caller {caller.name}: node settings are for root on the node")
        if name != "net_cap_kbit":
            raise ValidationError("setting", "one of: net_cap_kbit", name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000_000:
            raise ValidationError("net_cap_kbit", "an integer from 1 to 100000000", value)
        now = self.clock()
        live = [r for r in self.store.rcaps() if r.rspec.end > now]
        peak = max((admission.peak_overlap(r.rspec, [x.rspec for x in live], "net_min_kbit")[0]
                    for r in live), default=0)
        with self._admit:
            self.net.set_cap(value, peak, self._idents(frozenset({RUNNING, STOPPED, DESTROYED})))
        log.info("node setting net_cap_kbit = %d by %s", value, caller.name)
        return self.status(caller)

    def poll_network(self) -> None:
        """Fold kernel traffic counters into the database; apply daily budgets."""
        self.net.poll(self._idents(frozenset({RUNNING})))
        self.store.prune_usage(utc_day(self.clock() - USAGE_KEEP_DAYS * 86400))

    def sliver_started(self, name: str) -> None:
        """The engine (re)started a sliver on its own: give it its network again."""
        with self._slice_lock(name):
            sliver = self.store.find_sliver(name)
            if sliver is None or sliver.desired != RUNNING or sliver.state == CREATING:
                return
            container = self.engine.get(container_name(name))
            if container is not None:
                self._attach(sliver, container)

    # keeping state true -----------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Make the engine and the host match the database; return what was done.

        Finishes binds a killed node manager left in ``creating``, recreates lost
        containers, starts slivers that should run, finishes destroys, and removes our
        containers and accounts that no sliver row claims.
        """
        actions: list[str] = []
        summaries = self.engine.summaries()
        for sliver in self.store.slivers():
            name = sliver.slice
            summary = summaries.pop(name, None)
            try:
                with self._slice_lock(name):
                    if sliver.desired == DESTROYED:
                        self._destroy(name)
                        actions.append(f"finished destroying {name}")
                    elif sliver.state == CREATING or summary is None:
                        self._materialize(sliver)
                        verb = "finished creating" if sliver.state == CREATING else "recreated"
                        actions.append(f"{verb} {name}")
                    elif sliver.desired == RUNNING and summary.get("State") != "running":
                        container = self.engine.get(container_name(name))
                        if container is not None:
                            self.engine.start(container)
                            self.store.update_sliver(name, state=RUNNING)
                            actions.append(f"started {name}")
            except Exception as e:  # one broken sliver must not keep the node down
                log.exception("reconcile %s failed", name)
                actions.append(f"failed {name}: {e}")
        for sliver in self.store.slivers():
            if sliver.desired == RUNNING:
                try:
                    c = self.engine.get(container_name(sliver.slice))
                    if c is not None:
                        self._attach(sliver, c)
                except Exception as e:
                    log.exception("reconcile network of %s failed", sliver.slice)
                    actions.append(f"failed network of {sliver.slice}: {e}")
        self._sync_ports()
        for name in summaries:
            self.engine.remove(container_name(name))
            actions.append(f"removed orphan container {container_name(name)}")
        known = {s.slice for s in self.store.slivers()}
        for name in self.accounts.ours(self.cfg.slivers_dir):
            if name not in known:
                self.accounts.remove(name, self._home(name))
                shutil.rmtree(self._home(name), ignore_errors=True)
                actions.append(f"removed orphan account {name}")
        actions += self.expire()
        for a in actions:
            log.info("reconcile: %s", a)
        return actions

    def expire(self) -> list[str]:
        """Release rcaps past their end; destroy slivers left with none."""
        now = self.clock()
        actions: list[str] = []
        for r in self.store.rcaps():
            if r.rspec.end > now:
                continue
            if r.slice is None:
                self.store.delete_rcap(r.rcap)
                actions.append(f"expired rcap {r.rcap}")
                continue
            with self._slice_lock(r.slice):
                rest = [x for x in self.store.rcaps(r.slice) if x.rspec.end > now]
                if rest:
                    self.store.delete_rcap(r.rcap)
                    self._apply_resources(self.store.get_sliver(r.slice))
                    actions.append(f"expired rcap {r.rcap} of {r.slice}")
                elif self.store.find_sliver(r.slice) is not None:
                    self._destroy(r.slice)
                    actions.append(f"expired slice {r.slice}")
        return actions

    def caller_for(self, uid: int, pid: int) -> Caller:
        """Identify a peer: host root, or the slice whose container holds ``pid``."""
        cid = container_of_pid(pid)
        if cid is None:
            if uid != 0:
                raise PermissionDenied(f"caller uid {uid}: expected root, found another user")
            return Caller(uid=uid, pid=pid)
        for s in self.store.slivers():
            if s.container_id == cid:
                return Caller(uid=uid, pid=pid, slice=s.slice,
                              privileged=self._effective(s.slice).nm_privileged)
        service = self.engine.service_of(cid)
        if service is not None:
            return Caller(uid=uid, pid=pid, service=service)
        raise PermissionDenied(f"caller pid {pid}: in container {cid[:12]}, which is no sliver "
                               "of this node")


_CID = re.compile(r"([0-9a-f]{64})")


def container_of_pid(pid: int) -> str | None:
    """The Docker container id in ``pid``'s cgroup path, or None for a host process."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    m = _CID.search(text)
    return m.group(1) if m else None
