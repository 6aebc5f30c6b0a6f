"""What a sliver's first start writes into its own root: the account comes from the node,
and the engine's mounts keep no access times (pure parts, and the image's agreement)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slicectl.core.containerplan import SLICES_GID, sliver_accounts
from slicectl.node.dockerd import atime_mounts

pytestmark = pytest.mark.unit

IMAGES = Path(__file__).resolve().parents[2] / "images" / "reference"

ROOT = Path("/var/lib/slicectl/engine")
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 7:0 / /var/lib/slicectl/engine rw,noatime shared:40 - btrfs /dev/loop0 rw
91 90 7:0 / /var/lib/slicectl/engine/700000000.700000000 rw,relatime shared:40 - btrfs /dev/loop0 rw
92 91 7:0 / /var/lib/slicectl/engine/700000000.700000000/btrfs rw,relatime - btrfs /dev/loop0 rw
93 22 7:1 / /var/lib/slicectl/engine-other rw,relatime - btrfs /dev/loop1 rw
94 90 0:5 / /var/lib/slicectl/engine/with\\040space rw,strictatime - btrfs /dev/loop0 rw
95 22 0:6 / /proc rw,nosuid - proc proc rw
short line
"""


@pytest.mark.parametrize(("root", "expected"), [
    (ROOT, [f"{ROOT}/700000000.700000000", f"{ROOT}/700000000.700000000/btrfs",
            f"{ROOT}/with space"]),
    (Path("/var/lib/slicectl/engine-other"), ["/var/lib/slicectl/engine-other"]),
    (Path("/srv/none"), []),
])
def test_atime_mounts_are_those_at_or_below_the_root_without_noatime(
        root: Path, expected: list[str]) -> None:
    assert atime_mounts(MOUNTINFO, root) == expected


def test_the_slice_account_is_the_nodes_with_the_images_sudo_group() -> None:
    files = sliver_accounts("site_exp", 4242)
    assert files["passwd"] == (f"site_exp:*:4242:{SLICES_GID}:slice site_exp:/home/site_exp:"
                               "/bin/bash\n")
    assert files["group"] == "site_exp:x:4242:\n"


def test_the_image_reads_the_nodes_account_files_and_gives_their_group_sudo() -> None:
    dockerfile = (IMAGES / "Dockerfile").read_text()
    assert f"groupadd -g {SLICES_GID} slices" in dockerfile
    assert "%%slices ALL=(ALL) NOPASSWD:ALL" in dockerfile
    assert "ln -s /etc/slicectl/accounts /var/lib/extrausers" in dockerfile
    assert "libnss-extrausers" in (IMAGES / "packages.txt").read_text().split()
    vinit = (IMAGES / "slicectl-vinit").read_text()
    assert not re.search(r"^\s*(useradd|groupadd)\b", vinit, re.M)
