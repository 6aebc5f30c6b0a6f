"""Apply the port manager's firewall plan: our iptables chains, replaced atomically."""

from __future__ import annotations

from slicectl.core.errors import EngineError
from slicectl.core.netplan import jump_rules
from slicectl.node.hostcmd import run

IPTABLES = "iptables"
BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


def _tables(chains: dict[str, str]) -> list[tuple[str, str]]:
    return [("nat", chains["dnat"]), ("nat", chains["snat"]), ("filter", chains["fwd"]),
            ("filter", chains["input"]), ("filter", chains["host"]), ("filter", chains["out"])]


def ensure_jumps(chains: dict[str, str]) -> None:
    """Create our chains if missing and jump to them from the built-in ones (once)."""
    for table, chain in _tables(chains):
        if run([IPTABLES, "-w", "-t", table, "-S", chain], what="iptables", check=False).returncode:
            run([IPTABLES, "-w", "-t", table, "-N", chain], what=f"iptables chain {chain}")
    for table, parent, rule in jump_rules(chains):
        if parent not in BUILTIN and run([IPTABLES, "-w", "-t", table, "-S", parent],
                                         what="iptables", check=False).returncode:
            # The engine makes DOCKER-USER (and jumps to it from FORWARD) when it sets up
            # its networks, which after a reboot can be later than the NM starts: make it
            # now, so our forwarding rules are in place by the time the engine uses it.
            run([IPTABLES, "-w", "-t", table, "-N", parent], what=f"iptables chain {parent}")
        if run([IPTABLES, "-w", "-t", table, "-C", parent, *rule], what="iptables",
               check=False).returncode:
            run([IPTABLES, "-w", "-t", table, "-I", parent, "1", *rule],
                what=f"iptables jump {parent} -> {rule[-1]}")


def apply(rules_text: str) -> None:
    """Replace the contents of our chains in one transaction (iptables-restore --noflush)."""
    run(["iptables-restore", "-w", "--noflush"], what="iptables-restore of slicectl chains",
        input_text=rules_text)


def chain_rules(table: str, chain: str) -> list[str]:
    """The rules of one chain as ``iptables -S`` prints them (without the -N line)."""
    out = run([IPTABLES, "-w", "-t", table, "-S", chain], what="iptables", check=False)
    if out.returncode:
        return []
    return [ln for ln in out.stdout.splitlines() if ln.startswith("-A ")]


def remove(chains: dict[str, str]) -> None:
    """Remove our jumps and chains (for a node manager instance that goes away)."""
    for table, parent, rule in jump_rules(chains):
        while run([IPTABLES, "-w", "-t", table, "-D", parent, *rule], what="iptables",
                  check=False).returncode == 0:
            pass
    for table, chain in _tables(chains):
        run([IPTABLES, "-w", "-t", table, "-F", chain], what="iptables", check=False)
        run([IPTABLES, "-w", "-t", table, "-X", chain], what="iptables", check=False)


def read_back(rules_text: str, table: str, chain: str) -> None:
    """Check that ``chain`` holds as many rules as the plan ``rules_text`` gave it.

    Raises:
        EngineError: naming the chain, the count expected and the count found.
    """
    want = sum(1 for ln in rules_text.splitlines() if ln.startswith(f"-A {chain} "))
    got = len(chain_rules(table, chain))
    if got != want:
        raise EngineError(f"iptables chain {chain}: expected {want} rules after the restore, "
                          f"found {got}")
