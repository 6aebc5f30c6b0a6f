"""The warm pool: pre-made, pre-networked slivers that a bind claims and personalizes.

Pure. A pooled sliver is a container of the reference image made with everything a bind
cannot change later (its mounts, its open-file limit, its disk quota: its *profile*),
started and attached to the bridge at its xid's address, with no slice yet: its init waits
for the node manager to write the slice's identity into ``/etc/slicectl``. A bind whose
rspec has the pool's profile takes one: the container is renamed ``sliver-<slice>`` and
gets the slice's account, keys, limits, classes and initscript. What the engine fixes at
creation and a claim cannot change is exactly what the profile compares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slicectl.core.containerplan import (
    ContainerPlan,
    NodeFacts,
    SliverIdentity,
    container_plan,
)
from slicectl.core.labels import LABEL_SLICE, POOL_PREFIX
from slicectl.core.rspec import RSpec

#: The most pooled slivers a node keeps ready (each holds a bridge port and an xid).
MAX_WARM_POOL = 64
#: How many a node keeps unless told otherwise: two binds at once start warm, for the
#: memory of two idle slivers (about 5 MiB each).
DEFAULT_WARM_POOL = 2
#: The pooled init waits for this file (written by the node manager when a bind claims it).
IDENTITY_FILE = "identity"


def pool_name(node_id: str, xid: int) -> str:
    return f"{POOL_PREFIX}{node_id}-{xid}"


def pool_xid(node_id: str, name: str) -> int | None:
    """The xid of this node's pooled container ``name``, or None if it is not one."""
    prefix = f"{POOL_PREFIX}{node_id}-"
    tail = name.removeprefix("/")
    if not tail.startswith(prefix) or not tail[len(prefix):].isdigit():
        return None
    return int(tail[len(prefix):])


def profile(rspec: RSpec, node: NodeFacts) -> str:
    """What of a sliver's container the engine fixes at creation, as one comparable text:
    its mount targets, ulimits, disk quota and capabilities."""
    kw = container_plan(SliverIdentity("x", 1, 0, Path("/")), rspec, node).kwargs
    return json.dumps({
        "mounts": sorted(m["Target"] for m in kw["mounts"]),
        "ulimits": kw["ulimits"],
        "storage_opt": kw["storage_opt"],
        "cap_add": kw["cap_add"],
    }, sort_keys=True)


def pool_plan(xid: int, etc_dir: Path, rspec: RSpec, node: NodeFacts) -> ContainerPlan:
    """The ``containers.create`` arguments of a pooled sliver at ``xid`` whose
    ``/etc/slicectl`` is ``etc_dir``: a sliver's plan for ``rspec`` without a slice (no
    slice label, no slice in its environment), named :func:`pool_name`."""
    plan = container_plan(SliverIdentity("pool", xid, 0, etc_dir), rspec, node)
    kw = dict(plan.kwargs)
    kw["name"] = pool_name(node.node_id, xid)
    kw["labels"] = {k: v for k, v in kw["labels"].items() if k != LABEL_SLICE}
    kw["environment"] = {"SLICECTL_XID": str(xid)}
    return ContainerPlan(name=kw["name"], image=plan.image, kwargs=kw)


def identity_text(slice_name: str, uid: int) -> str:
    """``/etc/slicectl/identity``: who the sliver is, as lines the init reads."""
    return f"slice={slice_name}\nuid={uid}\n"


@dataclass(frozen=True)
class FillBudget:
    """How many pooled slivers a node keeps and how fast it may make them."""

    target: int
    per_min: int


def fills_due(budget: FillBudget, held: int, recent: list[float], now: float) -> int:
    """How many pooled slivers to start making now: as many as are missing from the
    target (``held``: ready or being made), but no more than the budget leaves in the
    last minute (``recent``: when the fills of the last minute began)."""
    missing = max(0, budget.target - held)
    used = sum(1 for t in recent if now - t < 60.0)
    return min(missing, max(0, budget.per_min - used))
