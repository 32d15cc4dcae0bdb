"""Starting and stopping the daemon, its options, and a backing file that
changes under a live mount."""
import contextlib
import errno
import mmap
import os
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

import util
from util import PREFIX

pytestmark = pytest.mark.usefixtures("fuse_environment")
small_model = util.small_model


def stop_quietly(m):
    """Cleanup for tests that stop the daemon themselves and assert on how it went."""
    with contextlib.suppress(util.DaemonError):
        m.stop()


def assert_exited_cleanly(m, code):
    """After a signal: the daemon is gone, unmounted, silent, and said 0."""
    assert code is not None, "the daemon did not exit"
    assert not os.path.ismount(m.mnt)
    m.check_output()
    assert code == 0, f"the daemon unmounted but exited with status {code}"


def run(argv, timeout=20):
    return subprocess.run([str(util.binary())] + argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=util.daemon_env())


def test_version():
    for flag in ("-V", "--version"):
        r = run([flag])
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert re.fullmatch(r"safetensorsfs \d+\.\d+\.\d+\S*", lines[0]), lines
        assert any(re.fullmatch(r"libfuse \d+\.\d+(\.\d+)?\S*", line) for line in lines), lines
        assert any(re.fullmatch(r"gpu backends: \S.*", line) for line in lines), lines
        assert r.stderr == ""


def test_help():
    for flag in ("-h", "--help"):
        r = run([flag])
        assert r.returncode == 0
        text = r.stdout + r.stderr
        assert "usage" in text.lower()
        assert "SOURCE" in text and "MOUNTPOINT" in text
        assert "layout=" in text


def test_usage_errors(tmp_path):
    p, _ = small_model(tmp_path)
    for argv in ([], [str(p)]):
        r = run(argv)
        assert r.returncode != 0
        assert r.stderr.strip(), "a usage error says something"
        assert r.stdout == ""


@pytest.mark.parametrize("opt", ["layout=sideways", "spin_us=-5", "spin_us=1000001", "spin_us=abc",
                                 "spin_us=4294967346", "max_threads=0", "max_threads=257",
                                 "max_threads=4294967297", "max_threads=2x", "read_ahead_kb=1048577"])
