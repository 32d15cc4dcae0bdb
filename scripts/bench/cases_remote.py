"""The remote-source cases, beside bench.py's: the mount reading over HTTP from nginx on
loopback.  Each returns table rows as bench.py's cases do; bench.py runs them.

    remote-mount   mount of an args.header_count-tensor file over HTTP vs curl of its header
    remote-shards  mount of a 100-shard index over HTTP: time, and requests per shard
    remote-cold    cold sequential read of a tensor (args.tensor_bytes, at most 1 GiB) through
                   a fresh mount vs curl of the same range (one stream, and 8 ranges in parallel)
    remote-random  random 4 KiB reads with -o block_size=65536: bytes nginx sent / bytes asked
    remote-http-fsspec  fsspec's HTTPFileSystem reading the tensor vs the mount (needs
                   huggingface_hub and fsspec in .venv; a skipped row otherwise)
    remote-ranks   4 processes, each reading rank r of 4's column block of every matrix through
                   one mount: bytes nginx sent / the model's size
    remote-hffs    huggingface_hub's HfFileSystem reading tensor `w` of a tensor_bytes/2 model from
                   the fake Hub (tests/hubserver.py) vs a fresh mount of hf://org/m
    remote-s3fs    s3fs reading the same range from moto (tests/s3server.py) vs s3://bench/m.safetensors
    remote-runai   Run:ai's SafetensorsStreamer streaming the whole file from moto to CPU tensors vs
                   np.fromfile of every tensor of a fresh s3:// mount
    remote-ranks-s3  remote-ranks over s3:// against moto: bytes moto sent (a counting TCP relay in
                   front of it) / the model's size

The last four need packages beside .venv's (s3fs, runai-model-streamer[-s3]): they are in
scripts/requirements-bench.txt (PYTHON=.venv-bench/bin/python); a row is skipped without them.

The server is nginx (Debian's nginx-light, /usr/sbin/nginx or $NGINX) on 127.0.0.1, started
per case with its config, pid, logs and temp paths in the run's work dir, its root the work
dir itself.  Its access log has the method, URI, status, Range and body bytes of every
request; the cases count requests and bytes from it.  Every number here is over loopback:
no latency, no bandwidth limit, so it measures the daemon's own costs, not a network's.
"""
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bench import CHUNK, Mount, header_model, many_tensor_model, mountpoint, pairs, read_range, size_label, summary, timed
from cases_extra import header_bytes, skipped_row, tensor_offsets, time_row, value_row

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
LOOPBACK = "loopback nginx (no latency, no bandwidth limit)"
GIB = 1 << 30


# nginx -----------------------------------------------------------------------------------------

