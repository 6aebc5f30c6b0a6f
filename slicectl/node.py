"""Node bring-up and control: the engine, the image, sshd, and the node manager process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from . import code_hash
from .config import NodeConfig
from .containers import engine_client
from .dockerd import Say, ensure_network, start_engine
from .errors import ConnectionFailed, EngineError
from .image import ensure_reference_image
from .rpc import Client
from .sshd import ensure_sshd, install_login

LOG_DIR = Path("/var/log/slicectl")


def config_env(cfg: NodeConfig) -> dict[str, str]:
    """The environment that makes a child process see ``cfg`` (inverse of from_env)."""
    return {
        "SLICECTL_NODE_ID": cfg.node_id,
        "SLICECTL_STATE_DIR": str(cfg.state_dir),
        "SLICECTL_RUN_DIR": str(cfg.run_dir),
        "SLICECTL_ENGINE_SOCK": str(cfg.engine_sock),
        "SLICECTL_NETWORK": cfg.network,
        "SLICECTL_SUBNET": cfg.subnet,
        "SLICECTL_BRIDGE": cfg.bridge,
        "SLICECTL_IFB": cfg.ifb,
        "SLICECTL_CGROUP_PARENT": cfg.cgroup_parent,
        "SLICECTL_IMAGE": cfg.image,
        "SLICECTL_SSH_PORT": str(cfg.ssh_port),
        "SLICECTL_HOSTNAME": cfg.hostname,
    }


def nm_client(cfg: NodeConfig, timeout: float = 300) -> Client:
    return Client(cfg.nm_sock, timeout=timeout)


def nm_pid(cfg: NodeConfig) -> int | None:
    """The running node manager's pid from its pidfile, checked against /proc."""
    try:
        pid = int(cfg.nm_pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"slicectl.daemon" in cmdline else None


def nm_answers(cfg: NodeConfig) -> bool:
    try:
        nm_client(cfg, timeout=10).call("status")
        return True
    except ConnectionFailed:
        return False


def start_nm(cfg: NodeConfig, say: Say, log_path: Path | None = None,
             timeout_s: float = 120) -> int:
    """Start the node manager daemon unless it answers; return its pid."""
    pid = nm_pid(cfg)
    if pid is not None and nm_answers(cfg):
        running = nm_client(cfg, timeout=10).call("status").get("code")
        if running == code_hash():
            return pid
        say(f"node manager (pid {pid}) runs other code ({running}); restarting it")
        stop_nm(cfg)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = log_path or LOG_DIR / f"nm-{cfg.node_id}.log"
    env = {**os.environ, **config_env(cfg)}
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "slicectl.daemon"], env=env,
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-2:]
            raise EngineError(f"node manager exited with status {proc.returncode}: "
                              f"{' | '.join(tail)} (log: {log_path})")
        if nm_pid(cfg) == proc.pid and nm_answers(cfg):
            say(f"node manager {cfg.node_id} running (pid {proc.pid}, socket {cfg.nm_sock})")
            return proc.pid
        time.sleep(0.1)
    raise EngineError(f"node manager: did not answer within {timeout_s:.0f}s (log: {log_path})")


def stop_nm(cfg: NodeConfig, timeout_s: float = 15) -> bool:
    """Stop the node manager (SIGTERM, then SIGKILL). Slivers keep running."""
    pid = nm_pid(cfg)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or nm_pid(cfg) is None:
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def prepare(cfg: NodeConfig, env: Mapping[str, str], say: Say) -> str:
    """Everything but the node manager: engine, network, image, login shell, sshd."""
    for d in (cfg.state_dir, cfg.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o755)
    start_engine(cfg, say)
    client = engine_client(cfg.engine_url)
    try:
        ensure_network(client, cfg.network, cfg.subnet, cfg.bridge)
        tag = ensure_reference_image(client, env, say)
    finally:
        client.close()
    install_login()
    ensure_sshd(cfg, say)
    return tag
