"""Property test of the naming rule: random sets of awkward names, written by
the official library, mount as exactly the paths the rule gives, and each
file's user.safetensors.name leads back to its tensor."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

# Few characters, so that collisions (a name that is also a directory, equal
# parts after escaping, empty parts) come up often.
ALPHABET = st.sampled_from(["a", "b", ".", ".", "%", "/", "\x00", "é", "t", "e", "n", "s", "o", "r", " ", "2", "E"])
NAMES = st.lists(st.text(ALPHABET, min_size=0, max_size=7), min_size=1, max_size=10, unique=True)


def check(tmp_path, names, layout, n):
    src = tmp_path / f"ex{n}.safetensors"
    tensors = {name: np.array([i, i + 1], np.uint8) for i, name in enumerate(names)}
    save_file(tensors, str(src))
    files, dirs = util.expected_layout(names, layout)
    opts = ["-o", "layout=flat"] if layout == "flat" else []
    with util.mounted(src, tmp_path / f"mnt{n}", opts, logdir=tmp_path) as m:
        got_files, got_dirs = util.walk(m.mnt)
        assert sorted(got_files) == sorted(files)
        assert sorted(got_dirs) == sorted(dirs)
        for rel, name in files.items():
            p = m.mnt / rel
            assert os.getxattr(p, util.PREFIX + "name") == name.encode()
            assert p.read_bytes() == tensors[name].tobytes()
    src.unlink()


def test_names_property(tmp_path):
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(NAMES, st.sampled_from(["tree", "flat"]))
    def prop(names, layout):
        check(tmp_path, names, layout, next(counter))

    prop()
    assert next(counter) >= 40, "hypothesis ran fewer examples than asked"


def test_names_examples(tmp_path):
    """Hand-picked sets that the rule has to keep apart."""
    sets = [
        ["", ".", "..", "...", "a", "a.", ".a", "a..", "%", "%.%", "%25"],
        ["x", "x.y", "x.y.z", "x.tensor", "x.y.tensor"],
        ["a/b", "a%2Fb", "a.b", "a%2Eb", ".x", "%2Ex"],
        ["\x00", "%00", "\x00.\x00", "é.é", "é"],
    ]
    n = 0
    for names in sets:
        for layout in ("tree", "flat"):
            check(tmp_path, names, layout, n)
            n += 1
