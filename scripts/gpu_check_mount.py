#!/usr/bin/env python3
"""The end-to-end part of scripts/gpu-check.sh: a real mount, uploads through its /.control.

    gpu_check_mount.py MOUNTPOINT DAEMON_PID MODEL DEVICE RESULT_FILE

The daemon (mounted by gpu-check.sh on MODEL, -o gpu=cuda) does the uploads; this process is
the "other process" that maps them through scripts/safetensorsfs_client.py. Checks, each a
PASS/FAIL line in RESULT_FILE:
  - `backends` lists the GPU;
  - `upload model` (every tensor) equals safetensors.torch.load_file(device=DEVICE), byte for byte;
  - one rank's row slice and one column slice (views) equal torch's slicing of the same tensor;
  - a third process, started fresh, maps the buffer from the reply alone and reads a tensor;
  - `free` gives the memory back, unmount gives back what is left, the daemon exits 0.
Figures: the daemon's upload GB/s (its own "seconds"), the client's wall time, the third
process's map-and-read time. Exit 3 if a check failed.
"""

import gc
import json
import os
import subprocess
import sys
import time

mnt, pid, model, device, result = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensorsfs_client as client  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

out = open(result, "a")
failures = 0
index = int(device.split(":")[1]) if ":" in device else 0
torch.cuda.set_device(index)
torch.zeros(1, device=device)


def say(*a):
    line = " ".join(str(x) for x in a)
    print(line, file=out, flush=True)
    print(line, file=sys.stderr, flush=True)


def check(ok, text):
    global failures
    failures += not ok
    say("%s  %s" % ("PASS" if ok else "FAIL", text))


def free_gib():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(index)[0] / (1 << 30)


def running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def same(a, b):
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


# The third process: maps a reply it reads from stdin, reads one tensor, says how long it took
# once its CUDA context was up (and in all, the context and imports included).
THIRD = r"""
import json, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import cupy, torch
import safetensorsfs_client as client
reply = json.loads(sys.stdin.read())
name = sys.argv[2]
index = int(reply["device"].split(":")[1])
torch.cuda.set_device(index); cupy.cuda.Device(index).use(); cupy.zeros(1)
torch.zeros(8, device=reply["device"], dtype=torch.bfloat16).float().sum().item()  # kernels loaded
t0 = time.perf_counter()
ts = client.arrays(reply)
s = float(ts[name].float().sum().item())
t1 = time.perf_counter()
print(json.dumps({"map_read_ms": (t1 - t0) * 1e3, "process_ms": (t1 - t_start) * 1e3, "sum": s}))
"""

