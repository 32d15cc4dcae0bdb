"""NumPy packers and dequantizers for quantized safetensors checkpoints.

Test fixtures for `-o dequantize=...`: each packer turns a dense float32
matrix into the tensors a real quantization tool writes (same names, dtypes,
shapes and bit layout), and each dequantizer turns those tensors back into
float32 in the order of operations the reference code uses.  The facts come
from /work/shared/reference/quantized-formats.md (cited below as "notes §n").

What is and is not copied from the reference tools:
- The *storage* (bit layout, nibble order, zero-point conventions, tensor
  names, config keys) follows the reference packers exactly; that is what the
  filesystem must decode.
- The *choice* of scales is plain round-to-nearest min/max (what GPTQ, AWQ and
  compressed-tensors fall back to without calibration).  Where the reference
  rounds a scale to the nearest F16/BF16 we round it up instead, so that
  every element provably fits in range and the error bound stays the clean
  |s|/2.  The dequantizer reads whatever scale is stored, so this is still a
  legal checkpoint.
- A few groups get negative scales (codes mirrored to match) and all-zero
  groups get scale 0: real checkpoints contain both, and a decoder must not
  take abs() or divide by a scale.

The dequantizers are written element-wise from the notes (word index, bit
offset, spill into the next word) rather than as the inverse of the packers'
array tricks, so a round trip checks the two against each other.
"""

import json
import os

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16
E4M3 = ml_dtypes.float8_e4m3fn
E2M1 = ml_dtypes.float4_e2m1fn
F16 = np.float16

E4M3_MAX = 448.0
E2M1_MAX = 6.0

# notes §0: magnitude by the low 3 bits, bit 3 is the sign.
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6,
                        -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)

# notes §2 (AutoAWQ awq/utils/packing_utils.py)
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]

# notes §6 (bitsandbytes backends/utils.py).  The file's quant_map is what the
# dequantizer uses; these are only for packing.
NF4_TABLE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)
FP4_TABLE = np.array([
    0.0000, 0.0052, 0.6667, 1.0000, 0.3333, 0.5000, 0.1667, 0.2500,
    0.0000, -0.0052, -0.6667, -1.0000, -0.3333, -0.5000, -0.1667, -0.2500],
    np.float32)
BNB_INT8_SCALE = np.float32(7.874015718698502e-3)


# --------------------------------------------------------------------------
# bit streams (notes §0)

def pack_stream(values, bits):
    """Pack unsigned `values` along the last axis as an LSB-first stream of
    32-bit words (value i at global bit i*bits, spilling into the next word).
    This is GPTQ's layout (incl. AutoGPTQ's 3-bit 10+1+10+1+10 words) and
    compressed-tensors >= 0.17.  Returns int32 words, as the files store them."""
    v = np.asarray(values, np.uint64)
    lead, count = v.shape[:-1], v.shape[-1]
    nwords = -(-count * bits // 32)
    bitarr = (v[..., None] >> np.arange(bits, dtype=np.uint64)) & 1
    bitarr = bitarr.reshape(lead + (count * bits,))
    pad = nwords * 32 - count * bits
    bitarr = np.concatenate([bitarr, np.zeros(lead + (pad,), np.uint64)], -1)
    bitarr = bitarr.reshape(lead + (nwords, 32))
    words = (bitarr << np.arange(32, dtype=np.uint64)).sum(-1)
    return words.astype(np.uint32).view(np.int32)


def unpack_stream(words, bits, count):
    """Read `count` values of `bits` bits along the last axis of int32 words,
    element by element as the notes write it: word (i*b)/32, offset
    (i*b)%32, high bits from the next word when offset+b > 32.  Shifts are
    done on uint32 (logical), never on the signed I32."""
    w = np.asarray(words).view(np.uint32).astype(np.uint64)
    w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,), np.uint64)], -1)
    pos = np.arange(count, dtype=np.uint64) * bits
    word, off = pos // 32, pos % 32
    pair = w[..., word] | (w[..., word + 1] << np.uint64(32))
    return ((pair >> off) & ((1 << bits) - 1)).astype(np.int64)


