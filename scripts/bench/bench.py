"""Side-by-side benchmarks: each case times two ways of doing the same work,
alternately, in one run, and reports the ratio's median, min and max.

Files are written by the official safetensors library.  Results go to stdout
and, with --write, into docs/BENCHMARKS.md between the generated-section
markers, with the command, the machine and the noise.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

CHUNK = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"


class Mount:
    def __init__(self, binary, source, mnt, options=()):
        self.cmd = [binary, "-f", *options, str(source), str(mnt)]
        self.mnt = mnt

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()  # a daemon that hangs before mounting must not outlive the run
                self.proc.wait()
                raise RuntimeError(f"mount of {self.cmd[-2]} failed: {self.proc.stderr.read().decode()}")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc):
        for _ in range(50):  # right after mounting, the kernel may still call it busy
            if subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:  # still busy after 5 s: detach it, so no mount outlives the run
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def read_range(path, offset, length, buf):
    """Sequential 1 MiB readinto: the same code for the mount and the backing file."""
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        left = length
        while left:
            n = f.readinto(view[: min(CHUNK, left)])
            if n <= 0:
                raise IOError(f"short read at {length - left}")
            left -= n


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def size_label(n):
    if n >= 1 << 30:
        return f"{n / (1 << 30):.3g} GiB"
    return f"{n >> 20} MiB"


def big_model(args, work):
    """The one-tensor model (tensor `w`, args.tensor_bytes) that several cases read, written once
    per run. Returns the file, the tensor's offset in it and its size, with the file warm."""
    size = args.tensor_bytes
    model = work / "big.safetensors"
    if not model.exists():
        save_file({"w": np.ones(size // 2, dtype=np.float16)}, str(model))
    with model.open("rb") as f:
        offset = 8 + int.from_bytes(f.read(8), "little")
    read_range(model, offset, size, bytearray(CHUNK))
    return model, offset, size


def mountpoint(work, name="mnt"):
    mnt = work / name
    mnt.mkdir(exist_ok=True)
    return mnt


def pairs(n, first, second):
    """Alternate the two ways n times; returns both time lists."""
    a, b = [], []
    for _ in range(n):
        a.append(first())
        b.append(second())
    return a, b


def first_and_again(args, model, mnt, options, direct, ours, clock=None):
    """args.pairs times: the backing file, then a fresh mount, the backing file and the same
    mount again; returns the four time lists (direct, first, direct, again).  clock(fn) is the
    time fn takes (default: timed; a reader that times itself passes its own)."""
    clock = clock or timed
    direct1, first, direct2, again = [], [], [], []
    for _ in range(args.pairs):
        direct1.append(clock(direct))
        with Mount(args.bin, model, mnt, options):
            first.append(clock(ours))
            direct2.append(clock(direct))
            again.append(clock(ours))
    return direct1, first, direct2, again


def summary(name, label_a, label_b, ta, tb, nbytes, goal):
    ratios = [x / y for x, y in zip(ta, tb)]  # B's throughput over A's
    med = statistics.median(ratios)
    gbs = lambda ts: nbytes / statistics.median(ts) / 1e9
    return {
        "case": name, "a": label_a, "b": label_b,
        "a_gbs": gbs(ta), "b_gbs": gbs(tb),
        "median": med, "min": min(ratios), "max": max(ratios), "goal": goal,
        "noise_a": (max(ta) - min(ta)) / statistics.median(ta),
        "noise_b": (max(tb) - min(tb)) / statistics.median(tb),
    }


def case_sequential_warm(args, work):
    """A 2 GiB tensor: first read through a fresh mount, and a re-read, against pread of the backing file."""
    model, offset, size = big_model(args, work)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    results = []
    for label, options in args.variants:
        direct1, first, direct2, again = first_and_again(
            args, model, mnt, options, lambda: read_range(model, offset, size, buf),
            lambda: read_range(mnt / "w", 0, size, buf))
        results.append(summary(f"{size_label(size)} tensor, warm backing file, first read after mount {label}",
                               "pread of the backing file", "the mount", direct1, first, size, 0.45))
        results.append(summary(f"{size_label(size)} tensor, re-read (FUSE page cache) {label}",
                               "pread of the backing file", "the mount", direct2, again, size, 0.9))
    return results


def mount_seconds(binary, source, mnt):
    """From exec until the mountpoint answers a stat of the root."""
    t = time.perf_counter()
    with Mount(binary, source, mnt):
        took = time.perf_counter() - t
    return took


def header_model(work, count):
    """A `count`-tensor model in work/h{count}/, written once per run (several cases mount it)."""
    d = work / f"h{count}"
    d.mkdir(exist_ok=True)
    model = d / "model.safetensors"
    return model if model.exists() else many_tensor_model(model, count)


def many_tensor_model(path, count, shards=1):
    """`count` small tensors with real-looking names, split over `shards` files (with an index)."""
    names = [f"model.layers.{i // 64}.experts.{i % 64}.w{i % 3}" for i in range(count)]
    per = -(-count // shards)
    weight_map = {}
    for s in range(shards):
        part = {n: np.zeros(4, dtype=np.float16) for n in names[s * per:(s + 1) * per]}
        if not part:
            continue
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else path.name
        target = path.parent / fname
        save_file(part, str(target))
        weight_map.update({n: fname for n in part})
    if shards > 1:
        index = path.parent / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": 8 * count}, "weight_map": weight_map}))
        return index
    return path


def case_mount_time(args, work):
    """Mount until the mountpoint answers, against safe_open(...).keys() on the same file."""
    from safetensors import safe_open
    results = []
    mnt = mountpoint(work)
    counts = ((10_000, None),) if args.quick else ((10_000, None), (100_000, 1.5), (300_000, None))
    for count, goal in counts:
        model = header_model(work, count)

        def keys():
            with safe_open(str(model), "np") as f:
                f.keys()
        ta, tb = pairs(args.pairs, lambda: timed(keys), lambda: mount_seconds(args.bin, model, mnt))
        r = summary(f"mount, header of {count} tensors", "safe_open().keys()", "mount until it answers",
                    ta, tb, 0, goal if goal else 0)
        r["a_s"], r["b_s"] = statistics.median(ta), statistics.median(tb)
        r["note"] = f"time ratio; mount {r['b_s']:.3f} s, safe_open {r['a_s']:.3f} s"
        # the goal is a time ratio (mount ≤ 1.5× safe_open) and 100k ≤ 0.3 s
        r["median"], r["min"], r["max"] = [1 / x for x in (r["median"], r["max"], r["min"])]
        r["goal_kind"] = "≤"
        if count == 100_000:
            r["also"] = ("≤ 0.3 s", r["b_s"] <= 0.3)
        results.append(r)
    d = work / "sharded"
    d.mkdir(exist_ok=True)
    index = many_tensor_model(d / "model.safetensors", 10_000, shards=100)
    tb = [mount_seconds(args.bin, index, mnt) for _ in range(args.pairs)]
    results.append({"case": "mount, 100 shards, 10k tensors (index)", "a": "—", "b": "mount until it answers",
                    "a_gbs": float("nan"), "b_gbs": float("nan"), "median": statistics.median(tb),
                    "min": min(tb), "max": max(tb), "goal": 0.5, "goal_kind": "≤ s",
                    "noise_a": 0, "noise_b": (max(tb) - min(tb)) / statistics.median(tb),
                    "note": f"{statistics.median(tb):.3f} s"})
    return results


def case_views(args, work):
    """Views: BF16 -> F32 through the mount (GB/s of output), and rank 3 of 8's column block
    of a 1 GiB BF16 matrix against safe_open(...).get_slice(...)[:, a:b]."""
    import ml_dtypes
    from safetensors import safe_open
    rows, cols = (4096 if args.quick else 16384), 32768  # 1 GiB of BF16 (256 MiB with --quick)
    model = work / "views.safetensors"
    save_file({"w": np.ones((rows, cols), dtype=ml_dtypes.bfloat16)}, str(model))
    mnt = mountpoint(work)
    a, b = 3 * cols // 8, 4 * cols // 8
    buf = bytearray(CHUNK)
    results = []
    read_range(model, 0, model.stat().st_size, buf)  # the backing file warm for both sides

    def first_read(fn):
        """Each measurement on a fresh mount: the mount's own page cache starts empty."""
        with Mount(args.bin, model, mnt):
            return timed(fn)

    conv = [first_read(lambda: read_range(mnt / "w@F32", 0, rows * cols * 4, buf)) for _ in range(args.pairs)]

    def theirs():
        with safe_open(str(model), "np") as f:
            f.get_slice("w")[:, a:b]
    t_theirs, t_ours = pairs(args.pairs, lambda: timed(theirs),
                             lambda: first_read(lambda: np.fromfile(mnt / f"w[:,{a}:{b}]", dtype=np.uint16)))
    out = rows * cols * 4
    results.append({"case": f"{size_label(rows * cols * 2)} BF16 tensor read as `w@F32` through the mount", "a": "—",
                    "b": "the mount", "a_gbs": float("nan"), "b_gbs": out / statistics.median(conv) / 1e9,
                    "median": out / statistics.median(conv) / 1e9, "min": out / max(conv) / 1e9,
                    "max": out / min(conv) / 1e9, "goal": 1.0, "goal_kind": "≥ GB/s",
                    "noise_a": 0, "noise_b": (max(conv) - min(conv)) / statistics.median(conv),
                    "note": f"{out / statistics.median(conv) / 1e9:.2f} GB/s of output"})
    results.append(summary(f"rank 3 of 8 column block of a {size_label(rows * cols * 2)} BF16 matrix",
                           "safe_open get_slice[:, a:b]",
                           "the mount `w[:,a:b]`", t_theirs, t_ours, rows * (b - a) * 2, 1.0))
    return results


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), kernel {platform.release()}"


def goal_parts(r):
    """goal_kind "≥" or "≤" compares the row's ratio (×); "≤ s" or "≤ MiB" its value in that unit."""
    comparison, _, unit = r.get("goal_kind", "≥").partition(" ")
    return comparison, unit


def goal_text(r):
    comparison, unit = goal_parts(r)
    text = f"{comparison} {r['goal']:g} {unit}" if unit else f"{comparison} {r['goal']:g}×"
    if "also" in r:
        text += f", {r['also'][0]}"
    return text


def missed(r):
    """A row misses when its median is on the wrong side of its goal; no goal (reported) or a
    skipped row never misses."""
    if not r["goal"] or r.get("skipped"):
        return False
    comparison, _ = goal_parts(r)
    bad = r["median"] < r["goal"] if comparison == "≥" else r["median"] > r["goal"]
    return bad or ("also" in r and not r["also"][1])


def shown(r):
    if r.get("skipped"):
        return f"**skipped: {r['skipped']}**"
    ratio = f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"
    if "note" not in r:
        return ratio
    return r["note"] if goal_parts(r)[1] else f"{ratio}; {r['note']}"  # unit rows: the value is the note


def table(results):
    lines = ["| case | A | B | A GB/s | B GB/s | B/A median (min–max) | goal | noise A / B |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    gbs = lambda v: "—" if v != v or v == 0 else f"{v:.2f}"
    for r in results:
        noise = "—" if r.get("skipped") else f"{r['noise_a']:.0%} / {r['noise_b']:.0%}"
        lines.append(f"| {r['case']} | {r.get('a', '—')} | {r.get('b', '—')} | {gbs(r.get('a_gbs', 0))} | "
                     f"{gbs(r.get('b_gbs', 0))} | {shown(r)} | {goal_text(r) if r['goal'] else 'reported'} | "
                     f"{noise} |")
    return "\n".join(lines)


def write_doc(text):
    doc = ROOT / "docs" / "BENCHMARKS.md"
    body = doc.read_text()
    start, end = body.index(MARK_BEGIN) + len(MARK_BEGIN), body.index(MARK_END)
    doc.write_text(body[:start] + "\n" + text + "\n" + body[end:])


def command_line():
    """How to repeat this run: `make bench`, or run.sh with the options given."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a == "--write" or a.startswith("--bin="):
            skip = False
            continue
        if a == "--bin":
            skip = True
            continue
        argv.append(a)
    return "make bench" if not argv else "scripts/bench/run.sh build/safetensorsfs " + " ".join(argv)


def sizes(args):
    """One knob for every case's data: --gib (the 2 GiB tensor), or --quick (256 MiB, 10k tensors)."""
    args.tensor_bytes = (256 << 20) if args.quick else args.gib << 30
    args.header_count = 10_000 if args.quick else 100_000
    args.pairs = args.pairs or (2 if args.quick else 5)


def main():
    # cases_extra imports its helpers from this module: let it find this copy rather than load a second
    sys.modules.setdefault("bench", sys.modules[__name__])
    import cases_extra
    import cases_remote
    import cases_quant
    cases = {"sequential": case_sequential_warm, "mount": case_mount_time, "views": case_views,
             **cases_extra.CASES, **cases_remote.CASES, **cases_quant.CASES}
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--pairs", type=int, default=None, help="alternating pairs per case (default 5; 2 with --quick)")
    p.add_argument("--gib", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="check that every case runs: 256 MiB tensors, 10k-tensor headers, 2 pairs")
    p.add_argument("--work", default=None, help="where the model files go (default: a temporary folder)")
    p.add_argument("--variant", action="append", default=[],
                   help="LABEL=OPTIONS: also measure the mount with these -o options")
    p.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    p.add_argument("--case", action="append", choices=list(cases), help="run only these cases")
    args = p.parse_args()
    sizes(args)
    args.variants = [("(defaults)", ())] + [
        (f"(-o {v.split('=', 1)[1]})", ("-o", v.split("=", 1)[1])) for v in args.variant]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = []
        for name in args.case or list(cases):
            results += cases[name](args, Path(tmp))
    text = (f"Command: `{command_line()}` ({args.pairs} alternating pairs per case unless a row says otherwise; "
            f"ratios are B's throughput over A's, except rows marked \"time ratio\": B's time over A's, "
            f"lower is better)\n\n"
            f"Machine: {machine()}; run as {'root' if os.geteuid() == 0 else 'a user'}; "
            f"{time.strftime('%Y-%m-%d')}.\n\n" + table(results))
    print(text)
    if args.write:
        write_doc(text)
    for r in results:
        if r.get("skipped"):
            print(f"skipped: {r['case']}: {r['skipped']}", file=sys.stderr)
    misses = [r for r in results if missed(r)]
    for r in misses:
        print(f"goal missed: {r['case']}: {r['median']:.3g} against {goal_text(r)}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
