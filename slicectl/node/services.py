"""Node-service sidecars: the sensor server and the traffic auditor, each in a container.

A node service is an aiohttp program from this repository that runs in its own container
on the host's network, next to the node manager. This module plans those containers as
plain data (:func:`service_plan`, pure) and applies the plans to the engine
(:class:`ServiceRunner`, thin), and builds the one image every service runs from
(:func:`ensure_service_image`): the reference image's Debian base plus a venv holding
aiohttp at the project venv's version and the stdlib-only project code the services import
(never docker or pyroute2).

What a service container gets, and nothing more:

- the host network (it listens on a node port; the node firewall decides who reaches it);
- no capabilities, except NET_BIND_SERVICE for a port under 1024;
- read-only mounts of the NM socket directory (it calls the NM as a ``service`` caller,
  allowed read-only methods only), the admin sniffer's socket directory, and the cgroup v1
  controllers it reads (cpu, cpuacct, memory: each controller separately, because Docker
  20.10 makes only the top of a recursive bind read-only);
- for services that keep data, a state directory of its own under the node's state dir.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from slicectl.core.errors import EngineError, ValidationError
from slicectl.core.labels import LABEL_KIND, LABEL_NODE, LABEL_PREFIX, LABEL_SERVICE
from slicectl.core.netplan import chain_names, input_rules
from slicectl.node import firewall
from slicectl.node.config import NodeConfig
from slicectl.node.dockerd import Say
from slicectl.node.image import build_image, ensure_base_image, has_image

LABEL_PLAN = f"{LABEL_PREFIX}.plan"
SERVICE_REPO = "slicectl/service"
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_SRC = REPO_ROOT / "images" / "service"

#: Project code copied into the service image: stdlib-only modules of slicectl, and the
#: service packages (those present in this checkout).
#: The stdlib-only layers of slicectl that services run on, shipped whole.
SHARED_PACKAGES = ("slicectl/core", "slicectl/ipc")
SERVICE_PACKAGES = ("sensors", "auditd")
#: Third-party packages of the service venv, at the versions the project venv holds.
SERVICE_REQUIREMENTS = ("aiohttp",)

#: Paths inside a service container.
IN_NM_DIR = "/run/slicectl/nm"
IN_SNIFFER_DIR = "/run/slicectl/sniffer"
IN_CGROUP = "/host/cgroup"
IN_STATE = "/var/lib/slicectl-service"
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "memory")
HOST_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ServiceMount:
    """An extra bind mount a service needs (read-only unless said otherwise)."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ServiceSpec:
    """One node service.

    Args:
        name: short name (``sensors``); the container is ``slicectl-<node_id>-<name>``.
        module: the Python module the service venv runs (``python -m <module>``).
        port: the TCP port it listens on (on the host's network).
        keeps_state: mount a state directory of its own at :data:`IN_STATE`.
        local_only: the node firewall drops this port unless it arrives on lo or the
            node's bridge (the sensor server); False for pages meant for outsiders.
        ready_path: the path a GET to which answers 200 once the service is ready.
        mounts: extra mounts.
        args: extra command-line arguments.
    """

    name: str
    module: str
    port: int
    keeps_state: bool = False
    local_only: bool = False
    ready_path: str = "/"
    mounts: tuple[ServiceMount, ...] = ()
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isascii() or not self.name.replace("-", "").isalnum():
            raise ValidationError("service name", "letters, digits and dashes", self.name)
        if not 1 <= self.port <= 65535:
            raise ValidationError(f"service {self.name} port", "1..65535", self.port)


SENSORS_PORT = 33080
SENSORS = ServiceSpec(name="sensors", module="sensors", port=SENSORS_PORT, local_only=True)
AUDITD_PORT = 80
#: The traffic auditor: pages for outsiders on node:80, its SQLite store in its state dir.
AUDITD = ServiceSpec(name="auditd", module="auditd", port=AUDITD_PORT, keeps_state=True,
                     ready_path="/index.json")
