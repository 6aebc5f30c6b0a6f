"""This node's stack on the command line: up, prepare, restart, down, status, set."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker

from slicectl.agent.bundle import SLIVER_LOG
from slicectl.agent.install import AGENT_SLICE, ensure_agent_sliver
from slicectl.agent.join import join
from slicectl.cli import localadmin
from slicectl.cli.common import AddCommand, keys_from_files, output_flag, print_json
from slicectl.core.errors import (
    ConnectionFailed,
    NotFoundError,
    SlicectlError,
    StateError,
    UsageError,
)
from slicectl.core.supervision import DaemonState
from slicectl.core.wire import SliverView, from_struct
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import (
    HOST_DAEMONS,
    daemon_state,
    nm_client,
    prepare,
    start_host_daemons,
    stop_host_daemons,
)
from slicectl.node.dockerd import Say
from slicectl.node.engine import engine_client
from slicectl.node.nm.manager import NODE_SETTINGS
from slicectl.node.services import ServiceRunner, start_services
from slicectl.node.sshd import stop_sshd
from slicectl.plc.credentials import NodeCredentials
from slicectl.plc.demo import USER as DEMO_USER
from slicectl.plc.demo import ensure_demo_slice
from slicectl.plc.hosting import (
    NODE_CREDENTIALS,
    PLC_PORT,
    host_plc,
    plc_daemon,
    root_plc,
    sliver_url,
    stop_plc,
)

DEMO_SLICE = "demo_slice"
DEMO_KEY = Path("/root/.ssh/slicectl_demo")


@contextlib.contextmanager
def _engine(cfg: NodeConfig) -> Iterator[docker.DockerClient]:
    client = engine_client(cfg.engine_url)
    try:
        yield client
    finally:
        client.close()


def _demo_slice(cfg: NodeConfig, say: Say) -> None:
    nm = nm_client(cfg)
    names = {from_struct(SliverView, s).name for s in nm.call("list")}
    keys = [_demo_key()]
    if DEMO_SLICE not in names:
        rcap = nm.call("acquire", {"cpu_share": 10, "mem_mb": 512, "end": "52w"})
        nm.call("bind", DEMO_SLICE, rcap, {
            "keys": keys, "contacts": ["root@localhost"],
            "description": "demo slice created by `make up`",
        })
        say(f"created the demo slice {DEMO_SLICE}")
    elif keys[0] not in nm.call("get_keys", DEMO_SLICE):
        nm.call("set_keys", DEMO_SLICE, keys)  # the key printed below is the one that works
        say(f"gave the demo slice {DEMO_SLICE} the key {DEMO_KEY}.pub")
    _say_ready(cfg, say)


def _say_ready(cfg: NodeConfig, say: Say) -> None:
    port = "" if cfg.ssh_port == 22 else f" -p {cfg.ssh_port}"
    say(f"ready. Log into the demo sliver with:\n\n    ssh -i {DEMO_KEY}{port} "
        f"{DEMO_SLICE}@localhost\n")
    with contextlib.suppress(SlicectlError):  # made by the agent, from PLC's site_admin
        if nm_client(cfg, timeout=10).call("get_sliver", cfg.admin_slice)["keys"]:
            say(f"and, as the demo site's PI, into the node's admin sliver (pl-ps, pl-top, "
                f"pl-kill, pl-cap, pl-tcpdump, ...):\n\n    ssh -i {DEMO_KEY}{port} "
                f"{cfg.admin_slice}@localhost\n")


def _demo_key() -> str:
    if not DEMO_KEY.exists():
        DEMO_KEY.parent.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slicectl-demo",
                        "-f", str(DEMO_KEY)], check=True)
    return keys_from_files([f"{DEMO_KEY}.pub"])[0]


def _demo_slice_via_plc(cfg: NodeConfig, node_id: int, say: Say, timeout_s: float = 120) -> None:
    """The demo slice made in PLC; the node agent makes its sliver."""
    nm = nm_client(cfg)
    key = _demo_key()
    with contextlib.suppress(NotFoundError):
        info = nm.call("get_sliver", DEMO_SLICE)
        if info["created_by"] != f"slice:{AGENT_SLICE}":  # made by an older make up
            nm.call("destroy", DEMO_SLICE)
            nm.call("release_name", DEMO_SLICE)  # root held the name: the agent may take it
            say(f"removed {DEMO_SLICE} made before PLC made it")
    ensure_demo_slice(root_plc(), node_id, key)
    say(f"{DEMO_SLICE} is in PLC (site demo, user {DEMO_USER}); waiting for the node agent")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = nm.call("get_sliver", DEMO_SLICE)
            if info["state"] == "running" and info["keys"] >= 1:
                break
        except NotFoundError:
            pass
        if time.monotonic() > deadline:
            raise StateError(f"{DEMO_SLICE}: expected the node agent to make it within "
                             f"{timeout_s:.0f}s, found no sliver; see the agent's log: "
                             f"slicectl exec {AGENT_SLICE} -- cat /var/log/slicectl-agent.log")
        time.sleep(0.2)
    _say_ready(cfg, say)


def _join(cfg: NodeConfig, args: argparse.Namespace, say: Say) -> None:
    """This node joins the PLC at ``args.plc_url`` with the key PLC's admin handed over;
    the agent's sliver gets the credentials."""
    url = args.plc_url
    if not args.node_key:
        raise UsageError("--node-key: expected the file with the node's key from PLC's "
                         "admin (slicectl plc node-key HOSTNAME prints it), found none")
    if not url.startswith(("https://", "http://")):
        raise UsageError(f"URL: expected https://host/PLCAPI/, found {url!r}")
    cafile = str(Path(args.cafile).resolve()) if args.cafile else None
    creds = join(url, Path(args.node_key), cafile, args.node_id, NODE_CREDENTIALS)
    say(f"joined PLC at {url} as node {creds.node_id} ({creds.hostname}); credentials in "
        f"{NODE_CREDENTIALS}")
    ensure_agent_sliver(nm_client(cfg).call, creds, Path(cafile) if cafile else None,
                        cfg.state_dir, say)


