"""The table of views made at lookup (fs/viewnodes.c): any user of the mount
can name views, so it must stay bounded, let entries go when the kernel
forgets them, and stay fast however many it holds.

Measured, not timed against each other: the number of lookups refused, the
daemon's resident memory (/proc/PID/status) and its CPU time (/proc/PID/stat),
with bounds only a table that never shrinks or a linear scan can exceed."""
import errno
import os
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

# VIEW_TABLE_CAP, read from the header so the test follows the daemon.
CAP = int(re.search(r"#define VIEW_TABLE_CAP (\d+)",
                    (util.ROOT / "fs" / "viewnodes.h").read_text()).group(1))


def view_names(start, count):
    """Distinct well-formed views of tensor w: every stop past the end clamps to it."""
    return [f"w[0:{i}]" for i in range(start, start + count)]


def stat_all(mnt, names):
    """errno of each os.stat (0: it worked)."""
    codes = []
    for n in names:
        try:
            os.stat(mnt / n)
            codes.append(0)
        except OSError as e:
            codes.append(e.errno)
    return codes


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def drop_dentries():
    """The kernel forgets every unused inode of the mount (it sends FORGET for each)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"w": np.arange(16, dtype=np.float32).reshape(4, 4)}, str(p))
    return p


@pytest.mark.skipif(os.geteuid() != 0, reason="drop_caches (to make the kernel forget) needs root")
def test_view_table_is_capped_and_forgotten_entries_go(model, mount):
    m = mount(model)
    pid = m.proc.pid
    # Past the cap, new views are refused with an error the kernel does not cache.
    codes = stat_all(m.mnt, view_names(0, CAP + 500))
    assert codes[:CAP].count(0) == CAP, "lookups below the cap failed"
    assert set(codes[CAP:]) == {errno.ENFILE}, f"past the cap: {sorted(set(codes[CAP:]))}"
    refused = m.mnt / view_names(CAP, 1)[0]
    # Once the kernel forgets them, the slots come back, and the refused name was not cached.
    drop_dentries()
    for _ in range(200):  # FORGETs are queued: wait for them as an event, not for a time
        try:
            os.stat(refused)
            break
        except OSError as e:
            assert e.errno == errno.ENFILE, e
            drop_dentries()
    else:
        pytest.fail("a view refused at the cap never resolved after the kernel forgot the others")
    # Another round of as many new names reuses the freed entries: memory stays where it was.
    before = rss_kib(pid)
    drop_dentries()
    codes = stat_all(m.mnt, view_names(CAP + 500, CAP // 2))
    assert codes.count(0) == len(codes), sorted(set(codes))
    grown = rss_kib(pid) - before
    m.check_alive()
    if util.sanitized():
        pytest.skip(util.ASAN_RSS)
    assert grown < 8 * 1024, f"the daemon grew by {grown} KiB for views the kernel had forgotten"
    m.check_alive()


def test_view_lookups_stay_constant_time(model, mount):
    """The CPU the daemon spends on 3000 new views is about the same with the
    table empty and with it nearly full; a linear scan cost 10 times more."""
    m = mount(model)
    pid = m.proc.pid

    def cost(names):
        t = cpu_ticks(pid)
        assert stat_all(m.mnt, names).count(0) == len(names)
        return cpu_ticks(pid) - t

    first = cost(view_names(0, 3000))
    stat_all(m.mnt, view_names(3000, CAP - 9000))
    last = cost(view_names(CAP - 6000, 3000))
    # ticks are 10 ms: the slack keeps a busy machine from mattering
    assert last <= 3 * first + 20, f"3000 lookups: {first} ticks at first, {last} near the cap"


def test_listviews_listing_is_linear(tmp_path, mount):
    """-o listviews makes a view per tensor while listing: a listing of 120k
    tensors takes the daemon about a second of CPU, not a quadratic minute."""
    n = 120_000
    p = tmp_path / "many.safetensors"
    save_file({f"t{i}": np.zeros(1, np.uint8) for i in range(n)}, str(p))
    m = mount(p, "-o", "layout=flat", "-o", "listviews")
    t = cpu_ticks(m.proc.pid)
    names = os.listdir(m.mnt)
    used = cpu_ticks(m.proc.pid) - t
    assert sum(1 for x in names if x.endswith(".npy")) == n
    assert len(names) == len(set(names))
    assert used < 30 * 100, f"listing {n} tensors with their views took {used / 100:.1f} s of CPU"
    # the listed views are real and unlimited by the cap: every one opens
    assert (m.mnt / "t119999.npy").read_bytes()[:6] == b"\x93NUMPY"