#: Every service a node runs, in start order. A new service adds its
#: spec here and its package name to :data:`SERVICE_PACKAGES`.
NODE_SERVICES: tuple[ServiceSpec, ...] = (SENSORS, AUDITD)


def node_services(ports: Mapping[str, int] | None = None) -> list[ServiceSpec]:
    """The services a node runs; ``ports`` moves a service (by name) to another port
    (private nodes must not take the node's own ports)."""
    ports = ports or {}
    out = []
    for spec in NODE_SERVICES:
        port = ports.get(spec.name, spec.port)
        out.append(replace(spec, port=port))
    return out


def service_container_name(cfg: NodeConfig, name: str) -> str:
    return f"slicectl-{cfg.node_id}-{name}"


def service_state_dir(cfg: NodeConfig, name: str) -> Path:
    return cfg.state_dir / "services" / name


@dataclass(frozen=True)
class ServicePlan:
    name: str
    image: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Host directories that must exist before the container is created.
    dirs: tuple[Path, ...] = ()


def _bind(source: Path, target: str, read_only: bool = True) -> dict[str, Any]:
    return {"Type": "bind", "Source": str(source), "Target": target, "ReadOnly": read_only}


def service_env(spec: ServiceSpec, cfg: NodeConfig) -> dict[str, str]:
    env = {
        "SLICECTL_NODE_ID": cfg.node_id,
        "SLICECTL_HOSTNAME": cfg.hostname,
        "SLICECTL_SERVICE": spec.name,
        "SLICECTL_SERVICE_PORT": str(spec.port),
        "SLICECTL_NM_SOCK": f"{IN_NM_DIR}/{cfg.nm_sock.name}",
        "SLICECTL_SNIFFER_SOCK": f"{IN_SNIFFER_DIR}/records.sock",
        "SLICECTL_CGROUP_ROOT": IN_CGROUP,
        "SLICECTL_CGROUP_PARENT": cfg.cgroup_parent,
        "SLICECTL_BRIDGE": cfg.bridge,
        "SLICECTL_SUBNET": cfg.subnet,
        "SLICECTL_AUDIT_OPERATOR": cfg.operator,
        "PYTHONUNBUFFERED": "1",
    }
    if spec.keeps_state:
        env["SLICECTL_SERVICE_STATE"] = IN_STATE
    return env


def service_plan(spec: ServiceSpec, cfg: NodeConfig, image: str) -> ServicePlan:
    """The ``containers.create`` arguments for one node service (pure)."""
    mounts = [
        _bind(cfg.nm_sock_dir, IN_NM_DIR),
        _bind(cfg.sniffer_dir, IN_SNIFFER_DIR),
        *(_bind(HOST_CGROUP / c, f"{IN_CGROUP}/{c}") for c in CGROUP_CONTROLLERS),
    ]
    dirs = [cfg.nm_sock_dir, cfg.sniffer_dir]
    if spec.keeps_state:
        mounts.append(_bind(service_state_dir(cfg, spec.name), IN_STATE, read_only=False))
        dirs.append(service_state_dir(cfg, spec.name))
    mounts += [_bind(m.source, m.target, m.read_only) for m in spec.mounts]
    name = service_container_name(cfg, spec.name)
    kwargs: dict[str, Any] = {
        "name": name,
        "command": ["/opt/venv/bin/python", "-m", spec.module, *spec.args],
        "labels": {
            LABEL_KIND: "service",
            LABEL_NODE: cfg.node_id,
            LABEL_SERVICE: spec.name,
        },
        "environment": service_env(spec, cfg),
        "network_mode": "host",
        # the node's own services read the host's cgroups and sockets: the host's user
        # namespace (slivers get the engine's remapped one)
        "userns_mode": "host",
        "cap_drop": ["ALL"],
        "cap_add": ["NET_BIND_SERVICE"] if spec.port < 1024 else [],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": "size=16m"},
        "mounts": mounts,
        "init": True,
        "detach": True,
        "restart_policy": {"Name": "unless-stopped"},
        "log_config": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
        "pids_limit": 256,
        "mem_limit": 256 << 20,
    }
    digest = hashlib.sha256(json.dumps([image, kwargs], sort_keys=True).encode()).hexdigest()
    kwargs["labels"][LABEL_PLAN] = digest[:16]
    return ServicePlan(name=name, image=image, kwargs=kwargs, dirs=tuple(dirs))


