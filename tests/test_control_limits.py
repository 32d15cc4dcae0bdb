"""/.control against a hostile client (issue 13): concurrent reads and writes on one
handle, memory that replies and unfinished lines may hold, over-long lines, the upload
quota, whole-path globs, valid JSON for any bytes, and shards rewritten in place."""
import errno
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

HERE = Path(__file__).resolve().parent


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(13)
    t = {"model.layers.0.w": rng.standard_normal((5, 7)).astype(np.float32),
         "lm_head": rng.integers(0, 9, (2, 3)).astype(np.int32)}
    save_file(t, str(tmp_path / "c.safetensors"))
    return tmp_path / "c.safetensors"


def read_replies_raw(fd, count):
    out = b""
    while out.count(b"\n") < count:
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"reply ended after {len(out.splitlines())} of {count} lines"
        out += chunk
    return out.splitlines()


def read_replies(fd, count):
    """`count` reply lines, each parsed from strict UTF-8."""
    return [json.loads(line.decode("utf-8")) for line in read_replies_raw(fd, count)]


def exchange(mnt, data):
    fd = os.open(Path(mnt) / ".control", os.O_RDWR)
    try:
        os.write(fd, data)
        return read_replies(fd, 1)[0]
    finally:
        os.close(fd)


def rss_kb(m):
    for line in Path(f"/proc/{m.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def uring_client(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler for the io_uring client")
    out = tmp_path_factory.mktemp("uring") / "uring_control"
    r = subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                        str(HERE / "c" / "uring_control.c")], capture_output=True, text=True)
    if r.returncode != 0 and "linux/io_uring.h" in r.stderr:
        pytest.skip("linux/io_uring.h missing (install linux-libc-dev)")
    assert r.returncode == 0, r.stderr
    return out


def test_io_uring_reads_and_writes_at_once_on_one_handle(model, mount, uring_client):
    """Finding 1: 200 rounds of 32 writes and 32 reads in flight together.  Without the
    session lock the daemon double-freed (abort) or handed out heap bytes."""
    m = mount(model)
    r = subprocess.run([str(uring_client), str(m.mnt / ".control"), "200"], capture_output=True, timeout=300)
    if r.returncode == 77:
        pytest.skip(r.stderr.decode().strip())
    m.check_alive()
    assert r.returncode == 0, r.stderr.decode()
    # Reads complete in any order, so their pieces interleave; but together they are
    # exactly the replies' bytes: 100 rounds of 32 of each, nothing more (no heap bytes).
    fd = os.open(m.mnt / ".control", os.O_RDWR)
    try:
        os.write(fd, b"backends\nlist\n")
        one = b"".join(line + b"\n" for line in read_replies_raw(fd, 2))
    finally:
        os.close(fd)
    assert len(r.stdout) == 100 * 32 * len(one)
    assert Counter(r.stdout) == Counter({k: v * 100 * 32 for k, v in Counter(one).items()})


def test_read_replies_are_freed(model, mount):
    """Finding 2: 40,000 replies read one batch at a time leave the daemon's memory as it was
    (they stayed until close: +8 MB)."""
    m = mount(model)
    fd = os.open(m.mnt / ".control", os.O_RDWR)
    try:
        for _ in range(20):  # warm up the allocator
            os.write(fd, b"backends\n" * 100)
            read_replies(fd, 100)
        before = rss_kb(m)
        for _ in range(400):
            os.write(fd, b"backends\n" * 100)
            read_replies(fd, 100)
        grown = rss_kb(m) - before
    finally:
        os.close(fd)
    if util.sanitized():
        pytest.skip(util.ASAN_RSS)
    assert grown < 3000, f"daemon grew by {grown} kB while every reply was read"


def test_many_commands_in_one_write_take_linear_time(model, mount):
    """Finding 2: one 1 MiB write of empty lines (one reply each) was quadratic in the
    line count (each line moved the rest of the buffer).  The bound is for a blowup only."""
    m = mount(model)
    fd = os.open(m.mnt / ".control", os.O_RDWR)
    try:
        start = time.monotonic()
        os.write(fd, b"\n" * ((1 << 20) - 1))
        took = time.monotonic() - start
        replies = read_replies(fd, (1 << 20) - 1)
    finally:
        os.close(fd)
    assert all(not r["ok"] for r in replies)
    assert took < 20, f"{took:.1f} s for one write of 1M lines"


