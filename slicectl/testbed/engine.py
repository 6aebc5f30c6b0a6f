"""The engine testbeds run on: a dockerd of slicectl's own, beside the node's engine.

Not the node's engine: that one maps containers' users (``userns-remap``), so files in a
container it runs with the host's user namespace belong to the remapped root (sudo and
sshd in a testbed node then refuse their own files). This engine maps nothing, keeps
overlay2 storage under ``/var/lib/slicectl/testbed-engine`` (its images are the cache
for the next ``up``), makes no bridge of its own and writes no iptables rules: a
testbed's network is a bridge between its containers and this machine, and
:func:`allow_bridge` lets its traffic through the machine's FORWARD chain.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import docker.errors

from slicectl.core.errors import EngineError
from slicectl.node.dockerd import DOCKERD, Say, socket_answers, stop_pid, wait_for_engine
from slicectl.node.hostcmd import run

RUN_DIR = Path("/run/slicectl/testbed")
SOCK = RUN_DIR / "docker.sock"
ENGINE_URL = f"unix://{SOCK}"
DATA_ROOT = Path("/var/lib/slicectl/testbed-engine")
LOG = Path("/var/log/slicectl/testbed-dockerd.log")
PIDFILE = RUN_DIR / "dockerd.pid"
RULE_COMMENT = "slicectl-testbed"


def answers() -> bool:
    return socket_answers(SOCK)


def start_engine(say: Say, timeout_s: float = 60) -> None:
    """Start the testbed engine unless it answers."""
    if answers():
        return
    if not Path(DOCKERD).exists():
        raise EngineError(f"{DOCKERD}: not installed; run scripts/install-host.sh")
    for d in (RUN_DIR, DATA_ROOT, LOG.parent):
        d.mkdir(parents=True, exist_ok=True)
    argv = [DOCKERD, "--host", ENGINE_URL, "--data-root", str(DATA_ROOT),
            "--exec-root", str(RUN_DIR / "engine"), "--pidfile", str(PIDFILE),
            "--storage-driver", "overlay2", "--bridge", "none", "--iptables=false",
            "--ip-masq=false", "--log-driver", "json-file", "--log-opt", "max-size=1m"]
    say(f"starting the testbed engine {ENGINE_URL} (log: {LOG})")
    with open(LOG, "ab") as logf:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                         start_new_session=True, close_fds=True)
    wait_for_engine(SOCK, LOG, timeout_s, "testbed engine")


def stop_engine_if_idle(say: Say, timeout_s: float = 60) -> bool:
    """Stop the testbed engine when no container is left on it (its images stay)."""
    if not answers():
        return False
    client = docker.DockerClient(base_url=ENGINE_URL, timeout=30)
    try:
        if client.containers.list(all=True):
            return False
    finally:
        client.close()
    pid = int(PIDFILE.read_text().split()[0])
    if not stop_pid(pid, timeout_s):
        say(f"the testbed engine (pid {pid}) did not stop within {timeout_s:.0f}s of SIGTERM; "
            "it is left running")
        return False
    say("stopped the testbed engine (its images stay for the next up)")
    return True


def forward_rule(bridge: str, project: str) -> list[str]:
    """The FORWARD rule that lets a testbed's containers reach each other (pure)."""
    return ["FORWARD", "-i", bridge, "-o", bridge, "-m", "comment", "--comment",
            f"{RULE_COMMENT} {project}", "-j", "ACCEPT"]


def allow_bridge(bridge: str, project: str) -> None:
    """The machine's FORWARD policy drops bridged traffic (br_netfilter): let the
    testbed's through (idempotent)."""
    rule = forward_rule(bridge, project)
    if run(["iptables", "-C", *rule], what="iptables -C", check=False).returncode != 0:
        run(["iptables", "-I", *rule], what=f"iptables rule for {bridge}")


def disallow_bridge(bridge: str, project: str) -> None:
    rule = forward_rule(bridge, project)
    while run(["iptables", "-C", *rule], what="iptables -C", check=False).returncode == 0:
        run(["iptables", "-D", *rule], what=f"iptables rule for {bridge}")
