"""Views (docs/CONTRACT.md, "Views") checked against NumPy and ml_dtypes.

Drives build/test_view (tests/c/test_view.c): its `convert`, `read` and
`parse` modes run fs/convert.c, fs/view.c and fs/npy.c on bytes from here, and
every answer is compared byte for byte with NumPy slicing, `astype` and
`np.save`.  Hypothesis runs derandomized, so failures reproduce.
"""

import io
import json
import os
import re
import struct
import subprocess
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("TEST_BIN_DIR", ROOT / "build")) / "test_view"

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=400,
                    suppress_health_check=[HealthCheck.too_slow])

NP = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "F32": np.dtype("<f4"),
    "C64": np.dtype("<c8"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F4": np.dtype(ml_dtypes.float4_e2m1fn),
    "F6_E2M3": np.dtype(ml_dtypes.float6_e2m3fn),
    "F6_E3M2": np.dtype(ml_dtypes.float6_e3m2fn),
}
DTYPES = sorted(NP)
BITS = {k: (4 if k == "F4" else 6 if k.startswith("F6_") else NP[k].itemsize * 8) for k in NP}
SUBBYTE = {k for k in NP if BITS[k] < 8}
F8 = [k for k in NP if k.startswith("F8")]
INTS = ["U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"]
TARGETS = ["F64", "F32", "F16", "BF16"]
ML = {k for k in NP if k == "BF16" or k.startswith("F8") or k in SUBBYTE}  # the ml_dtypes types


@pytest.fixture(scope="module", autouse=True)
def binary():
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run make (TEST_BIN_DIR names the build folder)")


def run(*args, data=b"", check=True):
    p = subprocess.run([str(BIN), *args], input=data, capture_output=True, timeout=60)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stderr.decode()[-2000:])
    return p


# ---- packed sub-byte arrays: element i in bits [i*b, i*b+b), from bit 0 of byte 0 ----

