"""Who may call each write method at all (PLCAPI's roles), as a table: each role against
each write method, in process. The object rules beyond the role (a PI only at their own
sites, a user only in their own slices) are in test_plc_decisions and test_plc_api."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from slicectl.plc.errors import PLCFault
from slicectl.plc.methods import TABLE
from tests.plc_helpers import Clock, World, make_api

pytestmark = pytest.mark.unit

A, P, T, U, N = "admin", "pi", "tech", "user", "node"
_ADMIN = {A}
_PI = {A, P}
_NODES = {A, P, T}
_PEOPLE = {A, P, T, U}

#: Every write method and the roles PLCAPI lets call it.
ROLES: dict[str, set[str]] = {
    **{m: _ADMIN for m in (
        "AddAddressType", "AddConfFile", "AddConfFileToNode", "AddConfFileToNodeGroup",
        "AddInitScript", "AddNodeGroup", "AddPersonToSite", "AddRoleToTagType", "AddSite",
        "AddTagType", "BlacklistKey", "DeleteAddressType", "DeleteConfFile",
        "DeleteConfFileFromNode", "DeleteConfFileFromNodeGroup", "DeleteInitScript",
        "DeleteNodeGroup", "DeletePersonFromSite", "DeleteRoleFromTagType", "DeleteSite",
        "DeleteTagType", "RegenerateNodeKey", "UpdateAddressType", "UpdateConfFile",
        "UpdateInitScript", "UpdateNodeGroup", "UpdateTagType")},
    **{m: _PI for m in (
        "AddAddressTypeToAddress", "AddPerson", "AddPersonToSlice", "AddRoleToPerson",
        "AddSiteAddress", "AddSlice", "DeleteAddress", "DeleteAddressTypeFromAddress",
        "DeletePerson", "DeletePersonFromSlice", "DeleteRoleFromPerson", "UpdateAddress",
        "UpdateSite")},
    **{m: _NODES for m in (
        "AddIlink", "AddInterface", "AddNode", "AddNodeTag", "AddNodeToPCU", "AddPCU",
        "DeleteIlink", "DeleteInterface", "DeleteNode", "DeleteNodeFromPCU", "DeleteNodeTag",
        "DeletePCU", "UpdateIlink", "UpdateInterface", "UpdateNode", "UpdateNodeTag",
        "UpdatePCU")},
    **{m: _PEOPLE for m in (
        "AddPersonKey", "AddSliceTag", "AddSliceToNodes", "DeleteKey", "DeleteSlice",
        "DeleteSliceFromNodes", "DeleteSliceTag", "SetPersonPrimarySite", "UpdateKey",
        "UpdatePerson", "UpdateSlice", "UpdateSliceTag")},
    "GetSession": _PEOPLE | {N}, "DeleteSession": _PEOPLE | {N},
    "GetSlivers": {A, N},
    "ReportSlivers": {N},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for the module: a refused call changes nothing (each test checks it)."""
    api = make_api(tmp_path_factory.mktemp("roles"), Clock())
    yield World(api)
    api.db.close()


def test_the_table_names_every_write_method() -> None:
    writes = {name for name, m in TABLE.methods.items() if m.writes}
    assert writes == set(ROLES), (sorted(writes - set(ROLES)), sorted(set(ROLES) - writes))
    for name, roles in ROLES.items():
        assert TABLE.get(name).roles == roles, name


@pytest.mark.parametrize("method", sorted(ROLES))
@pytest.mark.parametrize("role", [A, P, T, U, N, "anonymous"])
def test_a_role_outside_the_table_is_refused_and_changes_nothing(
        world: World, method: str, role: str) -> None:
    if role in ROLES[method]:
        return  # the object rules decide (other tests); the role alone does not refuse
    caller = {A: world.root, P: world.pi, T: world.tech, U: world.user, N: world.node,
              "anonymous": None}[role]
    m = TABLE.get(method)
    args = [1] * (m.min_args - 1)  # min_args counts the auth struct
    before = world.root.GetEvents()
    with pytest.raises(PLCFault) as e:
        if caller is None:
            world.api.call(method, [{"AuthMethod": "anonymous"}, *args])
        else:
            caller.call(method, *args)
    assert e.value.fault_code == 108, (method, role, e.value.message)
    assert world.root.GetEvents() == before  # nothing written
