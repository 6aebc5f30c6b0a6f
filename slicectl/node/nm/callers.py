"""Who is calling the node manager, and what each kind of caller may do.

Identity comes from the socket's peer (see :mod:`slicectl.ipc.rpc`), never from what the
caller claims. The rules are pure functions of the caller and the sliver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slicectl.core.errors import PermissionDenied
from slicectl.node.store import SliverRow


@dataclass(frozen=True)
class Caller:
    """Who is calling, as established from the socket's peer credentials."""

    uid: int
    pid: int
    slice: str | None = None
    privileged: bool = False
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
        """Root, or a node service: may see every sliver."""
        return self.is_root or self.service is not None


ROOT = Caller(uid=0, pid=0)


def require_privileged(caller: Caller) -> None:
    """Root, or a slice whose rspec has ``nm_privileged``."""
    if caller.is_root or (caller.slice is not None and caller.privileged):
        return
    raise PermissionDenied(f"caller {caller.name}: expected root or a slice with "
                           "nm_privileged, found neither")


def require_manage(caller: Caller, sliver: SliverRow) -> None:
    """Root, or the privileged slice that created ``sliver``."""
    require_privileged(caller)
    if caller.is_root or sliver.created_by == caller.name:
        return
    raise PermissionDenied(f"slice {sliver.slice}: {caller.name} did not create it and "
                           "may not manage it")


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
    """Turns a peer (uid, pid) into a :class:`Caller`.

    Args:
        slivers: this node's sliver rows (for the container id of each).
        privileged: whether a slice's effective rspec has ``nm_privileged``.
        service_of: the node-service name of a container id, or None.
        container_of: the container id in a pid's cgroup, or None for a host process.
    """

    def __init__(self, slivers: Callable[[], list[SliverRow]], privileged: Callable[[str], bool],
                 service_of: Callable[[str], str | None],
                 container_of: Callable[[int], str | None]) -> None:
        self._slivers = slivers
        self._privileged = privileged
        self._service_of = service_of
        self._container_of = container_of

    def identify(self, uid: int, pid: int) -> Caller:
        """Host root, the slice whose container holds ``pid``, or a node service.

        Raises:
            PermissionDenied: any other peer.
        """
        cid = self._container_of(pid)
        if cid is None:
            if uid != 0:
                raise PermissionDenied(f"caller uid {uid}: expected root, found another user")
            return Caller(uid=uid, pid=pid)
        for s in self._slivers():
            if s.container_id == cid:
                return Caller(uid=uid, pid=pid, slice=s.slice, privileged=self._privileged(s.slice))
        service = self._service_of(cid)
        if service is not None:
            return Caller(uid=uid, pid=pid, service=service)
        raise PermissionDenied(f"caller pid {pid}: in container {cid[:12]}, which is no sliver "
                               "of this node")
