"""A sliver program's status file, read from inside its sliver through the engine (as host
root; the node manager names the sliver's container)."""

from __future__ import annotations

import json
from typing import Any

import docker
import docker.errors

from slicectl.core.errors import ConnectionFailed, NotFoundError
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import nm_client


def sliver_json(cfg: NodeConfig, client: docker.DockerClient, slice_name: str,
                path: str) -> dict[str, Any] | None:
    """The JSON file ``path`` in ``slice_name``'s sliver: None when there is no such
    sliver (or no node manager), {} when the file is missing or not JSON."""
    try:
        container = nm_client(cfg, timeout=10).call("get_sliver", slice_name)["container"]
    except (NotFoundError, ConnectionFailed):
        return None
    try:
        out = client.containers.get(container).exec_run(["cat", path], user="root")
        data: dict[str, Any] = json.loads(out.output) if out.exit_code == 0 else {}
    except (docker.errors.APIError, ValueError):
        data = {}
    return data
