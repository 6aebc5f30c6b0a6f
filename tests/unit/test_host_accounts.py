"""Host accounts of slices: which command removes one, on a faked account database."""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

import pytest

from slicectl.node import accounts
from slicectl.node.accounts import ACCOUNT_GECOS, HostAccounts

pytestmark = pytest.mark.unit


def entry(name: str, gecos: str, home: str) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", 60001, 64000, gecos, home, "/usr/sbin/vsh"))


@pytest.mark.parametrize(("gecos", "home", "removed"), [
    (ACCOUNT_GECOS, "/var/lib/slicectl/slivers/pl_a", True),
    ("someone else", "/var/lib/slicectl/slivers/pl_a", False),   # not ours: kept
    (ACCOUNT_GECOS, "/home/pl_a", False),                        # another node's: kept
])
def test_only_our_account_is_removed_without_a_scan_of_every_process(
        monkeypatch: pytest.MonkeyPatch, gecos: str, home: str, removed: bool) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(accounts.pwd, "getpwnam", lambda name: entry(name, gecos, home))
    monkeypatch.setattr(accounts, "run", lambda argv, **kw: ran.append(argv))
    HostAccounts().remove("pl_a", Path("/var/lib/slicectl/slivers/pl_a"))
    # --root / keeps userdel from reading every process of the host (O(processes))
    assert ran == ([["userdel", "--force", "--root", "/", "pl_a"]] if removed else [])


def test_an_absent_account_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(accounts.pwd, "getpwnam", missing)
    monkeypatch.setattr(accounts, "run", lambda argv, **kw: pytest.fail("ran a command"))
    HostAccounts().remove("pl_a", Path("/var/lib/slicectl/slivers/pl_a"))
