"""``slicectl node policy show|set`` (the local administrator's node policy) and ``slicectl
node events`` (what was done to the node, by whom).

The machine's owner (host root) sets it; PLC's view never overrides it. ``set`` checks the
whole policy, writes the file at once and restarts the node daemons that run now (the node
manager, the admin sniffer, the shim), which read it at start; slivers keep running.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from slicectl.cli.common import output_flag, print_json
from slicectl.core.policy import NodePolicy, policy_data, with_setting
from slicectl.node.accounts import write_atomic
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import nm_client, restart_running
from slicectl.node.dockerd import Say


def register_events(nsub: Any) -> None:
    p = nsub.add_parser("events", help="what was done to the node and its slivers, by whom")
    p.add_argument("--slice", default="", help="only this slice's")
    p.add_argument("-n", type=int, default=50, metavar="N", help="the latest N (default 50)")
    output_flag(p)


def cmd_events(args: argparse.Namespace, cfg: NodeConfig) -> int:
    rows = nm_client(cfg).call("events", args.slice, args.n)
    if args.output == "json":
        print_json(rows)
        return 0
    for e in rows:
        detail = f"  {e['detail']}" if e["detail"] else ""
        print(f"{e['at']}  {e['who']:24}  {e['action']:9} {e['slice'] or '-':24}{detail}")
    return 0


def register(nsub: Any) -> None:
    p = nsub.add_parser("policy", help="the local administrator's node policy (show, set)")
    psub = p.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    output_flag(psub.add_parser("show", help="every setting and its value"))
    st = psub.add_parser("set", help="change one setting (lists: comma-separated, empty for "
                                     "none); restarts the node daemons that run")
    st.add_argument("key")
    st.add_argument("value")


def shown(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_policy(args: argparse.Namespace, cfg: NodeConfig, say: Say) -> int:
    policy = cfg.policy()
    if args.policy_cmd == "show":
        data = policy_data(policy)
        if args.output == "json":
            print_json({"path": str(cfg.policy_path), "policy": data})
        else:
            width = max(len(k) for k in data) + 2
            print(f"{'path:':{width}}{cfg.policy_path}")
            for key, value in data.items():
                print(f"{key + ':':{width}}{shown(value)}")
        return 0
    new = with_setting(policy, args.key, args.value)
    defaults = policy_data(NodePolicy())
    kept = {k: v for k, v in policy_data(new).items() if v != defaults[k]}
    cfg.policy_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cfg.policy_path, yaml.safe_dump(kept, sort_keys=True) if kept else "{}\n",
                 0o644)
    say(f"{args.key} = {shown(policy_data(new)[args.key])}")
    restarted = restart_running(cfg, say)
    say(f"restarted {', '.join(restarted)} to read it; slivers keep running" if restarted
        else "no node daemon runs; the policy applies at their next start")
    return 0
