"""Drive a running testbed as its users would: PLC's users through XML-RPC (a site with
a PI and a user, each with an ssh key; slices the PI makes) and a terminal user's
`ssh slice@node`; each node's own view by `slicectl ... -o json` in its container.

The testbed tests and bench/testbed_bench.py are built on it; so can any script that
drives a testbed it did not start (``Testbed.of(saved_layout(PROJECT))``)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicectl.core.errors import StateError
from slicectl.testbed import lifecycle
from slicectl.testbed.engine import ENGINE_URL
from slicectl.testbed.layout import Layout


@dataclass
class Node:
    """One node of a running testbed."""

    name: str
    hostname: str
    address: str
    node_id: int
    container: str


@dataclass
class Testbed:
    """A running testbed: PLC as root, and each node's container."""

    __test__ = False  # not a pytest class, whatever its name

    lay: Layout
    nodes: list[Node]

    @classmethod
    def of(cls, lay: Layout) -> Testbed:
        """The testbed ``lay`` as it runs (its nodes from ``status``)."""
        st = lifecycle.status(lay)
        return cls(lay, [Node(n["name"], n["hostname"], n["address"], int(n["node_id"] or 0),
                              n["container"]) for n in st["nodes"]])

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return lifecycle.root_proxy(self.lay)

    def root_auth(self) -> dict[str, Any]:
        return lifecycle.root_auth(self.lay)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", ENGINE_URL, *args], capture_output=True,
                              text=True, check=check, timeout=300)

    def on_node(self, node: Node, *argv: str, check: bool = False
                ) -> subprocess.CompletedProcess[str]:
        """A command in the node's container (the node's own root)."""
        return self.docker("exec", node.container, *argv, check=check)

    def slicectl(self, node: Node, *args: str) -> Any:
        """``slicectl ARGS -o json`` on the node, parsed.

        Raises:
            StateError: it failed (its error line).
        """
        res = self.on_node(node, f"{sys.prefix}/bin/slicectl", *args, "-o", "json")
        if res.returncode:
            raise StateError(f"{node.name}: slicectl {' '.join(args)}: {res.stderr.strip()}")
        return json.loads(res.stdout)

    def slivers(self, node: Node) -> set[str]:
        return {s["name"] for s in self.slicectl(node, "list")}



#: A UDP encapsulator a slice runs in its sliver (``python3 -c ENCAPSULATOR MINE PEER
#: PORT``): a TUN device from vsys's fd_tuntap at overlay address MINE, each packet read
#: from it sent in a UDP datagram to PEER:PORT, each datagram received on PORT written back
#: into it. It prints ``ready PID DEVICE ADDRESS NOTE`` once the device is up.
ENCAPSULATOR = r"""
import os, select, socket, sys, vsys
mine, peer, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = vsys.call("fd_tuntap", [mine])
if r.status != 0 or not r.fds:
    print("fd_tuntap failed", r.status, r.error, r.stderr, flush=True)
    sys.exit(1)
tun = r.fds[0]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", port))
print("ready", os.getpid(), r.notes[0]["device"], r.notes[0]["address"],
      r.stdout.decode().strip(), flush=True)
while True:
    ready, _, _ = select.select([tun, u], [], [])
    if tun in ready:
        u.sendto(os.read(tun, 65535), (peer, port))
    if u in ready:
        os.write(tun, u.recv(65535))
"""


def until(cond: Callable[[], bool], timeout: float, what: str, pause: float = 0.1) -> float:
    """Seconds until ``cond`` held.

    Raises:
        StateError: not within ``timeout`` seconds, naming ``what``.
    """
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started >= timeout:
            raise StateError(f"{what}: not within {timeout} s")
        time.sleep(pause)
    return time.monotonic() - started


