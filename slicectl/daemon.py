"""The node manager daemon: reconcile, then serve XML-RPC and expire what is due."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .accounts import HostAccounts
from .admission import NodeCapacity
from .api import NodeManagerAPI
from .config import REFERENCE_REPO, NodeConfig, default_config
from .containers import SliverEngine, engine_client
from .nm import NodeManager
from .rpc import UnixXMLRPCServer
from .store import Store

log = logging.getLogger("slicectl.daemon")


def node_capacity(data_root: str) -> NodeCapacity:
    """Read the node's limits from the kernel: memory, sliver disk pool, fd and pid maxima."""
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
    )


def build_node_manager(cfg: NodeConfig) -> NodeManager:
    """Wire a NodeManager to the real engine, database and host accounts."""
    client = engine_client(cfg.engine_url)
    engine = SliverEngine(client, cfg.node_id)
    facts = engine.facts(
        image=cfg.image or f"{REFERENCE_REPO}:latest", network=cfg.network,
        cgroup_parent=cfg.cgroup_parent, hostname=cfg.hostname, nm_sock_dir=cfg.nm_sock_dir,
    )
    capacity = node_capacity(client.info()["DockerRootDir"])
    return NodeManager(cfg, Store(cfg.db_path), engine, HostAccounts(), facts, capacity)


def serve(cfg: NodeConfig, expire_every_s: float = 1.0) -> None:
    # Slice accounts' homes lie below: sshd reads their authorized_keys as the slice user,
    # so the state directory is traversable but not listable; the database is root-only.
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o711)
    cfg.slivers_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.slivers_dir, 0o711)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    nm = build_node_manager(cfg)
    nm.accounts.ensure_group()
    nm.reconcile()
    server = UnixXMLRPCServer(cfg.nm_sock, NodeManagerAPI(nm))
    os.chmod(cfg.nm_sock_dir, 0o700)
    cfg.nm_pidfile.write_text(f"{os.getpid()}\n")
    stop = threading.Event()

    def expiry() -> None:
        while not stop.wait(expire_every_s):
            try:
                nm.expire()
            except Exception:
                log.exception("expiry pass failed")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=expiry, name="expiry", daemon=True).start()
    log.info("node manager %s serving on %s (pid %d)", cfg.node_id, cfg.nm_sock, os.getpid())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        try:
            if cfg.nm_pidfile.read_text().strip() == str(os.getpid()):
                cfg.nm_pidfile.unlink()
        except OSError:
            pass
        nm.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicectl-nm", description="slicectl node manager")
    parser.add_argument("--expire-every", type=float, default=1.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(default_config(), args.expire_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
