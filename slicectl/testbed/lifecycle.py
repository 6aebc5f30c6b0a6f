"""``slicectl testbed up|down|status``: PLC and N nodes on this machine.

``up`` builds what is missing (node image, the nodes' image tar), starts PLC, makes the
testbed's site and one PLC node per testbed node, hands each node its key (as PLC's admin
hands a real machine's operator its key) and starts the nodes, which join through
``slicectl node up --plc-url``. It waits until every node reports ready. ``down`` removes
everything the testbed made: containers, network, anonymous volumes, loop devices of the
nodes' engines and the testbed's state folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import sys
import time
import xmlrpc.client
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from slicectl.core.errors import SlicectlError, StateError
from slicectl.node.config import NodeConfig
from slicectl.node.dockerd import Say, make_btrfs_file, start_engine
from slicectl.node.engine import engine_session
from slicectl.node.hostcmd import run
from slicectl.plc.bootstrap import RootCredentials
from slicectl.testbed import engine
from slicectl.testbed.compose import COMPOSE_FILE, compose, read_env, write_env
from slicectl.testbed.engine import ENGINE_URL
from slicectl.testbed.layout import (
    SITE,
    Layout,
    caps_of,
    compose_env,
    layout,
    nodes_compose,
    plc_arguments,
)
from slicectl.testbed.nodeimage import ensure_node_image, images_tar, node_engine_images

NODE_READY = "/run/slicectl/testbed-ready"
#: Each node engine's btrfs (sparse: only what slivers write takes space).
DISK_GB = 40
LABEL_TESTBED = "slicectl.testbed"


def _code_paths() -> tuple[Path, Path, Path]:
    """(interpreter home, venv, checkout) the nodes mount read-only at the same paths."""
    return (Path(sys.base_prefix).resolve(), Path(sys.prefix),
            COMPOSE_FILE.parents[1])


def root_proxy(lay: Layout) -> xmlrpc.client.ServerProxy:
    """PLC as its root admin, from the machine running the testbed."""
    ctx = ssl.create_default_context(cafile=str(lay.cafile))
    return xmlrpc.client.ServerProxy(lay.plc_url, allow_none=True, context=ctx)


def root_auth(lay: Layout) -> dict[str, Any]:
    root = RootCredentials.read(lay.root_file)
    return {"AuthMethod": "password", "Username": root.username, "AuthString": root.password}


def wait_plc(lay: Layout, say: Say, timeout_s: float = 120) -> None:
    inner = lay.plc_dir / "root.json"
    deadline = time.monotonic() + timeout_s
    while not (inner.exists() and lay.cafile.exists()):
        _check_running(lay, "plc")
        if time.monotonic() > deadline:
            raise StateError(f"testbed PLC: expected {inner} within {timeout_s:.0f}s, found none; "
                             f"see `docker -H {ENGINE_URL} logs {lay.container('plc')}`")
        time.sleep(0.3)
    root = RootCredentials.read(inner)
    RootCredentials(lay.plc_url, str(lay.cafile), root.username, root.password).write(lay.root_file)
    last = ""
    while time.monotonic() < deadline:
        try:
            root_proxy(lay).GetSites(root_auth(lay), {"login_base": SITE}, ["site_id"])
            say(f"PLC answers at {lay.plc_url}")
            return
        except (OSError, xmlrpc.client.Error, ssl.SSLError) as e:
            last = str(e)
        _check_running(lay, "plc")
        time.sleep(0.3)
    raise StateError(f"testbed PLC at {lay.plc_url}: expected an answer within {timeout_s:.0f}s, "
                     f"last error: {last}")


def _check_running(lay: Layout, service: str) -> None:
    with engine_session(ENGINE_URL) as client:
        try:
            c = client.containers.get(lay.container(service))
        except docker.errors.NotFound:
            return
        if c.status in ("exited", "dead"):
            tail = c.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
            raise StateError(f"testbed {service}: its container {c.name} exited: {tail}")


def enrol(lay: Layout) -> dict[str, int]:
    """The testbed's site and its nodes in PLC (idempotent); each node's key file and
    PLC's certificate in its enrolment folder. Returns node ids by node name."""
    plc, auth = root_proxy(lay), root_auth(lay)
    if not plc.GetSites(auth, {"login_base": SITE}, ["site_id"]):
        plc.AddSite(auth, {"login_base": SITE, "name": f"Testbed {lay.project}",
                           "abbreviated_name": SITE, "enabled": True, "max_slices": 100})
    ids: dict[str, int] = {}
    for node in lay.nodes:
        found: Any = plc.GetNodes(auth, {"hostname": node.hostname}, ["node_id"])
        nid = int(found[0]["node_id"]) if found else int(
            plc.AddNode(auth, SITE, {"hostname": node.hostname}))  # type: ignore[arg-type]
        key = str(plc.GetNodeKey(auth, nid))
        d = lay.node_dir(node.name)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(lay.cafile, d / "plc.crt")
        tmp = d / "node.key.part"
        tmp.write_text(f"NODE_ID={nid}\nNODE_KEY={key}\n")
        os.chmod(tmp, 0o600)
        tmp.rename(d / "node.key")
        ids[node.name] = nid
    return ids


