#!/usr/bin/env python3
"""Client of safetensorsfs's GPU control file, MOUNTPOINT/.control.

Puts tensors of a mounted model into one buffer on a GPU (or in shared host memory) through
the daemon, then maps that buffer without a copy:

    import safetensorsfs_client as stfs
    w = stfs.load("/mnt/model", ["model/layers/0", "lm_head/weight"], device="cuda:0")
    w["lm_head.weight"]            # a torch tensor on cuda:0, in the daemon's buffer
    h = stfs.load("/mnt/model", ["model/embed_tokens/weight"])   # device="host"
    h["model.embed_tokens.weight"] # a read-only numpy array over the /dev/shm buffer

The protocol (the contract's "GPU control file"): open MOUNTPOINT/.control read-write, write
one command line ending in "\\n", read one JSON object ending in "\\n"; each open is its own
session. Commands: `backends`, `upload [device=DEV] PATTERN...`, `free ID`, `list`.

Another process can map the same buffer from an upload's reply alone (pass the reply JSON
around, e.g. `--json`): `arrays(reply)`. GPU buffers live until `free(mountpoint, id)` or
unmount; `load` keeps them (its result's `.id`), and frees a host buffer as soon as it is
mapped (the mapping stays valid) unless keep=True.

Needs numpy (and ml_dtypes for BF16 and F8 on the host); for cuda, cupy and torch: cupy opens
the IPC handle (cudaIpcOpenMemHandle) and torch takes the memory over DLPack, zero copy.

Command line:
    python3 safetensorsfs_client.py MOUNTPOINT PATTERN... [--device DEV] [--json] [--keep]
    python3 safetensorsfs_client.py MOUNTPOINT --backends | --list | --free ID
prints one line per tensor: name, dtype, shape, device.
"""

import argparse
import json
import mmap
import os
import sys

__all__ = ["ControlError", "command", "backends", "upload", "free", "list_buffers", "arrays",
           "load", "Loaded"]


class ControlError(RuntimeError):
    """The daemon answered {"ok": false, "error": ...}, or not with one JSON line."""


def _exchange(fd, line):
    """One session on an open control file: write `line` + newline, read one JSON line."""
    if "\n" in line:
        raise ValueError("a command is one line")
    data = (line + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    text = b"".join(chunks).decode()
    if not text.endswith("\n"):
        raise ControlError("incomplete reply: %r" % text[:200])
    try:
        reply = json.loads(text)
    except ValueError as e:
        raise ControlError("reply is not JSON (%s): %r" % (e, text[:200]))
    if not isinstance(reply, dict):
        raise ControlError("reply is not a JSON object: %r" % text[:200])
    if not reply.get("ok"):
        raise ControlError(reply.get("error") or "command failed: %r" % text[:200])
    return reply


def command(mountpoint, line):
    """Sends one command line through MOUNTPOINT/.control and returns the reply as a dict.
    Raises ControlError when the reply says ok: false."""
    path = os.path.join(mountpoint, ".control")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ControlError("%s: no such file: the mount is read-only (-o ro), which has no uploads, "
                           "or no safetensorsfs mount" % path) from None
    try:
        return _exchange(fd, line)
    finally:
        os.close(fd)


def backends(mountpoint):
    """[{"name": "cuda", "devices": N}, ...]: what the daemon's machine can do now."""
    return command(mountpoint, "backends")["backends"]


def _check_word(word, what):
    if not word or any(c.isspace() for c in word):
        raise ValueError("%s must be one word without spaces: %r" % (what, word))
    return word


def upload(mountpoint, patterns, device=None):
    """Uploads every tensor the patterns match (paths below the mount, views with slices,
    directories, shell globs) into one new buffer; returns the reply: id, device, bytes,
    seconds, handle, tensors [{name, offset, nbytes, dtype, shape}]. device: "cuda:N",
    "hip:N", "host" or None for the mount's default (-o gpu=)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    words = ["upload"]
    if device:
        words.append("device=" + _check_word(device, "device"))
    words += [_check_word(p, "pattern") for p in patterns]
    if len(words) == (2 if device else 1):
        raise ValueError("no pattern")
    return command(mountpoint, " ".join(words))


def free(mountpoint, buffer_id):
    """Frees a buffer (its id from upload)."""
    command(mountpoint, "free %s" % _check_word(str(buffer_id), "id"))


def list_buffers(mountpoint):
    """The daemon's live buffers: [{"id", "device", "bytes", "tensors"}, ...]."""
    return command(mountpoint, "list")["buffers"]


# safetensors dtype -> (numpy dtype name or ml_dtypes attribute, torch attribute).
# F4 and F6 pack several values into a byte: they map to their raw bytes (uint8).
_DTYPES = {
    "BOOL": ("bool", "bool"),
    "U8": ("uint8", "uint8"),
    "I8": ("int8", "int8"),
    "I16": ("int16", "int16"),
    "U16": ("uint16", "uint16"),
    "F16": ("float16", "float16"),
    "BF16": ("ml_dtypes.bfloat16", "bfloat16"),
    "I32": ("int32", "int32"),
    "U32": ("uint32", "uint32"),
    "F32": ("float32", "float32"),
    "C64": ("complex64", "complex64"),
    "F64": ("float64", "float64"),
    "I64": ("int64", "int64"),
    "U64": ("uint64", "uint64"),
    "F8_E5M2": ("ml_dtypes.float8_e5m2", "float8_e5m2"),
    "F8_E4M3": ("ml_dtypes.float8_e4m3fn", "float8_e4m3fn"),
    "F8_E8M0": ("ml_dtypes.float8_e8m0fnu", "float8_e8m0fnu"),
    "F8_E4M3FNUZ": ("ml_dtypes.float8_e4m3fnuz", "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": ("ml_dtypes.float8_e5m2fnuz", "float8_e5m2fnuz"),
}


def _numpy_dtype(name):
    import numpy as np
    spec = _DTYPES.get(name, (None, None))[0]
    if spec is None:
        return None
    if spec.startswith("ml_dtypes."):
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, spec.split(".", 1)[1]))
    return np.dtype(spec)


