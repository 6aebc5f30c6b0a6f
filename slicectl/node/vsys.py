"""The vsys daemon: privileged operations a slice may call when its ACL names them.

A sliver whose rspec names operations (``vsys``) finds this daemon's socket
(``<run_dir>/vsys/vsys.sock``, SOCK_SEQPACKET) mounted at ``/run/slicectl/vsys``. Each
connection is one call (the wire: :mod:`slicectl.core.vsys`; the sliver's side: the
``vsys`` command and module, :mod:`slicectl.vsysclient`):

1. The caller is pinned at accept (:func:`slicectl.node.procfs.pin`) and named from its
   cgroup and the node manager's ``net_map``, never from what it says; a peer that is no
   sliver of this node gets a refusal and nothing else.
2. Its request names an operation and arguments; the operation must be in the slice's
   effective rspec (``vsys``) and have a script: shipped ones in ``vsys_scripts/`` next
   to this module, or the local administrator's in ``<state_dir>/vsys/`` (root-owned,
   not writable by others; a shipped name cannot be shadowed).
3. The script runs as host root in its own session, with the caller's slice, container
   init pid, network namespace (an open fd), overlay range and the node manager's socket
   in its environment, and ``SLICECTL_VSYS_FD``: a unix socket on which it may send file
   descriptors (SCM_RIGHTS), which the daemon passes on to the caller. The caller's
   messages feed its stdin, its stdout goes back as it comes, its exit status and the
   tail of its stderr end the call. Past the node policy's ``vsys_timeout_s`` its whole
   process group is killed and the caller told so.

A slice has at most ``vsys_calls_per_slice`` calls running; each is served by a thread.
Every call is recorded in the node manager's events (``slicectl node events``).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import errno
import json
import logging
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slicectl.core.errors import PermissionDenied, SlicectlError
from slicectl.core.policy import NodePolicy
from slicectl.core.requests import loads_bounded
from slicectl.core.rspec import VSYS_NAME
from slicectl.core.vsys import (
    STATUS_FAILED,
    STATUS_REFUSED,
    STATUS_TIMEOUT,
    VsysRequest,
    exit_status,
    refusal,
    tail,
    vsys_request,
)
from slicectl.core.wire import NetEntry, from_struct
from slicectl.ipc.lingering import linger_close
from slicectl.node.config import NodeConfig, default_config
from slicectl.node.daemons import (
    VSYS,
    daemon_logging,
    listen_for_slivers,
    nm_client,
    serve_daemon,
    source_root,
)
from slicectl.node.procfs import PinnedPeer, container_ids, pin

log = logging.getLogger("slicectl.node.vsys")

SHIPPED_SCRIPTS = Path(__file__).resolve().parent / "vsys_scripts"
#: Largest frame either way (a kind byte and up to this much data).
FRAME = 65536
#: File descriptors one message of a script may pass, and one call in all.
FDS_PER_MESSAGE = 16
FDS_PER_CALL = 64
#: How long a caller has to send its request after connecting.
REQUEST_WAIT_S = 10.0
#: Connections the daemon serves at once, over all slices (each is a thread).
MAX_CONNECTIONS = 256


def scripts_in(*dirs: Path) -> dict[str, Path]:
    """Operation name -> script: executables named like operations, in the first
    directory that has the name (shipped scripts first). A script root does not own, or
    that others may write, is left out: it would run as root for anyone who can."""
    out: dict[str, Path] = {}
    for d in dirs:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.name in out or not VSYS_NAME.match(p.name):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
                continue
            if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                log.warning("vsys script %s: expected root-owned and not group or world "
                            "writable; left out", p)
                continue
            out[p.name] = p
    return out


def send_frame(sock: socket.socket, kind: bytes, data: bytes = b"", fds: list[int] | None = None,
               deadline: float | None = None) -> None:
    """Send one frame; with a deadline, give up (TimeoutError) when the caller does not
    read in time."""
    if deadline is not None:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        if fds:
            sock.sendmsg([kind + data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", fds))])
        else:
            sock.send(kind + data)
    finally:
        sock.settimeout(None)


def recv_with_fds(sock: socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """One message and the file descriptors that came with it (non-blocking socket)."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(max_fds * fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EMSGSIZE, f"more than {max_fds} descriptors in one message")
    return data, list(fds)


@dataclass
class Outcome:
    """How a call ended."""

    status: int
    error: str = ""
    stderr: str = ""
    fds: int = 0


@dataclass
class Call:
    """One running script and the caller it serves."""

    client: socket.socket
    proc: subprocess.Popen[bytes]
    fd_sock: socket.socket
    deadline: float
    timeout_s: int
    stderr: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    passed: int = 0


