"""Privileged operations by ACL (PlanetLab's vsys): the decisions, as pure functions.

A sliver asks the node's vsys daemon to run an operation, a host script, by name. What
it asks is checked here field by field (:func:`vsys_request`); whether the slice may
(:func:`refusal`); which address a TUN device gets (:func:`tun_address`); which rules make
what leaves an overlay look like the sliver's own traffic (:func:`tunnel_rules`).

The wire, both ways one SOCK_SEQPACKET message per frame, a kind byte first:

==========  ==============  ==========================================================
direction   kind            payload
==========  ==============  ==========================================================
to host     (first)         JSON ``{"op": NAME, "args": [TEXT, ...]}``
to host     ``I``           bytes for the script's stdin; empty: end of stdin
to sliver   ``O``           bytes the script wrote to its stdout
to sliver   ``F``           file descriptors (SCM_RIGHTS) the script passed, and its note
to sliver   ``X``           JSON ``{"status": N, "error": LINE, "stderr": TAIL}``: the end
==========  ==============  ==========================================================
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

from slicectl.core.errors import ValidationError
from slicectl.core.requests import field_refusal
from slicectl.core.rspec import VSYS_NAME, VSYS_NAME_MAX, RSpec

MAX_ARGS = 32
MAX_ARG_CHARS = 1024
#: Exit statuses the daemon gives for what did not run as the script's own status
#: (those of ``timeout(1)`` and the shell).
STATUS_TIMEOUT = 124
STATUS_REFUSED = 126
STATUS_FAILED = 125
#: Bytes of a script's stderr kept to report (its tail).
STDERR_TAIL = 2048
#: The comment on every rule fd_tuntap adds in a sliver's network namespace.
RULE_COMMENT = "slicectl-vsys"
#: Where a slice's default overlay range (``vsys_vnet``) lies: one /24 of the shared
#: address space (RFC 6598, 100.64.0.0/10) chosen from the slice name, so the slice's
#: slivers on every node agree on it without asking anyone. Two slices may draw the
#: same /24; each range lives only inside its own slivers' network namespaces.
VNET_POOL = ipaddress.IPv4Network("100.64.0.0/10")
VNET_PREFIX = 24


def default_vnet(slice_name: str) -> str:
    """The /24 of :data:`VNET_POOL` a slice's overlay uses by default: the same on every
    node (a SHA-256 of the name, not Python's salted ``hash``)."""
    count = 1 << (VNET_PREFIX - VNET_POOL.prefixlen)
    index = int.from_bytes(hashlib.sha256(slice_name.encode()).digest()[:4], "big") % count
    base = int(VNET_POOL.network_address) + (index << (32 - VNET_PREFIX))
    return str(ipaddress.IPv4Network((base, VNET_PREFIX)))


def slice_vnet(slice_name: str, spec: RSpec) -> str:
    """The overlay range of a slice's sliver: its rspec's, or the default."""
    return spec.vsys_vnet or default_vnet(slice_name)


@dataclass(frozen=True)
class VsysRequest:
    """A checked first message: the operation and its arguments."""

    op: str
    args: tuple[str, ...] = ()


def vsys_request(req: dict[str, object]) -> VsysRequest:
    """Check a decoded request.

    Raises:
        ValidationError: naming the first bad or unknown field.
    """
    for key in req:
        if key not in ("op", "args"):
            raise ValidationError(str(key)[:40], "one of the fields args, op",
                                  "an unknown field", as_text=True)
    op = req.get("op")
    if not isinstance(op, str) or not VSYS_NAME.match(op) or len(op) > VSYS_NAME_MAX:
        raise field_refusal("op", f"an operation name matching {VSYS_NAME.pattern}", op)
    args = req.get("args", [])
    expected = (f"a list of at most {MAX_ARGS} texts of at most {MAX_ARG_CHARS} characters, "
                "without NUL")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise field_refusal("args", expected, args)
    for a in args:
        if not isinstance(a, str) or len(a) > MAX_ARG_CHARS or "\0" in a:
            raise field_refusal("args", expected, a)
    return VsysRequest(op, tuple(args))


def refusal(slice_name: str, op: str, allowed: Collection[str],
            available: Collection[str]) -> str | None:
    """Why slice ``slice_name`` may not run ``op`` (one line), or None if it may.

    Args:
        allowed: the operations the slice's effective rspec names (its ACL).
        available: the operations this node has a script for.
    """
    if op not in allowed:
        return (f"slice {slice_name}: expected {op} in its vsys ACL, found "
                f"{', '.join(sorted(allowed)) or 'none'}")
    if op not in available:
        return f"operation {op}: expected a script on this node, found none"
    return None


def exit_status(returncode: int) -> int:
    """A script's exit status as a shell shows it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def tail(data: bytes, limit: int = STDERR_TAIL) -> str:
    """The last ``limit`` bytes of ``data`` as text, saying how much came before."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    return f"[{len(data) - limit} bytes cut] " + data[-limit:].decode("utf-8", "replace")


def tun_address(text: str, vnet: str) -> ipaddress.IPv4Interface:
    """The address (with prefix) a TUN device gets: ``ADDRESS`` or ``ADDRESS/PREFIX``
    inside the slice's overlay range ``vnet``; without a prefix, the range's.

    Raises:
        ValidationError: not an address, outside ``vnet``, its network or broadcast
            address, or a prefix wider than ``vnet``.
    """
    net = ipaddress.IPv4Network(vnet)
    expected = f"an address like {net[1]} or {net[1]}/{net.prefixlen} inside {net}"
    try:
        iface = ipaddress.IPv4Interface(text if "/" in text else f"{text}/{net.prefixlen}")
    except ValueError:
        raise ValidationError("address", expected, text[:40]) from None
    if iface.ip not in net or not iface.network.subnet_of(net):
        raise ValidationError("address", expected, text[:40])
    if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address,
                                                     iface.network.broadcast_address):
        raise ValidationError("address", f"a host address of {iface.network}", text[:40])
    return iface


def tunnel_rules(vnet: str, uplink: str = "eth0") -> list[tuple[str, list[str]]]:
    """The iptables rules, as (table, rule) pairs, that fd_tuntap makes sure of in a
    sliver's network namespace: what the sliver writes into a TUN device and the kernel
    forwards must come from the slice's overlay range (else dropped), and leaves through
    ``uplink`` masqueraded to the sliver's own address, so the node's shaping, NAT,
    auditing and spoofing checks see the sliver's traffic as any other."""
    mark = ["-m", "comment", "--comment", RULE_COMMENT]
    return [
        ("filter", ["FORWARD", "-i", "tun+", "!", "-s", vnet, *mark, "-j", "DROP"]),
        ("filter", ["FORWARD", "-i", "tun+", "!", "-o", uplink, *mark, "-j", "DROP"]),
        ("nat", ["POSTROUTING", "-s", vnet, "-o", uplink, *mark, "-j", "MASQUERADE"]),
    ]
