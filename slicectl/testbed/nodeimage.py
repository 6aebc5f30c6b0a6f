"""The images a testbed needs, made on the machine running it: the node image (Debian
packages from ``images/node/packages.txt`` by debootstrap, like the reference image) and
one tar of the images every node's own engine loads (reference, its base, the service
image), so no node builds anything.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.errors

from slicectl.core.errors import EngineError
from slicectl.node.dockerd import Say
from slicectl.node.image import (
    CACHE_DIR,
    build_image,
    ensure_base_image,
    ensure_reference_image,
    has_image,
    input_hash,
)
from slicectl.node.services import ensure_service_image

NODE_SRC = Path(__file__).resolve().parents[2] / "images" / "node"
NODE_REPO = "slicectl/node"
TAR_PREFIX = "testbed-images-"


def ensure_node_image(client: docker.DockerClient, env: Mapping[str, str], say: Say,
                      src: Path = NODE_SRC) -> str:
    """Build ``slicectl/node:<hash>`` unless present; return its tag."""
    _, full_h = input_hash(src)
    tag = f"{NODE_REPO}:{full_h}"
    if has_image(client, tag):
        return tag
    say(f"building the testbed node image {tag} (Debian packages of {src}/packages.txt)")
    base_tag = ensure_base_image(client, env, say, src, repo=NODE_REPO)
    with tempfile.TemporaryDirectory(prefix="slicectl-node-ctx-") as ctx:
        for p in src.iterdir():
            shutil.copy(p, Path(ctx) / p.name)
        build_image(client, Path(ctx), tag, base_tag, "testbed-node", say)
    say(f"node image ready: {tag}")
    return tag


def node_engine_images(client: docker.DockerClient, env: Mapping[str, str], say: Say) -> list[str]:
    """The tags every node's engine needs (built here if missing)."""
    reference = ensure_reference_image(client, env, say)
    base = ensure_base_image(client, env, say)
    service = ensure_service_image(client, env, say)
    return [reference, "slicectl/reference:latest", base, service]


def images_tar(client: docker.DockerClient, engine_url: str, tags: list[str], say: Say,
               cache: Path = CACHE_DIR) -> Path:
    """One ``docker save`` of ``tags`` (cached by their image ids; older tars removed)."""
    ids = [client.images.get(t).id for t in tags]
    key = hashlib.sha256("\n".join([*tags, *ids]).encode()).hexdigest()[:12]
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / f"{TAR_PREFIX}{key}.tar"
    if tar.exists():
        return tar
    for old in cache.glob(f"{TAR_PREFIX}*.tar"):
        old.unlink()
    say(f"saving {len(tags)} images for the nodes' engines to {tar}")
    part = tar.with_suffix(".part")
    proc = subprocess.run(["docker", "-H", engine_url, "save", "-o", str(part), *tags],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        part.unlink(missing_ok=True)
        raise EngineError(f"docker save {' '.join(tags)}: {proc.stderr.strip()}")
    part.rename(tar)
    return tar
