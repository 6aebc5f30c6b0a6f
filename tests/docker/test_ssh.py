"""``ssh slice@node`` with a real OpenSSH client lands inside the sliver as the slice user."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from slicectl.node.config import NodeConfig

from .conftest import NMHandle


def ssh(cfg: NodeConfig, key: Path, user: str, *args: str, tty: bool = False,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(key), "-p", str(cfg.ssh_port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes"]
    if tty:
        argv.append("-tt")
    argv += ["-l", user, "127.0.0.1", *args]
    return subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=60,
                          check=False)


@pytest.fixture
def sliver(nm: NMHandle, ssh_key: Path) -> str:
    name = nm.slice("ssh")
    key = Path(f"{ssh_key}.pub").read_text().strip()
    nm.call("bind", name, nm.call("acquire", {}), {"keys": [key]})
    return name


def test_lands_inside_as_slice_user(nm: NMHandle, ssh_key: Path, sliver: str) -> None:
    info = nm.call("get_sliver", sliver)
    out = ssh(nm.cfg, ssh_key, sliver, "hostname; id; uname -a; cat /etc/slicectl/slice.json; pwd")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith(f"uid={info['uid']}({sliver}) gid={info['uid']}({sliver})")
    assert lines[2].startswith("Linux ")
    assert f'"slice": "{sliver}"' in lines[3]
    assert lines[4] == f"/home/{sliver}"
    # The host's files are not there: this is the sliver's root fs.
    out = ssh(nm.cfg, ssh_key, sliver, f"test -e {nm.cfg.state_dir} && echo host || echo sliver")
    assert out.stdout.strip() == "sliver"


def test_the_slice_account_is_the_nodes_and_has_sudo(nm: NMHandle, ssh_key: Path,
                                                     sliver: str) -> None:
    """The account comes from the node's files, not from writes into the sliver's root:
    sudo works through the image's group, the home is the slice's, /etc/passwd is the
    image's."""
    info = nm.call("get_sliver", sliver)
    out = ssh(nm.cfg, ssh_key, sliver, "sudo -n id -u; stat -c %u ~; touch ~/mine && echo ok; "
              f"grep -c '^{sliver}:' /etc/passwd; getent passwd {sliver}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:4] == ["0", str(info["uid"]), "ok", "0"], out.stdout + out.stderr
    assert lines[4].startswith(f"{sliver}:*:{info['uid']}:"), lines


@pytest.mark.parametrize(("command", "status"), [("true", 0), ("false", 1), ("exit 42", 42),
                                                 ("no-such-command-here", 127)])
def test_exit_status_propagates(nm: NMHandle, ssh_key: Path, sliver: str, command: str,
                                status: int) -> None:
    assert ssh(nm.cfg, ssh_key, sliver, command).returncode == status


def test_tty(nm: NMHandle, ssh_key: Path, sliver: str) -> None:
    out = ssh(nm.cfg, ssh_key, sliver, "tty; test -t 0 && echo TTY", tty=True)
    assert out.returncode == 0, out.stderr
    assert "/dev/pts/" in out.stdout and "TTY" in out.stdout
    out = ssh(nm.cfg, ssh_key, sliver, "test -t 0 && echo TTY || echo NOTTY")
    assert out.stdout.strip() == "NOTTY"


def test_interactive_login_shell(nm: NMHandle, ssh_key: Path, sliver: str) -> None:
    out = ssh(nm.cfg, ssh_key, sliver, input_text="echo via-stdin $USER\nexit 3\n")
    assert "via-stdin " + sliver in out.stdout
    assert out.returncode == 3


def test_scp_both_ways(nm: NMHandle, ssh_key: Path, sliver: str, tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(bytes(range(256)) * 4000)
    base = ["-i", str(ssh_key), "-P", str(nm.cfg.ssh_port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]
    for mode in ([], ["-O"]):  # SFTP-based (default) and the legacy protocol
        up = subprocess.run(["scp", *mode, *base, str(src), f"{sliver}@127.0.0.1:up.bin"],
                            capture_output=True, text=True, timeout=60, check=False)
        assert up.returncode == 0, up.stderr
        back = tmp_path / f"back{len(mode)}.bin"
        down = subprocess.run(["scp", *mode, *base, f"{sliver}@127.0.0.1:up.bin", str(back)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert down.returncode == 0, down.stderr
        assert back.read_bytes() == src.read_bytes()
    out = ssh(nm.cfg, ssh_key, sliver, "stat -c '%U %s' up.bin")
    assert out.stdout.strip() == f"{sliver} {src.stat().st_size}"


def test_key_changes_apply_within_a_second(nm: NMHandle, ssh_key: Path, sliver: str,
                                           tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    assert ssh(nm.cfg, other, sliver, "true").returncode == 255
    nm.call("set_keys", sliver, [Path(f"{other}.pub").read_text().strip()])
    t0 = time.monotonic()
    assert ssh(nm.cfg, other, sliver, "true").returncode == 0
    assert time.monotonic() - t0 < 1.5
    removed = ssh(nm.cfg, ssh_key, sliver, "true")
    assert removed.returncode == 255
    assert "Permission denied" in removed.stderr
    assert nm.call("get_keys", sliver) == [Path(f"{other}.pub").read_text().strip()]


def test_no_forwarding_to_the_host(nm: NMHandle, ssh_key: Path, sliver: str) -> None:
    out = subprocess.run(
        ["ssh", "-i", str(ssh_key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
         "-L", "127.0.0.1:0:127.0.0.1:22", "-l", sliver, "127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0


def test_root_cannot_log_in(nm: NMHandle, ssh_key: Path) -> None:
    assert ssh(nm.cfg, ssh_key, "root", "true").returncode == 255
