"""-o dequantize=: every format's dense tensors, read through the mount, against an
independent NumPy dequantization (tests/quantpack.py, which test_quantpack.py checks
against the dense originals), bit for bit; their views, BF16/F16 rounding and uploads."""
import errno
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

import quantpack
import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

IDS = [quantpack.variant_id(f, p) for f, p in quantpack.VARIANTS]


def path_of(mnt, name):
    return Path(mnt, *name.split("."))


def same_bits(got, want):
    """Equal bit for bit; any NaN matches any NaN (the mount's NaN is documented, not its payload)."""
    assert got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32 if got.dtype == np.float32 else np.uint16),
                          want[~nan].view(np.uint32 if want.dtype == np.float32 else np.uint16))


@pytest.fixture(scope="module", params=quantpack.VARIANTS, ids=IDS)
def written(request, tmp_path_factory):
    fmt, params = request.param
    d = tmp_path_factory.mktemp("q")
    dense, plain = quantpack.write_model(d, fmt, seed=len(fmt), **params)
    return d, dense, plain


def read_f32(mnt, name, shape):
    return np.frombuffer(path_of(mnt, name).read_bytes(), np.float32).reshape(shape)


def test_dense_tensors_equal_numpy_bit_for_bit(written, mount):
    d, dense, plain = written
    m = mount(d, "-o", "dequantize=F32")
    for name, (orig, want) in dense.items():
        p = path_of(m.mnt, name)
        assert os.getxattr(p, "user.safetensors.shape").decode() == "[" + ",".join(map(str, want.shape)) + "]"
        assert os.getxattr(p, "user.safetensors.quantization")
        same_bits(read_f32(m.mnt, name, want.shape), want)


def test_everything_else_is_as_stored_and_the_parts_are_hidden(written, mount):
    d, dense, plain = written
    m = mount(d, "-o", "dequantize=F32")
    with safe_open(str(d / "model.safetensors"), "np") as f:
        stored = set(f.keys())
    for name in plain:
        with safe_open(str(d / "model.safetensors"), "np") as f:
            try:
                want = f.get_tensor(name).tobytes()
            except TypeError:
                continue
        assert path_of(m.mnt, name).read_bytes() == want, name
    shown = {str(p.relative_to(m.mnt)).replace("/", ".") for p in Path(m.mnt).rglob("*") if p.is_file()}
    shown = {s for s in shown if not s.startswith(".")}
    # Activation scales are no part of the weight: they stay, as stored.
    kept = set(plain) | {s for s in stored if s.endswith(".input_scale")}
    assert shown == kept | set(dense), shown ^ (kept | set(dense))
    assert (stored - kept - set(dense)).isdisjoint(shown)


@pytest.mark.parametrize("dtype,np_dtype", [("BF16", ml_dtypes.bfloat16), ("F16", np.float16)])
def test_bf16_and_f16_are_the_f32_value_rounded_once(written, mount, dtype, np_dtype):
    d, dense, plain = written
    m = mount(d, "-o", f"dequantize={dtype}")
    for name, (orig, want) in dense.items():
        p = path_of(m.mnt, name)
        with np.errstate(over="ignore"):
            expect = want.astype(np_dtype)
        same_bits(np.frombuffer(p.read_bytes(), np_dtype).reshape(want.shape), expect)
        # Views of a BF16 mount come from the F32 values, not from the rounded ones.
        same_bits(np.frombuffer(Path(str(p) + "@F32").read_bytes(), np.float32).reshape(want.shape), want)


