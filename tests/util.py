"""Helpers for the safetensorsfs tests: running the daemon, the naming rule
written again in Python, a header reader independent of the daemon's, and
getxattr/listxattr through libc for the size-0 probe and ERANGE.

Mounting follows libfuse's own test/util.py: start the daemon in the
foreground, poll os.path.ismount while checking that it has not exited,
unmount with fusermount3 -u and wait for the process.  The daemon's stderr
goes to a file; it prints nothing when all is well, so any line at all
(a sanitizer report above all) fails the test that caused it.
"""
import contextlib
import ctypes
import errno
import gc
import hashlib
import json
import os
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOUNT_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0
PREFIX = "user.safetensors."
TENSOR_XATTRS = ("name", "dtype", "shape", "data_offsets", "offset", "file")
RESERVED = (".header.json", ".metadata.json")
# The GPU control file (mode 0600, tested in test_control.py): reachable by name, never listed.
UNLISTED = (".control",)
COLLISION_SUFFIX = ".tensor"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                     "ERROR: UndefinedBehaviorSanitizer", "SUMMARY: ")


# Resolved once, so that a relative SAFETENSORSFS survives tests that chdir.
_BINARY = Path(os.environ.get("SAFETENSORSFS", ROOT / "build" / "safetensorsfs")).resolve()


def binary():
    return _BINARY


def sanitized():
    """True when the daemon under test is an ASan build.  Its allocator keeps freed blocks in
    a quarantine (256 MB by default), so the daemon's RSS no longer says what it holds."""
    return b"__asan_init" in _BINARY.read_bytes()


ASAN_RSS = "under ASan, RSS counts the allocator's quarantine, not what the daemon holds; the plain run checks it"


def daemon_env():
    """The environment for the daemon: sanitizer reports to stderr, leaks checked."""
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


OTHER_USER = "stfs-test"


def other_user():
    """A second local user for the access tests, made the first time (needs root)."""
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True)
    return OTHER_USER


def shared_tmpdir(prefix):
    """A folder that other users can cross: pytest's tmp_path sits below a 0700 one."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


def run_as(user, *argv):
    """argv run as `user` (its own group, no others), output captured."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv],
                          capture_output=True)


