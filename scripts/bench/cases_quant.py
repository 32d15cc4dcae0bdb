"""The quantized-checkpoint cases, beside bench.py's: `-o dequantize=BF16` against NumPy.
Each returns table rows as bench.py's cases do; bench.py runs them.

    quant-gptq   GPTQ 4-bit, group 128, v1 zeros (checkpoint_format gptq, desc_act false)
    quant-fp8    FP8 E4M3 with F32 128x128 block scales (DeepSeek-V3, quant_method fp8)
    quant-nvfp4  NVFP4 as compressed-tensors writes it (nvfp4-pack-quantized)
        A: one Python process reads every layer's packed tensors from the warm backing file
           (safe_open; the F8_E4M3 ones by np.fromfile at their header offsets, since the NumPy
           backend of safetensors 0.8 cannot load F8 tensors) and dequantizes each, vectorised,
           to an [N, K] BF16 array (ml_dtypes.bfloat16), the same bytes the mount gives;
        B: a fresh mount with -o dequantize=BF16, every dense `P/weight` file read in 1 MiB
           reads, output discarded; the backing file warm for both.
        Rows: B/A throughput (goal ≥ 2×) and B's GB/s of output (goal ≥ 1 GB/s).  Once per
        case, outside the clock, one layer's bytes through the mount are compared with A's.
    quant-gptq-slice  `weight[:, a:b]` for rank 3 of 8 (b - a = K/8) of every GPTQ layer, on a
        fresh mount: bytes the daemon read (rchar of /proc/PID/io: the bytes its read/pread
        calls returned, page cache hits included, plus the /dev/fuse requests it reads, a few
        dozen bytes each) over the packed bytes the slice needs: qweight rows a/8..b/8, the
        scales and qzeros rows of those groups, g_idx[a:b].  Goal ≤ 1.2×.

The model of each format: decoder blocks (hidden 2048, intermediate 5632, k/v 512 wide) of
seven linear layers, as many blocks as make about args.tensor_bytes / 2 of BF16 output (1 GiB;
128 MiB with --quick), written once per run with safetensors.numpy.save_file beside the
config.json of that format.  Packed values are random bits (the E4M3 NaN codes 0x7F/0xFF
excluded: NaN payloads need not survive two decoders bit for bit), scales random positive.
"""
import json
import os
import statistics
import time

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bench import CHUNK, Mount, mountpoint, read_range, size_label, summary, timed
from cases_extra import NAN, spread

BF16 = ml_dtypes.bfloat16
F8 = ml_dtypes.float8_e4m3fn
GROUP = 128
DEQ = ("-o", "dequantize=BF16")
HIDDEN, INTER, KV = 2048, 5632, 512


# The models ------------------------------------------------------------------------------------

def layer_shapes(target):
    """(module path, N, K) of each linear layer: whole blocks, about `target` bytes of BF16."""
    block = [("self_attn.q_proj", HIDDEN, HIDDEN), ("self_attn.k_proj", KV, HIDDEN),
             ("self_attn.v_proj", KV, HIDDEN), ("self_attn.o_proj", HIDDEN, HIDDEN),
             ("mlp.gate_proj", INTER, HIDDEN), ("mlp.up_proj", INTER, HIDDEN), ("mlp.down_proj", HIDDEN, INTER)]
    per = sum(2 * n * k for _, n, k in block)
    blocks = max(1, round(target / per))
    return [(f"model.layers.{b}.{m}", n, k) for b in range(blocks) for m, n, k in block]


