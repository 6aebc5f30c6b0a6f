"""slicectl: PlanetLab's node OS and central control, rebuilt on Docker and Linux."""

__version__ = "0.1.0"
