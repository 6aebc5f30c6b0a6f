"""Slivers on the command line: create, list, show, delete, start, stop, keys,
initscript, exec."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from typing import Any

from slicectl.cli.common import AddCommand, keys_from_files, output_flag, print_json, read_text
from slicectl.core.errors import SlicectlError, UsageError
from slicectl.core.rspec import load_rspec_mapping
from slicectl.core.units import human_duration
from slicectl.core.wire import SliverView, from_struct, stop_line
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import nm_client

DOCKER = "/usr/bin/docker"


def cmd_create(args: argparse.Namespace, cfg: NodeConfig) -> int:
    rspec = load_rspec_mapping(args.rspec) if args.rspec else {}
    attrs: dict[str, Any] = {"keys": keys_from_files(args.key), "contacts": args.contact}
    if args.init:
        attrs["initscript"] = read_text(args.init, "init script")
    if args.description:
        attrs["description"] = args.description
    nm = nm_client(cfg)
    rcap = nm.call("acquire", rspec)
    try:
        info = from_struct(SliverView, nm.call("bind", args.slice, rcap, attrs))
    except BaseException:
        with contextlib.suppress(SlicectlError):
            nm.call("release", rcap)
        raise
    print(f"{info.name}: {info.state} as {info.container}, address "
          f"{info.address or '-'}, expires {info.expires}")
    return 0


def cmd_list(args: argparse.Namespace, cfg: NodeConfig) -> int:
    raw = nm_client(cfg).call("list")
    if args.output == "json":
        print_json(raw)
        return 0
    rows = [from_struct(SliverView, r) for r in raw]
    now = time.time()
    print(f"{'SLICE':24} {'STATE':9} {'ADDRESS':15} {'SHARE':>5} {'MEM_MB':>6} {'EXPIRES IN'}")
    for r in rows:
        left = time.mktime(time.strptime(r.expires, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        print(f"{r.name:24} {r.state:9} {r.address or '-':15} "
              f"{r.rspec['cpu_share']:>5} {r.rspec['mem_mb']:>6} "
              f"{human_duration(left - now)}")
    return 0


def cmd_show(args: argparse.Namespace, cfg: NodeConfig) -> int:
    info = nm_client(cfg).call("get_sliver", args.slice)
    if args.output == "json":
        print_json(info)
        return 0
    for key in ("name", "state", "container", "pid", "address", "xid", "uid", "expires",
                "created", "created_by", "contacts", "description", "keys", "rcaps"):
        value = info[key]
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        print(f"{key + ':':13}{value if value not in (None, '') else '-'}")
    stopped = stop_line(info.get("stopped"))
    if stopped:
        print(f"{'stopped:':13}{stopped}")
    print("rspec:")
    for key, value in sorted(info["rspec"].items()):
        print(f"  {key + ':':20}{value}")
    print("network:")
    for key, value in sorted(info["net"].items()):
        print(f"  {key + ':':20}{value}")
    return 0


def cmd_delete(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm_client(cfg).call("destroy", args.slice)
    return 0


def cmd_start_stop(args: argparse.Namespace, cfg: NodeConfig) -> int:
    info = from_struct(SliverView, nm_client(cfg).call(args.cmd, args.slice))
    print(f"{info.name}: {info.state}")
    return 0


def cmd_keys(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm = nm_client(cfg)
    if args.set is not None:
        nm.call("set_keys", args.slice, keys_from_files(args.set))
    else:
        for k in nm.call("get_keys", args.slice):
            print(k)
    return 0


def cmd_initscript(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm_client(cfg).call("set_initscript", args.slice, read_text(args.file, "init script"))
    return 0


def exec_request(args: argparse.Namespace) -> tuple[bool, list[str]]:
    """(as root?, command) of ``exec``: ``--root`` may stand before or after the slice."""
    command = list(args.command)
    root = bool(args.root)
    while command[:1] == ["--root"]:
        root, command = True, command[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("exec: expected a command after --, found none")
    return root, command


def cmd_exec(args: argparse.Namespace, cfg: NodeConfig) -> int:
    root, command = exec_request(args)
    nm = nm_client(cfg)
    nm.call("wake", args.slice)  # a dormant sliver starts; a running one counts as used
    info = from_struct(SliverView, nm.call("get_sliver", args.slice))
    argv = [DOCKER, "-H", cfg.engine_url, "exec", "-i"]
    if sys.stdin.isatty():
        argv.append("-t")
    if not root:
        home = f"/home/{args.slice}"
        argv += ["-u", f"{info.uid}:{info.uid}", "-e", f"HOME={home}",
                 "-e", f"USER={args.slice}", "-e", f"LOGNAME={args.slice}"]
    argv += [info.container, "/usr/sbin/slicectl-enter", *command]
    return subprocess.call(argv)


def register(add: AddCommand) -> None:
    sp = add("create", cmd_create, "acquire and bind in one step")
    sp.add_argument("slice")
    sp.add_argument("--rspec", metavar="FILE")
    sp.add_argument("--key", metavar="PUBFILE", action="append", default=[])
    sp.add_argument("--init", metavar="FILE", help="the sliver's /etc/rc.vinit")
    sp.add_argument("--contact", metavar="EMAIL", action="append", default=[])
    sp.add_argument("--description", metavar="TEXT")
    output_flag(add("list", cmd_list, "list this node's slivers"))
    sp = add("show", cmd_show, "show one sliver")
    sp.add_argument("slice")
    output_flag(sp)
    sp = add("delete", cmd_delete, "destroy a sliver and free its resources")
    sp.add_argument("slice")
    for name in ("start", "stop"):
        sp = add(name, cmd_start_stop, f"{name} a sliver")
        sp.add_argument("slice")
    sp = add("keys", cmd_keys, "show or replace a slice's ssh keys")
    sp.add_argument("slice")
    sp.add_argument("--set", metavar="PUBFILE", nargs="*")
    sp = add("initscript", cmd_initscript, "set a sliver's /etc/rc.vinit (runs at next start)")
    sp.add_argument("slice")
    sp.add_argument("file")
    sp = add("exec", cmd_exec, "run a command in a sliver (as the slice user, or --root, given "
             "before or after the slice)")
    sp.add_argument("--root", action="store_true")
    sp.add_argument("slice")
    sp.add_argument("command", nargs=argparse.REMAINDER)
