"""Docker-tier fixtures: the node's real engine, and a private node manager per test.

Each ``nm`` fixture runs a real node manager daemon (a subprocess, so tests can kill it)
with its own node id, state directory, socket, engine network, IFB and iptables chains,
on the node's engine and reference image (see :mod:`slicectl.testbed.privnode`). Teardown
removes exactly what that node id created.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.core.netplan import node_gateway
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import NM, daemon_state, prepare, start_nm, stop_nm
from slicectl.node.dockerd import Say
from slicectl.testbed.privnode import free_port as free_port  # re-exported for the tests
from slicectl.testbed.privnode import log_path, private_node


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
    # Pin the image this checkout built: another checkout's `prepare` may move `latest`.
    return cfg.with_(image=prepare(cfg, os.environ, Say(quiet=True)))


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
        """The node manager's pid as its supervisor reports it."""
        return daemon_state(self.cfg, NM).pid

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
        """This node's configuration, and this checkout's code first on the path."""
        from slicectl.node.daemons import config_env, source_root

        return {**os.environ, **config_env(self.cfg), "PYTHONPATH": str(source_root())}

    def cli(self, *argv: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real ``slicectl`` CLI against this node manager."""
        exe = Path(sys.executable).parent / "slicectl"
        return subprocess.run([str(exe), *argv], env=self.env(), capture_output=True, text=True,
                              input=input_text, timeout=300, check=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def nm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[NMHandle]:
    with private_node(node_cfg, engine) as cfg:
        yield NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))


@pytest.fixture
def dnm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[NMHandle]:
    """A private node manager with its admin sniffer and raw-socket shim running."""
    with private_node(node_cfg, engine, daemons=True) as cfg:
        yield NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))


def gateway(nm: NMHandle) -> str:
    return node_gateway(nm.cfg.subnet)


@dataclass
class Outside:
    """A namespace acting as a host on the Internet, routed through the node."""

    ns: str
    address: str
    node_address: str

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def veth_namespace(kind: str, prefix: str) -> Iterator[Outside]:
    """A namespace behind a veth from the host: the host holds ``<prefix>.1/30``, the
    namespace ``<prefix>.2/30`` (``prefix``: three octets) and routes through the host.
    Removed on exit."""
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"slicectl-{kind}-{tag}", f"slc{kind[0]}h{tag}", f"slc{kind[0]}n{tag}"
    node_addr, out_addr = f"{prefix}.1", f"{prefix}.2"
    cmds = [
        f"ip netns add {ns}",
        f"ip link add {host_if} type veth peer name {ns_if}",
        f"ip link set {ns_if} netns {ns}",
        f"ip addr add {node_addr}/30 dev {host_if}",
        f"ip link set {host_if} up",
        f"ip -n {ns} addr add {out_addr}/30 dev {ns_if}",
        f"ip -n {ns} link set {ns_if} up",
        f"ip -n {ns} link set lo up",
        f"ip -n {ns} route add default via {node_addr}",
    ]
    try:
        for c in cmds:
            subprocess.run(c.split(), check=True, capture_output=True)
        yield Outside(ns, out_addr, node_addr)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def outside() -> Iterator[Outside]:
    with veth_namespace("out", f"198.18.{secrets.randbelow(256)}") as o:
        yield o


def make_sliver(nm: NMHandle, name: str, **rspec: Any) -> dict[str, Any]:
    return dict(nm.call("bind", nm.slice(name), nm.call("acquire", rspec)))




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


def wait_for(cond: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
    """Poll ``cond`` every 50 ms until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
