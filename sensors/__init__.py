"""The slicectl sensor server: a node-service sidecar (see :mod:`sensors.app`)."""
