"""Private node manager instances on the node's engine, for tests and benchmarks.

A private instance has its own node id, state and run directories, engine network, IFB
and iptables chains, so it can be started, killed and removed without touching the
node's own node manager or another instance. Removal takes exactly what its node id made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import yaml
from docker.models.containers import Container
from docker.models.networks import Network

from slicectl.core.errors import EngineError
from slicectl.core.labels import LABEL_NODE
from slicectl.core.policy import parse_policy
from slicectl.node.accounts import HostAccounts
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import (
    HOST_DAEMONS,
    install_programs,
    remove_programs,
    start_host_daemons,
    start_nm,
    supervisor,
)
from slicectl.node.dockerd import Say, ensure_network
from slicectl.node.network import NodeNetwork
from slicectl.node.services import node_services, start_services
from slicectl.node.store import Store

PRIVATE_STATE = Path("/var/lib/slicectl/test")
PRIVATE_RUN = Path("/run/slicectl/test")


def free_subnet(engine: docker.DockerClient, skip: frozenset[str] = frozenset()) -> str:
    """A /22 of 172.31.0.0/16 that no engine network uses (nor any in ``skip``)."""
    used = {
        cfg.get("Subnet")
        for n in engine.api.networks()
        for cfg in (n.get("IPAM") or {}).get("Config") or []
    } | skip
    for i in range(64):
        net = f"172.31.{i * 4}.0/22"
        if net not in used:
            return net
    raise EngineError("private node subnet: expected a free /22 in 172.31.0.0/16, found all "
                      "64 in use; remove leftover networks with `docker network ls`")


def private_config(base: NodeConfig, engine: docker.DockerClient, kind: str = "test",
                   tag: str | None = None) -> NodeConfig:
    tag = tag or secrets.token_hex(3)
    return base.with_(node_id=f"{kind}-{tag}", state_dir=PRIVATE_STATE / tag,
                      run_dir=PRIVATE_RUN / tag, network=f"slicectl-t{tag}",
                      subnet=free_subnet(engine), bridge=f"slc{tag}", ifb=f"slcifb{tag}",
                      plc_port=0,  # a private node hosts no PLC (the host's may)
                      agent_slice=f"t{tag}_agent", admin_slice=f"t{tag}_admin",
                      warm_pool=0)


def log_path(cfg: NodeConfig, daemon: str = "nm") -> Path:
    return cfg.state_dir.parent / f"{daemon}-{cfg.state_dir.name}.log"


def reap_orphans(base: NodeConfig, engine: docker.DockerClient, say: Say | None = None) -> list[str]:
    """Remove what private nodes whose owning process died (a test run or bench killed
    with SIGKILL) left: their programs, containers, classes, chains, network, accounts and
    directories. Returns their node ids."""
    gone = supervisor().remove_orphans()
    for node_id in gone:
        kind, _, tag = node_id.partition("-")
        if not tag:
            continue
        if say is not None:
            say(f"removing what private node {node_id} left (its owner is gone)")
        cleanup(private_config(base, engine, kind, tag), engine)
    return gone


def remove_labelled(engine: docker.DockerClient, label: str, jobs: int = 8) -> int:
    """Remove every container carrying ``label`` (running or not), ``jobs`` at a time: an
    interrupted bench can leave a thousand, and the engine removes them faster in
    parallel. One already gone is fine. Returns how many were removed."""
    def remove(c: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)

    found = engine.containers.list(all=True, filters={"label": label})
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(remove, found))
    return len(found)


def cleanup(cfg: NodeConfig, engine: docker.DockerClient) -> None:
    """Remove everything the instance made: containers, classes, chains, network,
    accounts, directories."""
    remove_labelled(engine, f"{LABEL_NODE}={cfg.node_id}")
    if cfg.db_path.exists():
        NodeNetwork(Store(cfg.db_path), node_id=cfg.node_id, subnet=cfg.subnet,
                    bridge=cfg.bridge, ifb=cfg.ifb).teardown()
    try:
        for n in engine.networks.list(names=[cfg.network]):
            remove_network(n)
    finally:  # a network the engine will not let go must not keep accounts and files
        accounts = HostAccounts()
        for name in accounts.ours(cfg.slivers_dir):
            accounts.remove(name, cfg.slivers_dir / name)
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        for d, _ in HOST_DAEMONS:  # with the supervisor's rotated copies (.1, .2, ...)
            for p in log_path(cfg, d.name).parent.glob(log_path(cfg, d.name).name + "*"):
                p.unlink(missing_ok=True)


def remove_network(network: Network, wait_s: float = 10) -> None:
    """Remove an engine network; while the engine still frees the endpoint of a container
    just removed (a bind under way when a run was interrupted), wait for it.

    Raises:
        EngineError: endpoints stay for ``wait_s``; the message names the network.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            network.remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if "active endpoints" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise EngineError(f"network {network.name}: still has endpoints {wait_s:.0f} s "
                                  "after its containers were removed (the engine lost track "
                                  "of them); remove it after restarting the engine") from e
            time.sleep(0.2)


