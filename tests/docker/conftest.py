"""Docker-tier fixtures: the node's real engine, and a private node manager per test.

Each ``nm`` fixture runs a real node manager daemon (a subprocess, so tests can kill it)
with its own node id, state directory and socket, on the node's engine and reference
image. Teardown removes exactly what that node id created: containers by label, host
accounts by home directory, and the directories.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.accounts import HostAccounts
from slicectl.config import LABEL_NODE, NodeConfig
from slicectl.dockerd import Say, ensure_network
from slicectl.network import NodeNetwork
from slicectl.node import nm_pid, prepare, start_nm, stop_nm
from slicectl.rpc import Client
from slicectl.store import Store

TEST_STATE = Path("/var/lib/slicectl/test")
TEST_RUN = Path("/run/slicectl/test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/docker/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def node_cfg() -> NodeConfig:
    """The node's configuration, with engine, network, image, login shell and sshd ready."""
    if os.geteuid() != 0:
        pytest.fail("docker-tier tests need root (they drive the node's engine and sshd)")
    cfg = NodeConfig.from_env(os.environ)
    prepare(cfg, os.environ, Say(quiet=True))
    return cfg


@pytest.fixture(scope="session")
def engine(node_cfg: NodeConfig) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=node_cfg.engine_url, timeout=120)
    yield client
    client.close()


@dataclass
class NMHandle:
    """A private node manager: its config, an RPC client, and process control."""

    cfg: NodeConfig
    tag: str
    log_path: Path

    @property
    def client(self) -> Client:
        return Client(self.cfg.nm_sock, timeout=300)

    def call(self, method: str, *args: Any) -> Any:
        return self.client.call(method, *args)

    def slice(self, name: str) -> str:
        """A slice name unique to this test run: ``t<tag>_<name>``."""
        return f"t{self.tag}_{name}"

    @property
    def pid(self) -> int | None:
        return nm_pid(self.cfg)

    def start(self) -> int:
        return start_nm(self.cfg, Say(quiet=True), log_path=self.log_path)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        pid = self.pid
        assert pid is not None, "node manager is not running"
        os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)

    def stop(self) -> None:
        stop_nm(self.cfg)

    def env(self) -> dict[str, str]:
        from slicectl.node import config_env

        return {**os.environ, **config_env(self.cfg)}

    def cli(self, *argv: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real ``slicectl`` CLI against this node manager."""
        exe = Path(sys.executable).parent / "slicectl"
        return subprocess.run([str(exe), *argv], env=self.env(), capture_output=True, text=True,
                              input=input_text, timeout=300, check=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_subnet(engine: docker.DockerClient) -> str:
    """A /22 of 172.31.0.0/16 no engine network uses (one per private node manager)."""
    used = {
        cfg.get("Subnet")
        for n in engine.api.networks()
        for cfg in (n.get("IPAM") or {}).get("Config") or []
    }
    for i in range(64):
        net = f"172.31.{i * 4}.0/22"
        if net not in used:
            return net
    raise RuntimeError("no free /22 left in 172.31.0.0/16 for a test node")


def cleanup_node(cfg: NodeConfig, engine: docker.DockerClient) -> None:
    for c in engine.containers.list(all=True, filters={"label": f"{LABEL_NODE}={cfg.node_id}"}):
        c.remove(force=True, v=True)
    if cfg.db_path.exists():
        net = NodeNetwork(Store(cfg.db_path), node_id=cfg.node_id, subnet=cfg.subnet,
                          bridge=cfg.bridge, ifb=cfg.ifb)
        net.teardown()
    for n in engine.networks.list(names=[cfg.network]):
        n.remove()
    accounts = HostAccounts()
    for name in accounts.ours(cfg.slivers_dir):
        accounts.remove(name, cfg.slivers_dir / name)
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)


@pytest.fixture
def nm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[NMHandle]:
    tag = secrets.token_hex(3)
    TEST_STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_STATE, 0o755)
    cfg = node_cfg.with_(node_id=f"test-{tag}", state_dir=TEST_STATE / tag,
                         run_dir=TEST_RUN / tag, network=f"slicectl-t{tag}",
                         subnet=free_subnet(engine), bridge=f"slc{tag}", ifb=f"slcifb{tag}")
    ensure_network(engine, cfg.network, cfg.subnet, cfg.bridge)
    handle = NMHandle(cfg=cfg, tag=tag, log_path=TEST_STATE / f"nm-{tag}.log")
    handle.start()
    try:
        yield handle
    finally:
        try:
            handle.stop()
        finally:
            cleanup_node(cfg, engine)
            handle.log_path.unlink(missing_ok=True)


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    """A fresh ed25519 key pair; returns the private key's path (``.pub`` beside it)."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slicectl-test",
                    "-f", str(key)], check=True)
    return key


def sliver_exec(engine: docker.DockerClient, container: str, cmd: list[str] | str,
                user: str = "root") -> tuple[int, str]:
    """Run ``cmd`` in a sliver through the engine; return (exit status, output)."""
    c = engine.containers.get(container)
    res = c.exec_run(cmd, user=user, demux=False)
    return res.exit_code, (res.output or b"").decode(errors="replace")
