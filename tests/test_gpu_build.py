"""gpu_direct/: the C tests of build/test_gpu, that the daemon carries both GPU backends
(compiled and linked, their runtimes loaded only at run time), and the Python client of
/.control against a stand-in for the daemon (the daemon's side comes with fs/control.c)."""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.environ.get("TEST_BIN_DIR", os.path.join(ROOT, "build"))
TEST_GPU = os.path.join(BIN_DIR, "test_gpu")
DAEMON = os.environ.get("SAFETENSORSFS", os.path.join(ROOT, "build", "safetensorsfs"))


def _load_client():
    spec = importlib.util.spec_from_file_location(
        "safetensorsfs_client", os.path.join(ROOT, "scripts", "safetensorsfs_client.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


client = _load_client()


# ---- the C side ----

def test_c_unit_tests_pass():
    p = subprocess.run([TEST_GPU], capture_output=True, text=True, timeout=120)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.fullmatch(r"(\d+) passed, 0 failed", lines[-1])
    assert m and int(m.group(1)) > 100, p.stdout + p.stderr


def _symbols(path):
    out = subprocess.run(["nm", path], capture_output=True, text=True)
    return set(line.split()[-1] for line in out.stdout.splitlines() if line.strip())


def test_daemon_contains_both_gpu_backends():
    syms = _symbols(DAEMON)
    with open(DAEMON, "rb") as f:
        blob = f.read()
    if syms:  # not stripped: the backends' own tables and code
        for s in ("gd_cuda_runtime", "gd_hip_runtime", "gpu_upload", "gd_pipeline"):
            assert s in syms, s
    # The runtime calls each backend looks up when it loads its runtime.
    for name in (b"cudaIpcGetMemHandle", b"cudaMemcpyAsync", b"cudaHostAlloc", b"cuFileRead",
                 b"hipIpcGetMemHandle", b"hipMemcpyAsync", b"hipHostMalloc",
                 b"libcudart.so.12", b"libamdhip64.so", b"libcufile.so.0"):
        assert name + b"\0" in blob, name  # (the linker may share a tail of strings)


def test_daemon_links_no_gpu_runtime():
    """One binary for machines with and without a GPU: the runtimes are dlopen()ed."""
    if not shutil.which("readelf"):
        pytest.skip("no readelf")
    out = subprocess.run(["readelf", "-d", DAEMON], capture_output=True, text=True,
                         check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    assert needed, out
    for lib in needed:
        assert not re.match(r"lib(cudart|cuda|cufile|amdhip64|hsa-runtime64)\b", lib), lib


def test_missing_runtime_is_a_report_not_a_failure():
    env = dict(os.environ, SAFETENSORSFS_CUDART="/nonexistent/libcudart.so.99",
               SAFETENSORSFS_HIP="/nonexistent/libamdhip64.so.99")
    p = subprocess.run([TEST_GPU, "backends"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["cuda", "hip", "host"]
    assert lines[0].startswith("cuda 0 SAFETENSORSFS_CUDART=/nonexistent/libcudart.so.99: ")
    assert lines[1].startswith("hip 0 SAFETENSORSFS_HIP=/nonexistent/libamdhip64.so.99: ")
    assert lines[2] == "host 1 /dev/shm"


# ---- building without GPU headers, and the check of our declarations against them ----

GPU_SOURCES = sorted(f for f in os.listdir(os.path.join(ROOT, "gpu_direct")) if f.endswith(".c"))
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"]
CUDA_INCLUDE = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")


def _system_include_dirs():
    out = subprocess.run(["cc", "-E", "-Wp,-v", "-x", "c", os.devnull], capture_output=True,
                         text=True, check=True).stderr
    lines = out.split("#include <...> search starts here:\n", 1)[1].split("End of search")[0]
    return [line.strip() for line in lines.splitlines() if line.strip()]


def _include_dirs_without_gpu_headers(tmp_path):
    """The compiler's own include path, but with every GPU header out of it: each directory
    that holds a hip/ (Debian's libamdhip64-dev puts it in /usr/include) or a CUDA header is
    replaced by a copy made of links to everything else in it."""
    args = ["-nostdinc"]
    for i, d in enumerate(_system_include_dirs()):
        entries = os.listdir(d) if os.path.isdir(d) else []
        hidden = {"hip", "cuda_runtime_api.h", "cuda.h", "cufile.h", "driver_types.h"}
        if hidden & set(entries):
            shadow = tmp_path / ("include%d" % i)
            shadow.mkdir()
            for e in entries:
                if e not in hidden:
                    os.symlink(os.path.join(d, e), shadow / e)
            d = str(shadow)
        args += ["-isystem", d]
    return args


def test_gpu_backends_build_without_any_gpu_header(tmp_path):
    """The make rules for every gpu_direct object, with no CUDA toolkit (CUDA_HOME points
    nowhere) and no HIP header anywhere on the compiler's path: the backends compile from
    gpu_direct's own declarations."""
    hide = _include_dirs_without_gpu_headers(tmp_path)
    probe = tmp_path / "probe.c"
    probe.write_text("#if __has_include(<hip/hip_runtime_api.h>) || __has_include(<cuda.h>) || "
                     "__has_include(<cuda_runtime_api.h>)\n#error a GPU header is visible\n#endif\n"
                     "int probe;\n")
    p = subprocess.run(["cc"] + hide + ["-c", str(probe), "-o", str(tmp_path / "probe.o")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr  # else this test would prove nothing
    build = tmp_path / "build"
    objects = [str(build / "gpu_direct" / f.replace(".c", ".o")) for f in GPU_SOURCES]
    p = subprocess.run(["make", "-C", ROOT, "--no-print-directory", "-j4", "BUILD=%s" % build,
                        "CUDA_HOME=/nonexistent", "HIP_PATH=", "CC=cc " + " ".join(hide)]
                       + objects, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for o in objects:
        assert os.path.getsize(o) > 0, o
    # The backends are really there, not compiled out.
    assert "gd_cuda_runtime" in _symbols(str(build / "gpu_direct" / "cuda.o"))
    assert "gd_hip_runtime" in _symbols(str(build / "gpu_direct" / "hip.o"))


def _hip_header_found():
    p = subprocess.run(["cc", "-D__HIP_PLATFORM_AMD__", "-E", "-x", "c", "-"],
                       input="#include <hip/hip_runtime_api.h>\n", capture_output=True, text=True)
    return p.returncode == 0


# (which check file, the text in our header changed, what it becomes, the name the build names)
DRIFTS = [
    ("cuda", "gd_cudaMemcpyDeviceToHost = 2", "gd_cudaMemcpyDeviceToHost = 3",
     "cudaMemcpyDeviceToHost: cuda_abi.h differs"),
    ("cuda", "gd_cudaErrorNoDevice = 100", "gd_cudaErrorNoDevice = 110",
     "cudaErrorNoDevice: cuda_abi.h differs"),
    ("cuda", "#define gd_cudaHostAllocPortable 0x01", "#define gd_cudaHostAllocPortable 0x02",
     "cudaHostAllocPortable: cuda_abi.h differs"),
    ("cuda", "char reserved[gd_CUDA_IPC_HANDLE_SIZE];", "char reserved[gd_CUDA_IPC_HANDLE_SIZE];"
     " int extra;", "cudaIpcMemHandle_t: cuda_abi.h differs"),
    ("cuda", "(void **devPtr, size_t size)", "(void **devPtr, unsigned size)",
     "cudaMalloc: the prototype in cuda_abi.h differs"),
    ("cuda", "typedef struct CUstream_st *gd_cudaStream_t;", "typedef void *gd_cudaStream_t;",
     "cudaStream_t: cuda_abi.h differs"),
    ("cuda", "gd_cudaSuccess = 0,", "gd_cudaSuccess = 0, gd_cudaNegative = -1,",
     "cudaError_t: cuda_abi.h differs"),
    ("hip", "gd_hipErrorNotSupported = 801", "gd_hipErrorNotSupported = 802",
     "hipErrorNotSupported: hip_abi.h differs"),
    ("hip", "size_t sizeBytes, gd_hipMemcpyKind kind))", "size_t sizeBytes, int kind))",
     "hipMemcpy: the prototype in hip_abi.h differs"),
    ("hip", "X(const char *, hipGetErrorString", "X(char *, hipGetErrorString",
     "hipGetErrorString: the prototype in hip_abi.h differs"),
]


def _compile_check(tmp_path, which, old=None, new=None):
    src = tmp_path / "gpu_direct"
    shutil.copytree(os.path.join(ROOT, "gpu_direct"), src)
    header = src / ("%s_abi.h" % which)
    if old is not None:
        text = header.read_text()
        assert text.count(old) == 1, old  # the alteration must apply to exactly one place
        header.write_text(text.replace(old, new))
    return subprocess.run(["cc"] + CFLAGS + ["-I" + CUDA_INCLUDE, "-c",
                                             str(src / ("%s_abi_check.c" % which)),
                                             "-o", str(tmp_path / "check.o")],
                          capture_output=True, text=True)


def _need_real_header(which):
    if which == "cuda" and not os.path.exists(os.path.join(CUDA_INCLUDE, "cuda_runtime_api.h")):
        pytest.skip("no CUDA toolkit headers under %s" % CUDA_INCLUDE)
    if which == "hip" and not _hip_header_found():
        pytest.skip("no hip/hip_runtime_api.h")


@pytest.mark.parametrize("which", ["cuda", "hip"])
def test_abi_declarations_match_the_real_headers(tmp_path, which):
    _need_real_header(which)
    p = _compile_check(tmp_path, which)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("which,old,new,message", DRIFTS, ids=[d[3].split(":")[0] for d in DRIFTS])
def test_abi_drift_breaks_the_build(tmp_path, which, old, new, message):
    """Where the real header is found, a value, type or prototype of ours that differs from
    it stops the compile, naming what drifted."""
    _need_real_header(which)
    p = _compile_check(tmp_path, which, old, new)
    assert p.returncode != 0, "the drift went unnoticed: %s -> %s" % (old, new)
    assert message in p.stderr, p.stderr


# ---- the client ----

def _serve_once(sock, reply_chunks, got):
    """The daemon's half of one session: read one line, answer with reply_chunks."""
    buf = b""
    while not buf.endswith(b"\n"):
        data = sock.recv(4096)
        if not data:
            break
        buf += data
    got.append(buf)
    for chunk in reply_chunks:
        sock.sendall(chunk)
    sock.close()


def _session(line, reply_chunks):
    a, b = socket.socketpair()
    got = []
    t = threading.Thread(target=_serve_once, args=(b, reply_chunks, got))
    t.start()
    try:
        return client._exchange(a.fileno(), line), got
    finally:
        t.join(10)
        a.close()


def test_client_protocol_one_line_each_way():
    reply, got = _session("backends", [b'{"ok":true,"backends":[{"name":"host",',
                                       b'"devices":1}]}\n'])
    assert got == [b"backends\n"]
    assert reply["backends"] == [{"name": "host", "devices": 1}]


def test_client_command_opens_the_control_file(tmp_path):
    """command() through a real path: MOUNT/.control is a pseudo-terminal here (raw mode),
    which, like the daemon's file, answers what is written to it on the same descriptor."""
    import pty
    import tty
    try:
        master, slave = pty.openpty()
    except OSError as e:
        pytest.skip("no pseudo-terminal: %s" % e)
    try:
        tty.setraw(slave)
        os.symlink(os.ttyname(slave), tmp_path / ".control")
        got = []

        def daemon():
            buf = b""
            while not buf.endswith(b"\n"):
                buf += os.read(master, 4096)
            got.append(buf)
            os.write(master, b'{"ok":true,"buffers":[]}\n')

        t = threading.Thread(target=daemon)
        t.start()
        assert client.command(str(tmp_path), "list") == {"ok": True, "buffers": []}
        t.join(10)
        assert got == [b"list\n"]
    finally:
        os.close(master)
        os.close(slave)


def test_client_protocol_errors():
    with pytest.raises(client.ControlError, match="no tensor matches"):
        _session("upload x", [b'{"ok":false,"error":"no tensor matches x"}\n'])
    with pytest.raises(client.ControlError, match="not JSON"):
        _session("list", [b"hello\n"])
    with pytest.raises(client.ControlError, match="incomplete"):
        _session("list", [b'{"ok":true'])
    with pytest.raises(ValueError):
        client._exchange(-1, "list\nfree 1")


# A stand-in for the daemon's /.control: `upload` writes the tensors into a /dev/shm file
# laid out as the contract says (each at a multiple of 256 bytes), `free` unlinks it.
TENSORS = {
    "a.f32": ("F32", [2, 3], np.arange(6, dtype=np.float32).reshape(2, 3)),
    "b.bf16": ("BF16", [4], None),
    "c.scalar": ("I64", [], np.array(-7, dtype=np.int64)),
    "d.f8": ("F8_E4M3", [8], None),
    "e.mask": ("BOOL", [3], np.array([True, False, True])),
    "f.empty": ("U16", [0], np.zeros(0, dtype=np.uint16)),
    "g.f4": ("F4", [4], None),
}


class FakeDaemon:
    def __init__(self, tmp_path):
        import ml_dtypes
        self.values = {}
        for name, (dtype, shape, v) in TENSORS.items():
            if dtype == "BF16":
                v = np.array([1.5, -2.0, 3.25, 0.0], dtype=ml_dtypes.bfloat16)
            elif dtype == "F8_E4M3":
                v = np.linspace(-4, 4, 8).astype(ml_dtypes.float8_e4m3fn)
            elif dtype == "F4":
                v = np.array([0x21, 0x43], dtype=np.uint8)  # four values, two a byte
            self.values[name] = v
        self.commands = []
        self.files = {}
        self.n = 0

    def command(self, mountpoint, line):
        self.commands.append((mountpoint, line))
        words = line.split()
        if words[0] == "upload":
            device = "host"
            if words[1].startswith("device="):
                device = words[1][len("device="):]
            self.n += 1
            path = "/dev/shm/safetensorsfs-test-%d-%d" % (os.getpid(), self.n)
            tensors, at, blob = [], 0, bytearray()
            for name, (dtype, shape, _) in TENSORS.items():
                raw = self.values[name].tobytes()
                blob += b"\0" * (at - len(blob)) + raw
                tensors.append({"name": name, "offset": at, "nbytes": len(raw),
                                "dtype": dtype, "shape": shape})
                at = (at + len(raw) + 255) // 256 * 256
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, bytes(blob) + b"\0" * (at - len(blob)))
            os.close(fd)
            self.files[str(self.n)] = path
            return {"ok": True, "id": str(self.n), "device": device, "bytes": at,
                    "seconds": 0.001, "handle": path, "tensors": tensors}
        if words[0] == "free":
            os.unlink(self.files.pop(words[1]))
            return {"ok": True}
        raise AssertionError(line)

    def cleanup(self):
        for path in self.files.values():
            os.unlink(path)


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    pytest.importorskip("ml_dtypes")
    d = FakeDaemon(tmp_path)
    monkeypatch.setattr(client, "command", d.command)
    yield d
    d.cleanup()


def test_client_load_host_maps_every_tensor(daemon):
    got = client.load("/mnt/model", ["a", "b/bf16", "c/*"], device="host")
    assert daemon.commands[0] == ("/mnt/model", "upload device=host a b/bf16 c/*")
    # A host buffer is freed once mapped; the mapping stays valid.
    assert daemon.commands[1] == ("/mnt/model", "free 1") and not daemon.files
    assert list(got) == list(TENSORS)
    assert got.id == "1" and got.device == "host" and not got.kept
    for name, (dtype, shape, _) in TENSORS.items():
        a, want = got[name], daemon.values[name]
        if dtype == "F4":
            assert a.dtype == np.uint8 and a.tobytes() == want.tobytes()
            continue
        assert a.dtype == want.dtype, name
        assert list(a.shape) == shape, name
        assert a.tobytes() == want.tobytes(), name
        assert not a.flags.writeable


def test_client_load_keep_and_default_device(daemon):
    # No device named: the mount's -o gpu= default decides (this fake daemon's is host).
    got = client.load("/mnt/model", "a", keep=True)
    assert daemon.commands == [("/mnt/model", "upload a")]
    assert got.kept and daemon.files
    client.free("/mnt/model", got.id)
    assert not daemon.files
    client.upload("/mnt/model", ["a"], device=None)
    assert daemon.commands[-1] == ("/mnt/model", "upload a")


def test_client_refuses_bad_words(daemon):
    with pytest.raises(ValueError):
        client.upload("/mnt/model", ["a b"])
    with pytest.raises(ValueError):
        client.upload("/mnt/model", [])
    with pytest.raises(ValueError):
        client.upload("/mnt/model", ["a"], device="cuda:0 x")
    assert not daemon.commands


def test_client_command_line(daemon, capsys):
    assert client.main(["/mnt/model", "a", "c", "--device", "host"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a.f32 float32 [2,3] host"
    assert out[1] == "b.bf16 bfloat16 [4] host"
    assert out[2] == "c.scalar int64 [] host"
    assert out[5] == "f.empty uint16 [0] host"
    assert not daemon.files


def test_client_cuda_needs_the_gpu_stack(daemon):
    """Where cupy, torch and a GPU are, the cuda path is exercised by scripts/gpu-check.sh
    against a real IPC handle; here only that a reply for hip is refused cleanly."""
    with pytest.raises(client.ControlError, match="hip"):
        client.arrays({"device": "hip:0", "handle": "00" * 64, "bytes": 0, "tensors": []})
