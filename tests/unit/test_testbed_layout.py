"""The testbed's layout and compose files, as data (no engine, no compose)."""

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from slicectl.core.errors import UsageError
from slicectl.testbed.compose import COMPOSE_FILE
from slicectl.testbed.engine import forward_rule
from slicectl.testbed.layout import caps_of, compose_env, layout, nodes_compose
from slicectl.testbed.nodeinit import over_mounts, tar_tags

pytestmark = pytest.mark.unit


def test_nodes_have_distinct_fqdns_and_addresses_after_plc_and_db() -> None:
    lay = layout(3, "slicectl-tb-x", base=Path("/s"))
    assert [n.hostname for n in lay.nodes] == [
        "node1.testbed.slicectl.test", "node2.testbed.slicectl.test", "node3.testbed.slicectl.test"]
    assert [n.address for n in lay.nodes] == ["10.199.0.11", "10.199.0.12", "10.199.0.13"]
    assert lay.plc_address == "10.199.0.2" and lay.db_address == "10.199.0.3"
    assert lay.plc_url == "https://10.199.0.2/PLCAPI/"
    assert lay.state == Path("/s/slicectl-tb-x")
    assert lay.services() == ["plc", "node1", "node2", "node3"]
    assert layout(1, db="postgres").services() == ["db", "plc", "node1"]
    assert lay.container("node2") == "slicectl-tb-x_node2_1"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"nodes": 0}, "--nodes"), ({"nodes": 17}, "--nodes"),
    ({"nodes": 2, "db": "mysql"}, "--db"),
    ({"nodes": 2, "project": "Other"}, "--project"),
    ({"nodes": 2, "subnet": "10.1.2.0/29"}, "--subnet"),
    ({"nodes": 2, "subnet": "not-a-net"}, "--subnet"),
])
def test_bad_values_are_refused_naming_the_option(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(UsageError, match=f"^{field}: expected"):
        layout(**kwargs)  # type: ignore[arg-type]


def test_each_node_extends_the_template_with_its_own_identity() -> None:
    lay = layout(2, "slicectl-tb-y", subnet="10.198.0.0/24", base=Path("/s"))
    doc = yaml.safe_load(nodes_compose(lay, COMPOSE_FILE, ["CHOWN", "SYS_ADMIN"],
                                       {"node1": "/dev/loop3", "node2": "/dev/loop4"}))
    n2 = doc["services"]["node2"]
    assert n2["extends"] == {"file": str(COMPOSE_FILE), "service": "node"}
    assert n2["hostname"] == "node2" and n2["domainname"] == "testbed.slicectl.test"
    assert n2["environment"]["SLICECTL_HOSTNAME"] == "node2.testbed.slicectl.test"
    assert n2["environment"]["TESTBED_PLC_URL"] == "https://10.198.0.2/PLCAPI/"
    # cgroup v1 is shared with the machine: each node's slivers under a parent of its own
    assert n2["environment"]["SLICECTL_CGROUP_PARENT"] == "/slicectl-tb-y-node2"
    assert n2["networks"] == {"testbed": {"ipv4_address": "10.198.0.12"}}
    assert n2["volumes"] == ["/s/slicectl-tb-y/nodes/node2:/etc/slicectl/testbed:ro"]
    assert n2["cap_add"] == ["CHOWN", "SYS_ADMIN"]
    assert n2["devices"] == ["/dev/loop4:/dev/slicectl-engine", "/dev/net/tun:/dev/net/tun"]


def test_caps_are_those_of_the_bounding_set() -> None:
    # this sandbox's mask: everything up to CHECKPOINT_RESTORE but SYS_RESOURCE (bit 24);
    # the engine knows names only up to AUDIT_READ (37)
    caps = caps_of("Name:\tx\nCapBnd:\t000001fffeffffff\n")
    assert "SYS_RESOURCE" not in caps and len(caps) == 37
    assert caps[0] == "CHOWN" and caps[-1] == "AUDIT_READ"
    assert caps_of("CapBnd:\t0000000000000003\n") == ["CHOWN", "DAC_OVERRIDE"]


def test_compose_template_substitutes_only_variables_the_layout_sets() -> None:
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    env = compose_env(layout(1, db="postgres"), "img", Path("/py"), Path("/venv"), Path("/src"),
                      Path("/i.tar"))
    assert used <= set(env), used - set(env)
    assert env["TESTBED_PLC_ARGS"] == "--db postgresql://plc@10.199.0.3/plc"
    assert compose_env(layout(1), "img", Path("/py"), Path("/venv"), Path("/src"), Path("/i.tar"),
                       "--no-change-notices")["TESTBED_PLC_ARGS"] == "--no-change-notices"
    doc = yaml.safe_load(text)
    for name in ("db", "plc", "node"):
        assert doc["services"][name]["userns_mode"] == "host"
        assert doc["services"][name]["labels"]["slicectl.testbed"] == "${TESTBED_PROJECT}"
    assert "privileged" not in doc["services"]["node"]  # runc refuses it without every cap
    assert "seccomp=unconfined" in doc["services"]["node"]["security_opt"]


def test_tar_tags_reads_the_manifest_of_a_docker_save(tmp_path: Path) -> None:
    tar = tmp_path / "i.tar"
    manifest = json.dumps([{"RepoTags": ["a:1", "a:latest"]}, {"RepoTags": None}]).encode()
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        t.addfile(info, io.BytesIO(manifest))
    assert tar_tags(tar) == ["a:1", "a:latest"]


def test_over_mounts_are_the_masks_over_proc_and_firmware_deepest_first() -> None:
    info = "\n".join([
        "20 1 0:5 / / rw - overlay overlay rw",
        "21 20 0:6 / /proc rw - proc proc rw",
        "22 21 0:7 /null /proc/kcore rw - devtmpfs udev rw",
        "23 21 0:6 /sys /proc/sys ro - proc proc rw",
        "24 20 0:8 / /sys ro - sysfs sysfs ro",
        "25 24 0:9 / /sys/firmware ro - tmpfs tmpfs ro",
        "26 24 0:10 / /sys/fs/cgroup rw - tmpfs tmpfs rw",
        "27 21 0:7 /null /proc/timer_list rw - devtmpfs udev rw",
    ])
    assert over_mounts(info) == ["/proc/kcore", "/proc/sys", "/proc/timer_list", "/sys/firmware"]


def test_the_forward_rule_is_scoped_to_the_testbed_bridge_and_names_it() -> None:
    rule = forward_rule("tb-0123456789", "slicectl-x")
    assert rule[:5] == ["FORWARD", "-i", "tb-0123456789", "-o", "tb-0123456789"]
    assert "slicectl-testbed slicectl-x" in rule and rule[-2:] == ["-j", "ACCEPT"]
    assert len(layout(1, "slicectl-a-very-long-project-name").bridge) <= 15
