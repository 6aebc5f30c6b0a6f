"""The node manager: the one privileged, local-only authority on a node."""
