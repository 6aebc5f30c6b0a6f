"""The handlers of every PLCAPI method; importing this package fills ``methods.TABLE``."""

from . import extras, nodes, principals, slices, slivers, system

__all__ = ["extras", "nodes", "principals", "slices", "slivers", "system"]
