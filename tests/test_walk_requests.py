"""Fewer requests per walk (issue 16): readdirplus always, so that listing a directory and
stat-ing its entries sends no LOOKUP for them; and -o ro, which also takes /.control away.
Requests are counted in the daemon's -d log, which logs each request as it arrives, so by
the time a listing returns every request it caused is in the log."""
import errno
import os
import re
import subprocess

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

DIRS = 1001


def opcodes(log):
    return re.findall(r"opcode: (\w+)", log)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """DIRS directories in the root, one tensor each (the issue's measurement)."""
    p = tmp_path_factory.mktemp("wide") / "wide.safetensors"
    save_file({f"d{i:04d}.w": np.full(2, i, np.int16) for i in range(DIRS)}, str(p))
    return p


def test_walks_use_readdirplus_only(wide_model, tmp_path):
    """ls -l and find over 1001 directories: every listing request is READDIRPLUS, so each
    entry comes with its attributes and no LOOKUP follows.  In libfuse's default "auto" mode
    the kernel switched to plain READDIR after the first request of a listing (1001 of them
    in this walk), and where a listing took several requests it sent a LOOKUP for most of the
    entries stat-ed afterwards."""
    m = util.Mount(wide_model, tmp_path / "mnt", ["-d"], logdir=tmp_path).start()
    try:
        before = len(m.stderr())
        r = subprocess.run(["ls", "-l", "--color=never", str(m.mnt)], capture_output=True, text=True, check=True)
        assert len(r.stdout.splitlines()) == DIRS + 1  # and the "total" line
        r = subprocess.run(["find", str(m.mnt), "-type", "f"], capture_output=True, text=True, check=True)
        assert len(r.stdout.splitlines()) == DIRS + len(util.RESERVED)
        ops = opcodes(m.stderr()[before:])
        assert ops.count("READDIRPLUS") >= DIRS and "READDIR" not in ops, sorted(set(ops))
        assert ops.count("LOOKUP") <= 2, ops.count("LOOKUP")
        m.check_alive()
    finally:
        m.checked = len(m.stderr())  # the debug log is not an error
        m.stopped = True
        subprocess.run(["fusermount3", "-u", str(m.mnt)], check=True)
        assert m.wait_exit() == 0
    assert not any(mark in m.stderr() for mark in util.SANITIZER_MARKERS)


@pytest.mark.parametrize("opt", [["-o", "ro"], ["-r"]], ids=["-o ro", "-r"])
def test_ro_has_no_control_file(wide_model, tmp_path, mount, opt):
    m = mount(wide_model, *opt)
    assert util.errno_of(os.stat, m.mnt / ".control") == errno.ENOENT
    assert util.errno_of(os.open, m.mnt / ".control", os.O_RDWR) == errno.ENOENT
    assert (m.mnt / "d0007" / "w").read_bytes() == np.full(2, 7, np.int16).tobytes()
    # The client says why.
    r = subprocess.run([str(util.ROOT / ".venv" / "bin" / "python"), str(util.ROOT / "scripts" / "safetensorsfs_client.py"),
                        str(m.mnt), "--backends"], capture_output=True, text=True)
    assert r.returncode != 0 and "-o ro" in r.stderr, r.stderr


def test_control_file_without_ro(wide_model, mount):
    m = mount(wide_model)
    assert os.stat(m.mnt / ".control").st_mode & 0o777 == 0o600
