"""Per-namespace kernel limits of a sliver's user namespace (pure).

Counts such as inotify instances are kept per user and namespace, and charged up the
chain of namespaces to each namespace's creator: every sliver's namespace is made by host
root (the engine), so a sliver's root that takes all it may of one also takes it from
host root, unless (1) the sliver's own namespace holds a limit of its own and (2) the
host's limit for its root is far above the sum of what all slivers may take. The node
manager sets (1) in each sliver and (2) once on the host.
"""

from __future__ import annotations

#: What one sliver's namespace may hold (``/proc/sys/user/<name>`` in it): what an
#: ordinary Linux user gets.
SLIVER_LIMITS: dict[str, int] = {
    "max_inotify_instances": 128,
    "max_inotify_watches": 8192,
}

#: The host-wide (initial namespace) sysctl behind each limit.
HOST_SYSCTL = {
    "max_inotify_instances": "fs/inotify/max_user_instances",
    "max_inotify_watches": "fs/inotify/max_user_watches",
}


def host_limits(max_slivers: int, headroom: int = 1024) -> dict[str, int]:
    """The host's limits that keep root's own budget untouched by ``max_slivers`` slivers
    each at its limit (with ``headroom`` instances left over per limit for the host)."""
    return {HOST_SYSCTL[k]: v * (max_slivers + 1) + headroom * (1 if v < 1024 else 8)
            for k, v in SLIVER_LIMITS.items()}


def raised(current: dict[str, int], wanted: dict[str, int]) -> dict[str, int]:
    """The host sysctls to write: those below what is wanted (never lowered)."""
    return {k: v for k, v in wanted.items() if current.get(k, 0) < v}
