"""make stress: many readers (threads and processes) over random tensors, offsets,
lengths and mmap, every byte checked against the backing file read directly.

Fails (exit 1) on any mismatch or error, on anything the daemon prints, and when
the daemon's RSS grows by more than --rss-slack-mib after the first second.
"""
import argparse
import json
import mmap
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def make_model(path, count, max_bytes, seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(count):
        n = int(rng.integers(0, max_bytes))
        tensors[f"layers.{i % 7}.t{i}"] = rng.integers(0, 256, n, dtype=np.uint8)
    save_file(tensors, str(path))


def tensor_table(model, mnt):
    """(mount path, absolute offset, size) per tensor, from the mount's own xattrs."""
    rows = []
    with safe_open(str(model), "np") as f:
        names = list(f.keys())
    for name in names:
        p = os.path.join(mnt, *name.split("."))
        rows.append((p, int(os.getxattr(p, "user.safetensors.offset")), os.stat(p).st_size))
    return rows


def one_op(rng, rows, backing_fd):
    path, offset, size = rows[rng.randrange(len(rows))]
    kind = rng.choice(("pread", "read", "mmap"))
    start = rng.randrange(size + 1) if size else 0
    length = rng.randrange(0, min(size - start, 4 << 20) + 1) if size else 0
    expect = os.pread(backing_fd, length, offset + start)
    fd = os.open(path, os.O_RDONLY)
    try:
        if kind == "pread":
            got = os.pread(fd, length, start)
        elif kind == "read":
            os.lseek(fd, start, os.SEEK_SET)
            got = b""
            while len(got) < length:
                chunk = os.read(fd, min(length - len(got), rng.choice((4096, 65536, 1 << 20))))
                if not chunk:
                    break
                got += chunk
        else:
            if size == 0:
                return kind, True
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
                got = m[start:start + length]
    finally:
        os.close(fd)
    return kind, got == expect


def worker(seed, rows, backing, deadline, out):
    rng = random.Random(seed)
    fd = os.open(backing, os.O_RDONLY)
    ops = bad = errors = 0
    try:
        while time.monotonic() < deadline:
            try:
                _, ok = one_op(rng, rows, fd)
                ops += 1
                bad += not ok
            except OSError:
                errors += 1
    finally:
        os.close(fd)
    out.put((ops, bad, errors))


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(args, work):
    model, mnt = work / "stress.safetensors", work / "mnt"
    mnt.mkdir()
    make_model(model, args.tensors, args.max_tensor_bytes, args.seed)
    err = open(work / "daemon.err", "w+")
    daemon = subprocess.Popen([args.bin, "-f", str(model), str(mnt)], stderr=err)
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("stress: the mount did not come up")
            time.sleep(0.01)
        rows = tensor_table(model, str(mnt))
        out = mp.Queue()
        deadline = time.monotonic() + args.seconds
        procs = [mp.Process(target=worker, args=(args.seed + i, rows, str(model), deadline, out))
                 for i in range(args.procs)]
        threads = [threading.Thread(target=worker, args=(args.seed + 1000 + i, rows, str(model), deadline, out))
                   for i in range(args.threads)]
        for w in procs + threads:
            w.start()
        rss = []
        while time.monotonic() < deadline:
            rss.append(rss_kib(daemon.pid))
            time.sleep(0.25)
        results = [out.get(timeout=args.seconds + 60) for _ in procs + threads]
        for w in procs + threads:
            w.join()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)])
        daemon.wait(timeout=30)
    err.seek(0)
    daemon_output = err.read()
    settled = rss[min(4, len(rss) - 1):] or rss
    growth_mib = (max(settled) - settled[0]) / 1024 if settled else 0
    summary = {
        "readers": args.procs + args.threads, "seconds": args.seconds,
        "ops": sum(r[0] for r in results), "mismatches": sum(r[1] for r in results),
        "errors": sum(r[2] for r in results), "daemon_exit": daemon.returncode,
        "daemon_output": daemon_output, "rss_mib_first": settled[0] / 1024 if settled else 0,
        "rss_mib_max": max(settled) / 1024 if settled else 0, "rss_growth_mib": growth_mib,
    }
    print(json.dumps(summary, indent=1))
    ok = (summary["mismatches"] == 0 and summary["errors"] == 0 and summary["daemon_exit"] == 0
          and not daemon_output and growth_mib <= args.rss_slack_mib and summary["ops"] > 0)
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=str(Path(__file__).resolve().parents[1] / "build" / "safetensorsfs"))
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--procs", type=int, default=16)
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--max-tensor-bytes", type=int, default=4 << 20)
    p.add_argument("--rss-slack-mib", type=float, default=16)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    mp.set_start_method("fork")
    sys.exit(main())
