#!/usr/bin/env bash
# gpu-check.sh: gpu_direct/ on a real GPU, in one go, in a few minutes, without FUSE.
#
# For a lent GPU machine (NVIDIA, Python 3 with torch, safetensors and cupy; nvidia-cufile
# if GPUDirect Storage is to be tried; no libfuse needed). From the repository root:
#
#     scripts/gpu-check.sh
#
# 1. Builds gpu_direct/ with the C test (tests/c/test_gpu.c) and scripts/gpu_bench.c using
#    cc alone, against the CUDA headers it finds (/usr/local/cuda or the pip wheels'); HIP
#    where its headers are, else a stub that reports "not built here".
# 2. Runs the C test, which on a machine with a GPU also uploads to it and reads every byte back.
# 3. Writes a BF16 model of GPU_CHECK_GIB GiB (default 4.25) with safetensors.torch.save_file.
# 4. Uploads it through the cuda backend (gpu_bench, as fs/control.c would: each tensor at a
#    multiple of 256 bytes), and in a second process maps the buffer by its IPC handle through
#    scripts/safetensorsfs_client.py and compares every byte with what
#    safetensors.torch.load_file(..., device="cuda") loads from the same file.
# 5. Measures GB/s (1 GB = 1e9 bytes of tensor data), side by side: our upload;
#    safetensors.torch.load_file(device="cuda"); one pinned copy of the same bytes (the bus
#    limit, through torch and through the CUDA runtime directly); the second process mapping
#    the uploaded weights through the client. The file is in the page cache for all of them.
# 6. Mounts the model with the real daemon (-o gpu=cuda; .devcarry/ from `make devcarry`
#    brings it and its libraries) and runs scripts/gpu_check_mount.py: uploads through
#    /.control (whole model, a rank's slices), a fresh process mapping one, bad requests,
#    free and unmount giving the GPU memory back.
#
# Results: $OUT/gpu-check.txt and $OUT/gpu-check-logs.tar.gz when OUT is set, else
# ./gpu-check.txt and ./gpu-check-logs/. Exit status 0 iff every check passed.
#
# Settings (environment): PYTHON (python3), CC (cc), GPU_CHECK_DIR (scratch, default
# /tmp/safetensorsfs-gpu-check; the model is kept there for reruns), GPU_CHECK_GIB,
# GPU_CHECK_DEVICE (cuda:0), CUDA_HOME. GPU_CHECK_DEVICE=host GPU_CHECK_GIB=0.5 is a dry run
# on a machine without a GPU (torch on the CPU, no cupy): every step but the GPU's.
set -euo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
CC=${CC:-cc}
WORK=${GPU_CHECK_DIR:-/tmp/safetensorsfs-gpu-check}
GIB=${GPU_CHECK_GIB:-4.25}
DEVICE=${GPU_CHECK_DEVICE:-cuda:0}
if [ -n "${OUT:-}" ]; then
	RESULT=$OUT/gpu-check.txt
	LOGS=$WORK/logs # archived into $OUT/gpu-check-logs.tar.gz at the end
else
	RESULT=$PWD/gpu-check.txt
	LOGS=$PWD/gpu-check-logs
fi
mkdir -p "$WORK" "$LOGS"
: >"$RESULT"

