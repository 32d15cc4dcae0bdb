"""/.control through the host backend: uploads compared with the official
library, alignment, sharing, list/free/unmount, errors, and who may open it."""
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import safetensorsfs_client as client  # noqa: E402


def exchange(mnt, line):
    return util.control_exchange(mnt, line)


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(5)
    t = {"model.layers.0.w": rng.standard_normal((5, 7)).astype(np.float32),
         "model.layers.0.b": rng.standard_normal(3).astype(ml_dtypes.bfloat16),
         "model.layers.1.w": rng.standard_normal((4, 4)).astype(np.float16),
         "lm_head": rng.integers(0, 9, (2, 3)).astype(np.int32)}
    save_file(t, str(tmp_path / "c.safetensors"))
    return tmp_path / "c.safetensors"


def expected(model, name):
    with safe_open(str(model), "np") as f:
        return f.get_tensor(name).tobytes()


def test_control_file_is_owner_only(model, mount):
    m = mount(model)
    st = os.stat(Path(m.mnt) / ".control")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()


def test_backends_lists_host(model, mount):
    m = mount(model)
    r = exchange(m.mnt, "backends")
    assert r["ok"] and {b["name"] for b in r["backends"]} >= {"cuda", "hip", "host"}
    assert [b["devices"] for b in r["backends"] if b["name"] == "host"] == [1]


def test_upload_directory_glob_and_slice(model, mount):
    m = mount(model)
    r = exchange(m.mnt, "upload device=host model/layers/0 lm_*  model/layers/1/w[1:3]")
    assert r["ok"] and r["device"] == "host" and r["id"] >= 1
    names = [t["name"] for t in r["tensors"]]
    assert sorted(names) == sorted(["model.layers.0.w", "model.layers.0.b", "lm_head", "model/layers/1/w[1:3]"])
    with open(r["handle"], "rb") as f:
        data = f.read()
    assert oct(os.stat(r["handle"]).st_mode & 0o777) == "0o600"
    for t in r["tensors"]:
        assert t["offset"] % 256 == 0
        got = data[t["offset"]:t["offset"] + t["nbytes"]]
        if "[" in t["name"]:
            w = np.frombuffer(expected(model, "model.layers.1.w"), np.float16).reshape(4, 4)
            assert got == w[1:3].tobytes() and t["shape"] == [2, 4]
        else:
            assert got == expected(model, t["name"])
    # two clients map the same buffer
    a = np.memmap(r["handle"], mode="r", dtype=np.uint8)
    b = np.memmap(r["handle"], mode="r", dtype=np.uint8)
    assert a.tobytes() == b.tobytes() == data
    del a, b
    assert [x["id"] for x in exchange(m.mnt, "list")["buffers"]] == [r["id"]]
    assert exchange(m.mnt, f"free {r['id']}")["ok"]
    assert not os.path.exists(r["handle"])
    assert exchange(m.mnt, "list")["buffers"] == []


@pytest.mark.parametrize("view,pick", [("[:,2:5]", lambda w: w[:, 2:5]),
                                       ("[1:4,-3:]", lambda w: w[1:4, -3:]),
                                       ("[:,6:]", lambda w: w[:, 6:]),
                                       ("[:,3:3]", lambda w: w[:, 3:3])])
def test_upload_column_slices(model, mount, view, pick):
    """A tensor-parallel rank's column block: one piece per row, each from the backing file."""
    m = mount(model)
    r = exchange(m.mnt, f"upload device=host model/layers/0/w{view} model/layers/1/w")
    assert r["ok"], r
    want = pick(np.frombuffer(expected(model, "model.layers.0.w"), np.float32).reshape(5, 7))
    with open(r["handle"], "rb") as f:
        data = f.read()
    s, w1 = r["tensors"]
    assert s["name"] == f"model/layers/0/w{view}" and s["shape"] == list(want.shape)
    assert s["nbytes"] == want.nbytes and data[s["offset"]:s["offset"] + s["nbytes"]] == want.tobytes()
    assert w1["offset"] % 256 == 0 and w1["offset"] >= s["offset"] + s["nbytes"]
    assert data[w1["offset"]:w1["offset"] + w1["nbytes"]] == expected(model, "model.layers.1.w")
    assert client.arrays(r)[s["name"]].tobytes() == want.tobytes()


def test_client_load(model, mount):
    m = mount(model)
    arrays = client.load(m.mnt, ["model"], device="host")
    for name, arr in arrays.items():
        assert arr.tobytes() == expected(model, name)


def test_client_load_uses_the_mounts_default_device(model, mount):
    # gpu=none: an upload without device= is refused, so load() must not name a device itself
    m = mount(model, "-o", "gpu=none")
    with pytest.raises(client.ControlError):
        client.load(m.mnt, ["lm_head"])
    assert client.load(m.mnt, ["lm_head"], device="host").device == "host"


def test_unmount_frees_buffers(model, tmp_path):
    with util.mounted(model, tmp_path / "mnt") as m:
        r = exchange(m.mnt, "upload device=host lm_head")
        assert os.path.exists(r["handle"])
    assert not os.path.exists(r["handle"])


@pytest.mark.parametrize("line,needle", [("bogus", "unknown command"), ("upload", "usage"),
                                         ("upload device=tpu:0 lm_head", "unknown device"),
                                         ("upload nothere", "no such tensor"), ("free 999", "no buffer"),
                                         ("upload device=cuda:0 lm_head", "cuda"),
                                         ("upload device=host model/layers/0/w@F64", "converted")])
def test_errors_change_nothing(model, mount, line, needle):
    m = mount(model)
    r = exchange(m.mnt, line)
    assert r["ok"] is False and needle in r["error"]
    assert exchange(m.mnt, "list")["buffers"] == []


def test_gpu_none_refuses_default_uploads(model, mount):
    m = mount(model, "-o", "gpu=none")
    r = exchange(m.mnt, "upload lm_head")
    assert r["ok"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a second user")
def test_other_user_gets_eacces_with_allow_other(model):
    user = util.other_user()
    shared = util.shared_tmpdir("stfs-ctl-")
    shutil.copy(model, shared / "c.safetensors")
    try:
        with util.mounted(shared / "c.safetensors", shared / "mnt", ("-o", "allow_other")) as m:
            for target, ok in (("lm_head", True), (".control", False)):
                r = util.run_as(user, "dd", f"if={Path(m.mnt) / target}", "of=/dev/null", "count=0",
                                "status=none")
                assert (r.returncode == 0) == ok, r.stderr
                if not ok:
                    assert "Permission denied" in r.stderr.decode()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