def _reports(cfg: NodeConfig) -> list[dict[str, Any]] | None:
    """What the node's slice creation services last told the node manager (None: it
    did not answer)."""
    try:
        return list(nm_client(cfg, timeout=10).call("services"))
    except (SlicectlError, OSError):
        return None


def _agent_status(cfg: NodeConfig, reports: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The node agent's last report (None: no agent here)."""
    try:
        nm_client(cfg, timeout=10).call("get_sliver", AGENT_SLICE)
    except (NotFoundError, ConnectionFailed):
        return None
    for r in reports or []:
        if r.get("slice") == AGENT_SLICE:
            return r
    return {"state": "no report yet (the agent is starting, or failing: see its log "
                     f"{SLIVER_LOG} in {AGENT_SLICE})"}


def _report_line(st: dict[str, Any]) -> str:
    if "last_contact" not in st:
        return str(st.get("state"))
    seen = ("never" if st["last_contact"] in (None, "")
            else f"{time.time() - float(st['last_contact']):.0f}s ago")
    line = (f"{st.get('authority') or 'authority'} {st['state']}, last contact {seen}, "
            f"{st.get('slivers', 0)} sliver(s)")
    if st.get("failures_in_a_row"):
        line += f", {st['failures_in_a_row']} failed tries"
    line += f" (reported {st.get('age_s', 0):.0f}s ago)"
    return line + (f": {st['last_error']}" if st.get("last_error") else "")


def _state_struct(st: DaemonState) -> dict[str, object]:
    return {"program": st.name, "state": st.state, "pid": st.pid,
            "uptime_s": None if st.uptime_s is None else round(st.uptime_s),
            "restarts": st.restarts}


def _state_line(st: DaemonState) -> str:
    up = "" if st.uptime_s is None else f" up {st.uptime_s:.0f}s"
    pid = "" if st.pid is None else f" pid {st.pid}"
    return f"{st.state}{pid}{up} restarts={st.restarts} ({st.name})"


def cmd_node(args: argparse.Namespace, cfg: NodeConfig) -> int:
    say = Say(quiet=getattr(args, "quiet", False))
    if args.node_cmd == "up":
        started = time.monotonic()
        joining = args.plc_url is not None
        hosting = args.plc and not joining
        if joining and not args.node_key:
            raise UsageError("--plc-url: expected --node-key FILE with it (the node's key "
                             "from PLC's admin), found none")
        cfg = cfg.with_(image=prepare(cfg, os.environ, say),
                        plc_port=PLC_PORT if hosting else 0 if joining else cfg.plc_port)
        start_host_daemons(cfg, say)
        with _engine(cfg) as client:
            start_services(cfg, client, os.environ, say)
        if hosting:
            creds = host_plc(cfg, say)
            inside = NodeCredentials(sliver_url(cfg), creds.cafile, creds.node_id,
                                     creds.hostname, creds.key)
            ensure_agent_sliver(nm_client(cfg).call, inside, Path(creds.cafile or "/nonexistent"),
                                cfg.state_dir, say)
            if args.demo:
                _demo_slice_via_plc(cfg, creds.node_id, say)
        elif joining:
            _join(cfg, args, say)
        elif args.demo:
            _demo_slice(cfg, say)
        say(f"node up in {time.monotonic() - started:.1f}s")
    elif args.node_cmd == "policy":
        return localadmin.cmd_policy(args, cfg, say)
    elif args.node_cmd == "events":
        return localadmin.cmd_events(args, cfg)
    elif args.node_cmd == "join":
        _join(cfg, args, say)
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
        if stop_plc(cfg):
            stopped.append("plc")
        stop_sshd(cfg)
        say(f"stopped {', '.join(stopped)}; slivers and the engine keep running" if stopped
            else "no node daemon was running")
    elif args.node_cmd == "set":
        if not args.value.isdigit():
            raise UsageError(f"node set {args.name}: expected a whole number, found {args.value!r}")
        info = nm_client(cfg).call("set_node", args.name, int(args.value))
        say(f"{args.name} = {info[args.name]}")
    elif args.node_cmd == "status":
        try:
            info = nm_client(cfg, timeout=10).call("status")
        except ConnectionFailed as e:
            info = {"nm": str(e)}
        daemons = [d for d, _ in HOST_DAEMONS]
        plc = plc_daemon(cfg)
        if daemon_state(cfg, plc).state != "ABSENT":
            daemons.append(plc)  # PLC, where this machine hosts it
        states = [daemon_state(cfg, d) for d in daemons]
        if args.output == "json":
            info["daemons"] = {d.name: _state_struct(st)
                               for d, st in zip(daemons, states, strict=True)}
        else:
            for d, st in zip(daemons, states, strict=True):
                info[d.name] = _state_line(st)
        with _engine(cfg) as client:
            info["services"] = [f"{s.name} {s.state} port {s.port} ({s.container})"
                                for s in ServiceRunner(client, cfg).status()]
        reports = _reports(cfg)
        agent = _agent_status(cfg, reports)
        if agent is not None:
            info["agent"] = agent if args.output == "json" else _report_line(agent)
        others = [r for r in reports or [] if r.get("slice") != AGENT_SLICE]
        if others:
            info["creation_services"] = (others if args.output == "json" else
                                         [f"{r['slice']} ({r['kind']}): {_report_line(r)}"
                                          for r in others])
        if args.output == "json":
            print_json(info)
        else:
            for key, value in info.items():
                print(f"{key + ':':24}{value}")
    return 0


def _join_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-key", help="a file with the node's key (or PlanetLab's plnode.txt "
                                      "with NODE_ID= and NODE_KEY= lines)")
    p.add_argument("--node-id", type=int, help="the node's id in PLC (if the key file lacks it)")
    p.add_argument("--cafile", help="PLC's certificate, if a public CA did not sign it")