try:
    be = client.backends(mnt)
    say("      backends: %s" % json.dumps(be))
    check(any(b["name"] == "cuda" and b["devices"] > 0 for b in be), "the mount's backends list cuda with a device")

    ref = safetensors.torch.load_file(model, device=device)
    # The daemon's CUDA context comes with its first upload: take it before counting memory.
    first = client.upload(mnt, ["model/norm/scale"])
    client.free(mnt, first["id"])
    base_free = free_gib()

    # every tensor, the default device of -o gpu=cuda
    t0 = time.perf_counter()
    loaded = client.load(mnt, ["model"])
    wall = time.perf_counter() - t0
    nbytes = sum(int(t.numel()) * t.element_size() for t in ref.values())
    bad = [n for n in ref if n not in loaded or not same(loaded[n], ref[n])]
    check(not bad and len(loaded) == len(ref) and loaded.device == device,
          "upload of the whole model through the mount's /.control to %s: %d tensors equal "
          "load_file's byte for byte%s" % (loaded.device, len(loaded), (" (differ: %s)" % bad[:5]) if bad else ""))
    say("      the daemon's upload: %.2f GB/s (%.3f s for %d bytes of tensor data); the client's "
        "load (command, upload, map) %.3f s = %.2f GB/s"
        % (nbytes / loaded.seconds / 1e9, loaded.seconds, nbytes, wall, nbytes / wall / 1e9))
    used = base_free - free_gib()
    again = client.upload(mnt, ["model"])
    say("      a second upload of the whole model: %.2f GB/s (%.3f s)" % (nbytes / again["seconds"] / 1e9, again["seconds"]))
    client.free(mnt, again["id"])
    check(abs(used * (1 << 30) - loaded.bytes) < (64 << 20),
          "GPU memory taken by the buffer: %.2f GiB for %d bytes" % (used, loaded.bytes))

    # a third process maps the same buffer from the reply alone
    # (list has no handle or offsets: the reply travels as the uploader got it)
    up = client.upload(mnt, ["model/layers/0"])
    name = sorted(t["name"] for t in up["tensors"])[0]
    p = subprocess.run([sys.executable, "-c", THIRD, HERE, name],
                       input=json.dumps(up), capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        r = json.loads(p.stdout.strip().splitlines()[-1])
        want = float(ref[name].float().sum().item())
        check(r["sum"] == want and r["map_read_ms"] < 50,
              "a fresh process maps an upload from its reply and reads %s in %.1f ms once its "
              "CUDA context is up (%.0f ms with imports and context); sum %r, load_file's %r"
              % (name, r["map_read_ms"], r["process_ms"], r["sum"], want))
    else:
        check(False, "third process: exit %d: %s" % (p.returncode, p.stderr.strip()[-400:]))
    client.free(mnt, up["id"])

    # the C example client: builds against the CUDA toolkit, maps, prints the first bytes
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    exe = os.path.join(os.path.dirname(result), "ipc_client")
    b = subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "ipc_client.c"),
                        "-I" + cuda + "/include", "-L" + cuda + "/lib64", "-Wl,-rpath," + cuda + "/lib64",
                        "-lcudart"], capture_output=True, text=True)
    if b.returncode != 0:
        check(False, "scripts/ipc_client.c builds: %s" % b.stderr.strip()[-300:])
    else:
        c = subprocess.run([exe, mnt, "--device", device, name.replace(".", "/")],
                           capture_output=True, text=True, timeout=60)
        hexes = c.stdout.split("bytes:", 1)[-1].split()
        want = ref[name].reshape(-1).view(torch.uint8)[:len(hexes)].cpu().tolist()
        check(c.returncode == 0 and hexes and [int(x, 16) for x in hexes] == want,
              "scripts/ipc_client.c (cc, -lcudart) uploads %s, maps it by its handle and reads "
              "the tensor's first %d bytes%s" % (name, len(hexes),
                                                  "" if c.returncode == 0 else ": " + c.stderr.strip()))

    def say_speed(what, got, seconds):
        nbytes = got.numel() * got.element_size()
        if seconds:
            say("      %s: %d bytes in %.4f s, %.2f GB/s (the daemon's own time)"
                % (what, nbytes, seconds, nbytes / seconds / 1e9))

    # one rank's slices: rows of one tensor, columns of another (a gathered view)
    w = sorted(n for n, t in ref.items() if t.dim() == 2 and t.shape[0] >= 1024 and t.shape[1] >= 1024)[0]
    rows, cols = ref[w].shape
    r0, r1, c0, c1 = rows // 8 * 3, rows // 8 * 4, cols // 8 * 3, cols // 8 * 4
    path = w.replace(".", "/")
    try:
        sl = client.load(mnt, ["%s[%d:%d]" % (path, r0, r1)], device=device)
        got = list(sl.values())[0]
        check(same(got, ref[w][r0:r1]), "row slice %s[%d:%d] uploaded to %s equals torch's slice"
              % (path, r0, r1, device))
        say_speed("row slice", got, sl.seconds)
        client.free(mnt, sl.id)
    except Exception as e:
        check(False, "row slice upload: %s" % e)
    try:
        sl = client.load(mnt, ["%s[:,%d:%d]" % (path, c0, c1)], device=device)
        got = list(sl.values())[0]
        check(same(got, ref[w][:, c0:c1]), "column slice %s[:,%d:%d] uploaded to %s equals torch's slice"
              % (path, c0, c1, device))
        say_speed("column slice (one range per row, carried side by side)", got, sl.seconds)
        client.free(mnt, sl.id)
    except Exception as e:
        check(False, "column slice upload: %s" % e)

    # bad requests change nothing
    n_before = len(client.list_buffers(mnt))
    for cmd in ("upload device=cuda:99 model", "upload no/such/tensor", "free 999999"):
        try:
            client.command(mnt, cmd)
            check(False, "%r was refused" % cmd)
        except client.ControlError as e:
            check(len(client.list_buffers(mnt)) == n_before, "%r refused (%s), nothing changed" % (cmd, e))

    # free, then unmount with a buffer still live
    got = sl = None
    keep_id = loaded.id
    del loaded
    gc.collect()
    torch.cuda.synchronize()
    client.free(mnt, keep_id)
    after_free = free_gib()
    check(abs(after_free - base_free) < 0.0625, "free gives the GPU memory back (%.2f GiB free, %.2f before the upload)"
          % (after_free, base_free))
    last = client.upload(mnt, ["model/layers/1"])
    subprocess.run(["umount", mnt], check=True, timeout=60)
    # The daemon is gpu-check.sh's child, which reads its exit status; here, wait for it to go.
    for _ in range(300):
        if not running(pid):
            break
        time.sleep(0.1)
    gone = not running(pid)
    time.sleep(0.5)
    after_umount = free_gib()
    check(after_umount > base_free - 0.0625 and gone,
          "unmount with a %d-byte buffer live frees it and the daemon exits (%.2f GiB free, "
          "%.2f before; the daemon's context went too)" % (last["bytes"], after_umount, base_free))
except Exception as e:
    import traceback
    traceback.print_exc()
    check(False, "mount check stopped: %s: %s" % (type(e).__name__, e))

sys.exit(3 if failures else 0)
