"""Views through the mount: slices, conversions and .npy files by path, against
numpy slicing and astype of what safe_open returns; tensor-parallel ranks."""
import errno
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I32": np.int32,
          "U8": np.uint8, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F64": np.float64, "I8": np.int8}
TARGETS = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(3)
    d = tmp_path_factory.mktemp("views")
    tensors = {}
    for i, (name, dt) in enumerate(DTYPES.items()):
        shape = [(5, 7), (4, 3, 6), (13,), (9, 10)][i % 4]
        tensors[f"t.{name.lower()}"] = (rng.standard_normal(shape) * 40).astype(dt)
    tensors["t.mat"] = rng.standard_normal((37, 29)).astype(np.float32)
    save_file(tensors, str(d / "v.safetensors"))
    WRITTEN.update(tensors)
    return d / "v.safetensors"


@pytest.fixture(scope="module")
def mnt(model, tmp_path_factory):
    import util
    m = util.Mount(model, tmp_path_factory.mktemp("mnt") / "m").start()
    yield Path(m.mnt)
    m.stop()


WRITTEN = {}


def reference(model, name):
    """What safe_open returns; for F8, which its numpy API cannot return, the array it was given."""
    try:
        with safe_open(str(model), "np") as f:
            got = f.get_tensor(name)
    except (AttributeError, TypeError):
        return WRITTEN[name]
    assert got.tobytes() == WRITTEN[name].tobytes()
    return got


def spec(slices):
    return ",".join(f"{'' if a is None else a}:{'' if b is None else b}" for a, b in slices)


bound = st.one_of(st.none(), st.integers(-15, 15))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(DTYPES)), data=st.data(), target=st.sampled_from([None, *TARGETS]),
       npy=st.booleans())
def test_view_matches_numpy(model, mnt, name, data, target, npy):
    ref = reference(model, f"t.{name.lower()}")
    k = data.draw(st.integers(0, ref.ndim))
    slices = [(data.draw(bound), data.draw(bound)) for _ in range(k)]
    view = f"{name.lower()}" + (f"[{spec(slices)}]" if k else "") + (f"@{target}" if target else "") \
        + (".npy" if npy else "")
    if not (k or target or npy):
        view += ".npy"
        npy = True
    want = ref[tuple(slice(a, b) for a, b in slices)]
    if target:
        want = want.astype(TARGETS[target])
    p = mnt / "t" / view
    if npy:
        got = np.load(p)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        mm = np.load(p, mmap_mode="r")
        assert mm.tobytes() == want.tobytes()
    else:
        assert os.stat(p).st_size == want.nbytes
        assert p.read_bytes() == np.ascontiguousarray(want).tobytes()


@pytest.mark.parametrize("world", range(1, 9))
def test_tensor_parallel_ranks_reassemble(model, mnt, world):
    ref = reference(model, "t.mat")
    rows, cols = ref.shape
    row_parts = [np.frombuffer((mnt / "t" / f"mat[{r * rows // world}:{(r + 1) * rows // world}]").read_bytes(),
                               np.float32) for r in range(world)]
    assert np.concatenate(row_parts).tobytes() == ref.tobytes()
    col_parts = [np.load(mnt / "t" / f"mat[:,{r * cols // world}:{(r + 1) * cols // world}].npy")
                 for r in range(world)]
    assert np.concatenate(col_parts, axis=1).tobytes() == ref.tobytes()


@pytest.mark.parametrize("bad", ["mat[", "mat[]", "mat[1:2:3]", "mat[a:b]", "mat@F33", "mat@f32",
                                 "mat[0:1,0:1,0:1]", "nothere[0:1]", "mat[ 0:1]", "mat.npz"])
def test_malformed_views_are_enoent(mnt, bad):
    with pytest.raises(OSError) as e:
        os.stat(mnt / "t" / bad)
    assert e.value.errno == errno.ENOENT


def test_views_are_not_listed(mnt):
    (mnt / "t" / "mat[0:1]").read_bytes()
    assert sorted(os.listdir(mnt / "t")) == sorted([n.lower() for n in DTYPES] + ["mat"])


def test_view_is_read_only(mnt):
    with pytest.raises(OSError) as e:
        open(mnt / "t" / "mat[0:2]", "r+b")
    assert e.value.errno in (errno.EROFS, errno.EACCES)


def test_listviews_lists_each_npy_once(tmp_path, mount):
    src = tmp_path / "l.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32), "a.npy": np.zeros(2, np.int8),
               "d.x": np.ones((2, 2), np.float16)}, str(src))
    m = mount(src, "-o", "listviews", "-o", "layout=flat")
    names = sorted(n for n in os.listdir(m.mnt) if not n.startswith("."))
    assert names == ["a", "a.npy", "a.npy.npy", "d.x", "d.x.npy"]
    assert (Path(m.mnt) / "a.npy").read_bytes() == np.zeros(2, np.int8).tobytes()  # the real tensor wins
    assert (np.load(Path(m.mnt) / "d.x.npy") == np.ones((2, 2), np.float16)).all()
    plain = mount(src, "-o", "layout=flat")
    assert sorted(n for n in os.listdir(plain.mnt) if not n.startswith(".")) == ["a", "a.npy", "d.x"]
