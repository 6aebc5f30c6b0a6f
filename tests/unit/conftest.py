from collections.abc import Iterator
from pathlib import Path

import pytest

from slicectl.plc.api import PLCAPI
from tests.plc_helpers import Clock, World, make_api


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/unit/" in str(item.fspath):
            item.add_marker(pytest.mark.unit)



@pytest.fixture
def plc_clock() -> Clock:
    return Clock()


@pytest.fixture
def plc_api(tmp_path: Path, plc_clock: Clock) -> Iterator[PLCAPI]:
    api = make_api(tmp_path, plc_clock)
    yield api
    api.db.close()


@pytest.fixture
def world(plc_api: PLCAPI) -> World:
    return World(plc_api)