def _node_ready(client: docker.DockerClient, lay: Layout, name: str) -> str:
    """``ready``, ``starting`` or ``exited: <last log line>``."""
    try:
        c = client.containers.get(lay.container(name))
    except docker.errors.NotFound:
        return "absent"
    if c.status != "running":
        tail = c.logs(tail=3).decode(errors="replace").strip().splitlines()
        return f"{c.status}: {tail[-1] if tail else ''}"
    res = c.exec_run(["test", "-e", NODE_READY])
    return "ready" if res.exit_code == 0 else "starting"


def wait_nodes(lay: Layout, say: Say, timeout_s: float = 900) -> None:
    started = time.monotonic()
    with engine_session(ENGINE_URL) as client:
        last_say = 0.0
        while True:
            states = {n.name: _node_ready(client, lay, n.name) for n in lay.nodes}
            failed = {k: v for k, v in states.items() if not v.startswith(("ready", "starting"))}
            if failed:
                name, why = next(iter(failed.items()))
                raise StateError(f"testbed {name}: {why}; see `docker -H {ENGINE_URL} logs "
                                 f"{lay.container(name)}`")
            ready = sum(v == "ready" for v in states.values())
            if ready == len(states):
                say(f"{ready} node(s) ready in {time.monotonic() - started:.0f}s")
                return
            now = time.monotonic()
            if now - started > timeout_s:
                raise StateError(f"testbed: expected {len(states)} nodes ready within "
                                 f"{timeout_s:.0f}s, found {ready}; see `docker -H {ENGINE_URL} "
                                 f"logs {lay.container(lay.nodes[0].name)}`")
            if now - last_say >= 15:
                say(f"nodes: {ready}/{len(states)} ready ({now - started:.0f}s)")
                last_say = now
            time.sleep(1)


def prepare(lay: Layout, env: Mapping[str, str], say: Say, plc_args: str = "") -> None:
    """Images, the compose variables and the nodes' compose file of ``lay``."""
    node_cfg = NodeConfig.from_env(env)
    start_engine(node_cfg, say)  # the node's engine has the images every node's loads
    with engine_session(node_cfg.engine_url) as client:
        tags = node_engine_images(client, env, say)
        tar = images_tar(client, node_cfg.engine_url, tags, say)
    engine.start_engine(say)
    with engine_session(ENGINE_URL) as client:
        node_image = ensure_node_image(client, env, say)
    home, venv, src = _code_paths()
    lay.state.mkdir(parents=True, exist_ok=True)
    lay.plc_dir.mkdir(exist_ok=True)
    write_env(lay, compose_env(lay, node_image, home, venv, src, tar, plc_args))
    disks = ensure_disks(lay, say)
    caps = caps_of(Path("/proc/self/status").read_text())
    lay.nodes_file.write_text(nodes_compose(lay, COMPOSE_FILE, caps, disks))
    lay.status_file.write_text(json.dumps({"nodes": len(lay.nodes), "db": lay.db,
                                           "subnet": lay.subnet, "domain": lay.domain}))


