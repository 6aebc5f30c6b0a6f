"""Running host tools: one place that turns a failed command into a clear EngineError."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from slicectl.core.errors import EngineError


def run(
    argv: Sequence[str], *, what: str, check: bool = True, input_text: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and capture its output.

    Raises:
        EngineError: naming ``what`` and the tool's last line of stderr, when the tool is
            missing, times out, or (with ``check``) exits non-zero.
    """
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, input=input_text, timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise EngineError(f"{what}: {argv[0]} is not installed (run scripts/install-host.sh)") from e
    except subprocess.TimeoutExpired as e:
        raise EngineError(f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from e
    if check and cp.returncode != 0:
        last = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        reason = last[-1] if last else f"exit status {cp.returncode}"
        raise EngineError(f"{what}: {' '.join(argv[:3])} failed: {reason}")
    return cp
