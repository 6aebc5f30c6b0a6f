"""A sliver's user-namespace limits and the host limits that keep root's apart (pure)."""

from __future__ import annotations

from slicectl.core.userns import SLIVER_LIMITS, host_limits, raised


def test_the_host_limit_leaves_root_room_beside_every_sliver_at_its_limit() -> None:
    wanted = host_limits(max_slivers=1000)
    per = SLIVER_LIMITS["max_inotify_instances"]
    assert wanted["fs/inotify/max_user_instances"] - 1000 * per >= per  # root keeps a sliver's worth
    assert wanted["fs/inotify/max_user_watches"] > 1000 * SLIVER_LIMITS["max_inotify_watches"]


def test_host_limits_are_raised_never_lowered() -> None:
    wanted = {"a": 10, "b": 10}
    assert raised({"a": 5, "b": 50}, wanted) == {"a": 10}
    assert raised({"a": 10, "b": 10}, wanted) == {}
