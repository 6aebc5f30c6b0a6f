"""The auditor's configuration, passed in (from the environment or the command line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slicectl.core.errors import ValidationError

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
        """From the environment a node service gets (see ``slicectl.node.services``):
        ``SLICECTL_SERVICE_STATE``, ``SLICECTL_SNIFFER_SOCK``, ``SLICECTL_NM_SOCK``,
        ``SLICECTL_SERVICE_PORT``; on the host without them, paths under the node's
        ``SLICECTL_STATE_DIR`` and ``SLICECTL_RUN_DIR``. The auditor's own settings:
        ``SLICECTL_AUDIT_HOST``, ``_OPERATOR``, ``_WINDOW_S``, ``_ROLLUP_S``, ``_MAX_BYTES``,
        ``_ROLLUP_ROWS``.

        This module must not import the rest of slicectl: the service image carries only
        its stdlib-only modules (errors, rpc, sniffrecord).

        Raises:
            ValidationError: a number that is not one.
        """
        run = Path(env.get("SLICECTL_RUN_DIR", "/run/slicectl"))
        state = env.get("SLICECTL_SERVICE_STATE") or str(
            Path(env.get("SLICECTL_STATE_DIR", "/var/lib/slicectl")) / "services" / "auditd")
        return cls(
            state_dir=Path(state),
            sniffer_sock=Path(env.get("SLICECTL_SNIFFER_SOCK",
                                      str(run / "sniffer" / "records.sock"))),
            nm_sock=Path(env.get("SLICECTL_NM_SOCK", str(run / "nm" / "nm.sock"))),
            host=env.get("SLICECTL_AUDIT_HOST", "0.0.0.0"),
            port=_int(env, "SLICECTL_SERVICE_PORT", DEFAULT_PORT),
            operator=env.get("SLICECTL_AUDIT_OPERATOR", ""),
            limits=Limits(
                window_s=_int(env, "SLICECTL_AUDIT_WINDOW_S", int(Limits.window_s)),
                rollup_s=_int(env, "SLICECTL_AUDIT_ROLLUP_S", int(Limits.rollup_s)),
                max_bytes=_int(env, "SLICECTL_AUDIT_MAX_BYTES", Limits.max_bytes),
                rollup_rows=_int(env, "SLICECTL_AUDIT_ROLLUP_ROWS", Limits.rollup_rows,
                                 minimum=1)),
        )


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    text = env.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(key, "a whole number", text) from None
    if value < minimum:
        raise ValidationError(key, f"a number >= {minimum}", value)
    return value
