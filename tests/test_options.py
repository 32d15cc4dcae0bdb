"""Mount options (issue 14): every option libfuse 3.14 passes on from our command
line either works (the mount comes up, serves, and the option has its effect) or
is refused with exit 1, one line, and nothing mounted; never exit 0 without a
mount.  sshfs's uid=, gid= and umask= set what files show, and fsname=,
subtype=, max_read= are honoured."""
import errno
import os
import re
import signal
import stat
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")
small_model = util.small_model

PAGE = os.sysconf("SC_PAGESIZE")
REPLY_MAX = 256 * PAGE  # REPLY_MAX_PAGES: the largest read the daemon's buffers hold
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a second user, or the bdi)")


def run_daemon(argv, timeout=20):
    return subprocess.run([str(util.binary())] + argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=util.daemon_env())


def mount_line(mnt):
    """(source, type, options) of the mount at mnt in /proc/self/mounts."""
    lines = [line.split() for line in util.mount_lines(mnt) if line.split()[1] == str(mnt)]
    assert len(lines) == 1, lines
    return lines[0][0], lines[0][2], lines[0][3].split(",")


def assert_serves(mnt, tensors):
    """The mount answers (this waits for FUSE_INIT's reply, so no timing is involved)."""
    assert {"other", "w"} <= set(os.listdir(mnt))
    assert (mnt / "w" / "big").read_bytes() == tensors["w.big"].tobytes()
    assert (mnt / "other").read_bytes() == tensors["other"].tobytes()


def unmount(mnt):
    r = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert r.returncode == 0, r.stderr


def stop_noisy(m):
    """Stops a daemon started with -d (whose stderr is its debug log): unmounted, exit 0,
    no sanitizer report."""
    m.stopped = True
    unmount(m.mnt)
    assert m.wait_exit() == 0, m.stderr()[-2000:]
    assert not any(marker in m.stderr() for marker in util.SANITIZER_MARKERS), m.stderr()[-4000:]


# ------------------------------------------------ refused: exit 1, one line, no mount

REFUSED = [
    "uid=abc", "uid=-1", "uid=4294967295", "uid=1.5", "uid=", "uid=root", "uid= 5",
    "gid=x", "gid=-5", "gid=99999999999",
    "umask=8", "umask=0999", "umask=1000", "umask=-1", "umask=u+r", "umask=0x1f",
    "read_ahead_kb=-5", "read_ahead_kb=-4293918720", "read_ahead_kb=abc", "read_ahead_kb=16384k",
    "read_ahead_kb=1048577",
    "max_read=-5", "max_read=0", "max_read=4095", f"max_read={REPLY_MAX + 1}", "max_read=abc",
    "max_write=0", "max_write=1", "max_write=-5", f"max_write={REPLY_MAX + 1}",
    "max_readahead=-5", "max_readahead=1073741825",
    "blkdev", "blksize=4096", "max_idle_threads=2", "max_idle_threads=-1", "fsname=", "subtype=",
]


