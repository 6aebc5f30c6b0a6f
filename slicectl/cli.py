"""The ``slicectl`` command line: root on the node talks to the node manager."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import docker

from slicectl.core.errors import SlicectlError, UsageError
from slicectl.core.rspec import load_rspec_mapping
from slicectl.core.units import human_duration
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import (
    HOST_DAEMONS,
    daemon_pid,
    nm_client,
    prepare,
    start_host_daemons,
    stop_host_daemons,
)
from slicectl.node.dockerd import Say
from slicectl.node.engine import engine_client
from slicectl.node.services import ServiceRunner, start_services
from slicectl.node.sshd import stop_sshd

DOCKER = "/usr/bin/docker"
DEMO_SLICE = "demo_slice"
DEMO_KEY = Path("/root/.ssh/slicectl_demo")

Handler = Callable[[argparse.Namespace, NodeConfig], int]


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read it ({e.strerror})") from e


def _keys_from_files(paths: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for p in paths:
        keys += [ln.strip() for ln in _read_text(p, "key file").splitlines()
                 if ln.strip() and not ln.startswith("#")]
    return keys


# rcaps ------------------------------------------------------------------------------------

def cmd_acquire(args: argparse.Namespace, cfg: NodeConfig) -> int:
    print(nm_client(cfg).call("acquire", load_rspec_mapping(args.file)))
    return 0


def cmd_bind(args: argparse.Namespace, cfg: NodeConfig) -> int:
    info = nm_client(cfg).call("bind", args.slice, args.rcap, {})
    print(f"{info['name']}: {info['state']} ({info['container']})")
    return 0


def cmd_rcap(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm = nm_client(cfg)
    if args.rcap_cmd == "show":
        _print_json(nm.call("rcap_info", args.rcap))
    elif args.rcap_cmd == "split":
        print(nm.call("split", args.rcap, load_rspec_mapping(args.file)))
    elif args.rcap_cmd == "release":
        nm.call("release", args.rcap)
    elif args.rcap_cmd == "list":
        rows = nm.call("list_rcaps")
        if args.output == "json":
            _print_json(rows)
        else:
            print(f"{'RCAP':32}  {'STATE':8} {'SLICE':20} {'SHARE':>5} {'END'}")
            for r in rows:
                print(f"{r['rcap']:32}  {r['state']:8} {r['slice'] or '-':20} "
                      f"{r['rspec']['cpu_share']:>5} {r['rspec']['end']}")
    return 0


# slices -----------------------------------------------------------------------------------

def cmd_create(args: argparse.Namespace, cfg: NodeConfig) -> int:
    rspec = load_rspec_mapping(args.rspec) if args.rspec else {}
    attrs: dict[str, Any] = {"keys": _keys_from_files(args.key), "contacts": args.contact}
    if args.init:
        attrs["initscript"] = _read_text(args.init, "init script")
    if args.description:
        attrs["description"] = args.description
    nm = nm_client(cfg)
    rcap = nm.call("acquire", rspec)
    try:
        info = nm.call("bind", args.slice, rcap, attrs)
    except BaseException:
        with contextlib.suppress(SlicectlError):
            nm.call("release", rcap)
        raise
    print(f"{info['name']}: {info['state']} as {info['container']}, address "
          f"{info['address'] or '-'}, expires {info['expires']}")
    return 0


def cmd_list(args: argparse.Namespace, cfg: NodeConfig) -> int:
    rows = nm_client(cfg).call("list")
    if args.output == "json":
        _print_json(rows)
        return 0
    now = time.time()
    print(f"{'SLICE':24} {'STATE':9} {'ADDRESS':15} {'SHARE':>5} {'MEM_MB':>6} {'EXPIRES IN'}")
    for r in rows:
        left = time.mktime(time.strptime(r["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        print(f"{r['name']:24} {r['state']:9} {r['address'] or '-':15} "
              f"{r['rspec']['cpu_share']:>5} {r['rspec']['mem_mb']:>6} "
              f"{human_duration(left - now)}")
    return 0


def cmd_show(args: argparse.Namespace, cfg: NodeConfig) -> int:
    info = nm_client(cfg).call("get_sliver", args.slice)
    if args.output == "json":
        _print_json(info)
        return 0
    for key in ("name", "state", "container", "pid", "address", "xid", "uid", "expires",
                "created", "created_by", "contacts", "description", "keys", "rcaps"):
        value = info[key]
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        print(f"{key + ':':13}{value if value not in (None, '') else '-'}")
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
    info = nm_client(cfg).call(args.cmd, args.slice)
    print(f"{info['name']}: {info['state']}")
    return 0


def cmd_keys(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm = nm_client(cfg)
    if args.set is not None:
        nm.call("set_keys", args.slice, _keys_from_files(args.set))
    else:
        for k in nm.call("get_keys", args.slice):
            print(k)
    return 0


def cmd_initscript(args: argparse.Namespace, cfg: NodeConfig) -> int:
    nm_client(cfg).call("set_initscript", args.slice, _read_text(args.file, "init script"))
    return 0


def cmd_exec(args: argparse.Namespace, cfg: NodeConfig) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("exec: expected a command after --, found none")
    info = nm_client(cfg).call("get_sliver", args.slice)
    argv = [DOCKER, "-H", cfg.engine_url, "exec", "-i"]
    if sys.stdin.isatty():
        argv.append("-t")
    if not args.root:
        home = f"/home/{args.slice}"
        argv += ["-u", f"{info['uid']}:{info['uid']}", "-e", f"HOME={home}",
                 "-e", f"USER={args.slice}", "-e", f"LOGNAME={args.slice}"]
    argv += [info["container"], "/usr/sbin/slicectl-enter", *command]
    return subprocess.call(argv)


# node ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _engine(cfg: NodeConfig) -> Iterator[docker.DockerClient]:
    client = engine_client(cfg.engine_url)
    try:
        yield client
    finally:
        client.close()


def _demo_slice(cfg: NodeConfig, say: Say) -> None:
    nm = nm_client(cfg)
    if not DEMO_KEY.exists():
        DEMO_KEY.parent.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slicectl-demo",
                        "-f", str(DEMO_KEY)], check=True)
    names = {s["name"] for s in nm.call("list")}
    if DEMO_SLICE not in names:
        rcap = nm.call("acquire", {"cpu_share": 10, "mem_mb": 512, "end": "52w"})
        nm.call("bind", DEMO_SLICE, rcap, {
            "keys": _keys_from_files([f"{DEMO_KEY}.pub"]), "contacts": ["root@localhost"],
            "description": "demo slice created by `make up`",
        })
        say(f"created the demo slice {DEMO_SLICE}")
    port = "" if cfg.ssh_port == 22 else f" -p {cfg.ssh_port}"
    say(f"ready. Log into the demo sliver with:\n\n    ssh -i {DEMO_KEY}{port} "
        f"{DEMO_SLICE}@localhost\n")


def cmd_node(args: argparse.Namespace, cfg: NodeConfig) -> int:
    say = Say(quiet=getattr(args, "quiet", False))
    if args.node_cmd == "up":
        started = time.monotonic()
        cfg = cfg.with_(image=prepare(cfg, os.environ, say))
        start_host_daemons(cfg, say)
        with _engine(cfg) as client:
            start_services(cfg, client, os.environ, say)
        if args.demo:
            _demo_slice(cfg, say)
        say(f"node up in {time.monotonic() - started:.1f}s")
    elif args.node_cmd == "prepare":
        prepare(cfg, os.environ, say)
    elif args.node_cmd == "restart":
        stop_host_daemons(cfg)
        start_host_daemons(cfg, say)
    elif args.node_cmd == "down":
        with _engine(cfg) as client:
            n = ServiceRunner(client, cfg).stop_all()
        say(f"stopped {n} node service(s)")
        stopped = stop_host_daemons(cfg)
        stop_sshd(cfg)
        say(f"stopped {', '.join(stopped)}; slivers and the engine keep running" if stopped
            else "no node daemon was running")
    elif args.node_cmd == "set":
        if not args.value.isdigit():
            raise UsageError(f"node set {args.name}: expected a whole number, found {args.value!r}")
        info = nm_client(cfg).call("set_node", args.name, int(args.value))
        say(f"{args.name} = {info[args.name]}")
    elif args.node_cmd == "status":
        info = nm_client(cfg, timeout=10).call("status")
        for d, _ in HOST_DAEMONS:
            info[f"{d.name}_pid"] = daemon_pid(cfg, d)
        with _engine(cfg) as client:
            info["services"] = [f"{s.name} {s.state} port {s.port} ({s.container})"
                                for s in ServiceRunner(client, cfg).status()]
        if args.output == "json":
            _print_json(info)
        else:
            for key, value in info.items():
                print(f"{key + ':':24}{value}")
    return 0


# parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slicectl", description="slicectl node control")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(handler=handler)
        return sp

    def output(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-o", "--output", choices=("table", "json"), default="table")

    sp = add("acquire", cmd_acquire, "admit an rspec (YAML file) and print its rcap")
    sp.add_argument("file")
    sp = add("bind", cmd_bind, "bind an rcap to a slice, creating its sliver")
    sp.add_argument("slice")
    sp.add_argument("rcap")
    sp = add("create", cmd_create, "acquire and bind in one step")
    sp.add_argument("slice")
    sp.add_argument("--rspec", metavar="FILE")
    sp.add_argument("--key", metavar="PUBFILE", action="append", default=[])
    sp.add_argument("--init", metavar="FILE", help="the sliver's /etc/rc.vinit")
    sp.add_argument("--contact", metavar="EMAIL", action="append", default=[])
    sp.add_argument("--description", metavar="TEXT")
    output(add("list", cmd_list, "list this node's slivers"))
    sp = add("show", cmd_show, "show one sliver")
    sp.add_argument("slice")
    output(sp)
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
    sp = add("exec", cmd_exec, "run a command in a sliver (as the slice user, or --root)")
    sp.add_argument("slice")
    sp.add_argument("--root", action="store_true")
    sp.add_argument("command", nargs=argparse.REMAINDER)

    sp = add("rcap", cmd_rcap, "show, split, release or list rcaps")
    rsub = sp.add_subparsers(dest="rcap_cmd", required=True, metavar="ACTION")
    rsub.add_parser("show").add_argument("rcap")
    r = rsub.add_parser("split")
    r.add_argument("rcap")
    r.add_argument("file")
    rsub.add_parser("release").add_argument("rcap")
    output(rsub.add_parser("list"))

    sp = add("node", cmd_node, "bring up, inspect or restart this node's stack")
    nsub = sp.add_subparsers(dest="node_cmd", required=True, metavar="ACTION")
    up = nsub.add_parser("up", help="engine, image, sshd, node daemons and a demo slice")
    up.add_argument("--no-demo", dest="demo", action="store_false")
    up.add_argument("--quiet", action="store_true")
    nsub.add_parser("prepare", help="everything but the node manager")
    nsub.add_parser("restart", help="restart the node daemons (slivers keep running)")
    nsub.add_parser("down", help="stop the node daemons and sshd (slivers keep running)")
    output(nsub.add_parser("status", help="the node manager's view of the node"))
    st = nsub.add_parser("set", help="change a node setting live (net_cap_kbit)")
    st.add_argument("name", choices=("net_cap_kbit",))
    st.add_argument("value")
    return p


def main(argv: Sequence[str] | None = None, cfg: NodeConfig | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = cfg or NodeConfig.from_env(os.environ)
        handler: Handler = args.handler
        return handler(args, cfg)
    except SlicectlError as e:
        print(f"slicectl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
