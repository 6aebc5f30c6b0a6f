"""The operations slicectl ships for vsys (their scripts in ``vsys_scripts/`` call these).

Each runs as host root in a process of its own, started by the vsys daemon
(:mod:`slicectl.node.vsys`), which puts the caller in its environment:
``SLICECTL_VSYS_SLICE``, ``SLICECTL_VSYS_PID`` (the sliver's init), ``SLICECTL_VSYS_NETNS_FD``
(its network namespace, open), ``SLICECTL_VSYS_VNET`` (its overlay range),
``SLICECTL_VSYS_FD`` (a unix socket to pass descriptors back on) and ``SLICECTL_NM_SOCK``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from slicectl.core.errors import SlicectlError
from slicectl.core.vsys import tun_address, tunnel_rules
from slicectl.ipc.rpc import Client
from slicectl.node.ring import enter_netns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _fail(prog: str, message: str, status: int = 2) -> int:
    sys.stderr.write(f"{prog}: {message}\n")
    return status


def open_tun(pattern: str = "tun%d") -> tuple[int, str]:
    """A new TUN device (no packet information) in this thread's network namespace:
    its fd and the name the kernel gave it (the first free of ``pattern``)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", pattern.encode(), IFF_TUN | IFF_NO_PI)
        out = fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd, out[:16].rstrip(b"\0").decode()


def ensure_rules(vnet: str) -> None:
    """Forwarding on and :func:`tunnel_rules` present (each once) in this process's
    network namespace.

    Raises:
        SlicectlError: iptables refused a rule (its message names it).
    """
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1\n")
    for table, rule in tunnel_rules(vnet):
        check = subprocess.run(["iptables", "-w", "-t", table, "-C", *rule],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.returncode == 0:
            continue
        add = subprocess.run(["iptables", "-w", "-t", table, "-A", *rule],
                             capture_output=True, text=True, timeout=30, check=False)
        if add.returncode != 0:
            raise SlicectlError(f"iptables -t {table} -A {' '.join(rule)}: "
                                f"{add.stderr.strip()[:200]}")


def fd_tuntap(argv: list[str], env: Mapping[str, str] = os.environ) -> int:
    prog = "fd_tuntap"
    if len(argv) != 1:
        return _fail(prog, "usage: fd_tuntap ADDRESS[/PREFIX] (inside the slice's range "
                           f"{env.get('SLICECTL_VSYS_VNET', '?')})")
    try:
        iface = tun_address(argv[0], env["SLICECTL_VSYS_VNET"])
    except SlicectlError as e:
        return _fail(prog, str(e))
    from pyroute2 import IPRoute

    enter_netns(int(env["SLICECTL_VSYS_NETNS_FD"]), f"slice {env['SLICECTL_VSYS_SLICE']}'s "
                                                     "network")
    try:
        ensure_rules(env["SLICECTL_VSYS_VNET"])
    except (SlicectlError, OSError) as e:
        return _fail(prog, str(e), 1)
    fd, name = open_tun()
    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=name)[0]
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=index, state="up")
        with socket.socket(fileno=int(env["SLICECTL_VSYS_FD"])) as back:
            note = json.dumps({"device": name, "address": str(iface)}).encode()
            socket.send_fds(back, [note], [fd])
    except Exception as e:  # the device goes with its fd
        return _fail(prog, f"{name}: {e}", 1)
    finally:
        os.close(fd)
    print(f"{name} {iface}")
    return 0


def slice_reboot(argv: list[str], env: Mapping[str, str] = os.environ) -> int:
    prog = "slice_reboot"
    if argv:
        return _fail(prog, "usage: slice_reboot (no arguments)")
    name = env["SLICECTL_VSYS_SLICE"]
    back = socket.socket(fileno=int(env["SLICECTL_VSYS_FD"]))
    print(f"slice_reboot: restarting the sliver of {name}", flush=True)
    if os.fork() != 0:
        back.close()
        return 0
    # The helper: out of the script's session and output, it waits for the daemon to
    # close the call (the caller has its answer then), and restarts the sliver.
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        back.settimeout(120)
        with contextlib.suppress(OSError):
            back.recv(1)
        client = Client(Path(env["SLICECTL_NM_SOCK"]), timeout=300)
        client.call("stop", name, "vsys slice_reboot")
        client.call("start", name)
    finally:
        os._exit(0)
