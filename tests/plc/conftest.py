"""The plc tier: a real ``slicectl plc serve`` process per test module and database kind,
talked to with ``xmlrpc.client`` over real HTTP(S). PostgreSQL runs as its own cluster in
a temporary directory (Debian's ``postgresql``, see scripts/install-host.sh), removed after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slicectl.testbed.plc import Server, start_server, stop_server
from slicectl.testbed.postgres import Cluster, cluster

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/plc/" in str(item.fspath):
            item.add_marker(pytest.mark.plc)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    with cluster() as c:
        yield c


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    state = tmp_path_factory.mktemp(f"plc-{request.param}")
    if request.param == "sqlite":
        srv = start_server(state, None, plain=False)  # HTTPS with the certificate it made
    else:
        pg: Cluster = request.getfixturevalue("postgres")
        name = f"plc_{request.module.__name__.rsplit('.', 1)[-1]}"
        srv = start_server(state, pg.database(name), plain=True)
    try:
        yield srv
    finally:
        stop_server(srv)