def pump(call: Call) -> Outcome:
    """Stream between the caller and the script until the script has exited and closed
    its output, the caller went away, or the deadline passed (the script's process group
    is then killed). Pure plumbing: no identity or ACL here."""
    sel = selectors.DefaultSelector()
    proc = call.proc
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    out_fd, err_fd, in_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    for fd in (out_fd, err_fd, in_fd):
        os.set_blocking(fd, False)
    call.fd_sock.setblocking(False)
    sel.register(out_fd, selectors.EVENT_READ, "out")
    sel.register(err_fd, selectors.EVENT_READ, "err")
    sel.register(call.fd_sock, selectors.EVENT_READ, "fds")
    sel.register(call.client, selectors.EVENT_READ, "client")
    open_out = {"out", "err"}
    stdin_open = True
    try:
        while open_out or proc.poll() is None:
            left = call.deadline - time.monotonic()
            if left <= 0:
                kill_group(proc)
                return Outcome(STATUS_TIMEOUT, f"timed out after {call.timeout_s} s",
                               tail(bytes(call.stderr)), call.passed)
            for key, _ in sel.select(timeout=min(left, 0.5)):
                what = key.data
                if what in ("out", "err"):
                    try:
                        data = os.read(key.fd, FRAME - 1)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(key.fd)
                        open_out.discard(what)
                    elif what == "out":
                        send_frame(call.client, b"O", data, deadline=call.deadline)
                    else:
                        call.stderr += data
                        del call.stderr[:-4 * 2048]
                elif what == "fds":
                    forward_fds(call)
                elif what == "client":
                    try:
                        msg = call.client.recv(FRAME, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    if not msg:  # the caller went away: so does its script
                        kill_group(proc)
                        return Outcome(STATUS_FAILED, "the caller went away", "",
                                       call.passed)
                    if msg[:1] != b"I" or not stdin_open:
                        continue
                    if len(msg) == 1:
                        stdin_open = False
                        if not call.pending:
                            close_quietly(proc.stdin)
                    else:
                        call.pending += msg[1:]
                    sel.unregister(call.client)
                    if call.pending:
                        sel.register(in_fd, selectors.EVENT_WRITE, "in")
                    else:
                        sel.register(call.client, selectors.EVENT_READ, "client")
                elif what == "in":
                    try:
                        n = os.write(in_fd, call.pending)
                        del call.pending[:n]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the script does not read its stdin
                        call.pending.clear()
                    if not call.pending:
                        sel.unregister(in_fd)
                        if not stdin_open:
                            close_quietly(proc.stdin)
                        sel.register(call.client, selectors.EVENT_READ, "client")
        forward_fds(call)
        status = exit_status(proc.wait())
        error = "" if status == 0 else f"exited with status {status}"
        return Outcome(status, error, tail(bytes(call.stderr)), call.passed)
    finally:
        sel.close()


def forward_fds(call: Call) -> None:
    """Pass what the script sent on its fd socket to the caller, descriptors included."""
    while True:
        try:
            data, fds = recv_with_fds(call.fd_sock, FRAME - 1, FDS_PER_MESSAGE)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("fd socket: %s", e)
            return
        try:
            if not data and not fds:
                return
            if call.passed + len(fds) > FDS_PER_CALL:
                log.warning("script passed more than %d descriptors; dropped", FDS_PER_CALL)
                continue
            call.passed += len(fds)
            send_frame(call.client, b"F", data, fds, deadline=call.deadline)
        finally:
            for fd in fds:
                os.close(fd)


def close_quietly(f: Any) -> None:
    with contextlib.suppress(OSError):
        f.close()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the script and everything in its process group (its session, made at
    start), and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


@dataclass(frozen=True)
class Caller:
    """A positively identified caller: its sliver's net_map entry and init pid."""

    entry: NetEntry
    init_pid: int


class Vsys:
    """The node's vsys daemon.

    Args:
        cfg: the node's configuration.
        nm: calls the node manager (as root).
        policy: the node policy (timeout, calls per slice).
        script_dirs: where operations' scripts are, in precedence order.
    """

    def __init__(self, cfg: NodeConfig, nm: Callable[..., Any],
                 policy: NodePolicy | None = None,
                 script_dirs: tuple[Path, ...] | None = None) -> None:
        self.cfg = cfg
        self.nm = nm
        self.policy = policy or NodePolicy()
        self.script_dirs = script_dirs or (SHIPPED_SCRIPTS, cfg.vsys_scripts_dir)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.running: Counter[str] = Counter()
        self.listener: socket.socket | None = None
        self.nm_lock = threading.Lock()

    @property
    def sock_path(self) -> Path:
        return self.cfg.vsys_dir / "vsys.sock"

    def call_nm(self, method: str, *args: Any) -> Any:
        with self.nm_lock:
            return self.nm(method, *args)

    # who is calling -------------------------------------------------------------------

    def identify(self, peer: PinnedPeer) -> Caller:
        """The sliver the pinned peer runs in, and that sliver's init pid.

        Raises:
            PermissionDenied: the peer is gone, or no sliver of this node.
        """
        entries = {e.container_id: e for e in
                   (from_struct(NetEntry, r) for r in self.call_nm("net_map"))
                   if e.container_id}
        who = peer.who(lambda cid: entries[cid].slice if cid in entries else None)
        if who.kind != "slice" or peer.container_id is None:
            raise PermissionDenied("vsys operations are for slivers; the caller is no "
                                   "sliver's process")
        entry = entries[peer.container_id]
        view = self.call_nm("get_sliver", entry.slice)
        pid = view.get("pid") if isinstance(view, dict) else None
        if not isinstance(pid, int) or pid <= 0:
            raise PermissionDenied(f"slice {entry.slice}: expected its sliver running, "
                                   "found no init process")
        return Caller(entry, pid)

    def open_netns(self, caller: Caller) -> int:
        """An fd of the caller's sliver's network namespace, opened through its init
        pid and checked to still be that sliver's after the open (a reused pid is not)."""
        pid = caller.init_pid
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PermissionDenied(f"slice {caller.entry.slice}: cannot open its network "
                                   f"namespace ({e.strerror})") from e
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            cgroup = ""
        if caller.entry.container_id not in container_ids(cgroup):
            os.close(fd)
            raise PermissionDenied(f"slice {caller.entry.slice}: its init pid {pid} is no "
                                   "longer in its container")
        return fd

    # serving --------------------------------------------------------------------------

    def serve_connection(self, client: socket.socket, peer: PinnedPeer) -> None:
        """Serve one call from connect to close; whatever happens, answer with one ``X``
        frame and release everything."""
        slice_name = ""
        op = ""
        outcome = Outcome(STATUS_REFUSED, "")
        # The script's end of its fd socket closes only once the caller has its answer:
        # a detached helper of the script waiting on it (slice_reboot) acts after that.
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                req = self.read_request(client)
                caller = self.identify(peer)
                slice_name = caller.entry.slice
                op = req.op
                scripts = scripts_in(*self.script_dirs)
                why = refusal(slice_name, op, caller.entry.vsys, scripts)
                if why is not None:
                    raise PermissionDenied(why)
                outcome = self.run_script(client, peer, caller, req, scripts[op],
                                          (mine, theirs))
            except SlicectlError as e:
                outcome = Outcome(STATUS_REFUSED, str(e))
            self.answer(client, outcome)
        except Exception:  # one call fails, never the daemon
            log.exception("vsys call %s of %s failed", op or "?", slice_name or f"pid {peer.pid}")
        finally:
            self.release(peer.owner)
            mine.close()
            theirs.close()
            linger_close(client)  # the answer arrives though the caller's bytes are unread
            peer.close()
        if slice_name:
            detail = f"status {outcome.status}" + (f": {outcome.error}" if outcome.error else "")
            log.info("vsys %s by %s: %s", op, slice_name, detail)
            if op:
                self.record(slice_name, op, detail)
        else:
            log.info("vsys refused pid %d: %s", peer.pid, outcome.error)

    def read_request(self, client: socket.socket) -> VsysRequest:
        client.settimeout(REQUEST_WAIT_S)
        try:
            data = client.recv(FRAME)
        except TimeoutError:
            raise PermissionDenied(f"request: expected one within {REQUEST_WAIT_S:.0f} s, "
                                   "found none") from None
        finally:
            client.settimeout(None)
        return vsys_request(loads_bounded(data))

    def answer(self, client: socket.socket, outcome: Outcome) -> None:
        body = {"status": outcome.status, "error": outcome.error, "stderr": outcome.stderr}
        with contextlib.suppress(OSError):
            send_frame(client, b"X", json.dumps(body).encode()[:FRAME - 1],
                       deadline=time.monotonic() + 5)

    def admit(self, owner: str) -> bool:
        """Count one more open call of ``owner`` (a sliver's container: its slice), or
        refuse past the node policy's ``vsys_calls_per_slice``."""
        with self.lock:
            if self.running[owner] >= self.policy.vsys_calls_per_slice:
                return False
            self.running[owner] += 1
            return True

    def release(self, owner: str) -> None:
        with self.lock:
            self.running[owner] -= 1
            if self.running[owner] <= 0:
                del self.running[owner]

    def run_script(self, client: socket.socket, peer: PinnedPeer, caller: Caller,
                   req: VsysRequest, script: Path,
                   pair: tuple[socket.socket, socket.socket]) -> Outcome:
        """Run the operation's script for the caller and stream until it ends. ``pair``:
        the fd socket (the daemon's end, the script's end, closed here once started)."""
        mine, theirs = pair
        netns = self.open_netns(caller)
        try:
            peer.check()
            env = script_env(self.cfg, caller, theirs.fileno(), netns)
            timeout_s = self.policy.vsys_timeout_s
            try:
                proc = subprocess.Popen(
                    [str(script), *req.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, pass_fds=(theirs.fileno(), netns), env=env,
                    cwd="/", start_new_session=True)
            except OSError as e:
                return Outcome(STATUS_FAILED, f"operation {req.op}: cannot run its script "
                                              f"({e.strerror})")
            theirs.close()
            os.close(netns)
            netns = -1
            call = Call(client, proc, mine, time.monotonic() + timeout_s, timeout_s)
            try:
                return pump(call)
            finally:
                if proc.poll() is None:
                    kill_group(proc)
                for f in (proc.stdin, proc.stdout, proc.stderr):
                    close_quietly(f)
        finally:
            if netns >= 0:
                os.close(netns)
            theirs.close()

    def record(self, slice_name: str, op: str, detail: str) -> None:
        try:
            self.call_nm("vsys_event", slice_name, op, detail[:200])
        except SlicectlError as e:
            log.warning("recording vsys %s of %s: %s", op, slice_name, e)

    # the loop -------------------------------------------------------------------------

    def listen(self) -> None:
        listener = listen_for_slivers(self.sock_path, 64)
        listener.settimeout(0.5)
        self.listener = listener

    def accept_one(self) -> None:
        assert self.listener is not None
        try:
            client, _ = self.listener.accept()
        except TimeoutError:
            return
        except OSError as e:
            log.warning("accept: %s", e)
            time.sleep(0.1)
            return
        try:
            peer = pin(client)
        except SlicectlError as e:
            refuse(client, str(e))
            return
        # Bounded before a thread is made: a slice's calls (open connections, so one
        # that sends nothing holds a place too), and all of the node's.
        refusal_line = None
        if threading.active_count() > MAX_CONNECTIONS:
            refusal_line = (f"expected at most {MAX_CONNECTIONS} vsys calls at once on this "
                            "node, found that many")
        elif not self.admit(peer.owner):
            refusal_line = (f"container {peer.owner[:12]}: expected at most "
                            f"{self.policy.vsys_calls_per_slice} vsys calls open (node policy), "
                            "found that many")
        if refusal_line is not None:
            refuse(client, refusal_line)
            peer.close()
            return
        threading.Thread(target=self.serve_connection, args=(client, peer), daemon=True,
                         name=f"vsys-{peer.pid}").start()

    def run(self) -> None:
        self.listen()
        while not self.stop.is_set():
            self.accept_one()

    def shutdown(self) -> None:
        if self.listener is not None:
            self.listener.close()


def refuse(client: socket.socket, message: str) -> None:
    """Tell a connection that will not be served why (without blocking), and close it."""
    body = {"status": STATUS_REFUSED, "error": message, "stderr": ""}
    with contextlib.suppress(OSError):
        client.send(b"X" + json.dumps(body).encode(), socket.MSG_DONTWAIT)
    linger_close(client)


def script_env(cfg: NodeConfig, caller: Caller, fd_sock: int, netns: int) -> dict[str, str]:
    """What a script is told about its caller (pure)."""
    src = str(source_root())
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                "/usr/bin:/sbin:/bin",
        "PYTHONPATH": src,
        "LANG": "C.UTF-8",
        "SLICECTL_VSYS_SLICE": caller.entry.slice,
        "SLICECTL_VSYS_PID": str(caller.init_pid),
        "SLICECTL_VSYS_NETNS_FD": str(netns),
        "SLICECTL_VSYS_FD": str(fd_sock),
        "SLICECTL_VSYS_VNET": caller.entry.vsys_vnet,
        "SLICECTL_VSYS_ADDRESS": caller.entry.address,
        "SLICECTL_NM_SOCK": str(cfg.nm_sock),
    }


def serve(cfg: NodeConfig) -> None:
    daemon = Vsys(cfg, nm_client(cfg, timeout=60).call, cfg.policy())
    log.info("vsys %s serving at %s", cfg.node_id, daemon.sock_path)
    serve_daemon(VSYS.pidfile(cfg), daemon.stop, daemon.run, daemon.shutdown)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="slicectl-vsys", description="slicectl vsys daemon: "
                            "privileged operations for slices by ACL").parse_args(argv)
    daemon_logging()
    serve(default_config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