def keypair(path: Path, comment: str) -> str:
    """A new ed25519 key at ``path``; its public line."""
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                        str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def ssh(key: Path, user: str, node: Node, command: str, timeout: float = 30
        ) -> subprocess.CompletedProcess[str]:
    """``ssh -i KEY user@node command`` from the machine running the testbed."""
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
         f"{user}@{node.address}", command],
        capture_output=True, text=True, timeout=timeout, check=False)


def tcpdump_read(pcap_b64: str, workdir: Path) -> list[str]:
    """The lines ``tcpdump -nr`` prints for a capture given as base64 (how a capture made
    in a sliver comes back through a shell); fails the caller on tcpdump's error."""
    cap = workdir / "capture.pcap"
    cap.write_bytes(base64.b64decode(pcap_b64))
    shown = subprocess.run(["tcpdump", "-nr", str(cap)], capture_output=True, text=True,
                           timeout=30, check=False)
    if shown.returncode != 0:
        raise StateError(f"tcpdump -nr {cap}: {shown.stderr.strip()[:300]}")
    return shown.stdout.splitlines()


def ssh_ok(key: Path, user: str, node: Node) -> bool:
    try:
        return ssh(key, user, node, "true", timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Person:
    email: str
    password: str
    person_id: int
    key: Path
    pub: str


class Site:
    """A site of the testbed's PLC with a PI and a user, acting through XML-RPC."""

    def __init__(self, tb: Testbed, login_base: str, keys: Path) -> None:
        self.tb = tb
        self.login_base = login_base
        root: Any = tb.proxy()
        auth = tb.root_auth()
        found: Any = root.GetSites(auth, {"login_base": login_base}, ["site_id"])
        self.site_id = int(found[0]["site_id"]) if found else int(root.AddSite(auth, {
            "name": f"Site {login_base}", "abbreviated_name": login_base,
            "login_base": login_base, "max_slices": 50, "enabled": True}))
        self.pi = self.person(f"pi@{login_base}.example.org", "pi", keys)
        self.user = self.person(f"user@{login_base}.example.org", "user", keys)

    def person(self, email: str, role: str, keys: Path) -> Person:
        root: Any = self.tb.proxy()
        auth = self.tb.root_auth()
        pw = f"{role}-{self.login_base}-pw"
        found: Any = root.GetPersons(auth, {"email": email}, ["person_id"])
        if found:
            pid = int(found[0]["person_id"])
        else:
            pid = int(root.AddPerson(auth, {"email": email, "first_name": role,
                                            "last_name": self.login_base, "password": pw}))
            root.AddPersonToSite(auth, pid, self.site_id)
            root.AddRoleToPerson(auth, role, pid)
            root.UpdatePerson(auth, pid, {"enabled": True})
        key = keys / f"{role}_{self.login_base}"
        pub = keypair(key, email)
        person = Person(email, pw, pid, key, pub)
        if not self.call(person, "GetKeys", {"person_id": pid}):
            self.call(person, "AddPersonKey", pid, {"key_type": "ssh", "key": pub})
        return person

    def call(self, who: Person, method: str, *args: Any) -> Any:
        auth = {"AuthMethod": "password", "Username": who.email, "AuthString": who.password}
        return getattr(self.tb.proxy(), method)(auth, *args)

    def slice(self, short: str, members: list[Person] | None = None,
              tags: dict[str, str] | None = None, nodes: list[Node] | None = None) -> str:
        """A slice the PI makes (members added, tags set, then the nodes added)."""
        name = f"{self.login_base}_{short}"
        self.call(self.pi, "AddSlice", {"name": name, "url": f"https://{self.login_base}.example.org/",
                                        "description": f"testbed slice {short}"})
        for m in members if members is not None else [self.pi]:
            self.call(self.pi, "AddPersonToSlice", m.person_id, name)
        root: Any = self.tb.proxy()
        auth = self.tb.root_auth()
        for tag, value in (tags or {}).items():
            root.AddSliceTag(auth, name, tag, value)
        self.call(self.pi, "AddSliceToNodes", name,
                  [n.hostname for n in (nodes if nodes is not None else self.tb.nodes)])
        return name
