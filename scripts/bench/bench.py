"""Side-by-side benchmarks: each case times two ways of doing the same work,
alternately, in one run, and reports the ratio's median, min and max.

Files are written by the official safetensors library.  Results go to stdout
and, with --write, into docs/BENCHMARKS.md between the generated-section
markers, with the command, the machine and the noise.
"""
import argparse
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
                raise RuntimeError(f"mount failed: {self.proc.stderr.read().decode()}")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc):
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
        self.proc.wait(timeout=10)


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


def pairs(n, first, second):
    """Alternate the two ways n times; returns both time lists."""
    a, b = [], []
    for _ in range(n):
        a.append(first())
        b.append(second())
    return a, b


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
    size = args.gib << 30
    model = work / "big.safetensors"
    if not model.exists():
        save_file({"w": np.ones(size // 2, dtype=np.float16)}, str(model))
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    offset = 8 + int.from_bytes(model.open("rb").read(8), "little")
    buf = bytearray(CHUNK)
    read_range(model, offset, size, buf)  # warm the backing file's page cache
    results = []
    for label, options in args.variants:
        first, again, direct1, direct2 = [], [], [], []
        for _ in range(args.pairs):
            direct1.append(timed(lambda: read_range(model, offset, size, buf)))
            with Mount(args.bin, model, mnt, options):
                first.append(timed(lambda: read_range(mnt / "w", 0, size, buf)))
                direct2.append(timed(lambda: read_range(model, offset, size, buf)))
                again.append(timed(lambda: read_range(mnt / "w", 0, size, buf)))
        results.append(summary(f"{args.gib} GiB tensor, warm backing file, first read after mount {label}",
                               "pread of the backing file", "the mount", direct1, first, size, 0.45))
        results.append(summary(f"{args.gib} GiB tensor, re-read (FUSE page cache) {label}",
                               "pread of the backing file", "the mount", direct2, again, size, 0.9))
    return results


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), kernel {platform.release()}"


def table(results):
    lines = ["| case | A | B | A GB/s | B GB/s | B/A median (min–max) | goal | noise A / B |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['case']} | {r['a']} | {r['b']} | {r['a_gbs']:.2f} | {r['b_gbs']:.2f} | "
                     f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}) | ≥ {r['goal']}× | "
                     f"{r['noise_a']:.0%} / {r['noise_b']:.0%} |")
    return "\n".join(lines)


def write_doc(text):
    doc = ROOT / "docs" / "BENCHMARKS.md"
    body = doc.read_text()
    start, end = body.index(MARK_BEGIN) + len(MARK_BEGIN), body.index(MARK_END)
    doc.write_text(body[:start] + "\n" + text + "\n" + body[end:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--gib", type=int, default=2)
    p.add_argument("--work", default=None, help="where the model files go (default: a temporary folder)")
    p.add_argument("--variant", action="append", default=[],
                   help="LABEL=OPTIONS: also measure the mount with these -o options")
    p.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    args = p.parse_args()
    args.variants = [("(defaults)", ())] + [
        (f"(-o {v.split('=', 1)[1]})", ("-o", v.split("=", 1)[1])) for v in args.variant]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = case_sequential_warm(args, Path(tmp))
    cmd = "make bench" if not args.variant else "scripts/bench/run.sh build/safetensorsfs " + " ".join(
        f"--variant {v}" for v in args.variant)
    text = (f"Command: `{cmd}` ({args.pairs} alternating pairs per case; ratios are B's throughput over A's)\n\n"
            f"Machine: {machine()}; run as {'root' if os.geteuid() == 0 else 'a user'}; "
            f"{time.strftime('%Y-%m-%d')}.\n\n" + table(results))
    print(text)
    if args.write:
        write_doc(text)
    missed = [r for r in results if r["median"] < r["goal"]]
    for r in missed:
        print(f"goal missed: {r['case']}: {r['median']:.2f}× < {r['goal']}×", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