# the image --------------------------------------------------------------------------------

def requirement_pins() -> list[str]:
    """``name==version`` of each service requirement, as installed in this venv."""
    try:
        return [f"{r}=={importlib.metadata.version(r)}" for r in SERVICE_REQUIREMENTS]
    except importlib.metadata.PackageNotFoundError as e:
        raise EngineError(f"service image: expected {e.name} in the project venv (pip install "
                          "-e '.[services]'), found it missing") from e


def service_sources(root: Path = REPO_ROOT) -> list[tuple[Path, str]]:
    """(host file, path in the build context) of everything the image is built from."""
    out = [(p, p.name) for p in sorted((root / "images" / "service").iterdir()) if p.is_file()]
    out.append((root / "slicectl" / "__init__.py", "app/slicectl/__init__.py"))
    for pkg in (*SHARED_PACKAGES, *SERVICE_PACKAGES):
        for p in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            out.append((p, f"app/{p.relative_to(root)}"))
    return out


def service_image_hash(base_tag: str, pins: list[str], root: Path = REPO_ROOT) -> str:
    h = hashlib.sha256(f"{base_tag}\n{sys.version_info[:2]}\n{' '.join(pins)}\n".encode())
    for src, rel in service_sources(root):
        h.update(rel.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:12]


def _pip_target(pins: list[str], target: Path, say: Say) -> None:
    """Install the pinned requirements into ``target`` with this interpreter's pip; the
    image runs the same Debian python3, so the wheels fit."""
    say(f"      pip install {' '.join(pins)} into the service venv")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile",
                           "--only-binary=:all:", "--target", str(target), *pins],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise EngineError(f"service image: pip install {' '.join(pins)} failed: {tail}")


def ensure_service_image(client: docker.DockerClient, env: Mapping[str, str], say: Say,
                         root: Path = REPO_ROOT) -> str:
    """Build ``slicectl/service:<hash>`` unless present; return its tag."""
    pins = requirement_pins()
    base_tag = ensure_base_image(client, env, say)
    tag = f"{SERVICE_REPO}:{service_image_hash(base_tag, pins, root)}"
    if has_image(client, tag):
        return tag
    say(f"building the service image {tag}")
    with tempfile.TemporaryDirectory(prefix="slicectl-svc-") as tmp:
        ctx = Path(tmp)
        for src, rel in service_sources(root):
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, ctx / rel)
        _pip_target(pins, ctx / "site", say)
        build_image(client, ctx, tag, base_tag, "service", say)
    say(f"service image ready: {tag}")
    return tag


# applying plans ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ServiceStatus:
    name: str
    container: str
    state: str
    port: int
    image: str


