"""What the usual tools take for granted: another user's cp -r, rsync, tar, grep -r and
sha256sum over a shared mount (/.control is reachable by name but never listed); du of
the tree; metadata too large for xattrs; the xattrs of views."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util

PREFIX = util.PREFIX


def small_model(path):
    rng = np.random.default_rng(9)
    t = {f"model.layers.{i}.mlp.w": rng.standard_normal((8, 16)).astype(np.float32) for i in range(3)}
    t["lm_head"] = rng.standard_normal((4, 16)).astype(ml_dtypes.bfloat16)
    save_file(t, str(path), metadata={"format": "pt"})
    return t


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a second user")
@pytest.mark.parametrize("tool", ["cp", "rsync", "tar", "grep", "sha256sum", "find"])
def test_other_users_walk_the_mount_root(tool):
    """With -o allow_other these exited non-zero on .control (0600), which walks met."""
    user = util.other_user()
    shared = util.shared_tmpdir("stfs-walk-")
    small_model(shared / "m.safetensors")
    out = shared / "out"
    out.mkdir()
    os.chown(out, *(lambda p: (p.pw_uid, p.pw_gid))(__import__("pwd").getpwnam(user)))
    try:
        with util.mounted(shared / "m.safetensors", shared / "mnt", ("-o", "allow_other")) as m:
            root = str(m.mnt)
            argv = {
                "cp": ["cp", "-r", root + "/.", str(out / "copy")],
                "rsync": ["rsync", "-a", root + "/", str(out / "copy")],
                "tar": ["tar", "-cf", str(out / "t.tar"), "-C", root, "."],
                "grep": ["grep", "-r", "-c", "--binary-files=text", "zzz-not-there", root],
                "sha256sum": ["sh", "-c", 'cd "$1" && find . -type f -exec sha256sum {} +', "sh", root],
                "find": ["find", root],
            }[tool]
            r = util.run_as(user, *argv)
            # grep exits 1 for "no match", 2 for an error.
            assert r.returncode == (1 if tool == "grep" else 0), r.stderr
            assert b".control" not in r.stdout and b"Permission denied" not in r.stderr
            if tool in ("cp", "rsync"):
                copied = out / "copy"
                assert not (copied / ".control").exists()
                assert (copied / "lm_head").read_bytes() == (m.mnt / "lm_head").read_bytes()
                with safe_open(str(shared / "m.safetensors"), "np") as f:
                    w = f.get_tensor("model.layers.1.mlp.w")
                assert (copied / "model" / "layers" / "1" / "mlp" / "w").read_bytes() == w.tobytes()
            # Still there by name, for its owner.
            assert os.stat(m.mnt / ".control").st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_control_reachable_but_never_listed(tmp_path, mount):
    small_model(tmp_path / "m.safetensors")
    for opts in ((), ("-o", "layout=flat"), ("-o", "listviews")):
        m = mount(tmp_path / "m.safetensors", *opts)
        assert ".control" not in os.listdir(m.mnt)
        with os.scandir(m.mnt) as it:
            assert ".control" not in {e.name for e in it}
        fd = os.open(m.mnt / ".control", os.O_RDWR)
        try:
            os.write(fd, b"list\n")
            assert json.loads(os.read(fd, 1 << 16))["ok"] is True
        finally:
            os.close(fd)


def test_du_counts_what_files_hold(tmp_path, mount):
    """du said 287M for an 8.4 MB file of 50k tensors: every directory reported 8 blocks."""
    names = {f"model.layers.{i}.experts.{j}.w": np.ones(3, np.uint8) for i in range(20) for j in range(50)}
    save_file(names, str(tmp_path / "moe.safetensors"))
    m = mount(tmp_path / "moe.safetensors")
    for dirpath, dirnames, _ in os.walk(m.mnt):
        for d in dirnames:
            assert os.stat(os.path.join(dirpath, d)).st_blocks == 0
    assert os.stat(m.mnt).st_blocks == 0
    du = int(subprocess.run(["du", "-s", "-B1", str(m.mnt)], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    # What the files hold: 512-byte blocks of each tensor and of the two listed dot-files.
    want = 0
    for dirpath, _, filenames in os.walk(m.mnt):
        for f in filenames:
            want += os.stat(os.path.join(dirpath, f)).st_blocks * 512
    assert du == want
    assert du < 1000 * 512 + 2 * os.path.getsize(tmp_path / "moe.safetensors")


def test_large_metadata(tmp_path, mount):
    """A value over 64 KiB gave "Argument list too long"; ~2000 keys made the list too long,
    so getfattr -d showed nothing.  Values that cannot be xattrs are left out; the list fits;
    .metadata.json has everything."""
    md = {f"ss_key_{i:05d}_" + "k" * 24: str(i) for i in range(2500)}
    md["ss_tag_frequency"] = json.dumps({f"tag{i}": i for i in range(12000)})
    assert len(md["ss_tag_frequency"]) > 65536
    md["ss_exactly_64k"] = "v" * 65536
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "lora.safetensors"), metadata=md)
    m = mount(tmp_path / "lora.safetensors")
    size = util.c_listxattr(m.mnt, 0)
    assert 0 < size <= 65536
    names = [n.decode() for n in util.c_listxattr(m.mnt, size).split(b"\0") if n]
    assert names[:3] == [PREFIX + "tensors", PREFIX + "bytes", PREFIX + "shards"]
    listed = {n[len(PREFIX + "metadata."):] for n in names if n.startswith(PREFIX + "metadata.")}
    assert "ss_tag_frequency" not in listed and 1000 < len(listed) < len(md)
    # Every listed name answers, with the header's value; every other key gives ENODATA.
    for key in md:
        name = PREFIX + "metadata." + key
        if key in listed:
            assert os.getxattr(m.mnt, name).decode() == md[key]
        else:
            assert util.errno_of(os.getxattr, m.mnt, name) == 61  # ENODATA
    r = subprocess.run(["getfattr", "-d", "-m", "-", "--absolute-names", str(m.mnt)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "" and "user.safetensors.tensors" in r.stdout, r.stderr
    assert json.loads((m.mnt / ".metadata.json").read_text()) == md


def test_view_xattrs(tmp_path, mount):
    """getfattr on w[0:2]@F32 showed nothing."""
    t = small_model(tmp_path / "m.safetensors")
    m = mount(tmp_path / "m.safetensors")
    d = m.mnt / "model" / "layers" / "1" / "mlp"
    base_off = int(os.getxattr(d / "w", PREFIX + "offset"))
    cases = {
        "w[2:5]": ("F32", [3, 16], 2 * 16 * 4),
        "w[2:5]@F16": ("F16", [3, 16], None),
        "w[:,0:4]": ("F32", [8, 4], None),
        "w.npy": ("F32", [8, 16], None),
        "w[-1:]@BF16.npy": ("BF16", [1, 16], None),
    }
    for view, (dtype, shape, raw_off) in cases.items():
        p = d / view
        attrs = {n: os.getxattr(p, n).decode() for n in os.listxattr(p)}
        want = {PREFIX + "dtype": dtype, PREFIX + "shape": json.dumps(shape, separators=(",", ":")),
                PREFIX + "view_of": "model.layers.1.mlp.w", PREFIX + "file": "m.safetensors"}
        if raw_off is not None:
            want[PREFIX + "offset"] = str(base_off + raw_off)
        assert attrs == want, view
        if raw_off is not None:  # the dd recipe of docs/CONTRACT.md works on a raw view too
            with open(tmp_path / "m.safetensors", "rb") as f:
                f.seek(int(attrs[PREFIX + "offset"]))
                assert f.read(os.stat(p).st_size) == p.read_bytes()
    head = m.mnt / "lm_head@F32"
    assert os.getxattr(head, PREFIX + "shape") == b"[4,16]"
    assert np.array_equal(np.frombuffer(head.read_bytes(), np.float32).reshape(4, 16),
                          t["lm_head"].astype(np.float32))
    assert util.errno_of(os.getxattr, head, PREFIX + "data_offsets") == 61
