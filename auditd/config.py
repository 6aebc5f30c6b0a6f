"""The auditor's configuration, passed in (from the environment or the command line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slicectl.config import NodeConfig
from slicectl.errors import ValidationError

from .store import Limits

DEFAULT_PORT = 80


@dataclass(frozen=True)
class AuditConfig:
    """Where the auditor reads, stores and listens.

    Args:
        state_dir: holds ``audit.sqlite``.
        sniffer_sock: the admin sniffer's record socket (``<run_dir>/sniffer/records.sock``).
        nm_sock: the node manager's socket (descriptions, contacts, node facts).
        host, port: where the pages are served (port 80 on a node).
        operator: who runs the node, shown on ``/`` (e.g. "Example Site <ops@example.org>").
        limits: retention windows and the disk bound.
    """

    state_dir: Path
    sniffer_sock: Path
    nm_sock: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    operator: str = ""
    limits: Limits = field(default_factory=Limits)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "audit.sqlite"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuditConfig:
        """From ``SLICECTL_AUDIT_*`` (and the node's ``SLICECTL_STATE_DIR``/``RUN_DIR``).

        Raises:
            ValidationError: a number that is not one.
        """
        node = NodeConfig.from_env(env)
        return cls(
            state_dir=Path(env.get("SLICECTL_AUDIT_STATE_DIR", str(node.state_dir / "auditd"))),
            sniffer_sock=Path(env.get("SLICECTL_AUDIT_SNIFFER",
                                      str(node.run_dir / "sniffer" / "records.sock"))),
            nm_sock=Path(env.get("SLICECTL_AUDIT_NM", str(node.nm_sock))),
            host=env.get("SLICECTL_AUDIT_HOST", "0.0.0.0"),
            port=_int(env, "SLICECTL_AUDIT_PORT", DEFAULT_PORT),
            operator=env.get("SLICECTL_AUDIT_OPERATOR", ""),
            limits=Limits(
                window_s=_int(env, "SLICECTL_AUDIT_WINDOW_S", int(Limits.window_s)),
                rollup_s=_int(env, "SLICECTL_AUDIT_ROLLUP_S", int(Limits.rollup_s)),
                max_bytes=_int(env, "SLICECTL_AUDIT_MAX_BYTES", Limits.max_bytes)),
        )


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    text = env.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(key, "a whole number", text) from None
    if value < 0:
        raise ValidationError(key, "a number >= 0", value)
    return value