class ServiceRunner:
    """Creates, replaces, stops and removes one node's service containers.

    Args:
        client: a docker-py client for the node's engine.
        cfg: the node's configuration.
    """

    def __init__(self, client: docker.DockerClient, cfg: NodeConfig) -> None:
        self.client = client
        self.cfg = cfg

    def _get(self, name: str) -> Container | None:
        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        labels = c.labels
        if labels.get(LABEL_NODE) != self.cfg.node_id or labels.get(LABEL_KIND) != "service":
            raise EngineError(f"container {name}: expected none or this node's service, found "
                              "a container slicectl did not create")
        return c

    def ensure(self, spec: ServiceSpec, image: str) -> Container:
        """Make the service run its current plan: create it, or replace it when its image or
        plan changed, or start it when stopped."""
        plan = service_plan(spec, self.cfg, image)
        for d in plan.dirs:
            d.mkdir(parents=True, exist_ok=True)
        c = self._get(plan.name)
        if c is not None and c.labels.get(LABEL_PLAN) != plan.kwargs["labels"][LABEL_PLAN]:
            c.remove(force=True)
            c = None
        if c is None:
            try:
                c = self.client.containers.create(plan.image, **plan.kwargs)
            except docker.errors.APIError as e:
                raise EngineError(f"service {spec.name}: the engine refused to create "
                                  f"{plan.name}: {e.explanation}") from e
        c.reload()
        if c.status != "running":
            try:
                c.start()
            except docker.errors.APIError as e:
                raise EngineError(f"service {spec.name}: could not start {plan.name}: "
                                  f"{e.explanation}") from e
        return c

    def wait_ready(self, spec: ServiceSpec, timeout_s: float = 30) -> None:
        """Poll ``GET http://127.0.0.1:<port><ready_path>`` until it answers 200.

        Raises:
            EngineError: no 200 within ``timeout_s``; the message has the container's log tail.
        """
        url = f"http://127.0.0.1:{spec.port}{spec.ready_path}"
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"status {r.status}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            c = self._get(service_container_name(self.cfg, spec.name))
            if c is not None and c.status == "exited":
                break
            time.sleep(0.1)
        c = self._get(service_container_name(self.cfg, spec.name))
        tail = c.logs(tail=3).decode(errors="replace").strip().replace("\n", " | ") if c else ""
        raise EngineError(f"service {spec.name}: expected {url} to answer 200 within "
                          f"{timeout_s:.0f}s, found {last} (log: {tail})")

    def up(self, specs: list[ServiceSpec], image: str, say: Say) -> None:
        """Close node-local ports to outsiders, then ensure every service and wait for it."""
        chains = chain_names(self.cfg.node_id)
        firewall.ensure_jumps(chains)
        text = input_rules([s.port for s in specs if s.local_only], self.cfg.bridge, chains)
        firewall.apply(text)
        firewall.read_back(text, "filter", chains["input"])
        for spec in specs:
            self.ensure(spec, image)
        for spec in specs:
            self.wait_ready(spec)
            say(f"service {spec.name} ready on port {spec.port}")

    def _ours(self) -> list[Container]:
        return list(self.client.containers.list(all=True, filters={"label": [
            f"{LABEL_NODE}={self.cfg.node_id}", f"{LABEL_KIND}=service"]}))

    def stop_all(self, timeout: int = 5) -> int:
        ours = [c for c in self._ours() if c.status == "running"]
        for c in ours:
            c.stop(timeout=timeout)
        return len(ours)

    def remove_all(self) -> int:
        ours = self._ours()
        for c in ours:
            c.remove(force=True)
        return len(ours)

    def status(self) -> list[ServiceStatus]:
        out = []
        for c in self._ours():
            env = dict(e.split("=", 1) for e in c.attrs["Config"].get("Env") or [] if "=" in e)
            out.append(ServiceStatus(c.labels.get(LABEL_SERVICE, "?"), c.name, c.status,
                                     int(env.get("SLICECTL_SERVICE_PORT", "0")),
                                     str(c.attrs["Config"].get("Image", ""))))
        return sorted(out, key=lambda s: s.name)


def start_services(cfg: NodeConfig, client: docker.DockerClient, env: Mapping[str, str],
                   say: Say, ports: Mapping[str, int] | None = None) -> list[ServiceSpec]:
    """Build the service image if needed and bring every node service up and ready."""
    image = ensure_service_image(client, env, say)
    specs = node_services({"sensors": cfg.sensors_port, "auditd": cfg.audit_port,
                           **(ports or {})})
    ServiceRunner(client, cfg).up(specs, image, say)
    return specs
