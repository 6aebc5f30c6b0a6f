"""A testbed's layout, as pure data: its nodes' names, hostnames and addresses, the
compose project's environment and the compose file of its nodes.

``compose/testbed.yml`` holds what every testbed has (its network, PLC, the database,
the node template); :func:`nodes_compose` adds N services made from that template, each
with its own hostname, address and enrolment directory. Nothing here touches the machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slicectl.core.errors import UsageError

#: Where testbeds keep their state on the machine running them, one folder per project.
TESTBEDS_DIR = Path("/var/lib/slicectl/testbeds")
DEFAULT_PROJECT = "slicectl-testbed"
DEFAULT_SUBNET = "10.199.0.0/24"
DEFAULT_DOMAIN = "testbed.slicectl.test"
MAX_NODES = 16
DBS = ("sqlite", "postgres")
#: A testbed's PLC site, which holds its nodes.
SITE = "tb"
#: The first node's host number in the subnet (PLC is .2, its database .3).
FIRST_NODE = 11
#: Where a node finds the block device of its engine's btrfs.
ENGINE_DEVICE = "/dev/slicectl-engine"
TUN_DEVICE = "/dev/net/tun"
_PROJECT = re.compile(r"^slicectl-[a-z0-9][a-z0-9-]{0,38}$")


@dataclass(frozen=True)
class NodeSpec:
    """One testbed node."""

    name: str
    hostname: str
    address: str


@dataclass(frozen=True)
class Layout:
    """Everything a testbed's compose project needs, given its size and names."""

    project: str
    nodes: tuple[NodeSpec, ...]
    subnet: str
    domain: str
    db: str
    state: Path

    @property
    def bridge(self) -> str:
        """The Linux bridge of the testbed's network (at most 15 characters)."""
        return "tb-" + hashlib.sha256(self.project.encode()).hexdigest()[:10]

    @property
    def plc_address(self) -> str:
        return _host(self.subnet, 2)

    @property
    def db_address(self) -> str:
        return _host(self.subnet, 3)

    @property
    def plc_hostname(self) -> str:
        return f"plc.{self.domain}"

    @property
    def plc_url(self) -> str:
        return f"https://{self.plc_address}/PLCAPI/"

    @property
    def plc_dir(self) -> Path:
        """PLC's state (certificate, SQLite, its own root file), mounted into its container."""
        return self.state / "plc"

    @property
    def cafile(self) -> Path:
        return self.plc_dir / "plc.crt"

    @property
    def root_file(self) -> Path:
        """Root's credentials for the machine running the testbed (PLC's URL as seen
        from here), in the form of ``/etc/slicectl/plc-root.json``."""
        return self.state / "plc-root.json"

    @property
    def nodes_file(self) -> Path:
        return self.state / "nodes.yml"

    @property
    def status_file(self) -> Path:
        return self.state / "testbed.json"

    def disk_file(self, name: str) -> Path:
        """The sparse file behind a node's engine btrfs (a loop device of this machine)."""
        return self.state / "disks" / f"{name}.btrfs"

    def node_dir(self, name: str) -> Path:
        """What the node gets from its enrolment (key file, PLC's certificate)."""
        return self.state / "nodes" / name

    def container(self, service: str) -> str:
        """The container docker-compose v1 names for ``service``."""
        return f"{self.project}_{service}_1"

    def services(self) -> list[str]:
        """The compose services to start, in order."""
        return [*(["db"] if self.db == "postgres" else []), "plc", *(n.name for n in self.nodes)]


def _host(subnet: str, n: int) -> str:
    return str(ipaddress.ip_network(subnet)[n])


def layout(nodes: int, project: str = DEFAULT_PROJECT, db: str = "sqlite",
           subnet: str = DEFAULT_SUBNET, domain: str = DEFAULT_DOMAIN,
           base: Path = TESTBEDS_DIR) -> Layout:
    """The layout of a testbed of ``nodes`` nodes.

    Raises:
        UsageError: a value out of range, naming it.
    """
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes: expected 1 to {MAX_NODES}, found {nodes}")
    if db not in DBS:
        raise UsageError(f"--db: expected one of {', '.join(DBS)}, found {db!r}")
    if not _PROJECT.match(project):
        raise UsageError("--project: expected slicectl-<lower-case letters, digits, dashes>, "
                         f"found {project!r}")
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as e:
        raise UsageError(f"--subnet: expected an IPv4 network such as {DEFAULT_SUBNET}, "
                         f"found {subnet!r}") from e
    if net.version != 4 or net.num_addresses < FIRST_NODE + nodes + 2:
        raise UsageError(f"--subnet: expected an IPv4 network with room for {nodes} nodes, "
                         f"found {subnet!r}")
    specs = tuple(NodeSpec(f"node{i}", f"node{i}.{domain}", _host(subnet, FIRST_NODE + i - 1))
                  for i in range(1, nodes + 1))
    return Layout(project, specs, str(net), domain, db, base / project)


