"""PLC on the command line: ``slicectl plc serve`` runs the PLCAPI server; the other
actions are a client for people (sites, persons, keys, nodes, slices) and ``shell``."""

from __future__ import annotations

import argparse
import asyncio
import code
import json
import logging
import os
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from slicectl.cli.common import AddCommand, output_flag, print_json, read_text
from slicectl.core.errors import UsageError
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import remove_pidfile, write_pidfile
from slicectl.plc import tls
from slicectl.plc.api import PLCAPI
from slicectl.plc.bootstrap import ROOT_EMAIL, RootCredentials, ensure_root, seed
from slicectl.plc.call import Settings
from slicectl.plc.client import PLC, ROOT_FILE, Login
from slicectl.plc.db import Database
from slicectl.plc.server import Listen, make_app, serve, url_of


def cmd_serve(args: argparse.Namespace, cfg: NodeConfig) -> int:
    state = Path(args.state_dir) if args.state_dir else cfg.state_dir / "plc"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    plain = args.plain
    if plain and not tls.is_loopback(args.host):
        raise UsageError(f"--plain serves plain HTTP only on loopback, not on {args.host!r}")
    if args.scrypt_n < 2**10 or args.scrypt_n & (args.scrypt_n - 1):
        raise UsageError(f"--scrypt-n: expected a power of two of at least 1024, got {args.scrypt_n}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    db = Database(args.db or str(state / "plc.sqlite"))
    seed(db)
    settings = Settings(scrypt_n=args.scrypt_n, change_notices=args.change_notices)
    api = PLCAPI(db, settings)
    ctx = None
    cafile: str | None = None
    if not plain:
        cert = Path(args.cert) if args.cert else state / "plc.crt"
        key = Path(args.key) if args.key else state / "plc.key"
        if not args.cert:
            tls.ensure_certificate(cert, key, tls.default_names(args.host) + args.cert_name)
        ctx = tls.server_context(cert, key)
        cafile = str(cert)
    root_file = Path(args.root_file)

    def ready(port: int) -> None:
        url = url_of(args.host, port, not plain)
        password = ensure_root(db, args.root_email, scrypt_n=args.scrypt_n)
        if password is None and root_file.exists():
            old = RootCredentials.read(root_file)
            password = old.password
        if password is None:
            print(f"slicectl: {args.root_email} exists but {root_file} is gone; "
                  "not writing root credentials", file=sys.stderr)
        else:
            RootCredentials(url, cafile, args.root_email, password).write(root_file)
        if args.pidfile:
            write_pidfile(Path(args.pidfile))
        print(f"PLCAPI serving {url}", flush=True)

    try:
        asyncio.run(serve(make_app(api, args.threads), Listen(args.host, args.port, ctx), ready))
    finally:
        db.close()
        if args.pidfile:
            remove_pidfile(Path(args.pidfile))
    return 0


# the client ---------------------------------------------------------------------------------------

def _plc(args: argparse.Namespace) -> PLC:
    return PLC(Login.resolve(args.url, args.user, args.password, os.environ,
                             Path(args.root_file)))


def _value(text: str) -> Any:
    """A command-line argument as JSON if it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _show(args: argparse.Namespace, result: Any, columns: tuple[str, ...] = ()) -> None:
    if getattr(args, "output", "json") == "json" or not columns or not isinstance(result, list):
        print_json(result)
        return
    print("  ".join(f"{c:>12}" if c.endswith("_id") else f"{c:24}" for c in columns))
    for row in result:
        print("  ".join(f"{row.get(c)!s:>12}" if c.endswith("_id") else f"{row.get(c)!s:24}"
                        for c in columns))


def _fields(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"field {p!r}: expected name=value")
        k, v = p.split("=", 1)
        out[k] = _value(v)
    return out


LISTS = {"sites": ("GetSites", ("site_id", "login_base", "name")),
         "persons": ("GetPersons", ("person_id", "email", "roles")),
         "keys": ("GetKeys", ("key_id", "person_id", "key")),
         "nodes": ("GetNodes", ("node_id", "hostname", "boot_state")),
         "slices": ("GetSlices", ("slice_id", "name", "expires"))}


def cmd_client(args: argparse.Namespace, cfg: NodeConfig) -> int:
    plc = _plc(args)
    act = args.plc_cmd
    try:
        if act == "call":
            _show(args, plc.call(args.method, *[_value(a) for a in args.args]))
        elif act in LISTS:
            method, cols = LISTS[act]
            _show(args, plc.call(method, _value(args.filter) if args.filter else None), cols)
        elif act == "add-site":
            print(plc.AddSite({"login_base": args.login_base, "name": args.name,
                               "abbreviated_name": args.abbreviated_name or args.name,
                               **_fields(args.field)}))
        elif act == "add-person":
            pid = plc.AddPerson({"email": args.email, "first_name": args.first_name,
                                 "last_name": args.last_name, **_fields(args.field)})
            if args.site:
                plc.AddPersonToSite(pid, _value(args.site))
            for role in args.role:
                plc.AddRoleToPerson(role, pid)
            if args.enable:
                plc.UpdatePerson(pid, {"enabled": True})
            print(pid)
        elif act == "add-key":
            print(plc.AddPersonKey(_value(args.person), {"key_type": "ssh",
                                                         "key": read_text(args.file, "key file").strip()}))
        elif act == "add-node":
            print(plc.AddNode(_value(args.site), {"hostname": args.hostname, **_fields(args.field)}))
        elif act == "node-key":
            print(plc.GetNodeKey(_value(args.node)))
        elif act == "add-slice":
            print(plc.AddSlice({"name": args.name, **_fields(args.field)}))
        elif act == "slice":
            _slice_action(plc, args)
        elif act == "shell":
            banner = (f"PLCAPI at {plc.login.url}: call methods as plc.GetSlices(...) or GetSlices(...); "
                      "the auth struct is added for you.")
            env: dict[str, Any] = {"plc": plc, "auth": plc.login.auth}
            for m in plc.call("system.listMethods"):
                if "." not in m:
                    env[m] = getattr(plc, m)
            code.interact(banner=banner, local=env)
    except xmlrpc.client.Fault as f:
        raise UsageError(f"PLC fault {f.faultCode}: {f.faultString}") from f
    except OSError as e:
        raise UsageError(f"PLC at {plc.login.url}: {e}") from e
    return 0


def _slice_show(plc: PLC, args: argparse.Namespace) -> None:
    """The slice and where it is live: each node PLC lists it on (or that reports it),
    with the state the node's agent last reported."""
    found = plc.GetSlices(args.slice, ["slice_id", "name", "expires", "description", "url",
                                       "person_ids", "node_ids"])
    if not found:
        raise UsageError(f"slice {args.slice}: expected a live slice in PLC, found none")
    sl = found[0]
    nodes = plc.GetSliverStates(sl["slice_id"])
    if args.output == "json":
        print_json({**sl, "nodes": nodes})
        return
    print(f"{sl['name']}: expires {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(sl['expires']))}, "
          f"{len(sl['person_ids'])} member(s), on {len(sl['node_ids'])} node(s)")
    print(f"{'NODE':32} {'STATE':12} {'LISTED':7} REPORTED")
    for n in nodes:
        age = "never" if n["updated"] is None else f"{int(time.time()) - n['updated']}s ago"
        why = f"  {n['detail']}" if n.get("detail") else ""
        print(f"{n['hostname']:32} {n['state']:12} {'yes' if n['listed'] else 'no':7} {age}{why}")


def _slice_action(plc: PLC, args: argparse.Namespace) -> None:
    name, what = args.slice, args.slice_cmd
    if what == "show":
        _slice_show(plc, args)
    elif what == "add-nodes":
        plc.AddSliceToNodes(name, [_value(n) for n in args.nodes])
    elif what == "remove-nodes":
        plc.DeleteSliceFromNodes(name, [_value(n) for n in args.nodes])
    elif what == "add-members":
        for p in args.persons:
            plc.AddPersonToSlice(_value(p), name)
    elif what == "remove-members":
        for p in args.persons:
            plc.DeletePersonFromSlice(_value(p), name)
    elif what == "renew":
        plc.UpdateSlice(name, {"expires": _value(args.expires)})
    elif what == "tag":
        node = [_value(args.node)] if args.node else []
        print(plc.AddSliceTag(name, args.tagname, args.value, *node))


def register(add: AddCommand) -> None:
    sp = add("plc", cmd_client, "PLC: serve PLCAPI, or act on sites, persons, nodes and slices")
    sp.add_argument("--url", help="PLCAPI URL (else PLC_URL, else the root file)")
    sp.add_argument("--user", help="email to log in with (else PLC_USER)")
    sp.add_argument("--password", help="password (else PLC_PASSWORD)")
    sp.add_argument("--root-file", default=str(ROOT_FILE),
                    help=f"root credentials (written by serve; default {ROOT_FILE})")
    sub = sp.add_subparsers(dest="plc_cmd", required=True, metavar="ACTION")
    s = sub.add_parser("serve", help="run the PLCAPI server")
    s.set_defaults(handler=cmd_serve)
    s.add_argument("--db", help="database URL: a path (SQLite) or postgresql://... "
                                "(default: STATE/plc.sqlite)")
    s.add_argument("--state-dir", help="certificate and SQLite home (default: the node's "
                                       "state dir/plc)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=443, help="0 picks a free port")
    s.add_argument("--plain", action="store_true", help="plain HTTP (loopback only)")
    s.add_argument("--cert", help="certificate file (default: one made under the state dir)")
    s.add_argument("--key", help="its private key")
    s.add_argument("--cert-name", action="append", default=[],
                   help="one more name or address the made certificate is for (repeatable)")
    s.add_argument("--threads", type=int, default=8, help="XML-RPC worker threads")
    s.add_argument("--no-change-notices", dest="change_notices", action="store_false",
                   help="refuse WaitForChange, as a PLC without slicectl's extension would: "
                        "nodes then learn of changes only by their periodic GetSlivers")
    s.add_argument("--pidfile", help="write pid and code hash here while serving "
                                     "(how the node's supervisor tells stale code apart)")
    s.add_argument("--root-email", default=ROOT_EMAIL)
    s.add_argument("--scrypt-n", type=int, default=2**14,
                   help="scrypt cost for new passwords (tests and benches lower it)")
    c = sub.add_parser("call", help="call any method: ARGS are JSON (or plain strings)")
    c.add_argument("method")
    c.add_argument("args", nargs="*")
    for name in LISTS:
        lp = sub.add_parser(name, help=f"list {name} (FILTER as JSON)")
        lp.add_argument("filter", nargs="?")
        output_flag(lp)
    a = sub.add_parser("add-site")
    a.add_argument("login_base")
    a.add_argument("name")
    a.add_argument("--abbreviated-name")
    a.add_argument("--field", action="append", default=[], help="name=value (JSON value)")
    a = sub.add_parser("add-person")
    a.add_argument("email")
    a.add_argument("first_name")
    a.add_argument("last_name")
    a.add_argument("--site")
    a.add_argument("--role", action="append", default=[])
    a.add_argument("--enable", action="store_true")
    a.add_argument("--field", action="append", default=[])
    a = sub.add_parser("add-key")
    a.add_argument("person")
    a.add_argument("file")
    a = sub.add_parser("add-node")
    a.add_argument("site")
    a.add_argument("hostname")
    a.add_argument("--field", action="append", default=[])
    sub.add_parser("node-key").add_argument("node")
    a = sub.add_parser("add-slice")
    a.add_argument("name")
    a.add_argument("--field", action="append", default=[])
    a = sub.add_parser("slice", help="add/remove nodes and members, renew, tag")
    a.add_argument("slice")
    ss = a.add_subparsers(dest="slice_cmd", required=True, metavar="WHAT")
    output_flag(ss.add_parser("show", help="the slice, and on which nodes it is live"))
    for w in ("add-nodes", "remove-nodes"):
        ss.add_parser(w).add_argument("nodes", nargs="+")
    for w in ("add-members", "remove-members"):
        ss.add_parser(w).add_argument("persons", nargs="+")
    ss.add_parser("renew").add_argument("expires", help="seconds since the epoch or "
                                                        "'YYYY-MM-DD HH:MM:SS'")
    t = ss.add_parser("tag")
    t.add_argument("tagname")
    t.add_argument("value")
    t.add_argument("--node")
    sub.add_parser("shell", help="a Python shell with the API bound (as plcsh)")
