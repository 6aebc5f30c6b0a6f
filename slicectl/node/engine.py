"""The thin layer that applies container plans to a Docker engine and reads them back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from slicectl.core.containerplan import ContainerPlan, NodeFacts
from slicectl.core.errors import EngineError, StateError
from slicectl.core.labels import LABEL_KIND, LABEL_NODE, LABEL_SERVICE, SLIVER_PREFIX
from slicectl.core.poolplan import pool_xid
from slicectl.core.userns import SLIVER_LIMITS
from slicectl.node.hostcmd import run
from slicectl.node.nm.boundary import SliverStatus

CGROUP_ROOT = Path("/sys/fs/cgroup")

# docker-py's update() lacks pids_limit, so updates go to the engine API by its own names.
_UPDATE_FIELDS = {
    "cpu_shares": "CpuShares", "cpu_period": "CpuPeriod", "cpu_quota": "CpuQuota",
    "mem_limit": "Memory", "memswap_limit": "MemorySwap", "pids_limit": "PidsLimit",
}


def engine_client(url: str, timeout: int = 120) -> docker.DockerClient:
    return docker.DockerClient(base_url=url, timeout=timeout)


@contextmanager
def engine_session(url: str, timeout: int = 120) -> Iterator[docker.DockerClient]:
    """A client of the engine at ``url``, closed when the block ends."""
    client = engine_client(url, timeout)
    try:
        yield client
    finally:
        client.close()


def waits_for_usr1(status: str) -> bool:
    """Whether a process catches SIGUSR1, from its ``/proc/PID/status`` text (``SigCgt``):
    only then may it be sent one (its default action ends the process)."""
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))
    return False


class SliverEngine:
    """Creates, finds, changes and removes one node's sliver containers.

    Args:
        client: a docker-py client for the node's engine (passed in, never global).
        node_id: the node whose containers this instance manages (label ``org.slicectl.node``).
    """

    def __init__(self, client: docker.DockerClient, node_id: str, network: str = "") -> None:
        self.client = client
        self.node_id = node_id
        #: the engine network whose address :meth:`state` reports
        self.network = network

    def facts(self, *, image: str, network: str, cgroup_parent: str, hostname: str,
              nm_sock_dir: Path, subnet: str, quota_counts_image: bool,
              shim_dir: Path | None = None, sniffer_dir: Path | None = None,
              vsys_dir: Path | None = None) -> NodeFacts:
        try:
            img = self.client.images.get(image)
        except docker.errors.ImageNotFound as e:
            raise EngineError(f"reference image {image}: not found in the engine; build it "
                              "with `slicectl node up`") from e
        try:
            self.client.networks.get(network)
        except docker.errors.NotFound as e:
            raise EngineError(f"network {network}: not found in the engine; create it with "
                              "`slicectl node up`") from e
        return NodeFacts(
            node_id=self.node_id, ncpus=os.cpu_count() or 1, image=img.id,
            image_bytes=int(img.attrs.get("Size", 0)), network=network,
            cgroup_parent=cgroup_parent, hostname=hostname, nm_sock_dir=nm_sock_dir,
            subnet=subnet, quota_counts_image=quota_counts_image, shim_dir=shim_dir,
            sniffer_dir=sniffer_dir, vsys_dir=vsys_dir,
        )

    def _filters(self) -> dict[str, Any]:
        return {"label": [f"{LABEL_NODE}={self.node_id}", f"{LABEL_KIND}=sliver"]}

    def create(self, plan: ContainerPlan) -> str:
        """Create the container, or adopt ours of that name left by an interrupted bind;
        return its id.

        Raises:
            StateError: a container of that name exists that is not this node's sliver.
            EngineError: the engine refused the plan.
        """
        deadline = time.monotonic() + 30
        while True:
            try:
                return str(self.client.containers.create(plan.image, **plan.kwargs).id)
            except docker.errors.APIError as e:
                if e.status_code != 409:
                    raise EngineError(f"container {plan.name}: the engine refused to create it: "
                                      f"{e.explanation}") from e
            # The name is taken: by our container from an interrupted bind (adopt it), or
            # by a create or remove the engine is still finishing (wait for it).
            try:
                existing = self.client.containers.get(plan.name)
                break
            except docker.errors.NotFound:
                if time.monotonic() > deadline:
                    raise EngineError(f"container {plan.name}: the name stays taken by a "
                                      "container the engine cannot show; restart the engine") from None
                time.sleep(0.1)
        labels = existing.labels
        if labels.get(LABEL_NODE) != self.node_id or labels.get(LABEL_KIND) != "sliver":
            raise StateError(f"container {plan.name}: expected none or this node's sliver, found "
                             "a container slicectl's node manager did not create")
        return str(existing.id)

    def _get(self, name: str) -> Container | None:
        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        return c if c.labels.get(LABEL_NODE) == self.node_id else None

    def _require(self, name: str) -> Container:
        c = self._get(name)
        if c is None:
            raise EngineError(f"container {name}: expected this node's sliver, found none")
        return c

    def start(self, name: str) -> None:
        try:
            self._require(name).start()
        except docker.errors.APIError as e:
            raise EngineError(f"container {name}: could not start: {e.explanation}") from e

    def confine(self, name: str, pid: int) -> None:
        """Give the user namespace of sliver ``name`` (its init is ``pid``) its own limits
        (:data:`slicectl.core.userns.SLIVER_LIMITS`), so what its root takes of per-user
        counts stops there and does not reach host root, the namespace's creator."""
        writes = " && ".join(f"echo {v} > /proc/sys/user/{k}" for k, v in SLIVER_LIMITS.items())
        run(["nsenter", "--target", str(pid), "--user", "--", "sh", "-c", writes],
            what=f"user namespace limits of {name}")

    def stop(self, name: str, timeout: int = 5) -> None:
        self._require(name).stop(timeout=timeout)

    def state(self, name: str) -> SliverStatus | None:
        """What the engine says of our container ``name`` (one inspect), or None."""
        c = self._get(name)
        if c is None:
            return None
        state = c.attrs["State"]
        nets = c.attrs["NetworkSettings"].get("Networks") or {}
        address = (nets.get(self.network) or {}).get("IPAddress") or None
        return SliverStatus(str(c.id), str(c.status), state.get("Pid") or None, address)

    def remove(self, name: str) -> bool:
        """Force-remove our container ``name`` (absent is fine); return whether there was
        one."""
        c = self._get(name)
        if c is None:
            return False
        try:
            c.remove(force=True, v=True)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: a removal already in progress; wait for it
                raise EngineError(f"container {name}: could not remove it: {e.explanation}") from e
        deadline = time.monotonic() + 60
        while self._get(name) is not None:
            if time.monotonic() > deadline:
                raise EngineError(f"container {name}: still there 60 s after removal; check the "
                                  "engine log /var/log/slicectl/dockerd.log")
            time.sleep(0.1)
        return True

    def version(self) -> str:
        return str(self.client.version().get("Version", ""))

    @staticmethod
    def pid_counts(cgroup_parent: str, container_ids: list[str]) -> dict[str, int]:
        """Processes in each container's pids cgroup now (kernel files, no engine call);
        a container that has none (not running) is left out."""
        base = CGROUP_ROOT / "pids" / cgroup_parent.strip("/")
        out: dict[str, int] = {}
        for cid in container_ids:
            try:
                out[cid] = int((base / cid / "pids.current").read_text())
            except (OSError, ValueError):
                continue
        return out

    def sliver_starts(self) -> Iterator[str]:
        """Slice names of this node's slivers as the engine starts them (blocks). A
        sliver's slice is in its container's name (a pooled sliver has no slice label)."""
        filters = {**self._filters(), "event": "start", "type": "container"}
        for ev in self.client.events(filters=filters, decode=True):
            name = str(ev.get("Actor", {}).get("Attributes", {}).get("name", ""))
            if name.startswith(SLIVER_PREFIX) and len(name) > len(SLIVER_PREFIX):
                yield name[len(SLIVER_PREFIX):]

    def service_of(self, container_id: str) -> str | None:
        """The service name of ``container_id`` if it is one of this node's service
        sidecars (labels ``kind=service``, ``node=<node_id>``), else None."""
        try:
            labels = self.client.api.inspect_container(container_id)["Config"]["Labels"] or {}
        except docker.errors.NotFound:
            return None
        if labels.get(LABEL_KIND) == "service" and labels.get(LABEL_NODE) == self.node_id:
            return str(labels.get(LABEL_SERVICE, "")) or None
        return None

    def _listed(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self.client.api.containers(all=True, filters=self._filters())
        return [(str((r.get("Names") or ["/"])[0]).removeprefix("/"), r) for r in rows]

    def summaries(self) -> dict[str, dict[str, Any]]:
        """One engine call: this node's slivers by slice (from the container's name,
        ``sliver-<slice>``), as the engine lists them; pooled ones are left out."""
        return {name[len(SLIVER_PREFIX):]: r for name, r in self._listed()
                if name.startswith(SLIVER_PREFIX)}

    def pool_summaries(self) -> dict[int, dict[str, Any]]:
        """One engine call: this node's pooled slivers by xid, as the engine lists them."""
        out: dict[int, dict[str, Any]] = {}
        for name, r in self._listed():
            xid = pool_xid(self.node_id, name)
            if xid is not None:
                out[xid] = r
        return out

    def rename(self, container_id: str, name: str) -> bool:
        """Give our container ``container_id`` the name ``name`` (a claimed pooled sliver);
        False if there is no such container of ours."""
        c = self._get(container_id)
        if c is None:
            return False
        if c.name == name:
            return True
        try:
            c.rename(name)
        except docker.errors.APIError as e:
            raise EngineError(f"container {c.name}: could not rename it {name}: "
                              f"{e.explanation}") from e
        return True

    def nudge(self, pid: int) -> None:
        """Tell the sliver init's child (slicectl-vinit under docker-init ``pid``) that its
        identity is written: SIGUSR1, so a pooled sliver's init goes on at once."""
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return
        for child in children:
            try:
                if waits_for_usr1(Path(f"/proc/{child}/status").read_text()):
                    os.kill(int(child), signal.SIGUSR1)
            except (OSError, ValueError):
                continue

    def update(self, name: str, resources: dict[str, Any]) -> None:
        """Change a container's CPU, memory and pid limits live (the engine's update
        endpoint by its own field names: docker-py's ``update_container`` has no pids)."""
        c = self._require(name)
        body = {_UPDATE_FIELDS[k]: v for k, v in resources.items()}
        api = self.client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{c.id}/update"
        try:
            api.post(url, json=body).raise_for_status()
        except Exception as e:
            raise EngineError(f"container {name}: could not change its resources: {e}") from e

    def read_back(self, name: str, resources: dict[str, Any]) -> dict[str, int]:
        """Read the cgroup files the kernel holds for the sliver; raise on a mismatch.

        Returns the values read (cgroup v1 file names as keys).
        """
        c = self._require(name)
        parent = c.attrs["HostConfig"].get("CgroupParent") or "/docker"
        rel = Path(parent.lstrip("/")) / str(c.id)
        expect = {
            ("cpu", "cpu.shares"): resources["cpu_shares"],
            ("memory", "memory.limit_in_bytes"): resources["mem_limit"],
            ("pids", "pids.max"): resources["pids_limit"],
        }
        if resources.get("cpu_quota", -1) > 0:
            expect[("cpu", "cpu.cfs_quota_us")] = resources["cpu_quota"]
            expect[("cpu", "cpu.cfs_period_us")] = resources["cpu_period"]
        found: dict[str, int] = {}
        for (ctrl, fname), want in expect.items():
            path = CGROUP_ROOT / ctrl / rel / fname
            try:
                got = int(path.read_text().strip())
            except (OSError, ValueError) as e:
                raise EngineError(f"sliver {name}: cannot read back {path}: {e}") from e
            if got != want:
                raise EngineError(f"sliver {name}: {fname} expected {want}, "
                                  f"found {got} in the kernel")
            found[fname] = got
        return found
