"""Checks of the quantized-checkpoint fixtures in quantpack.py (no mount).

A round trip dense -> packed -> NumPy dequantization that stays within the
format's quantization error bound shows that the packer and the independent
element-wise dequantizer agree on the layout; the hand-worked examples pin
the layout itself to the reference tools (notes:
/work/shared/reference/quantized-formats.md).
"""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

import quantpack as qp

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I8": np.int8, "U8": np.uint8, "F8_E4M3": ml_dtypes.float8_e4m3fn}


def read_safetensors(path):
    """Minimal reader (safetensors.numpy cannot load BF16/F8): name -> array."""
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[base + a:base + b], DTYPES[info["dtype"]]).reshape(info["shape"])
    return out, header


def layer_tensors(tensors, prefix, sep="."):
    return {k[len(prefix) + len(sep):]: v for k, v in tensors.items() if k.startswith(prefix + sep)}


# ---------------------------------------------------------------- bounds

EPS = 1e-6          # slack for the F32 roundings of the dequantizer


def per_element_int_scale(fmt, t, params, shape):
    """|scale| applying to each dense element, from the stored tensors."""
    n, k = shape
    if fmt == "gptq":
        g = t["g_idx"].astype(np.int64)
        return np.abs(t["scales"].astype(np.float32)).T[:, g]
    if fmt == "awq":
        g = np.arange(k) // params.get("group_size", 128)
        return np.abs(t["scales"].astype(np.float32)).T[:, g]
    s = np.abs(t["weight_scale"].astype(np.float32))
    if "weight_g_idx" in t:
        g = t["weight_g_idx"].astype(np.int64)
    elif s.shape[-1] == 1:
        g = np.zeros(k, np.int64)
    else:
        g = np.arange(k) // params.get("group_size", 32)
    return s[..., g]