@pytest.mark.parametrize("foreground", [True, False], ids=["-f", "background"])
@pytest.mark.parametrize("opt", REFUSED)
def test_refused(tmp_path, opt, foreground):
    """Refused before SOURCE is even opened, so also without -f the exit status says so."""
    p, _ = small_model(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, out, err = util.run_refused(p, mnt, ["-o", opt], foreground=foreground)
    name = opt.split("=")[0]
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and err.startswith(f"safetensorsfs: {name}: "), err
    assert out == ""
    assert util.mount_lines(tmp_path) == []


def test_refused_before_the_source_is_looked_at(tmp_path):
    """The option's line, not SOURCE's: an option is judged first."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, _, err = util.run_refused(tmp_path / "missing.safetensors", mnt, ["-o", "uid=x"])
    assert rc == 1 and err.startswith("safetensorsfs: uid: "), err


# ------------------------------- every pass-through option: exit 1 or a working mount

SEL = "system_u:object_r:tmp_t:s0"
PASS_THROUGH = [
    # fuse_parse_cmdline's
    ["-s"], ["-d"], ["-o", "debug"], ["-o", "clone_fd"], ["-o", "max_threads=2"],
    ["-o", "max_idle_threads=4"],
    # fuse_session_new's and the mount's
    ["-o", "allow_other"], ["-o", "allow_root"], ["-o", "auto_unmount"], ["-o", "default_permissions"],
    ["-o", "fsname=model"], ["-o", "subtype=weights"], ["-o", "blkdev"], ["-o", "blksize=4096"],
    ["-o", "max_read=65536"], ["-o", "max_read=4096"], [f"-omax_read={REPLY_MAX}"], ["-o", "nonempty"],
    ["-o", "ro"], ["-o", "rw"], ["-r"], ["-n"], ["-o", "user=root"],
    ["-o", "dev"], ["-o", "nodev"], ["-o", "suid"], ["-o", "nosuid"], ["-o", "exec"], ["-o", "noexec"],
    ["-o", "async"], ["-o", "sync"], ["-o", "dirsync"], ["-o", "atime"], ["-o", "noatime"],
    ["-o", "nodiratime"], ["-o", "relatime"], ["-o", "norelatime"], ["-o", "strictatime"],
    ["-o", "nostrictatime"], ["-o", "lazytime"], ["-o", "symfollow"], ["-o", "nosymfollow"],
    ["-o", f"context={SEL}"], ["-o", f"fscontext={SEL}"], ["-o", f"defcontext={SEL}"],
    ["-o", f"rootcontext={SEL}"],
    # options libfuse adds itself, or takes only in its high-level API
    ["-o", "user_id=0"], ["-o", "group_id=0"], ["-o", "fd=3"], ["-o", "rootmode=40000"],
    ["-o", "uid=0"], ["-o", "gid=0"], ["-o", "umask=022"], ["-o", "kernel_cache"], ["-o", "big_writes"],
    ["-o", "large_read"], ["-o", "direct_io"], ["-o", "entry_timeout=1"], ["-o", "use_ino"],
    # fuse_parse_conn_info_opts's
    ["-o", "max_write=65536"], ["-o", "max_write=4096"], ["-o", "max_readahead=65536"],
    ["-o", "max_background=8"], ["-o", "congestion_threshold=4"], ["-o", "async_read"], ["-o", "sync_read"],
    ["-o", "atomic_o_trunc"], ["-o", "no_remote_lock"], ["-o", "no_remote_flock"],
    ["-o", "no_remote_posix_lock"], ["-o", "splice_write"], ["-o", "no_splice_write"], ["-o", "splice_move"],
    ["-o", "no_splice_move"], ["-o", "splice_read"], ["-o", "no_splice_read"], ["-o", "auto_inval_data"],
    ["-o", "no_auto_inval_data"], ["-o", "readdirplus=no"], ["-o", "readdirplus=yes"],
    ["-o", "readdirplus=auto"], ["-o", "async_dio"], ["-o", "no_async_dio"], ["-o", "writeback_cache"],
    ["-o", "no_writeback_cache"], ["-o", "time_gran=1000"],
    # odd values libfuse's %u takes as they come
    ["-o", "max_background=0"], ["-o", "max_background=-1"], ["-o", "congestion_threshold=0"],
    ["-o", "time_gran=0"], ["-o", "time_gran=-1"], ["-o", "max_readahead=0"], ["-o", "readdirplus=maybe"],
    ["-o", "max_write=4096,max_read=65536"], ["-o", "spin_us=0,max_threads=2,clone_fd"],
]
FOREGROUND_ONLY = {"-d", "debug"}  # they imply -f: a background run would not return
# Those that may be refused: ours (blkdev, blksize, max_idle_threads), libfuse 3's unknown
# ones, and the SELinux contexts a kernel without SELinux refuses.  Every other one is
# documented as working and must mount.
MAY_BE_REFUSED = {
    "max_idle_threads=4", "blkdev", "blksize=4096", "nonempty", "nodiratime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "lazytime", "symfollow", "nosymfollow", f"context={SEL}",
    f"fscontext={SEL}", f"defcontext={SEL}", f"rootcontext={SEL}", "user_id=0", "group_id=0", "fd=3",
    "rootmode=40000", "kernel_cache", "big_writes", "large_read", "direct_io", "entry_timeout=1", "use_ino",
    "readdirplus=maybe",
}


def judge_exit(rc, err, mnt, tmp_path, opts):
    assert MAY_BE_REFUSED & set(opts), f"{opts} must mount, but exit {rc}; stderr:\n{err}"
    assert rc == 1, f"exit {rc} without a mount; stderr:\n{err}"
    assert err.strip() and len(err.splitlines()) == 1, err
    assert util.mount_lines(tmp_path) == []
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("opts", PASS_THROUGH, ids=" ".join)
def test_pass_through_foreground(tmp_path, opts):
    """With -f: the daemon exits 1 at once, or mounts, serves and exits 0 when unmounted."""
    p, tensors = small_model(tmp_path)
    m = util.Mount(p, tmp_path / "mnt", opts)
    try:
        m.start()
    except util.DaemonError:
        if m.proc.poll() is None:  # neither mounted nor gone
            m.proc.kill()
            m.proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)
            pytest.fail(f"no mount and no exit in {util.MOUNT_TIMEOUT} s; stderr:\n{m.stderr()}")
        judge_exit(m.proc.returncode, m.stderr(), m.mnt, tmp_path, opts)
        return
    try:
        assert_serves(m.mnt, tensors)
        m.check_alive()
    finally:
        m.stopped = True
        if os.path.ismount(m.mnt):
            unmount(m.mnt)
        code = m.wait_exit()
    assert code == 0, m.stderr()[-2000:]
    assert not any(marker in m.stderr() for marker in util.SANITIZER_MARKERS), m.stderr()[-4000:]


@pytest.mark.parametrize("opts", [o for o in PASS_THROUGH if not FOREGROUND_ONLY & set(o)], ids=" ".join)
def test_pass_through_background(tmp_path, opts):
    """Without -f (as from fstab) the exit status comes before FUSE_INIT is answered: an
    option that INIT would fail on must have been refused already."""
    p, tensors = small_model(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run_daemon([*opts, str(p), str(mnt)])
    if r.returncode != 0:
        judge_exit(r.returncode, r.stderr, mnt, tmp_path, opts)
        return
    try:
        assert os.path.ismount(mnt), "exit 0 but nothing mounted"
        assert_serves(mnt, tensors)
        assert r.stdout == r.stderr == ""
    finally:
        if os.path.ismount(mnt):
            unmount(mnt)


# ------------------------------------------------------------- honoured: their effect

def test_uid_gid_umask(tmp_path, mount):
    p, tensors = small_model(tmp_path)
    m = mount(p, "-o", "uid=1234,gid=5678,umask=027")
    for rel, mode in (("", 0o550), ("w", 0o550), ("w/big", 0o440), ("other", 0o440), (".header.json", 0o440),
                      (".metadata.json", 0o440), ("w/big.npy", 0o440), ("w/big[0:2]", 0o440)):
        st = os.stat(m.mnt / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, mode), rel
    # /.control stays the mounting user's, 0600: only they (and root) may open it.
    st = os.stat(m.mnt / ".control")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getuid(), os.getgid(), 0o600)
    assert (m.mnt / "w" / "big").read_bytes() == tensors["w.big"].tobytes()
    os.close(os.open(m.mnt / ".control", os.O_RDWR))


@pytest.mark.parametrize("umask, files, dirs", [("0", 0o444, 0o555), ("0777", 0, 0), ("22", 0o444, 0o555),
                                                 ("0004", 0o440, 0o551)], ids=lambda v: f"{v:o}" if isinstance(v, int) else v)
def test_umask_values(tmp_path, mount, umask, files, dirs):
    p, _ = small_model(tmp_path)
    m = mount(p, "-o", f"umask={umask}")
    assert stat.S_IMODE(os.stat(m.mnt / "other").st_mode) == files
    assert stat.S_IMODE(os.stat(m.mnt / "w").st_mode) == dirs
    assert stat.S_ISDIR(os.stat(m.mnt / "w").st_mode) and stat.S_ISREG(os.stat(m.mnt / "other").st_mode)
    assert stat.S_IMODE(os.stat(m.mnt / ".control").st_mode) == 0o600


def test_default_owner(tmp_path, mount):
    p, _ = small_model(tmp_path)
    m = mount(p)
    for rel, mode in (("", 0o555), ("w/big", 0o444), (".control", 0o600)):
        st = os.stat(m.mnt / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getuid(), os.getgid(), mode), rel


@ROOT_ONLY
def test_uid_does_not_open_the_control_file(tmp_path):
    """uid=N shows another user as every file's owner and, with default_permissions, the
    kernel lets them read 0440 files (where others may not); /.control stays the mounting user's."""
    user = util.other_user()
    uid, gid = int(subprocess.check_output(["id", "-u", user])), int(subprocess.check_output(["id", "-g", user]))
    shared = util.shared_tmpdir("stfs-uid-")
    try:
        src, tensors = small_model(shared)
        os.chmod(src, 0o644)
        opts = ("-o", f"allow_other,default_permissions,uid={uid},gid={gid},umask=0027")
        with util.mounted(src, shared / "mnt", opts) as m:
            r = util.run_as(user, "cat", str(m.mnt / "w" / "big"))
            assert r.returncode == 0 and r.stdout == tensors["w.big"].tobytes(), r.stderr
            r = util.run_as(user, "dd", f"if={m.mnt / '.control'}", "of=/dev/null", "count=0", "status=none")
            assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stderr
        # The same modes for a user who is not the owner shown: the kernel refuses.
        with util.mounted(src, shared / "mnt2", ("-o", "allow_other,default_permissions,umask=0027")) as m:
            r = util.run_as(user, "cat", str(m.mnt / "w" / "big"))
            assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(shared)])


