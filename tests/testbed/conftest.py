"""The testbed tier: PLC and three nodes from compose/testbed.yml through pytest-docker's
fixtures (docker_services runs `docker-compose up`/`down`), enrolled and joined exactly as
`slicectl testbed up` does it. One testbed serves the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from slicectl.node.dockerd import Say
from slicectl.testbed import engine, lifecycle
from slicectl.testbed.compose import COMPOSE_FILE, env_file
from slicectl.testbed.drive import Node, Testbed
from slicectl.testbed.engine import ENGINE_URL
from slicectl.testbed.layout import Layout, layout

PROJECT = "slicectl-tbtest"
SUBNET = "10.198.0.0/24"
NODES = 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/testbed/" in str(item.fspath):
            item.add_marker(pytest.mark.testbed)


@pytest.fixture(scope="session")
def tb_layout() -> Iterator[Layout]:
    lay = layout(NODES, PROJECT, subnet=SUBNET)
    say = Say()
    lifecycle.down(lay, say)  # what an interrupted run left: containers by label, disks, state
    lifecycle.prepare(lay, os.environ, say)
    yield lay
    lifecycle.down(lay, say)  # after docker_services' `down`: the loop devices and the state


@pytest.fixture(scope="session")
def docker_compose_project_name(tb_layout: Layout) -> str:
    return tb_layout.project


@pytest.fixture(scope="session")
def docker_compose_file(tb_layout: Layout) -> list[str]:
    return [str(COMPOSE_FILE), str(tb_layout.nodes_file)]


@pytest.fixture(scope="session")
def docker_compose_command(tb_layout: Layout) -> str:
    return f"DOCKER_HOST={ENGINE_URL} docker-compose --env-file {env_file(tb_layout)}"


@pytest.fixture(scope="session")
def docker_setup(tb_layout: Layout) -> list[str]:
    # the nodes wait for their keys, which enrolment below writes once PLC answers
    return [f"up -d --no-build {' '.join(tb_layout.services())}"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans -t 60"]


@pytest.fixture(scope="session")
def testbed(docker_services: Any, tb_layout: Layout) -> Testbed:
    say = Say()
    try:
        engine.allow_bridge(tb_layout.bridge, tb_layout.project)  # as `testbed up` does
        lifecycle.wait_plc(tb_layout, say)
        ids = lifecycle.enrol(tb_layout)
        lifecycle.wait_nodes(tb_layout, say)
    except Exception:
        lifecycle.say_failed_logs(tb_layout, say)  # before docker_services removes them
        raise
    nodes = [Node(n.name, n.hostname, n.address, ids[n.name], tb_layout.container(n.name))
             for n in tb_layout.nodes]
    return Testbed(tb_layout, nodes)