def gptq_parts(rng, n, k):
    u32 = lambda shape: rng.integers(0, 1 << 32, shape, dtype=np.uint32).view(np.int32)
    return {"qweight": u32((k // 8, n)), "qzeros": u32((k // GROUP, n // 8)),
            "scales": rng.uniform(1e-3, 2e-2, (k // GROUP, n)).astype(np.float16),
            "g_idx": (np.arange(k) // GROUP).astype(np.int32)}


def e4m3_bits(rng, shape, lo=0, hi=256):
    """Random E4M3 codes in [lo, hi), without the NaNs 0x7F and 0xFF."""
    b = rng.integers(lo, hi, shape, dtype=np.uint8)
    b[(b & 0x7F) == 0x7F] ^= 1
    return b.view(F8)


def fp8_parts(rng, n, k):
    return {"weight": e4m3_bits(rng, (n, k)),
            "weight_scale_inv": rng.uniform(1e-4, 1e-2, (-(-n // 128), -(-k // 128))).astype(np.float32)}


def nvfp4_parts(rng, n, k):
    return {"weight_packed": rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
            "weight_scale": e4m3_bits(rng, (n, k // 16), 0x08, 0x7F),  # positive, normal
            "weight_global_scale": np.array([rng.uniform(50, 500)], dtype=np.float32)}


CONFIGS = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False, "sym": False,
             "checkpoint_format": "gptq", "pack_dtype": "int32"},
    "fp8": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
    "nvfp4": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
              "quantization_status": "compressed", "version": "0.12.2", "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
                                            "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                                                        "strategy": "tensor_group", "group_size": 16,
                                                        "dynamic": False, "observer": "minmax"},
                                            "input_activations": None}}},
}
PARTS = {"gptq": gptq_parts, "fp8": fp8_parts, "nvfp4": nvfp4_parts}


def quant_model(args, work, fmt):
    """work/quant-FMT/{model.safetensors,config.json}, written once per run; returns the file,
    the layers and the BF16 output size, with the file warm."""
    d = work / f"quant-{fmt}"
    model = d / "model.safetensors"
    layers = layer_shapes(args.tensor_bytes // 2)
    if not model.exists():
        d.mkdir(exist_ok=True)
        rng = np.random.default_rng(7)
        tensors = {f"{p}.{name}": t for p, n, k in layers for name, t in PARTS[fmt](rng, n, k).items()}
        save_file(tensors, str(model), metadata={"format": "pt"})
        del tensors
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
                  "intermediate_size": INTER, "num_hidden_layers": len(layers) // 7,
                  "quantization_config": CONFIGS[fmt]}
        (d / "config.json").write_text(json.dumps(config, indent=2))
    warm(model)
    return model, layers, sum(2 * n * k for _, n, k in layers)


def warm(model):
    read_range(model, 0, model.stat().st_size, bytearray(CHUNK))


# A: NumPy --------------------------------------------------------------------------------------

class Packed:
    """A layer's packed tensors from the file: safe_open, or for F8_E4M3 (which the NumPy
    backend of safetensors cannot load) np.fromfile at the header's offset."""

    def __init__(self, model):
        self.model = str(model)
        with open(model, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.header = json.loads(f.read(n))
        self.base = 8 + n

    def __enter__(self):
        self.f = safe_open(self.model, framework="np")
        self.f.__enter__()
        return self

    def __exit__(self, *exc):
        self.f.__exit__(*exc)

    def get(self, name):
        h = self.header[name]
        if h["dtype"] != "F8_E4M3":
            return self.f.get_tensor(name)
        begin, end = h["data_offsets"]
        return np.fromfile(self.model, dtype=np.uint8, count=end - begin,
                           offset=self.base + begin).view(F8).reshape(h["shape"])


SHIFTS = np.arange(0, 32, 4, dtype=np.uint32)
E4M3 = np.arange(256, dtype=np.uint8).view(F8).astype(np.float32)  # code -> F32
E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
E2M1_PAIR = np.stack([E2M1[np.arange(256) & 15], E2M1[np.arange(256) >> 4]], axis=1)  # byte -> (even, odd)


def dequant_gptq(p, prefix):
    qweight, qzeros = p.get(prefix + ".qweight").view(np.uint32), p.get(prefix + ".qzeros").view(np.uint32)
    scales, g_idx = p.get(prefix + ".scales").astype(np.float32), p.get(prefix + ".g_idx")
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    q = ((qweight[:, None, :] >> SHIFTS[None, :, None]) & 15).astype(np.float32).reshape(k, n)
    z = ((((qzeros[:, :, None] >> SHIFTS) & 15) + 1) & 15).astype(np.float32).reshape(-1, n)  # v1: stored + 1
    groups = scales.shape[0]
    if k == groups * GROUP and np.array_equal(g_idx, np.arange(k) // GROUP):  # no act-order: per group
        w = ((q.reshape(groups, GROUP, n) - z[:, None, :]) * scales[:, None, :]).reshape(k, n)
    else:
        w = (q - z[g_idx]) * scales[g_idx]
    return w.T.astype(BF16, order="C")  # [N, K]


def dequant_fp8(p, prefix):
    w, s = p.get(prefix + ".weight").view(np.uint8), p.get(prefix + ".weight_scale_inv")
    n, k = w.shape
    f = E4M3[w]
    if n % 128 == 0 and k % 128 == 0:
        f = (f.reshape(n // 128, 128, k // 128, 128) * s[:, None, :, None]).reshape(n, k)
    else:
        f *= np.repeat(np.repeat(s, 128, 0), 128, 1)[:n, :k]
    return f.astype(BF16)


def dequant_nvfp4(p, prefix):
    packed, scale = p.get(prefix + ".weight_packed"), p.get(prefix + ".weight_scale").view(np.uint8)
    glob = p.get(prefix + ".weight_global_scale")
    n, k = packed.shape[0], packed.shape[1] * 2
    s = E4M3[scale] / glob[0]  # F32 / F32, the reference's order: e2m1 * (s / global)
    w = E2M1_PAIR[packed].reshape(n, k // 16, 16) * s[:, :, None]
    return w.reshape(n, k).astype(BF16)


DEQUANT = {"gptq": dequant_gptq, "fp8": dequant_fp8, "nvfp4": dequant_nvfp4}


def numpy_all(model, layers, fmt):
    """A: every layer read and dequantized in this process, each result dropped after it."""
    with Packed(model) as p:
        for prefix, _, _ in layers:
            DEQUANT[fmt](p, prefix)


def numpy_layer(model, fmt, prefix):
    with Packed(model) as p:
        return DEQUANT[fmt](p, prefix)


# B: the mount ----------------------------------------------------------------------------------

def dense_path(mnt, prefix, view=""):
    return mnt.joinpath(*prefix.split(".")) / f"weight{view}"


def read_all(mnt, layers, buf):
    for prefix, n, k in layers:
        read_range(dense_path(mnt, prefix), 0, 2 * n * k, buf)


def daemon_cpu_s(pid):
    """utime + stime of the daemon (all its threads), in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def rchar(pid):
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError(f"no rchar for {pid}")


def compare(expected, path, what):
    """'' when the file at path holds expected's bytes, else a loud description of the difference."""
    want, got = expected.tobytes(), path.read_bytes()
    if got == want:
        return ""
    if len(got) != len(want):
        dtype = os.getxattr(path, "user.safetensors.dtype").decode()
        return (f"MOUNT BYTES DIFFER from NumPy's for {what}: {len(got)} bytes of {dtype}, expected "
                f"{len(want)} of BF16")
    a = np.frombuffer(want, dtype=np.uint16)
    b = np.frombuffer(got, dtype=np.uint16)
    bad = np.flatnonzero(a != b)
    k = expected.shape[-1]
    i = int(bad[0])
    return (f"MOUNT BYTES DIFFER from NumPy's for {what}: {bad.size} of {a.size} BF16 values, first at "
            f"[{i // k}, {i % k}]: mount {b[i].view(BF16)} (0x{b[i]:04x}), NumPy {a[i].view(BF16)} (0x{a[i]:04x})")


def machine_note():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{os.cpu_count()} cores ({cpu}) shared by the daemon and the reader"


NAMES = {"gptq": "GPTQ 4-bit g128", "fp8": "FP8 E4M3 block 128×128", "nvfp4": "NVFP4 (compressed-tensors)"}


def quant_case(args, work, fmt):
    model, layers, out = quant_model(args, work, fmt)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    check = next(p for p, n, k in layers if n != k)  # a layer with N ≠ K: a transpose would show
    expected = numpy_layer(model, fmt, check)
    with Mount(args.bin, model, mnt, DEQ) as m:
        listed = {os.path.relpath(os.path.join(d, f), mnt) for d, _, fs in os.walk(mnt) for f in fs
                  if not f.startswith(".")}
        want = {os.path.relpath(dense_path(mnt, p), mnt) for p, _, _ in layers}
        problems = []
        if listed != want:
            problems.append(f"MOUNT LISTS {len(listed)} files, expected the {len(want)} dense weights"
                            f" (extra {sorted(listed - want)[:3]}, missing {sorted(want - listed)[:3]})")
        else:
            problems.append(compare(expected, dense_path(mnt, check), f"{check}.weight"))
        threads = daemon_threads(m.proc.pid)
    problems = [p for p in problems if p]
    del expected
    ta, tb, cpu = [], [], []
    for _ in range(args.pairs):
        warm(model)
        ta.append(timed(lambda: numpy_all(model, layers, fmt)))
        warm(model)  # again: this VM's page cache is reclaimed under us (kdamond), cheap when warm
        with Mount(args.bin, model, mnt, DEQ) as m:
            c0 = daemon_cpu_s(m.proc.pid)
            tb.append(timed(lambda: read_all(mnt, layers, buf)))
            cpu.append(daemon_cpu_s(m.proc.pid) - c0)
            threads = max(threads, daemon_threads(m.proc.pid))
    what = f"{NAMES[fmt]}: all {len(layers)} layers, {size_label(out)} of BF16 output"
    r = summary(f"{what}{' — ' + '; '.join(problems) if problems else ''}",
                "NumPy: safe_open + vectorised dequant to ml_dtypes BF16, one process",
                "the mount `-o dequantize=BF16`, fresh, 1 MiB reads of every `P/weight`", ta, tb, out, 2.0)
    r["also"] = ("mount bytes = NumPy's", not problems)
    gbs = out / statistics.median(tb) / 1e9
    r["note"] = (f"one layer's bytes {'DIFFER (see case)' if problems else 'equal NumPy'}'s; "
                 f"{machine_note()}")
    rate = {"case": f"{what}: the mount's rate", "a": "—", "b": "the mount `-o dequantize=BF16`",
            "a_gbs": NAN, "b_gbs": gbs, "median": gbs, "min": out / max(tb) / 1e9, "max": out / min(tb) / 1e9,
            "goal": 1.0, "goal_kind": "≥ GB/s", "noise_a": 0, "noise_b": spread(tb),
            "note": (f"{gbs:.2f} GB/s of output; daemon {threads} threads, {statistics.median(cpu):.2f} s CPU in "
                     f"{statistics.median(tb):.2f} s; {machine_note()}")}
    for p in problems:
        print(f"quant-{fmt}: {p}", flush=True)
    return [r, rate]


def case_quant_gptq(args, work):
    return quant_case(args, work, "gptq")


def case_quant_fp8(args, work):
    return quant_case(args, work, "fp8")


def case_quant_nvfp4(args, work):
    return quant_case(args, work, "nvfp4")


# The column slice ------------------------------------------------------------------------------

def slice_needs(n, k, a, b):
    """Packed bytes a GPTQ 4-bit [N, K] layer's `weight[:, a:b]` needs (a, b multiples of 8)."""
    g0, g1 = a // GROUP, -(-b // GROUP)
    return ((b - a) // 8 * n * 4            # qweight rows a/8 .. b/8, all N columns
            + (g1 - g0) * n * 2             # scales rows of those groups (F16)
            + (g1 - g0) * (n // 8) * 4      # qzeros rows of those groups
            + (b - a) * 4)                  # g_idx[a:b]


def case_quant_gptq_slice(args, work):
    model, layers, _ = quant_model(args, work, "gptq")
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    cols = lambda k: (3 * k // 8, 4 * k // 8)  # rank 3 of 8
    need = sum(slice_needs(n, k, *cols(k)) for _, n, k in layers)
    out = sum(2 * n * (cols(k)[1] - cols(k)[0]) for _, n, k in layers)
    check = next(p for p, n, k in layers if n != k)
    ck = next(k for p, n, k in layers if p == check)
    a, b = cols(ck)
    expected = np.ascontiguousarray(numpy_layer(model, "gptq", check)[:, a:b])
    ratios, times = [], []
    problem = ""
    for i in range(args.pairs):
        with Mount(args.bin, model, mnt, DEQ) as m:
            before = rchar(m.proc.pid)
            t = time.perf_counter()
            for prefix, n, k in layers:
                lo, hi = cols(k)
                path = dense_path(mnt, prefix, f"[:,{lo}:{hi}]")
                read_range(path, 0, path.stat().st_size, buf)  # its size, should it not be BF16's
            times.append(time.perf_counter() - t)
            ratios.append((rchar(m.proc.pid) - before) / need)
            if i == 0:  # outside the count: the bytes are right
                problem = compare(expected, dense_path(mnt, check, f"[:,{a}:{b}]"),
                                  f"{check}.weight[:,{a}:{b}]")
    if problem:
        print(f"quant-gptq-slice: {problem}", flush=True)
    med = statistics.median(ratios)
    name = (f"GPTQ 4-bit g128: `weight[:, a:b]`, rank 3 of 8 (b − a = K/8), of all {len(layers)} layers on a "
            f"fresh mount: bytes the daemon read / packed bytes the slices need")
    return [{"case": name + (f" — {problem}" if problem else ""), "a": "—",
             "b": "the mount `-o dequantize=BF16`", "a_gbs": NAN, "b_gbs": out / statistics.median(times) / 1e9,
             "median": med, "min": min(ratios), "max": max(ratios), "goal": 1.2, "goal_kind": "≤",
             "also": ("slice bytes = NumPy's", not problem), "noise_a": 0, "noise_b": spread(ratios),
             "note": (f"daemon rchar {med * need / 2**20:.1f} MiB (its read/pread calls, page cache hits and "
                      f"/dev/fuse requests included) for {need / 2**20:.1f} MiB needed; "
                      f"{size_label(out)} of BF16 output")}]


CASES = {"quant-gptq": case_quant_gptq, "quant-fp8": case_quant_fp8, "quant-nvfp4": case_quant_nvfp4,
         "quant-gptq-slice": case_quant_gptq_slice}