def up(lay: Layout, env: Mapping[str, str], say: Say, plc_args: str = "") -> dict[str, Any]:
    """Bring the testbed ``lay`` up (idempotent); its status. Fails closed: a testbed that
    did not come up is taken down again."""
    started = time.monotonic()
    try:
        prepare(lay, env, say, plc_args)
        first = [s for s in lay.services() if s in ("db", "plc")]
        say(f"starting {', '.join(first)} ({lay.project})")
        compose(lay, "up", "-d", "--no-build", *first)
        engine.allow_bridge(lay.bridge, lay.project)
        wait_plc(lay, say)
        ids = enrol(lay)
        say(f"enrolled {len(ids)} node(s) in PLC site {SITE}; starting them")
        compose(lay, "up", "-d", "--no-build", *(n.name for n in lay.nodes))
        wait_nodes(lay, say)
    except (SlicectlError, OSError, xmlrpc.client.Error, KeyboardInterrupt):
        say_failed_logs(lay, say)
        say("testbed did not come up: taking it down again")
        down(lay, say)
        raise
    say(f"testbed {lay.project} up in {time.monotonic() - started:.0f}s")
    return status(lay)


def say_failed_logs(lay: Layout, say: Say, lines: int = 25) -> None:
    """The last log lines of each of the testbed's containers that stopped (before
    ``down`` removes them)."""
    with engine_session(ENGINE_URL) as client:
        for service in lay.services():
            with contextlib.suppress(docker.errors.NotFound):
                c = client.containers.get(lay.container(service))
                if c.status != "running":
                    say(f"{service} stopped; its last log lines:")
                    for ln in c.logs(tail=lines).decode(errors="replace").splitlines():
                        say(f"  | {ln}")


def set_plc_args(lay: Layout, plc_args: str, say: Say) -> None:
    """Restart the testbed's PLC with other arguments (``--no-change-notices``); its
    database stays."""
    env = read_env(lay)
    if not env:
        raise StateError(f"testbed {lay.project}: not up (no {lay.state}/compose.env)")
    env["TESTBED_PLC_ARGS"] = plc_arguments(lay, plc_args)
    write_env(lay, env)
    compose(lay, "up", "-d", "--no-build", "--no-deps", "plc")
    wait_plc(lay, say)


def _backing(dev: str) -> str:
    """The file behind loop device ``dev`` ("" if it is not set up)."""
    try:
        return Path(f"/sys/block/{Path(dev).name}/loop/backing_file").read_text().strip()
    except OSError:
        return ""


def _saved_disks(lay: Layout) -> dict[str, str]:
    path = lay.state / "disks.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def ensure_disks(lay: Layout, say: Say, size_gb: int = DISK_GB) -> dict[str, str]:
    """Each node's engine btrfs: a sparse file of the testbed's attached to a loop device
    here (a node's container cannot set up loop devices); by node name."""
    saved = _saved_disks(lay)
    out: dict[str, str] = {}
    for n in lay.nodes:
        f = lay.disk_file(n.name)
        dev = saved.get(n.name, "")
        if dev and _backing(dev) == str(f):
            out[n.name] = dev
            continue
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            make_btrfs_file(f, size_gb)
        out[n.name] = run(["losetup", "--find", "--show", str(f)],
                          what=f"losetup {f}").stdout.strip()
        (lay.state / "disks.json").write_text(json.dumps({**saved, **out}))
    if out:
        say(f"engine disks: {', '.join(f'{k} {v}' for k, v in out.items())}")
    return out


