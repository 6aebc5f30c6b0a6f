"""A private node's network goes even while the engine still frees the endpoint of a
container just removed (an interrupted bench or test run), and only then."""

from __future__ import annotations

import docker.errors
import pytest

from slicectl.core.errors import EngineError
from slicectl.testbed import privnode

pytestmark = pytest.mark.unit

BUSY = "error while removing network: network slicectl-t1 id 1 has active endpoints"


class FakeNetwork:
    name = "slicectl-t1"

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.removed = False

    def remove(self) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.removed = True


def test_a_network_busy_for_a_moment_is_removed_once_free(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privnode.time, "sleep", lambda s: None)
    n = FakeNetwork(docker.errors.APIError(BUSY), docker.errors.APIError(BUSY))
    privnode.remove_network(n)  # type: ignore[arg-type]
    assert n.removed and n.errors == []


def test_other_errors_and_endpoints_that_stay_are_raised() -> None:
    other = FakeNetwork(docker.errors.APIError("permission denied"))
    with pytest.raises(docker.errors.APIError, match="permission denied"):
        privnode.remove_network(other)  # type: ignore[arg-type]
    stuck = FakeNetwork(*[docker.errors.APIError(BUSY)] * 1000)
    with pytest.raises(EngineError, match="^network slicectl-t1: still has endpoints"):
        privnode.remove_network(stuck, wait_s=0.3)  # type: ignore[arg-type]
    gone = FakeNetwork(docker.errors.NotFound("no such network"))
    privnode.remove_network(gone)  # type: ignore[arg-type]
