"""Which files mount and which are refused, with hand-built headers next to
files from the official library.  A refusal is exit status 1, exactly one
line `safetensorsfs: SOURCE: REASON` on stderr, nothing on stdout, nothing
mounted and the file untouched."""
import errno
import json
import os
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util
from util import PREFIX, blob, entry

pytestmark = pytest.mark.usefixtures("fuse_environment")


def official_file(tmp_path, name="good.safetensors"):
    p = tmp_path / name
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b.c": np.arange(5, dtype=np.uint8)}, str(p),
              metadata={"k": "v"})
    return p


def git_lfs_pointer():
    return (b"version https://git-lfs.github.com/spec/v1\n"
            b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
            b"size 12345\n")


# (id, file bytes, whether the official library must refuse it too)
def refused_cases():
    one = {"x": entry("U8", [1], 0, 1)}
    good = blob({"a": entry("F32", [2], 0, 8)}, bytes(8))
    return [
        ("empty-file", b"", True),
        ("shorter-than-8", b"\x01\x02\x03", True),
        ("only-length", struct.pack("<Q", 2), True),
        ("n-beyond-file", blob(b"{}", n=1000), True),
        ("n-over-limit", blob(b"{}", n=100_000_001), True),
        ("n-max", blob(b"{}", n=2**64 - 1), True),
        ("n-zero", blob(b""), True),
        ("non-utf8", blob(b'{"\xff\xfe":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"), True),
        ("non-utf8-metadata", blob(b'{"__metadata__":{"a":"\xc3"}}'), True),
        ("json-array", blob(b"[]"), True),
        ("json-string", blob(b'"abc"'), True),
        ("not-json", blob(b"hello"), True),
        ("truncated-json", blob(b'{"x":{"dtype":"U8"'), True),
        ("dtype-f32-lowercase", blob({"x": entry("f32", [1], 0, 4)}, bytes(4)), True),
        ("dtype-unknown", blob({"x": entry("FP32", [1], 0, 4)}, bytes(4)), True),
        ("dtype-torch-name", blob({"x": entry("float32", [1], 0, 4)}, bytes(4)), True),
        ("dtype-not-string", blob({"x": entry(7, [1], 0, 1)}, b"x"), True),
        ("shape-negative", blob({"x": entry("U8", [-1], 0, 1)}, b"x"), True),
        ("shape-fractional", blob({"x": entry("U8", [1.5], 0, 1)}, b"x"), True),
        ("shape-float-integral", blob({"x": entry("U8", [1.0], 0, 1)}, b"x"), True),
        ("shape-string", blob({"x": entry("U8", ["1"], 0, 1)}, b"x"), True),
        ("shape-not-array", blob({"x": entry("U8", 1, 0, 1)}, b"x"), True),
        ("shape-missing", blob({"x": {"dtype": "U8", "data_offsets": [0, 1]}}, b"x"), True),
        ("offsets-one", blob({"x": {"dtype": "U8", "shape": [1], "data_offsets": [1]}}, b"x"), True),
        ("offsets-three", blob({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 1]}}, b"x"), True),
        ("offsets-missing", blob({"x": {"dtype": "U8", "shape": [1]}}, b"x"), True),
        ("offsets-negative", blob({"x": entry("U8", [1], -1, 0)}, b"x"), True),
        ("offsets-reversed", blob({"x": entry("U8", [1], 1, 0)}, b"x"), True),
        ("size-mismatch", blob({"x": entry("F32", [2], 0, 4)}, bytes(4)), True),
        ("offsets-overlap", blob({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 1, 3)}, b"abc"), True),
        ("offsets-gap", blob({"a": entry("U8", [1], 0, 1), "b": entry("U8", [1], 2, 3)}, b"abc"), True),
        ("offsets-not-from-zero", blob({"a": entry("U8", [1], 1, 2)}, b"ab"), True),
        ("duplicate-names", blob(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                 b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
         False),  # the official library keeps the last one; the daemon refuses (no tensor dropped)
        ("metadata-int-value", blob(b'{"__metadata__":{"a":1}}'), True),
        ("metadata-nested", blob(b'{"__metadata__":{"a":{"b":"c"}}}'), True),
        ("metadata-not-object", blob(b'{"__metadata__":"x"}'), True),
        ("metadata-as-tensor", blob({"__metadata__": entry("U8", [1], 0, 1)}, b"x"), True),
        ("trailing-garbage", blob(b"{}x"), True),
        ("trailing-second-object", blob(b"{}{}"), True),
        ("trailing-nul-padding", blob(b"{}\x00\x00"), True),
        ("entry-not-object", blob(b'{"x":1}'), True),
        ("f4-odd-elements", blob({"f": entry("F4", [3], 0, 2)}, b"ab"), True),
        ("f6-partial-byte", blob({"f": entry("F6_E2M3", [3], 0, 3)}, b"abc"), True),
        ("trailing-bytes", good + b"\0", True),
        ("truncated", good[:-1], True),
        ("data-but-no-tensors", blob(b"{}", b"x"), True),
        ("git-lfs-pointer", git_lfs_pointer(), True),
        ("one-tensor-no-data", blob(one), True),
    ]