def test_bad_option_value(tmp_path, opt):
    """One line that names the option (libfuse's own for a value that is no number), no mount."""
    p, _ = small_model(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, out, err = util.run_refused(p, mnt, opts=["-o", opt])
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and opt.split("=")[0] in err, err
    assert not os.path.ismount(mnt)


def test_fusermount_unmounts(tmp_path):
    p, tensors = small_model(tmp_path)
    m = util.Mount(p, tmp_path / "mnt").start()
    try:
        assert (m.mnt / "w" / "small").read_bytes() == tensors["w.small"].tobytes()
        r = subprocess.run(["fusermount3", "-u", str(m.mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert m.wait_exit() == 0
        assert not os.path.ismount(m.mnt)
        assert util.mount_lines(tmp_path) == []
    finally:
        stop_quietly(m)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_unmounts_cleanly(tmp_path, sig):
    p, tensors = small_model(tmp_path)
    m = util.Mount(p, tmp_path / "mnt").start()
    try:
        assert (m.mnt / "other").read_bytes() == tensors["other"].tobytes()
        m.proc.send_signal(sig)
        assert_exited_cleanly(m, m.wait_exit())
        assert util.mount_lines(tmp_path) == []
    finally:
        stop_quietly(m)


def test_signal_while_reading(tmp_path):
    """SIGTERM while a reader is busy still ends in a clean exit."""
    p, tensors = small_model(tmp_path)
    m = util.Mount(p, tmp_path / "mnt").start()
    try:
        reader = subprocess.Popen(["bash", "-c", f'while cat "{m.mnt}/w/big" >/dev/null 2>&1; do :; done'])
        time.sleep(0.2)
        m.proc.send_signal(signal.SIGTERM)
        code = m.wait_exit()
        reader.wait(timeout=20)
        assert_exited_cleanly(m, code)
    finally:
        stop_quietly(m)


def test_background_mode(tmp_path):
    """Without -f the command returns once the mount is up (validation came first)."""
    p, tensors = small_model(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = run([str(p), str(mnt)])
        assert r.returncode == 0, r.stderr
        assert r.stdout == "" and r.stderr == ""
        assert os.path.ismount(mnt)
        assert (mnt / "w" / "big").read_bytes() == tensors["w.big"].tobytes()
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    deadline = time.monotonic() + 10
    while os.path.ismount(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("opts", [["-s"], ["-o", "read_ahead_kb=0"], ["-o", "max_threads=2"],
                                  ["-o", "max_threads=1"], ["-o", "spin_us=0"], ["-s", "-o", "spin_us=0"],
                                  ["-o", "layout=tree"], ["-o", "default_permissions"]],
                         ids=lambda o: " ".join(o))
def test_options_mount_and_serve(tmp_path, mount, opts):
    p, tensors = small_model(tmp_path)
    m = mount(p, *opts)
    for name, arr in tensors.items():
        rel = name.replace(".", "/")
        assert (m.mnt / rel).read_bytes() == arr.tobytes()
    assert os.getxattr(m.mnt / "w" / "big", PREFIX + "shape") == b"[256,300]"
    assert util.errno_of(os.open, m.mnt / "other", os.O_WRONLY) in util.READ_ONLY_ERRNOS


def daemon_sleeps(pid):
    """How often the daemon's threads have slept (voluntary context switches, all threads)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            total += int(next(line for line in f if line.startswith("voluntary_ctxt_switches:")).split()[1])
    return total


@pytest.mark.skipif(os.cpu_count() < 2, reason="polling needs a second CPU")
@pytest.mark.parametrize("spin_us, asleep", [(0, True), (20000, False)], ids=["spin_us=0", "spin_us=20000"])
def test_the_reader_polls_between_quick_requests(tmp_path, mount, spin_us, asleep):
    """Quick requests 0.2 ms apart find the reader still polling /dev/fuse, where a
    sleeping reader would have to be woken for each (on a VM, on another vCPU, that
    wakeup cost more than the request: docs/BENCHMARKS.md).  With -o spin_us=0 it
    sleeps before every one."""
    p, _ = small_model(tmp_path)
    m = mount(p, "-o", f"spin_us={spin_us}")
    path = m.mnt / "w" / "big"
    os.getxattr(path, PREFIX + "shape")
    calls = 2000
    before = daemon_sleeps(m.proc.pid)
    for _ in range(calls):
        os.getxattr(path, PREFIX + "shape")
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0002:  # busy, so that the caller's CPU never idles either
            pass
    slept = daemon_sleeps(m.proc.pid) - before
    if asleep:
        assert slept >= calls * 0.9, f"{slept} sleeps for {calls} requests"
    else:
        assert slept < calls / 4, f"{slept} sleeps for {calls} requests"


def test_a_slow_view_read_holds_up_no_lookup(tmp_path, mount):
    """A gathered view read is slow (each 16 KiB of this one-column view is gathered from 64
    MiB of the backing file), so the reader hands its turn on before it starts: lookups
    that come meanwhile are answered while that read is still in flight, not after it.
    Checked as an order of events, not by comparing times: a lookup counts as answered
    meanwhile when no view read finished between its start and its end."""
    p = tmp_path / "wide.safetensors"
    save_file({"wide": np.zeros((16384, 4096), dtype=np.uint8)}, str(p))
    m = mount(p)
    finished, errors, stop = [0], [], threading.Event()

    def read_view():
        buf = mmap.mmap(-1, 1 << 14)  # O_DIRECT: every read reaches the daemon
        fd = os.open(m.mnt / "wide[:,0:1]", os.O_RDONLY | os.O_DIRECT)
        try:
            while not stop.is_set():
                if os.preadv(fd, [buf], 0) != 1 << 14:
                    errors.append("short view read")
                    return
                finished[0] += 1
        except OSError as e:
            errors.append(e)
        finally:
            os.close(fd)

    reader = threading.Thread(target=read_view)
    reader.start()
    meanwhile = 0
    try:
        while finished[0] < 2 and reader.is_alive():
            time.sleep(0.01)
        assert finished[0] >= 2, errors or "the view reader made no progress"
        for i in range(100):
            before = finished[0]
            assert util.errno_of(os.stat, m.mnt / f"absent{i}") == errno.ENOENT
            meanwhile += finished[0] == before
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    # Without the hand-over every lookup waits for the view read in flight to end.
    assert meanwhile >= 50, f"{meanwhile} of 100 lookups answered while a view read was in flight"


@pytest.fixture
def big_pipes():
    """libfuse splices requests into pipes (-o splice_read) only if it can grow one past 1 MiB."""
    path = "/proc/sys/fs/pipe-max-size"
    try:
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write(str(4 << 20))
    except OSError:
        pytest.skip("fs.pipe-max-size cannot be raised here (root only)")
    yield
    with open(path, "w") as f:
        f.write(old)


def test_requests_spliced_into_pipes(tmp_path, mount, big_pipes):
    """With -o splice_read a request larger than a page (here a write to /.control) arrives
    in a pipe, not in memory; the loop sorting requests must not look into it (it did, and
    crashed).  The mount fixture fails the test if the daemon dies or prints anything."""
    p, tensors = small_model(tmp_path)
    m = mount(p, "-o", "splice_read")
    buf = mmap.mmap(-1, 1 << 18)
    fd = os.open(m.mnt / "w" / "big", os.O_RDONLY | os.O_DIRECT)
    ctl = os.open(m.mnt / ".control", os.O_RDWR)
    try:
        for _ in range(100):
            assert os.preadv(fd, [buf], 0) == len(buf) < tensors["w.big"].nbytes
            with contextlib.suppress(OSError):  # not a command: refused, which is fine
                os.write(ctl, b"x" * 8192)
    finally:
        os.close(fd)
        os.close(ctl)
    m.check_alive()


def test_read_ahead_kb(tmp_path, mount):
    """-o read_ahead_kb=N sets the mount's readahead window (as root), before the mount is
    ready: it is set while FUSE_INIT is answered, so no wait is needed."""
    if os.getuid() != 0:
        pytest.skip("the window is only set when run as root")
    p, _ = small_model(tmp_path)
    m = mount(p, "-o", "read_ahead_kb=96")
    dev = os.stat(m.mnt).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    if not os.access(path, os.W_OK):
        pytest.skip(f"{path} is not writable here")
    with open(path) as f:
        assert f.read().strip() == "96"


def test_unmount_right_after_mount(tmp_path):
    """A script that mounts and unmounts at once never sees EBUSY: nothing of the daemon's
    (the readahead tuning was a stat of the mountpoint) holds the mount meanwhile."""
    p, _ = small_model(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    busy = 0
    for _ in range(100):
        subprocess.run([str(util.binary()), str(p), str(mnt)], check=True, env=util.daemon_env(), timeout=20)
        r = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            busy += 1
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert busy == 0, f"{busy} of 100 unmounts right after the mount failed"


def test_two_mounts_of_one_file(tmp_path, mount):
    p, tensors = small_model(tmp_path)
    a = mount(p)
    b = mount(p, "-o", "layout=flat")
    assert (a.mnt / "w" / "big").read_bytes() == (b.mnt / "w.big").read_bytes() == tensors["w.big"].tobytes()


def test_mount_does_not_write_the_source(tmp_path, mount):
    p, _ = small_model(tmp_path)
    before = util.fingerprint(p)
    listing = sorted(os.listdir(tmp_path))
    m = mount(p)
    for root, dirs, files in os.walk(m.mnt):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                fh.read()
    m.stop()
    assert util.fingerprint(p) == before
    assert sorted(os.listdir(tmp_path)) == sorted(listing + ["mnt0", "mnt0.stderr", "mnt0.stdout"])
    assert os.listdir(tmp_path / "mnt0") == []


# ------------------------------------------------- the backing file changes under the mount

def test_backing_file_truncated(tmp_path, mount):
    """Contract: if a backing file shrinks under a live mount, reads fail with EIO; the daemon stays up."""
    p, tensors = small_model(tmp_path)
    m = mount(p)
    assert os.stat(m.mnt / "w" / "big").st_size == tensors["w.big"].nbytes
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    for rel in ("w/big", "w/small", "other"):
        assert util.errno_of((m.mnt / rel).read_bytes) == errno.EIO, rel
    m.check_alive()
    assert sorted(os.listdir(m.mnt / "w")) == ["big", "small"]


def test_backing_file_deleted(tmp_path, mount):
    """Contract: if a backing file vanishes under a live mount, reads fail with EIO; the daemon stays up."""
    p, tensors = small_model(tmp_path)
    m = mount(p)
    os.unlink(p)
    for rel in ("w/big", "w/small", "other"):
        assert util.errno_of((m.mnt / rel).read_bytes) == errno.EIO, rel
    m.check_alive()


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


@pytest.mark.skipif("build-asan" in str(util.binary()), reason="ASan's allocator keeps freed memory")
def test_reading_adds_nothing_to_the_daemons_memory(tmp_path, mount):
    """Replies are filled in a few buffers made at mount time: reading 512 MiB, in order, at
    random and with several readers at once, leaves the daemon's peak RSS where mounting
    left it (per-request buffers used to leave about a MiB behind in each worker thread)."""
    p = tmp_path / "big.safetensors"
    save_file({"w": np.arange(256 << 20, dtype=np.uint16)}, str(p))
    m = mount(p)
    w = m.mnt / "w"
    with open(w, "rb") as f:
        f.read(4096)
    before = peak_rss_kib(m.proc.pid)

    def read_all(path):
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass

    read_all(w)
    fd = os.open(w, os.O_RDONLY)
    rng = np.random.default_rng(3)
    for off in rng.integers(0, (512 << 20) - 4096, 2000):
        os.pread(fd, 4096, int(off))
    os.close(fd)
    subprocess.run(["sh", "-c", " & ".join([f"cat '{w}[{i << 26}:{(i + 1) << 26}]' >/dev/null" for i in range(4)])
                    + " & wait"], check=True)
    grown = peak_rss_kib(m.proc.pid) - before
    assert grown <= 512, f"reading grew the daemon's peak RSS by {grown} KiB"


@pytest.mark.parametrize("case", ["regular-file", "source-file", "source-folder", "live-mount", "dead-mount"])
def test_bad_mountpoint(tmp_path, mount, case):
    """A MOUNTPOINT that cannot work is refused with one line naming it, and nothing is
    mounted: a file (SOURCE itself among them) used to mount and answer only I/O errors,
    and a second mount on a live or dead one stacked over it."""
    p, _ = small_model(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file({"x": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    source, mnt = p, tmp_path / "mnt"
    if case == "regular-file":
        mnt = tmp_path / "plain.txt"
        mnt.write_text("not a directory")
    elif case == "source-file":
        mnt = p
    elif case == "source-folder":
        source = mnt = folder
    elif case == "live-mount":
        mount(p, name="mnt")
    else:
        dead = util.Mount(p, mnt).start()
        dead.proc.kill()
        dead.proc.wait(timeout=10)
    before = util.fingerprint(p)
    # Not util.run_refused: it unmounts whatever is at MNT afterwards, the first mount too.
    r = subprocess.Popen([str(util.binary()), "-f", str(source), str(mnt)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=util.daemon_env())
    try:
        _, err = r.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        r.terminate()  # it mounted after all: a clean exit unmounts its own mount
        _, err = r.communicate()
        pytest.fail(f"mounted on a {case}: {err}")
    finally:
        if case == "dead-mount":
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    assert r.returncode == 1 and len(err.splitlines()) == 1 and str(mnt) in err, err
    assert util.fingerprint(p) == before
    if case == "live-mount":  # the first mount still answers, with nothing over it
        assert (mnt / "w" / "big").stat().st_size == 256 * 300 * 4


def holds_directory(pid, path):
    """Whether process PID has PATH open (an O_PATH descriptor shows as its path)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="the race matters where root mounts: needs root")
def test_mountpoint_swapped_while_mounting(tmp_path):
    """The mountpoint is opened once and mounted on through that descriptor: a parent renamed
    and a symbolic link put in its place while SOURCE is validated cannot redirect a root
    daemon's mount onto another directory."""
    path = tmp_path / "many.safetensors"
    save_file({f"t.{i}": np.zeros(1, np.uint8) for i in range(200_000)}, str(path))  # slow to validate
    parent, victim = tmp_path / "parent", tmp_path / "victim"
    (parent / "mnt").mkdir(parents=True)
    (victim / "mnt").mkdir(parents=True)
    d = subprocess.Popen([str(util.binary()), "-f", str(path), str(parent / "mnt")], stdin=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=util.daemon_env())
    moved = tmp_path / "parent.orig"
    try:
        while not holds_directory(d.pid, parent / "mnt"):
            assert d.poll() is None and not os.path.ismount(parent / "mnt"), \
                "mounted (or exited) without holding the mountpoint while validating SOURCE"
            time.sleep(0.001)
        os.rename(parent, moved)
        os.symlink(victim, parent)
        while not os.path.ismount(moved / "mnt") and not os.path.ismount(victim / "mnt"):
            assert d.poll() is None, d.stderr.read()
            time.sleep(0.01)
        assert os.path.ismount(moved / "mnt") and not os.path.ismount(victim / "mnt")
    finally:
        d.send_signal(signal.SIGTERM)  # a clean exit unmounts through the same descriptor
        d.wait(timeout=30)
    assert d.returncode == 0 and not os.path.ismount(moved / "mnt")
