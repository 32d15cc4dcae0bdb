"""The benchmark cases of issue #4, beside bench.py's: squashfuse, cold, random, numpy, walk,
rss, threads, ceiling.  Each returns table rows as bench.py's cases do; bench.py runs them.

Sizes follow bench.py's one knob (args.tensor_bytes: 2 GiB, 256 MiB with --quick;
args.header_count: 100k, 10k with --quick).  Every mount is fresh unless a row says "again".
"""
import glob
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from bench import (CHUNK, Mount, big_model, first_and_again, header_model, mountpoint, read_range,
                   size_label, summary, timed)

NAN = float("nan")


# Rows ------------------------------------------------------------------------------------------

def spread(ts):
    return (max(ts) - min(ts)) / statistics.median(ts) if len(ts) > 1 else 0.0


def time_row(case, a, b, ta, tb, goal, nbytes=0):
    """B's time over A's, lower is better, so the goal is a ceiling (as for the mount rows)."""
    ratios = [y / x for x, y in zip(ta, tb)]
    med = statistics.median
    gbs = lambda ts: nbytes / med(ts) / 1e9 if nbytes else NAN
    return {"case": case, "a": a, "b": b, "a_gbs": gbs(ta), "b_gbs": gbs(tb),
            "median": med(ratios), "min": min(ratios), "max": max(ratios), "goal": goal,
            "goal_kind": "≤", "noise_a": spread(ta), "noise_b": spread(tb),
            "note": f"time ratio; B {med(tb):.3f} s, A {med(ta):.3f} s"}


def value_row(case, b, values, goal, unit, note=""):
    """A figure of ours alone (seconds, MiB) against a ceiling, like the shard mount row."""
    m = statistics.median(values)
    text = f"{m:.3f} {unit}" if unit == "s" else f"{m:.1f} {unit}"
    if len(values) > 1:
        text += f" ({min(values):.3g}–{max(values):.3g})"
    return {"case": case, "a": "—", "b": b, "a_gbs": NAN, "b_gbs": NAN, "median": m,
            "min": min(values), "max": max(values), "goal": goal, "goal_kind": f"≤ {unit}",
            "noise_a": 0, "noise_b": spread(values), "note": text + note}


def skipped_row(case, why, goal, goal_kind="≥"):
    """Shown in the table and on stderr; never a missed goal."""
    return {"case": case, "skipped": why, "goal": goal, "goal_kind": goal_kind}


# Shared pieces ---------------------------------------------------------------------------------

