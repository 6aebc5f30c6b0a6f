"""Names that prove a thing on a host is ours: labels, name prefixes, groups."""

LABEL_PREFIX = "org.slicectl"
LABEL_SLICE = f"{LABEL_PREFIX}.slice"
LABEL_NODE = f"{LABEL_PREFIX}.node"
LABEL_XID = f"{LABEL_PREFIX}.xid"
LABEL_KIND = f"{LABEL_PREFIX}.kind"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
SLIVER_PREFIX = "sliver-"
SLICE_GROUP = "slicectl-slices"
REFERENCE_REPO = "slicectl/reference"
#: Where a sliver finds the node's sockets it holds the right to (the node manager's, the
#: raw-socket shim's, the admin sniffer's): here, so that sliver programs' bundles need
#: not carry the container plans.
SLIVER_NM_DIR = "/run/slicectl/nm"
SLIVER_SHIM_DIR = "/run/slicectl/raw"
SLIVER_SNIFFER_DIR = "/run/slicectl/sniffer"
SLIVER_VSYS_DIR = "/run/slicectl/vsys"
#: The node agent's (PLC's node manager's) slice on every node: the one slice besides host
#: root that may grant the ``admin`` right (to the site's admin sliver).
AGENT_SLICE = "slicectl_agent"
#: The site's admin sliver on every node (``ssh site_admin@node``).
ADMIN_SLICE = "site_admin"
#: Warm-pool slivers before a bind claims them: ``slicepool-<node>-<xid>`` (a claim renames
#: the container to ``sliver-<slice>``).
POOL_PREFIX = "slicepool-"