def test_slices_and_npy_of_dense_tensors(written, mount):
    d, dense, plain = written
    m = mount(d, "-o", "dequantize=BF16")
    for name, (orig, want) in dense.items():
        p = str(path_of(m.mnt, name))
        if want.ndim == 2:
            n, k = want.shape
            for rows, cols in [((1, n - 3), (0, k)), ((0, n), (k // 8 * 3, k // 8 * 4)), ((5, 9), (7, k - 1))]:
                v = f"{p}[{rows[0]}:{rows[1]},{cols[0]}:{cols[1]}]@F32"
                got = np.frombuffer(Path(v).read_bytes(), np.float32)
                same_bits(got.reshape(rows[1] - rows[0], cols[1] - cols[0]),
                          np.ascontiguousarray(want[rows[0]:rows[1], cols[0]:cols[1]]))
        else:
            e = want.shape[0] - 1
            got = np.frombuffer(Path(f"{p}[{e}:,2:6]@F32").read_bytes(), np.float32)
            same_bits(got.reshape(1, 4, want.shape[2]), np.ascontiguousarray(want[e:, 2:6]))
        arr = np.load(p + ".npy")
        assert arr.dtype == ml_dtypes.bfloat16 and arr.shape == want.shape
        same_bits(arr, want.astype(ml_dtypes.bfloat16))


def test_host_upload_of_a_dense_tensor_and_a_slice(written, mount):
    d, dense, plain = written
    m = mount(d, "-o", "dequantize=F32")
    name, (orig, want) = next(iter(dense.items()))
    rel = "/".join(name.split("."))
    got = util.control_exchange(m.mnt, f"upload device=host {rel} {rel}[1:3]")
    assert got["ok"], got
    data = Path(got["handle"]).read_bytes()
    pieces = {t["name"]: data[t["offset"]:t["offset"] + t["nbytes"]] for t in got["tensors"]}
    assert len(pieces) == 2
    whole = [v for k, v in pieces.items() if not k.endswith("]")][0]
    part = [v for k, v in pieces.items() if k.endswith("]")][0]
    same_bits(np.frombuffer(whole, np.float32).reshape(want.shape), want)
    same_bits(np.frombuffer(part, np.float32).reshape(want[1:3].shape), np.ascontiguousarray(want[1:3]))
    assert util.control_exchange(m.mnt, f"free {got['id']}")["ok"]


def test_a_changed_backing_file_gives_eio(tmp_path, mount):
    dense, plain = quantpack.write_model(tmp_path / "m", "gptq", bits=4, group_size=64)
    m = mount(tmp_path / "m", "-o", "dequantize=F32")
    name = next(iter(dense))
    with open(tmp_path / "m" / "model.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(last)  # same bytes, new mtime: the file changed under the mount
    fd = os.open(path_of(m.mnt, name), os.O_RDONLY)
    try:
        assert util.errno_of(os.pread, fd, 4096, 0) == errno.EIO
    finally:
        os.close(fd)


def test_over_http_the_config_is_fetched_beside_the_weights(tmp_path, tmp_path_factory, fuse_environment):
    """A GPTQ model whose zero-point convention only its config.json says (gptq_v2): over
    HTTP the config is fetched too, and the values are those of the local mount."""
    import netservers as ns
    www = tmp_path / "www"
    dense, plain = quantpack.write_model(www / "q", "gptq", bits=4, group_size=32, sym=False,
                                         checkpoint_format="gptq_v2")
    nginx = ns.Nginx(www, tmp_path_factory.mktemp("nginx"), ns.make_certs(tmp_path_factory.mktemp("c"))).start()
    try:
        with ns.remote_mounts(tmp_path) as rmount:
            r = rmount(nginx.url("q/model.safetensors"), "-o", "dequantize=F32")
            for name, (orig, want) in dense.items():
                assert os.getxattr(path_of(r.mnt, name), "user.safetensors.quantization").endswith(b"gptq_v2")
                same_bits(read_f32(r.mnt, name, want.shape), want)
    finally:
        nginx.stop()


def test_layers_whose_parts_are_in_different_shards(tmp_path, mount):
    """A sharded GPTQ model (an index, two files) with each layer's qweight in the second shard
    and its scales in the first: the layer is found across the shards, and its file is the
    qweight's."""
    import json
    from safetensors.numpy import load_file, save_file
    src = tmp_path / "one"
    dense, plain = quantpack.write_model(src, "gptq", bits=4, group_size=64)
    tensors = load_file(str(src / "model.safetensors"))
    second = {k: v for k, v in tensors.items() if k.endswith((".qweight", ".g_idx"))}
    first = {k: v for k, v in tensors.items() if k not in second}
    d = tmp_path / "sharded"
    d.mkdir()
    save_file(first, str(d / "model-00001-of-00002.safetensors"))
    save_file(second, str(d / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in first} | {k: "model-00002-of-00002.safetensors" for k in second}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (d / "config.json").write_text((src / "config.json").read_text())
    m = mount(d, "-o", "dequantize=F32")
    for name, (orig, want) in dense.items():
        assert os.getxattr(path_of(m.mnt, name), "user.safetensors.file") == b"model-00002-of-00002.safetensors"
        assert os.getxattr(path_of(m.mnt, name + "[0:2]"), "user.safetensors.file") == b"model-00002-of-00002.safetensors"
        same_bits(read_f32(m.mnt, name, want.shape), want)