def create_network(cfg: NodeConfig, engine: docker.DockerClient, tries: int = 8) -> NodeConfig:
    """Create the instance's engine network, moving to another subnet while the engine
    still holds a pool that overlaps (a network removed a moment ago can)."""
    tried: set[str] = set()
    for _ in range(tries):
        try:
            ensure_network(engine, cfg.network, cfg.subnet, cfg.bridge)
            return cfg
        except docker.errors.APIError as e:
            if "overlaps" not in str(e):
                raise
            tried.add(cfg.subnet)
            cfg = cfg.with_(subnet=free_subnet(engine, frozenset(tried)))
    raise EngineError(f"network {cfg.network}: expected a subnet no other network holds, found "
                      f"every one tried overlapping ({sorted(tried)})")


def free_port() -> int:
    """A TCP port nothing on the host listens on now (for a private node's services)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def service_ports() -> dict[str, int]:
    """Free ports for a private node's services (never the node's own 33080 or 80)."""
    return {spec.name: free_port() for spec in node_services()}


@contextmanager
def private_node(base: NodeConfig, engine: docker.DockerClient, kind: str = "test",
                 say: Say | None = None, daemons: bool = False,
                 services: dict[str, int] | None = None,
                 policy: Mapping[str, object] | None = None,
                 plc_port: int = 0) -> Iterator[NodeConfig]:
    """Start a private node manager (with ``daemons``, also its admin sniffer and
    raw-socket shim; given ``services``, its service sidecars on those ports, see
    :func:`service_ports`; given ``policy``, with that node policy file); stop them and
    remove all they made on exit (the sidecars carry the node id's label, so cleanup
    finds them). ``plc_port``: a host port its slivers may reach (a test's PLC).

    Its daemons run under the node's supervisor as programs named with its node id, owned
    by this process: removed on exit, and, should this process die without exiting, by
    the next private node's start."""
    cfg = private_config(base, engine, kind).with_(plc_port=plc_port)
    if services is not None and "sensors" in services:
        cfg = cfg.with_(sensors_port=services["sensors"])
    if services is not None and "auditd" in services:
        cfg = cfg.with_(audit_port=services["auditd"])
    PRIVATE_STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(PRIVATE_STATE, 0o755)
    say = say or Say(quiet=True)
    try:
        reap_orphans(base, engine, say)
        if policy is not None:
            parse_policy(dict(policy))  # refuse a bad policy before anything is made
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            cfg.policy_path.write_text(yaml.safe_dump(dict(policy)))
        cfg = create_network(cfg, engine)
        if daemons:
            start_host_daemons(cfg, say, lambda d: log_path(cfg, d.name), os.getpid())
        else:
            install_programs(cfg, lambda d: log_path(cfg, d.name), os.getpid())
            start_nm(cfg, say, log_path=log_path(cfg))
        if services is not None:
            start_services(cfg, engine, os.environ, say, services)
        yield cfg
    finally:
        try:
            remove_programs(cfg)
        finally:
            cleanup(cfg, engine)
