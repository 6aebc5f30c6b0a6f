"""Who is calling the node manager, and what each kind of caller may do.

Identity comes from the socket's peer, pinned at connect time (see
:mod:`slicectl.node.procfs`), never from what the caller claims.
The rules are pure functions of the caller and the sliver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slicectl.core.errors import PermissionDenied
from slicectl.core.rspec import RSpec
from slicectl.node.procfs import PinnedPeer
from slicectl.node.store import SliverRow


@dataclass(frozen=True)
class Caller:
    """Who is calling, as established from the socket's peer credentials."""

    uid: int
    pid: int
    slice: str | None = None
    privileged: bool = False
    #: the site's admin sliver (rspec ``admin``): the ``admin_*`` methods and reads only
    admin: bool = False
    #: the node agent's sliver (PLC's node manager): besides root, may grant ``admin``
    agent: bool = False
    #: a node-service sidecar of this node (read-only methods only, see api.SERVICE_METHODS)
    service: str | None = None

    @property
    def name(self) -> str:
        if self.service is not None:
            return f"service:{self.service}"
        return "root" if self.slice is None else f"slice:{self.slice}"

    @property
    def is_root(self) -> bool:
        return self.slice is None and self.service is None and self.uid == 0

    @property
    def reads_all(self) -> bool:
        """Root, a node service, or the admin sliver: may see every sliver."""
        return self.is_root or self.service is not None or self.admin


ROOT = Caller(uid=0, pid=0)


def require_privileged(caller: Caller) -> None:
    """Root, or a slice whose rspec has ``nm_privileged``."""
    if caller.is_root or (caller.slice is not None and caller.privileged):
        return
    raise PermissionDenied(f"caller {caller.name}: expected root or a slice with "
                           "nm_privileged, found neither")


def require_admin(caller: Caller, what: str) -> None:
    """Root, or the site's admin sliver (a slice whose rspec has ``admin``)."""
    if caller.is_root or (caller.slice is not None and caller.admin):
        return
    raise PermissionDenied(f"{what}: expected root or a slice with the admin right, found "
                           f"{caller.name}")


def may_grant(caller: Caller, right: str, spec: RSpec) -> bool:
    """Whether ``caller`` may acquire ``spec``, which has ``right`` (``nm_privileged``,
    ``admin_sniffer``, ``admin``): host root any; the node agent ``admin`` (for the
    site's admin sliver), and ``admin_sniffer`` only beside it."""
    if caller.is_root:
        return True
    return caller.agent and (right == "admin" or (right == "admin_sniffer" and spec.admin))


def require_manage(caller: Caller, sliver: SliverRow) -> None:
    """Root, or the privileged slice that created ``sliver``."""
    require_privileged(caller)
    if caller.is_root or sliver.created_by == caller.name:
        return
    raise PermissionDenied(f"slice {sliver.slice}: {caller.name} did not create it and "
                           "may not manage it")


def require_name(caller: Caller, name: str, owner: str | None) -> None:
    """Root, or the creator that owns the slice name (or anyone, for a name nobody owns):
    a privileged slice cannot squat another creator's slice name."""
    if caller.is_root or owner is None or owner == caller.name:
        return
    raise PermissionDenied(f"slice {name}: the name belongs to {owner} on this node, not "
                           f"{caller.name}; only it or root may bind it")


def require_read(caller: Caller, sliver: SliverRow) -> None:
    """Root, a node service, the sliver itself, or its creator."""
    if not (caller.reads_all or caller.slice == sliver.slice):
        require_manage(caller, sliver)


def require_root(caller: Caller, what: str) -> None:
    if not caller.is_root:
        raise PermissionDenied(f"{what}: expected a node service running as root, "
                               f"found {caller.name}")


def may_see(caller: Caller, sliver: SliverRow) -> bool:
    """Whether ``list`` shows ``sliver`` to ``caller``."""
    return caller.reads_all or sliver.created_by == caller.name


class Callers:
    """Turns a peer pinned at connect time into a :class:`Caller`.

    Args:
        sliver_in: this node's sliver whose container has a given id, or None.
        rights: a slice's effective (``nm_privileged``, ``admin``) rights.
        service_of: the node-service name of a container id, or None.
        agent_slice: the node agent's slice; its sliver is the agent only if root made it
            and it is ``nm_privileged``.
    """

    def __init__(self, sliver_in: Callable[[str], SliverRow | None],
                 rights: Callable[[str], tuple[bool, bool]],
                 service_of: Callable[[str], str | None], agent_slice: str = "") -> None:
        self._sliver_in = sliver_in
        self._rights = rights
        self._service_of = service_of
        self._agent_slice = agent_slice

    def _slice_in(self, container_id: str) -> str | None:
        row = self._sliver_in(container_id)
        return None if row is None else row.slice

    def slice_in(self, container_id: str) -> str | None:
        """The slice whose sliver is the container ``container_id``, or None."""
        return self._slice_in(container_id)

    def service_of(self, container_id: str) -> str | None:
        return self._service_of(container_id)

    def identify(self, peer: PinnedPeer) -> Caller:
        """Host root, the slice whose container the peer runs in, or a node service;
        checked again at every request (a peer whose process is gone is refused).

        Raises:
            PermissionDenied: any other peer, or one that cannot be positively identified.
        """
        who = peer.who(self._slice_in, self._service_of)
        if who.kind == "slice":
            privileged, admin = self._rights(who.name)
            row = self._sliver_in(peer.container_id or "")
            agent = (privileged and who.name == self._agent_slice and row is not None
                     and row.created_by == "root")
            # an admin sliver is never privileged, whatever else its rcaps hold
            return Caller(uid=peer.uid, pid=peer.pid, slice=who.name,
                          privileged=privileged and not admin, admin=admin, agent=agent)
        if who.kind == "service":
            return Caller(uid=peer.uid, pid=peer.pid, service=who.name)
        return Caller(uid=peer.uid, pid=peer.pid)