def test_overlong_line_gets_one_error_and_the_session_goes_on(model, mount):
    """Finding 2: a line past 1 MiB made every later write fail with E2BIG."""
    m = mount(model)
    fd = os.open(m.mnt / ".control", os.O_RDWR)
    try:
        for _ in range(12):
            os.write(fd, b"x" * (128 << 10))
        os.write(fd, b"y" * 1000 + b"\nlist\n")
        first, second = read_replies(fd, 2)
    finally:
        os.close(fd)
    assert not first["ok"] and "1 MiB" in first["error"]
    assert second == {"ok": True, "buffers": []}


def test_unfinished_lines_are_bounded_over_all_sessions(model, mount):
    """Finding 2: sessions that each hold a partial line near 1 MiB held it all
    (2000 of them: 527 MB).  Past the total, writes fail with ENOBUFS; closing gives it back."""
    m = mount(model)
    before = rss_kb(m)
    fds, refused = [], 0
    try:
        for _ in range(120):
            fd = os.open(m.mnt / ".control", os.O_RDWR)
            fds.append(fd)
            try:
                for _ in range(7):
                    os.write(fd, b"z" * (128 << 10))
            except OSError as e:
                assert e.errno == errno.ENOBUFS
                refused += 1
        grown = rss_kb(m) - before
    finally:
        for fd in fds:
            os.close(fd)
    assert refused > 0
    assert exchange(m.mnt, b"z" * (512 << 10) + b" list\n")["ok"] is False  # room again
    if util.sanitized():
        pytest.skip(util.ASAN_RSS)
    assert grown < 100 * 1024, f"{grown} kB held by unfinished lines"


def test_max_upload_refuses_past_the_quota_and_free_gives_it_back(model, mount):
    """Finding 2: uploads had no quota.  Each of these tensors takes 256 aligned bytes."""
    m = mount(model, "-o", "max_upload=300")
    first = exchange(m.mnt, b"upload device=host lm_head\n")
    assert first["ok"], first
    second = exchange(m.mnt, b"upload device=host lm_head\n")
    assert not second["ok"] and "max_upload" in second["error"]
    assert exchange(m.mnt, b"free %d\n" % first["id"])["ok"]
    assert exchange(m.mnt, b"upload device=host lm_head\n")["ok"]


@pytest.mark.parametrize("value", ["12X", "-1", "", "99999999999999999999G"])
def test_max_upload_must_be_a_size(model, tmp_path, fuse_environment, value):
    code, _, err = util.run_refused(model, tmp_path / "mnt", ["-o", f"max_upload={value}"])
    assert code != 0 and "max_upload" in err


def test_glob_matches_whole_paths(tmp_path, mount):
    """Finding 4: a path over 4 KiB was cut to its last parts, so lm_head/* matched it."""
    deep = ".".join(["y" * 200] * 25) + ".lm_head.weight"
    save_file({deep: np.ones(4, np.float32), "lm_head.weight": np.zeros(2, np.float32)},
              str(tmp_path / "g.safetensors"))
    m = mount(tmp_path / "g.safetensors")
    r = exchange(m.mnt, b"upload device=host lm_head/*\n")
    assert r["ok"] and [t["name"] for t in r["tensors"]] == ["lm_head.weight"]


@pytest.mark.parametrize("pattern", ["\u00e9".encode() * 300, "\u20ac".encode() * 200,
                                     b"\xff\xfe\xc3(" * 20, b"ok\xed\xa0\x80"])
def test_error_replies_are_valid_utf8(model, mount, pattern):
    """Finding 5: patterns were cut mid-character or copied raw into the error text."""
    m = mount(model)
    r = exchange(m.mnt, b"upload device=host " + pattern + b"\n")  # exchange decodes strictly
    assert r["ok"] is False and r["error"]


def test_upload_of_a_shard_rewritten_in_place_fails(model, mount):
    """Finding 7: after a same-size overwrite reads say EIO, but an upload copied the new
    bytes and answered ok."""
    m = mount(model)
    assert exchange(m.mnt, b"upload device=host lm_head\n")["ok"]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)  # a coarse-clock filesystem must see a new mtime; size, inode stay
    with open(model, "r+b") as f:
        f.write(data)
    r = exchange(m.mnt, b"upload device=host lm_head\n")
    assert r["ok"] is False and "changed" in r["error"]
    assert exchange(m.mnt, b"list\n")["buffers"][0]["tensors"] == 1  # only the first one