def pack_per_word(values, bits):
    """compressed-tensors <= 0.16 packing: floor(32/b) values per word along
    the last axis, top 32 - pf*b bits unused (notes §3a)."""
    v = np.asarray(values, np.uint64)
    pf = 32 // bits
    count = v.shape[-1]
    nwords = -(-count // pf)
    pad = nwords * pf - count
    v = np.concatenate([v, np.zeros(v.shape[:-1] + (pad,), np.uint64)], -1)
    v = v.reshape(v.shape[:-1] + (nwords, pf))
    words = (v << (np.arange(pf, dtype=np.uint64) * bits)).sum(-1)
    return words.astype(np.uint32).view(np.int32)


def unpack_per_word(words, bits, count):
    """Inverse of pack_per_word, element-wise: word c/pf, shift b*(c%pf)."""
    w = np.asarray(words).view(np.uint32).astype(np.int64)
    pf = 32 // bits
    c = np.arange(count)
    return (w[..., c // pf] >> (bits * (c % pf))) & ((1 << bits) - 1)


def round_up_to(x, dtype):
    """Round float32 `x` to `dtype` (F16/BF16/E4M3), then step up one ulp
    wherever that went below x, so that the stored scale is >= the exact one
    and no element needs clamping beyond half a step."""
    x = np.asarray(x, np.float32)
    r = x.astype(dtype)
    low = r.astype(np.float32) < x
    if np.any(low):
        bumped = np.nextafter(r[low], np.array(np.inf, dtype))
        r[low] = bumped
    return r


# --------------------------------------------------------------------------
# integer group quantization shared by GPTQ, AWQ and compressed-tensors

def _int_qparams(x, bits, sym, negate, scale_dtype):
    """Scale and zero of one group `x` (1-D) following AutoGPTQ's quantizer:
    the range always includes 0 (xmin <= 0 <= xmax), symmetric uses
    zero = 2^(b-1).  Returns (stored scale, zero as an unsigned code)."""
    maxq = (1 << bits) - 1
    xmin, xmax = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if sym:
        amax = max(-xmin, xmax)
        xmin, xmax = -amax, amax
    if xmax == xmin:
        # all-zero group: a zero scale, every code equal to the zero
        return np.zeros((), scale_dtype), (1 << (bits - 1)) if sym else 0
    s = round_up_to(np.float32((xmax - xmin) / maxq), scale_dtype)
    if negate:
        s = -s
    sf = float(s.astype(np.float32))
    if sym:
        zero = 1 << (bits - 1)
    else:
        lo = xmin if sf > 0 else xmax
        zero = int(np.clip(np.round(-lo / sf), 0, maxq))
    return s, zero


def quantize_int_groups(w, bits, g_idx, ngroups, sym, scale_dtype, negate_groups=()):
    """Round-to-nearest quantization of w [N, K] with column k in group
    g_idx[k].  Returns q [N, K] unsigned codes, zeros [N, ngroups] unsigned
    codes, scales [N, ngroups] in scale_dtype."""
    n, k = w.shape
    maxq = (1 << bits) - 1
    q = np.zeros((n, k), np.int64)
    zeros = np.zeros((n, ngroups), np.int64)
    scales = np.zeros((n, ngroups), scale_dtype)
    for g in range(ngroups):
        cols = np.nonzero(g_idx == g)[0]
        for r in range(n):
            x = w[r, cols]
            s, z = _int_qparams(x, bits, sym, (r + g) in negate_groups, scale_dtype)
            sf = float(np.float32(s))
            scales[r, g] = s
            zeros[r, g] = z
            q[r, cols] = z if sf == 0 else np.clip(np.round(x / sf) + z, 0, maxq)
    return q, zeros, scales


def _negate_set(n):
    """Which (row + group) sums get a negative scale: a sparse, deterministic
    pattern so every fixture has some."""
    return {3, 7, n + 1}


def act_order_g_idx(k, group_size, seed):
    """g_idx as GPTQ writes it with desc_act=True: columns are quantized in
    a permuted order perm, and g_idx[perm[i]] = i // G (AutoGPTQ
    gptq.py).  The checkpoint stays in original column order."""
    perm = np.random.default_rng(seed).permutation(k)
    g_idx = np.empty(k, np.int32)
    g_idx[perm] = np.arange(k) // group_size
    return g_idx


# --------------------------------------------------------------------------
# GPTQ (notes §1)

def pack_gptq(w, bits=4, group_size=128, sym=True, desc_act=False,
              checkpoint_format="gptq", seed=0):
    """GPTQ tensors for dense w [N, K] as AutoGPTQ
    qlinear_cuda_old.py pack() writes them: qweight packed along K (rows),
    qzeros packed along N, v1 stores zero-1 (masked), gptq_v2 the true
    zero; scales F16 [ceil(K/G), N]; g_idx I32 [K]."""
    n, k = w.shape
    g = k if group_size == -1 else group_size
    ngroups = -(-k // g)
    g_idx = act_order_g_idx(k, g, seed) if desc_act else (np.arange(k) // g).astype(np.int32)
    q, zeros, scales = quantize_int_groups(w, bits, g_idx, ngroups, sym, F16, _negate_set(n))
    mask = (1 << bits) - 1
    stored_zeros = (zeros - 1) & mask if checkpoint_format == "gptq" else zeros
    return {
        "qweight": pack_stream(q, bits).T.copy(),   # [K*b/32, N]
        "qzeros": pack_stream(stored_zeros.T, bits),
        "scales": scales.T.copy(),
        "g_idx": g_idx,
    }


def dequantize_gptq(t, bits, checkpoint_format="gptq", group_size=None):
    """W[n][k] = scales[g][n] * (q - z), g = g_idx[k], v1 z = (zraw+1)&mask
    (AutoGPTQ qlinear_cuda_old.py torch path)."""
    qweight, qzeros, scales = t["qweight"], t["qzeros"], t["scales"]
    n = qweight.shape[1]
    k = qweight.shape[0] * 32 // bits
    g = k if group_size in (None, -1) else group_size
    g_idx = t["g_idx"].astype(np.int64) if "g_idx" in t else np.arange(k) // g
    mask = (1 << bits) - 1
    q = unpack_stream(qweight.T, bits, k)                  # [N, K]
    zraw = unpack_stream(qzeros, bits, n)                  # [G, N]
    z = (zraw + 1) & mask if checkpoint_format == "gptq" else zraw
    s = scales.astype(np.float32)
    diff = (q - z.T[:, g_idx]).astype(np.float32)
    return s.T[:, g_idx] * diff


# --------------------------------------------------------------------------
# AWQ GEMM (notes §2)

def pack_awq(w, group_size=128):
    """AWQ GEMM tensors as AutoAWQ gemm.py from_linear writes them:
    intweight [K, N], nibble i of word c holds column c*8 + AWQ_ORDER[i];
    qzeros the same on the [G, N] zeros; scales F16 [G, N].  Asymmetric,
    zeros stored as-is."""
    n, k = w.shape
    assert n % 8 == 0, "AWQ GEMM packs 8 columns per word"
    ngroups = -(-k // group_size)
    g_idx = np.arange(k) // group_size
    q, zeros, scales = quantize_int_groups(w, 4, g_idx, ngroups, False, F16, _negate_set(n))

    return {"qweight": awq_pack_words(q.T), "qzeros": awq_pack_words(zeros.T), "scales": scales.T.copy()}


def awq_pack_words(intweight):
    """AutoAWQ gemm.py packing loop: [rows, N] 4-bit codes -> [rows, N/8]
    int32, nibble i of word c = column c*8 + AWQ_ORDER[i]."""
    n = intweight.shape[1]
    out = np.zeros((intweight.shape[0], n // 8), np.uint32)
    for col in range(n // 8):
        for i in range(8):
            out[:, col] |= intweight[:, col * 8 + AWQ_ORDER[i]].astype(np.uint32) << (4 * i)
    return out.view(np.int32)


def dequantize_awq(t, group_size):
    """W[n][k] = (q - z) * scales[k/G][n] with the nibble of column n at shift
    4*AWQ_REVERSE_ORDER[n%8] (vLLM awq_triton.py shift table)."""
    qweight = t["qweight"].view(np.uint32).astype(np.int64)
    qzeros = t["qzeros"].view(np.uint32).astype(np.int64)
    scales = t["scales"].astype(np.float32)
    k = qweight.shape[0]
    n = scales.shape[1]
    g = k if group_size == -1 else group_size
    cols = np.arange(n)
    shift = 4 * np.array(AWQ_REVERSE_ORDER)[cols % 8]
    q = (qweight[:, cols // 8] >> shift) & 0xF             # [K, N]
    z = (qzeros[:, cols // 8] >> shift) & 0xF              # [G, N]
    gk = np.arange(k) // g
    return ((q - z[gk]).astype(np.float32) * scales[gk]).T.copy()


# --------------------------------------------------------------------------
# compressed-tensors pack-quantized (notes §3a)

def _ct_pack(values, bits, version):
    return pack_stream(values, bits) if _ct_stream(version) else pack_per_word(values, bits)


def _ct_unpack(words, bits, count, version):
    return unpack_stream(words, bits, count) if _ct_stream(version) else unpack_per_word(words, bits, count)


def _ct_stream(version):
    """>= 0.17.0 packs a dense stream, earlier versions per word."""
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) >= (0, 17)


def pack_ct_int(w, bits=4, strategy="group", group_size=32, sym=True,
                actorder=False, version="0.17.0", scale_dtype=BF16, seed=0):
    """compressed-tensors pack-quantized tensors (compressors/pack_quantized
    /base.py, helpers.py pack_to_int32): codes stored as u = q + 2^(b-1),
    weight_packed along K per row, weight_zero_point packed along dim 0 (N),
    weight_scale [N, n_groups], weight_shape I64.  w may be [E, N, K]: each
    2-D slice is packed and the results stacked."""
    if w.ndim == 3:
        parts = [pack_ct_int(x, bits, strategy, group_size, sym, actorder, version, scale_dtype, seed + e)
                 for e, x in enumerate(w)]
        out = {name: np.stack([p[name] for p in parts]) for name in parts[0] if name != "weight_shape"}
        out["weight_shape"] = np.array(w.shape, np.int64)
        return out
    n, k = w.shape
    g = k if strategy == "channel" else group_size
    ngroups = -(-k // g)
    g_idx = act_order_g_idx(k, g, seed) if actorder else (np.arange(k) // g).astype(np.int32)
    q, zeros, scales = quantize_int_groups(w, bits, g_idx, ngroups, sym, scale_dtype, _negate_set(n))
    out = {"weight_packed": _ct_pack(q, bits, version), "weight_scale": scales,
           "weight_shape": np.array([n, k], np.int64)}
    if not sym:
        out["weight_zero_point"] = _ct_pack(zeros.T, bits, version).T.copy()
    if actorder:
        out["weight_g_idx"] = g_idx
    return out


def dequantize_ct_int(t, bits, version="0.17.0", group_size=None):
    """W[r][c] = (u - zu) * weight_scale[r][g] with g = g_idx[c] or c/G and
    zu = 2^(b-1) when symmetric (compressed-tensors forward_helpers
    _dequantize)."""
    shape = tuple(int(x) for x in t["weight_shape"])
    if len(shape) == 3:
        return np.stack([dequantize_ct_int({k: v[e] for k, v in t.items() if k != "weight_shape"}
                                           | {"weight_shape": np.array(shape[1:])}, bits, version, group_size)
                         for e in range(shape[0])])
    n, k = shape
    scale = t["weight_scale"].astype(np.float32)
    ngroups = scale.shape[1]
    # G comes from the config: with a partial last group, K / n_groups is not G
    g = k if ngroups == 1 or group_size is None else group_size
    g_idx = t["weight_g_idx"].astype(np.int64) if "weight_g_idx" in t else np.arange(k) // g
    u = _ct_unpack(t["weight_packed"], bits, k, version)
    if "weight_zero_point" in t:
        zu = _ct_unpack(t["weight_zero_point"].T, bits, n, version).T      # [N, G]
    else:
        zu = np.full((n, ngroups), 1 << (bits - 1))
    return (u - zu[:, g_idx]).astype(np.float32) * scale[:, g_idx]


# --------------------------------------------------------------------------
# FP8: DeepSeek block, compressed-tensors float-quantized, ModelOpt (notes §3b, §4)

def _fp8_codes(x, scale):
    """e4m3(x / scale) with the clamp compressed-tensors applies; scale 0
    (all-zero block) gives code 0."""
    s = np.asarray(scale, np.float32)
    safe = np.where(s == 0, np.float32(1), s)
    y = np.clip(x / safe, -E4M3_MAX, E4M3_MAX)
    return np.where(s == 0, np.float32(0), y).astype(E4M3)


def pack_fp8_block(w, block=(128, 128)):
    """DeepSeek-V3 block FP8: weight F8_E4M3 [N, K], weight_scale_inv F32
    [ceil(N/bh), ceil(K/bw)] = amax/448 per block; edge blocks are
    cropped (zero padding does not change amax).  One block is stored with
    a negative scale and mirrored codes, an all-zero block with scale 0."""
    n, k = w.shape
    bh, bw = block
    sn, sk = -(-n // bh), -(-k // bw)
    scale = np.zeros((sn, sk), np.float32)
    for i in range(sn):
        for j in range(sk):
            scale[i, j] = np.abs(w[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw]).max() / E4M3_MAX
    if scale.size > 1:
        scale[-1, 0] = -scale[-1, 0]
    full = np.repeat(np.repeat(scale, bh, 0), bw, 1)[:n, :k]
    return {"weight": _fp8_codes(w, full), "weight_scale_inv": scale}


def dequantize_fp8_block(t):
    """W = f32(e4m3) * weight_scale_inv[r/bh][c/bw], one F32 rounding
    (DeepSeek kernel.py weight_dequant_kernel).  The block size is read
    from the shapes (ceil division), assuming 128 when ambiguous."""
    w = t["weight"].astype(np.float32)
    s = t["weight_scale_inv"].astype(np.float32)
    n, k = w.shape
    bh = 128 if -(-n // 128) == s.shape[0] else -(-n // s.shape[0])
    bw = 128 if -(-k // 128) == s.shape[1] else -(-k // s.shape[1])
    rows, cols = np.arange(n) // bh, np.arange(k) // bw
    return w * s[rows][:, cols]


def pack_fp8_scaled(w, strategy="tensor", scale_dtype=np.float32, scalar=False):
    """compressed-tensors float-quantized (weight F8_E4M3 + weight_scale [1]
    per tensor or [N, 1] per channel) and ModelOpt FP8 (scalar=True:
    weight_scale F32 shape [] plus input_scale).  Scale = amax/448 rounded
    up in the stored dtype; per channel, one row has a negative scale."""
    if strategy == "tensor":
        amax = np.abs(w).max()
        scale = round_up_to(np.array([amax / E4M3_MAX], np.float32), scale_dtype)
    else:
        amax = np.abs(w).max(axis=1, keepdims=True)
        scale = round_up_to((amax / E4M3_MAX).astype(np.float32), scale_dtype)
        scale[1] = -scale[1]
    out = {"weight": _fp8_codes(w, scale.astype(np.float32)), "weight_scale": scale}
    if scalar:
        out["weight_scale"] = scale.reshape(())
        out["input_scale"] = np.array(0.5, np.float32)
    return out


def dequantize_fp8_scaled(t):
    """W = f32(e4m3) * f32(weight_scale) with [], [1] or [N, 1] scales."""
    w = t["weight"].astype(np.float32)
    s = t["weight_scale"].astype(np.float32)
    return w * (s.reshape(-1, 1) if s.size > 1 else s.reshape(()))


# --------------------------------------------------------------------------
# NVFP4 (notes §3c, ModelOpt bonus) and MX (notes §3d, §5)

def _e2m1_codes(y):
    """4-bit E2M1 codes of float32 y (round to nearest even, saturating at
    6, as compressed-tensors' cast_to_fp4)."""
    f = np.clip(y, -E2M1_MAX, E2M1_MAX).astype(E2M1)
    return f.view(np.uint8) & 0xF


def _pack_nibbles_low_first(codes):
    """Two codes per byte along the last axis, even element in the low
    nibble (NVFP4, MXFP4, gpt-oss)."""
    c = codes.astype(np.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def _unpack_e2m1(packed, count):
    """Element c of a row: byte c/2, low nibble when c is even."""
    c = np.arange(count)
    b = packed[..., c // 2].astype(np.int64)
    nib = np.where(c % 2 == 0, b & 0xF, b >> 4)
    return E2M1_VALUES[nib]


def pack_nvfp4(w, naming="compressed-tensors"):
    """NVFP4: global scale 448*6/amax, per-16 group scale e4m3(amax_g/6 *
    global), codes e2m1(x / (f32(e4m3)/global)) (compressed-tensors
    nvfp4 compressor and forward_helpers).  naming="modelopt" stores the
    same payload as weight / weight_scale / weight_scale_2 = 1/global with
    codes e2m1(x / (e4m3 * scale_2))."""
    n, k = w.shape
    assert k % 16 == 0
    amax = np.float32(np.abs(w).max())
    groups = w.reshape(n, k // 16, 16)
    gmax = np.abs(groups).max(-1)
    if naming == "modelopt":
        scale_2 = np.float32(amax / (E4M3_MAX * E2M1_MAX))
        ws = np.clip(gmax / E2M1_MAX / scale_2, 0, E4M3_MAX).astype(E4M3)
        eff = ws.astype(np.float32) * scale_2
    else:
        gscale = np.float32(E4M3_MAX * E2M1_MAX / amax)
        ws = np.clip(gmax / E2M1_MAX * gscale, 0, E4M3_MAX).astype(E4M3)
        eff = ws.astype(np.float32) / gscale
    safe = np.where(eff == 0, np.float32(1), eff)
    codes = np.where(eff[..., None] == 0, 0, _e2m1_codes(groups / safe[..., None])).reshape(n, k)
    packed = _pack_nibbles_low_first(codes)
    if naming == "modelopt":
        return {"weight": packed, "weight_scale": ws, "weight_scale_2": np.array(scale_2, np.float32),
                "input_scale": np.array(1.0, np.float32)}
    return {"weight_packed": packed, "weight_scale": ws,
            "weight_global_scale": np.array([gscale], np.float32)}


def dequantize_nvfp4(t):
    """compressed-tensors: e2m1 * (f32(e4m3) / global) (divide first);
    ModelOpt: (e2m1 * f32(e4m3)) * scale_2 (notes §8)."""
    if "weight_scale_2" in t:
        packed, ws = t["weight"], t["weight_scale"].astype(np.float32)
        k = packed.shape[1] * 2
        e = _unpack_e2m1(packed, k)
        return (e * ws[:, np.arange(k) // 16]) * t["weight_scale_2"].astype(np.float32).reshape(())
    packed = t["weight_packed"]
    k = packed.shape[1] * 2
    s = t["weight_scale"].astype(np.float32) / t["weight_global_scale"].astype(np.float32)[0]
    return _unpack_e2m1(packed, k) * s[:, np.arange(k) // 16]


def _mx_exponents(w, emax):
    """Shared E8M0 exponent per 32-block along the last axis (OCP MX:
    floor(log2(amax)) - emax of the element type); all-zero blocks get the
    smallest exponent 0 (2^-127)."""
    blocks = w.reshape(w.shape[:-1] + (w.shape[-1] // 32, 32))
    amax = np.abs(blocks).max(-1)
    e = np.floor(np.log2(np.where(amax > 0, amax, 1))).astype(np.int64) - emax + 127
    e = np.where(amax > 0, np.clip(e, 0, 254), 0)
    return blocks, e.astype(np.uint8)


def pack_mxfp4(w):
    """MXFP4 codes and E8M0 scales for the last axis of w (2-D or 3-D):
    returns (codes [..., K], scales U8 [..., K/32])."""
    blocks, e = _mx_exponents(w, 2)
    s = np.ldexp(np.float32(1), e.astype(np.int32) - 127).astype(np.float32)
    codes = _e2m1_codes(blocks / s[..., None]).reshape(w.shape)
    return codes, e


def pack_ct_mxfp4(w):
    """compressed-tensors mxfp4-pack-quantized: weight_packed U8 [N, K/2]
    (low nibble first), weight_scale U8 E8M0 [N, K/32]."""
    codes, e = pack_mxfp4(w)
    return {"weight_packed": _pack_nibbles_low_first(codes), "weight_scale": e}


def dequantize_ct_mxfp4(t):
    """W = e2m1(nib) * 2^(weight_scale[r][c/32] - 127); exact in F32."""
    packed = t["weight_packed"]
    k = packed.shape[-1] * 2
    e = t["weight_scale"].astype(np.int32)[..., np.arange(k) // 32]
    return np.ldexp(_unpack_e2m1(packed, k), e - 127).astype(np.float32)


def pack_gptoss_mxfp4(w):
    """gpt-oss experts: w [E, R, C] -> blocks U8 [E, R, C/32, 16] and scales
    U8 [E, R, C/32] (transformers Mxfp4GptOssExperts layout)."""
    codes, e = pack_mxfp4(w)
    packed = _pack_nibbles_low_first(codes)
    return {"blocks": packed.reshape(w.shape[:-1] + (w.shape[-1] // 32, 16)), "scales": e}


def dequantize_gptoss_mxfp4(t):
    """gpt-oss weights.py _get_mxfp4_tensor: lut[lo] even, lut[hi] odd,
    ldexp by scales - 127; result [E, R, C]."""
    blocks, scales = t["blocks"], t["scales"].astype(np.int32)
    e_, r_, nb, _ = blocks.shape
    lo = E2M1_VALUES[blocks & 0xF]
    hi = E2M1_VALUES[blocks >> 4]
    sub = np.stack([lo, hi], -1).reshape(e_, r_, nb, 32)
    return np.ldexp(sub, (scales - 127)[..., None]).reshape(e_, r_, nb * 32).astype(np.float32)


def pack_mxfp8(w):
    """compressed-tensors mxfp8-quantized: weight F8_E4M3 [N, K],
    weight_scale U8 E8M0 [N, K/32], exponent floor(log2 amax) - 8."""
    blocks, e = _mx_exponents(w, 8)
    s = np.ldexp(np.float32(1), e.astype(np.int32) - 127).astype(np.float32)
    codes = np.clip(blocks / s[..., None], -E4M3_MAX, E4M3_MAX).astype(E4M3).reshape(w.shape)
    return {"weight": codes, "weight_scale": e}


def dequantize_mxfp8(t):
    """W = f32(e4m3) * 2^(s - 127); exact in F32."""
    w = t["weight"].astype(np.float32)
    e = t["weight_scale"].astype(np.int32)[:, np.arange(w.shape[1]) // 32]
    return np.ldexp(w, e - 127).astype(np.float32)


# --------------------------------------------------------------------------
# bitsandbytes (notes §6)

def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes functional.create_dynamic_map, the 8-bit map used for
    the nested (double) quantization of absmax."""
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                    else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        bounds = np.linspace(0.1, 1, items, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0, 1.0]
    data += [0] * (2 ** total_bits - len(data))
    return np.array(sorted(data), np.float32)


def _nearest_code(x, table):
    """Index of the nearest table entry (first on ties, like torch.argmin
    in bitsandbytes' default quantize kernels)."""
    return np.argmin(np.abs(x.reshape(-1, 1) - table.reshape(1, -1)), axis=1)


def _blockwise_absmax(flat, blocksize):
    nb = -(-flat.size // blocksize)
    padded = np.zeros(nb * blocksize, np.float32)
    padded[:flat.size] = flat
    return padded.reshape(nb, blocksize), np.abs(padded.reshape(nb, blocksize)).max(1)


def pack_bnb_4bit(w, quant_type="nf4", double_quant=False, dtype="bfloat16",
                  blocksize=64, nested_blocksize=256):
    """bitsandbytes Linear4bit as transformers saves it: flatten row-major,
    per-64 absmax, nearest code, two codes per byte HIGH nibble first,
    weight U8 [ceil(n/2), 1]; double quant stores absmax - mean as 8-bit
    dynamic codes with per-256 nested_absmax (functional.quantize_4bit).
    The quant_state tensor is the UTF-8 json.dumps of the non-tensor part
    of QuantState.as_dict(packed=True), in that dict's key order."""
    table = NF4_TABLE if quant_type == "nf4" else FP4_TABLE
    flat = np.ascontiguousarray(w, np.float32).reshape(-1)
    blocks, absmax = _blockwise_absmax(flat, blocksize)
    safe = np.where(absmax == 0, np.float32(1), absmax)
    scaled = np.clip(blocks / safe[:, None], -1, 1)
    codes = _nearest_code(scaled, table)[:flat.size]
    if codes.size % 2:
        codes = np.concatenate([codes, [0]])
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    out = {"weight": packed}
    state = {"quant_type": quant_type, "blocksize": blocksize, "dtype": dtype, "shape": list(w.shape)}
    if double_quant:
        offset = np.float32(absmax.mean())
        dmap = create_dynamic_map()
        blocks2, absmax2 = _blockwise_absmax(absmax - offset, nested_blocksize)
        safe2 = np.where(absmax2 == 0, np.float32(1), absmax2)
        qabs = _nearest_code(blocks2 / safe2[:, None], dmap)[:absmax.size].astype(np.uint8)
        out |= {"weight.absmax": qabs, "weight.quant_map": table.copy(),
                "weight.nested_absmax": absmax2.astype(np.float32), "weight.nested_quant_map": dmap}
        state |= {"nested_blocksize": nested_blocksize, "nested_dtype": "float32",
                  "nested_offset": float(offset)}
    else:
        out |= {"weight.absmax": absmax.astype(np.float32), "weight.quant_map": table.copy()}
    blob = json.dumps(state).encode("utf-8")
    out["weight.quant_state.bitsandbytes__" + quant_type] = np.frombuffer(blob, np.uint8).copy()
    return out


def dequantize_bnb_4bit(t):
    """W_flat[i] = quant_map[code] * absmax[i/blocksize], code from the high
    nibble for even i; nested absmax = nested_quant_map[a] *
    nested_absmax[blk/256] + offset first (bitsandbytes default backend)."""
    key = next(k for k in t if k.startswith("weight.quant_state.bitsandbytes__"))
    state = json.loads(bytes(t[key]).decode("utf-8"))
    shape, bs = state["shape"], state["blocksize"]
    n = int(np.prod(shape))
    qmap = t["weight.quant_map"].astype(np.float32)
    if "nested_absmax" in state or "weight.nested_absmax" in t:
        a = t["weight.absmax"].astype(np.int64)
        nb = np.arange(a.size) // state["nested_blocksize"]
        absmax = (t["weight.nested_quant_map"][a] * t["weight.nested_absmax"][nb]
                  + np.float32(state["nested_offset"])).astype(np.float32)
    else:
        absmax = t["weight.absmax"].astype(np.float32)
    i = np.arange(n)
    byte = t["weight"].reshape(-1).view(np.uint8)[i // 2].astype(np.int64)
    code = np.where(i % 2 == 0, byte >> 4, byte & 0xF)
    return (qmap[code] * absmax[i // bs]).reshape(shape)


def pack_bnb_int8(w):
    """LLM.int8 (Linear8bitLt): SCB = row absmax, weight I8 =
    round(x * 127/SCB) (bitsandbytes int8_vectorwise_quant), weight_format
    U8 scalar 0 ("row")."""
    scb = np.abs(w).max(1).astype(np.float32)
    safe = np.where(scb == 0, np.float32(1), scb)
    q = np.round(w * (np.float32(127) / safe)[:, None])
    return {"weight": np.clip(q, -127, 127).astype(np.int8), "SCB": scb,
            "weight_format": np.array(0, np.uint8)}


def dequantize_bnb_int8(t):
    """W = (q * SCB[r]) * 7.874015718698502e-3, two F32 roundings."""
    return (t["weight"].astype(np.float32) * t["SCB"].astype(np.float32)[:, None]) * BNB_INT8_SCALE


# --------------------------------------------------------------------------
# whole model fixtures

def _ct_config(fmt, weights, version, ignore=("lm_head",)):
    """quantization_config as llm-compressor writes it (notes §3)."""
    w = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "group_size": None,
         "block_structure": None, "actorder": None, "dynamic": False, "scale_dtype": None,
         "zp_dtype": None, "observer": "minmax"} | weights
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "version": version,
            "config_groups": {"group_0": {"targets": ["Linear"], "format": None, "weights": w,
                                          "input_activations": None, "output_activations": None}},
            "ignore": list(ignore), "kv_cache_scheme": None}


# Per format: hidden size H, intermediate I, q_proj out features; chosen to
# satisfy the format's divisibility rules while leaving odd edges (K not a
# multiple of 128 or of the group, N not a multiple of 8 where allowed).
_SHAPES = {
    "fp8": (300, 200, 200),
    "ct-fp8": (300, 200, 200),
    "modelopt-fp8": (300, 200, 200),
    "gptq": (224, 160, 96),        # K*b/32 and N*b/32 whole for b=3
    "awq": (200, 136, 96),         # N multiple of 8
    "ct-int": (200, 136, 100),
    "nvfp4": (208, 144, 100),      # K multiple of 16
    "modelopt-nvfp4": (208, 144, 100),
    "mxfp4": (224, 160, 100),      # K multiple of 32
    "mxfp8": (224, 160, 100),
    "bnb-4bit": (201, 137, 99),    # N*K odd for down_proj: a half byte at the end
    "bnb-int8": (200, 136, 99),
    "gpt-oss": (96, 64, 96),
}

VARIANTS = [
    ("fp8", {}),
    ("ct-fp8", {"strategy": "tensor", "scale_dtype": "F32"}),
    ("ct-fp8", {"strategy": "tensor", "scale_dtype": "BF16"}),
    ("ct-fp8", {"strategy": "channel", "scale_dtype": "BF16"}),
    ("ct-fp8", {"strategy": "channel", "scale_dtype": "F32"}),
    ("modelopt-fp8", {}),
    ("gptq", {"bits": 4, "group_size": 64}),
    ("gptq", {"bits": 4, "group_size": -1, "sym": False}),
    ("gptq", {"bits": 3, "group_size": 64, "sym": False}),
    ("gptq", {"bits": 2, "group_size": 32, "sym": False, "checkpoint_format": "gptq_v2"}),
    ("gptq", {"bits": 8, "group_size": 64, "desc_act": True}),
    ("gptq", {"bits": 4, "group_size": 32, "desc_act": True, "sym": False, "checkpoint_format": "gptq_v2"}),
    ("gptq", {"bits": 3, "group_size": 32, "desc_act": True, "sym": False}),
    ("gptq", {"bits": 4, "group_size": 64, "config_file": "quantize_config.json"}),
    ("awq", {"group_size": 64}),
    ("awq", {"group_size": 128}),
    ("ct-int", {"bits": 4, "strategy": "group", "sym": True, "version": "0.17.0"}),
    ("ct-int", {"bits": 4, "strategy": "group", "sym": False, "version": "0.16.0"}),
    ("ct-int", {"bits": 3, "strategy": "group", "sym": True, "version": "0.17.0"}),
    ("ct-int", {"bits": 3, "strategy": "group", "sym": False, "version": "0.16.0"}),
    ("ct-int", {"bits": 3, "strategy": "channel", "sym": False, "version": "0.17.0"}),
    ("ct-int", {"bits": 8, "strategy": "channel", "sym": True, "version": "0.17.0"}),
    ("ct-int", {"bits": 4, "strategy": "group", "sym": True, "actorder": True, "version": "0.17.0"}),
    ("ct-int", {"bits": 4, "strategy": "group", "sym": True, "experts": 3, "version": "0.17.0"}),
    ("ct-int", {"bits": 3, "strategy": "group", "sym": False, "experts": 2, "version": "0.16.0"}),
    ("nvfp4", {}),
    ("modelopt-nvfp4", {}),
    ("mxfp4", {}),
    ("mxfp8", {}),
    ("gpt-oss", {"experts": 4}),
    ("bnb-4bit", {"quant_type": "nf4", "double_quant": False}),
    ("bnb-4bit", {"quant_type": "nf4", "double_quant": True}),
    ("bnb-4bit", {"quant_type": "fp4", "double_quant": False}),
    ("bnb-4bit", {"quant_type": "fp4", "double_quant": True}),
    ("bnb-int8", {}),
]


def variant_id(fmt, params):
    """A short pytest id such as 'gptq-bits=3-group_size=64'."""
    return "-".join([fmt] + [f"{k}={v}" for k, v in params.items()])


def dense_matrix(rng, shape):
    """A weight-like float32 matrix: normal values with a few outliers (so
    some groups have a much larger range than others)."""
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    flat = w.reshape(-1)
    flat[rng.integers(0, flat.size, 4)] *= 8
    return w


def _quantize_layer(fmt, w, p, seed):
    """(tensors, dequantized) for one layer under variant p."""
    if fmt == "fp8":
        t = pack_fp8_block(w)
        return t, dequantize_fp8_block(t)
    if fmt == "ct-fp8":
        t = pack_fp8_scaled(w, p.get("strategy", "tensor"), BF16 if p.get("scale_dtype") == "BF16" else np.float32)
        return t, dequantize_fp8_scaled(t)
    if fmt == "modelopt-fp8":
        t = pack_fp8_scaled(w, "tensor", np.float32, scalar=True)
        return t, dequantize_fp8_scaled(t)
    if fmt == "gptq":
        cf = p.get("checkpoint_format", "gptq")
        t = pack_gptq(w, p.get("bits", 4), p.get("group_size", 128), p.get("sym", True),
                      p.get("desc_act", False), cf, seed)
        return t, dequantize_gptq(t, p.get("bits", 4), cf, p.get("group_size", 128))
    if fmt == "awq":
        t = pack_awq(w, p.get("group_size", 128))
        return t, dequantize_awq(t, p.get("group_size", 128))
    if fmt == "ct-int":
        t = pack_ct_int(w, p.get("bits", 4), p.get("strategy", "group"), p.get("group_size", 32),
                        p.get("sym", True), p.get("actorder", False), p.get("version", "0.17.0"), BF16, seed)
        return t, dequantize_ct_int(t, p.get("bits", 4), p.get("version", "0.17.0"),
                                    p.get("group_size", 32) if p.get("strategy", "group") == "group" else None)
    if fmt in ("nvfp4", "modelopt-nvfp4"):
        t = pack_nvfp4(w, "modelopt" if fmt == "modelopt-nvfp4" else "compressed-tensors")
        return t, dequantize_nvfp4(t)
    if fmt == "mxfp4":
        t = pack_ct_mxfp4(w)
        return t, dequantize_ct_mxfp4(t)
    if fmt == "mxfp8":
        t = pack_mxfp8(w)
        return t, dequantize_mxfp8(t)
    if fmt == "gpt-oss":
        t = pack_gptoss_mxfp4(w)
        return t, dequantize_gptoss_mxfp4(t)
    if fmt == "bnb-4bit":
        t = pack_bnb_4bit(w, p.get("quant_type", "nf4"), p.get("double_quant", False))
        return t, dequantize_bnb_4bit(t)
    if fmt == "bnb-int8":
        t = pack_bnb_int8(w)
        return t, dequantize_bnb_int8(t)
    raise ValueError(fmt)


def _quantization_config(fmt, p):
    """(quantization_config for config.json or None, {extra file: json})."""
    if fmt == "fp8":
        return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": [128, 128]}, {}
    if fmt == "ct-fp8":
        return _ct_config("float-quantized", {"strategy": p.get("strategy", "tensor")}, "0.17.0"), {}
    if fmt in ("modelopt-fp8", "modelopt-nvfp4"):
        algo = "FP8" if fmt == "modelopt-fp8" else "NVFP4"
        q = {"quant_algo": algo, "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]}
        if algo == "NVFP4":
            q["group_size"] = 16
        return None, {"hf_quant_config.json": {"producer": {"name": "modelopt", "version": "0.29.0"},
                                               "quantization": q}}
    if fmt == "gptq":
        q = {"quant_method": "gptq", "bits": p.get("bits", 4), "group_size": p.get("group_size", 128),
             "desc_act": p.get("desc_act", False), "sym": p.get("sym", True), "static_groups": False,
             "true_sequential": True, "damp_percent": 0.01,
             "checkpoint_format": p.get("checkpoint_format", "gptq"), "pack_dtype": "int32",
             "lm_head": False}
        if p.get("config_file") == "quantize_config.json":
            return None, {"quantize_config.json": q}
        return q, {}
    if fmt == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": p.get("group_size", 128),
                "zero_point": True, "version": "gemm", "modules_to_not_convert": None}, {}
    if fmt == "ct-int":
        strategy = p.get("strategy", "group")
        w = {"num_bits": p.get("bits", 4), "type": "int", "symmetric": p.get("sym", True), "strategy": strategy,
             "group_size": p.get("group_size", 32) if strategy == "group" else None,
             "actorder": "group" if p.get("actorder") else None}
        return _ct_config("pack-quantized", w, p.get("version", "0.17.0")), {}
    if fmt == "nvfp4":
        w = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
             "scale_dtype": "torch.float8_e4m3fn"}
        return _ct_config("nvfp4-pack-quantized", w, "0.17.0"), {}
    if fmt == "mxfp4":
        w = {"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8"}
        return _ct_config("mxfp4-pack-quantized", w, "0.17.0"), {}
    if fmt == "mxfp8":
        w = {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8"}
        return _ct_config("mxfp8-quantized", w, "0.17.0"), {}
    if fmt == "gpt-oss":
        return {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}, {}
    if fmt == "bnb-4bit":
        return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                "bnb_4bit_quant_type": p.get("quant_type", "nf4"),
                "bnb_4bit_use_double_quant": p.get("double_quant", False),
                "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
                "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None,
                "llm_int8_has_fp16_weight": False}, {}
    if fmt == "bnb-int8":
        return {"quant_method": "bitsandbytes", "load_in_4bit": False, "load_in_8bit": True,
                "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
                "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None,
                "llm_int8_has_fp16_weight": False}, {}
    raise ValueError(fmt)


def write_model(dirpath, fmt, seed=0, **params):
    """Write model.safetensors, config.json (and quantize_config.json /
    hf_quant_config.json where the format uses them) for a two-layer
    llama-like model quantized with `fmt` / `params` (see VARIANTS).

    Quantized: model.layers.{0,1}.self_attn.q_proj and .mlp.down_proj (or,
    with experts=E for ct-int, .mlp.experts.down_proj [E, H, I]; for
    gpt-oss the MoE tensors mlp.experts.gate_up_proj [E, 2I, H] and
    mlp.experts.down_proj [E, H, I], the attention staying dense).
    Not quantized: model.embed_tokens.weight, model.norm.weight,
    model.layers.{0,1}.self_attn.q_proj.bias (plus the gpt-oss biases
    and q_proj weights).

    Returns ({dense_name: (original f32, expected dequantized f32)},
    [names of the non-quantized tensors])."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    h, inter, nq = _SHAPES[fmt]
    if fmt == "gptq" and params.get("bits") == 8:
        nq = 100                      # 8-bit packs 4 per word: N need not be a multiple of 8
    dense_dtype = F16 if fmt in ("gptq", "awq") else BF16
    experts = params.get("experts", 0)
    tensors, dense, plain = {}, {}, []

    def add_plain(name, arr):
        tensors[name] = arr
        plain.append(name)

    def add_quant(prefix, sep, dense_name, w, layer_seed):
        t, deq = _quantize_layer(fmt, w, params, layer_seed)
        for suffix, arr in t.items():
            tensors[prefix + sep + suffix] = arr
        dense[dense_name] = (w, deq)

    add_plain("model.embed_tokens.weight", (rng.standard_normal((64, h)) * 0.02).astype(dense_dtype))
    add_plain("model.norm.weight", (1 + 0.1 * rng.standard_normal(h)).astype(dense_dtype))
    for layer in range(2):
        base = f"model.layers.{layer}"
        q_name = f"{base}.self_attn.q_proj"
        q = dense_matrix(rng, (nq, h))
        if layer == 1:
            q[:, :128] = 0            # whole groups/blocks of zeros: zero scales
            q[2] = 0                  # a zero row: zero per-channel scale
        if fmt == "gpt-oss":
            add_plain(q_name + ".weight", q.astype(BF16))
            gu = dense_matrix(rng, (experts, 2 * inter, h))
            dn = dense_matrix(rng, (experts, h, inter))
            if layer == 1:
                gu[1, :, :32] = 0
            for name, w in (("gate_up_proj", gu), ("down_proj", dn)):
                prefix = f"{base}.mlp.experts.{name}"
                add_quant(prefix, "_", prefix, w, seed + layer)
                add_plain(prefix + "_bias", (0.01 * rng.standard_normal(w.shape[:2])).astype(BF16))
            continue
        add_quant(q_name, ".", q_name + ".weight", q, seed + layer)
        add_plain(q_name + ".bias", (0.01 * rng.standard_normal(nq)).astype(dense_dtype))
        if experts:
            d_name = f"{base}.mlp.experts.down_proj"
            d = dense_matrix(rng, (experts, h, inter))
        else:
            d_name = f"{base}.mlp.down_proj"
            d = dense_matrix(rng, (h, inter))
        add_quant(d_name, ".", d_name + ".weight", d, seed + 10 + layer)

    os.makedirs(dirpath, exist_ok=True)
    save_file(tensors, os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})
    qc, extra = _quantization_config(fmt, params)
    config = {"architectures": ["GptOssForCausalLM" if fmt == "gpt-oss" else "LlamaForCausalLM"],
              "model_type": "gpt_oss" if fmt == "gpt-oss" else "llama",
              "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": 2,
              "vocab_size": 64, "torch_dtype": "float16" if dense_dtype is F16 else "bfloat16"}
    if experts:
        config["num_local_experts"] = experts
    if qc is not None:
        config["quantization_config"] = qc
    files = {"config.json": config} | extra
    for name, obj in files.items():
        with open(os.path.join(dirpath, name), "w") as f:
            json.dump(obj, f, indent=2)
    return dense, plain

