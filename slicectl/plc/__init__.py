"""PLC: the central registry (PlanetLab Central), speaking PLCAPI over XML-RPC.

Pure modules decide (``fields``, ``filters``, ``policy``, ``methods``); ``db`` and
``server`` act. See ``/work/shared/PLCAPI.md`` for the wire facts this package follows.
"""
