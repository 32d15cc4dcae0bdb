"""SOURCE as an http:// or https:// URL: a .safetensors file or a *.safetensors.index.json
served by nginx (HTTP and HTTPS with a CA made here) and by a fault-injecting Python
server (netservers.py).  A remote mount must give exactly what a local mount of the same
file gives (tree, stat, xattrs, .header.json, views, /.control uploads), tensors as the
official library reads them; mounting reads only headers; random reads fetch only the
blocks they touch; the object is pinned; faults end in EIO, never in wrong or new bytes or
a hung reader; refusals at mount are one line naming the URL without its secrets."""
import errno
import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import netservers as ns
import util

READER_TIMEOUT = 60.0  # a reader not done by then counts as hung
FAST = ("-o", "read_timeout=2", "-o", "connect_timeout=2")


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return ns.make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    """A CA that signed nothing the servers use."""
    return ns.make_ca(tmp_path_factory.mktemp("other-ca"))[0]


def write_sharded(d, shards=3, metadata_pad=0, rows=4):
    """index + `shards` shards in d: the weight map."""
    rng = np.random.default_rng(11)
    d.mkdir(parents=True, exist_ok=True)
    wm, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"model.layers.{s}.w{i}": rng.standard_normal((rows, 33 + i)).astype(np.float32) for i in range(3)}
        part[f"model.layers.{s}.norm"] = rng.standard_normal(7).astype(np.float16)
        meta = {"format": "pt", "shard": str(s), "pad": "p" * metadata_pad}
        save_file(part, str(d / fname), metadata=meta)
        wm.update({k: fname for k in part})
        total += sum(a.nbytes for a in part.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=1))
    return wm


@pytest.fixture(scope="session")
def www(tmp_path_factory, model):
    """What the servers serve: the conftest model, a sharded model, a two-tensor file."""
    d = tmp_path_factory.mktemp("www")
    shutil.copy2(model.path, d / "model.safetensors")
    write_sharded(d / "sharded")
    save_file(two_tensors(), str(d / "two.safetensors"))
    return d


def two_tensors(scale=1):
    """x.first (16 KiB, at the data's start) and x.second (4 MiB, after it)."""
    return {"x.first": (np.arange(4096, dtype=np.float32) * scale),
            "x.second": (np.arange(1 << 20, dtype=np.uint32) * scale).astype(np.uint32)}


@pytest.fixture(scope="session")
def nginx(www, certs, tmp_path_factory):
    n = ns.Nginx(www, tmp_path_factory.mktemp("nginx"), certs).start()
    yield n
    n.stop()


