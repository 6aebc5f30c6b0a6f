"""The store's traffic counters: kernel readings fold into daily totals across resets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slicectl.core.errors import AdmissionError
from slicectl.core.rspec import parse_rspec
from slicectl.node.store import Store, pick_xid


def test_usage_folds_readings_and_survives_class_resets(tmp_path: Path) -> None:
    store = Store(tmp_path / "nm.sqlite")
    day = "2027-01-15"
    for kernel_bytes, kernel_packets in [(100, 1), (250, 3), (250, 3), (400, 5)]:
        store.add_usage("pl_a", day, kernel_bytes, kernel_packets)
    assert store.usage("pl_a", day) == (400, 5)
    # The class was made anew (sliver re-created): its counter starts again from zero.
    store.add_usage("pl_a", day, 30, 1)
    assert store.usage("pl_a", day) == (430, 6)
    store.reset_last_usage("pl_a")
    store.add_usage("pl_a", day, 50, 2)
    assert store.usage("pl_a", day) == (480, 8)
    # A new day starts from zero but remembers the kernel's last reading.
    store.add_usage("pl_a", "2027-01-16", 80, 3)
    assert store.usage("pl_a", "2027-01-16") == (30, 1)
    store.prune_usage("2027-01-16")
    assert store.usage("pl_a", day) == (0, 0)
    assert store.usage("pl_b", day) == (0, 0)


def test_settings(tmp_path: Path) -> None:
    store = Store(tmp_path / "nm.sqlite")
    assert store.setting("net_cap_kbit", "100000") == "100000"
    store.set_setting("net_cap_kbit", "5000")
    store.set_setting("net_cap_kbit", "6000")
    assert Store(tmp_path / "nm.sqlite").setting("net_cap_kbit", "1") == "6000"
    assert (tmp_path / "nm.sqlite").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("used", "freed", "expect"), [
    (set(), {}, 1),
    ({1, 2}, {}, 3),
    ({1}, {2: 900.0}, 3),                       # never used before recently freed
    ({1, 3}, {2: 900.0}, "the next free at +500 s"),  # only a freed one, in quarantine
    ({1, 3}, {2: 300.0}, 2),                    # out of quarantine
    ({3}, {1: 350.0, 2: 300.0}, 2),             # the one freed longest ago
    ({1, 2, 3}, {}, "found all in use; destroy"),
])
def test_pick_xid_quarantines_freed_xids(used: set[int], freed: dict[int, float],
                                         expect: object) -> None:
    if isinstance(expect, int):
        assert pick_xid(3, used, freed, now=1000.0, quarantine_s=600.0) == expect
    else:
        with pytest.raises(AdmissionError, match=re.escape(str(expect))):
            pick_xid(3, used, freed, now=1000.0, quarantine_s=600.0)


def test_a_destroyed_slivers_xid_is_not_reused_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    for i, name in enumerate(("pl_a", "pl_b")):
        store.add_rcap(f"{i:032x}", parse_rspec({"end": "1d"}, 0.0), "root")
        store.begin_bind(name, f"{i:032x}", "root", {}, 10)
    assert store.get_sliver("pl_a").xid == 1
    store.delete_sliver("pl_a")
    store.add_rcap(f"{9:032x}", parse_rspec({"end": "1d"}, 0.0), "root")
    new, _ = store.begin_bind("pl_c", f"{9:032x}", "root", {}, 10)
    assert new.xid == 3   # not pl_a's 1
