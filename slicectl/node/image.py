"""Build the reference image from Debian packages: debootstrap, docker import, Dockerfile.

No registry is reachable, so the base comes from debootstrap against the mirror this
machine's apt already uses. Images are tagged by a hash of their inputs, so a rebuild with
unchanged inputs is a no-op, and the debootstrap tarball is cached for the next change.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.errors

from slicectl.core.errors import EngineError
from slicectl.core.labels import LABEL_KIND, REFERENCE_REPO
from slicectl.node.dockerd import Say

SUITE = "bookworm"
IMAGES_DIR = Path(__file__).resolve().parents[2] / "images" / "reference"
#: Python packages of the project that go into the image as top-level packages.
IMAGE_PACKAGES = {"saferaw": Path(__file__).resolve().parents[1] / "saferaw",
                  "vsys": Path(__file__).resolve().parents[1] / "vsysclient"}
CACHE_DIR = Path("/var/cache/slicectl")


def packages(src: Path = IMAGES_DIR) -> list[str]:
    lines = (src / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def debian_mirror(env: Mapping[str, str], apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine uses (or ``SLICECTL_DEBIAN_MIRROR``)."""
    if env.get("SLICECTL_DEBIAN_MIRROR"):
        return env["SLICECTL_DEBIAN_MIRROR"]
    texts = []
    for p in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        if p.suffix in (".list", ".sources") or p.name == "sources.list":
            try:
                texts.append(p.read_text())
            except OSError:
                continue
    for text in texts:
        for m in re.finditer(r"(?m)^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+/debian)/?\s", text):
            return m.group(1)
    raise EngineError("Debian mirror: expected one in /etc/apt sources, found none; set "
                      "SLICECTL_DEBIAN_MIRROR to the mirror's URL")


def input_hash(src: Path = IMAGES_DIR) -> tuple[str, str]:
    """(base hash, full hash): the base covers the package list, the full adds the rest."""
    base = hashlib.sha256(f"{SUITE}\n".encode() + (src / "packages.txt").read_bytes())
    full = base.copy()
    for name in sorted(p.name for p in src.iterdir() if p.name != "packages.txt"):
        full.update(name.encode() + b"\0" + (src / name).read_bytes())
    for pkg, d in sorted(IMAGE_PACKAGES.items()):
        for f in sorted(d.glob("*.py")):
            full.update(f"{pkg}/{f.name}".encode() + b"\0" + f.read_bytes())
    return base.hexdigest()[:12], full.hexdigest()[:12]


def _debootstrap(target: Path, mirror: str, pkgs: list[str], say: Say) -> None:
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(pkgs)}", SUITE,
            str(target), mirror]
    say(f"[1/3] debootstrap {SUITE} minbase with {len(pkgs)} packages (about 30-60 s)")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    last: list[str] = []
    counts = {k: 0 for k in ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")}
    started = time.monotonic()
    for line in proc.stdout:
        last = ([*last, line.rstrip()])[-5:]
        for key in counts:
            if line.startswith(f"I: {key}"):
                counts[key] += 1
        if line.startswith("I: ") and not any(line.startswith(f"I: {k}") for k in counts):
            say(f"      {line[3:].strip()}  ({time.monotonic() - started:.0f}s)")
        elif line.startswith("I: Configuring") and counts["Configuring"] % 25 == 1:
            say(f"      configuring packages: {counts['Configuring']} done "
                f"({time.monotonic() - started:.0f}s)")
    if proc.wait() != 0:
        raise EngineError("debootstrap failed: " + " | ".join(last) +
                          " (check that the Debian mirror answers: apt-get update)")
    say(f"      retrieved {counts['Retrieving']}, unpacked {counts['Unpacking']}, configured "
        f"{counts['Configuring']} packages in {time.monotonic() - started:.0f}s")


def base_tarball(mirror: str, src: Path, say: Say) -> Path:
    base, _ = input_hash(src)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tar = CACHE_DIR / f"rootfs-{SUITE}-{base}.tar"
    if tar.exists():
        say(f"[1/3] reusing cached root filesystem {tar}")
        return tar
    with tempfile.TemporaryDirectory(prefix="slicectl-rootfs-") as tmp:
        root = Path(tmp) / "root"
        _debootstrap(root, mirror, packages(src), say)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        part = tar.with_suffix(".tar.part")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(part), "."],
                       check=True)
        part.rename(tar)
    return tar


def has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_base_image(client: docker.DockerClient, env: Mapping[str, str], say: Say,
                      src: Path = IMAGES_DIR, repo: str = REFERENCE_REPO) -> str:
    """Import the debootstrap root fs of ``src``'s package list as ``<repo>-base:<hash>``
    (``slicectl/reference-base``) unless present."""
    base_h, _ = input_hash(src)
    base_tag = f"{repo}-base:{base_h}"
    try:
        client.images.get(base_tag)
        say(f"[2/3] reusing imported base {base_tag}")
    except docker.errors.ImageNotFound:
        tar = base_tarball(debian_mirror(env), src, say)
        say(f"[2/3] docker import {tar.name} as {base_tag}")
        client.api.import_image_from_file(
            str(tar), repository=f"{repo}-base", tag=base_h,
            changes=[f"LABEL {LABEL_KIND}={repo.rsplit('/', 1)[-1]}-base"],
        )
    return base_tag


def build_image(client: docker.DockerClient, ctx: Path, tag: str, base_tag: str, kind: str,
                say: Say) -> None:
    """``docker build`` of the context ``ctx`` (its Dockerfile takes ``ARG BASE``) as ``tag``.

    Raises:
        EngineError: the build failed; the message carries the builder's error.
    """
    try:
        for chunk in client.api.build(
            path=str(ctx), tag=tag, buildargs={"BASE": base_tag}, rm=True, forcerm=True,
            labels={LABEL_KIND: kind}, decode=True,
        ):
            if "error" in chunk:
                raise EngineError(f"{kind} image build failed: {chunk['error'].strip()}")
            text = chunk.get("stream", "").strip()
            if text.startswith("Step "):
                say(f"      {text}")
    except docker.errors.APIError as e:
        raise EngineError(f"{kind} image build failed: {e.explanation}") from e


def ensure_reference_image(client: docker.DockerClient, env: Mapping[str, str], say: Say,
                           src: Path = IMAGES_DIR) -> str:
    """Build ``slicectl/reference:<hash>`` unless present; tag it ``latest``; return its tag."""
    _, full_h = input_hash(src)
    tag = f"{REFERENCE_REPO}:{full_h}"
    try:
        img = client.images.get(tag)
        img.tag(REFERENCE_REPO, "latest")
        return tag
    except docker.errors.ImageNotFound:
        pass
    say(f"building the reference image {tag}")
    base_tag = ensure_base_image(client, env, say, src)
    say("[3/3] docker build of the reference image")
    with tempfile.TemporaryDirectory(prefix="slicectl-ctx-") as ctx:
        for p in src.iterdir():
            shutil.copy(p, Path(ctx) / p.name)
        for pkg, d in IMAGE_PACKAGES.items():
            (Path(ctx) / pkg).mkdir()
            for f in d.glob("*.py"):
                shutil.copy(f, Path(ctx) / pkg / f.name)
        build_image(client, Path(ctx), tag, base_tag, "reference", say)
    client.images.get(tag).tag(REFERENCE_REPO, "latest")
    say(f"reference image ready: {tag}")
    return tag