def _free_disks(lay: Layout, say: Say) -> int:
    """Detach the loop devices of the testbed's disks (only those backed by its files)."""
    freed = 0
    for name, dev in _saved_disks(lay).items():
        if _backing(dev) == str(lay.disk_file(name)):
            run(["losetup", "-d", dev], what=f"losetup -d {dev}")
            freed += 1
    if freed:
        say(f"detached {freed} loop device(s)")
    return freed


def _remove_by_label(project: str) -> int:
    """Containers and networks labelled as this testbed's (when its files are gone)."""
    if not engine.answers():
        return 0
    n = 0
    with engine_session(ENGINE_URL) as client:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_TESTBED}={project}"}):
            c.remove(force=True, v=True)
            n += 1
        for net in client.networks.list(filters={"label": f"{LABEL_TESTBED}={project}"}):
            net.remove()
            n += 1
    return n


def down(lay: Layout, say: Say) -> None:
    """Remove everything the testbed ``lay`` made (idempotent)."""
    if engine.answers() and lay.nodes_file.exists() and (lay.state / "compose.env").exists():
        say(f"stopping {lay.project} (nodes stop their engines first)")
        compose(lay, "down", "-v", "--remove-orphans", "-t", "60", capture=False, check=False)
    left = _remove_by_label(lay.project)
    if left:
        say(f"removed {left} leftover container(s)/network(s) labelled {LABEL_TESTBED}={lay.project}")
    _free_disks(lay, say)
    engine.disallow_bridge(lay.bridge, lay.project)
    if lay.state.exists():
        shutil.rmtree(lay.state)
    engine.stop_engine_if_idle(say)
    say(f"testbed {lay.project} is down")


def saved_layout(project: str, base: Path | None = None) -> Layout:
    """The layout ``up`` wrote for ``project``.

    Raises:
        StateError: no such testbed on this machine.
    """
    probe = layout(1, project) if base is None else layout(1, project, base=base)
    if not probe.status_file.exists():
        raise StateError(f"testbed {project}: not found on this machine (no {probe.status_file}); "
                         "start it with `slicectl testbed up --nodes N`")
    saved = json.loads(probe.status_file.read_text())
    return layout(int(saved["nodes"]), project, saved["db"], saved["subnet"], saved["domain"],
                  probe.state.parent)


def status(lay: Layout) -> dict[str, Any]:
    """What a script needs to drive the testbed: PLC's URL, CA file, root credentials
    file, and each node's hostname, address, node id and state."""
    ids: dict[str, int] = {}
    for n in lay.nodes:
        key = lay.node_dir(n.name) / "node.key"
        if key.exists():
            pairs = dict(ln.split("=", 1) for ln in key.read_text().splitlines() if "=" in ln)
            ids[n.name] = int(pairs.get("NODE_ID", "0"))
    if not engine.answers():
        raise StateError(f"testbed {lay.project}: its engine {ENGINE_URL} does not answer; "
                         "`slicectl testbed up` starts it")
    with engine_session(ENGINE_URL) as client:
        nodes = [{"name": n.name, "hostname": n.hostname, "address": n.address,
                  "node_id": ids.get(n.name), "container": lay.container(n.name),
                  "state": _node_ready(client, lay, n.name)} for n in lay.nodes]
        try:
            plc_state = client.containers.get(lay.container("plc")).status
        except docker.errors.NotFound:
            plc_state = "absent"
    return {"project": lay.project, "db": lay.db, "engine": ENGINE_URL,
            "plc": {"url": lay.plc_url, "cafile": str(lay.cafile),
                    "root_file": str(lay.root_file), "hostname": lay.plc_hostname,
                    "address": lay.plc_address, "container": lay.container("plc"),
                    "state": plc_state},
            "nodes": nodes}
