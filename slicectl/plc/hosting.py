"""PLC hosted on this machine (``make up``): ``slicectl plc serve`` under the node's
supervisor, on HTTPS port 443, and this node registered in it.

The server is one more supervised program of the node (its own supervisor file, so the
node's daemons and PLC are installed and removed apart); its pidfile carries the code
hash, so a ``make up`` with new code restarts it, and one with the same code leaves it
(and its database and root credentials) as they are.

Registering the node gives the node's operator a site (login base :data:`NODE_SITE`)
and the node a record with its key; the node's PLC credentials go to
:data:`NODE_CREDENTIALS` (mode 0600), which is what the node agent logs in with.
"""

from __future__ import annotations

import re
import ssl
import time
import xmlrpc.client
from pathlib import Path

from slicectl.core.errors import EngineError
from slicectl.core.netplan import node_gateway
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import HostDaemon, program, start_daemon, stop_daemon, supervisor
from slicectl.node.dockerd import Say

from .bootstrap import RootCredentials
from .client import PLC, ROOT_FILE, Login
from .credentials import NodeCredentials

#: The port PLC serves on when this machine hosts it (a node service port: no sliver
#: may reserve it).
PLC_PORT = 443
#: The node's own PLC credentials (node id and key), read by the node agent.
NODE_CREDENTIALS = Path("/etc/slicectl/plc-node.json")
#: Login base of the site PLC gives this node's operator.
NODE_SITE = "local"


def plc_daemon(cfg: NodeConfig, port: int = PLC_PORT, root_file: Path = ROOT_FILE) -> HostDaemon:
    """``slicectl plc serve`` as a host daemon of node ``cfg`` (state under its state dir)."""
    return HostDaemon("plc", "slicectl.cli", (
        "plc", "--root-file", str(root_file), "serve", "--port", str(port),
        "--state-dir", str(cfg.state_dir / "plc"), "--pidfile", str(cfg.run_dir / "plc.pid"),
        "--cert-name", sliver_address(cfg)))


def sliver_address(cfg: NodeConfig) -> str:
    """The address slivers reach PLC at on this host: the node bridge's (the gateway)."""
    return node_gateway(cfg.subnet)


def sliver_url(cfg: NodeConfig, port: int = PLC_PORT) -> str:
    """PLC's URL as a sliver of this node (the node agent's) uses it."""
    return f"https://{sliver_address(cfg)}:{port}/PLCAPI/"


def supervisor_key(cfg: NodeConfig) -> str:
    """The supervisor file PLC's program lives in (not the node's: installing the node's
    daemons must not remove it)."""
    return f"{cfg.node_id}-plc"


def local_url(cfg: NodeConfig, port: int = PLC_PORT) -> str:
    return f"https://localhost:{port}/PLCAPI/"


def cafile(cfg: NodeConfig) -> Path:
    """The certificate ``plc serve`` makes under its state dir."""
    return cfg.state_dir / "plc" / "plc.crt"


def answers(url: str, ca: Path | None, timeout: float = 5) -> bool:
    """Whether PLCAPI at ``url`` answers ``system.listMethods``."""
    ctx = ssl.create_default_context(cafile=str(ca)) if ca and url.startswith("https") else None
    try:
        proxy = xmlrpc.client.ServerProxy(url, allow_none=True, context=ctx)
        return bool(proxy.system.listMethods())
    except (OSError, xmlrpc.client.Error, ssl.SSLError):
        return False


def start_plc(cfg: NodeConfig, say: Say, port: int = PLC_PORT,
              root_file: Path = ROOT_FILE) -> int:
    """Install PLC's program in the node's supervisor and wait until it answers; its pid."""
    d = plc_daemon(cfg, port, root_file)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor().install(supervisor_key(cfg), [program(cfg, d, d.default_log(cfg))], None)
    url = local_url(cfg, port)
    return start_daemon(cfg, d, lambda c: answers(url, cafile(c)), say, timeout_s=120)


def stop_plc(cfg: NodeConfig, port: int = PLC_PORT) -> bool:
    """Stop PLC (its database stays). False if it was not running."""
    return stop_daemon(cfg, plc_daemon(cfg, port))


def plc_hostname(cfg: NodeConfig) -> str:
    """The node's hostname as PLC wants it: fully qualified (a bare name gets
    ``.localdomain``), lower case, only what a DNS label may hold."""
    name = re.sub(r"[^a-z0-9.-]", "-", (cfg.hostname or "node").lower()).strip(".-")
    return name if "." in name else f"{name or 'node'}.localdomain"


def register_node(plc: PLC, cfg: NodeConfig, site: str = NODE_SITE) -> NodeCredentials:
    """Make sure PLC has the operator's site and this node in it (idempotent); the
    node's credentials."""
    if not plc.GetSites({"login_base": site}, ["site_id"]):
        plc.AddSite({"login_base": site, "name": f"Node operator {cfg.operator}"[:254],
                     "abbreviated_name": site, "enabled": True, "max_slices": 100})
    hostname = plc_hostname(cfg)
    found = plc.GetNodes({"hostname": hostname}, ["node_id"])
    node_id = int(found[0]["node_id"]) if found else int(plc.AddNode(site, {"hostname": hostname}))
    return NodeCredentials(plc.login.url, plc.login.cafile, node_id, hostname,
                           str(plc.GetNodeKey(node_id)))


def host_plc(cfg: NodeConfig, say: Say, port: int = PLC_PORT, root_file: Path = ROOT_FILE,
             credentials: Path = NODE_CREDENTIALS) -> NodeCredentials:
    """``make up``'s PLC step: start PLC here, register this node, write its credentials."""
    started = time.monotonic()
    start_plc(cfg, say, port, root_file)
    if not root_file.exists():
        raise EngineError(f"PLC runs but {root_file} is missing: expected the root "
                          "credentials written at its first start; restore that file or "
                          f"remove {cfg.state_dir / 'plc'} to start PLC afresh")
    plc = root_plc(root_file)
    creds = register_node(plc, cfg)
    creds.write(credentials)
    say(f"PLC at {plc.login.url} (root credentials {root_file}); node {creds.hostname} is "
        f"node {creds.node_id} there ({time.monotonic() - started:.1f}s)")
    return creds


def root_plc(root_file: Path = ROOT_FILE) -> PLC:
    """A client logged in as PLC's root admin (from the root credentials file)."""
    root = RootCredentials.read(root_file)
    return PLC(Login(root.url, {"AuthMethod": "password", "Username": root.username,
                                "AuthString": root.password}, root.cafile))
