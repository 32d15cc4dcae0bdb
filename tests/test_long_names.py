"""Name parts too long to be file names, and parts named "." and "..".

A part whose escaped form is over 255 bytes (NAME_MAX) is listed under an
alias (fs/escape.h): its first 160 escaped bytes, backed off so as not to cut
a %XX escape or a UTF-8 character, then "%~" and the first 32 hex digits of
the SHA-256 of the raw part.  Without it a part over 1024 bytes made ls and
find of its directory fail with EIO, and one larger than the reader's buffer
made every later entry vanish with exit status 0."""
import hashlib
import os
import subprocess

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

NAME_MAX = 255


def escape(raw, in_root):
    """The escaping rule (README "The tree"), with "." and ".." escaped anywhere."""
    if raw == b"":
        return b"%"
    dot = in_root or raw in (b".", b"..")
    out = bytearray()
    for i, c in enumerate(raw):
        out += b"%%%02X" % c if c in b"%/\0" or (i == 0 and c == 0x2E and dot) else bytes([c])
    return bytes(out)


def file_name(part, in_root, room=NAME_MAX):
    raw = part.encode()
    e = escape(raw, in_root)
    if len(e) <= room:
        return e.decode()
    cut = 160
    while True:
        if e[cut - 1:cut] == b"%":
            cut -= 1
        elif e[cut - 2:cut - 1] == b"%":
            cut -= 2
        elif cut < len(e) and e[cut] & 0xC0 == 0x80:
            cut -= 1
        else:
            break
    return (e[:cut] + b"%~" + hashlib.sha256(raw).hexdigest()[:32].encode()).decode()


LONG = {
    "a." + "x" * 300 + ".w": np.arange(3, dtype=np.float32),    # a directory part of 300 bytes
    "b." + "y" * 70000: np.arange(4, dtype=np.int16),            # past any readdir buffer
    "b." + "z" * 2000: np.arange(5, dtype=np.uint8),             # past the kernel's 1024
    "b." + "é" * 200: np.arange(6, dtype=np.uint8),              # 400 bytes of UTF-8
    "b." + "%" * 100: np.arange(7, dtype=np.uint8),              # 300 bytes escaped
    "b." + "q" * 255: np.arange(8, dtype=np.uint8),              # the longest kept whole
    "c." + "L" * 300: np.arange(9, dtype=np.uint8),              # both a file and a directory
    "c." + "L" * 300 + ".in": np.arange(2, dtype=np.uint8),
}
LONG.update({f"b.after{i}": np.full(2, i, np.uint8) for i in range(40)})


def expected(names):
    """relative path -> tensor name, tree layout, built part by part."""
    dirs, files = set(), {}
    for name in names:
        parts = name.split(".")
        path = [file_name(p, i == 0) for i, p in enumerate(parts[:-1])]
        dirs.update("/".join(path[:d]) for d in range(1, len(path) + 1))
        files[name] = path
    out = {}
    for name, path in files.items():
        last = file_name(name.split(".")[-1], len(path) == 0)
        full = "/".join(path + [last])
        if full in dirs:
            last = file_name(name.split(".")[-1], len(path) == 0, NAME_MAX - 7) + ".tensor"
            full = "/".join(path + [last])
        out[full] = name
    return out


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    p = tmp_path_factory.mktemp("long") / "long.safetensors"
    save_file(LONG, str(p))
    return p


def test_every_long_name_is_listed_and_opens(long_model, mount):
    m = mount(long_model)
    want = expected(LONG)
    files, _ = util.walk(m.mnt)
    assert sorted(files) == sorted(want)
    for rel, name in want.items():
        assert all(len(part.encode()) <= NAME_MAX for part in rel.split("/")), rel
        assert (m.mnt / rel).read_bytes() == LONG[name].tobytes(), rel
        if len(name.encode()) < 60000:  # the kernel passes no xattr value over 64 KiB
            assert os.getxattr(m.mnt / rel, "user.safetensors.name") == name.encode()
    # ls and find see them all and succeed
    ls = subprocess.run(["ls", "-1", str(m.mnt / "b")], capture_output=True, check=True)
    assert len(ls.stdout.splitlines()) == sum(1 for r in want if r.startswith("b/"))
    find = subprocess.run(["find", str(m.mnt), "-type", "f"], capture_output=True, check=True)
    assert len(find.stdout.splitlines()) == len(want) + len(util.RESERVED)  # and the root's listed dot-files


def test_views_of_an_aliased_tensor(long_model, mount):
    m = mount(long_model)
    rel = next(r for r, n in expected(LONG).items() if n == "b." + "y" * 70000)
    assert (m.mnt / (rel + "[1:3]")).read_bytes() == LONG["b." + "y" * 70000][1:3].tobytes()
    assert np.array_equal(np.load(m.mnt / (rel + ".npy")), LONG["b." + "y" * 70000])


def test_long_names_flat(long_model, mount):
    m = mount(long_model, "-o", "layout=flat")
    names = [n for n in os.listdir(m.mnt) if n not in util.RESERVED]
    want = {file_name(n, True): n for n in LONG}
    assert sorted(names) == sorted(want)
    for f, n in want.items():
        assert (m.mnt / f).read_bytes() == LONG[n].tobytes()


def test_dot_names_in_a_diffusers_subfolder_flat(tmp_path, mount):
    """Tensors named "." and ".." in a component were dropped, and ls showed "." and ".." twice."""
    d = tmp_path / "pipe"
    (d / "unet").mkdir(parents=True)
    tensors = {".": np.arange(2, dtype=np.uint8), "..": np.arange(3, dtype=np.uint8),
               "...": np.arange(4, dtype=np.uint8), ".hidden": np.arange(5, dtype=np.uint8),
               "w": np.arange(6, dtype=np.uint8)}
    save_file(tensors, str(d / "unet" / "diffusion_pytorch_model.safetensors"))
    (d / "model_index.json").write_text("{}")
    m = mount(d, "-o", "layout=flat")
    want = {"%2E": ".", "%2E.": "..", "...": "...", ".hidden": ".hidden", "w": "w"}
    assert sorted(os.listdir(m.mnt / "unet")) == sorted(want)
    ls = subprocess.run(["ls", "-1a", str(m.mnt / "unet")], capture_output=True, check=True)
    assert sorted(ls.stdout.decode().split()) == sorted([".", ".."] + list(want))
    for f, n in want.items():
        assert (m.mnt / "unet" / f).read_bytes() == tensors[n].tobytes()
        assert os.getxattr(m.mnt / "unet" / f, "user.safetensors.name") == n.encode()
