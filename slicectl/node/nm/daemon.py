"""The node manager daemon: reconcile, then serve XML-RPC and expire what is due."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from slicectl.core.admission import NodeCapacity
from slicectl.core.errors import EngineError
from slicectl.core.labels import REFERENCE_REPO
from slicectl.core.netplan import MAX_NET_XID, WAKE_PREFIX
from slicectl.core.policy import NodePolicy
from slicectl.core.userns import host_limits, raised
from slicectl.ipc.rpc import UnixXMLRPCServer
from slicectl.node.accounts import HostAccounts
from slicectl.node.config import NodeConfig, default_config
from slicectl.node.daemons import daemon_logging, remove_pidfile, write_pidfile
from slicectl.node.dockerd import open_to_sliver_root, quota_mode
from slicectl.node.engine import SliverEngine, engine_client
from slicectl.node.network import NodeNetwork
from slicectl.node.nflog import LogGroup, open_group
from slicectl.node.nm.api import NodeManagerAPI
from slicectl.node.nm.manager import NodeManager
from slicectl.node.procfs import host_listeners, pin
from slicectl.node.store import Store

log = logging.getLogger("slicectl.node.nm.daemon")


#: The largest kernel.pid_max on a 64-bit kernel (include/linux/threads.h).
PID_MAX_LIMIT = 1 << 22
#: Keys and key payload bytes one sliver's start may charge to the slivers' host uid
#: (a session keyring each start; room for a few more).
KEYS_PER_SLIVER = 4
KEY_BYTES_PER_SLIVER = 1024


def raise_host_limits(proc_sys: Path = Path("/proc/sys")) -> None:
    """Raise the host's per-user limits that slivers' namespaces are charged to (see
    :mod:`slicectl.core.userns`) far above what all slivers together may take, and the
    pid space to the kernel's maximum: admission grants processes out of kernel.pid_max,
    and the default 32,768 holds 64 slivers of the default rspec's 512. Every sliver's
    start makes a session keyring (runc's ``_ses.<container id>``) owned by the one
    host uid slivers' root maps to, whose key quota (kernel.keys.maxkeys, 200 by
    default) refused the 200th sliver with "disk quota exceeded"."""
    wanted = {**host_limits(MAX_NET_XID), "kernel/pid_max": PID_MAX_LIMIT,
              "kernel/keys/maxkeys": KEYS_PER_SLIVER * (MAX_NET_XID + 1),
              "kernel/keys/maxbytes": KEY_BYTES_PER_SLIVER * (MAX_NET_XID + 1)}
    current = {k: int((proc_sys / k).read_text()) for k in wanted}
    for key, value in raised(current, wanted).items():
        (proc_sys / key).write_text(f"{value}\n")
        log.info("raised %s from %d to %d (slivers' user namespaces are charged to root)",
                 key.replace("/", "."), current[key], value)


def node_capacity(data_root: str, policy: NodePolicy) -> NodeCapacity:
    """Read the node's limits from the kernel (memory, sliver disk pool, fd and pid
    maxima) and the overcommit factors from the node policy."""
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    st = os.statvfs(data_root)
    return NodeCapacity(
        mem_mb=mem_kb // 1024,
        disk_mb=st.f_blocks * st.f_frsize // (1 << 20),
        max_nofile=int(Path("/proc/sys/fs/nr_open").read_text()),
        max_nproc=int(Path("/proc/sys/kernel/pid_max").read_text()),
        total_nofile=int(Path("/proc/sys/fs/file-max").read_text()),
        mem_overcommit=policy.mem_overcommit,
        disk_overcommit=policy.disk_overcommit,
        nproc_overcommit=policy.nproc_overcommit,
        nofile_overcommit=policy.nofile_overcommit,
        cpu_overcommit=policy.cpu_overcommit,
    )


@dataclass
class NodeParts:
    """The node manager and the real collaborators it was built on."""

    nm: NodeManager
    engine: SliverEngine
    accounts: HostAccounts
    net: NodeNetwork
    store: Store
    #: the node policy as read once at start (every part sees the same one)
    policy: NodePolicy


def build_node_manager(cfg: NodeConfig) -> NodeParts:
    """Wire a NodeManager to the real engine, database, network and host accounts."""
    client = engine_client(cfg.engine_url)
    engine = SliverEngine(client, cfg.node_id, cfg.network)
    root = client.info()["DockerRootDir"]
    facts = engine.facts(
        image=cfg.image or f"{REFERENCE_REPO}:latest", network=cfg.network,
        cgroup_parent=cfg.cgroup_parent, hostname=cfg.hostname, nm_sock_dir=cfg.nm_sock_dir,
        subnet=cfg.subnet, quota_counts_image=quota_mode(Path(root)) == "qgroup",
        shim_dir=cfg.shim_dir, sniffer_dir=cfg.sniffer_dir, vsys_dir=cfg.vsys_dir,
    )
    policy = cfg.policy()
    capacity = node_capacity(root, policy)
    store = Store(cfg.db_path)
    net = NodeNetwork(store, node_id=cfg.node_id, subnet=cfg.subnet, bridge=cfg.bridge,
                      ifb=cfg.ifb, sliver_services=cfg.sliver_services(),
                      allow_link_local=policy.allow_link_local,
                      cap_max_kbit=policy.net_cap_max_kbit,
                      refused_prefixes=policy.refused_prefixes)
    accounts = HostAccounts()
    nm = NodeManager(cfg, store, engine, accounts, facts, capacity, net,
                     host_ports=host_listeners, policy=policy)
    return NodeParts(nm, engine, accounts, net, store, policy)


def serve(cfg: NodeConfig, expire_every_s: float = 1.0) -> None:
    # Slice accounts' homes lie below: sshd reads their authorized_keys as the slice user,
    # so the state directory is traversable but not listable; the database is root-only.
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o711)
    cfg.slivers_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.slivers_dir, 0o711)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    # Mount sources of slivers' service sockets: they must exist before any container.
    for d in (cfg.shim_dir, cfg.sniffer_dir, cfg.vsys_dir):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    raise_host_limits()  # before the node's capacity is read: it counts kernel.pid_max
    parts = build_node_manager(cfg)
    nm = parts.nm
    parts.accounts.ensure_group()
    wakes: LogGroup | None = None
    try:
        wakes = open_group(cfg.node_id)
        parts.net.wake_group = wakes.group
    except EngineError as e:
        log.warning("%s: connections to dormant slivers' ports will not wake them", e)
    parts.net.setup()
    nm.reconcile()
    server = UnixXMLRPCServer(cfg.nm_sock, NodeManagerAPI(nm), identify=pin,
                              max_per_owner=parts.policy.nm_connections_per_owner)
    os.chmod(cfg.nm_sock_dir, 0o711)  # traversable: the socket's owner decides who connects
    open_to_sliver_root(cfg.nm_sock)
    write_pidfile(cfg.nm_pidfile)
    stop = threading.Event()

    def expiry() -> None:
        ticks = 0
        while not stop.wait(expire_every_s):
            ticks += 1
            try:
                nm.expire()
                if ticks % 2 == 0:
                    nm.poll_network()
            except Exception:
                log.exception("expiry or counter pass failed")

    def engine_events() -> None:
        # Slivers the engine restarts on its own (restart policy, engine restart) lose
        # their veth; give them their network again.
        while not stop.is_set():
            try:
                for name in parts.engine.sliver_starts():
                    nm.sliver_started(name)
            except Exception:
                log.exception("engine event stream failed; reconnecting")
                stop.wait(1)

    def port_wakes(group: LogGroup) -> None:
        # The wake rules log the first packets of connections to dormant slivers' ports.
        while not stop.is_set():
            try:
                for prefix in group.read(timeout=1.0):
                    name = prefix.removeprefix(WAKE_PREFIX)
                    if prefix.startswith(WAKE_PREFIX) and name:
                        nm.wake_on_connection(name)
            except Exception:
                log.exception("wake on connection failed")
                stop.wait(1)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=expiry, name="expiry", daemon=True).start()
    threading.Thread(target=engine_events, name="events", daemon=True).start()
    threading.Thread(target=nm.pool.run, args=(stop,), name="pool", daemon=True).start()
    if wakes is not None:
        threading.Thread(target=port_wakes, args=(wakes,), name="wakes", daemon=True).start()
    log.info("node manager %s serving on %s (pid %d)", cfg.node_id, cfg.nm_sock, os.getpid())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if wakes is not None:
            wakes.close()
        remove_pidfile(cfg.nm_pidfile)
        parts.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicectl-nm", description="slicectl node manager")
    parser.add_argument("--expire-every", type=float, default=1.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    daemon_logging()
    serve(default_config(), args.expire_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