def bound(fmt, params, t, w):
    """Largest allowed |W - Wq| per element.

    ints (GPTQ/AWQ/CT pack-quantized): |s|/2 (round to nearest, the range
      always fits because stored scales are rounded up);
    FP8 (block/tensor/channel): 2^-4 |W| (3 mantissa bits) + 2^-10 |s|
      (half the smallest subnormal step);
    MXFP8: the same plus the saturation at 448 s (OCP exponent choice);
    NVFP4/MXFP4 (E2M1): 0.25 (s + |W|) (steps 0.5/1/2 in [0,2]/[2,4]/[4,6],
      incl. saturation above 6);
    bnb 4-bit: absmax * half the largest code gap, plus the error of a
      double-quantized absmax;
    bnb int8: SCB/254."""
    a = np.abs(w)
    if fmt in ("gptq", "awq", "ct-int"):
        return per_element_int_scale(fmt, t, params, w.shape[-2:]) / 2 * (1 + EPS) + EPS * a
    if fmt == "fp8":
        s = np.abs(t["weight_scale_inv"])
        n, k = w.shape
        s = s[np.arange(n) // 128][:, np.arange(k) // 128]
        return 2 ** -4 * a + 2 ** -10 * s + EPS * a
    if fmt in ("ct-fp8", "modelopt-fp8"):
        s = np.abs(t["weight_scale"].astype(np.float32))
        s = s.reshape(-1, 1) if s.size > 1 else s.reshape(())
        return 2 ** -4 * a + 2 ** -10 * s + EPS * a
    if fmt == "mxfp8":
        s = np.ldexp(np.float32(1), t["weight_scale"].astype(np.int32) - 127)[:, np.arange(w.shape[1]) // 32]
        return 2 ** -4 * a + 2 ** -10 * s + np.maximum(0, a - 448 * s) + EPS * a
    if fmt in ("nvfp4", "modelopt-nvfp4"):
        ws = t["weight_scale"].astype(np.float32)[:, np.arange(w.shape[1]) // 16]
        s = ws * t["weight_scale_2"] if "weight_scale_2" in t else ws / t["weight_global_scale"][0]
        return 0.25 * (s + a) + EPS
    if fmt in ("mxfp4", "gpt-oss"):
        e = t["weight_scale"] if fmt == "mxfp4" else t["scales"]
        s = np.ldexp(np.float32(1), e.astype(np.int32) - 127)[..., np.arange(w.shape[-1]) // 32]
        return 0.25 * (s + a) + EPS
    if fmt == "bnb-4bit":
        qmap = np.sort(t["weight.quant_map"])
        half_gap = np.diff(qmap).max() / 2
        n = w.size
        blk = np.arange(n) // 64
        if "weight.nested_absmax" in t:
            dmap = t["weight.nested_quant_map"]
            d = t["weight.nested_absmax"][np.arange(t["weight.absmax"].size) // 256] * np.diff(dmap).max() / 2
            state = json.loads(bytes(t["weight.quant_state.bitsandbytes__" + qp_type(t)]))
            am = dmap[t["weight.absmax"].astype(np.int64)] * t["weight.nested_absmax"][
                np.arange(d.size) // 256] + state["nested_offset"]
            b = (am + d) * half_gap + d
        else:
            b = t["weight.absmax"] * half_gap
        return (b[blk] * (1 + EPS) + EPS).reshape(w.shape)
    if fmt == "bnb-int8":
        return (t["SCB"] / 254)[:, None] * (1 + EPS) + EPS
    raise ValueError(fmt)


def qp_type(t):
    return next(k for k in t if k.startswith("weight.quant_state.")).rsplit("__", 1)[1]


@pytest.mark.parametrize("fmt,params", qp.VARIANTS, ids=[qp.variant_id(f, p) for f, p in qp.VARIANTS])
def test_round_trip_within_bound(tmp_path, fmt, params):
    """Every variant: the file's tensors dequantize to what write_model
    promised, and that is within the format's error bound of the original."""
    dense, plain = qp.write_model(tmp_path, fmt, seed=1, **params)
    tensors, header = read_safetensors(tmp_path / "model.safetensors")
    assert plain and all(name in tensors for name in plain)
    config = json.load(open(tmp_path / "config.json"))
    if fmt.startswith("modelopt"):
        assert json.load(open(tmp_path / "hf_quant_config.json"))["producer"]["name"] == "modelopt"
    elif params.get("config_file") == "quantize_config.json":
        assert "quantization_config" not in config
        assert json.load(open(tmp_path / "quantize_config.json"))["quant_method"] == "gptq"
    else:
        assert "quantization_config" in config
    sep = "_" if fmt == "gpt-oss" else "."
    covered = set(plain)
    for name, (orig, expected) in dense.items():
        prefix = name if fmt == "gpt-oss" else name[:-len(".weight")]
        t = layer_tensors(tensors, prefix, sep)
        t.pop("bias", None)
        covered |= {prefix + sep + k for k in t}
        again = dequantize(fmt, params, t)
        assert again.dtype == np.float32 and again.shape == orig.shape
        np.testing.assert_array_equal(again, expected)
        err = np.abs(orig - expected)
        b = bound(fmt, params, t, orig)
        assert np.all(err <= b), (name, float((err - b).max()))
    assert covered | {k for k in tensors if k.endswith("_bias")} == set(tensors)


def dequantize(fmt, params, t):
    """Dequantize one layer read back from the file, with the parameters a
    reader gets from the config."""
    if fmt == "fp8":
        return qp.dequantize_fp8_block(t)
    if fmt in ("ct-fp8", "modelopt-fp8"):
        return qp.dequantize_fp8_scaled(t)
    if fmt == "gptq":
        return qp.dequantize_gptq(t, params["bits"], params.get("checkpoint_format", "gptq"), params["group_size"])
    if fmt == "awq":
        return qp.dequantize_awq(t, params["group_size"])
    if fmt == "ct-int":
        g = params.get("group_size", 32) if params["strategy"] == "group" else None
        return qp.dequantize_ct_int(t, params["bits"], params["version"], g)
    if fmt in ("nvfp4", "modelopt-nvfp4"):
        return qp.dequantize_nvfp4(t)
    if fmt == "mxfp4":
        return qp.dequantize_ct_mxfp4(t)
    if fmt == "mxfp8":
        return qp.dequantize_mxfp8(t)
    if fmt == "gpt-oss":
        return qp.dequantize_gptoss_mxfp4(t)
    if fmt == "bnb-4bit":
        return qp.dequantize_bnb_4bit(t)
    if fmt == "bnb-int8":
        return qp.dequantize_bnb_int8(t)
    raise ValueError(fmt)


def test_fixtures_have_negative_and_zero_scales(tmp_path):
    """Decoders must neither take abs() of a scale nor trip over zero."""
    _, _ = qp.write_model(tmp_path, "gptq", bits=4, group_size=64)
    t, _ = read_safetensors(tmp_path / "model.safetensors")
    s = t["model.layers.1.self_attn.q_proj.scales"].astype(np.float32)
    assert (s < 0).any() and (s == 0).any()
    w = np.ones((300, 130), np.float32)
    w[:128, :128] = 0
    t = qp.pack_fp8_block(w)
    assert (t["weight_scale_inv"] < 0).any() and (t["weight_scale_inv"] == 0).any()


# ------------------------------------------------------- hand-worked examples

def test_awq_order_one_word():
    """Columns 0..7 holding 0..7: nibble i holds column AWQ_ORDER[i], so the
    word reads 0,2,4,6,1,3,5,7 from the low nibble up."""
    word = qp.awq_pack_words(np.arange(8).reshape(1, 8)).view(np.uint32)
    assert word.tolist() == [[0x75316420]]
    t = {"qweight": qp.awq_pack_words(np.arange(8).reshape(1, 8)),
         "qzeros": qp.awq_pack_words(np.zeros((1, 8), np.int64)), "scales": np.ones((1, 8), np.float16)}
    assert qp.dequantize_awq(t, 1)[:, 0].tolist() == list(range(8))


def test_gptq_3bit_word_pattern():
    """32 values in 3 words, 10+1+10+1+10 (AutoGPTQ qlinear pack, bits=3):
    value 10 = 0b101 puts 0b01 in bits 30-31 of word 0 and 1 in bit 0 of
    word 1; value 21 = 0b110 puts 0 in bit 31 of word 1 and 0b11 in bits 0-1
    of word 2."""
    v = np.zeros(32, np.int64)
    v[10], v[21] = 5, 6
    assert qp.pack_stream(v, 3).view(np.uint32).tolist() == [0x40000000, 0x00000001, 0x00000003]
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        vals = rng.integers(0, 1 << bits, (3, 77))
        assert (qp.unpack_stream(qp.pack_stream(vals, bits), bits, 77) == vals).all()
        pf = 32 // bits
        assert qp.pack_per_word(vals, bits).shape[-1] == -(-77 // pf)
        assert (qp.unpack_per_word(qp.pack_per_word(vals, bits), bits, 77) == vals).all()


def test_gptq_zero_conventions():
    """Symmetric 4-bit: v1 stores 7 (zero - 1) in every nibble, v2 the true 8;
    asymmetric zero 0 is stored as 15 in v1 and decodes back to 0 (mask)."""
    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    v1 = qp.pack_gptq(w, 4, 32, sym=True, checkpoint_format="gptq")
    v2 = qp.pack_gptq(w, 4, 32, sym=True, checkpoint_format="gptq_v2")
    assert v1["qzeros"].view(np.uint32).tolist() == [[0x77777777]]
    assert v2["qzeros"].view(np.uint32).tolist() == [[0x88888888]]
    positive = np.abs(w) + 0.1
    t = qp.pack_gptq(positive, 4, 32, sym=False)
    zeros = qp.unpack_stream(t["qzeros"], 4, 8)[0]
    # columns 3 and 7 carry negative scales (quantpack._negate_set): zero = 15, stored 14
    assert zeros.tolist() == [15, 15, 15, 14, 15, 15, 15, 14]
    half_step = np.abs(t["scales"].astype(np.float32)).T / 2
    assert (np.abs(qp.dequantize_gptq(t, 4, "gptq", 32) - positive) <= half_step * (1 + 1e-6)).all()


def test_ct_generations_differ_for_3_bits():
    """notes §3a: 3-bit K=4096 packs to 384 words (>= 0.17 stream) or 410
    (<= 0.16, 10 per word); 4 and 8 bits are identical."""
    vals = np.zeros((1, 4096), np.int64)
    assert qp._ct_pack(vals, 3, "0.17.0").shape == (1, 384)
    assert qp._ct_pack(vals, 3, "0.16.0").shape == (1, 410)
    vals = np.random.default_rng(0).integers(0, 16, (2, 64))
    assert (qp._ct_pack(vals, 4, "0.16.0") == qp._ct_pack(vals, 4, "0.17.0")).all()


def test_ct_int_offset_storage():
    """Symmetric 4-bit: q in [-8, 7] is stored as q + 8, so a group holding
    exactly -7s..7s stores codes 1..15 (s = 7/7.5 rounded up in BF16)."""
    w = np.arange(-7, 8, dtype=np.float32).reshape(1, 15)
    t = qp.pack_ct_int(w, 4, "channel", sym=True)
    u = qp.unpack_stream(t["weight_packed"], 4, 15)
    assert u.tolist() == [list(range(1, 16))]
    assert t["weight_shape"].dtype == np.int64 and t["weight_shape"].tolist() == [1, 15]


def test_bnb_high_nibble_first():
    """NF4 codes 15 (+1), 0 (-1), 7 (0) with absmax 1 -> bytes 0xF0, 0x70
    (even element in the HIGH nibble; odd count pads a zero low nibble)."""
    t = qp.pack_bnb_4bit(np.array([[1.0, -1.0, 0.0]], np.float32))
    assert t["weight"].reshape(-1).tolist() == [0xF0, 0x70]
    assert t["weight"].shape == (2, 1)
    assert qp.dequantize_bnb_4bit(t).tolist() == [[1.0, -1.0, 0.0]]


def test_bnb_quant_state_bytes():
    """The quant state is json.dumps (default separators) of the non-tensor
    entries of QuantState.as_dict, in its key order."""
    t = qp.pack_bnb_4bit(np.ones((2, 64), np.float32))
    assert bytes(t["weight.quant_state.bitsandbytes__nf4"]) == \
        b'{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64]}'
    t = qp.pack_bnb_4bit(np.ones((2, 64), np.float32), double_quant=True)
    state = json.loads(bytes(t["weight.quant_state.bitsandbytes__nf4"]))
    assert list(state) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize",
                           "nested_dtype", "nested_offset"]
    assert t["weight.absmax"].dtype == np.uint8 and t["weight.nested_quant_map"].shape == (256,)


def test_fp4_low_nibble_first_and_e8m0():
    """MXFP4 row [0.5, -6, 0...]: amax 6 -> exponent floor(log2 6) - 2 = 0,
    stored 127; codes 1 and 0xF share byte 0xF1 (even element low)."""
    w = np.zeros((1, 32), np.float32)
    w[0, :2] = [0.5, -6]
    t = qp.pack_ct_mxfp4(w)
    assert t["weight_scale"].tolist() == [[127]]
    assert t["weight_packed"][0, 0] == 0xF1
    assert (qp.dequantize_ct_mxfp4(t) == w).all()


def test_rounding_ties_to_even():
    """E4M3: 1.0625 lies between 1.0 and 1.125 -> 1.0 (0x38); 1.1875 -> 1.25
    (0x3A).  E2M1: 2.5 -> 2 (code 4), 5 -> 4 (code 6), 0.25 -> 0."""
    codes = qp._fp8_codes(np.array([1.0625, 1.1875], np.float32), np.float32(1))
    assert codes.view(np.uint8).tolist() == [0x38, 0x3A]
    assert qp._e2m1_codes(np.array([2.5, 5.0, 0.25], np.float32)).tolist() == [4, 6, 0]


def test_bnb_int8_constant():
    """Row absmax 127 -> codes equal the values; dequant multiplies by SCB
    then by 7.874015718698502e-3 (=1/127 in F32)."""
    w = np.array([[127, -1, 0]], np.float32)
    t = qp.pack_bnb_int8(w)
    assert t["weight"].tolist() == [[127, -1, 0]] and t["SCB"].tolist() == [127.0]
    assert t["weight_format"].shape == () and t["weight_format"] == 0
    np.testing.assert_allclose(qp.dequantize_bnb_int8(t), w, rtol=1e-6)


def test_gptoss_layout_and_names(tmp_path):
    """gpt-oss: blocks [E, R, C/32, 16] + scales [E, R, C/32], dense name
    without '.weight'."""
    dense, _ = qp.write_model(tmp_path, "gpt-oss", experts=4)
    t, _ = read_safetensors(tmp_path / "model.safetensors")
    b = t["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    assert b.shape == (4, 128, 3, 16) and b.dtype == np.uint8
    assert t["model.layers.0.mlp.experts.gate_up_proj_scales"].shape == (4, 128, 3)
    assert dense["model.layers.0.mlp.experts.gate_up_proj"][0].shape == (4, 128, 96)
