"""docker-compose (v1, Debian's package) against the testbed engine, for one testbed
project."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from slicectl.core.errors import EngineError
from slicectl.testbed.engine import ENGINE_URL
from slicectl.testbed.layout import Layout

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose" / "testbed.yml"
COMPOSE = "docker-compose"


def env_file(lay: Layout) -> Path:
    return lay.state / "compose.env"


def write_env(lay: Layout, env: dict[str, str]) -> Path:
    """The compose variables as an env file (so the command can be run by hand too)."""
    path = env_file(lay)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    return path


def read_env(lay: Layout) -> dict[str, str]:
    path = env_file(lay)
    if not path.exists():
        return {}
    pairs = (ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)
    return {k: v for k, v in pairs}


def base_argv(lay: Layout) -> list[str]:
    """``docker-compose --env-file ... -p PROJECT -f testbed.yml -f nodes.yml``."""
    if shutil.which(COMPOSE) is None:
        raise EngineError(f"{COMPOSE}: not installed; run scripts/install-host.sh")
    return [COMPOSE, "--env-file", str(env_file(lay)), "-p", lay.project,
            "-f", str(COMPOSE_FILE), "-f", str(lay.nodes_file)]


def compose(lay: Layout, *args: str, check: bool = True, capture: bool = True
            ) -> subprocess.CompletedProcess[str]:
    """Run one docker-compose command of the testbed ``lay``.

    Raises:
        EngineError: it failed (with ``check``); the message carries its last lines.
    """
    env = {**os.environ, "DOCKER_HOST": ENGINE_URL}
    proc = subprocess.run([*base_argv(lay), *args], env=env, text=True, check=False,
                          capture_output=capture)
    if check and proc.returncode:
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-4:])
        raise EngineError(f"docker-compose {' '.join(args)}: exit status {proc.returncode}: "
                          f"{tail}")
    return proc
