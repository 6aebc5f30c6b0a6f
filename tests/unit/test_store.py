"""The store's traffic counters: kernel readings fold into daily totals across resets."""

from __future__ import annotations

from pathlib import Path

from slicectl.node.store import Store


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
