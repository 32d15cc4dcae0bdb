"""Fixtures: a mount factory that always unmounts and judges the daemon's
output, and a model written by the official safetensors library, mounted
once per module in each layout."""
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util


@pytest.fixture(scope="session")
def fuse_environment():
    """The daemon and a usable FUSE: without them no mount test can pass.
    Modules that mount use it through pytestmark."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE tests cannot run here")
    if not shutil.which("fusermount3"):
        pytest.skip("fusermount3 is not installed")
    if not util.binary().exists():
        pytest.fail(f"{util.binary()} does not exist: run make (or set SAFETENSORSFS)")


@pytest.fixture
def mount(tmp_path, fuse_environment):
    """mount(source, *opts) -> started util.Mount.  Every mount is unmounted at
    teardown, also when the test failed, and the test fails if a daemon wrote
    anything, exited with a status other than 0, or would not go away."""
    mounts = []

    def start(source, *opts, name=None):
        mnt = tmp_path / (name or f"mnt{len(mounts)}")
        m = util.Mount(source, mnt, opts, logdir=tmp_path)
        mounts.append(m)
        return m.start()

    yield start
    problems = []
    for m in reversed(mounts):
        try:
            m.stop()
        except util.DaemonError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ----------------------------------------------------------------- the model

SEED = 20240527

# numpy dtype -> the dtype string the official library writes for it
DTYPES = {
    "bool": (np.bool_, "BOOL"),
    "u8": (np.uint8, "U8"),
    "i8": (np.int8, "I8"),
    "i16": (np.int16, "I16"),
    "u16": (np.uint16, "U16"),
    "f16": (np.float16, "F16"),
    "i32": (np.int32, "I32"),
    "u32": (np.uint32, "U32"),
    "f32": (np.float32, "F32"),
    "i64": (np.int64, "I64"),
    "u64": (np.uint64, "U64"),
    "f64": (np.float64, "F64"),
    "c64": (np.complex64, "C64"),
    "bf16": (ml_dtypes.bfloat16, "BF16"),
    "f8_e4m3fn": (ml_dtypes.float8_e4m3fn, "F8_E4M3"),
    "f8_e5m2": (ml_dtypes.float8_e5m2, "F8_E5M2"),
    "f8_e4m3fnuz": (ml_dtypes.float8_e4m3fnuz, "F8_E4M3FNUZ"),
    "f8_e5m2fnuz": (ml_dtypes.float8_e5m2fnuz, "F8_E5M2FNUZ"),
    "f8_e8m0fnu": (ml_dtypes.float8_e8m0fnu, "F8_E8M0"),
}

SHAPES = [(4, 5), (3,), (2, 3, 4), (7,), (1, 1, 1, 1), (13,), (5, 2)]

# Names that test the naming rule: empty parts, dots at either end, '%', '/',
# NUL, unicode, names of the reserved files, and tensors whose path is also a directory.
ODD_NAMES = [
    "", ".", "..", "a..b", ".lead", "trail.", "50%.x", "%", "%25", "sl/ash.y", "nul\x00name",
    "ünï.códe.张量", "emoji.🙂", ".header.json", ".metadata.json", ".control", "x.tensor",
    "enc.layer", "enc.layer.w", "enc.layer.b", "top", "top.child", "deep", "deep.a", "deep.a.b",
    "sp ace.tab\tname",
]

METADATA = {
    "format": "np",
    "ünï": "cödé ✓",
    "dotted.key": "v",
    "empty": "",
    "json": '{"nested": [1, 2]}',
    'quote"': "back\\slash",
    "long": "x" * 3000,
}


def random_array(rng, np_dtype, shape):
    if np_dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.dtype(np_dtype).kind in "iu":
        info = np.iinfo(np_dtype)
        return rng.integers(info.min, info.max, shape, dtype=np_dtype, endpoint=True)
    if np_dtype is np.complex64:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    if np_dtype is ml_dtypes.float8_e8m0fnu:
        return np.exp2(rng.integers(-20, 20, shape)).astype(np_dtype)
    return (rng.standard_normal(shape) * 4).astype(np_dtype)


def model_tensors():
    rng = np.random.default_rng(SEED)
    t = {}
    for i, (key, (dt, _)) in enumerate(DTYPES.items()):
        t[f"dtypes.{key}"] = random_array(rng, dt, SHAPES[i % len(SHAPES)])
    # Big enough for several read requests and readahead windows.
    t["model.embed.weight"] = rng.standard_normal((512, 640)).astype(np.float32)
    t["model.layers.0.mlp.up_proj.weight"] = rng.standard_normal((64, 48)).astype(ml_dtypes.bfloat16)
    t["model.layers.0.mlp.up_proj.bias"] = rng.standard_normal((64,)).astype(np.float16)
    t["model.layers.0.attn.q.weight"] = rng.standard_normal((16, 16)).astype(np.float32)
    t["model.layers.1.mlp.up_proj.weight"] = rng.standard_normal((64, 48)).astype(ml_dtypes.bfloat16)
    t["model.layers.10.norm"] = rng.standard_normal((3,)).astype(np.float64)
    t["zero.a"] = np.zeros((2, 0), np.float32)
    t["zero.b"] = np.zeros((0,), np.int64)
    t["scalar"] = np.array(3.25, np.float64)
    t["scalars.u8"] = np.array(7, np.uint8)
    for i, name in enumerate(ODD_NAMES):
        t[name] = rng.integers(0, 256, (i % 5 + 1,), dtype=np.uint8)
    return t


@dataclass
class Model:
    path: Path
    tensors: dict
    metadata: dict
    n: int = 0
    raw_header: bytes = b""
    members: dict = field(default_factory=dict)

    def __post_init__(self):
        self.n, self.raw_header, self.members = util.read_header(self.path)

    def info(self, name):
        return self.members[name][0]

    def nbytes(self, name):
        b, e = self.info(name)["data_offsets"]
        return e - b

    def offset(self, name):
        return 8 + self.n + self.info(name)["data_offsets"][0]

    def expected_bytes(self, name):
        return self.tensors[name].tobytes()

    def names(self):
        return [k for k in self.members if k != "__metadata__"]


def write_model(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata)
    # An mtime with nanoseconds, to see that it is passed on exactly.
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    return Model(path, tensors, metadata or {})


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    m = write_model(path, model_tensors(), METADATA)
    # The file as the official library sees it: the test's own premise.
    with safe_open(str(path), framework="np") as f:
        assert set(f.keys()) == set(m.tensors) == set(m.names())
        assert f.metadata() == METADATA
    return m


@dataclass
class Mounted:
    model: Model
    mount: util.Mount
    layout: str
    files: dict   # relative path -> tensor name
    dirs: set

    @property
    def root(self):
        return self.mount.mnt

    def path_of(self, name):
        return self.root / self.by_name[name]

    def __post_init__(self):
        self.by_name = {v: k for k, v in self.files.items()}


@pytest.fixture(scope="module", params=["tree", "flat"])
def _mounted_module(request, model, tmp_path_factory, fuse_environment):
    layout = request.param
    d = tmp_path_factory.mktemp(f"mnt-{layout}")
    m = util.Mount(model.path, d / "mnt", [] if layout == "tree" else ["-o", "layout=flat"], logdir=d)
    m.start()
    files, dirs = util.expected_layout(model.names(), layout)
    yield Mounted(model, m, layout, files, dirs)
    m.stop()


@pytest.fixture
def mounted(_mounted_module):
    """The model mounted in each layout (shared by a module's tests); after
    each test the daemon must still be up and must have written nothing."""
    _mounted_module.mount.check_output()
    yield _mounted_module
    _mounted_module.mount.check_alive()
    _mounted_module.mount.check_output()