def check_refused(path, mnt, rc, out, err, before):
    assert rc == 1, f"exit status {rc}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"want exactly one line on stderr, got {err!r}"
    prefix = f"safetensorsfs: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    assert len(lines[0]) > len(prefix), "REASON is empty"
    util.assert_nothing_mounted(mnt, before, out, err)


@pytest.mark.parametrize("case", refused_cases(), ids=lambda c: c[0])
def test_refused(tmp_path, case):
    name, data, official_too = case
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(data)
    if official_too:
        assert util.official_refuses(path), "the official library accepts this file: the case is wrong"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    before = util.fingerprint(path)
    rc, out, err = util.run_refused(path, mnt)
    check_refused(path, mnt, rc, out, err, before_mounts)
    assert util.fingerprint(path) == before
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, "mnt"]), "something was written"


@pytest.mark.parametrize("case", ["trailing-bytes", "git-lfs-pointer", "offsets-gap"])
def test_refused_without_foreground(tmp_path, case):
    """Validation happens before the daemon detaches: the exit status and the
    line reach the caller."""
    data = dict((c[0], c[1]) for c in refused_cases())[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    rc, out, err = util.run_refused(path, mnt, foreground=False)
    check_refused(path, mnt, rc, out, err, before_mounts)


def test_refused_reason_names_tensor(tmp_path):
    """REASON names the tensor where it has one."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob({"ok": entry("U8", [1], 0, 1), "lm_head.weight": entry("F32", [2, 2], 1, 9)}, bytes(9)))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, out, err = util.run_refused(path, mnt)
    assert rc == 1
    assert "lm_head.weight" in err


def test_refused_truncated_official_file(tmp_path):
    good = official_file(tmp_path)
    data = good.read_bytes()
    for label, bad in (("truncated", data[:-3]), ("trailing", data + b"extra"), ("header-cut", data[:20])):
        path = tmp_path / f"{label}.safetensors"
        path.write_bytes(bad)
        assert util.official_refuses(path)
        mnt = tmp_path / f"mnt-{label}"
        mnt.mkdir()
        before_mounts = util.mount_lines(tmp_path)
        rc, out, err = util.run_refused(path, mnt)
        check_refused(path, mnt, rc, out, err, before_mounts)


def test_missing_source(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    path = tmp_path / "nope.safetensors"
    rc, out, err = util.run_refused(path, mnt)
    check_refused(path, mnt, rc, out, err, [])


def test_source_is_a_directory_without_weights(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    (src / "README.md").write_text("no weights here\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, out, err = util.run_refused(src, mnt)
    check_refused(src, mnt, rc, out, err, [])


def test_unreadable_source(tmp_path):
    """A fifo is not a regular file: refused at once, not opened and waited on
    (open(2) of a fifo without O_NONBLOCK blocks until a writer comes)."""
    path = tmp_path / "fifo.safetensors"
    os.mkfifo(path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, out, err = util.run_refused(path, mnt, timeout=5)
    check_refused(path, mnt, rc, out, err, [])


# ---------------------------------------------------------------- accepted

def accepted_cases():
    return [
        # (id, bytes, {tensor name: (dtype, shape, bytes)}, metadata object text)
        ("scalar", blob({"s": entry("F64", [], 0, 8)}, struct.pack("<d", 2.5)),
         {"s": ("F64", [], struct.pack("<d", 2.5))}, "{}"),
        ("zero-dim", blob({"z": entry("F32", [2, 0], 0, 0)}), {"z": ("F32", [2, 0], b"")}, "{}"),
        ("empty-padded", blob(b"{}      "), {}, "{}"),
        ("empty-leading-ws", blob(b" \n\t{}\r\n"), {}, "{}"),
        ("metadata-only", blob(b'{"__metadata__":{"a":"b"}}'), {}, '{"a":"b"}'),
        ("metadata-spaced", blob(b'{ "__metadata__" : { "a" : "b" , "c":"d" } }  '), {},
         '{ "a" : "b" , "c":"d" }'),
        ("f4", blob({"f": entry("F4", [2, 3], 0, 3)}, b"\x12\x34\x56"), {"f": ("F4", [2, 3], b"\x12\x34\x56")}, "{}"),
        ("f6-e2m3", blob({"f": entry("F6_E2M3", [4], 0, 3)}, b"abc"), {"f": ("F6_E2M3", [4], b"abc")}, "{}"),
        ("f6-e3m2", blob({"f": entry("F6_E3M2", [4], 0, 3)}, b"xyz"), {"f": ("F6_E3M2", [4], b"xyz")}, "{}"),
        ("f6-e3m2-8", blob({"f": entry("F6_E3M2", [2, 4], 0, 6)}, b"abcdef"),
         {"f": ("F6_E3M2", [2, 4], b"abcdef")}, "{}"),
        ("f8-e8m0", blob({"f": entry("F8_E8M0", [3], 0, 3)}, b"\x7f\x80\x81"),
         {"f": ("F8_E8M0", [3], b"\x7f\x80\x81")}, "{}"),
        ("subbyte-mixed", blob({"a.f4": entry("F4", [4], 0, 2), "a.f6": entry("F6_E2M3", [4], 2, 5),
                                "b": entry("U8", [1], 5, 6)}, b"ABCDEF"),
         {"a.f4": ("F4", [4], b"AB"), "a.f6": ("F6_E2M3", [4], b"CDE"), "b": ("U8", [1], b"F")}, "{}"),
        ("metadata-null", blob(b'{"__metadata__":null}'), {}, None),
        ("unsorted-offsets", blob({"b": entry("U8", [1], 1, 2), "a": entry("U8", [1], 0, 1)}, b"xy"),
         {"a": ("U8", [1], b"x"), "b": ("U8", [1], b"y")}, "{}"),
        ("zero-sized-shared-offset", blob({"a": entry("I8", [0], 0, 0), "b": entry("I8", [0], 0, 0),
                                           "c": entry("I8", [2], 0, 2)}, b"ab"),
         {"a": ("I8", [0], b""), "b": ("I8", [0], b""), "c": ("I8", [2], b"ab")}, "{}"),
        ("extra-fields", blob({"x": {**entry("U8", [1], 0, 1), "extra": {"deep": [1, 2]}}}, b"x"),
         {"x": ("U8", [1], b"x")}, "{}"),
        ("n-not-multiple-of-8", blob(b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'[:], b"q"),
         {"x": ("U8", [1], b"q")}, "{}"),
        ("name-nul-escaped", blob(b'{"a\\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"z"),
         {"a\x00b": ("U8", [1], b"z")}, "{}"),
        ("name-escaped-unicode", blob(b'{"\\u00fcber.\\ud83d\\ude42":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
                                      b"u"), {"\u00fcber.\U0001F642": ("U8", [1], b"u")}, "{}"),
    ]


@pytest.mark.parametrize("case", accepted_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("layout", ["tree", "flat"])
def test_accepted(tmp_path, mount, case, layout):
    name, data, tensors, meta_text = case
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(data)
    assert not util.official_refuses(path), "the official library refuses this file: the case is wrong"
    with safe_open(str(path), framework="np") as f:
        assert set(f.keys()) == set(tensors)
        for k, (dtype, shape, _) in tensors.items():
            assert f.get_slice(k).get_dtype() == dtype and list(f.get_slice(k).get_shape()) == shape
        official_meta = f.metadata() or {}
    before = util.fingerprint(path)
    m = mount(path, *([] if layout == "tree" else ["-o", "layout=flat"]))
    n = struct.unpack("<Q", data[:8])[0]
    assert (m.mnt / ".header.json").read_bytes() == data[8:8 + n]
    meta = (m.mnt / ".metadata.json").read_bytes()
    if meta_text is not None:
        assert meta == meta_text.encode()
    assert json.loads(meta) == official_meta
    files, dirs = util.expected_layout(list(tensors), layout)
    got_files, got_dirs = util.walk(m.mnt)
    assert sorted(got_files) == sorted(files)
    assert sorted(got_dirs) == sorted(dirs)
    for rel, tname in files.items():
        dtype, shape, want = tensors[tname]
        p = m.mnt / rel
        assert p.read_bytes() == want, tname
        assert os.stat(p).st_size == len(want)
        assert os.getxattr(p, PREFIX + "name") == tname.encode()
        assert os.getxattr(p, PREFIX + "dtype") == dtype.encode()
        assert os.getxattr(p, PREFIX + "shape") == ("[" + ",".join(map(str, shape)) + "]").encode()
        b, e = json.loads(data[8:8 + n])[tname]["data_offsets"]
        assert os.getxattr(p, PREFIX + "data_offsets") == f"[{b},{e}]".encode()
        assert os.getxattr(p, PREFIX + "offset") == str(8 + n + b).encode()
        assert os.getxattr(p, PREFIX + "file") == path.name.encode()
    assert os.getxattr(m.mnt, PREFIX + "tensors") == str(len(tensors)).encode()
    assert os.getxattr(m.mnt, PREFIX + "bytes") == str(sum(len(t[2]) for t in tensors.values())).encode()
    for k, v in official_meta.items():
        assert os.getxattr(m.mnt, PREFIX + "metadata." + k) == v.encode()
    assert not [a for a in os.listxattr(m.mnt) if a.startswith(PREFIX + "metadata.")
                and a[len(PREFIX + "metadata."):] not in official_meta]
    assert util.fingerprint(path) == before


def test_source_directory_with_one_file(tmp_path, mount):
    src = tmp_path / "model"
    src.mkdir()
    p = official_file(src, "weights.safetensors")
    (src / "config.json").write_text("{}")
    m = mount(src)
    assert (m.mnt / "a").read_bytes() == np.arange(6, dtype=np.float32).tobytes()
    assert (m.mnt / "b" / "c").read_bytes() == np.arange(5, dtype=np.uint8).tobytes()
    assert os.getxattr(m.mnt / "a", PREFIX + "file") == b"weights.safetensors"
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        assert (m.mnt / ".header.json").read_bytes() == f.read(n)


def test_source_relative_path(tmp_path, mount, monkeypatch):
    """A relative SOURCE works (the daemon does not depend on its cwd once running)."""
    official_file(tmp_path, "rel.safetensors")
    monkeypatch.chdir(tmp_path)
    m = mount("rel.safetensors")
    monkeypatch.chdir("/")
    assert (m.mnt / "a").read_bytes() == np.arange(6, dtype=np.float32).tobytes()
    assert os.getxattr(m.mnt / "a", PREFIX + "file") == b"rel.safetensors"


def test_big_header(tmp_path, mount):
    """A header of several MiB (many tensors with long names) mounts and is served whole."""
    names = {f"layer.{i}." + "n" * 200 + f".{i}": np.array([i % 256], np.uint8) for i in range(20000)}
    path = tmp_path / "big.safetensors"
    save_file(names, str(path))
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert n > 4 << 20
    m = mount(path, "-o", "layout=flat")
    with open(path, "rb") as f:
        f.seek(8)
        assert (m.mnt / ".header.json").read_bytes() == f.read(n)
    assert os.getxattr(m.mnt, PREFIX + "tensors") == b"20000"
    name = "layer.12345." + "n" * 200 + ".12345"
    assert (m.mnt / name).read_bytes() == bytes([12345 % 256])
    assert util.errno_of(os.stat, m.mnt / (name + "x")) == errno.ENOENT