class Nginx:
    """nginx serving `root` on 127.0.0.1:port over HTTP, in the foreground, its own files in `d`.
    log_mark() and requests(mark) read the access log from a point on."""

    FORMAT = "$request_method $uri $status [$http_range] $body_bytes_sent"

    def __init__(self, root, d):
        self.root, self.d = Path(root), Path(d)
        self.proc = self.port = None

    def config(self):
        d = self.d
        temps = "".join(f"    {k}_temp_path {d / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return (("user root;\n" if os.geteuid() == 0 else "") +
                f"daemon off;\nworker_processes 1;\npid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} warn;\n"
                "events { worker_connections 1024; }\n"
                f"http {{\n    log_format bench '{self.FORMAT}';\n    access_log {d / 'access.log'} bench;\n"
                f"{temps}    default_type application/octet-stream;\n    types {{ application/json json; }}\n"
                "    sendfile on;\n    tcp_nopush on;\n    keepalive_requests 1000000;\n"
                f"    server {{\n        listen 127.0.0.1:{self.port};\n        root {self.root};\n"
                "        etag on;\n    }\n}\n")

    def __enter__(self):
        if not os.path.exists(NGINX):
            raise RuntimeError(f"nginx is not installed ({NGINX}: apt-get install nginx-light)")
        self.d.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(5):  # a port taken between choosing it and nginx's bind: another
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            (self.d / "nginx.conf").write_text(self.config())
            with open(self.d / "stderr", "wb") as err:
                self.proc = subprocess.Popen([NGINX, "-p", str(self.d), "-e", str(self.d / "error.log"),
                                              "-c", str(self.d / "nginx.conf")],
                                             stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            last = "".join((self.d / f).read_text(errors="replace") for f in ("error.log", "stderr")
                           if (self.d / f).exists())
            self.stop()
            if "Address already in use" not in last:
                break
        raise RuntimeError(f"nginx did not start:\n{last}")

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown, workers too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/{Path(path).relative_to(self.root).as_posix()}"

    def log_mark(self):
        try:
            return (self.d / "access.log").stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, mark, settle=0.1):
        """(method, uri, status, range, bytes) of every request logged after `mark`.  nginx logs a
        request once its response is sent, which may be just after the client has the bytes:
        wait until the log has not grown for `settle` seconds (at most 2 s)."""
        size, still, deadline = -1, time.monotonic(), time.monotonic() + 2
        while time.monotonic() < deadline:
            now = self.log_mark()
            if now != size:
                size, still = now, time.monotonic()
            elif time.monotonic() - still >= settle:
                break
            time.sleep(0.01)
        with open(self.d / "access.log", "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            head, rest = line.split(" [", 1)
            method, uri, status = head.split(" ")
            rng, sent = rest.rsplit("] ", 1)
            out.append((method, uri, int(status), rng, int(sent)))
        return out


def served(args, work, case):
    """nginx for one case, serving the work dir."""
    return Nginx(work, work / f"nginx-{case}")


def sent_bytes(reqs):
    return sum(r[4] for r in reqs)


def loopback_note(extra=""):
    return f"; {LOOPBACK}{extra}"


# Shared pieces ---------------------------------------------------------------------------------

class FastMount(Mount):
    """bench.Mount, polling for the mount every 1 ms rather than 5 (the header rows here are a
    few ms), and timing it: .took is exec until the mountpoint answers."""

    def __enter__(self):
        t = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"mount of {self.cmd[-2]} failed: {self.proc.stderr.read().decode()}")
            time.sleep(0.001)
        self.took = time.perf_counter() - t
        return self


def curl(*argv):
    """curl, failing on an HTTP error; returns the bytes it downloaded (from -w)."""
    out = subprocess.run(["curl", "-s", "-f", "-w", "%{size_download}\n", *argv],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split())


def curl_range(url, offset, size):
    got = curl("-r", f"{offset}-{offset + size - 1}", url, "-o", "/dev/null")
    if got != size:
        raise IOError(f"curl got {got} bytes of {size}")


def curl_parallel(url, offset, size, n=8):
    """The range as n ranges fetched at once (curl --parallel, one connection each)."""
    argv, step = ["--parallel", "--parallel-max", str(n)], -(-size // n)
    for k in range(n):
        a, b = offset + k * step, min(offset + (k + 1) * step, offset + size) - 1
        argv += (["--next"] if k else []) + ["-s", "-f", "-w", "%{size_download}\n", "-r", f"{a}-{b}",
                                            url, "-o", "/dev/null"]
    got = curl(*argv)
    if got != size:
        raise IOError(f"curl --parallel got {got} bytes of {size}")


def remote_model(args, work):
    """One tensor `w` of args.tensor_bytes, at most 1 GiB, with bytes that differ everywhere
    (uint32 counting, stored as F32), written once per run and warm.  Returns (file, offset, size)."""
    size = min(args.tensor_bytes, GIB)
    model = work / "remote.safetensors"
    if not model.exists():
        save_file({"w": np.arange(size // 4, dtype=np.uint32).view(np.float32)}, str(model))
    offset = tensor_offsets(model)["w"]
    read_range(model, offset, size, bytearray(CHUNK))
    return model, offset, size


def tensor_path(mnt, name):
    """A tensor's file in the mount: dots in names are folders."""
    return Path(mnt, *name.split("."))


def same_bytes(model, offset, path, at, n):
    with open(model, "rb") as f, open(path, "rb") as g:
        f.seek(offset + at)
        g.seek(at)
        if f.read(n) != g.read(n):
            raise AssertionError(f"the mount's bytes at {at} of {path} differ from the file's")


# remote-mount ----------------------------------------------------------------------------------

def case_remote_mount(args, work):
    """Mount of the header_count-tensor file over HTTP until the mountpoint answers and one
    tensor stats, against curl fetching the header's bytes (8 + N) from the same server."""
    count = args.header_count
    model = header_model(work, count)
    hdr = header_bytes(model)
    first = next(iter(tensor_offsets(model)))
    mnt = mountpoint(work)
    with served(args, work, "mount") as ng:
        url = ng.url(model)
        ours_reqs = []

        def ours_timed():
            mark = ng.log_mark()
            t = time.perf_counter()
            with FastMount(args.bin, url, mnt):
                tensor_path(mnt, first).stat()
                took = time.perf_counter() - t
            ours_reqs.append(ng.requests(mark))
            return took

        theirs, mine = [], []
        for _ in range(args.pairs):
            theirs.append(timed(lambda: curl_range(url, 0, 8 + hdr)))
            mine.append(ours_timed())
    what = f"remote: mount over HTTP, header of {count} tensors ({hdr / 2**20:.1f} MiB)"
    r = time_row(what, "curl -r of the header", "mount until a tensor stats", theirs, mine, 1.5)
    r["note"] += loopback_note()
    nreq = [len(q) for q in ours_reqs]
    blocks = "one request, a second for a header over the first block (README)"
    rows = [r, value_row(f"remote: requests nginx logged per mount, header of {count} tensors", "the mount",
                         nreq, 2, "requests", f"; {blocks}; {sent_bytes(ours_reqs[0]) / 2**20:.1f} MiB sent"
                         + loopback_note())]
    return rows


# remote-shards ---------------------------------------------------------------------------------

SHARDS = 100


def shard_ranges(index):
    """(url path, header bytes + 8) of each shard beside `index`."""
    import json
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [(index.parent / n, 8 + header_bytes(index.parent / n)) for n in names]


def case_remote_shards(args, work):
    """A 100-shard, 10k-tensor index over HTTP (the local mount case's model): mount until it
    answers, against curl fetching the 100 headers 8 at a time; and requests per shard."""
    d = work / "rsharded"
    d.mkdir(exist_ok=True)
    index = d / "model.safetensors.index.json"
    if not index.exists():
        many_tensor_model(d / "model.safetensors", 10_000, shards=SHARDS)
    shards = shard_ranges(index)
    mnt = mountpoint(work)
    with served(args, work, "shards") as ng:
        url = ng.url(index)
        argv = ["--parallel", "--parallel-max", "8"]
        for k, (path, n) in enumerate(shards):
            argv += (["--next"] if k else []) + ["-s", "-f", "-w", "%{size_download}\n", "-r", f"0-{n - 1}",
                                                ng.url(path), "-o", "/dev/null"]
        want = sum(n for _, n in shards)

        def theirs():
            got = curl(*argv)
            if got != want:
                raise IOError(f"curl got {got} header bytes of {want}")

        reqs, t_ours, t_theirs = [], [], []
        for _ in range(args.pairs):
            t_theirs.append(timed(theirs))
            mark = ng.log_mark()
            with FastMount(args.bin, url, mnt) as m:
                t_ours.append(m.took)
            reqs.append(ng.requests(mark))
    what = f"remote: mount over HTTP, {SHARDS} shards, 10k tensors (index)"
    r = time_row(what, "curl --parallel (8) of the 100 headers", "mount until it answers", t_theirs, t_ours, None)
    r["note"] += loopback_note()
    per = [len(q) / SHARDS for q in reqs]
    return [r, value_row(f"remote: requests per shard nginx logged for that mount", "the mount", per, 2,
                         "requests/shard", f"; {len(reqs[0])} requests in all, the index's included"
                         + loopback_note())]


# remote-cold -----------------------------------------------------------------------------------

def case_remote_cold(args, work):
    """The tensor read once through a fresh mount (its memory cache empty; nginx's file warm),
    1 MiB reads, against curl downloading the same range: one stream, and 8 ranges at once."""
    model, offset, size = remote_model(args, work)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    with served(args, work, "cold") as ng:
        url = ng.url(model)
        with Mount(args.bin, url, mnt):  # once, outside the clock: the mount gives the file's bytes
            for at in (0, size // 3, size - CHUNK):
                same_bytes(model, offset, mnt / "w", at, CHUNK)
        one, par, ours, sent = [], [], [], []
        for _ in range(args.pairs):
            one.append(timed(lambda: curl_range(url, offset, size)))
            with Mount(args.bin, url, mnt):
                mark = ng.log_mark()
                ours.append(timed(lambda: read_range(mnt / "w", 0, size, buf)))
            sent.append(sent_bytes(ng.requests(mark)) / size)
            par.append(timed(lambda: curl_parallel(url, offset, size)))
    what = f"remote: {size_label(size)} tensor over HTTP, first read after a fresh mount (1 MiB reads)"
    extra = loopback_note(f"; nginx sent {statistics.median(sent):.3f}× the tensor per read (incl. readahead)")
    r1 = summary(what, "curl -r, one stream", "the mount", one, ours, size, 1.0)
    r2 = summary(what, "curl --parallel, 8 ranges", "the mount", par, ours, size, 0)
    r1["note"] = r2["note"] = extra[2:]
    return [r1, r2]


# remote-random ---------------------------------------------------------------------------------

PAGE = 4096
RANDOM_BLOCK = 65536


def case_remote_random(args, work):
    """20k (2k with --quick) seeded random 4 KiB preads, 4 KiB-aligned, in the tensor through a
    fresh mount with -o block_size=65536: bytes nginx sent over bytes asked for, against the
    least a block cache can fetch (each distinct 64 KiB block the reads touch, once)."""
    model, offset, size = remote_model(args, work)
    n = 2_000 if args.quick else 20_000
    offsets = (np.random.default_rng(4).integers(0, size // PAGE, n) * PAGE).tolist()
    blocks = len({o // RANDOM_BLOCK for o in offsets})
    least = blocks * RANDOM_BLOCK / (n * PAGE)
    mnt = mountpoint(work)
    buf = bytearray(PAGE)
    amp, took, reqs = [], [], []
    with served(args, work, "random") as ng:
        url = ng.url(model)
        for _ in range(args.pairs):
            with Mount(args.bin, url, mnt, ("-o", f"block_size={RANDOM_BLOCK}")):
                mark = ng.log_mark()
                fd = os.open(mnt / "w", os.O_RDONLY)
                t = time.perf_counter()
                try:
                    for off in offsets:
                        if os.preadv(fd, [buf], off) != PAGE:
                            raise IOError(f"short read at {off}")
                finally:
                    took.append(time.perf_counter() - t)
                    os.close(fd)
            q = ng.requests(mark)  # after the unmount: readahead still in flight counts too
            reqs.append(len(q))
            amp.append(sent_bytes(q) / (n * PAGE))
    # Reported, as the issue asks: past the least, what is fetched again is what the default
    # 256 MiB memory cache could not keep of the blocks touched.
    goal = 0
    note = (f"; {statistics.median(amp):.3f}×; {n // 1000}k reads took {statistics.median(took):.2f} s, "
            f"{int(statistics.median(reqs))} requests; "
            f"the least: {blocks} distinct 64 KiB blocks once = {least:.1f}×" + loopback_note())
    return [value_row(f"remote: {n // 1000}k random 4 KiB preads in a {size_label(size)} tensor, -o block_size=65536: "
                      "bytes nginx sent / bytes asked", "the mount", amp, goal, "×", note)]


# remote-hffs -----------------------------------------------------------------------------------

def importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def case_remote_http_fsspec(args, work):
    """fsspec's HTTPFileSystem (what huggingface_hub's HfFileSystem builds on) opening the file on
    nginx and reading the tensor with 1 MiB reads, against a fresh mount reading the same bytes."""
    size = min(args.tensor_bytes, GIB)
    what = f"remote: {size_label(size)} tensor over HTTP, read with 1 MiB reads: fsspec HTTPFileSystem vs the mount"
    for module in ("huggingface_hub", "fsspec", "aiohttp"):
        if not importable(module):
            return [skipped_row(what, f"{module} is not importable in this Python ({sys.executable})", 1.0, "≤")]
    import fsspec
    model, offset, size = remote_model(args, work)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    with served(args, work, "hffs") as ng:
        url = ng.url(model)
        fs = fsspec.filesystem("http", skip_instance_cache=True)

        def theirs():
            with fs.open(url, "rb") as f:  # its defaults: 5 MiB blocks, readahead cache
                f.seek(offset)
                left = size
                while left:
                    got = f.read(min(CHUNK, left))
                    if not got:
                        raise IOError(f"fsspec: short read at {size - left}")
                    left -= len(got)

        def ours():
            with Mount(args.bin, url, mnt):
                return timed(lambda: read_range(mnt / "w", 0, size, buf))
        t_theirs, t_ours = pairs(args.pairs, lambda: timed(theirs), ours)
    r = time_row(what, "fsspec.filesystem('http').open, default blocks", "the mount (fresh)", t_theirs, t_ours, 1.0,
                 size)
    r["note"] += loopback_note()
    return [r]


# remote-ranks ----------------------------------------------------------------------------------

RANKS = 4
MATRICES = 8
RANK_READER = """
import sys, time
buf = bytearray(1 << 20)
view = memoryview(buf)
n = 0
for p in sys.argv[1:]:
    with open(p, "rb", buffering=0) as f:
        while True:
            k = f.readinto(view)
            if not k:
                break
            n += k
print(n)
"""


def ranks_model(args, work):
    """MATRICES F32 matrices of 4096 columns, args.tensor_bytes / 4 in all, each value distinct."""
    model = work / "ranks.safetensors"
    cols = 4096
    rows = max(RANKS, args.tensor_bytes // 4 // MATRICES // (cols * 4))
    if not model.exists():
        save_file({f"layers.{k}.w": (np.arange(rows * cols, dtype=np.uint32) + k * rows * cols)
                   .view(np.float32).reshape(rows, cols) for k in range(MATRICES)}, str(model))
    read_range(model, 0, model.stat().st_size, bytearray(CHUNK))
    return model, rows, cols


def case_remote_ranks(args, work):
    """4 processes at once, rank r reading `NAME[:,a:b]` (its quarter of the columns) of every
    matrix through one fresh mount: bytes nginx sent over the model's size."""
    model, rows, cols = ranks_model(args, work)
    total = model.stat().st_size
    w = cols // RANKS
    mnt = mountpoint(work)
    ratios, took = [], []
    with served(args, work, "ranks") as ng:
        url = ng.url(model)
        for _ in range(args.pairs):
            mark = ng.log_mark()
            with Mount(args.bin, url, mnt):
                paths = [[str(mnt / "layers" / str(k) / f"w[:,{r * w}:{(r + 1) * w}]") for k in range(MATRICES)]
                         for r in range(RANKS)]
                t = time.perf_counter()
                procs = [subprocess.Popen([sys.executable, "-c", RANK_READER, *p], stdout=subprocess.PIPE, text=True)
                         for p in paths]
                outs = [p.communicate()[0] for p in procs]
                took.append(time.perf_counter() - t)
                if any(p.returncode for p in procs) or any(int(o) != MATRICES * rows * w * 4 for o in outs):
                    raise IOError(f"rank readers: {[p.returncode for p in procs]}, bytes {outs}")
            ratios.append(sent_bytes(ng.requests(mark)) / total)
        with Mount(args.bin, url, mnt):  # once, outside the count: a column block is the right bytes
            got = np.fromfile(mnt / "layers" / "3" / f"w[:,{w}:{2 * w}]", dtype=np.uint32).reshape(rows, w)
            want = (np.arange(rows * cols, dtype=np.uint32) + 3 * rows * cols).reshape(rows, cols)[:, w:2 * w]
            if not np.array_equal(got, want):
                raise AssertionError("the mount's column block differs from numpy's slice")
    note = (f"; {statistics.median(ratios):.3f}×; {RANKS} ranks took {statistics.median(took):.2f} s ({min(took):.2f}–{max(took):.2f}), "
            f"mount included in the bytes" + loopback_note())
    return [value_row(f"remote: {RANKS} processes, each its column block `w[:,a:b]` of {MATRICES} F32 "
                      f"[{rows},{cols}] matrices ({size_label(total)}), one mount: bytes nginx sent / model size",
                      "the mount", ratios, 1.1, "×", note)]



# The Hub and S3 side by side: remote-hffs, remote-s3fs, remote-runai, remote-ranks-s3 ----------

TESTS = Path(__file__).resolve().parents[2] / "tests"
BUCKET = "bench"  # S3 names are 3 to 63 characters: "b" is refused
FAKES = "loopback fake servers"

# moto's S3 reads an object's whole value for every GET and slices the range out of it
# (moto/s3/responses.py _handle_range_header on key.value): a 1 MiB range of a 1 GiB object
# costs ~0.7 s here, whatever its size, so a client's time would be its request count times
# the object's size.  The bench's moto reads only the range asked for, as S3 does; the rest
# (SigV4 checks, headers, status codes) is moto's own.
MOTO_RANGED = r"""
import sys, threading
from moto.s3 import models, responses
local = threading.local()

class Ranged:
    "key.value for a ranged GET: its length, and a slice read from the buffer alone."
    def __init__(self, key):
        self.key = key
    def __len__(self):
        return self.key.contentsize
    def __getitem__(self, s):
        with self.key.lock:
            self.key._value_buffer.seek(s.start)
            return self.key._value_buffer.read(s.stop - s.start)

plain = models.FakeKey.value
models.FakeKey.value = property(lambda k: Ranged(k) if getattr(local, "ranged", False) else plain.fget(k),
                                plain.fset)
get = responses.S3Response._key_response_get
def ranged_get(self, query, key_name):
    local.ranged = bool(self.headers.get("range")) and "partNumber" not in query
    try:
        return get(self, query, key_name)
    finally:
        local.ranged = False
responses.S3Response._key_response_get = ranged_get
from moto.server import main
sys.exit(main(sys.argv[1:]))
"""


def bench_s3(work, case):
    """tests/s3server.py's S3Server (moto with SigV4 checks on), its moto started through
    MOTO_RANGED; its log in work/moto-CASE/."""
    sys.path.insert(0, str(TESTS))
    from s3server import S3Server
    import netservers

    class Server(S3Server):
        def start(self):
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env["MOTO_PORT"] = str(self.port)
            self._log = open(os.path.join(self.logdir, f"moto-{self.port}.log"), "wb")
            self.proc = subprocess.Popen([sys.executable, "-c", MOTO_RANGED, "-H", "127.0.0.1", "-p", str(self.port)],
                                         env=env, stdout=self._log, stderr=subprocess.STDOUT)
            netservers.wait_until(self._up, 30, f"moto on port {self.port}", step=0.1)
            self._make_user()
            self._set_auth(0)
            return self

    d = work / f"moto-{case}"
    d.mkdir(exist_ok=True)
    return Server(str(d))


def s3_upload(s3, key, path):
    """The file as one object (one PutObject: not multipart, so its ETag is the MD5)."""
    s3.put(BUCKET, key, Path(path).read_bytes())


class environ:
    """os.environ with these variables (the daemon inherits them), restored after."""

    def __init__(self, **env):
        self.env, self.saved = env, {}

    def __enter__(self):
        for k, v in self.env.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


HUB_PROC = """
import sys
sys.path.insert(0, sys.argv[1])
from hubserver import HubServer
data = open(sys.argv[2], "rb").read()
with HubServer() as hub:
    hub.add_repo("org/m", {"model.safetensors": data})
    print(hub.endpoint, flush=True)
    sys.stdin.read()
"""


class hub_process:
    """tests/hubserver.py's fake Hub (public repo org/m holding `model` as model.safetensors, an
    LFS file behind its CDN) in a process of its own, so that neither client shares its GIL."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", HUB_PROC, str(TESTS), str(self.model)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint.startswith("http"):
            self.proc.kill()
            raise RuntimeError("the fake Hub did not start")
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pair_model(args, work):
    """args.tensor_bytes / 2 in all: `w` (half of it) and layers.{0..3}.w (an eighth each), F32
    with bytes that differ everywhere; written once per run, warm.  Returns (file, offsets)."""
    model = work / "pair.safetensors"
    big, small = args.tensor_bytes // 4 // 4, args.tensor_bytes // 16 // 4
    if not model.exists():
        tensors = {"w": np.arange(big, dtype=np.uint32).view(np.float32)}
        for k in range(4):
            tensors[f"layers.{k}.w"] = (np.arange(small, dtype=np.uint32) + big + k * small).view(np.float32)
        save_file(tensors, str(model))
    read_range(model, 0, model.stat().st_size, bytearray(CHUNK))
    return model, tensor_offsets(model)


def read_chunks(f, offset, size):
    """An fsspec file: seek, then 1 MiB reads, as read_range does on the mount."""
    f.seek(offset)
    left = size
    while left:
        got = f.read(min(CHUNK, left))
        if not got:
            raise IOError(f"short read at {size - left}")
        left -= len(got)


def missing(*modules):
    return next((m for m in modules if not importable(m)), None)


def case_remote_hffs(args, work):
    """huggingface_hub's HfFileSystem reading tensor `w` (1 MiB reads, its default blocks) from
    the fake Hub, against a fresh mount of hf://org/m reading the tensor's file."""
    size = args.tensor_bytes // 4
    what = (f"remote: {size_label(size)} tensor of a {size_label(2 * size)} model from the Hub (fake, "
            f"tests/hubserver.py), 1 MiB reads: HfFileSystem vs the mount of hf://org/m")
    if (m := missing("huggingface_hub", "fsspec")):
        return [skipped_row(what, f"{m} is not importable in this Python ({sys.executable})", 1.0, "≤")]
    from huggingface_hub import HfFileSystem
    model, offsets = pair_model(args, work)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    with hub_process(model) as hub, environ(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1"):
        env = {"HF_ENDPOINT": hub.endpoint}
        with Mount(args.bin, "hf://org/m", mnt):
            for at in (0, size // 3, size - CHUNK):
                same_bytes(model, offsets["w"], mnt / "w", at, CHUNK)

        def theirs():
            fs = HfFileSystem(endpoint=hub.endpoint, token=False, skip_instance_cache=True)
            with fs.open("org/m/model.safetensors", "rb") as f:
                read_chunks(f, offsets["w"], size)

        def ours():
            with Mount(args.bin, "hf://org/m", mnt):
                return timed(lambda: read_range(mnt / "w", 0, size, buf))
        t_theirs, t_ours = pairs(args.pairs, lambda: timed(theirs), ours)
    r = time_row(what, "HfFileSystem(endpoint=).open, default blocks (open included)", "the mount (fresh; read only)",
                 t_theirs, t_ours, 1.0, size)
    r["note"] += f"; {FAKES}: the Hub's Python server, no latency, no bandwidth limit"
    return [r]


def case_remote_s3fs(args, work):
    """s3fs reading tensor `w` from moto (1 MiB reads, its default 50 MiB readahead blocks),
    against a fresh mount of s3://bench/m.safetensors reading the tensor's file."""
    size = args.tensor_bytes // 4
    what = (f"remote: {size_label(size)} tensor of a {size_label(2 * size)} model from S3 (moto), "
            f"1 MiB reads: s3fs vs the mount of s3://{BUCKET}/m.safetensors")
    if (m := missing("s3fs", "moto", "boto3")):
        return [skipped_row(what, f"{m} is not importable in this Python ({sys.executable})", 1.0, "≤")]
    import s3fs
    model, offsets = pair_model(args, work)
    mnt = mountpoint(work)
    buf = bytearray(CHUNK)
    url = f"s3://{BUCKET}/m.safetensors"
    with bench_s3(work, "s3fs") as s3:
        s3.create_bucket(BUCKET)
        s3_upload(s3, "m.safetensors", model)
        with environ(**s3.env()):
            with Mount(args.bin, url, mnt):
                for at in (0, size // 3, size - CHUNK):
                    same_bytes(model, offsets["w"], mnt / "w", at, CHUNK)

            def theirs():
                fs = s3fs.S3FileSystem(key=s3.key, secret=s3.secret, endpoint_url=s3.endpoint,
                                       client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
                with fs.open(f"{BUCKET}/m.safetensors", "rb") as f:
                    read_chunks(f, offsets["w"], size)

            def ours():
                with Mount(args.bin, url, mnt):
                    return timed(lambda: read_range(mnt / "w", 0, size, buf))
            t_theirs, t_ours = pairs(args.pairs, lambda: timed(theirs), ours)
    r = time_row(what, "s3fs.S3FileSystem().open, default blocks (open included)", "the mount (fresh; read only)",
                 t_theirs, t_ours, 1.0, size)
    r["note"] += f"; {FAKES}: moto (ranged GETs read only their range, see MOTO_RANGED), no latency"
    return [r]


RUNAI_ENV = {"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "AWS_EC2_METADATA_DISABLED": "true",
             "RUNAI_STREAMER_LOG_LEVEL": "WARNING"}


def case_remote_runai(args, work):
    """Run:ai's SafetensorsStreamer streaming the whole model from moto into CPU tensors, against
    a fresh mount of s3://bench/m.safetensors and np.fromfile of every tensor (mount included)."""
    what = (f"remote: whole {size_label(args.tensor_bytes // 2)} model (5 tensors) from S3 (moto) to CPU memory: "
            f"Run:ai streamer vs mount + np.fromfile of each tensor")
    if (m := missing("runai_model_streamer", "runai_model_streamer_s3", "torch", "moto", "boto3")):
        return [skipped_row(what, f"{m} is not importable in this Python ({sys.executable})", 1.0, "≤")]
    model, offsets = pair_model(args, work)
    from runai_model_streamer import SafetensorsStreamer
    mnt = mountpoint(work)
    url = f"s3://{BUCKET}/m.safetensors"
    want = sum(np.dtype(np.float32).itemsize * n for n in
               [args.tensor_bytes // 16] + [args.tensor_bytes // 64] * 4)
    with bench_s3(work, "runai") as s3:
        s3.create_bucket(BUCKET)
        s3_upload(s3, "m.safetensors", model)
        with environ(**s3.env(AWS_DEFAULT_REGION="us-east-1"), **RUNAI_ENV):
            def theirs():
                got = 0
                with SafetensorsStreamer() as st:
                    st.stream_file(url, device="cpu")
                    for _name, t in st.get_tensors():
                        got += t.numel() * t.element_size()
                if got != want:
                    raise IOError(f"runai streamed {got} bytes of {want}")

            def ours():
                t = time.perf_counter()
                with Mount(args.bin, url, mnt):
                    got = sum(np.fromfile(tensor_path(mnt, name), dtype=np.uint8).nbytes for name in offsets)
                    took = time.perf_counter() - t
                if got != want:
                    raise IOError(f"the mount gave {got} bytes of {want}")
                return took
            theirs()  # once outside the clock: torch's and the library's first-use costs
            with Mount(args.bin, url, mnt):
                for name in offsets:
                    same_bytes(model, offsets[name], tensor_path(mnt, name), 0, CHUNK)
            t_theirs, t_ours = pairs(args.pairs, lambda: timed(theirs), ours)
    r = time_row(what, "SafetensorsStreamer().stream_file(s3://…, cpu), defaults", "fresh mount + np.fromfile each",
                 t_theirs, t_ours, 1.0, want)
    r["note"] += f"; mount included; {FAKES}: moto (ranged GETs read only their range), no latency"
    return [r]


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of `upstream` (host, port), counting every byte the
    upstream sends back (bodies and response headers).  Requests pass unchanged, so SigV4
    signatures made for the relay's Host still verify at moto."""

    def __init__(self, upstream):
        import threading
        self.upstream, self.sent, self.conns = upstream, 0, 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            with self.lock:
                self.conns += 1
            threading.Thread(target=self.pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(u, c, True), daemon=True).start()

    def pump(self, src, dst, count):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while (n := src.recv_into(buf)):
                dst.sendall(view[:n])
                if count:
                    with self.lock:
                        self.sent += n
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def close(self):
        self.sock.close()


def case_remote_ranks_s3(args, work):
    """remote-ranks over s3:// against moto: 4 processes at once, rank r reading its quarter of
    the columns of every matrix through one fresh mount; bytes moto sent / the model's size."""
    model, rows, cols = ranks_model(args, work)
    total = model.stat().st_size
    what = (f"remote: {RANKS} processes, each its column block `w[:,a:b]` of {MATRICES} F32 [{rows},{cols}] "
            f"matrices ({size_label(total)}), one s3:// mount (moto): bytes moto sent / model size")
    if (m := missing("moto", "boto3")):
        return [skipped_row(what, f"{m} is not importable in this Python ({sys.executable})", 1.1, "≤ ×")]
    w = cols // RANKS
    mnt = mountpoint(work)
    url = f"s3://{BUCKET}/ranks.safetensors"
    ratios, took, conns = [], [], []
    with bench_s3(work, "ranks") as s3:
        s3.create_bucket(BUCKET)
        s3_upload(s3, "ranks.safetensors", model)
        relay = CountingRelay(("127.0.0.1", s3.port))
        try:
            with environ(**s3.env(AWS_ENDPOINT_URL=relay.endpoint)):
                for _ in range(args.pairs):
                    before, c0 = relay.sent, relay.conns
                    with Mount(args.bin, url, mnt):
                        paths = [[str(mnt / "layers" / str(k) / f"w[:,{r * w}:{(r + 1) * w}]") for k in range(MATRICES)]
                                 for r in range(RANKS)]
                        t = time.perf_counter()
                        procs = [subprocess.Popen([sys.executable, "-c", RANK_READER, *p], stdout=subprocess.PIPE,
                                                  text=True) for p in paths]
                        outs = [p.communicate()[0] for p in procs]
                        took.append(time.perf_counter() - t)
                        if any(p.returncode for p in procs) or any(int(o) != MATRICES * rows * w * 4 for o in outs):
                            raise IOError(f"rank readers: {[p.returncode for p in procs]}, bytes {outs}")
                    time.sleep(0.2)  # the relay's last bytes counted
                    ratios.append((relay.sent - before) / total)
                    conns.append(relay.conns - c0)
                with Mount(args.bin, url, mnt):  # once, outside the count: a column block is the right bytes
                    got = np.fromfile(mnt / "layers" / "3" / f"w[:,{w}:{2 * w}]", dtype=np.uint32).reshape(rows, w)
                    want = (np.arange(rows * cols, dtype=np.uint32) + 3 * rows * cols).reshape(rows, cols)[:, w:2 * w]
                    if not np.array_equal(got, want):
                        raise AssertionError("the mount's column block differs from numpy's slice")
        finally:
            relay.close()
    note = (f"; {statistics.median(ratios):.3f}×; {RANKS} ranks took {statistics.median(took):.2f} s "
            f"({min(took):.2f}–{max(took):.2f}); {int(statistics.median(conns))} connections; mount and response "
            f"headers included in the bytes; {FAKES}: moto (ranged GETs read only their range) through a counting relay")
    return [value_row(what, "the mount", ratios, 1.1, "×", note)]


CASES = {"remote-mount": case_remote_mount, "remote-shards": case_remote_shards, "remote-cold": case_remote_cold,
         "remote-random": case_remote_random, "remote-hffs": case_remote_hffs,
         "remote-http-fsspec": case_remote_http_fsspec, "remote-ranks": case_remote_ranks,
         "remote-s3fs": case_remote_s3fs, "remote-runai": case_remote_runai, "remote-ranks-s3": case_remote_ranks_s3}
