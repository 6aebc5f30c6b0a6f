"""Privileged operations for slivers (PlanetLab's vsys): the sliver's side.

A slice whose rspec names operations (``vsys``) finds the node's vsys daemon at
``/run/slicectl/vsys/vsys.sock``. The ``vsys`` command runs one, streaming stdin and
stdout, and exits with its status::

    vsys slice_reboot
    echo hello | vsys my_op arg1 arg2

From Python, :func:`call` also returns the file descriptors the operation passed back::

    import vsys
    r = vsys.call("fd_tuntap", ["100.64.7.1/24"])
    tun = r.fds[0]                         # read/write whole IP packets on it

Stdlib-only: this package is copied into the reference image as ``vsys`` (the wire:
``slicectl.core.vsys``).
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

SOCK = "/run/slicectl/vsys/vsys.sock"
FRAME = 65536
MAX_FDS = 16
#: The status :func:`main` exits with when the daemon cannot be reached or said nothing.
STATUS_UNREACHABLE = 126


@dataclass
class Result:
    """How a call ended: the operation's exit status, a one-line error (empty if it
    succeeded), the tail of its stderr, what it wrote to stdout (when not streamed), the
    descriptors it passed and the note sent with each batch of them."""

    status: int
    error: str = ""
    stderr: str = ""
    stdout: bytes = b""
    fds: list[int] = field(default_factory=list)
    notes: list[dict[str, object]] = field(default_factory=list)


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, anc, _, _ = sock.recvmsg(FRAME, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    return data, list(fds)


def call(op: str, args: Sequence[str] = (), stdin: bytes | BinaryIO | None = None,
         stdout: BinaryIO | None = None, path: str = SOCK) -> Result:
    """Run operation ``op`` with ``args`` on the node.

    Args:
        stdin: bytes, or a file whose bytes are streamed (``None``: nothing).
        stdout: a file the operation's output is streamed to (``None``: kept in
            ``Result.stdout``).

    Raises:
        OSError: the daemon's socket cannot be reached (no vsys ACL: it is not mounted).
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
        s.send(json.dumps({"op": op, "args": list(args)}).encode())
        result = Result(status=STATUS_UNREACHABLE)
        out = bytearray()
        src = stdin if stdin is not None and not isinstance(stdin, bytes) else None
        if isinstance(stdin, bytes):
            for i in range(0, len(stdin), FRAME - 1):
                s.send(b"I" + stdin[i:i + FRAME - 1])
        if src is None:
            s.send(b"I")
        while True:
            watch = [s.fileno()] + ([src.fileno()] if src is not None else [])
            ready, _, _ = select.select(watch, [], [])
            if src is not None and src.fileno() in ready:
                chunk = os.read(src.fileno(), FRAME - 1)
                s.send(b"I" + chunk)
                if not chunk:
                    src = None
            if s.fileno() not in ready:
                continue
            data, fds = _recv(s)
            if not data:
                result.error = result.error or "the vsys daemon closed the call unanswered"
                return result
            kind, body = data[:1], data[1:]
            if kind == b"O":
                if stdout is None:
                    out += body
                else:
                    stdout.write(body)
                    stdout.flush()
            elif kind == b"F":
                result.fds += fds
                try:
                    note = json.loads(body) if body else {}
                except ValueError:
                    note = {"text": body.decode("utf-8", "replace")}
                result.notes.append(note if isinstance(note, dict) else {"value": note})
            elif kind == b"X":
                end = json.loads(body)
                result.status = int(end.get("status", STATUS_UNREACHABLE))
                result.error = str(end.get("error", ""))
                result.stderr = str(end.get("stderr", ""))
                result.stdout = bytes(out)
                return result
            else:
                for fd in fds:
                    os.close(fd)
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    """``vsys NAME [ARGS...]``: run an operation, streaming stdin and stdout; exit with
    its status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write("usage: vsys NAME [ARGS...]\nrun a privileged operation this "
                         "slice's vsys ACL names (stdin and stdout pass through; the exit "
                         "status is the operation's)\n")
        return 0 if argv else 2
    try:
        r = call(argv[0], argv[1:], stdin=sys.stdin.buffer, stdout=sys.stdout.buffer)
    except OSError as e:
        sys.stderr.write(f"vsys: {SOCK}: {e.strerror or e} (does this slice's rspec name "
                         "vsys operations?)\n")
        return STATUS_UNREACHABLE
    if r.stderr:
        sys.stderr.write(r.stderr if r.stderr.endswith("\n") else r.stderr + "\n")
    if r.error:
        sys.stderr.write(f"vsys: {argv[0]}: {r.error}\n")
    if r.fds:
        sys.stderr.write(f"vsys: {argv[0]} passed {len(r.fds)} file descriptor(s); use the "
                         "vsys Python module (vsys.call) to receive them\n")
        for fd in r.fds:
            os.close(fd)
    return r.status