def plc_arguments(lay: Layout, extra: str = "") -> str:
    """What ``plc serve`` gets beyond the template's: its database, then ``extra``."""
    db = f"--db postgresql://plc@{lay.db_address}/plc" if lay.db == "postgres" else ""
    return " ".join(a for a in (db, extra) if a)


def compose_env(lay: Layout, node_image: str, python_home: Path, venv: Path, src: Path,
                images_tar: Path, plc_args: str = "") -> dict[str, str]:
    """The variables ``compose/testbed.yml`` substitutes."""
    return {
        "TESTBED_IMAGE": node_image,
        "TESTBED_PYTHON_HOME": str(python_home),
        "TESTBED_VENV": str(venv),
        "TESTBED_SRC": str(src),
        "TESTBED_IMAGES_TAR": str(images_tar),
        "TESTBED_SUBNET": lay.subnet,
        "TESTBED_PLC_ADDRESS": lay.plc_address,
        "TESTBED_DB_ADDRESS": lay.db_address,
        "TESTBED_PLC_HOSTNAME": lay.plc_hostname,
        "TESTBED_PLC_DIR": str(lay.plc_dir),
        "TESTBED_PLC_ARGS": plc_arguments(lay, plc_args),
        "TESTBED_PROJECT": lay.project,
        "TESTBED_BRIDGE": lay.bridge,
        # docker-compose 1.29 speaks API 1.25 by default: too old for systempaths=unconfined
        "COMPOSE_API_VERSION": "1.41",
    }


#: Linux capability names by number (``capability.h``), for cap_add: those Debian's
#: Docker 20.10 knows (it refuses PERFMON, BPF and CHECKPOINT_RESTORE by name).
CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
        "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
        "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
        "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
        "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
        "BLOCK_SUSPEND", "AUDIT_READ")


def caps_of(status_text: str) -> list[str]:
    """The capability names in the ``CapBnd`` mask of a ``/proc/<pid>/status`` text."""
    line = next((ln for ln in status_text.splitlines() if ln.startswith("CapBnd:")), "")
    mask = int(line.split()[1], 16) if line else 0
    return [name for i, name in enumerate(CAPS) if mask >> i & 1]


def nodes_compose(lay: Layout, template_file: Path, caps: list[str],
                  devices: dict[str, str]) -> str:
    """The compose file of ``lay``'s nodes: each extends the template service ``node``,
    with every capability in ``caps`` and its engine's block device from ``devices``
    (by node name)."""
    services: dict[str, Any] = {}
    for node in lay.nodes:
        services[node.name] = {
            "extends": {"file": str(template_file), "service": "node"},
            "hostname": node.hostname.split(".", 1)[0],
            "domainname": node.hostname.split(".", 1)[1],
            "environment": {
                "SLICECTL_HOSTNAME": node.hostname,
                "SLICECTL_NODE_ID": node.name,
                "SLICECTL_OPERATOR": f"testbed {lay.project} <root@{lay.plc_hostname}>",
                "SLICECTL_CGROUP_PARENT": f"/{lay.project}-{node.name}",
                "TESTBED_PLC_URL": lay.plc_url,
            },
            "volumes": [f"{lay.node_dir(node.name)}:/etc/slicectl/testbed:ro"],
            "cap_add": caps,
            # and the TUN device vsys's fd_tuntap opens for its slivers
            "devices": [f"{devices[node.name]}:{ENGINE_DEVICE}", f"{TUN_DEVICE}:{TUN_DEVICE}"],
            "networks": {"testbed": {"ipv4_address": node.address}},
            "depends_on": ["plc"],
            "labels": {"slicectl.testbed.node": node.name},
        }
    return yaml.safe_dump({"version": "2.4", "services": services}, sort_keys=False)
