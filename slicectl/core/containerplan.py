"""Container plans: the docker-py arguments that realise a sliver, as plain data.

Nothing here talks to Docker. :func:`container_plan` turns a slice, its effective rspec
and the node's facts into the keyword arguments for ``client.containers.create``;
:func:`resource_update` into those for ``container.update``. Tests check them as tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core.labels import (
    LABEL_KIND,
    LABEL_NODE,
    LABEL_SLICE,
    LABEL_XID,
    SLIVER_NM_DIR,
    SLIVER_PREFIX,
    SLIVER_SHIM_DIR,
    SLIVER_SNIFFER_DIR,
    SLIVER_VSYS_DIR,
)
from slicectl.core.netplan import node_gateway, sliver_address
from slicectl.core.rspec import RSpec

#: cgroup v1 cpu.shares per rspec share: 1000 shares fit under the kernel's 262144 cap.
CPU_SHARES_PER_SHARE = 256
CFS_PERIOD_US = 100_000
CFS_MIN_QUOTA_US = 1_000
CFS_MAX_PERIOD_US = 1_000_000
MIB = 1 << 20

#: What a sliver's root keeps. Everything else, notably SYS_ADMIN, NET_ADMIN, NET_RAW,
#: SYS_MODULE, SYS_RAWIO, SYS_BOOT, SYS_TIME, SYS_PTRACE, MKNOD and SETFCAP, is dropped.
#: These suffice for dpkg/apt, sudo and daemons on low ports inside the sliver.
SLIVER_CAPS: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "NET_BIND_SERVICE", "SYS_CHROOT", "AUDIT_WRITE",
)

SLIVER_ETC = "/etc/slicectl"
#: User and group ids a sliver's namespace maps (the engine's remap range).
SLIVER_IDS = 65536
#: The slice's account inside its sliver comes from files the node manager writes under
#: ``<etc>/accounts`` (the image's NSS reads them through libnss-extrausers), so a sliver's
#: first start writes no account into its own root: no per-sliver copy of /etc/passwd and
#: its neighbours, no home skeleton.
SLIVER_ACCOUNTS_DIR = "accounts"
#: Every slice account's primary group in the reference image (images/reference/Dockerfile
#: gives ``%slices`` sudo); in the range Debian leaves to be created on demand.
SLICES_GID = 64000


@dataclass(frozen=True)
class NodeFacts:
    """What the plan needs to know about the node, gathered once by the applier."""

    node_id: str
    ncpus: int
    image: str
    image_bytes: int
    network: str
    cgroup_parent: str
    hostname: str
    nm_sock_dir: Path
    subnet: str = "172.30.0.0/16"
    #: Full btrfs qgroups charge a snapshot for the image it shares; simple quotas do not.
    quota_counts_image: bool = False
    #: The raw-socket shim's and the admin sniffer's socket directories (None: no such
    #: service on this node, nothing is mounted).
    shim_dir: Path | None = None
    sniffer_dir: Path | None = None
    #: The vsys daemon's socket directory (None: no vsys on this node).
    vsys_dir: Path | None = None


@dataclass(frozen=True)
class SliverIdentity:
    slice: str
    xid: int
    uid: int
    etc_dir: Path


def sliver_accounts(slice_name: str, uid: int) -> dict[str, str]:
    """The files, by name, that give a sliver its slice account: ``passwd`` (no password:
    logins come through the node, never with a password) and the slice's own group."""
    return {
        "passwd": f"{slice_name}:*:{uid}:{SLICES_GID}:slice {slice_name}:/home/{slice_name}:"
                  "/bin/bash\n",
        "group": f"{slice_name}:x:{uid}:\n",
    }


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def container_name(slice_name: str) -> str:
    return f"{SLIVER_PREFIX}{slice_name}"