def _torch_dtype(name):
    import torch
    spec = _DTYPES.get(name, (None, None))[1]
    return getattr(torch, spec, None) if spec else None


class Loaded(dict):
    """name -> array or tensor, plus the buffer's id, device, handle, bytes and seconds (the
    daemon's upload time), and whether the buffer still lives (kept)."""

    def __init__(self, items, reply, kept):
        super().__init__(items)
        self.id = reply.get("id")
        self.device = reply.get("device")
        self.handle = reply.get("handle")
        self.bytes = reply.get("bytes")
        self.seconds = reply.get("seconds")
        self.kept = kept


def _placed(t, size):
    """A reply tensor's offset, size and shape, checked against the buffer's size."""
    off, nbytes, shape = int(t["offset"]), int(t["nbytes"]), tuple(t["shape"])
    if off + nbytes > size:
        raise ControlError("tensor %s ends past the buffer (%d > %d)" % (t["name"], off + nbytes, size))
    return off, nbytes, shape


def _host_arrays(reply):
    import numpy as np
    fd = os.open(reply["handle"], os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else b""
    finally:
        os.close(fd)
    out = {}
    for t in reply["tensors"]:
        off, nbytes, shape = _placed(t, size)
        dt = _numpy_dtype(t["dtype"])
        if dt is None:  # packed sub-byte types: raw bytes
            out[t["name"]] = np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=off)
            continue
        count = nbytes // dt.itemsize
        if count:
            a = np.frombuffer(m, dtype=dt, count=count, offset=off)
        else:
            a = np.empty(0, dtype=dt)
            a.flags.writeable = False
        out[t["name"]] = a.reshape(shape)
    return out


class _IpcMapping:
    """One cudaIpcOpenMemHandle mapping, closed when the last tensor over it is gone."""

    def __init__(self, handle_hex, device):
        import cupy
        self.device = device
        with cupy.cuda.Device(device):
            self.ptr = cupy.cuda.runtime.ipcOpenMemHandle(bytes.fromhex(handle_hex))

    def __del__(self):
        try:
            import cupy
            with cupy.cuda.Device(self.device):
                cupy.cuda.runtime.ipcCloseMemHandle(self.ptr)
        except Exception:
            pass


