"""A model written by the official library, mounted in both layouts, compared
with what safe_open and an independent reading of the header say."""
import base64
import errno
import json
import mmap
import os
import random
import shutil
import stat
import subprocess
import threading

import numpy as np
import pytest
from safetensors import safe_open

import util
from conftest import DTYPES, METADATA
from util import PREFIX, TENSOR_XATTRS

pytestmark = pytest.mark.usefixtures("fuse_environment")


def test_key_set_equals_walk(mounted):
    """Every tensor is exactly one file at the path the naming rule gives, and
    there is nothing else: no extra file or directory, none listed twice."""
    files, dirs = util.walk(mounted.root)
    assert sorted(files) == sorted(mounted.files)
    assert sorted(dirs) == sorted(mounted.dirs)
    with safe_open(str(mounted.model.path), framework="np") as f:
        assert set(mounted.files.values()) == set(f.keys())


def test_expected_layout_examples(mounted):
    """The naming rule's documented cases, spelled out (a check on the
    Python rule as much as on the daemon)."""
    tree = {
        "a..b": "a/%/b", ".lead": "%/lead", "trail.": "trail/%", "%": "%25", "%25": "%2525",
        "50%.x": "50%25/x", "sl/ash.y": "sl%2Fash/y", "nul\x00name": "nul%00name",
        ".": "%/%.tensor", "..": "%/%/%", "": "%.tensor", "enc.layer": "enc/layer.tensor",
        "enc.layer.w": "enc/layer/w", "top": "top.tensor", "deep": "deep.tensor",
        "deep.a": "deep/a.tensor", "deep.a.b": "deep/a/b", ".header.json": "%/header/json",
        "x.tensor": "x/tensor",
    }
    flat = {
        "": "%", ".": "%2E", "..": "%2E.", ".lead": "%2Elead", "trail.": "trail.", "a..b": "a..b",
        "%": "%25", "sl/ash.y": "sl%2Fash.y", "nul\x00name": "nul%00name",
        ".header.json": "%2Eheader.json", ".control": "%2Econtrol", "enc.layer": "enc.layer",
    }
    want = tree if mounted.layout == "tree" else flat
    for name, path in want.items():
        assert mounted.by_name[name] == path
        assert os.path.isfile(mounted.root / path), path


def test_root_dot_files(mounted):
    names = os.listdir(mounted.root)
    assert len(names) == len(set(names))
    dot = {n for n in names if n.startswith(".")}
    # .control is reachable by name but never listed, so walks by other users never meet it.
    assert dot == set(util.RESERVED)
    for n in util.UNLISTED:
        assert n not in names
    assert os.stat(mounted.root / ".control").st_mode & 0o777 == 0o600


def test_header_json(mounted):
    p = mounted.root / ".header.json"
    data = p.read_bytes()
    with open(mounted.model.path, "rb") as f:
        f.seek(8)
        assert data == f.read(mounted.model.n)
    assert data == mounted.model.raw_header
    assert os.stat(p).st_size == mounted.model.n
    assert json.loads(data)["__metadata__"] == METADATA


def test_metadata_json(mounted):
    p = mounted.root / ".metadata.json"
    data = p.read_bytes()
    # exactly the object as written in the header, no trailing newline
    assert data == mounted.model.members["__metadata__"][1].encode()
    assert json.loads(data) == METADATA
    with safe_open(str(mounted.model.path), framework="np") as f:
        assert json.loads(data) == f.metadata()
    assert os.stat(p).st_size == len(data)


def test_read_whole(mounted):
    with safe_open(str(mounted.model.path), framework="np") as f:
        for name in mounted.model.names():
            data = mounted.path_of(name).read_bytes()
            assert data == mounted.model.expected_bytes(name), name
            try:
                ref = f.get_tensor(name)
            except (AttributeError, TypeError, KeyError):
                continue  # safe_open's numpy side lacks F8 types
            assert data == ref.tobytes(), name


def test_read_small_chunks(mounted):
    """Sequential reads of odd sizes add up to the tensor."""
    for name in mounted.model.names():
        chunks = []
        with open(mounted.path_of(name), "rb", buffering=0) as f:
            while chunk := f.read(4093):
                chunks.append(chunk)
            assert f.read(10) == b""
        assert b"".join(chunks) == mounted.model.expected_bytes(name), name


