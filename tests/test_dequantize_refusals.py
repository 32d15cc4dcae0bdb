"""-o dequantize=: how the format is recognised (config, or the header alone), what is
refused and how, and that nothing changes without the option.  The values themselves are
checked in test_dequantize.py."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

DQ = ("-o", "dequantize=F32")


def gptq_parts(k=64, n=16, bits=4, group=32, g_idx=True):
    """GPTQ tensors of the right shapes (the values do not matter to recognition)."""
    rng = np.random.default_rng(0)
    t = {
        "layer.qweight": rng.integers(-2**31, 2**31, (k * bits // 32, n), dtype=np.int64).astype(np.int32),
        "layer.qzeros": rng.integers(-2**31, 2**31, (k // group, n * bits // 32), dtype=np.int64).astype(np.int32),
        "layer.scales": rng.standard_normal((k // group, n)).astype(np.float16),
        "layer.bias": np.zeros(n, np.float16),
        "norm.weight": np.ones(8, np.float32),
    }
    if g_idx:
        t["layer.g_idx"] = (np.arange(k) // group).astype(np.int32)
    return t


def write(tmp_path, tensors, config=None, name="config.json"):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    if config is not None:
        (d / name).write_text(json.dumps(config))
    return d


def refused(tmp_path, source, *opts):
    (tmp_path / "mnt").mkdir(exist_ok=True)
    rc, out, err = util.run_refused(source, tmp_path / "mnt", opts)
    assert rc == 1, (rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


GPTQ_CONFIG = {"model_type": "llama", "quantization_config": {
    "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True}}


def test_without_the_option_the_packed_parts_show(tmp_path, mount):
    d = write(tmp_path, gptq_parts(), GPTQ_CONFIG)
    m = mount(d)
    assert sorted(os.listdir(m.mnt / "layer")) == ["bias", "g_idx", "qweight", "qzeros", "scales"]


def test_parts_hidden_dense_shown_with_its_xattrs(tmp_path, mount):
    d = write(tmp_path, gptq_parts(), GPTQ_CONFIG)
    m = mount(d, *DQ)
    assert sorted(os.listdir(m.mnt / "layer")) == ["bias", "weight"]
    w = m.mnt / "layer" / "weight"
    assert os.stat(w).st_size == 16 * 64 * 4
    assert os.getxattr(w, "user.safetensors.dtype") == b"F32"
    assert os.getxattr(w, "user.safetensors.shape") == b"[16,64]"
    assert os.getxattr(w, "user.safetensors.quantization") == \
        b"gptq bits=4 group_size=32 desc_act=false checkpoint_format=gptq"
    assert os.getxattr(w, "user.safetensors.file") == b"model.safetensors"
    names = os.listxattr(w)
    assert "user.safetensors.offset" not in names and "user.safetensors.data_offsets" not in names
    assert "user.safetensors.quantization" in names
    assert util.errno_of(os.getxattr, w, "user.safetensors.offset") == 61  # ENODATA
    # A tensor of the file keeps its xattrs and has no quantization.
    assert "user.safetensors.quantization" not in os.listxattr(m.mnt / "layer" / "bias")
    # .header.json stays the file's header: the packed parts are in it.
    assert "layer.qweight" in json.loads((m.mnt / ".header.json").read_text())


@pytest.mark.parametrize("dtype,width", [("BF16", 2), ("F16", 2), ("F32", 4)])
def test_dtype_sets_size_and_dtype(tmp_path, mount, dtype, width):
    d = write(tmp_path, gptq_parts(), GPTQ_CONFIG)
    m = mount(d, "-o", f"dequantize={dtype}")
    w = m.mnt / "layer" / "weight"
    assert os.stat(w).st_size == 16 * 64 * width
    assert os.getxattr(w, "user.safetensors.dtype") == dtype.encode()


@pytest.mark.parametrize("opt,value", [("dequantize", "I8"), ("dequantize", "bf16"), ("gptq_format", "v3"),
                                       ("ct_packing", "dense")])
def test_bad_option_values(tmp_path, opt, value):
    d = write(tmp_path, gptq_parts(), GPTQ_CONFIG)
    line = refused(tmp_path, d, "-o", f"{opt}={value}")
    assert opt in line


def test_header_only_gptq_asks_for_the_zero_point_convention(tmp_path, mount):
    d = write(tmp_path, gptq_parts())
    line = refused(tmp_path, d, *DQ)
    assert "gptq_format=gptq" in line and "gptq_v2" in line and "layer." in line
    m = mount(d, *DQ, "-o", "gptq_format=gptq_v2")
    assert os.getxattr(m.mnt / "layer" / "weight", "user.safetensors.quantization").endswith(b"checkpoint_format=gptq_v2")


def test_legacy_quantize_config_json(tmp_path, mount):
    d = write(tmp_path, gptq_parts(), {"bits": 4, "group_size": 32, "desc_act": True}, name="quantize_config.json")
    m = mount(d, *DQ)
    assert os.getxattr(m.mnt / "layer" / "weight", "user.safetensors.quantization") == \
        b"gptq bits=4 group_size=32 desc_act=true checkpoint_format=gptq"


def test_config_contradicting_the_shapes_is_refused(tmp_path):
    cfg = json.loads(json.dumps(GPTQ_CONFIG))
    cfg["quantization_config"]["bits"] = 8
    d = write(tmp_path, gptq_parts(), cfg)
    line = refused(tmp_path, d, *DQ)
    assert "layer." in line and "bits" in line


def test_header_bits_are_derived_from_the_shapes(tmp_path, mount):
    d = write(tmp_path, gptq_parts(bits=8, g_idx=False), {"quantization_config": {"quant_method": "gptq"}})
    m = mount(d, *DQ)
    assert os.getxattr(m.mnt / "layer" / "weight", "user.safetensors.quantization").startswith(b"gptq bits=8 ")


@pytest.mark.parametrize("config,named", [
    ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "marlin"),
    ({"quant_method": "gptq", "bits": 4, "is_marlin_format": True}, "marlin"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv_fast"}, "AWQ"),
    ({"quant_method": "compressed-tensors", "format": "sparse-24-bitmask"}, "sparse"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "frozen"},
     "quantization_status"),
    ({"quant_method": "hqq"}, "hqq"),
    ({"quant_method": "aqlm"}, "aqlm"),
])
def test_kernel_layouts_and_other_methods_are_refused_by_name(tmp_path, config, named):
    d = write(tmp_path, gptq_parts(), {"quantization_config": config})
    line = refused(tmp_path, d, *DQ)
    assert named in line and "config.json" in line


def test_refused_layouts_mount_without_the_option(tmp_path, mount):
    d = write(tmp_path, gptq_parts(), {"quantization_config": {"quant_method": "hqq"}})
    m = mount(d)
    assert (m.mnt / "layer" / "qweight").exists()


def test_config_method_and_header_disagree(tmp_path):
    d = write(tmp_path, gptq_parts(), {"quantization_config": {"quant_method": "bitsandbytes"}})
    line = refused(tmp_path, d, *DQ)
    assert "bitsandbytes" in line and "GPTQ" in line


def test_compressed_tensors_packing_generation_asks_when_ambiguous(tmp_path, mount):
    # 3 bits, K = 10: one word per row either way (30 bits as a stream, 10 values per word).
    n, k = 4, 10
    t = {"l.weight_packed": np.zeros((n, 1), np.int32), "l.weight_scale": np.ones((n, 1), np.float16),
         "l.weight_shape": np.array([n, k], np.int64)}
    d = write(tmp_path, t, {"quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"g": {"weights": {"num_bits": 3, "type": "int", "strategy": "channel"}}}}})
    line = refused(tmp_path, d, *DQ)
    assert "ct_packing=word" in line and "stream" in line
    m = mount(d, *DQ, "-o", "ct_packing=word")
    assert os.getxattr(m.mnt / "l" / "weight", "user.safetensors.shape") == b"[4,10]"
    assert sorted(os.listdir(m.mnt / "l")) == ["weight"]


def test_dense_name_taken_by_a_real_tensor_is_refused(tmp_path):
    t = gptq_parts()
    t["layer.weight"] = np.zeros((16, 64), np.float16)
    d = write(tmp_path, t, GPTQ_CONFIG)
    assert "layer.weight" in refused(tmp_path, d, *DQ)


def test_a_model_without_quantization_is_unchanged(tmp_path, mount):
    d = write(tmp_path, {"a.weight": np.ones((3, 4), np.float16)}, {"model_type": "llama"})
    m = mount(d, *DQ)
    assert os.listdir(m.mnt / "a") == ["weight"]
    assert os.getxattr(m.mnt / "a" / "weight", "user.safetensors.dtype") == b"F16"