def cfs_quota(cpu_share: int, ncpus: int) -> tuple[int, int]:
    """CFS (period, quota) in microseconds capping a sliver at share/1000 of the node.

    The kernel refuses quotas under 1 ms, so small shares get a longer period (up to 1 s).
    """
    period = CFS_PERIOD_US
    quota = period * cpu_share * ncpus // 1000
    if quota < CFS_MIN_QUOTA_US:
        period = min(CFS_MAX_PERIOD_US, -(-CFS_MIN_QUOTA_US * 1000 // (cpu_share * ncpus)))
        quota = max(CFS_MIN_QUOTA_US, period * cpu_share * ncpus // 1000)
    return period, quota


def disk_quota_bytes(rspec: RSpec, node: NodeFacts) -> int:
    """The btrfs quota of a sliver's root fs: ``disk_mb``, plus the image where the
    filesystem's quota mode charges the sliver for it (full qgroups count referenced
    bytes; simple quotas only what the sliver writes)."""
    return rspec.disk_mb * MIB + (node.image_bytes if node.quota_counts_image else 0)


def resource_update(rspec: RSpec, ncpus: int) -> dict[str, Any]:
    """The resource arguments, also valid for ``container.update`` (changeable live)."""
    period, quota = cfs_quota(rspec.cpu_share, ncpus) if rspec.cpu_capped else (0, 0)
    return {
        "cpu_shares": rspec.cpu_share * CPU_SHARES_PER_SHARE,
        "cpu_period": period,
        "cpu_quota": quota if rspec.cpu_capped else -1,
        "mem_limit": rspec.mem_mb * MIB,
        "memswap_limit": rspec.mem_mb * MIB,
        "pids_limit": rspec.nproc,
    }


def container_plan(ident: SliverIdentity, rspec: RSpec, node: NodeFacts) -> ContainerPlan:
    """The ``containers.create`` arguments for a sliver."""
    resources = resource_update(rspec, node.ncpus)
    if not rspec.cpu_capped:
        # At creation "no quota" is expressed by leaving both unset.
        resources.pop("cpu_period")
        resources.pop("cpu_quota")
    mounts = [
        {"Type": "bind", "Source": str(ident.etc_dir), "Target": SLIVER_ETC, "ReadOnly": True},
    ]
    if rspec.nm_privileged or rspec.admin:  # admin: the admin_* methods and reads only
        mounts.append(
            {"Type": "bind", "Source": str(node.nm_sock_dir), "Target": SLIVER_NM_DIR,
             "ReadOnly": True}
        )
    if rspec.raw_sockets and node.shim_dir is not None:
        mounts.append({"Type": "bind", "Source": str(node.shim_dir), "Target": SLIVER_SHIM_DIR,
                       "ReadOnly": True})
    if rspec.admin_sniffer and node.sniffer_dir is not None:
        mounts.append({"Type": "bind", "Source": str(node.sniffer_dir),
                       "Target": SLIVER_SNIFFER_DIR, "ReadOnly": True})
    if rspec.vsys and node.vsys_dir is not None:
        mounts.append({"Type": "bind", "Source": str(node.vsys_dir), "Target": SLIVER_VSYS_DIR,
                       "ReadOnly": True})
    kwargs: dict[str, Any] = {
        "name": container_name(ident.slice),
        "hostname": node.hostname,
        "labels": {
            LABEL_SLICE: ident.slice,
            LABEL_NODE: node.node_id,
            LABEL_XID: str(ident.xid),
            LABEL_KIND: "sliver",
        },
        "environment": {
            "SLICECTL_SLICE": ident.slice,
            "SLICECTL_UID": str(ident.uid),
            "SLICECTL_XID": str(ident.xid),
        },
        "init": True,
        "detach": True,
        "cap_drop": ["ALL"],
        "cap_add": list(SLIVER_CAPS),
        "cgroup_parent": node.cgroup_parent,
        "network": node.network,
        "networking_config": {
            node.network: {"IPAMConfig": {"IPv4Address": sliver_address(node.subnet, ident.xid)}},
        },
        "mounts": mounts,
        # `node` is the node itself as slivers reach it: the bridge's gateway address.
        "extra_hosts": {"node": node_gateway(node.subnet)},
        "ulimits": [{"Name": "nofile", "Soft": rspec.nofile, "Hard": rspec.nofile}],
        # ICMP echo sockets for every user of the sliver (ping without NET_RAW); the
        # engine sets this only without user-namespace remapping, so say it here, in the
        # sliver's own (remapped) range of group ids
        "sysctls": {"net.ipv4.ping_group_range": f"0 {SLIVER_IDS - 1}"},
        "storage_opt": {"size": str(disk_quota_bytes(rspec, node))},
        "restart_policy": {"Name": "unless-stopped"},
        "stop_signal": "SIGTERM",
        "log_config": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
        **resources,
    }
    return ContainerPlan(name=kwargs["name"], image=node.image, kwargs=kwargs)
