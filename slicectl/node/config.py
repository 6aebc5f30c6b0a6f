"""Node configuration: where state lives, which engine to talk to, node-wide limits.

Configuration is passed in, never looked up from globals: :func:`NodeConfig.from_env` reads a
given environment mapping once, and everything else receives the resulting object.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from slicectl.core.errors import ValidationError
from slicectl.core.labels import ADMIN_SLICE, AGENT_SLICE
from slicectl.core.policy import NodePolicy, parse_policy
from slicectl.core.poolplan import DEFAULT_WARM_POOL, MAX_WARM_POOL


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node manager instance needs to know about its node.

    Several instances may share one engine (the test suite runs private ones): they are
    told apart by ``node_id``, which every container they create carries as a label.
    """

    node_id: str
    state_dir: Path
    run_dir: Path
    engine_sock: Path
    network: str = "slicectl"
    subnet: str = "172.30.0.0/16"
    bridge: str = "slicectl0"
    ifb: str = "slicectl-ifb0"
    cgroup_parent: str = "/slicectl"
    image: str = ""
    ssh_port: int = 22
    hostname: str = ""
    #: Who runs the node, as the traffic auditor's pages show it (e.g. "Site <ops@site>").
    operator: str = ""
    #: The sensor server's port: a host TCP port slivers may reach.
    sensors_port: int = 33080
    #: The traffic auditor's pages (public: outsiders read them; slivers may too, the
    #: admin sliver's pl-audit does).
    audit_port: int = 80
    #: Whether the node runs a DNS server for its slivers (then they may reach port 53 on
    #: the host; by default they resolve through the engine's resolver in their own netns).
    offers_dns: bool = False
    #: The host port where this machine serves PLC (then slivers may reach it, as they
    #: would reach a PLC elsewhere: the node agent's sliver does); 0: PLC is elsewhere.
    plc_port: int = 0
    #: The node agent's slice: besides host root, the one caller that may grant the
    #: ``admin`` right (private test nodes name their agent apart: they share accounts).
    agent_slice: str = AGENT_SLICE
    #: The site's admin sliver (``ssh site_admin@node``), which the agent keeps.
    admin_slice: str = ADMIN_SLICE
    #: Pooled slivers the node keeps ready for binds until ``slicectl node set warm_pool``
    #: says otherwise (private test nodes: none, unless a test asks).
    warm_pool: int = DEFAULT_WARM_POOL

    def sliver_services(self) -> tuple[tuple[str, int], ...]:
        """(proto, port) of the host services meant for slivers."""
        dns = (("tcp", 53), ("udp", 53)) if self.offers_dns else ()
        plc = (("tcp", self.plc_port),) if self.plc_port else ()
        return (("tcp", self.sensors_port), ("tcp", self.audit_port), *dns, *plc)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "nm.sqlite"

    @property
    def nm_sock_dir(self) -> Path:
        """Holds only the NM socket, so that it can be mounted into privileged slivers."""
        return self.run_dir / "nm"

    @property
    def nm_sock(self) -> Path:
        return self.nm_sock_dir / "nm.sock"

    @property
    def shim_dir(self) -> Path:
        """Holds the raw-socket shim's socket; mounted into slivers with ``raw_sockets``."""
        return self.run_dir / "shim"

    @property
    def vsys_dir(self) -> Path:
        """Holds the vsys daemon's socket; mounted into slivers whose rspec names a
        privileged operation (``vsys``)."""
        return self.run_dir / "vsys"

    @property
    def vsys_scripts_dir(self) -> Path:
        """The local administrator's own vsys operations (root-owned executables), besides
        those slicectl ships."""
        return self.state_dir / "vsys"

    @property
    def sniffer_dir(self) -> Path:
        """Holds the admin sniffer's record socket; mounted into node services and into
        slivers with ``admin_sniffer``."""
        return self.run_dir / "sniffer"

    @property
    def nm_pidfile(self) -> Path:
        return self.run_dir / "nm.pid"

    @property
    def policy_path(self) -> Path:
        """The local administrator's node policy (YAML; see :mod:`slicectl.core.policy`)."""
        return self.state_dir / "policy.yaml"

    def policy(self) -> NodePolicy:
        """The node policy from :attr:`policy_path`; the defaults if there is none.

        Raises:
            ValidationError: the file is not a valid policy (naming the setting).
        """
        try:
            text = self.policy_path.read_text()
        except FileNotFoundError:
            return NodePolicy()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValidationError(str(self.policy_path), "a YAML mapping of settings",
                                  f"invalid YAML ({str(e).splitlines()[0]})", as_text=True) from e
        return parse_policy(data)

    @property
    def slivers_dir(self) -> Path:
        return self.state_dir / "slivers"

    @property
    def engine_url(self) -> str:
        return f"unix://{self.engine_sock}"

    def with_(self, **changes: object) -> NodeConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NodeConfig:
        """Build the configuration from ``SLICECTL_*`` variables in ``env``.

        Raises:
            ValidationError: a variable has a malformed value.
        """
        state = Path(env.get("SLICECTL_STATE_DIR", "/var/lib/slicectl"))
        run = Path(env.get("SLICECTL_RUN_DIR", "/run/slicectl"))
        port_text = env.get("SLICECTL_SSH_PORT", "22")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValidationError("SLICECTL_SSH_PORT", "a port number", port_text)
        sensors_text = env.get("SLICECTL_SENSORS_PORT", "33080")
        if not sensors_text.isdigit() or not 1 <= int(sensors_text) <= 65535:
            raise ValidationError("SLICECTL_SENSORS_PORT", "a port number", sensors_text)
        audit_text = env.get("SLICECTL_AUDIT_PORT", "80")
        if not audit_text.isdigit() or not 1 <= int(audit_text) <= 65535:
            raise ValidationError("SLICECTL_AUDIT_PORT", "a port number", audit_text)
        # PLC hosted here (make up): its state directory exists
        plc_text = env.get("SLICECTL_PLC_PORT",
                           "443" if (state / "plc" / "plc.crt").exists() else "0")
        if not plc_text.isdigit() or not 0 <= int(plc_text) <= 65535:
            raise ValidationError("SLICECTL_PLC_PORT", "a port number, or 0 for none", plc_text)
        pool_text = env.get("SLICECTL_WARM_POOL", str(DEFAULT_WARM_POOL))
        if not pool_text.isdigit() or not 0 <= int(pool_text) <= MAX_WARM_POOL:
            raise ValidationError("SLICECTL_WARM_POOL", f"an integer from 0 to {MAX_WARM_POOL}",
                                  pool_text)
        dns_text = env.get("SLICECTL_OFFERS_DNS", "0")
        if dns_text not in ("0", "1"):
            raise ValidationError("SLICECTL_OFFERS_DNS", "0 or 1", dns_text)
        return cls(
            node_id=env.get("SLICECTL_NODE_ID", "node"),
            state_dir=state,
            run_dir=run,
            engine_sock=Path(env.get("SLICECTL_ENGINE_SOCK", "/run/slicectl/docker.sock")),
            network=env.get("SLICECTL_NETWORK", "slicectl"),
            subnet=env.get("SLICECTL_SUBNET", "172.30.0.0/16"),
            bridge=env.get("SLICECTL_BRIDGE", "slicectl0"),
            ifb=env.get("SLICECTL_IFB", "slicectl-ifb0"),
            cgroup_parent=env.get("SLICECTL_CGROUP_PARENT", "/slicectl"),
            image=env.get("SLICECTL_IMAGE", ""),
            ssh_port=int(port_text),
            hostname=env.get("SLICECTL_HOSTNAME", socket.gethostname()),
            operator=env.get("SLICECTL_OPERATOR", f"root@{socket.gethostname()}"),
            sensors_port=int(sensors_text),
            audit_port=int(audit_text),
            offers_dns=dns_text == "1",
            plc_port=int(plc_text),
            agent_slice=env.get("SLICECTL_AGENT_SLICE", AGENT_SLICE),
            admin_slice=env.get("SLICECTL_ADMIN_SLICE", ADMIN_SLICE),
            warm_pool=int(pool_text),
        )


def default_config() -> NodeConfig:
    """The configuration of this process's environment (for entry points only)."""
    return NodeConfig.from_env(os.environ)
