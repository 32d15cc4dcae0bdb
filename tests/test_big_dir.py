"""Directories with thousands of entries: readdir lists every one exactly once
(across many FUSE readdir requests), and each name resolves."""
import os
import stat
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

N = 5000


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("big") / "big.safetensors"
    # Names of varied length so that entries straddle readdir buffer boundaries.
    tensors = {f"block.{i}." + "p" * (i % 37) + f"{i:05d}": np.array([i & 0xFF], np.uint8) for i in range(N)}
    save_file(tensors, str(p))
    return p, tensors


def check_listing(names, want):
    assert len(names) == len(set(names)), "an entry is listed twice"
    assert set(names) == want


@pytest.mark.parametrize("layout", ["flat", "tree"])
def test_big_directory(big_file, mount, layout):
    p, tensors = big_file
    m = mount(p, *(["-o", "layout=flat"] if layout == "flat" else []))
    files, dirs = util.expected_layout(list(tensors), layout)
    if layout == "flat":
        listed_dir = m.mnt
        want = set(files) | set(util.RESERVED)
    else:
        listed_dir = m.mnt / "block"
        assert os.listdir(m.mnt) and sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == ["block"]
        want = {d.split("/", 1)[1] for d in dirs if d.startswith("block/")}
        assert len(want) == N
        assert os.stat(listed_dir).st_nlink == 2 + N
    names = os.listdir(listed_dir)
    check_listing(names, want)
    # scandir (getdents with d_type) and a second pass from the cache agree
    entries = list(os.scandir(listed_dir))
    check_listing([e.name for e in entries], want)
    for e in entries:
        assert e.is_dir() == (layout == "tree"), e.name
    check_listing(os.listdir(listed_dir), want)
    # every 97th entry resolves to the right tensor
    by_path = files
    for rel, name in list(by_path.items())[::97]:
        path = m.mnt / rel
        assert stat.S_ISREG(os.stat(path).st_mode)
        assert path.read_bytes() == tensors[name].tobytes()
        assert os.getxattr(path, util.PREFIX + "name") == name.encode()
    assert os.getxattr(m.mnt, util.PREFIX + "tensors") == str(N).encode()


def test_big_directory_small_getdents(big_file, mount):
    """Reading the directory with a tiny getdents buffer, one entry at a time,
    still gives every entry once (offsets resume where they should)."""
    import ctypes

    p, tensors = big_file
    m = mount(p, "-o", "layout=flat")
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_getdents64 = 217  # x86_64
    if os.uname().machine != "x86_64":
        pytest.skip("getdents64 syscall number known for x86_64 only")
    fd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
    names = []
    try:
        buf = ctypes.create_string_buffer(400)
        while True:
            n = libc.syscall(SYS_getdents64, fd, buf, len(buf))
            assert n >= 0, os.strerror(ctypes.get_errno())
            if n == 0:
                break
            off = 0
            while off < n:
                reclen = int.from_bytes(buf.raw[off + 16:off + 18], "little")
                name = buf.raw[off + 19:off + reclen].split(b"\0", 1)[0].decode()
                names.append(name)
                off += reclen
    finally:
        os.close(fd)
    names = [n for n in names if n not in (".", "..")]
    files, _ = util.expected_layout(list(tensors), "flat")
    check_listing(names, set(files) | set(util.RESERVED))


def test_walking_again_asks_the_daemon_nothing(big_file, tmp_path):
    """The kernel keeps every listing (the daemon answers OPENDIR with ENOSYS where the
    kernel can do without it, which also turns its listing cache on), so a second walk of
    the tree sends no request at all: that took `find` over 100k tensors from 7.8 s to 1 s."""
    import re

    p, _ = big_file
    m = util.Mount(p, tmp_path / "mnt", ["-d"], logdir=tmp_path)  # -d: every request on stderr
    m.start()
    try:
        def listing():
            return sorted((root, tuple(sorted(dirs)), tuple(sorted(files)))
                          for root, dirs, files in os.walk(m.mnt))

        def dir_requests(log):
            return [op for op in re.findall(r"opcode: (\w+)", log)
                    if op in ("OPENDIR", "READDIR", "READDIRPLUS", "RELEASEDIR")]

        first = listing()
        time.sleep(0.2)  # the log is written as requests come
        seen = len(m.stderr())
        second = listing()
        time.sleep(0.2)
        asked_first, asked_again = dir_requests(m.stderr()[:seen]), dir_requests(m.stderr()[seen:])
        assert second == first and len(first) > N
        # Every directory once the first time; the second, none (the kernel may have
        # reclaimed a few cached listings under memory pressure: they are clean pages).
        assert len(asked_first) >= N
        assert len(asked_again) <= len(asked_first) // 100, asked_again[:10]
        assert os.stat(m.mnt / "block").st_blksize == 4096  # glibc sizes getdents by it
    finally:
        m.checked = len(m.stderr())  # the debug log is not an error
        m.stopped = True
        subprocess.run(["fusermount3", "-u", str(m.mnt)], check=True)
        assert m.wait_exit() == 0
    assert not any(mark in m.stderr() for mark in util.SANITIZER_MARKERS)