def _cuda_tensors(reply):
    import cupy
    import torch
    dev = reply["device"]
    index = int(dev.split(":", 1)[1]) if ":" in dev else 0
    mapping = _IpcMapping(reply["handle"], index)
    size = int(reply["bytes"])
    # The memory object owns the mapping; every array over it keeps it alive, and torch
    # keeps the cupy arrays alive through DLPack.
    mem = cupy.cuda.UnownedMemory(mapping.ptr, size, mapping, index)
    out = {}
    with cupy.cuda.Device(index):
        for t in reply["tensors"]:
            off, nbytes, shape = _placed(t, size)
            dt = _torch_dtype(t["dtype"])
            if nbytes == 0:  # no memory to point at (and DLPack gives it stride 0)
                # raw bytes (flat uint8) for dtypes torch lacks, as for non-empty ones
                out[t["name"]] = torch.empty(shape if dt is not None else (0,),
                                             dtype=dt or torch.uint8, device=dev)
                continue
            raw = cupy.ndarray((nbytes,), dtype=cupy.uint8,
                               memptr=cupy.cuda.MemoryPointer(mem, off))
            u8 = torch.from_dlpack(raw)
            out[t["name"]] = u8 if dt is None else u8.view(dt).reshape(shape)
    return out


def arrays(reply):
    """Maps the buffer of an upload reply: name -> numpy array (host, read-only, over the
    /dev/shm file) or torch tensor (cuda, over the IPC mapping), in the order of the reply.
    No byte is copied. Works in any process that has the reply, not only the uploader's."""
    dev = reply["device"]
    if dev == "host":
        return _host_arrays(reply)
    if dev.startswith("cuda"):
        return _cuda_tensors(reply)
    raise ControlError("no client mapping for device %s (hip: open the handle with "
                       "hipIpcOpenMemHandle)" % dev)


def load(mountpoint, patterns, device=None, keep=None):
    """Uploads the tensors the patterns match to device (None: the mount's -o gpu= default)
    and maps them: a Loaded (a dict
    name -> numpy array for host, torch tensor for cuda, zero copy). A host buffer is freed
    once mapped unless keep=True (the mapping outlives it); a GPU buffer is kept unless
    keep=False, since CUDA mappings must not outlive the daemon's memory: free it with
    free(mountpoint, result.id) when done with the tensors."""
    reply = upload(mountpoint, patterns, device)
    if keep is None:
        keep = reply["device"] != "host"
    try:
        items = arrays(reply)
    except BaseException:
        free(mountpoint, reply["id"])
        raise
    if not keep:
        free(mountpoint, reply["id"])
    return Loaded(items, reply, keep)


def _describe(name, value, device):
    dtype = str(value.dtype).replace("torch.", "")
    shape = "[" + ",".join(str(d) for d in value.shape) + "]"
    return "%s %s %s %s" % (name, dtype, shape, device)


def _print_tensors(reply):
    # In a function of its own, so that the mapping is gone when it returns.
    for name, value in arrays(reply).items():
        print(_describe(name, value, reply["device"]))


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Upload tensors of a safetensorsfs mount to a GPU (or shared memory) "
        "through its .control file and map them.")
    p.add_argument("mountpoint")
    p.add_argument("patterns", nargs="*", help="tensor paths, views, directories or globs")
    p.add_argument("--device", help="cuda:N, hip:N or host (default: the mount's -o gpu=)")
    p.add_argument("--json", action="store_true", help="print the upload reply as JSON too")
    p.add_argument("--keep", action="store_true", help="leave the buffer for other clients")
    p.add_argument("--backends", action="store_true", help="print what the machine can do")
    p.add_argument("--list", action="store_true", help="print the daemon's buffers")
    p.add_argument("--free", metavar="ID", help="free a buffer")
    a = p.parse_args(argv)
    try:
        if a.backends:
            for b in backends(a.mountpoint):
                print("%s %s" % (b["name"], b["devices"]))
            return 0
        if a.list:
            for b in list_buffers(a.mountpoint):
                print(json.dumps(b))
            return 0
        if a.free:
            free(a.mountpoint, a.free)
            return 0
        if not a.patterns:
            p.error("no PATTERN")
        reply = upload(a.mountpoint, a.patterns, a.device)
        if a.json:
            print(json.dumps(reply))
        try:
            _print_tensors(reply)
        finally:
            if not a.keep:
                free(a.mountpoint, reply["id"])
        if a.keep:
            print("kept buffer %s (%s bytes on %s); free it with --free %s"
                  % (reply["id"], reply["bytes"], reply["device"], reply["id"]),
                  file=sys.stderr)
        return 0
    except (ControlError, OSError, ValueError) as e:
        print("safetensorsfs_client: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
