"""The admin tools' commands: ``python3 tools.pyz COMMAND ARGS`` (the admin sliver's
``pl-*`` wrappers run it so). Each command has ``--help``; an error is one line on stderr
(``pl-kill: ...``) and exit status 1; a usage error exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from slicectl.core.errors import SlicectlError
from slicectl.core.labels import SLIVER_NM_DIR, SLIVER_SNIFFER_DIR
from slicectl.core.sniffrecord import DROPS, RECORD, RECORDS, SLICES, read_frames_blocking
from slicectl.ipc.rpc import Client

from .pcap import FILE_HEADER, Rec, parse_filter, pcap_record

NM_SOCK = Path(SLIVER_NM_DIR) / "nm.sock"
SNIFFER_SOCK = Path(SLIVER_SNIFFER_DIR) / "records.sock"
Call = Callable[..., Any]


def nm_call() -> Call:
    return Client(Path(os.environ.get("SLICECTL_NM_SOCK", str(NM_SOCK))), timeout=120).call


def _reason(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default="", help="why (kept with the event; at most 200 "
                   "characters)")


# pl-ps / pl-top ---------------------------------------------------------------------------

def table(rows: Sequence[dict[str, Any]], cpu: dict[int, float] | None = None,
          width: int = 200) -> str:
    """The process table: slice, pid, %cpu (over ``cpu`` if given, else the process's
    life), resident memory in KiB, command."""
    lines = [f"{'SLICE':<24} {'PID':>7} {'%CPU':>6} {'RSS':>9}  COMMAND"]
    for r in rows:
        pct = cpu.get(r["pid"], 0.0) if cpu is not None else r["cpu_pct"]
        line = (f"{r['slice'][:24]:<24} {r['pid']:>7} {pct:>6.1f} {r['rss_kb']:>9}  "
                f"{r['command']}")
        lines.append(line[:width])
    return "\n".join(lines) + "\n"


def ps(argv: list[str], call: Call, out: TextIO) -> int:
    p = argparse.ArgumentParser(prog="pl-ps", description="Every process on the node with "
                                "its slice (host, service:NAME, other for containers of no "
                                "sliver here), host pid, %CPU over its life, resident memory "
                                "(KiB) and command.")
    p.add_argument("slice", nargs="?", help="show only this slice's processes")
    a = p.parse_args(argv)
    rows = [r for r in call("admin_ps") if a.slice is None or r["slice"] == a.slice]
    out.write(table(rows))
    return 0


def rates(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
          seconds: float) -> dict[int, float]:
    """%CPU of each process over the interval between two tables."""
    old = {r["pid"]: r["cpu_s"] for r in before}
    return {r["pid"]: round(100 * (r["cpu_s"] - old.get(r["pid"], r["cpu_s"])) / seconds, 1)
            for r in after} if seconds > 0 else {}


def top(argv: list[str], call: Call, out: TextIO) -> int:
    p = argparse.ArgumentParser(prog="pl-top", description="The node's busiest processes "
                                "with their slices, refreshed every DELAY seconds (%CPU over "
                                "the interval).")
    p.add_argument("-n", type=int, default=0, help="stop after N refreshes (0: never; 1: "
                   "one batch table)")
    p.add_argument("-d", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("-l", "--lines", type=int, default=0, help="processes shown (default: "
                   "the terminal's height)")
    a = p.parse_args(argv)
    if a.d <= 0 or a.n < 0:
        p.error("-d must be above 0 and -n at least 0")
    size = shutil.get_terminal_size((120, 24))
    lines = a.lines or max(size.lines - 3, 5)
    tty = out.isatty()
    before, t0, shown = call("admin_ps"), time.monotonic(), 0
    while a.n == 0 or shown < a.n:
        time.sleep(a.d)
        after, t1 = call("admin_ps"), time.monotonic()
        cpu = rates(before, after, t1 - t0)
        busiest = sorted(after, key=lambda r: (-cpu.get(r["pid"], 0.0), r["pid"]))[:lines]
        if tty:
            out.write("\x1b[H\x1b[2J")
        out.write(f"pl-top: {len(after)} processes, {time.strftime('%H:%M:%S')}\n")
        out.write(table(busiest, cpu, size.columns))
        out.flush()
        before, t0, shown = after, t1, shown + 1
    return 0


# acting on slivers and the node ------------------------------------------------------------

def kill(argv: list[str], call: Call, out: TextIO) -> int:
    p = argparse.ArgumentParser(prog="pl-kill", description="Kill processes of a slice's "
                                "sliver (host pids as pl-ps shows them). Without pids: every "
                                "process of the sliver but its init. A pid of the host, a "
                                "node service or another slice is refused.")
    p.add_argument("slice")
    p.add_argument("pids", nargs="*", type=int, metavar="PID")
    _reason(p)
    a = p.parse_args(argv)
    killed = call("admin_kill", a.slice, a.pids, a.reason)
    out.write(f"killed {len(killed)} process(es) of {a.slice}"
              + (f": {' '.join(map(str, killed))}" if killed else "") + "\n")
    return 0


def _desired(which: str, description: str) -> Callable[[list[str], Call, TextIO], int]:
    def command(argv: list[str], call: Call, out: TextIO) -> int:
        p = argparse.ArgumentParser(prog=f"pl-{which}", description=description)
        p.add_argument("slice")
        _reason(p)
        a = p.parse_args(argv)
        view = call(f"admin_{which}", a.slice, a.reason)
        out.write(f"{a.slice}: {view['state']}\n")
        return 0
    return command


stop = _desired("stop", "Stop a slice's sliver on this node; only root or the site's admin "
                "(pl-start) start it again.")
start = _desired("start", "Start a slice's sliver again.")


def cap(argv: list[str], call: Call, out: TextIO) -> int:
    p = argparse.ArgumentParser(prog="pl-cap", description="Set the node's outgoing "
                                "bandwidth cap (kbit/s); never above the local "
                                "administrator's bound (policy net_cap_max_kbit).")
    p.add_argument("kbit", type=int)
    _reason(p)
    a = p.parse_args(argv)
    status = call("admin_cap", a.kbit, a.reason)
    out.write(f"net_cap_kbit {status['net_cap_kbit']}\n")
    return 0


# pl-tcpdump -------------------------------------------------------------------------------

def tcpdump(argv: list[str], call: Call, out: TextIO) -> int:
    p = argparse.ArgumentParser(
        prog="pl-tcpdump", description="The node's sliver traffic as pcap on stdout, from "
        "the admin sniffer (`pl-tcpdump | tcpdump -nr -`). The sniffer keeps headers, not "
        "payloads: each packet is its IPv4 and TCP/UDP/ICMP headers as recorded (no "
        "payload, sequence numbers or options). The slice of each packet goes to stderr, "
        "one line per packet: its number in the capture and the slice.")
    p.add_argument("expr", nargs="*", help="terms that must all hold: slice NAME, host|src|"
                   "dst ADDR, port N, tcp, udp, icmp, each optionally after not")
    p.add_argument("-c", "--count", type=int, default=0, help="stop after N packets")
    p.add_argument("-q", "--quiet", action="store_true", help="no slice listing on stderr")
    a = p.parse_args(argv)
    match = parse_filter(a.expr)
    path = os.environ.get("SLICECTL_SNIFFER_SOCK", str(SNIFFER_SOCK))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        raise SlicectlError(f"admin sniffer at {path}: expected it to answer, found "
                            f"{e.strerror} (this sliver needs admin_sniffer)") from None
    binary = out.buffer if hasattr(out, "buffer") else None
    write: Callable[[bytes], Any] = binary.write if binary is not None else (
        lambda b: out.write(b.decode("latin-1")))
    write(FILE_HEADER)
    slices: dict[str, str] = {}
    n = 0
    try:
        for f in read_frames_blocking(sock):
            if f.kind == SLICES:
                slices = {str(k): str(v) for k, v in f.json().items()}
            elif f.kind == DROPS and not a.quiet:
                sys.stderr.write(f"# drops {json.dumps(f.json())}\n")
            elif f.kind == RECORDS:
                for raw in RECORD.iter_unpack(f.payload):
                    r = Rec(*raw)
                    name = slices.get(str(r.xid), f"xid {r.xid}")
                    if not match(r, name):
                        continue
                    write(pcap_record(r))
                    n += 1
                    if not a.quiet:
                        sys.stderr.write(f"{n} {name}\n")
                    if a.count and n >= a.count:
                        return 0
                if binary is not None:
                    binary.flush()
    except BrokenPipeError:
        return 0
    finally:
        sock.close()
        if binary is not None:
            with contextlib.suppress(BrokenPipeError):
                binary.flush()
    return 0


# pl-audit ---------------------------------------------------------------------------------

def default_gateway(route: str = "/proc/net/route") -> str:
    """The sliver's default gateway (the node), from the kernel's route table."""
    with open(route) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) > 2 and cols[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<I", int(cols[2], 16)))
    raise SlicectlError("route: expected a default route, found none")


def audit_text(doc: dict[str, Any]) -> str:
    """The audit pages' JSON on one address, as terminal lines."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, list):
            lines.append(f"{key}: {len(value)}")
            lines += ["  " + ("  ".join(f"{k}={v}" for k, v in row.items())
                              if isinstance(row, dict) else str(row)) for row in value[:50]]
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {json.dumps(v) if isinstance(v, dict | list) else v}"
                      for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def audit(argv: list[str], call: Call, out: TextIO) -> int:
    p = argparse.ArgumentParser(prog="pl-audit", description="What the node's audit pages "
                                "say about an address: which slices sent to it, when and how "
                                "much, and whom to write.")
    p.add_argument("ip")
    p.add_argument("--port", type=int, default=80, help="the node's audit port (default 80)")
    p.add_argument("--url", help="the audit pages elsewhere (default http://<the node, this "
                   "sliver's gateway>:PORT)")
    a = p.parse_args(argv)
    base = a.url or f"http://{default_gateway()}:{a.port}"
    url = f"{base.rstrip('/')}/dst/{a.ip}.json"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SlicectlError(f"audit pages at {url}: {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SlicectlError(f"audit pages at {url}: expected JSON, found {reason}") from None
    out.write(audit_text(doc) if isinstance(doc, dict) else json.dumps(doc) + "\n")
    return 0


COMMANDS: dict[str, Callable[[list[str], Call, TextIO], int]] = {
    "ps": ps, "top": top, "kill": kill, "stop": stop, "start": start, "cap": cap,
    "tcpdump": tcpdump, "audit": audit,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        sys.stderr.write(f"pl-tools: expected a command ({', '.join(COMMANDS)}), found "
                         f"{args[0] if args else 'none'}\n")
        return 2
    name, rest = args[0], args[1:]
    try:
        return COMMANDS[name](rest, nm_call(), sys.stdout)
    except SlicectlError as e:
        sys.stderr.write(f"pl-{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 1
    except KeyboardInterrupt:
        return 130