def copy_range(src, offset, size, dst):
    """Exactly the bytes src[offset:offset+size] into a new file dst (sendfile works across
    filesystems, e.g. ext4 to tmpfs, where copy_file_range may not)."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        done = 0
        while done < size:
            n = os.sendfile(fo.fileno(), fi.fileno(), offset + done, min(size - done, 1 << 30))
            if n <= 0:
                raise IOError(f"short copy from {src}")
            done += n


def tensor_offsets(model):
    """Each tensor's absolute offset in the file, from its header."""
    with open(model, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def header_bytes(model):
    with open(model, "rb") as f:
        return int.from_bytes(f.read(8), "little")


# squashfuse ------------------------------------------------------------------------------------

def squash_image(model, offset, size, work):
    """An uncompressed squashfs image (no compression of inodes, data, fragments, xattrs)
    holding one file `w` with exactly the tensor's bytes; built once per run."""
    img = work / "w.squashfs"
    if img.exists():
        return img
    src = work / "squash-src"
    src.mkdir()
    try:
        copy_range(model, offset, size, src / "w")
        subprocess.run(["mksquashfs", str(src), str(img), "-noI", "-noD", "-noF", "-noX", "-no-xattrs",
                        "-noappend", "-quiet", "-no-progress", "-processors", "1"],
                       check=True, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(src)  # the source copy would only compete for the page cache
    return img


def case_squashfuse(args, work):
    """First read of the tensor through a fresh mount of ours and of squashfuse_ll (another FUSE
    filesystem serving the same bytes from one uncompressed image), both backing files warm."""
    size = args.tensor_bytes
    name = f"{size_label(size)} tensor, first read after a fresh mount, backing files warm: vs squashfuse"
    for tool, package in (("squashfuse_ll", "squashfuse"), ("mksquashfs", "squashfs-tools")):
        if not shutil.which(tool):
            return [skipped_row(name, f"{tool} not installed (apt-get install {package})", 1.2)]
    model, offset, size = big_model(args, work)
    img = squash_image(model, offset, size, work)
    mnt, smnt = mountpoint(work), mountpoint(work, "sqmnt")
    buf = bytearray(CHUNK)
    theirs, ours = [], []
    for _ in range(args.pairs):
        read_range(img, 0, img.stat().st_size, buf)  # both backing files warm (cheap when they are)
        read_range(model, offset, size, buf)
        with Mount(shutil.which("squashfuse_ll"), img, smnt):
            theirs.append(timed(lambda: read_range(smnt / "w", 0, size, buf)))
        with Mount(args.bin, model, mnt):
            ours.append(timed(lambda: read_range(mnt / "w", 0, size, buf)))
    return [summary(name, "squashfuse_ll, uncompressed image", "the mount", theirs, ours, size, 1.2)]


# cold ------------------------------------------------------------------------------------------

def drop_caches():
    os.sync()  # dirty pages cannot be dropped
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def case_cold(args, work):
    """First read with nothing in the page cache: through a fresh mount against pread of the
    same region of the backing file, caches dropped before each read."""
    size = args.tensor_bytes
    name = f"{size_label(size)} tensor, cold page cache (drop_caches before each read), first read after mount"
    if os.geteuid() != 0:
        return [skipped_row(name, "needs root to write /proc/sys/vm/drop_caches", 0.8)]
    model, offset, size = big_model(args, work)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    direct, ours = [], []
    for _ in range(args.pairs):
        drop_caches()
        direct.append(timed(lambda: read_range(model, offset, size, buf)))
        with Mount(args.bin, model, mnt):
            drop_caches()  # after mounting, so that the data is cold, not just the header
            ours.append(timed(lambda: read_range(mnt / "w", 0, size, buf)))
    return [summary(name, "cold pread of the backing file", "the mount", direct, ours, size, 0.8)]


# random ----------------------------------------------------------------------------------------

RANDOM_READS = 20_000
PAGE = 4096


def random_reads(path, base, offsets, buf):
    """One os.preadv per offset into the same buffer: the same Python loop for both sides, so
    its ~1 µs per call is in both times."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            if os.preadv(fd, [buf], base + off) != PAGE:
                raise IOError(f"short read at {off} of {path}")
    finally:
        os.close(fd)


def labelled(args, label):
    """A row's suffix naming the variant, where --variant asked for more than the defaults."""
    return f" {label}" if len(args.variants) > 1 else ""


def case_random(args, work):
    """20k random 4 KiB preads (seeded, 4 KiB-aligned within the tensor) on a fresh mount, and
    again on the same mount, against the same preads of the warm backing file."""
    model, offset, size = big_model(args, work)
    offsets = (np.random.default_rng(4).integers(0, size // PAGE, RANDOM_READS) * PAGE).tolist()
    mnt = mountpoint(work)
    buf = bytearray(PAGE)
    rows = []
    for label, options in args.variants:
        direct1, first, direct2, again = first_and_again(
            args, model, mnt, options, lambda: random_reads(model, offset, offsets, buf),
            lambda: random_reads(mnt / "w", 0, offsets, buf))
        what = f"20k random 4 KiB preads in a {size_label(size)} tensor"
        nbytes = RANDOM_READS * PAGE
        rows += [time_row(f"{what}, first touch after a fresh mount (backing warm){labelled(args, label)}",
                          "preads of the backing file", "the mount", direct1, first, 8, nbytes),
                 time_row(f"{what}, again on the same mount{labelled(args, label)}", "preads of the backing file",
                          "the mount", direct2, again, 1.1, nbytes)]
    return rows


# numpy -----------------------------------------------------------------------------------------

def numpy_spec(target):
    """~300 tensors shaped like a small decoder (3-D, 2-D and 1-D; F32, F16 and BF16 in turn),
    the hidden size chosen so that the whole is close to `target` bytes."""
    import ml_dtypes
    dtypes = (np.float32, np.float16, ml_dtypes.bfloat16)

    def spec(h):
        i, vocab, out = 11 * h // 4, 32000, []
        for layer in range(33):
            p = f"model.layers.{layer}."
            out += [(p + "self_attn.q_proj.weight", (h // 64, 64, h)), (p + "self_attn.k_proj.weight", (h // 4, h)),
                    (p + "self_attn.v_proj.weight", (h // 4, h)), (p + "self_attn.o_proj.weight", (h, h)),
                    (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                    (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                    (p + "post_attention_layernorm.weight", (h,))]
        out += [("model.embed_tokens.weight", (vocab, h)), ("lm_head.weight", (vocab, h)), ("model.norm.weight", (h,))]
        return [(n, s, dtypes[k % 3]) for k, (n, s) in enumerate(out)]

    nbytes = lambda sp: sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in sp)
    h = 64  # a multiple of 64: whole heads of 64
    while nbytes(spec(h + 64)) <= target:
        h += 64
    return spec(h)


def numpy_model(args, work):
    model = work / "numpy.safetensors"
    tensors = {n: np.full(s, k % 13 + 1, dtype=d) for k, (n, s, d) in enumerate(numpy_spec(args.tensor_bytes))}
    save_file(tensors, str(model))
    return model, len(tensors), sum(t.nbytes for t in tensors.values())


def load_through_mount(mnt):
    """What a user of the mount writes: walk it, dtype and shape from the xattrs, np.fromfile."""
    import ml_dtypes
    types = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
    out = {}
    for d, _, files in os.walk(mnt):
        for f in files:
            if f.startswith("."):  # the root's .control, .header.json, .metadata.json
                continue
            p = os.path.join(d, f)
            dtype = types[os.getxattr(p, "user.safetensors.dtype").decode()]
            shape = json.loads(os.getxattr(p, "user.safetensors.shape"))
            out[os.path.relpath(p, mnt).replace("/", ".")] = np.fromfile(p, dtype=dtype).reshape(shape)
    return out


def load_safe_open(model):
    with safe_open(str(model), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def timed_load(fn):
    """Time one whole load; freeing the arrays happens after the clock stops (on both sides)."""
    t = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t
    del out
    return took


def check_numpy(model, mnt):
    """Once, outside the clock: the mount gives every tensor exactly as load_file does."""
    reference = load_file(str(model))
    out = load_through_mount(mnt)
    assert out.keys() == reference.keys(), "the mount's tensors differ from load_file's"
    for k, v in reference.items():
        assert v.dtype == out[k].dtype and v.shape == out[k].shape and np.array_equal(v, out[k]), k


def case_numpy(args, work):
    """Every tensor of a ~2 GiB model into numpy: through the mount (first load on a fresh mount,
    then again) against safetensors.numpy.load_file and safe_open + get_tensor."""
    model, count, nbytes = numpy_model(args, work)
    read_range(model, 0, model.stat().st_size, bytearray(CHUNK))  # warm for every side
    mnt = mountpoint(work)
    with Mount(args.bin, model, mnt):
        check_numpy(model, mnt)
    lf, so, first, again = [], [], [], []
    for _ in range(args.pairs):
        lf.append(timed_load(lambda: load_file(str(model))))
        so.append(timed_load(lambda: load_safe_open(model)))
        with Mount(args.bin, model, mnt):
            first.append(timed_load(lambda: load_through_mount(mnt)))
            again.append(timed_load(lambda: load_through_mount(mnt)))
    what = f"numpy: all {count} tensors of a {size_label(nbytes)} model (F32/F16/BF16)"
    ours = "the mount (walk, xattrs, np.fromfile)"
    return [time_row(f"{what}, first load after a fresh mount", "load_file", ours, lf, first, None, nbytes),
            time_row(f"{what}, first load after a fresh mount", "safe_open + get_tensor", ours, so, first, None, nbytes),
            time_row(f"{what}, second load (same mount)", "load_file", ours, lf, again, 1.1, nbytes),
            time_row(f"{what}, second load (same mount)", "safe_open + get_tensor", ours, so, again, 1.1, nbytes)]


# walk and rss ----------------------------------------------------------------------------------

def walk(mnt, count):
    """`find MNT -type f`, then os.getxattr(user.safetensors.offset) of every file it printed;
    returns both times."""
    t = time.perf_counter()
    out = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, check=True).stdout
    t_find = time.perf_counter() - t
    paths = [p for p in out.decode().splitlines() if not os.path.basename(p).startswith(".")]
    if len(paths) < count:
        raise RuntimeError(f"find listed {len(paths)} tensors of {count}")
    t_xattr = timed(lambda: [os.getxattr(p, "user.safetensors.offset") for p in paths])
    return t_find, t_xattr


def case_walk(args, work):
    """A fresh mount of a 100k-tensor header each time: find, then a getxattr of every file."""
    count = args.header_count
    model = header_model(work, count)
    mnt = mountpoint(work)
    rows = []
    for label, options in args.variants:
        finds, xattrs = [], []
        for _ in range(args.pairs):
            with Mount(args.bin, model, mnt, options):
                f, x = walk(mnt, count)
            finds.append(f)
            xattrs.append(x)
        rows += [value_row(f"walk: `find -type f` of a fresh mount, {count} tensors{labelled(args, label)}",
                           "the mount", finds, 0.5, "s"),
                 value_row(f"walk: os.getxattr(user.safetensors.offset) of each of {count} files"
                           f"{labelled(args, label)}", "the mount", xattrs, 2.0, "s")]
    return rows


def vm_hwm_mib(pid):
    """The process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def case_rss(args, work):
    """The daemon's peak RSS after mounting and walking the 100k-tensor header, and what reading
    2 GiB through the same mount adds.  One folder holds both models (hard links), so one
    mount serves the header and the data.  One measurement: peaks do not need pairs."""
    count = args.header_count
    many = header_model(work, count)
    big, _, size = big_model(args, work)
    d = work / "rss"
    d.mkdir(exist_ok=True)
    for src in (many, big):
        if not (d / src.name).exists():
            os.link(src, d / src.name)
    hdr = sum(header_bytes(m) for m in (many, big))
    mnt = mountpoint(work)
    with Mount(args.bin, d, mnt) as m:
        walk(mnt, count)
        after_walk = vm_hwm_mib(m.proc.pid)
        read_range(mnt / "w", 0, size, bytearray(CHUNK))
        after_read = vm_hwm_mib(m.proc.pid)
    goal = round(2 * hdr / 2**20 + 16, 1)
    once = "; one measurement (no pairs)"
    return [value_row(f"daemon peak RSS (VmHWM) after mount + find + getxattr of {count} tensors", "the daemon",
                      [after_walk], goal, "MiB", f"; header {hdr / 2**20:.1f} MiB, goal 2× header + 16 MiB{once}"),
            value_row(f"daemon peak RSS added by then reading {size_label(size)} through that mount", "the daemon",
                      [after_read - after_walk], 2.0, "MiB", once)]


# threads ---------------------------------------------------------------------------------------

THREADS = (1, 2, 4, 8)


def threads_model(args, work):
    """Eight tensors of 256 MiB (an eighth of args.tensor_bytes each), one per reader thread."""
    each = args.tensor_bytes // 8
    model = work / "threads.safetensors"
    save_file({f"t{k}": np.full(each // 2, k + 1, dtype=np.float16) for k in range(8)}, str(model))
    read_range(model, 0, model.stat().st_size, bytearray(CHUNK))
    return model, tensor_offsets(model), each


def parallel_read(jobs, size):
    """len(jobs) threads, each reading `size` bytes of (path, offset) with its own 1 MiB buffer;
    readinto releases the GIL, so the reads overlap.  Returns the wall time of all of them."""
    start, errors = threading.Barrier(len(jobs) + 1), []

    def reader(path, offset):
        buf = bytearray(CHUNK)
        start.wait()
        try:
            read_range(path, offset, size, buf)
        except Exception as e:  # noqa: BLE001 -- re-raised in the main thread
            errors.append(e)
    threads = [threading.Thread(target=reader, args=job) for job in jobs]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return took


def case_threads(args, work):
    """n threads, each reading a different tensor: aggregate GB/s through a fresh mount (first
    read) and on the same mount again, against the same reads of the backing file."""
    model, offsets, each = threads_model(args, work)
    mnt = mountpoint(work)
    rows = []
    for label, options in args.variants:
        for n in THREADS:
            direct = [(model, offsets[f"t{k}"]) for k in range(n)]
            ours = [(mnt / f"t{k}", 0) for k in range(n)]
            d1, first, d2, again = first_and_again(
                args, model, mnt, options, lambda: parallel_read(direct, each),
                lambda: parallel_read(ours, each), clock=lambda read: read())
            what = (f"{n} threads, each reading its own {size_label(each)} tensor" if n > 1
                    else f"1 thread reading one {size_label(each)} tensor")
            rows.append(summary(f"{what}, first read after a fresh mount{labelled(args, label)}",
                                "pread of the backing file", "the mount", d1, first, n * each, 0.45))
            rows.append(summary(f"{what}, re-read (same mount){labelled(args, label)}", "pread of the backing file",
                                "the mount", d2, again, n * each, 0.9))
    return rows


# ceiling ---------------------------------------------------------------------------------------

def shmem_pages():
    """Whether tmpfs caches in 4 KiB pages: THP for shmem off at the top level and at every
    size (a per-size "inherit" follows the top level).  Returns (ok, what the settings are)."""
    base = "/sys/kernel/mm/transparent_hugepage"
    chosen = lambda f: Path(f).read_text().split("[")[1].split("]")[0]
    top = chosen(f"{base}/shmem_enabled")
    sizes = {Path(f).parent.name: chosen(f) for f in glob.glob(f"{base}/hugepages-*/shmem_enabled")}
    on = [f"{k}={v}" for k, v in sizes.items() if v not in ("never", "inherit")]
    return top in ("never", "deny") and not on, f"shmem_enabled {top}" + (f", {', '.join(on)}" if on else "")


def case_ceiling(args, work):
    """Context for the re-read goal: re-reading the tensor's bytes from a tmpfs file (its page
    cache holds 4 KiB pages, as FUSE's does) against pread of the backing file (ext4, large
    folios): the kernel's own ceiling for any 4 KiB-page page cache.  Reported, no goal."""
    size = args.tensor_bytes
    name = f"ceiling: re-read of the {size_label(size)} tensor's bytes from /dev/shm (tmpfs, 4 KiB pages)"
    small, settings = shmem_pages()
    if shutil.disk_usage("/dev/shm").free < size + (256 << 20):
        return [skipped_row(name, "not enough room in /dev/shm", 0)]
    model, offset, size = big_model(args, work)
    buf = bytearray(CHUNK)
    fd, shm = tempfile.mkstemp(dir="/dev/shm", prefix="safetensorsfs-bench-")
    os.close(fd)
    try:
        copy_range(model, offset, size, shm)
        direct, tmpfs = [], []
        for _ in range(args.pairs):
            direct.append(timed(lambda: read_range(model, offset, size, buf)))
            tmpfs.append(timed(lambda: read_range(shm, 0, size, buf)))
    finally:
        os.unlink(shm)
    r = summary(name, "pread of the backing file (ext4)", "read of the /dev/shm copy", direct, tmpfs, size, 0)
    r["note"] = settings + ("" if small else ": NOT 4 KiB pages, so not the ceiling it is meant to be")
    return [r]


CASES = {"squashfuse": case_squashfuse, "cold": case_cold, "random": case_random, "numpy": case_numpy,
         "walk": case_walk, "rss": case_rss, "threads": case_threads, "ceiling": case_ceiling}
