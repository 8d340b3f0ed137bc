"""The data directory's modes: private, except the way through that QEMU needs to a host
agent's disks on the same machine (group kvm, search only)."""

from __future__ import annotations

import grp
import os
import stat

import pytest

from multiconsole.paths import make_private


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def kvm_gid():
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        pytest.skip("no group kvm here")


def test_a_directory_open_to_all_is_made_private(tmp_path):
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    make_private(d)
    assert _mode(d) == 0o700


def test_the_way_through_for_qemu_is_kept(tmp_path, kvm_gid):
    d = tmp_path / "data"
    d.mkdir()
    os.chown(d, -1, kvm_gid)
    d.chmod(0o710)
    make_private(d)
    assert _mode(d) == 0o710  # group kvm may pass, not list
    d.chmod(0o750)
    make_private(d)
    assert _mode(d) == 0o710  # listing is taken away, passing kept
    os.chown(d, -1, 0)
    d.chmod(0o710)
    make_private(d)
    assert _mode(d) == 0o700  # another group gets nothing


def test_files_are_private(tmp_path, kvm_gid):
    f = tmp_path / "engine.db"
    f.write_text("")
    os.chown(f, -1, kvm_gid)
    f.chmod(0o640)
    make_private(f)
    assert _mode(f) == 0o600
