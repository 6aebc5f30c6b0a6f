"""The node manager's XML-RPC interface: which methods exist and how callers map to them."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from slicectl.core.errors import NotFoundError, PermissionDenied, UsageError
from slicectl.core.wire import to_struct
from slicectl.node.nm.manager import NodeManager
from slicectl.node.procfs import PinnedPeer

log = logging.getLogger("slicectl.node.nm.api")

#: RPC method name -> NodeManager method. Each receives the Caller first.
METHODS: dict[str, str] = {
    "acquire": "acquire",
    "bind": "bind",
    "split": "split",
    "release": "release",
    "get_rspec": "get_rspec",
    "rcap_info": "rcap_info",
    "list_rcaps": "list_rcaps",
    "list": "list_slivers",
    "get_sliver": "get_sliver",
    "start": "start",
    "wake": "wake",
    "stop": "stop",
    "destroy": "destroy",
    "release_name": "release_name",
    "get_keys": "get_keys",
    "set_keys": "set_keys",
    "set_initscript": "set_initscript",
    "set_info": "set_info",
    "status": "status",
    "events": "events",
    "report_service": "report_service",
    "services": "services",
    "set_node": "set_node",
    "net_map": "net_map",
    "net_map_since": "net_map_since",
    "claim_port": "claim_port",
    "release_port": "release_port",
    "release_claims": "release_claims",
    "list_claims": "list_claims",
    "vsys_event": "vsys_event",
    "admin_ps": "admin_ps",
    "admin_kill": "admin_kill",
    "admin_stop": "admin_stop",
    "admin_start": "admin_start",
    "admin_cap": "admin_cap",
    "admin_tools": "admin_tools",
}

#: What a node-service sidecar (the sensor server, the auditor) may call: reads only.
SERVICE_METHODS = frozenset({"status", "list", "get_sliver", "services"})
#: What the site's admin sliver may call: reads, the node's events and the admin methods;
#: nothing that makes, keys or binds a sliver.
ADMIN_METHODS = SERVICE_METHODS | {"events"} | {m for m in METHODS if m.startswith("admin_")
                                               and m != "admin_tools"}


class NodeManagerAPI:
    """Turns (method, params, the peer pinned at accept) into a NodeManager call."""

    def __init__(self, nm: NodeManager) -> None:
        self.nm = nm

    def __call__(self, method: str, params: tuple[Any, ...], peer: PinnedPeer) -> Any:
        target = METHODS.get(method)
        if target is None:
            raise NotFoundError(f"method {method}: expected one of {', '.join(METHODS)}")
        caller = self.nm.caller_for(peer)
        allowed = (SERVICE_METHODS if caller.service is not None else
                   ADMIN_METHODS if caller.admin else None)
        if allowed is not None and method not in allowed:
            what = "a node service" if caller.service is not None else "the site's admin"
            raise PermissionDenied(f"caller {caller.name} ({what}): may call only "
                                   f"{', '.join(sorted(allowed))}, not {method}")
        log.debug("%s%r by %s", method, params, caller.name)
        fn = getattr(self.nm, target)
        check_arguments(method, fn, params)
        return to_struct(fn(caller, *params))


def check_arguments(method: str, fn: Callable[..., Any], params: tuple[Any, ...]) -> None:
    """Refuse a call whose argument count does not fit ``fn`` (the caller first), before
    it runs: a TypeError inside a method is a bug, not the caller's fault.

    Raises:
        UsageError: naming the method and the arguments it takes.
    """
    sig = inspect.signature(fn)
    try:
        sig.bind(None, *params)
    except TypeError:
        names = [p for p in sig.parameters if p != "caller"]
        raise UsageError(f"{method}: expected arguments ({', '.join(names)}), found "
                         f"{len(params)} argument(s)") from None
