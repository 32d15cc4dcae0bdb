"""Gathered views (a column of a matrix) read their source in windows of the
span they cover, not one pread per run: counted with /proc/PID/io (syscr, the
daemon's read system calls of every kind), not timed."""
import errno
import mmap
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

pytestmark = pytest.mark.usefixtures("fuse_environment")

ROWS, COLS = 16384, 1024


def syscr(pid):
    with open(f"/proc/{pid}/io") as f:
        return int(next(ln for ln in f if ln.startswith("syscr:")).split()[1])


def direct_read(path, size, off=0):
    """One read of SIZE bytes that reaches the daemon as it is (O_DIRECT)."""
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(fd, [buf], off)
    finally:
        os.close(fd)
    return bytes(buf[:n])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(13)
    tensors = {"m": rng.standard_normal((ROWS, COLS)).astype(np.float32),
               "sparse": rng.standard_normal((64, 8192)).astype(np.float32),
               "bytes": rng.integers(0, 256, (4096, 64), dtype=np.uint8)}
    p = tmp_path_factory.mktemp("reads") / "r.safetensors"
    save_file(tensors, str(p))
    return p, tensors


@pytest.mark.parametrize("view, want, size", [
    ("m[:,3:4]", lambda t: t["m"][:, 3:4], 64 << 10),
    ("m[:,3:4]@F16", lambda t: t["m"][:, 3:4].astype(np.float16), 32 << 10),
    ("m[:,3:4]@BF16.npy", None, 32 << 10),
    ("bytes[:,5:6]", lambda t: t["bytes"][:, 5:6], 4096),
])
def test_a_column_is_read_in_few_preads(model, mount, view, want, size):
    p, tensors = model
    m = mount(p)
    path = m.mnt / view
    os.stat(path)  # the lookup's own reads are not counted
    before = syscr(m.proc.pid)
    got = direct_read(path, size)
    reads = syscr(m.proc.pid) - before
    if want is None:
        got = np.load(path).astype(np.float32)
        assert np.array_equal(got, tensors["m"][:, 3:4].astype(ml_dtypes.bfloat16).astype(np.float32))
    else:
        assert got == want(tensors).tobytes()[:size]
    # 64 MiB of source in 1 MiB windows is 64 reads; a pread per row was 16,384.
    assert reads < 300, f"{reads} read calls for {size} bytes of {view}"


def test_sparse_and_cut_views_read_right(model, mount):
    """Runs far apart are still read one by one; reads that start or end inside an element
    or a run, and windows that end inside a run, give the same bytes as numpy."""
    p, tensors = model
    m = mount(p)
    assert (m.mnt / "sparse[:,7:9]").read_bytes() == tensors["sparse"][:, 7:9].tobytes()
    whole = tensors["m"][:, 1000:1003]
    f16 = whole.astype(np.float16).tobytes()
    with open(m.mnt / "m[:,1000:1003]@F16", "rb") as f:
        for off, n in [(1, 5), (3, 70001), (65535, 3), (len(f16) - 7, 7), (0, len(f16))]:
            assert os.pread(f.fileno(), n, off) == f16[off:off + n], (off, n)
    raw = whole.tobytes()
    for off, n in [(5, 11), (4097, 1 << 20), (len(raw) - 3, 3)]:
        assert direct_read(m.mnt / "m[:,1000:1003]", 1 << 20 if n > 4096 else 4096, off)[:n] \
            == raw[off:off + n], (off, n)


def test_slow_view_readers_leave_threads_for_others(tmp_path, mount):
    """Eight O_DIRECT readers of a view whose 1-byte runs lie too far apart for windows
    (a pread per run: each 32 KiB read is 32,768 of them) once took every thread, so
    another user's lookup and 4 KiB read waited for a whole gather.  Only half the threads
    gather now.  Checked as an order of events, not by comparing times: an operation counts
    as answered meanwhile when no view read finished between its start and its end."""
    import threading
    rows, stride = 32768, 4104  # a gap of 4103 bytes: past the window rule's 4096
    p = tmp_path / "sparse.safetensors"
    save_file({"s": np.zeros((rows, stride), np.uint8), "plain": np.arange(4096, dtype=np.uint8)}, str(p))
    m = mount(p, "-o", "max_threads=4")
    finished, errors, stop = [0], [], threading.Event()
    lock = threading.Lock()

    def read_view():
        buf = mmap.mmap(-1, rows)
        fd = os.open(m.mnt / "s[:,0:1]", os.O_RDONLY | os.O_DIRECT)
        try:
            while not stop.is_set():
                if os.preadv(fd, [buf], 0) != rows:
                    errors.append("short view read")
                    return
                with lock:
                    finished[0] += 1
        except OSError as e:
            errors.append(e)
        finally:
            os.close(fd)

    readers = [threading.Thread(target=read_view) for _ in range(8)]
    for r in readers:
        r.start()
    meanwhile, ops = 0, 50
    try:
        while finished[0] < 8 and not errors:
            stop.wait(0.01)
        assert not errors, errors
        for i in range(ops):
            before = finished[0]
            assert util_errno(lambda: os.stat(m.mnt / f"absent{i}")) == errno.ENOENT
            assert direct_read(m.mnt / "plain", 4096) == bytes(range(256)) * 16
            meanwhile += finished[0] == before
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert not errors, errors
    # With every thread gathering, each operation waited for a view read to end.
    assert meanwhile >= ops // 2, f"{meanwhile} of {ops} operations answered while view reads ran"


def util_errno(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0