def register(add: AddCommand) -> None:
    sp = add("node", cmd_node, "bring up, inspect or restart this node's stack")
    nsub = sp.add_subparsers(dest="node_cmd", required=True, metavar="ACTION")
    up = nsub.add_parser("up", help="engine, image, sshd, node daemons and a demo slice")
    up.add_argument("--no-demo", dest="demo", action="store_false")
    up.add_argument("--no-plc", dest="plc", action="store_false",
                    help="do not host PLC here (by default PLC serves HTTPS on port 443)")
    up.add_argument("--plc-url", help="join the PLC at this URL instead of hosting one "
                                      "(with --node-key)")
    _join_options(up)
    up.add_argument("--quiet", action="store_true")
    j = nsub.add_parser("join", help="join an existing PLC: its URL and the key its admin "
                                     "made for this node")
    j.add_argument("plc_url", metavar="URL", help="PLCAPI's URL, e.g. https://plc.example.org/PLCAPI/")
    _join_options(j)
    nsub.add_parser("prepare", help="everything but the node manager")
    nsub.add_parser("restart", help="restart the node daemons (slivers keep running)")
    nsub.add_parser("down", help="stop the node daemons and sshd (slivers keep running)")
    output_flag(nsub.add_parser("status", help="the node manager's view of the node"))
    st = nsub.add_parser("set", help="change a node setting live: net_cap_kbit (the node's "
                                     "outgoing cap), dormant_after_s (idle slivers stop "
                                     "after this many seconds and wake at their next use; "
                                     "0: never), warm_pool (pooled slivers kept ready for "
                                     "binds; 0: none)")
    st.add_argument("name", choices=NODE_SETTINGS)
    st.add_argument("value")
    localadmin.register(nsub)
    localadmin.register_events(nsub)