@pytest.fixture
def serve(tmp_path):
    """serve(root=None, **FaultServer kw) -> a started FaultServer over root
    (default: a fresh folder with two.safetensors); stopped at teardown."""
    servers = []

    def start(root=None, **kw):
        if root is None:
            root = tmp_path / f"srv{len(servers)}"
            root.mkdir()
            save_file(two_tensors(), str(root / "two.safetensors"))
        s = ns.FaultServer(root, **kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def rmount(tmp_path, fuse_environment):
    """rmount(url, *opts, stderr_ok=False, secrets=()): netservers.remote_mounts."""
    with ns.remote_mounts(tmp_path) as start:
        yield start


def refused(url, tmp_path, *opts):
    """Runs the daemon on a URL it must refuse: (its one stderr line)."""
    mnt = tmp_path / "refused"
    mnt.mkdir(exist_ok=True)
    before = util.mount_lines(tmp_path)
    rc, out, err = util.run_refused(url, mnt, list(opts))
    util.assert_nothing_mounted(mnt, before, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1, f"rc {rc}, stderr:\n{err}"
    return lines[0]


def redacted(url):
    """What a message may show of URL: no user:password@, no ?query."""
    scheme, rest = url.split("://", 1)
    rest = rest.split("?", 1)[0]
    host, _, path = rest.partition("/")
    return f"{host.rsplit('@', 1)[-1]}/{path}"


# ------------------------------------------------------------------- what to compare

def dump(root):
    """Every entry below a mount (reserved files and the root included): its type, mode,
    size, xattrs and, for files, bytes."""
    root = Path(root)
    out = {"": entry_of(root)}

    def fail(e):
        raise e

    for top, dnames, fnames in os.walk(root, onerror=fail):
        for n in dnames + fnames:
            p = Path(top, n)
            out[str(p.relative_to(root))] = entry_of(p)
    return out


def entry_of(p):
    st = os.lstat(p)
    xattrs = {k: os.getxattr(p, k) for k in sorted(os.listxattr(p))}
    data = Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else None
    return stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, xattrs, data


def assert_same_dump(remote, local):
    a, b = dump(remote), dump(local)
    assert sorted(a) == sorted(b)
    for k in b:
        assert a[k][:4] == b[k][:4], k
        assert a[k][4] == b[k][4], f"{k}: bytes differ"


def official(path):
    """{name: bytes} as the official library reads the file (safe_open per tensor for the
    dtypes load_file's numpy side lacks)."""
    try:
        return {k: v.tobytes() for k, v in load_file(str(path)).items()}
    except (TypeError, ValueError, AttributeError):
        out = {}
        with safe_open(str(path), "np") as f:
            for k in f.keys():
                try:
                    out[k] = f.get_tensor(k).tobytes()
                except (TypeError, ValueError, AttributeError):
                    pass
        return out


def exchange(mnt, line):
    return util.control_exchange(mnt, line)


def read_in_thread(fn):
    """Runs fn() in a thread: ('ok', value) or ('err', errno); fails if it is not done in
    READER_TIMEOUT (a hung reader)."""
    box = []

    def run():
        try:
            box.append(("ok", fn()))
        except OSError as e:
            box.append(("err", e.errno))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(READER_TIMEOUT)
    assert not t.is_alive(), f"a reader hung for {READER_TIMEOUT} s"
    return box[0]


def pread(path, n, off):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


TWO = two_tensors()
SECOND_OFF = 3 << 20  # a spot in x.second far from everything a mount or x.first reads


def assert_metadata_answers(m):
    """What must keep working whatever the reads do: stat, getxattr, ls; the daemon up."""
    m.check_alive()
    root = Path(m.mnt)
    assert sorted(os.listdir(root / "x")) == ["first", "second"]
    assert os.stat(root / "x" / "second").st_size == TWO["x.second"].nbytes
    assert os.getxattr(root / "x" / "second", "user.safetensors.dtype") == b"U32"
    assert os.getxattr(root, "user.safetensors.tensors") == b"2"


# ============================================================ the servers on their own

def curl(*args):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", *args], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout


def header(text, name):
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


@pytest.mark.parametrize("tls", [False, True])
def test_nginx_answers_range_etag_if_match(nginx, certs, www, tls):
    if not shutil.which("curl"):
        ns.skip_or_fail("curl is not installed")
    url = nginx.url("model.safetensors", tls=tls)
    ca = ["--cacert", str(certs.ca)] if tls else []
    rc, h = curl(*ca, "-r", "8-99", url)
    assert rc == 0 and h.startswith("HTTP/1.1 206"), h
    size = os.path.getsize(www / "model.safetensors")
    assert header(h, "Content-Range") == f"bytes 8-99/{size}"
    etag = header(h, "ETag")
    assert etag and etag.startswith('"')
    assert curl(*ca, "-r", "0-9", "-H", f"If-Match: {etag}", url)[1].startswith("HTTP/1.1 206")
    assert curl(*ca, "-r", "0-9", "-H", 'If-Match: "nope"', url)[1].startswith("HTTP/1.1 412")
    if tls:  # verified: without our CA curl refuses it
        assert curl("-r", "0-9", url)[0] != 0


def test_fault_server_basics_and_faults(tmp_path, certs):
    import http.client
    root = tmp_path / "root"
    root.mkdir()
    body = bytes(range(256)) * 64
    (root / "f.bin").write_bytes(body)
    with ns.FaultServer(root) as s:
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)

        def get(path="/f.bin", **h):
            c.request("GET", path, headers=h)
            r = c.getresponse()
            return r, r.read()

        r, data = get(Range="bytes=10-19")  # keep-alive: one connection for all of these
        assert r.status == 206 and data == body[10:20]
        assert r.getheader("Content-Range") == f"bytes 10-19/{len(body)}"
        etag, lm = r.getheader("ETag"), r.getheader("Last-Modified")
        assert etag and lm
        assert get(Range="bytes=0-3", **{"If-Match": etag})[0].status == 206
        assert get(Range="bytes=0-3", **{"If-Match": '"other"'})[0].status == 412
        assert get(Range="bytes=0-3", **{"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})[0].status == 412
        assert get(Range="bytes=-5")[1] == body[-5:]
        assert get(Range=f"bytes={len(body)}-")[0].status == 416
        assert get("/nothere")[0].status == 404
        s.fail("f.bin", 500, times=2)
        assert [get()[0].status for _ in range(3)] == [500, 500, 200]
        s.fail("f.bin", 429, times=1, retry_after=1)
        r, _ = get()
        assert r.status == 429 and r.getheader("Retry-After") == "1"
        for st in (401, 403, 404):
            s.deny("f.bin", st, times=1)
            assert get()[0].status == st
        s.wrong_length("f.bin", -3, times=1)
        r, data = get(Range="bytes=0-99")
        assert r.getheader("Content-Range") == f"bytes 0-99/{len(body)}" and len(data) == 97
        s.wrong_range("f.bin", 8, times=1)
        r, data = get(Range="bytes=0-99")
        assert r.getheader("Content-Range") == f"bytes 8-107/{len(body)}" and data == body[8:108]
        s.ignore_range("f.bin", times=1)
        r, data = get(Range="bytes=0-99")
        assert r.status == 200 and data == body
        s.reset_counts()
        s.drop("f.bin", after=100, times=1)
        c2 = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        c2.request("GET", "/f.bin")
        with pytest.raises(http.client.IncompleteRead):
            c2.getresponse().read()
        ns.wait_until(lambda: s.requests("f.bin") == 1, 10, "the dropped request to be logged")
        assert s.bytes_sent("f.bin") == 100
        s.stall("f.bin", after=50, times=1)
        c3 = http.client.HTTPConnection("127.0.0.1", s.port, timeout=1)
        c3.request("GET", "/f.bin")
        r3 = c3.getresponse()
        assert r3.read(50) == body[:50]
        with pytest.raises(TimeoutError):
            r3.read(1)
        s.replace("f.bin", body[::-1])
        r, data = get(Range="bytes=0-3", **{"If-Match": etag})
        assert r.status == 412
        r, data = get()
        assert data == body[::-1] and r.getheader("ETag") != etag
    with ns.FaultServer(root, tls=certs) as s:
        import ssl
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        c = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=10, context=ctx)
        c.request("GET", "/f.bin", headers={"Range": "bytes=0-9"})
        assert c.getresponse().read() == body[::-1][:10]
        assert s.handshakes == 1


# ===================================================== a remote mount = a local mount

@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_remote_mount_equals_local(nginx, certs, www, model, mount, rmount, tls):
    opts = ("-o", f"cacert={certs.ca}") if tls else ()
    r = rmount(nginx.url("model.safetensors", tls=tls), *opts)
    local = mount(www / "model.safetensors")
    assert_same_dump(r.mnt, local.mnt)
    root = Path(r.mnt)
    assert (root / ".header.json").read_bytes() == model.raw_header
    want = official(www / "model.safetensors")
    files, _ = util.expected_layout(model.names())
    by_name = {v: k for k, v in files.items()}
    for name in model.names():
        data = (root / by_name[name]).read_bytes()
        assert data == model.expected_bytes(name), name
        if name in want:
            assert data == want[name], name
    r.check_output()


VIEWS = ["model/embed/weight.npy", "model/embed/weight[3:9,100:200]", "model/embed/weight[-2:]@F16",
         "model/embed/weight[:,600:]@F64.npy", "model/layers/0/mlp/up_proj/weight[1:5]@F32.npy",
         "model/layers/0/mlp/up_proj/bias@BF16", "dtypes/f32[1:3].npy"]


def test_views_and_control_uploads_equal_local(nginx, www, model, mount, rmount):
    r = rmount(nginx.url("model.safetensors"))
    local = mount(www / "model.safetensors")
    for v in VIEWS:
        a, b = Path(r.mnt) / v, Path(local.mnt) / v
        assert a.read_bytes() == b.read_bytes(), v
        assert entry_of(a)[:4] == entry_of(b)[:4], v
    emb = np.frombuffer(model.expected_bytes("model.embed.weight"), np.float32).reshape(512, 640)
    assert (Path(r.mnt) / "model/embed/weight[3:9,100:200]").read_bytes() == emb[3:9, 100:200].tobytes()
    assert np.load(Path(r.mnt) / "model/embed/weight.npy").tobytes() == emb.tobytes()

    line = "upload device=host model/layers/0 model/embed/weight[2:40,5:9] dtypes/f16"
    got, want = exchange(r.mnt, line), exchange(local.mnt, line)
    assert got["ok"] and want["ok"], (got, want)
    assert [(t["name"], t["shape"], t["nbytes"], t["offset"]) for t in got["tensors"]] == \
        [(t["name"], t["shape"], t["nbytes"], t["offset"]) for t in want["tensors"]]
    ga, wa = Path(got["handle"]).read_bytes(), Path(want["handle"]).read_bytes()
    for t in got["tensors"]:
        piece = ga[t["offset"]:t["offset"] + t["nbytes"]]
        assert piece == wa[t["offset"]:t["offset"] + t["nbytes"]], t["name"]
    assert exchange(r.mnt, f"free {got['id']}")["ok"] and exchange(local.mnt, f"free {want['id']}")["ok"]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_sharded_index_over_http(nginx, certs, www, mount, rmount, tls):
    opts = ("-o", f"cacert={certs.ca}") if tls else ()
    d = www / "sharded"
    r = rmount(nginx.url("sharded/model.safetensors.index.json", tls=tls), *opts)
    local = mount(d / "model.safetensors.index.json")
    assert_same_dump(r.mnt, local.mnt)
    assert os.getxattr(r.mnt, "user.safetensors.shards") == b"3"
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    shards = {f: load_file(str(d / f)) for f in set(wm.values())}
    for name, fname in wm.items():
        p = Path(r.mnt, *name.split("."))
        assert p.read_bytes() == shards[fname][name].tobytes(), name
        assert os.getxattr(p, "user.safetensors.file").decode() == fname
    header = json.loads((Path(r.mnt) / ".header.json").read_bytes())
    assert sorted(header) == sorted(shards)
    for fname, h in header.items():
        assert h == json.loads(util.read_header(d / fname)[1])


# ======================================================== what mounting and reading fetch

def test_mount_reads_only_headers(tmp_path, serve, rmount):
    """Big headers (metadata of 300 kB) and 4 MiB of data per shard: mounting makes at most
    two range requests per shard and sends little beyond the headers; later range requests
    carry If-Match with the ETag of the first answer."""
    d = tmp_path / "sh"
    wm = write_sharded(d, metadata_pad=300_000, rows=8000)
    s = serve(d)
    m = rmount(s.url("model.safetensors.index.json"))
    shards = sorted(set(wm.values()))
    for f in shards:
        n = util.read_header(d / f)[0]
        size = os.path.getsize(d / f)
        log = s.log(f)
        assert 1 <= len(log) <= 2, [(q.method, q.range) for q in log]
        assert all(q.method == "GET" and q.range for q in log), [(q.method, q.range) for q in log]
        assert s.bytes_sent(f) <= 8 + n + (1 << 20) < size
    assert s.requests("model.safetensors.index.json") <= 2
    assert s.requests() <= 2 * len(shards) + 2
    # reads: every range request after the first one of a shard is conditional on its ETag
    for name, f in list(wm.items())[::3]:
        Path(m.mnt, *name.split(".")).read_bytes()
    for f in shards:
        log = s.log(f)
        etag = s.object(f)[1]
        assert all(q.range for q in log)
        assert all(q.headers.get("if-match") == etag for q in log[1:]), \
            [(q.range, q.headers.get("if-match")) for q in log]


@pytest.fixture(scope="session")
def big_root(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    save_file({"big": np.arange(16 << 20, dtype=np.uint32), "tail": np.ones(3, np.float32)},
              str(d / "big.safetensors"))
    return d


def test_random_reads_fetch_only_their_blocks(big_root, serve, rmount):
    s = serve(big_root)
    m = rmount(s.url("big.safetensors"), "-o", "block_size=65536")
    size = os.path.getsize(big_root / "big.safetensors")
    p = Path(m.mnt) / "big"
    ref = np.arange(16 << 20, dtype=np.uint32)
    s.reset_counts()
    rng = np.random.default_rng(1)
    offsets = [int(o) * 4 for o in rng.integers(0, (64 << 20) // 4 - 1024, 8)]
    for off in offsets:
        assert pread(p, 4096, off) == ref.view(np.uint8)[off:off + 4096].tobytes(), off
    sent = s.bytes_sent()
    # each read touches at most two 64 KiB blocks; the kernel may ask for a little more
    assert sent <= len(offsets) * 4 * 65536, sent
    assert sent < size // 16
    assert all(q.range for q in s.log())


@pytest.mark.parametrize("opts", [(), ("-o", "block_size=65536", "-o", "cache_size=4194304")],
                         ids=["defaults", "small-blocks-small-cache"])
def test_sequential_read_is_whole_and_not_amplified(big_root, serve, rmount, opts):
    """A sequential read gets every byte right and fetches each block about once: readahead
    that the cache evicts before it is read would fetch the file again."""
    s = serve(big_root)
    m = rmount(s.url("big.safetensors"), *opts)
    s.reset_counts()
    data = (Path(m.mnt) / "big").read_bytes()
    assert data == np.arange(16 << 20, dtype=np.uint32).tobytes()
    size = os.path.getsize(big_root / "big.safetensors")
    assert s.bytes_sent() <= size + (8 << 20), f"{s.bytes_sent()} bytes sent for a {size}-byte file"


def vm_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def test_cache_size_bounds_memory(big_root, serve, rmount):
    """-o cache_size=4M: reading 64 MiB leaves the daemon's peak RSS within a few MiB of
    where it started (with the default 256M cache it grows by the file's size)."""
    if util.sanitized():
        pytest.skip(util.ASAN_RSS)
    s = serve(big_root)
    m = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", "cache_size=4194304")
    before = vm_kib(m.proc.pid, "VmHWM")
    (Path(m.mnt) / "big").read_bytes()
    grown = vm_kib(m.proc.pid, "VmHWM") - before
    assert grown < 24 << 10, f"peak RSS grew by {grown} KiB reading 64 MiB with a 4 MiB cache"


# ============================================================= the object is pinned

@pytest.mark.parametrize("how", ["etag", "etag-new-length", "etag-ignored-by-server",
                                 "etag-ignored-new-length", "last-modified"])
def test_changed_object_gives_eio_not_new_bytes(serve, rmount, tmp_path, how):
    s = serve(etags=how != "last-modified", honour_conditions="ignored" not in how)
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", *FAST, "-o", "retries=1", stderr_ok=True)
    root = Path(m.mnt)
    assert (root / "x" / "first").read_bytes() == TWO["x.first"].tobytes()
    new = two_tensors(scale=3)
    if "new-length" in how:
        new["x.third"] = np.ones(100, np.uint8)
    fresh = tmp_path / "new.safetensors"
    save_file(new, str(fresh))
    old_mtime = int(os.path.getmtime(s.root / "two.safetensors"))
    s.replace("two.safetensors", fresh.read_bytes(), mtime=old_mtime + 10)
    kind, v = read_in_thread(lambda: pread(root / "x" / "second", 4096, SECOND_OFF))
    assert (kind, v) == ("err", errno.EIO), "a changed object must give EIO" + (
        ", and gave its new bytes" if kind == "ok" and v != TWO["x.second"].view(np.uint8)[
            SECOND_OFF:SECOND_OFF + 4096].tobytes() else "")
    cond = "if-match" if s.etags else "if-unmodified-since"
    log = s.log("two.safetensors")
    assert len(log) >= 2 and all(q.headers.get(cond) for q in log[1:]), \
        f"range requests after the first must carry {cond}"
    # whatever still reads is the pinned object's bytes
    kind, v = read_in_thread(lambda: (root / "x" / "first").read_bytes())
    assert kind == "err" or v == TWO["x.first"].tobytes()
    assert_metadata_answers(m)


# ======================================================================= faults in reads

def second_ok(m):
    off = SECOND_OFF
    return read_in_thread(lambda: pread(Path(m.mnt) / "x" / "second", 4096, off)) == \
        ("ok", TWO["x.second"].view(np.uint8)[off:off + 4096].tobytes())


@pytest.mark.parametrize("fault", ["500x2", "503x2", "429x1", "dropx2", "stallx1"])
def test_passing_fault_is_retried(serve, rmount, fault):
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", *FAST, "-o", "retries=4", stderr_ok=True)
    s.reset_counts()
    kind, k = fault[:-2], int(fault[-1])
    if kind in ("500", "503", "429"):
        s.fail("two.safetensors", int(kind), times=k, retry_after=1 if kind == "429" else None)
    elif kind == "drop":
        s.drop("two.safetensors", after=1000, times=k)
    else:
        s.stall("two.safetensors", after=1000, times=k)
    assert second_ok(m)
    log = s.log("two.safetensors")
    assert sum(1 for q in log if q.fault) == k and len(log) >= k + 1
    if kind == "429":  # Retry-After: 1 is waited for (a lower bound: no race)
        assert log[1].t - log[0].t >= 0.9, "the retry after a 429 did not wait for Retry-After"
    assert_metadata_answers(m)


def test_stall_is_cut_after_read_timeout(serve, rmount):
    """-o read_timeout=2: a transfer that stops sending is given up after about 2 s without
    a byte, then retried; the server sees the retry 1.5 s to 6 s after the stalled request."""
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", *FAST, "-o", "retries=1", stderr_ok=True)
    s.reset_counts()
    s.stall("two.safetensors", after=1000, times=1)
    assert second_ok(m)
    log = s.log("two.safetensors")
    assert len(log) >= 2 and log[0].fault == "stall"
    gap = log[1].t - log[0].t
    assert 1.5 <= gap <= 6.0, f"the stalled transfer was retried {gap:.1f} s after it began (read_timeout=2)"


@pytest.mark.parametrize("threads", [(), ("-o", "spin_us=0")], ids=["polling-loop", "libfuse-loop"])
def test_metadata_answers_while_a_read_waits_on_the_network(serve, rmount, threads):
    """A read stalled on the server holds one thread; lookups, stat, getxattr and listings go
    on being answered meanwhile, and the read itself ends right once the stall is cut."""
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", "-o", "read_timeout=15",
               "-o", "retries=2", *threads, stderr_ok=True)
    s.reset_counts()
    s.stall("two.safetensors", after=0, times=1)
    box = []
    reader = threading.Thread(target=lambda: box.append(second_ok(m)), daemon=True)
    reader.start()
    ns.wait_until(lambda: s.requests("two.safetensors") >= 1, 10, "the read to reach the server")
    for _ in range(50):
        assert_metadata_answers(m)
    # The stalled request has not been answered: the read still waits while metadata answered.
    assert reader.is_alive() and len(s.log("two.safetensors")) == 1
    reader.join(READER_TIMEOUT)
    assert box == [True]


@pytest.mark.parametrize("fault", ["500", "429", "drop", "stall"])
def test_lasting_fault_gives_eio_then_recovers(serve, rmount, fault):
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", *FAST, "-o", "retries=1", stderr_ok=True)
    s.reset_counts()
    if fault == "500":
        s.fail("two.safetensors", 500)
    elif fault == "429":
        s.fail("two.safetensors", 429, retry_after=1)
    elif fault == "drop":
        s.drop("two.safetensors", after=1000)
    else:
        s.stall("two.safetensors", after=1000)
    assert read_in_thread(lambda: pread(Path(m.mnt) / "x" / "second", 4096, SECOND_OFF)) == ("err", errno.EIO)
    # retried: 1 + retries for the block touched (the kernel may ask once more after an error)
    assert 2 <= s.requests("two.safetensors") <= 3 * 2
    assert_metadata_answers(m)
    s.clear_faults()
    assert second_ok(m), "the next read after the fault is gone must succeed"


@pytest.mark.parametrize("kind,delta", [("wrong_length", -100), ("wrong_length", 100),
                                        ("wrong_range", 8), ("wrong_range", -8)])
def test_bad_framing_in_reads_never_gives_wrong_bytes(serve, rmount, kind, delta):
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", *FAST, "-o", "retries=1", stderr_ok=True)
    getattr(s, kind)("two.safetensors", delta)
    got = read_in_thread(lambda: pread(Path(m.mnt) / "x" / "second", 4096, SECOND_OFF))
    assert got == ("err", errno.EIO)
    assert_metadata_answers(m)


# ========================================================================= refused at mount

@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_status_at_mount(serve, tmp_path, status, fuse_environment):
    s = serve()
    s.deny("two.safetensors", status)
    url = s.url("two.safetensors")
    line = refused(url, tmp_path, *FAST)
    assert redacted(url) in line, line
    assert s.requests("two.safetensors") >= 1


def test_missing_shard_refused(tmp_path, serve, fuse_environment):
    d = tmp_path / "sh"
    write_sharded(d)
    s = serve(d)
    s.deny("model-00002-of-00003.safetensors", 404)
    line = refused(s.url("model.safetensors.index.json"), tmp_path, *FAST)
    assert "model-00002-of-00003.safetensors" in line, line
    assert s.requests("model-00002-of-00003.safetensors") >= 1


def test_server_errors_at_mount_are_retried_then_refused(serve, tmp_path, fuse_environment):
    s = serve()
    s.fail("two.safetensors", 503)
    url = s.url("two.safetensors")
    line = refused(url, tmp_path, *FAST, "-o", "retries=2")
    assert redacted(url) in line
    assert s.requests("two.safetensors") == 3


def test_server_ignoring_range_is_refused_not_downloaded(big_root, serve, tmp_path, fuse_environment):
    s = serve(big_root)
    s.ignore_range("big.safetensors")
    url = s.url("big.safetensors")
    line = refused(url, tmp_path, *FAST)
    assert redacted(url) in line
    assert 1 <= s.requests("big.safetensors")
    assert s.bytes_sent("big.safetensors") < os.path.getsize(big_root / "big.safetensors") // 4


@pytest.mark.parametrize("kind,delta", [("wrong_length", -100), ("wrong_length", 100), ("wrong_range", 8)])
def test_bad_framing_at_mount_refused(serve, tmp_path, kind, delta, fuse_environment):
    s = serve()
    getattr(s, kind)("two.safetensors", delta)
    refused(s.url("two.safetensors"), tmp_path, *FAST, "-o", "retries=1")
    assert s.requests("two.safetensors") >= 1


def test_dns_failure_refused(nginx, tmp_path, rmount):
    rmount(nginx.url("two.safetensors"))  # the daemon mounts URLs at all
    url = "http://stfs-no-such-host.invalid/two.safetensors"
    line = refused(url, tmp_path, *FAST, "-o", "retries=0")
    assert redacted(url) in line


def test_connection_refused(tmp_path, nginx, rmount):
    rmount(nginx.url("two.safetensors"))
    url = f"http://127.0.0.1:{ns.free_port()}/two.safetensors"
    line = refused(url, tmp_path, *FAST, "-o", "retries=0")
    assert redacted(url) in line


def test_tls_verified_by_default(tmp_path, serve, certs, fuse_environment):
    s = serve(tls=certs)
    url = s.url("two.safetensors")
    line = refused(url, tmp_path, *FAST, "-o", "retries=0")
    assert redacted(url) in line
    assert s.handshakes >= 1 and s.requests() == 0


def test_tls_other_ca_refused(tmp_path, serve, certs, other_ca, fuse_environment):
    s = serve(tls=certs)
    url = s.url("two.safetensors")
    line = refused(url, tmp_path, *FAST, "-o", "retries=0", "-o", f"cacert={other_ca}")
    assert redacted(url) in line
    assert s.handshakes >= 1 and s.requests() == 0


def test_tls_wrong_name_refused(tmp_path, serve, fuse_environment):
    wrong = ns.make_certs(tmp_path / "wrong", sans=("DNS:elsewhere.invalid",))
    s = serve(tls=wrong)
    url = f"https://127.0.0.1:{s.port}/two.safetensors"
    line = refused(url, tmp_path, *FAST, "-o", "retries=0", "-o", f"cacert={wrong.ca}")
    assert redacted(url) in line
    assert s.handshakes >= 1 and s.requests() == 0


def test_https_fault_server_with_cacert_mounts(serve, certs, rmount):
    s = serve(tls=certs)
    m = rmount(s.url("two.safetensors"), "-o", f"cacert={certs.ca}")
    assert (Path(m.mnt) / "x" / "first").read_bytes() == TWO["x.first"].tobytes()


@pytest.mark.parametrize("bad", ["100000", "0", "abc"])
def test_block_size_must_be_a_power_of_two(serve, tmp_path, rmount, bad):
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", "-o", "cache_size=1048576")
    assert (Path(m.mnt) / "x" / "first").read_bytes() == TWO["x.first"].tobytes()
    refused(s.url("two.safetensors"), tmp_path, "-o", f"block_size={bad}")


@pytest.mark.parametrize("opts", [("-o", "cache_size=1M"), ("-o", "block_size=64M", "-o", "cache_size=512M"),
                                  ("-o", "cache_size=lots")])
def test_cache_must_hold_16_blocks(serve, tmp_path, opts):
    """Memory is what cache_size says: 16 blocks at least, so that reads in flight fit."""
    s = serve()
    refused(s.url("two.safetensors"), tmp_path, *opts)


# ============================================================ secrets are never shown

USER, PASSWORD = "alice", "pw-SECRET-1a2b"
SIG, CRED = "SIG-SECRET-3c4d", "CRED-SECRET-5e6f"
SECRETS = (PASSWORD, SIG, CRED)


def secret_url(s, path):
    return s.url(path, query=f"X-Amz-Credential={CRED}&X-Amz-Signature={SIG}").replace(
        "://", f"://{USER}:{PASSWORD}@", 1)


def test_credentials_and_query_never_shown(serve, rmount, tmp_path):
    s = serve(auth=(USER, PASSWORD))
    url = secret_url(s, "two.safetensors")
    m = rmount(url, *FAST, "-o", "retries=0", stderr_ok=True, secrets=SECRETS)
    # they were used: the server wants the password, and a presigned URL its query
    log = s.log("two.safetensors")
    assert log and all(q.status in (200, 206) for q in log)
    assert all(SIG in q.query for q in log)
    root = Path(m.mnt)
    assert (root / "x" / "first").read_bytes() == TWO["x.first"].tobytes()
    shown = "\n".join(util.mount_lines(m.mnt))
    assert shown and not any(x in shown for x in SECRETS), shown
    assert f"127.0.0.1:{s.port}" in shown  # the fsname is the redacted URL
    s.fail("two.safetensors", 500)  # faults the daemon may report: still no secret on stderr
    assert read_in_thread(lambda: pread(root / "x" / "second", 4096, SECOND_OFF)) == ("err", errno.EIO)
    m.check_output()
    s.clear_faults()
    everything = repr(dump(root)) + repr(entry_of(root / "x" / "second[0:3]"))
    assert not any(x in everything for x in SECRETS)
    assert not any(x in (root / ".header.json").read_text() + (root / ".metadata.json").read_text()
                   for x in SECRETS)
    m.check_output()


@pytest.mark.parametrize("case", ["404", "wrong-password", "dns"])
def test_refusal_line_is_redacted(serve, tmp_path, case, fuse_environment):
    s = serve(auth=(USER, PASSWORD))
    if case == "404":
        url = secret_url(s, "missing.safetensors")
    elif case == "wrong-password":
        url = secret_url(s, "two.safetensors").replace(PASSWORD, PASSWORD + "-SECRET-wrong")
    else:
        url = f"https://{USER}:{PASSWORD}@stfs-no-such-host.invalid/m.safetensors?X-Amz-Signature={SIG}"
    line = refused(url, tmp_path, *FAST, "-o", "retries=0")
    assert redacted(url) in line, line
    assert not any(x in line for x in SECRETS + ("SECRET",)), line
    if case != "dns":
        assert s.requests() >= 1


# ------------------------------------------------------------------- -o cache=DIR

BIG_REF = None


def big_bytes():
    global BIG_REF
    if BIG_REF is None:
        BIG_REF = np.arange(16 << 20, dtype=np.uint32).tobytes()
    return BIG_REF


def read_some(m, n=8 << 20):
    """The first n bytes of tensor `big`, checked against what the file holds."""
    with open(Path(m.mnt) / "big", "rb") as f:
        data = f.read(n)
    assert data == big_bytes()[:n]
    return data


def cache_files(d):
    return sorted(p for p in Path(d).iterdir() if p.name.endswith(".blk"))


def test_disk_cache_serves_a_second_mount(big_root, serve, rmount, tmp_path):
    s = serve(big_root)
    cache = tmp_path / "cache"
    m = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    read_some(m, 64 << 20)  # all of it: readahead cannot reach past what is kept
    m.stop()
    assert cache_files(cache), "nothing was kept"
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in cache_files(cache))
    s.reset_counts()
    m2 = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    pinned = s.bytes_sent()
    read_some(m2)
    # Only the request that pins the object at mount went to the server.
    assert s.bytes_sent() == pinned and len(s.log()) == 1, s.log()


def test_disk_cache_damaged_by_hand_is_fetched_again(big_root, serve, rmount, tmp_path):
    s = serve(big_root)
    cache = tmp_path / "cache"
    m = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    read_some(m)
    m.stop()
    files = cache_files(cache)
    for i, f in enumerate(files):
        data = bytearray(f.read_bytes())
        if i % 3 == 0:
            data[-1] ^= 0xFF          # a flipped byte in the block
        elif i % 3 == 1:
            data = data[: len(data) // 2]  # cut short
        else:
            data[20] ^= 0x01          # the key or header
        f.write_bytes(bytes(data))
    s.reset_counts()
    m2 = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    read_some(m2)
    assert s.bytes_sent() >= len(files) * 65536 // 2, "damaged blocks must come from the server"


def test_disk_cache_deleted_while_mounted(big_root, serve, rmount, tmp_path):
    s = serve(big_root)
    cache = tmp_path / "cache"
    m = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    read_some(m, 1 << 20)
    # Readahead may still be writing blocks into it: remove until it is gone.
    def gone():
        shutil.rmtree(cache, ignore_errors=True)
        return not cache.exists()
    ns.wait_until(gone, 30, "the cache directory to be removed")
    with open(Path(m.mnt) / "big", "rb") as f:
        f.seek(4 << 20)
        assert f.read(4 << 20) == big_bytes()[4 << 20: 8 << 20]
    m.check_alive()


def test_disk_cache_is_bounded(big_root, serve, rmount, tmp_path):
    s = serve(big_root)
    cache = tmp_path / "cache"
    m = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}",
               "-o", "cache_size=1M")
    read_some(m, 16 << 20)
    m.stop()  # readahead done: nothing is written any more
    total = sum(f.stat().st_size for f in cache_files(cache))
    assert total <= (1 << 20) + 65536 + 4096, total  # the bound, plus the block that went past it


def test_disk_cache_full_disk(big_root, serve, rmount, tmp_path):
    """A cache on a filesystem that fills up: blocks that do not fit are not kept, reads stay right."""
    cache = tmp_path / "small-fs"
    cache.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(cache)], capture_output=True)
    if r.returncode != 0:
        ns.skip_or_fail(f"cannot mount a small tmpfs for a full cache: {r.stderr.decode().strip()}")
    try:
        s = serve(big_root)
        m = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
        read_some(m, 8 << 20)
        m.stop()  # readahead done: nothing is being written
        assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")], "half-written files left"
    finally:
        subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def test_two_mounts_share_one_cache(big_root, serve, rmount, tmp_path):
    s = serve(big_root)
    cache = tmp_path / "cache"
    a = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    b = rmount(s.url("big.safetensors"), "-o", "block_size=65536", "-o", f"cache={cache}")
    out = []
    threads = [threading.Thread(target=lambda m=m: out.append(read_some(m, 16 << 20))) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(READER_TIMEOUT)
    assert len(out) == 2
    a.stop()
    b.stop()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------- pinning without a strong ETag

def test_weak_etag_catches_a_same_size_replacement(serve, rmount):
    """W/ ETags are no If-Match condition, but the daemon compares them: an object replaced by
    one of the same size behind a server that sends only a weak ETag gives EIO, not new bytes."""
    s = serve(etags="weak", last_modified=False)
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", stderr_ok=True)
    assert m.stderr() == ""  # a weak ETag is a validator: no warning
    assert second_ok(m)
    root = s.root
    new = {k: (v + 1).astype(v.dtype) for k, v in TWO.items()}
    save_file(new, str(root / "new.safetensors"))
    assert os.path.getsize(root / "new.safetensors") == os.path.getsize(root / "two.safetensors")
    s.replace("two.safetensors", (root / "new.safetensors").read_bytes())
    far = 1 << 20  # a block not read before
    assert read_in_thread(lambda: pread(Path(m.mnt) / "x" / "second", 4096, far)) == ("err", errno.EIO)
    assert "changed since it was mounted" in m.stderr()


def test_no_validator_is_said_at_mount(serve, rmount):
    s = serve(etags=False, last_modified=False)
    m = rmount(s.url("two.safetensors"), stderr_ok=True)
    lines = [line for line in m.stderr().splitlines() if line.strip()]
    assert len(lines) == 1 and "neither ETag nor Last-Modified" in lines[0], lines
    assert second_ok(m)


def test_trickle_is_cut(serve, rmount):
    """A server that sends a byte now and then is not a live transfer: cut after about
    read_timeout, then EIO (retries=0); the reader does not wait for the whole block."""
    s = serve()
    m = rmount(s.url("two.safetensors"), "-o", "block_size=65536", "-o", "read_timeout=2",
               "-o", "retries=0", stderr_ok=True)
    s.trickle("two.safetensors", after=100, every=0.5)
    assert read_in_thread(lambda: pread(Path(m.mnt) / "x" / "second", 4096, SECOND_OFF)) == ("err", errno.EIO)
    assert_metadata_answers(m)


def test_long_url_disk_cache_keys_are_whole(tmp_path, serve, rmount):
    """Keys of over a kilobyte (a long path) are kept whole: every block its own file."""
    root = tmp_path / "long"
    d = root
    for i in range(5):
        d = d / (f"d{i}" + "x" * 200)
    d.mkdir(parents=True)
    save_file(two_tensors(), str(d / "two.safetensors"))
    s = serve(root)
    rel = str((d / "two.safetensors").relative_to(root))
    cache = tmp_path / "cache"
    for _ in range(2):  # filled, then served from it
        m = rmount(s.url(rel), "-o", "block_size=4096", "-o", f"cache={cache}")
        data = (Path(m.mnt) / "x" / "second").read_bytes()
        assert data == TWO["x.second"].tobytes()
        m.stop()
    assert len(cache_files(cache)) > 100


def test_urls_with_a_query_are_not_kept_on_disk(serve, rmount, tmp_path):
    s = serve()
    cache = tmp_path / "cache"
    m = rmount(s.url("two.safetensors", "rev=a&X-Amz-Signature=abc"), "-o", f"cache={cache}")
    assert (Path(m.mnt) / "x" / "second").read_bytes() == TWO["x.second"].tobytes()
    m.stop()
    assert cache_files(cache) == []


def test_odd_userinfo_is_never_shown(tmp_path, fuse_environment):
    port = ns.free_port()
    for url in (f"http://alice:s3cr/et@127.0.0.1:{port}/m.safetensors",
                f"http://alice:s3cr?et@127.0.0.1:{port}/m.safetensors"):
        (tmp_path / "r").mkdir(exist_ok=True)
        rc, out, err = util.run_refused(url, tmp_path / "r", opts=("-o", "connect_timeout=2"))
        assert rc == 1 and "s3cr" not in err and "alice" not in err, err