def mount_lines(needle):
    """Lines of /proc/mounts that mention `needle` (our tmp folders), so other
    people's mounts on this machine do not matter."""
    with open("/proc/self/mounts", "rb") as f:
        return [line for line in f.read().decode("utf-8", "replace").splitlines() if str(needle) in line]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path):
    """What must not change in a backing file: its bytes, size and times."""
    st = os.stat(path)
    return sha256(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns


class DaemonError(AssertionError):
    pass


class Mount:
    """One foreground daemon serving SOURCE at MNT, stderr captured to a file."""

    def __init__(self, source, mnt, opts=(), logdir=None, bin_path=None):
        self.source = Path(source)
        self.mnt = Path(mnt)
        self.opts = list(opts)
        self.bin = Path(bin_path) if bin_path else binary()
        logdir = Path(logdir) if logdir else self.mnt.parent
        self.err_path = logdir / (self.mnt.name + ".stderr")
        self.out_path = logdir / (self.mnt.name + ".stdout")
        self.proc = None
        self.checked = 0  # bytes of stderr already judged
        self.stopped = False

    @property
    def argv(self):
        return [str(self.bin), "-f", *self.opts, str(self.source), str(self.mnt)]

    def start(self):
        if not self.bin.exists():
            raise DaemonError(f"{self.bin} does not exist: run make (or set SAFETENSORSFS)")
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=daemon_env())
        self.wait_for_mount()
        return self

    def wait_for_mount(self):
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.ismount(self.mnt):
                return
            if self.proc.poll() is not None:
                self.stopped = True  # nothing left to unmount; reported here once
                raise DaemonError(f"daemon exited with status {self.proc.returncode} before mounting; "
                                  f"argv {self.argv}; stderr:\n{self.stderr()}")
            time.sleep(0.01)
        raise DaemonError(f"mountpoint {self.mnt} did not come up in {MOUNT_TIMEOUT} s; "
                          f"stderr:\n{self.stderr()}")

    def stderr(self):
        try:
            return self.err_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            return self.out_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def check_output(self, expected=()):
        """Fails on any stderr line not in `expected`, on sanitizer reports, and on stdout."""
        text = self.stderr()
        new = text[self.checked:]
        self.checked = len(text)
        bad = [line for line in new.splitlines() if line.strip() and line not in expected]
        if any(m in new for m in SANITIZER_MARKERS) or bad:
            raise DaemonError(f"daemon for {self.source} wrote to stderr:\n{new}")
        if self.stdout():
            raise DaemonError(f"daemon for {self.source} wrote to stdout:\n{self.stdout()}")

    def check_alive(self):
        if self.proc.poll() is not None:
            raise DaemonError(f"daemon exited with status {self.proc.returncode} while mounted; "
                              f"stderr:\n{self.stderr()}")
        if not os.path.ismount(self.mnt):
            raise DaemonError(f"{self.mnt} is no longer a mount point")

    def wait_exit(self, timeout=EXIT_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """Unmounts (fusermount3 -u, lazily if busy), waits for the daemon, and
        raises DaemonError if it failed to exit with 0 or wrote anything."""
        if self.stopped or self.proc is None:
            return
        self.stopped = True
        problems = []
        if os.path.ismount(self.mnt):
            r = None
            for _ in range(20):
                r = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
                if r.returncode == 0:
                    break
                gc.collect()  # a failed test's frames may still hold files open
                time.sleep(0.05)
            if r.returncode != 0:
                problems.append(f"fusermount3 -u failed: {r.stderr.decode(errors='replace').strip()}")
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        code = self.wait_exit()
        if code is None:
            problems.append("daemon did not exit after unmount")
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(5) is None:
                self.proc.kill()
                self.proc.wait()
            with contextlib.suppress(Exception):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        elif code != 0:
            problems.append(f"daemon exited with status {code}")
        if os.path.ismount(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        try:
            self.check_output()
        except DaemonError as e:
            problems.append(str(e))
        if problems:
            raise DaemonError("; ".join(problems) + f"\nargv: {self.argv}\nstderr:\n{self.stderr()}")


@contextlib.contextmanager
def mounted(source, mnt, opts=(), logdir=None):
    m = Mount(source, mnt, opts, logdir)
    try:
        m.start()
        yield m
        m.check_alive()
    finally:
        m.stop()


def run_refused(source, mnt, opts=(), foreground=True, timeout=20):
    """Runs the daemon on a SOURCE that must be refused.  Returns
    (returncode, stdout, stderr); unmounts and reports if it mounted after all."""
    argv = [str(binary())] + (["-f"] if foreground else []) + list(opts) + [str(source), str(mnt)]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=daemon_env())
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        p.kill()
        out, err = p.communicate()
        raise DaemonError(f"daemon neither exited nor failed within {timeout} s on a SOURCE it must "
                          f"refuse; stderr:\n{err.decode(errors='replace')}")
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# ---------------------------------------------------------------- naming rule

def escape_part(part, in_root):
    """The escaping rule, written independently of fs/escape.c."""
    raw = part.encode("utf-8") if isinstance(part, str) else part
    if raw == b"":
        return "%"
    out = bytearray()
    for i, c in enumerate(raw):
        if c in (0x25, 0x2F, 0x00) or (in_root and i == 0 and c == 0x2E):
            out += b"%%%02X" % c
        else:
            out.append(c)
    return out.decode("utf-8")


def expected_layout(names, layout="tree"):
    """(files, dirs): files maps each relative path ('a/b/c') to its tensor
    name, dirs is the set of relative directory paths (not the root)."""
    dirs = set()
    split = {}
    for name in names:
        parts = name.split(".") if layout == "tree" else [name]
        esc = [escape_part(p, i == 0) for i, p in enumerate(parts)]
        split[name] = esc
        for d in range(1, len(esc)):
            dirs.add("/".join(esc[:d]))
    files = {}
    for name, esc in split.items():
        path = "/".join(esc)
        if path in dirs:
            path += COLLISION_SUFFIX
        assert path not in files, f"two tensors map to {path!r}"
        files[path] = name
    assert not set(files) & dirs
    return files, dirs


def walk(mnt):
    """(files, dirs) below mnt as relative paths, with every entry checked to be
    listed once.  The root's reserved dot-files are left out of `files`."""
    files, dirs = [], []

    def fail(e):
        raise e

    for top, dnames, fnames in os.walk(mnt, onerror=fail):
        rel = os.path.relpath(top, mnt)
        for group, names in ((dirs, dnames), (files, fnames)):
            for n in names:
                if rel == "." and n in RESERVED:
                    continue
                group.append(n if rel == "." else f"{rel}/{n}")
    return files, dirs


def assert_nothing_mounted(mnt, before, out, err):
    """What a refused mount leaves: no report, nothing on stdout, MNT empty and unmounted,
    and no mount line added below MNT's parent since `before` (mount_lines)."""
    assert not any(m in err for m in SANITIZER_MARKERS), err
    assert out == ""
    assert not os.path.ismount(mnt)
    assert mount_lines(Path(mnt).parent) == before
    assert os.listdir(mnt) == []


def official_refuses(path):
    """Whether the official safetensors library refuses the file (the cases' own check)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="np") as f:
            list(f.keys())
    except Exception:  # noqa: BLE001 - any refusal will do
        return True
    return False


def small_model(tmp_path, name="m.safetensors"):
    """A small model written by the official library: (its path, {name: array})."""
    import numpy as np
    from safetensors.numpy import save_file
    p = Path(tmp_path) / name
    rng = np.random.default_rng(5)
    tensors = {
        "w.big": rng.standard_normal((256, 300)).astype(np.float32),
        "w.small": rng.integers(0, 255, (17,), dtype=np.uint8),
        "other": rng.standard_normal((8,)).astype(np.float64),
    }
    save_file(tensors, str(p))
    return p, tensors


# ------------------------------------------------------ an independent header reader

def read_header(path):
    """(n, raw header bytes, top-level members as {key: (value, raw value text)})."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    text = raw.decode("utf-8")
    return n, raw, json_members(text)


def json_members(text):
    """The top-level members of a JSON object with the exact text of each value."""
    dec = json.JSONDecoder()
    ws = " \t\r\n"
    i = 0
    while text[i] in ws:
        i += 1
    assert text[i] == "{"
    i += 1
    out = {}
    while True:
        while text[i] in ws:
            i += 1
        if text[i] == "}":
            return out
        key, i = dec.raw_decode(text, i)
        while text[i] in ws:
            i += 1
        assert text[i] == ":"
        i += 1
        while text[i] in ws:
            i += 1
        value, end = dec.raw_decode(text, i)
        out[key] = (value, text[i:end])
        i = end
        while text[i] in ws:
            i += 1
        if text[i] == ",":
            i += 1


def blob(header, data=b"", n=None):
    """A hand-built file: the 8-byte length (n, or the header's), header, data."""
    if isinstance(header, (dict, list)):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# ---------------------------------------------------------------- xattrs through libc

_libc = ctypes.CDLL(None, use_errno=True)
_libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.getxattr.restype = ctypes.c_ssize_t
_libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.listxattr.restype = ctypes.c_ssize_t


def _check(r, path):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return r


def c_getxattr(path, name, size):
    """getxattr(2) with a buffer of `size` bytes: the length for size 0, else the bytes."""
    buf = ctypes.create_string_buffer(size) if size else None
    r = _check(_libc.getxattr(os.fsencode(path), name.encode(), buf, size), path)
    return r if size == 0 else buf.raw[:r]


def c_listxattr(path, size):
    buf = ctypes.create_string_buffer(size) if size else None
    r = _check(_libc.listxattr(os.fsencode(path), buf, size), path)
    return r if size == 0 else buf.raw[:r]


def errno_of(fn, *args, **kw):
    """The errno that fn(*args) fails with, or None if it succeeds."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return None


READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def run_c_unit_tests(name):
    """Runs the C unit-test binary NAME (tests/c/NAME.c, built in TEST_BIN_DIR): every check
    passes, with no sanitizer report."""
    path = Path(os.environ.get("TEST_BIN_DIR", ROOT / "build")) / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run make (TEST_BIN_DIR names the build folder)")
    r = subprocess.run([str(path)], capture_output=True, text=True, timeout=60, env=daemon_env())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert not any(m in out for m in SANITIZER_MARKERS), out[-4000:]
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert last.endswith(" 0 failed") and " passed, " in last, last


def control_exchange(mnt, line):
    """One /.control command line and its JSON reply."""
    fd = os.open(Path(mnt) / ".control", os.O_RDWR)
    try:
        os.write(fd, line.encode() + b"\n")
        out = b""
        while not out.endswith(b"\n"):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
    return json.loads(out)