def test_mmap(mounted):
    for name in mounted.model.names():
        want = mounted.model.expected_bytes(name)
        if not want:
            continue
        with open(mounted.path_of(name), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == want, name
    # a mapping at a page offset into the big tensor
    name = "model.embed.weight"
    want = mounted.model.expected_bytes(name)
    with open(mounted.path_of(name), "rb") as f:
        with mmap.mmap(f.fileno(), 3 * mmap.PAGESIZE, prot=mmap.PROT_READ, offset=5 * mmap.PAGESIZE) as m:
            assert m[:] == want[5 * mmap.PAGESIZE:8 * mmap.PAGESIZE]


def test_pread_random(mounted):
    rng = random.Random(7)
    for name in mounted.model.names():
        want = mounted.model.expected_bytes(name)
        size = len(want)
        fd = os.open(mounted.path_of(name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for _ in range(30):
                off = rng.randrange(0, size + 64)
                n = rng.choice([0, 1, 3, 17, 4096, 65537, size + 10, rng.randrange(1, size + 2)])
                assert os.pread(fd, n, off) == want[off:off + n], (name, off, n)
            assert os.pread(fd, 100, size) == b""
            assert os.pread(fd, 100, size + 12345) == b""
            assert os.pread(fd, 100, 2**62) == b""
            if size:
                assert os.pread(fd, 1, size - 1) == want[-1:]
        finally:
            os.close(fd)


def test_tail_and_dd(mounted):
    name = "model.embed.weight"
    p = mounted.path_of(name)
    want = mounted.model.expected_bytes(name)
    assert subprocess.run(["tail", "-c", "1000", p], capture_output=True, check=True).stdout == want[-1000:]
    out = subprocess.run(["dd", f"if={p}", "bs=4096", "skip=3", "count=5", "status=none"],
                         capture_output=True, check=True).stdout
    assert out == want[3 * 4096:8 * 4096]


def test_partial_load_from_backing_file(mounted):
    """The contract's recipe: dd from the backing file at the xattr offset."""
    for name in ["model.embed.weight", "dtypes.bf16", "ünï.códe.张量", "nul\x00name", "zero.a", "scalar"]:
        t = mounted.path_of(name)
        cmd = ('dd if="$SRC" iflag=skip_bytes,count_bytes status=none '
               'skip=$(getfattr --only-values -n user.safetensors.offset "$T") count=$(stat -c %s "$T")')
        out = subprocess.run(["bash", "-c", cmd], env={**os.environ, "SRC": str(mounted.model.path), "T": str(t)},
                             capture_output=True, check=True).stdout
        assert out == mounted.model.expected_bytes(name), name


def test_stat(mounted):
    backing = os.stat(mounted.model.path)
    for name in mounted.model.names():
        st = os.stat(mounted.path_of(name))
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444, name
        assert st.st_size == mounted.model.nbytes(name) == len(mounted.model.expected_bytes(name)), name
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        for t in ("st_mtime_ns", "st_atime_ns", "st_ctime_ns"):
            assert getattr(st, t) == backing.st_mtime_ns, (name, t)
    for rel in [""] + sorted(mounted.dirs):
        p = mounted.root / rel
        st = os.stat(p)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555, rel
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        subdirs = sum(1 for e in os.scandir(p) if e.is_dir(follow_symlinks=False))
        assert st.st_nlink == 2 + subdirs, rel
        assert st.st_mtime_ns == backing.st_mtime_ns, rel
    for n in util.RESERVED:
        st = os.stat(mounted.root / n)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
        assert st.st_mtime_ns == backing.st_mtime_ns


def test_scandir_types_and_inodes(mounted):
    """d_type and d_ino from readdir agree with stat; inode numbers are unique."""
    seen = {}
    stack = [mounted.root]
    while stack:
        d = stack.pop()
        for e in os.scandir(d):
            st = os.stat(e.path, follow_symlinks=False)
            assert e.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode), e.path
            assert e.is_file(follow_symlinks=False) == stat.S_ISREG(st.st_mode), e.path
            assert e.inode() == st.st_ino, e.path
            assert st.st_ino not in seen, (e.path, seen.get(st.st_ino))
            seen[st.st_ino] = e.path
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    assert len(seen) == len(mounted.files) + len(mounted.dirs) + len(
        [n for n in os.listdir(mounted.root) if n in util.RESERVED])


def expected_tensor_xattrs(model, name):
    info = model.info(name)
    b, e = info["data_offsets"]
    return {
        "name": name.encode(),
        "dtype": info["dtype"].encode(),
        "shape": ("[" + ",".join(str(d) for d in info["shape"]) + "]").encode(),
        "data_offsets": f"[{b},{e}]".encode(),
        "offset": str(8 + model.n + b).encode(),
        "file": model.path.name.encode(),
    }


def test_tensor_xattrs(mounted):
    with safe_open(str(mounted.model.path), framework="np") as f:
        for name in mounted.model.names():
            p = mounted.path_of(name)
            want = expected_tensor_xattrs(mounted.model, name)
            assert sorted(os.listxattr(p)) == sorted(PREFIX + a for a in TENSOR_XATTRS), name
            got = {a: os.getxattr(p, PREFIX + a) for a in TENSOR_XATTRS}
            assert got == want, name
            sl = f.get_slice(name)
            assert got["dtype"].decode() == sl.get_dtype()
            assert json.loads(got["shape"]) == list(sl.get_shape())


def test_dtype_strings(mounted):
    """Each numpy/ml_dtypes type is written and served under its safetensors name."""
    for key, (_, st_name) in DTYPES.items():
        p = mounted.path_of(f"dtypes.{key}")
        assert os.getxattr(p, PREFIX + "dtype") == st_name.encode()


def test_root_xattrs(mounted):
    root = mounted.root
    model = mounted.model
    names = set(os.listxattr(root))
    want = {PREFIX + "metadata." + k for k in METADATA} | {PREFIX + "tensors", PREFIX + "bytes"}
    # user.safetensors.shards is documented in the README (the number of backing files)
    assert names == want | {PREFIX + "shards"}
    for k, v in METADATA.items():
        assert os.getxattr(root, PREFIX + "metadata." + k) == v.encode(), k
    assert os.getxattr(root, PREFIX + "tensors") == str(len(model.names())).encode()
    total = sum(model.nbytes(n) for n in model.names())
    assert total == sum(t.nbytes for t in model.tensors.values())
    assert os.getxattr(root, PREFIX + "bytes") == str(total).encode()
    assert os.getxattr(root, PREFIX + "shards") == b"1"


def test_no_xattrs_elsewhere(mounted):
    others = [mounted.root / n for n in util.RESERVED] + [mounted.root / d for d in sorted(mounted.dirs)]
    for p in others:
        assert os.listxattr(p) == [], p
        assert util.c_listxattr(p, 0) == 0
        for a in TENSOR_XATTRS + ("tensors", "bytes", "metadata.format"):
            assert util.errno_of(os.getxattr, p, PREFIX + a) == errno.ENODATA, (p, a)


def test_unknown_xattr_enodata(mounted):
    p = mounted.path_of("model.embed.weight")
    for target in (p, mounted.root):
        for a in ("user.safetensors.bogus", "user.other", "user.safetensors.", "user.safetensors.metadata.",
                  "user.safetensors.metadata.nope", "user.safetensors.name.x", "user.safetensors.NAME",
                  "trusted.safetensors.name"):
            assert util.errno_of(os.getxattr, target, a) == errno.ENODATA, (target, a)
            assert util.errno_of(util.c_getxattr, target, a, 0) == errno.ENODATA, (target, a)


def test_xattr_probe_and_erange(mounted):
    """getxattr(2)/listxattr(2) semantics: size 0 gives the length, a short
    buffer ERANGE, an exact one the value."""
    root = mounted.root
    cases = [(mounted.path_of(n), PREFIX + a, v) for n in ("model.embed.weight", "ünï.códe.张量", "scalar")
             for a, v in expected_tensor_xattrs(mounted.model, n).items()]
    cases += [(root, PREFIX + "metadata." + k, v.encode()) for k, v in METADATA.items()]
    for p, a, v in cases:
        assert util.c_getxattr(p, a, 0) == len(v), (p, a)
        if v:
            assert util.c_getxattr(p, a, len(v)) == v, (p, a)
        assert util.c_getxattr(p, a, len(v) + 100) == v, (p, a)
        if len(v) >= 2:  # (a buffer of size 0 is the probe, not a short buffer)
            assert util.errno_of(util.c_getxattr, p, a, len(v) - 1) == errno.ERANGE, (p, a)
            assert util.errno_of(util.c_getxattr, p, a, 1) == errno.ERANGE, (p, a)
    for p in (mounted.path_of("model.embed.weight"), root):
        full = b"".join(n.encode() + b"\0" for n in os.listxattr(p))
        assert util.c_listxattr(p, 0) == len(full)
        assert util.c_listxattr(p, len(full)) == full
        assert util.errno_of(util.c_listxattr, p, len(full) - 1) == errno.ERANGE
        assert util.errno_of(util.c_listxattr, p, 1) == errno.ERANGE


def parse_getfattr(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        k, _, v = line.partition("=")
        if v.startswith("0s"):  # getfattr's base64 for values it does not print as text
            out[k] = base64.b64decode(v[2:]).decode()
        else:
            assert v.startswith('"') and v.endswith('"'), line
            out[k] = v[1:-1]
    return out


def test_getfattr_cli(mounted):
    for name in ("model.embed.weight", "dtypes.bf16"):
        p = mounted.path_of(name)
        r = subprocess.run(["getfattr", "-d", "--absolute-names", str(p)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        want = {PREFIX + k: v.decode() for k, v in expected_tensor_xattrs(mounted.model, name).items()}
        assert parse_getfattr(r.stdout) == want
        r = subprocess.run(["getfattr", "--only-values", "-n", "user.safetensors.shape", str(p)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == want[PREFIX + "shape"]
    r = subprocess.run(["getfattr", "-d", "--absolute-names", str(mounted.root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = parse_getfattr(r.stdout)
    assert got[PREFIX + "metadata.format"] == "np"
    assert got[PREFIX + "tensors"] == str(len(mounted.model.names()))


def test_numpy_fromfile(mounted):
    with safe_open(str(mounted.model.path), framework="np") as f:
        for name, arr in mounted.model.tensors.items():
            got = np.fromfile(mounted.path_of(name), dtype=arr.dtype).reshape(arr.shape)
            assert got.tobytes() == arr.tobytes(), name
            try:
                ref = f.get_tensor(name)
            except (AttributeError, TypeError, KeyError):
                continue  # safe_open's numpy side lacks F8 types
            np.testing.assert_array_equal(got, ref)


def test_concurrent_readers(mounted):
    """Threads reading the same tensor at once, with the page cache dropped
    under them, all see the tensor's bytes."""
    name = "model.embed.weight"
    p = mounted.path_of(name)
    want = mounted.model.expected_bytes(name)
    errors = []

    def reader(seed):
        rng = random.Random(seed)
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                for i in range(40):
                    if i % 8 == 0:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    off = rng.randrange(0, len(want))
                    n = rng.randrange(1, 300_000)
                    if os.pread(fd, n, off) != want[off:off + n]:
                        errors.append((seed, off, n))
                with open(p, "rb") as f:
                    if f.read() != want:
                        errors.append((seed, "whole"))
            finally:
                os.close(fd)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((seed, repr(e)))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_statfs(mounted):
    st = os.statvfs(mounted.root)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_namemax >= 255
    assert st.f_blocks * st.f_frsize >= os.path.getsize(mounted.model.path)
    st2 = os.statvfs(mounted.path_of("scalar"))
    assert st2.f_blocks == st.f_blocks
    r = subprocess.run(["stat", "-f", "-c", "%T", str(mounted.root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("fuseblk", "fuse", "UNKNOWN (0x65735546)")


def test_enoent(mounted):
    root = mounted.root
    for rel in ("nope", "model/nope", ".nope", "%2", "%zz", "dtypes.u8" if mounted.layout == "tree" else "dtypes/u8",
                "enc/layer/w.tensor" if mounted.layout == "tree" else "enc.layer.tensor"):
        assert util.errno_of(os.stat, root / rel) == errno.ENOENT, rel
    f = mounted.path_of("scalar")
    assert util.errno_of(os.stat, f / "child") == errno.ENOTDIR
    assert util.errno_of(os.listdir, f) == errno.ENOTDIR


def test_directories_are_not_files(mounted):
    d = mounted.root / sorted(mounted.dirs)[0] if mounted.dirs else mounted.root
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert util.errno_of(os.read, fd, 10) == errno.EISDIR
    finally:
        os.close(fd)


# ---------------------------------------------------------------- read-only

def write_ops(root, file, dirpath):
    """(label, callable) for everything that would change the tree or the bytes."""
    newf = root / "newfile"
    dir_ops = [
        ("create in dir", lambda: os.close(os.open(dirpath / "new", os.O_WRONLY | os.O_CREAT, 0o644))),
        ("rename dir", lambda: os.rename(dirpath, root / "renamed_dir")),
        ("mkdir in dir", lambda: os.mkdir(dirpath / "newdir")),
        ("rmdir", lambda: os.rmdir(dirpath)),
        ("chmod dir", lambda: os.chmod(dirpath, 0o777)),
    ] if dirpath else []
    return dir_ops + [
        ("open O_WRONLY", lambda: os.close(os.open(file, os.O_WRONLY))),
        ("open O_RDWR", lambda: os.close(os.open(file, os.O_RDWR))),
        ("open O_APPEND", lambda: os.close(os.open(file, os.O_WRONLY | os.O_APPEND))),
        ("open O_TRUNC", lambda: os.close(os.open(file, os.O_RDONLY | os.O_TRUNC))),
        ("open O_CREAT existing", lambda: os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o644))),
        ("create", lambda: os.close(os.open(newf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))),
        ("truncate", lambda: os.truncate(file, 0)),
        ("truncate grow", lambda: os.truncate(file, 1 << 20)),
        ("unlink", lambda: os.unlink(file)),
        ("rename", lambda: os.rename(file, root / "renamed")),
        ("rename onto", lambda: os.rename(file, root / ".metadata.json")),
        ("mkdir", lambda: os.mkdir(root / "newdir")),
        ("mkfifo", lambda: os.mkfifo(root / "fifo")),
        ("symlink", lambda: os.symlink("target", root / "link")),
        ("link", lambda: os.link(file, root / "hardlink")),
        ("chmod", lambda: os.chmod(file, 0o666)),
        ("chown", lambda: os.chown(file, 1, 1)),
        ("utime", lambda: os.utime(file, (1, 1))),
        ("utime now", lambda: os.utime(file)),
        ("setxattr new", lambda: os.setxattr(file, "user.x", b"1")),
        ("setxattr existing", lambda: os.setxattr(file, PREFIX + "dtype", b"F32")),
        ("setxattr root", lambda: os.setxattr(root, PREFIX + "metadata.format", b"pt")),
        ("removexattr", lambda: os.removexattr(file, PREFIX + "name")),
        ("removexattr root", lambda: os.removexattr(root, PREFIX + "tensors")),
        ("write header.json", lambda: os.close(os.open(root / ".header.json", os.O_WRONLY))),
        ("unlink metadata.json", lambda: os.unlink(root / ".metadata.json")),
        ("chmod root", lambda: os.chmod(root, 0o777)),
        ("setxattr dir", lambda: os.setxattr(dirpath or root, "user.x", b"1")),
    ]


def test_read_only(mounted):
    before = util.fingerprint(mounted.model.path)
    listing = util.walk(mounted.root)
    file = mounted.path_of("model.embed.weight")
    # the flat layout has no directory but the root (which is busy as a mount point)
    dirpath = mounted.root / "model" if mounted.layout == "tree" else None
    ops = write_ops(mounted.root, file, dirpath)
    wrong = []
    for label, op in ops:
        e = util.errno_of(op)
        if e not in util.READ_ONLY_ERRNOS:
            wrong.append((label, errno.errorcode.get(e, e)))
    assert wrong == [], "these did not fail with EROFS/EACCES/EPERM"
    assert util.fingerprint(mounted.model.path) == before
    assert util.walk(mounted.root) == listing
    assert file.read_bytes() == mounted.model.expected_bytes("model.embed.weight")
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o444


def test_write_erofs_specifically(mounted):
    """Where the daemon itself answers (root mounts without default_permissions), it says EROFS."""
    file = mounted.path_of("dtypes.u8")
    assert util.errno_of(os.open, file, os.O_WRONLY) == errno.EROFS
    assert util.errno_of(os.truncate, file, 0) == errno.EROFS
    assert util.errno_of(os.mkdir, mounted.root / "d") == errno.EROFS
    assert util.errno_of(os.setxattr, file, "user.x", b"1") == errno.EROFS


def test_cp_and_shutil(mounted):
    """Ordinary tools copy a tensor out byte for byte."""
    name = "model.embed.weight"
    dst = mounted.mount.err_path.parent / "copy.bin"
    shutil.copyfile(mounted.path_of(name), dst)
    assert dst.read_bytes() == mounted.model.expected_bytes(name)
    dst.unlink()
    subprocess.run(["cp", str(mounted.path_of(name)), str(dst)], check=True)
    assert dst.read_bytes() == mounted.model.expected_bytes(name)
    dst.unlink()
