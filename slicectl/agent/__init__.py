"""The node agent: PLC's per-node resource manager. It turns the node's GetSlivers view
into calls on the node manager (acquire, bind, set_keys, set_initscript, stop, start,
destroy), as any other slice creation service would, and touches only slivers it made."""
