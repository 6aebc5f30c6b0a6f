"""Keeping the node true to its database: finish or undo what a killed NM left, recreate
lost containers, remove orphans, and expire rcaps past their end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slicectl.core.containerplan import container_name
from slicectl.node.nm.lifecycle import Slivers
from slicectl.node.nm.ports import DESTROYED
from slicectl.node.store import CREATING, DORMANT, RUNNING, SliverRow, Store

log = logging.getLogger("slicectl.node.nm")

FINISH_DESTROY, CREATE, RECREATE, START, KEEP, AWAKE = (
    "finish destroying", "finish creating", "recreate", "start", "keep", "mark running")


def reconcile_step(sliver: SliverRow, summary: dict[str, Any] | None) -> str:
    """What reconcile does for one sliver row, given the engine's summary of its container
    (None: the engine has no such container)."""
    if sliver.desired == DESTROYED:
        return FINISH_DESTROY
    if sliver.state == CREATING:
        return CREATE
    if summary is None:
        return RECREATE
    if sliver.state == DORMANT:  # stays dormant until its next use; started from outside
        return AWAKE if summary.get("State") == "running" else KEEP
    if sliver.desired == RUNNING and summary.get("State") != "running":
        return START
    return KEEP


class Reconciler:
    """Args: the node's database, its sliver lifecycle, the clock, and what to call with
    the name of each slice expiry destroys."""

    def __init__(self, store: Store, slivers: Slivers, clock: Callable[[], float],
                 expired: Callable[[str], None] = lambda name: None) -> None:
        self.store = store
        self.slivers = slivers
        self.clock = clock
        self.expired = expired

    def reconcile(self) -> list[str]:
        """Make the engine and the host match the database; return what was done."""
        s = self.slivers
        actions: list[str] = []
        summaries = s.engine.summaries()
        for sliver in self.store.slivers():
            name = sliver.slice
            step = reconcile_step(sliver, summaries.pop(name, None))
            try:
                with s.locked(name):
                    if step == FINISH_DESTROY:
                        s.destroy(name)
                        actions.append(f"finished destroying {name}")
                    elif step in (CREATE, RECREATE):
                        s.materialize(sliver)
                        actions.append(f"{'finished creating' if step == CREATE else 'recreated'} "
                                       f"{name}")
                    elif step == START:
                        s.engine.start(container_name(name))
                        self.store.update_sliver(name, state=RUNNING)
                        actions.append(f"started {name}")
                    elif step == AWAKE:
                        self.store.update_sliver(name, state=RUNNING)
                        actions.append(f"{name} is running again")
                    elif sliver.state == DORMANT:  # its wake rules go in with the ports
                        s.net.park(name)
            except Exception as e:  # one broken sliver must not keep the node down
                log.exception("reconcile %s failed", name)
                actions.append(f"failed {name}: {e}")
        for sliver in self.store.slivers():
            if sliver.desired == RUNNING and sliver.state != DORMANT:
                try:
                    s.attach(sliver)
                except Exception as e:
                    log.exception("reconcile network of %s failed", sliver.slice)
                    actions.append(f"failed network of {sliver.slice}: {e}")
        s.ports.sync()
        for name in summaries:
            s.engine.remove(container_name(name))
            actions.append(f"removed orphan container {container_name(name)}")
        for name in s.state.orphans({x.slice for x in self.store.slivers()}):
            s.state.remove(name)
            actions.append(f"removed orphan account {name}")
        actions += self.expire()
        for a in actions:
            log.info("reconcile: %s", a)
        return actions

    def expire(self) -> list[str]:
        """Release rcaps past their end; destroy slivers left with none."""
        s = self.slivers
        now = self.clock()
        actions: list[str] = []
        for r in self.store.rcaps():
            if r.rspec.end > now:
                continue
            if r.slice is None:
                self.store.delete_rcap(r.rcap)
                actions.append(f"expired rcap {r.rcap}")
                continue
            with s.locked(r.slice):
                rest = [x for x in self.store.rcaps(r.slice) if x.rspec.end > now]
                if rest:
                    self.store.delete_rcap(r.rcap)
                    s.apply_resources(self.store.get_sliver(r.slice))
                    actions.append(f"expired rcap {r.rcap} of {r.slice}")
                elif self.store.find_sliver(r.slice) is not None:
                    s.destroy(r.slice)
                    actions.append(f"expired slice {r.slice}")
                    self.expired(r.slice)
        return actions