STEP=start
FAILURES=0
FINISHED=
say() { printf '%s\n' "$*" | tee -a "$RESULT"; }
step() {
	STEP=$1
	printf '[%4ss] %s\n' $(($(date +%s) - START)) "$1" | tee -a "$LOGS/steps.log" >&2
}
on_exit() {
	rc=$?
	if [ $rc -ne 0 ] && [ -z "$FINISHED" ]; then
		say "FAILED at step '$STEP' (exit $rc) after $(($(date +%s) - START)) s; logs in $LOGS"
	fi
	cp -f "$WORK"/*.log "$LOGS"/ 2>/dev/null || true
	# The device tool brings back a few files only: the logs travel as one archive.
	[ -z "${OUT:-}" ] || tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")" 2>/dev/null || true
}
trap on_exit EXIT
check() { # check NAME COMMAND...: runs it, records PASS/FAIL, goes on either way
	local name=$1
	shift
	if "$@"; then
		say "PASS  $name"
	else
		say "FAIL  $name (exit $?)"
		FAILURES=$((FAILURES + 1))
	fi
}

say "safetensorsfs gpu-check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n)"
say "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"

# ---- 1. the machine ----
step "machine"
if command -v nvidia-smi >/dev/null; then
	say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader 2>/dev/null | head -1)"
else
	say "gpu: nvidia-smi not found"
fi
say "cpus: $(nproc), memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
"$PY" - >>"$RESULT" 2>&1 <<'EOF' || true
import sys
print("python:", sys.version.split()[0])
for m in ("torch", "safetensors", "cupy", "numpy"):
    try:
        mod = __import__(m)
        extra = ""
        if m == "torch":
            extra = " (CUDA %s, %s)" % (mod.version.cuda, mod.cuda.get_device_name(0) if mod.cuda.is_available() else "no GPU visible")
        print("%s: %s%s" % (m, mod.__version__, extra))
    except Exception as e:
        print("%s: not usable (%s)" % (m, e))
EOF

# ---- 2. where the CUDA headers and libraries are ----
step "locate CUDA"
"$PY" - >"$WORK/locate.sh" 2>"$WORK/locate.log" <<'EOF'
import glob, os, re, shlex, site, subprocess, sysconfig

roots = []
try:
    import nvidia
    roots += [p for p in nvidia.__path__]
except Exception:
    pass
for sp in site.getsitepackages() + [site.getusersitepackages(), sysconfig.get_paths()["purelib"],
                                     sysconfig.get_paths()["platlib"]]:
    d = os.path.join(sp, "nvidia")
    if os.path.isdir(d) and d not in roots:
        roots.append(d)
torch_major, torch_lib = None, None
try:
    import torch
    if torch.version.cuda:
        torch_major = torch.version.cuda.split(".")[0]
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
except Exception:
    pass
homes = [h for h in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h]
inc = [os.path.join(h, "include") for h in homes]
inc += [os.path.join(h, "targets", "x86_64-linux", "include") for h in homes]
lib = [os.path.join(h, d) for h in homes for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
for r in roots:
    inc += sorted(glob.glob(os.path.join(r, "*", "include")))
    lib += sorted(glob.glob(os.path.join(r, "*", "lib")))
if torch_lib:
    lib.append(torch_lib)

def first_dir(header):
    for d in inc:
        if os.path.isfile(os.path.join(d, header)):
            return d
    return ""

libs = []
for d in lib:
    libs += glob.glob(os.path.join(d, "lib*.so*"))
try:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    libs += re.findall(r"=> (\S+)", out)
except Exception:
    pass

def best_cudart():
    found = {}
    for p in libs:
        m = re.fullmatch(r"libcudart\.so\.(\d+)(\.\d+)*", os.path.basename(p))
        if m and os.path.exists(p):
            found.setdefault(int(m.group(1)), p)
    if not found:
        return ""
    if torch_major and int(torch_major) in found:
        return found[int(torch_major)]
    return found[max(found)]

cufile = next((p for p in libs if os.path.basename(p) == "libcufile.so.0" and os.path.exists(p)), "")
vals = {
    "CUDA_RT_INC": first_dir("cuda_runtime_api.h"),
    "CUDA_DRV_INC": first_dir("cuda.h"),
    "CUFILE_INC": first_dir("cufile.h"),
    "CUDART_LIB": best_cudart(),
    "CUFILE_LIB": cufile,
    "HIP_INC": next((d for d in ("/usr/include", "/opt/rocm/include")
                     if os.path.isfile(os.path.join(d, "hip", "hip_runtime_api.h"))), ""),
}
for k, v in vals.items():
    print("%s=%s" % (k, shlex.quote(v)))
EOF
# shellcheck disable=SC1091
. "$WORK/locate.sh"
say "cuda headers: ${CUDA_RT_INC:-none} (cuda.h: ${CUDA_DRV_INC:-none}; cufile.h: ${CUFILE_INC:-none, cufile_abi.h used})"
say "cuda runtime: ${CUDART_LIB:-none found}; libcufile: ${CUFILE_LIB:-none found}; hip headers: ${HIP_INC:-none (hip stubbed)}"
if [ -z "$CUDA_RT_INC" ] || [ -z "$CUDA_DRV_INC" ]; then
	say "no CUDA headers (cuda_runtime_api.h and cuda.h) found: set CUDA_HOME"
	exit 1
fi
[ -n "$CUDART_LIB" ] && export SAFETENSORSFS_CUDART=$CUDART_LIB
[ -n "$CUFILE_LIB" ] && export SAFETENSORSFS_CUFILE=$CUFILE_LIB
export CUFILE_LOGFILE_PATH=$WORK/cufile.log

# ---- 3. build, without FUSE ----
step "build"
BUILD=$WORK/build
mkdir -p "$BUILD"
CFLAGS_COMMON=(-O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -pthread -I"$REPO/gpu_direct")
CUDA_FLAGS=(-I"$CUDA_RT_INC" -I"$CUDA_DRV_INC")
[ -n "$CUFILE_INC" ] && CUDA_FLAGS+=(-I"$CUFILE_INC")
# hip.c needs HIP's headers; without them a stub stands in that reports hip as missing.
cat >"$BUILD/hip_stub.c" <<'EOF'
/* gpu-check.sh: this machine has no HIP headers; the hip backend reports itself missing. */
#include <errno.h>
#include "internal.h"
static int no_hip(char *err, size_t errlen)
{
	return gd_fail(-ENODEV, err, errlen, "not built on this machine (no HIP headers)");
}
const struct gd_runtime gd_hip_runtime = { .kind = GPU_HIP, .name = "hip", .load = no_hip };
EOF
build() {
	local f o
	LIBOBJ=()
	rm -f "$BUILD"/*.o "$BUILD/gpu_bench" "$BUILD/test_gpu"
	for f in "$REPO"/gpu_direct/*.c; do
		o=$BUILD/$(basename "$f" .c).o
		case $(basename "$f") in
		cuda.c) $CC "${CFLAGS_COMMON[@]}" "${CUDA_FLAGS[@]}" -c "$f" -o "$o" || return 1 ;;
		hip.c)
			if [ -n "$HIP_INC" ]; then
				$CC "${CFLAGS_COMMON[@]}" -D__HIP_PLATFORM_AMD__ -I"$HIP_INC" -c "$f" -o "$o" || return 1
			else
				$CC "${CFLAGS_COMMON[@]}" -c "$BUILD/hip_stub.c" -o "$o" || return 1
			fi
			;;
		*) $CC "${CFLAGS_COMMON[@]}" -c "$f" -o "$o" || return 1 ;;
		esac
		LIBOBJ+=("$o")
	done
	$CC "${CFLAGS_COMMON[@]}" -c "$REPO/scripts/gpu_bench.c" -o "$BUILD/gpu_bench.o" || return 1
	$CC "${CFLAGS_COMMON[@]}" -c "$REPO/tests/c/test_gpu.c" -o "$BUILD/test_gpu.o" || return 1
	$CC -pthread "$BUILD/gpu_bench.o" "${LIBOBJ[@]}" -ldl -o "$BUILD/gpu_bench" || return 1
	$CC -pthread "$BUILD/test_gpu.o" "${LIBOBJ[@]}" -ldl -o "$BUILD/test_gpu" || return 1
}
if ! build >"$WORK/build.log" 2>&1; then
	tail -30 "$WORK/build.log" | tee -a "$RESULT"
	exit 1
fi
say "built: $BUILD/gpu_bench, $BUILD/test_gpu ($(grep -c 'warning:' "$WORK/build.log" || true) warnings)"
"$BUILD/gpu_bench" backends | tee -a "$RESULT"

# ---- 4. the C tests, on the GPU ----
step "C tests"
set +e
timeout 60 "$BUILD/test_gpu" >"$WORK/test_gpu.log" 2>&1
set -e
check "C tests (tests/c/test_gpu.c) on this GPU: $(tail -1 "$WORK/test_gpu.log")" \
	grep -q "^[0-9]* passed, 0 failed$" "$WORK/test_gpu.log"
grep '^# \|^FAIL' "$WORK/test_gpu.log" | head -20 | tee -a "$RESULT" || true

# ---- 5. the model, the uploads, the comparisons (Python drives gpu_bench) ----
step "model, uploads and measurements"
set +e
timeout 300 "$PY" - "$REPO" "$WORK" "$BUILD/gpu_bench" "$GIB" "$DEVICE" "$RESULT" <<'EOF' 2>&1 | tee "$WORK/measure.log" >&2
import json, os, struct, subprocess, sys, time

repo, work, bench, gib, device, result = sys.argv[1:7]
gib = float(gib)
sys.path.insert(0, os.path.join(repo, "scripts"))
out = open(result, "a")
failures = 0


def say(*a):
    line = " ".join(str(x) for x in a)
    print(line, file=out, flush=True)
    print(line, file=sys.stderr, flush=True)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


import torch
import safetensors.torch

# GPU_CHECK_DEVICE=host: a dry run of this script on a machine without a GPU (small GIB).
on_gpu = device != "host"
tdev = device if on_gpu else "cpu"
dev_index = int(device.split(":")[1]) if ":" in device else 0


def sync():
    if on_gpu:
        torch.cuda.synchronize()


if on_gpu:
    torch.cuda.set_device(dev_index)
    torch.zeros(1, device=device)  # the CUDA context, before any timing

# -- the model: big BF16 matrices, and odd-sized ones so that offsets are not all aligned --
model = os.path.join(work, "model-%.2fGiB.safetensors" % gib)
shapes = []
target = int(gib * (1 << 30))
i = total = 0
while total < target:
    if i % 5 == 4:
        shape = (4099, 1531)          # 12.5 MB, odd
    elif i % 7 == 6:
        shape = (3, 5, 7)              # tiny
    else:
        shape = (8192, 7168)          # 117 MB
    shapes.append(("model.layers.%d.w%d" % (i // 3, i % 3), shape))
    total += 2 * int(torch.Size(shape).numel())
    i += 1
shapes.append(("model.norm.scale", ()))   # a scalar
shapes.append(("model.empty", (0, 16)))   # an empty tensor
stamp = model + ".done"
if not (os.path.exists(stamp) and open(stamp).read() == repr(shapes)):
    t0 = time.time()
    g = torch.Generator(device=tdev).manual_seed(1234)
    tensors = {n: torch.randn(s, generator=g, device=tdev, dtype=torch.float32)
               .to(torch.bfloat16).cpu() for n, s in shapes}
    safetensors.torch.save_file(tensors, model)
    del tensors
    open(stamp, "w").write(repr(shapes))
    log("model written in %.1f s" % (time.time() - t0))
size = os.path.getsize(model)

# -- its tensors, laid out as fs/control.c lays out an upload: each at a multiple of 256 --
with open(model, "rb") as f:
    hlen = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(hlen))
header.pop("__metadata__", None)
base = 8 + hlen
items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
tensors, at, data_bytes = [], 0, 0
with open(os.path.join(work, "ranges.txt"), "w") as f:
    for name, t in items:
        b, e = t["data_offsets"]
        f.write("%d %d %d %s\n" % (base + b, e - b, at, name))
        tensors.append({"name": name, "offset": at, "nbytes": e - b, "dtype": t["dtype"],
                        "shape": t["shape"]})
        data_bytes += e - b
        at = (at + (e - b) + 255) // 256 * 256
say("model: %s, %d tensors, %d bytes of tensor data (%.2f GiB), BF16, file %d bytes"
    % (model, len(tensors), data_bytes, data_bytes / (1 << 30), size))
# Into the page cache, for every contender alike.
with open(model, "rb") as f:
    while f.read(64 << 20):
        pass

results = {}


def run_bench(args, hold=False, timeout=180):
    """Runs gpu_bench upload; returns its JSON events (and, holding, the live process)."""
    cmd = [bench, "upload", device, model, os.path.join(work, "ranges.txt")] + args
    log("$ " + " ".join(cmd))
    if not hold:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        log(p.stdout.strip())
        if p.returncode != 0:
            raise RuntimeError("gpu_bench %s: exit %s: %s"
                               % (" ".join(args), p.returncode, p.stderr.strip()))
        return [json.loads(l) for l in p.stdout.splitlines()], None
    # Its stderr goes to the log; the buffer lives until a line on its stdin.
    p = subprocess.Popen(cmd + ["--hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    events = []
    for line in p.stdout:
        log("  " + line.strip())
        events.append(json.loads(line))
        if events[-1]["event"] == "buffer":
            return events, p
    p.wait()
    raise RuntimeError("gpu_bench %s --hold: exit %s" % (" ".join(args), p.returncode))


def uploads(events):
    return [e for e in events if e["event"] == "upload"]


def gbps(seconds):
    return data_bytes / seconds / 1e9


# -- our upload: the default path, three runs, every byte read back and compared with the file --
try:
    ev, _ = run_bench(["--repeat", "3", "--verify"])
    up = uploads(ev)
    ver = [e for e in ev if e["event"] == "verify"][0]
    results["ours"] = up
    say("PASS  our upload, read back and compared with the file byte for byte (%d bytes, path %s)"
        % (ver["bytes"], up[0]["path"]) if ver["ok"] else "FAIL  our upload: bytes differ")
    failures += not ver["ok"]
    if up[0]["note"]:
        say("      (%s)" % up[0]["note"])
except Exception as e:
    say("FAIL  our upload: %s" % e)
    failures += 1

# -- readers and GPUDirect Storage variants (figures only, plus a byte check of the cuFile path) --
VARIANTS = (("a new buffer each run, as the daemon", ["--fresh"]),
            ("512 KiB pieces", ["--chunk", str(512 << 10)]),
            ("1 MiB pieces", ["--chunk", str(1 << 20)]),
            ("4 MiB pieces", ["--chunk", str(4 << 20)]),
            ("8 MiB pieces", ["--chunk", str(8 << 20)]),
            ("4 readers", ["--readers", "4"]), ("16 readers", ["--readers", "16"]),
            ("cuFile (forced, compat mode where no nvidia-fs)", ["--gds", "force", "--verify"]))
for label, args in VARIANTS:
    try:
        ev, _ = run_bench(args + ["--repeat", "3"])
        results[label] = uploads(ev)
        ver = [e for e in ev if e["event"] == "verify"]
        if ver:
            ok = ver[0]["ok"]
            failures += not ok
            say("%s  %s upload, byte for byte (path %s%s)" % ("PASS" if ok else "FAIL", label,
                results[label][0]["path"], ", " + results[label][0]["note"] if results[label][0]["note"] else ""))
    except Exception as e:
        say("note  %s: %s" % (label, e))

# -- a second process maps the buffer through the client; every byte against load_file --
try:
    import safetensorsfs_client as client
    if on_gpu:
        import cupy
        cupy.cuda.Device(dev_index).use()
        cupy.zeros(1)  # cupy's context too, before timing
    ev, holder = run_bench(["--repeat", "1"], hold=True)
    buf = [e for e in ev if e["event"] == "buffer"][0]
    reply = {"ok": True, "id": "1", "device": device, "bytes": buf["bytes"], "seconds": 0,
             "handle": buf["handle"], "tensors": tensors}
    t0 = time.perf_counter()
    mapped = client.arrays(reply)
    sync()
    t_map = time.perf_counter() - t0
    results["map"] = t_map

    # safetensors' own load to the GPU, timed (first, and best of 3), kept for the comparison
    times = []
    ref = None
    for k in range(3):
        ref = None
        if on_gpu:
            torch.cuda.empty_cache()
        sync()
        t0 = time.perf_counter()
        ref = safetensors.torch.load_file(model, device=tdev)
        sync()
        times.append(time.perf_counter() - t0)
    results["safetensors"] = times

    t0 = time.perf_counter()
    bad = []
    for t in tensors:
        a, b = mapped[t["name"]], ref[t["name"]]
        b_bytes = b.reshape(-1).view(torch.uint8)
        if on_gpu:
            same_kind = a.dtype == b.dtype and a.device == b.device
            same = same_kind and torch.equal(a.reshape(-1).view(torch.uint8), b_bytes)
        else:  # numpy arrays over /dev/shm
            same_kind = str(a.dtype) == str(b.dtype).replace("torch.", "")
            same = same_kind and a.tobytes() == b_bytes.numpy().tobytes()
        if not same_kind or tuple(a.shape) != tuple(b.shape):
            bad.append("%s: %s %s vs %s %s" % (t["name"], a.dtype, tuple(a.shape), b.dtype,
                                              tuple(b.shape)))
        elif not same:
            bad.append(t["name"])
    sync()
    t_cmp = time.perf_counter() - t0
    if bad:
        failures += 1
        say("FAIL  %d of %d tensors differ from load_file's: %s" % (len(bad), len(tensors), ", ".join(bad[:5])))
    else:
        say("PASS  every byte of all %d tensors, mapped in a second process through the client,"
            " equals safetensors.torch.load_file(device=%r) (compared in %.2f s)"
            % (len(tensors), tdev, t_cmp))
    del mapped, ref
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(60)
except Exception as e:
    import traceback
    traceback.print_exc()
    say("FAIL  second-process mapping / comparison: %s: %s" % (type(e).__name__, e))
    failures += 1

# -- the bus limit: the same bytes from one pinned buffer, one copy --
try:
    if not on_gpu:
        raise RuntimeError("no bus on host")
    pinned = torch.empty(data_bytes, dtype=torch.uint8, pin_memory=True)
    with open(model, "rb") as f:
        f.seek(base)
        f.readinto(memoryview(pinned.numpy()))
    dst = torch.empty(data_bytes, dtype=torch.uint8, device=device)
    times = []
    for k in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(pinned, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    results["bus_torch"] = times
    del pinned, dst
except Exception as e:
    say("note  torch pinned copy: %s" % e)
try:
    if not on_gpu:
        raise RuntimeError("no bus on host")
    p = subprocess.run([bench, "bus", device, model, str(data_bytes), "--repeat", "3"],
                       capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        results["bus_c"] = [json.loads(l)["seconds"] for l in p.stdout.splitlines()]
    else:
        say("note  gpu_bench bus: %s" % p.stderr.strip())
except Exception as e:
    say("note  gpu_bench bus: %s" % e)

# -- the figures --
say("")
say("GB/s of %d bytes of tensor data (GB = 1e9 bytes), file in the page cache; best of the runs"
    " (first run in brackets)" % data_bytes)


def row(label, seconds, extra=""):
    if not seconds:
        say("  %-58s %s" % (label, "n/a"))
        return
    say("  %-58s %7.2f  [%6.2f]  %s" % (label, gbps(min(seconds)), gbps(seconds[0]), extra))


if "ours" in results:
    u = results["ours"]
    row("our upload (gpu_direct to %s)" % device, [e["seconds"] for e in u],
        "path %s, %d readers, %d MiB pieces" % (u[0]["path"], u[0]["readers"], u[0]["chunk"] >> 20))
for label, _ in VARIANTS:
    if label in results:
        u = results[label]
        row("  our upload, " + label, [e["seconds"] for e in u], "path " + u[0]["path"])
row('safetensors.torch.load_file(device="%s")' % tdev, results.get("safetensors"))
row("pinned copy of the same bytes, torch (bus limit)", results.get("bus_torch"))
row("pinned copy of the same bytes, cudaMemcpyAsync (bus limit)", results.get("bus_c"))
if "map" in results:
    say("  %-58s %7.0f  (%.2f ms: IPC open + %d tensor views, no copy)"
        % ("second process maps them through the client", gbps(results["map"]),
           results["map"] * 1e3, len(tensors)))
with open(os.path.join(work, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
sys.exit(3 if failures else 0)
EOF
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 3 ]; then
	FAILURES=$((FAILURES + 1)) # the checks that failed said so
elif [ "$rc" -eq 124 ]; then
	FAILURES=$((FAILURES + 1))
	say "FAIL  measurements ran past their 300 s"
elif [ "$rc" -ne 0 ]; then
	FAILURES=$((FAILURES + 1))
	say "FAIL  measurements stopped (exit $rc):"
	tail -5 "$WORK/measure.log" | sed 's/^/      /' | tee -a "$RESULT"
fi

# ---- 6. the same through a real mount: the daemon uploads, this machine's client maps ----
# The daemon needs libfuse3 and json-c, which GPU images rarely have: SAFETENSORSFS_BIN names a
# built daemon, else .devcarry/ (bin/safetensorsfs, lib/*.so.*: `make devcarry` fills it from
# this build machine's Debian packages), else a `make` here where libfuse3's headers exist.
step "mount"
BIN=${SAFETENSORSFS_BIN:-}
if [ -z "$BIN" ] && [ -x "$REPO/.devcarry/bin/safetensorsfs" ]; then
	BIN=$REPO/.devcarry/bin/safetensorsfs
	export LD_LIBRARY_PATH=$REPO/.devcarry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if [ -z "$BIN" ] && pkg-config --exists fuse3 json-c 2>/dev/null; then
	make -C "$REPO" BUILD="$WORK/fsbuild" "$WORK/fsbuild/safetensorsfs" >"$WORK/fsbuild.log" 2>&1 &&
		BIN=$WORK/fsbuild/safetensorsfs
fi
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
MODEL=$(ls "$WORK"/model-*GiB.safetensors 2>/dev/null | head -1 || true)
if [ "$DEVICE" = host ]; then
	say "skip  mount check: it needs a GPU"
elif [ -z "$BIN" ]; then
	say "skip  mount check: no daemon (set SAFETENSORSFS_BIN or carry .devcarry/)"
elif [ ! -c /dev/fuse ]; then
	say "skip  mount check: no /dev/fuse on this machine"
elif [ -z "$MODEL" ]; then
	say "skip  mount check: no model written"
else
	say "daemon: $("$BIN" --version 2>&1 | tr '\n' ' ')"
	MNT=$WORK/mnt
	mkdir -p "$MNT"
	umount "$MNT" 2>/dev/null || true
	"$BIN" -f -o gpu=cuda "$MODEL" "$MNT" 2>"$WORK/daemon.log" &
	DAEMON=$!
	for _ in $(seq 100); do [ -e "$MNT/.control" ] && break; sleep 0.1; done
	if [ ! -e "$MNT/.control" ]; then
		FAILURES=$((FAILURES + 1))
		say "FAIL  the daemon did not mount: $(tail -3 "$WORK/daemon.log" | tr '\n' ' ')"
		kill "$DAEMON" 2>/dev/null || true
	else
		set +e
		timeout 180 "$PY" "$REPO/scripts/gpu_check_mount.py" "$MNT" "$DAEMON" "$MODEL" "$DEVICE" "$RESULT" \
			>"$WORK/mount.log" 2>&1
		rc=$?
		set -e
		[ "$rc" -eq 0 ] || FAILURES=$((FAILURES + 1))
		[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || say "FAIL  mount check stopped (exit $rc): $(tail -3 "$WORK/mount.log" | tr '\n' ' ')"
		umount "$MNT" 2>/dev/null || true
		set +e
		wait "$DAEMON"
		drc=$?
		set -e
		[ "$drc" -eq 0 ] || { FAILURES=$((FAILURES + 1)); say "FAIL  the daemon exited $drc after unmount"; }
		grep -i 'error\|warning' "$WORK/daemon.log" | head -5 | sed 's/^/      daemon: /' | tee -a "$RESULT" || true
	fi
fi

step "done"
say ""
say "$(($(date +%s) - START)) s in all; $FAILURES failed check(s)"
FINISHED=1
[ "$FAILURES" -eq 0 ]
