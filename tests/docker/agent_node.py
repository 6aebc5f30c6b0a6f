"""A private node with a real PLC beside it and the node agent in its own sliver, as
`node up` makes it: what the agent and second-service tests start from."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from slicectl.agent.install import ensure_agent_sliver
from slicectl.core.netplan import node_gateway
from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig
from slicectl.plc.client import PLC, Login
from slicectl.plc.credentials import NodeCredentials
from slicectl.plc.hosting import register_node
from slicectl.testbed.plc import Server, start_server, stop_server
from slicectl.testbed.privnode import free_port, log_path, private_node

from .conftest import NMHandle

SECOND_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 "
              "second@example.org")


def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``cond`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


@dataclass
class AgentNode:
    cfg: NodeConfig
    node: NMHandle
    srv: Server
    root: PLC
    creds: NodeCredentials
    #: the credentials as the agent's sliver holds them (PLC at the node's gateway)
    inside: NodeCredentials
    #: the agent's slice (not AGENT_SLICE: private nodes share the host's accounts)
    agent: str
    said: list[str]
    nm: Callable[..., Any]

    @property
    def tag(self) -> str:
        return self.node.tag


@contextmanager
def agent_node(node_cfg: NodeConfig, engine: docker.DockerClient,
               tmp_path: Path) -> Iterator[AgentNode]:
    port = free_port()
    with private_node(node_cfg, engine, plc_port=port) as cfg:
        node = NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))
        gw = node_gateway(cfg.subnet)
        (tmp_path / "plc").mkdir()
        srv = start_server(tmp_path / "plc", None, plain=False, host="0.0.0.0", port=port,
                           cert_names=(gw,))
        try:
            nm = Client(cfg.nm_sock, timeout=300).call
            root = PLC(Login(srv.url, srv.root, srv.cafile))
            creds = register_node(root, cfg.with_(hostname=f"n{node.tag}.test"))
            inside = NodeCredentials(f"https://{gw}:{port}/PLCAPI/", srv.cafile, creds.node_id,
                                     creds.hostname, creds.key)
            said: list[str] = []
            agent = cfg.agent_slice
            ensure_agent_sliver(nm, inside, Path(str(srv.cafile)), cfg.state_dir, said.append,
                                name=agent)
            yield AgentNode(cfg, node, srv, root, creds, inside, agent, said, nm)
        finally:
            stop_server(srv)