def pack(codes, bits):
    codes = np.asarray(codes, np.uint8).ravel()
    bitarr = ((codes[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).ravel()
    return np.packbits(bitarr, bitorder="little").tobytes()


def unpack(raw, bits, n):
    bitarr = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[: n * bits]
    return (bitarr.reshape(n, bits).astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(
        axis=1, dtype=np.uint8)


def as_array(raw, dtype, shape):
    """The tensor as NumPy / ml_dtypes type it (sub-byte: one element per byte)."""
    n = int(np.prod(shape, dtype=np.int64))
    if dtype in SUBBYTE:
        return unpack(raw, BITS[dtype], n).view(NP[dtype]).reshape(shape)
    return np.frombuffer(raw, NP[dtype]).reshape(shape)


def c_order(a):
    """a in C order, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.array(a, order="C", copy=True)


def astype(a, target):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(a).astype(NP[target])


def c_convert(src, dst, raw):
    return run("convert", src, dst, data=raw).stdout


def check_convert(src, dst, raw, n=None):
    """Every element of raw through test_view equals NumPy's astype, bit for bit."""
    n = n if n is not None else len(raw) * 8 // BITS[src]
    want = astype(as_array(raw, src, (n,)), dst).tobytes()
    got = c_convert(src, dst, raw)
    if got != want:
        a = as_array(raw, src, (n,))
        isz = NP[dst].itemsize
        bad = [i for i in range(n) if got[i * isz:(i + 1) * isz] != want[i * isz:(i + 1) * isz]]
        i = bad[0]
        raise AssertionError(
            f"{src}->{dst}: {len(bad)} of {n} differ; first #{i}: in "
            f"{a[i:i + 1].view(np.uint8).tobytes().hex() if src not in SUBBYTE else a[i:i + 1].view(np.uint8)} "
            f"got {got[i * isz:(i + 1) * isz].hex()} want {want[i * isz:(i + 1) * isz].hex()}")


# ---- the C unit tests ----

def test_c_unit_tests():
    p = run(check=False)
    last = p.stdout.decode().strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed", last), p.stdout.decode()[-500:] + p.stderr.decode()[-2000:]
    assert p.returncode == 0


# ---- conversions: exhaustive where the source has at most 2^16 values ----

@pytest.mark.parametrize("src", F8)
@pytest.mark.parametrize("dst", TARGETS)
def test_f8_all_codes(src, dst):
    check_convert(src, dst, bytes(range(256)))


@pytest.mark.parametrize("src,dst", [(s, d) for s in ("F16", "BF16") for d in TARGETS if s != d])
def test_16bit_floats_all_values(src, dst):
    check_convert(src, dst, np.arange(65536, dtype="<u2").tobytes())


@pytest.mark.parametrize("src", sorted(SUBBYTE))
@pytest.mark.parametrize("dst", TARGETS + ["same"])
def test_subbyte_all_codes(src, dst):
    bits = BITS[src]
    codes = np.arange(1 << bits, dtype=np.uint8)
    codes = np.concatenate([codes, codes[::-1], codes[:8]])  # 8 more: a whole number of bytes
    raw = pack(codes, bits)
    if dst == "same":  # unpacked, one code per byte, as ml_dtypes and .npy hold them
        assert c_convert(src, src, raw) == codes.tobytes()
    else:
        check_convert(src, dst, raw, len(codes))


@pytest.mark.parametrize("src", ["U8", "I8", "U16", "I16"])
@pytest.mark.parametrize("dst", TARGETS)
def test_small_ints_all_values(src, dst):
    every = np.arange(1 << BITS[src], dtype=np.uint64).astype(f"<u{BITS[src] // 8}")
    check_convert(src, dst, every.tobytes())


def int_edge_values(bits, signed):
    """Powers of two and their neighbours, and the points where rounding to
    F16, BF16 or F32 (and BF16 through F32) ties, each nudged by one."""
    vals = set()
    for k in range(bits):
        p = 1 << k
        for step in (0, k - 8, k - 11, k - 24):
            if step >= 0:
                for mid in (p + (1 << step) // 2, p + (1 << step) // 2 + (1 << max(step - 16, 0)),
                            p + 3 * (1 << step) // 2):
                    vals.update(mid + d for d in (-2, -1, 0, 1, 2))
        vals.update(p + d for d in (-1, 0, 1))
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    vals.update([lo, hi, 0, 65504, 65519, 65520, 65535, 65536])
    vals |= {-v for v in vals} if signed else set()
    return sorted(v for v in vals if lo <= v <= hi)


@pytest.mark.parametrize("src", ["U32", "I32", "U64", "I64"])
@pytest.mark.parametrize("dst", TARGETS)
def test_wide_ints(src, dst):
    bits, signed = BITS[src], src[0] == "I"
    rng = np.random.default_rng(BITS[src] + signed)
    edges = np.array(int_edge_values(bits, signed), dtype=NP[src])
    # every magnitude, both signs
    rand = rng.integers(0, 1 << 64, 50000, dtype=np.uint64) >> rng.integers(0, 64, 50000).astype(np.uint64)
    rand = rand.astype(NP[src])
    if signed:
        rand = np.where(rng.integers(0, 2, len(rand)) == 1, -rand, rand).astype(NP[src])
    check_convert(src, dst, edges.tobytes() + rand.tobytes())


def f32_cases():
    rng = np.random.default_rng(32)
    h = np.arange(65536, dtype=np.uint32)
    f16 = np.arange(65536, dtype="<u2").view("<f2").astype("<f4").view(np.uint32)
    f16 = f16[np.isfinite(f16.view("<f4"))]
    mid16 = ((f16[:-1].astype(np.uint64) + f16[1:]) // 2).astype(np.uint32)  # same-sign neighbours: ties
    bf = (h << 16).astype(np.uint32)
    parts = [f16, mid16, mid16 + 1, mid16 - 1, bf, bf | 0x8000, (bf | 0x8000) + 1, (bf | 0x8000) - 1,
             rng.integers(0, 1 << 32, 200000, dtype=np.uint64).astype(np.uint32),
             np.array([0x7f800001, 0x7fc00000, 0x7fffffff, 0xffffffff, 0x7f801fff, 0x7f802000,
                       0xff800001, 0x477ff000, 0x477fefff, 0x477fffff, 0x33000000, 0x33000001,
                       0x7f7fffff, 0x7f7f8000, 0x00000001, 0x80000001], np.uint32),
             (0x7f800000 | rng.integers(1, 1 << 23, 5000)).astype(np.uint32) | (rng.integers(0, 2, 5000) << 31).astype(np.uint32)]
    return np.concatenate(parts).astype("<u4")


@pytest.mark.parametrize("dst", ["F64", "F16", "BF16"])
def test_f32(dst):
    check_convert("F32", dst, f32_cases().tobytes())


def f64_cases():
    rng = np.random.default_rng(64)
    f32 = f32_cases().view("<f4")
    f32 = f32[np.isfinite(f32)].astype("<f8").view(np.uint64)
    # Half-way points of float32 and just past them: F64->F16 rounds once,
    # F64->BF16 twice through float32.
    parts = [f32, f32 + (1 << 28), f32 + (1 << 28) + 1, f32 + (1 << 28) - 1, f32 + 1, f32 - 1,
             rng.integers(0, 1 << 64, 200000, dtype=np.uint64),
             np.array([0x7ff0000000000001, 0x7ff8000000000000, 0xfff0000000000001, 0x7ff0000000000400,
                       0x7ff00000001fffff, 0x0000000000000001, 0x47efffffe0000000, 0x47efffffefffffff,
                       0x3ff0020000001000, 0x3ff0100000001000, 0x7fefffffffffffff], np.uint64),
             (np.uint64(0x7ff0000000000000) | rng.integers(1, 1 << 52, 5000).astype(np.uint64))]
    return np.concatenate(parts).astype("<u8")


@pytest.mark.parametrize("dst", ["F32", "F16", "BF16"])
def test_f64(dst):
    check_convert("F64", dst, f64_cases().tobytes())


def halfway_doubles(mant_bits):
    """Doubles just above and below each halfway point of a target with MANT_BITS mantissa
    bits that float32 rounds onto the halfway point itself: there, rounding through float32
    and then to the target gives the wrong neighbour, one rounding from the double does not."""
    rng = np.random.default_rng(11)
    exps = rng.integers(1023 - 100, 1023 + 100, 4000, dtype=np.uint64)
    mants = rng.integers(0, 1 << mant_bits, 4000, dtype=np.uint64) << np.uint64(52 - mant_bits)
    half = (exps << np.uint64(52)) | mants | (np.uint64(1) << np.uint64(51 - mant_bits))
    off = np.uint64(1) << np.uint64(10)  # far below float32's last bit (2^-23 is bit 29)
    return np.concatenate([half + off, half - off]).view(np.float64)


@pytest.mark.parametrize("dst, mant_bits", [("BF16", 7), ("F16", 10)])
def test_f64_rounds_once(dst, mant_bits):
    """The values that double rounding gets wrong, bit for bit against ml_dtypes 0.7 and NumPy."""
    x = halfway_doubles(mant_bits)
    assert (astype(x.astype(np.float32), dst).view(np.uint16) != astype(x, dst).view(np.uint16)).any(), \
        "no case where double rounding differs: the test would prove nothing"
    check_convert("F64", dst, x.tobytes())


@pytest.mark.parametrize("dst", TARGETS)
def test_bool(dst):
    check_convert("BOOL", dst, bytes([0, 1, 1, 0]))
    # Bytes other than 0 and 1 (safetensors never writes them) are 1, as NumPy
    # reads a bool; ml_dtypes' BOOL->BF16 would give the byte's value.
    got = c_convert("BOOL", dst, bytes(range(256)))
    assert got == astype((np.arange(256) != 0), dst).tobytes()


@pytest.mark.parametrize("pair", [("C64", "F32"), ("C64", "F64"), ("C64", "BF16"), ("F32", "I32"),
                                  ("F32", "F8_E4M3"), ("BF16", "U8"), ("F16", "F4")])
def test_unsupported_conversions(pair):
    p = run("convert", *pair, check=False)
    assert p.returncode == 3 and p.stdout.strip() == b"ENOENT"


# ---- views through view_plan and view_read ----

def view_name(slices, target, npy):
    name = "w"
    if slices:
        name += "[" + ",".join(f"{'' if a is None else a}:{'' if b is None else b}" for a, b in slices) + "]"
    if target:
        name += "@" + target
    return name + (".npy" if npy else "")


def runs_of(flat):
    """Maximal runs of consecutive flat indices, as (first, last+1)."""
    if len(flat) == 0:
        return []
    cut = np.nonzero(np.diff(flat) != 1)[0]
    starts = np.concatenate([[flat[0]], flat[cut + 1]])
    ends = np.concatenate([flat[cut] + 1, [flat[-1] + 1]])
    return list(zip(starts.tolist(), ends.tolist()))


def parse_log(stderr):
    lines = stderr.decode().splitlines()
    head = dict(kv.split("=") for kv in lines[0].split())
    ranges = [tuple(map(int, ln.split()[1:])) for ln in lines[1:] if ln.startswith("range ")]
    return {k: int(v) for k, v in head.items()}, ranges


def check_npy(out, a, dtype):
    """out is the .npy of a: np.save's very bytes for NumPy's own dtypes (for
    ml_dtypes types np.save writes descr '<V2', we write the type's name)."""
    a = c_order(a)
    if dtype not in ML:
        buf = io.BytesIO()
        np.save(buf, a)
        assert out == buf.getvalue()
    f = io.BytesIO(out)
    version = np.lib.format.read_magic(f)
    shape, fortran, dt = read_header(f, version)
    assert f.tell() % 64 == 0 and not fortran and shape == a.shape and dt == NP[dtype]
    loaded = np.load(io.BytesIO(out))
    assert loaded.dtype == NP[dtype] and loaded.shape == a.shape
    assert loaded.tobytes() == c_order(a).tobytes()


def read_header(f, version):
    return (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)(f)


def plan_ok(dtype, shape, slices, target, npy, flat):
    """Whether view.c must accept the view (view.h's rules)."""
    if len(slices) > len(shape):
        return False
    if target not in (None, dtype) and (dtype == "C64" or target not in TARGETS):
        return False
    raw = target in (None, dtype) and not (npy and dtype in SUBBYTE)
    if raw and dtype in SUBBYTE:
        b = BITS[dtype]
        return all(s * b % 8 == 0 and e * b % 8 == 0 for s, e in runs_of(flat))
    return True


def check_ranges(ranges, flat, dtype, whole_read, n_runs_expected):
    b = BITS[dtype]
    touched = set()
    for i in flat.tolist():
        touched.update(range(i * b // 8, (i * b + b - 1) // 8 + 1))
    got = set()
    for off, n in ranges:
        got.update(range(off, off + n))
    assert got <= touched, "read bytes the view leaves out"
    if whole_read:
        assert got == touched and len(ranges) == n_runs_expected, (len(ranges), n_runs_expected)


def view_case(dtype, shape, slices, target, npy, piece, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype in SUBBYTE:
        raw = pack(rng.integers(0, 1 << BITS[dtype], n, dtype=np.uint8), BITS[dtype])
    elif dtype == "BOOL":
        raw = rng.integers(0, 2, n, dtype=np.uint8).tobytes()
    else:
        raw = rng.integers(0, 256, n * NP[dtype].itemsize, dtype=np.uint8).tobytes()
    arr = as_array(raw, dtype, shape)
    name = view_name(slices, target, npy)
    args = ["read", name, dtype, ",".join(map(str, shape))] + ([str(piece)] if piece else [])
    p = run(*args, data=raw, check=False)
    index = tuple(slice(a, b) for a, b in slices)
    flat = (np.asarray(np.arange(n, dtype=np.int64).reshape(shape)[index]).ravel()
            if len(slices) <= len(shape) else None)
    if not plan_ok(dtype, shape, slices, target, npy, flat):
        assert p.returncode == 3 and b"ENOENT" in p.stderr, (name, dtype, shape, p.returncode)
        return
    assert p.returncode == 0, (name, dtype, shape, p.stderr.decode()[-500:])
    head, ranges = parse_log(p.stderr)
    out = p.stdout
    assert head["size"] == len(out)
    view = np.asarray(arr[index])
    out_dtype = target or dtype
    if target not in (None, dtype):
        view = astype(view, target)
    raw_view = target in (None, dtype) and not npy
    if npy:
        check_npy(out, view, out_dtype)
    elif dtype in SUBBYTE and raw_view:
        assert out == pack(c_order(view).view(np.uint8), BITS[dtype])
    else:
        assert out == c_order(view).tobytes()
    runs = runs_of(flat)
    check_ranges(ranges, flat, dtype, piece is None, len(runs))
    contiguous = raw_view and len(runs) <= 1
    assert head["contiguous"] == contiguous, (name, dtype, shape)
    if contiguous and runs:
        assert head["src_off"] == runs[0][0] * BITS[dtype] // 8


def spell(draw, x, size, dflt):
    """One way of writing the normalized bound x of a dimension of size:
    plain, negative, omitted or clamped from beyond the dimension."""
    ways = [x] + ([x - size] if x < size else [])
    if x == dflt:
        ways.append(None)
    if x == size:
        ways += [size + 1 + draw(st.integers(0, 100)), (1 << 63) - 1]
    if x == 0:
        ways += [-size - 1 - draw(st.integers(0, 100)), -(1 << 63)]
    return draw(st.sampled_from(ways))


def random_slice(draw, size):
    """Mostly a non-empty range (sampled_from: Hypothesis's integers favour
    the ends of their range, which here would mostly mean empty slices)."""
    pairs = [(lo, hi) for lo in range(size) for hi in range(lo + 1, size + 1)]
    lo, hi = draw(st.sampled_from(pairs)) if pairs else (0, 0)
    # In the middle: Hypothesis favours both ends of a list.
    r = draw(st.sampled_from(["range"] * 5 + ["empty", "reversed"] + ["range"] * 5))
    if r == "empty":
        hi = lo
    elif r == "reversed":
        lo, hi = hi, lo
    return spell(draw, lo, size, 0), spell(draw, hi, size, size)


@st.composite
def views(draw, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    rank = draw(st.sampled_from(range(5)))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 4, 5, 6] * 2 + [0] + [1, 2, 3, 4, 5, 6] * 2))
                  for _ in range(rank))
    if dtype in SUBBYTE:
        assume(int(np.prod(shape, dtype=np.int64)) * BITS[dtype] % 8 == 0)
    n_slices = draw(st.sampled_from(range(rank + 1))) + (draw(st.sampled_from(range(10))) == 0)
    slices = [random_slice(draw, d) for d in (shape + (3,))[:n_slices]]
    target = draw(st.sampled_from([None, None, None, "F64", "F32", "F16", "BF16", dtype, "I32", "F8_E4M3"]))
    npy = draw(st.booleans())
    piece = draw(st.one_of(st.none(), st.integers(1, 200)))
    return dtype, shape, slices, target, npy, piece, draw(st.integers(0, 2**32))


@SETTINGS
@given(views())
def test_views_match_numpy(case):
    view_case(*case)


@settings(SETTINGS, max_examples=200)
@given(views(sorted(SUBBYTE)))
def test_subbyte_views_match_numpy(case):
    view_case(*case)


# Specific cases the random ones may miss.
@pytest.mark.parametrize("case", [
    ("F32", (4, 5), [(0, 128)], None, False),
    ("F32", (4, 5), [(None, None), (64, 128)], None, False),
    ("BF16", (4, 5), [(1, 3), (-3, None)], "F32", True),
    ("F4", (3, 8), [(None, None), (2, 4)], None, False),
    ("F4", (3, 8), [(None, None), (1, 2)], None, False),  # off a byte boundary: ENOENT
    ("F4", (3, 8), [(None, None), (1, 2)], "F32", False),  # converted: fine
    ("F4", (2, 3), [(None, None), (0, 2)], None, False),  # row 1 starts mid-byte: ENOENT
    ("F6_E2M3", (2, 6), [(None, None), (0, 4)], None, False),  # the same at 36 bits
    ("F6_E3M2", (4, 4), [(1, 3)], None, False),  # 4 elements: 3 bytes per row
    ("F6_E3M2", (2, 4), [(None, None), (1, 4)], None, True),
    ("F8_E8M0", (16, 16), [(3, 9), (2, 11)], "F16", True),
    ("C64", (3, 2), [(1, None)], None, True),
    ("C64", (3, 2), [], "F32", False),  # no conversion from C64
    ("U64", (), [], "BF16", True),
    ("F16", (2, 3, 4), [(0, 0)], "F64", True),
    ("I64", (5,), [(-(1 << 63), (1 << 63) - 1)], None, False),
])
@pytest.mark.parametrize("piece", [None, 1, 7, 64])
def test_view_examples(case, piece):
    view_case(*case, piece, 1)


def test_large_conversion_chunks():
    """A conversion larger than view.c's 1 MiB source chunk, read in odd pieces."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 1 << 16, 700_000, dtype=np.uint16).astype("<u2").tobytes()
    p = run("read", "w[100:699900]@F32.npy", "BF16", "700000", "65537", data=raw)
    a = np.frombuffer(raw, ml_dtypes.bfloat16)[100:699900]
    assert np.load(io.BytesIO(p.stdout)).tobytes() == astype(a, "F32").tobytes()
    head, ranges = parse_log(p.stderr)
    assert sum(n for _, n in ranges) >= 2 * 699800 and all(n <= 1 << 20 for _, n in ranges)


# ---- .npy files on disk: np.load with mmap_mode="r" ----

@pytest.mark.parametrize("dtype", DTYPES)
def test_npy_mmap_loads(tmp_path, dtype):
    shape = (3, 8)
    rng = np.random.default_rng(BITS[dtype])
    n = 24
    if dtype in SUBBYTE:
        codes = rng.integers(0, 1 << BITS[dtype], n, dtype=np.uint8)
        raw = pack(codes, BITS[dtype])
    else:
        raw = (rng.integers(0, 2, n, dtype=np.uint8).tobytes() if dtype == "BOOL"
               else rng.integers(0, 256, n * NP[dtype].itemsize, dtype=np.uint8).tobytes())
    p = run("read", "w[1:3].npy", dtype, "3,8", data=raw)
    path = tmp_path / "w.npy"
    path.write_bytes(p.stdout)
    m = np.load(path, mmap_mode="r")
    assert isinstance(m, np.memmap) and m.dtype == NP[dtype] and m.shape == (2, 8)
    assert m.tobytes() == as_array(raw, dtype, shape)[1:3].tobytes()


def numpy_header(descr, shape):
    from numpy.lib import _format_impl
    buf = io.BytesIO()
    _format_impl._write_array_header(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def check_header(dtype, shape):
    """The header of an empty array of shape equals what np.save writes."""
    p = run("read", "w.npy", dtype, ",".join(map(str, shape)), data=b"")
    assert p.stdout == numpy_header(NP[dtype].str, shape), shape


# Headers whose text ends exactly on a 64-byte boundary: np.save then pads a
# whole 64 bytes more.  Dimensions up to 2^64-1, as safetensors allows.
@pytest.mark.parametrize("shape", [(0, 10**16, 10**19), (0, 1, 10**13, 10**19), (0, 10**17, 10**17)])
def test_npy_header_padding_boundary(shape):
    check_header("F32", shape)


@SETTINGS
@given(st.sampled_from([k for k in DTYPES if k not in ML]),
       st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=7), st.integers(0, 6))
def test_npy_header_matches_numpy(dtype, dims, zero):
    dims[zero % len(dims)] = 0  # no data, whatever the other dimensions
    check_header(dtype, tuple(dims))


# ---- a real file: safe_open's arrays ----

def test_against_safe_open(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    tensors = {
        "f32": rng.standard_normal((6, 5, 4)).astype(np.float32),
        "f16": rng.standard_normal((7, 9)).astype(np.float16),
        "f64": rng.standard_normal((3, 4)) * 1e6,
        "i64": rng.integers(-(1 << 62), 1 << 62, (4, 4)),
        "u8": rng.integers(0, 255, (5, 6), dtype=np.uint8),
        "b": rng.integers(0, 2, (4, 3)).astype(bool),
        "c": (rng.standard_normal((3, 3)) + 1j).astype(np.complex64),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    blob = path.read_bytes()
    hlen = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + hlen])
    slicings = [[], [(1, 3)], [(None, None), (1, -1)], [(-2, None), (0, 1)]]
    with safe_open(str(path), framework="numpy") as f:
        for name in tensors:
            info = header[name]
            b, e = info["data_offsets"]
            raw = blob[8 + hlen + b:8 + hlen + e]
            full = f.get_tensor(name)
            for slices in slicings:
                for target in [None] + TARGETS:
                    for npy in (False, True):
                        vname = view_name(slices, target, npy)
                        p = run("read", vname, info["dtype"], ",".join(map(str, info["shape"])),
                                data=raw, check=False)
                        if info["dtype"] == "C64" and target:
                            assert p.returncode == 3
                            continue
                        want = full[tuple(slice(x, y) for x, y in slices)]
                        if target:
                            want = astype(want, target)
                        if npy:
                            got = np.load(io.BytesIO(p.stdout))
                            assert got.dtype == want.dtype and got.shape == want.shape, vname
                            assert got.tobytes() == c_order(want).tobytes(), vname
                        else:
                            assert p.stdout == c_order(want).tobytes(), (name, vname)


# ---- names ----

MALFORMED = ["", ".npy", "@F32", "[0:1]", "w[]", "w[0]", "w[::2]", "w[0:1:2]", "w[0:1,]", "w[,:]",
             "w[ 0:1]", "w[0: 1]", "w[+1:]", "w[1:2]]", "w[a:]", "w[--1:]", "w[-:]",
             "w[9223372036854775808:]", "w[-9223372036854775809:]", "w@f32", "w@F33", "w@",
             "w@F32 ", "w[0:1]@", "w[0:1x]", "w[0x1:]", "w[1e3:]", "w0:1]", "w[0:1]@bf16.npy",
             "w[" + ",".join([":"] * 129) + "]"]


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_names(name):
    p = run("parse", name, check=False)
    assert p.returncode == 3 and p.stdout.strip() == b"ENOENT", (name, p.stdout)


def ref_parse(name):
    """The grammar of view.h, written again with regular expressions."""
    npy = name.endswith(".npy")
    rest = name[:-4] if npy else name
    dtype = None
    at, close = rest.rfind("@"), rest.rfind("]")
    if at >= 0 and at > close:
        if rest[at + 1:] not in NP:
            return None
        dtype, rest = rest[at + 1:], rest[:at]
    slices = []
    if rest.endswith("]"):
        op = rest.rfind("[")
        if op < 0:
            return None
        for part in rest[op + 1:-1].split(","):
            m = re.fullmatch(r"(-?[0-9]+)?:(-?[0-9]+)?", part)
            if not m:
                return None
            vals = [None if g is None else int(g) for g in m.groups()]
            if any(v is not None and not -(1 << 63) <= v < (1 << 63) for v in vals):
                return None
            slices.append(vals)
        if len(slices) > 128:
            return None
        rest = rest[:op]
    if not rest:
        return None
    sl = ",".join(f"{'' if a is None else a}:{'' if b is None else b}" for a, b in slices)
    return (f"base={len(rest.encode())} slices=[{sl}] dtype={dtype or '-'} npy={int(npy)} "
            f"view={int(bool(npy or dtype or slices))}")


BOUND = st.one_of(st.none(), st.integers(-8, 8), st.sampled_from([-(1 << 63), (1 << 63) - 1]))
name_text = st.text(alphabet=list("w[]:,-0123@.npyFB16 x"), max_size=24)
name_parts = st.builds(
    lambda base, sl, dt, npy: base + sl + dt + npy,
    st.sampled_from(["w", "a.b", "x@y", "q]", ""]),
    st.one_of(st.just(""), st.lists(st.tuples(BOUND, BOUND), min_size=1, max_size=4).map(
        lambda s: view_name(s, None, False)[1:]), name_text),
    st.one_of(st.just(""), st.sampled_from(["@" + d for d in DTYPES] + ["@F33", "@", "@f32"])),
    st.sampled_from(["", ".npy", ".np", "npy"]))


@SETTINGS
@given(st.one_of(name_text, name_parts))
def test_parse_matches_grammar(name):
    want = ref_parse(name)
    p = run("parse", name, check=False)
    if want is None:
        assert p.returncode == 3 and p.stdout.strip() == b"ENOENT", (name, p.stdout)
    else:
        assert p.returncode == 0 and p.stdout.decode().strip() == want, (name, p.stdout)