@pytest.mark.parametrize("opts, source, fstype", [
    (["-o", "fsname=mymodel,subtype=weights"], "mymodel", "fuse.weights"),
    (["-o", "fsname=mymodel"], "mymodel", "fuse.safetensorsfs"),
    (["-o", "subtype=weights"], None, "fuse.weights"),
    (["-o", r"fsname=a\,b"], "a,b", "fuse.safetensorsfs"),
    ([], None, "fuse.safetensorsfs"),
], ids=["both", "fsname", "subtype", "escaped comma", "default"])
def test_fsname_subtype(tmp_path, mount, opts, source, fstype):
    p, tensors = small_model(tmp_path)
    m = mount(p, *opts)
    got_source, got_type, _ = mount_line(m.mnt)
    assert got_source == (source or str(p.resolve()))
    assert got_type == fstype
    assert_serves(m.mnt, tensors)


def bdi_read_ahead_kb(mnt):
    """The mount's readahead window, from its bdi in /sys."""
    dev = os.stat(mnt).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
        return int(f.read())


@ROOT_ONLY
def test_read_ahead_kb_with_subtype(tmp_path, mount):
    """The window was set only on a mount of type fuse.safetensorsfs."""
    p, _ = small_model(tmp_path)
    m = mount(p, "-o", "read_ahead_kb=96,subtype=weights")
    assert bdi_read_ahead_kb(m.mnt) == 96


