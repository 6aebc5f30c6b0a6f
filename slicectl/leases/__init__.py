"""The lease service: a second slice creation service (the paper's unbundled management).
It runs in its own privileged sliver beside the node agent and gives short-lived slices
from a list of requests, reaching the node only through the node manager's socket, which
keeps each creator's slivers to itself. Standard library only, like the agent."""