def read_replies(log):
    """The sizes of the replies to READ requests in a -d log."""
    reads = set(re.findall(r"unique: (\d+), opcode: READ \(15\)", log))
    return [int(size) for u, size in re.findall(r"unique: (\d+), success, outsize: (\d+)", log) if u in reads]


@pytest.mark.parametrize("max_read", [4096, 65536, REPLY_MAX])
def test_max_read(tmp_path, max_read):
    """-o max_read=N reaches the kernel (/proc/mounts) and INIT: no read request is larger."""
    p, tensors = small_model(tmp_path)
    m = util.Mount(p, tmp_path / "mnt", ["-d", "-o", f"max_read={max_read}"]).start()
    try:
        assert f"max_read={max_read}" in mount_line(m.mnt)[2]
        assert_serves(m.mnt, tensors)
        # A direct read of 1 MiB, which the kernel would otherwise send as one request.
        r = subprocess.run(["dd", f"if={m.mnt / 'w' / 'big'}", "of=/dev/null", "bs=1M", "iflag=direct",
                            "status=none"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        m.check_alive()
    finally:
        stop_noisy(m)
    sizes = read_replies(m.stderr())
    assert sizes and max(sizes) <= max_read + 16, sorted(set(sizes))  # 16: the reply header
    if max_read < tensors["w.big"].nbytes:
        assert max_read + 16 in sizes


@ROOT_ONLY
def test_max_readahead_caps_the_window(tmp_path, mount):
    """max_readahead lowers the window that read_ahead_kb (default 16 MiB) sets."""
    p, _ = small_model(tmp_path)
    m = mount(p, "-o", "max_readahead=65536")
    assert bdi_read_ahead_kb(m.mnt) == 64


def test_ro(tmp_path, mount):
    """-o ro: read-only to the kernel too, and no /.control (test_walk_requests.py)."""
    p, tensors = small_model(tmp_path)
    m = mount(p, "-o", "ro")
    assert "ro" in mount_line(m.mnt)[2]
    assert_serves(m.mnt, tensors)
    assert util.errno_of(os.open, m.mnt / ".control", os.O_RDWR) == errno.ENOENT
    assert util.errno_of(os.open, m.mnt / "other", os.O_WRONLY) == errno.EROFS


def test_rw_is_still_read_only(tmp_path, mount):
    """-o rw (what mount(8) passes for fstab's defaults) mounts; the tree stays read-only."""
    p, tensors = small_model(tmp_path)
    m = mount(p, "-o", "rw")
    assert_serves(m.mnt, tensors)
    assert util.errno_of(os.open, m.mnt / "other", os.O_WRONLY) in util.READ_ONLY_ERRNOS
    assert util.errno_of(os.mkdir, m.mnt / "new") in util.READ_ONLY_ERRNOS
    os.close(os.open(m.mnt / ".control", os.O_RDWR))


def root_is_a_mount():
    """Whether "/" is a mount point: inside a chroot it need not be."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == "/" for line in f)


@pytest.mark.skipif(os.geteuid() != 0, reason="libfuse 3.14's fusermount3 checks the dead mount as root, which "
                                             "a user's mount without allow_other refuses (libfuse issue 586)")
@pytest.mark.skipif(not root_is_a_mount(), reason="fusermount3's auto_unmount makes / private in a new mount "
                                                  "namespace, which fails (EINVAL) where / is no mount point, as in a chroot")
def test_auto_unmount(tmp_path):
    """-o auto_unmount (libfuse mounts through fusermount3 for it, also as root): the
    mount goes when the daemon is killed, also after directories were listed (fusermount3
    unmounts only where opening the mountpoint says ENOTCONN, so OPENDIR stays on)."""
    p, tensors = small_model(tmp_path)
    m = util.Mount(p, tmp_path / "mnt", ["-o", "auto_unmount"]).start()
    try:
        assert_serves(m.mnt, tensors)
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=util.EXIT_TIMEOUT)
        deadline = time.monotonic() + util.MOUNT_TIMEOUT
        while util.mount_lines(m.mnt) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert util.mount_lines(m.mnt) == []
    finally:
        m.stopped = True
        if util.mount_lines(m.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)


@ROOT_ONLY
def test_allow_root(tmp_path):
    """allow_root: the owner and root only (here they are one), others get EACCES."""
    user = util.other_user()
    shared = util.shared_tmpdir("stfs-root-")
    try:
        src, tensors = small_model(shared)
        os.chmod(src, 0o644)
        with util.mounted(src, shared / "mnt", ("-o", "allow_root")) as m:
            assert (m.mnt / "other").read_bytes() == tensors["other"].tobytes()
            r = util.run_as(user, "cat", str(m.mnt / "other"))
            assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(shared)])


# ------------------------------------------------------------------------- --help

def option_names(text):
    """The option names in the help's option column (4 spaces in, 23 wide): '-o NAME[=...]',
    '-x', '--long'; continuation lines are indented further."""
    names = []
    for line in text.splitlines():
        if not re.match(r" {4}-", line):
            continue
        for token in line[4:27].split():
            if token != "-o":
                names.append(re.match(r"-*([A-Za-z_]+)", token).group(1))
    return names


def test_help_lists_each_option_once():
    r = run_daemon(["--help"])
    assert r.returncode == 0 and r.stderr == ""
    names = option_names(r.stdout)
    dups = sorted({n for n in names if names.count(n) > 1})
    assert not dups, f"listed more than once: {dups}\n{r.stdout}"
    for name in ("layout", "max_threads", "spin_us", "uid", "gid", "umask", "fsname", "subtype", "max_read",
                 "ro", "allow_other", "allow_root", "auto_unmount", "default_permissions", "debug", "d", "f",
                 "s", "h", "help", "V", "version"):
        assert name in names, f"{name} not listed:\n{r.stdout}"
    # Refused here, so not offered.
    assert "max_idle_threads" not in r.stdout
    assert len(re.findall(r"\bmax_threads\b", r.stdout)) == 1, r.stdout
