"""Files mounted by mistake (issue 14): a PyTorch checkpoint (zip or pickle), a
GGUF file, an HTML or XML error page saved under the weights' name, a
config.json.  Each is built here the way its own tools write it and refused
with exit status 1 and one line that says what the file is and names it once.
A real safetensors file whose length bytes happen to spell one of those
magics still mounts: the kind is named only where the length refuses the
file anyway."""
import io
import json
import os
import pickle
import struct
import subprocess
import zipfile

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util

pytestmark = pytest.mark.usefixtures("fuse_environment")

ZIP_HINT = "a zip archive (a PyTorch .bin/.pt checkpoint?), not safetensors"
PICKLE_HINT = "a Python pickle (a legacy PyTorch .bin checkpoint?), not safetensors"
CONVERT = "convert it with safetensors.torch.save_file(torch.load(IN), OUT)"
GGUF_HINT = "a GGUF file (llama.cpp's format), not safetensors"
HTML_HINT = "an HTML page, not safetensors: the download failed"
XML_HINT = "an XML document (a storage service's error reply?), not safetensors: the download failed"
JSON_HINT = "a JSON file, not safetensors weights"


# ---------------------------------------------------------------- the wrong files

class _Unseekable(io.RawIOBase):
    """A pipe-like sink: zipfile then writes data descriptors (flag bit 3), as torch's writer does."""

    def __init__(self):
        self.buf = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.buf += b
        return len(b)


def torch_zip(state=None):
    """torch.save's format since PyTorch 1.6 (torch/serialization.py, _save): an uncompressed
    zip of archive/data.pkl (the pickled object, protocol 2), archive/byteorder, one
    archive/data/N per storage and archive/version.  Its writer (miniz) puts version 0 and
    flags 0x0808 (data descriptor, UTF-8 names) in every header, so the file starts
    PK\\3\\4 00 00 08 08; zipfile writes the same once told the stream cannot seek."""
    state = state or {"weight": [0.5, 1.5, 2.5, 3.5]}
    sink = _Unseekable()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as z:
        for name, data in (("archive/data.pkl", pickle.dumps(state, protocol=2)),
                           ("archive/byteorder", b"little"),
                           ("archive/data/0", np.arange(4, dtype=np.float32).tobytes()),
                           ("archive/version", b"3\n")):
            info = zipfile.ZipInfo(name)
            info.extract_version = 0
            z.writestr(info, data)
        for info in z.filelist:
            info.flag_bits |= 0x800  # the central directory's copy
    data = bytearray(sink.buf)
    for info in zipfile.ZipFile(io.BytesIO(bytes(data))).infolist():
        data[info.header_offset + 6:info.header_offset + 8] = struct.pack("<H", 0x808)
    data = bytes(data)
    assert data[:8] == b"PK\x03\x04\x00\x00\x08\x08", data[:8]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None and z.read("archive/byteorder") == b"little"
    return data


def python_zip():
    """The same archive from zipfile's defaults (version 20, no flags): PK\\3\\4 14 00 00 00."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
        z.writestr("archive/version", b"3\n")
    return out.getvalue()


def legacy_torch_pickle():
    """torch.save(..., _use_new_zipfile_serialization=False) (torch/serialization.py,
    _legacy_save): protocol-2 pickles one after another, the magic number, the protocol
    version, the system info, the object, the storage keys, then the raw storages."""
    parts = [0x1950A86A20F9469CFC6C, 1001,
             {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}},
             {"weight": [0.5, 1.5]}, ["0"]]
    return b"".join(pickle.dumps(p, protocol=2) for p in parts) + np.arange(2, dtype=np.float32).tobytes()


def plain_pickle(protocol):
    return pickle.dumps({f"layer.{i}.weight": [float(i)] * 8 for i in range(4)}, protocol=protocol)


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_file():
    """A GGUF v3 file by ggml's docs/gguf.md: magic "GGUF", uint32 version, uint64 tensor
    and key-value counts, the key-values (string key, uint32 type, value), the tensor
    infos (name, uint32 n_dims, uint64 dims, uint32 ggml type, uint64 offset), padding to
    general.alignment, the tensor data."""
    GGUF_TYPE_UINT32, GGUF_TYPE_STRING, GGML_TYPE_F32 = 4, 8, 0
    out = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    out += gguf_string("general.architecture") + struct.pack("<I", GGUF_TYPE_STRING) + gguf_string("llama")
    out += gguf_string("general.alignment") + struct.pack("<II", GGUF_TYPE_UINT32, 32)
    out += gguf_string("token_embd.weight") + struct.pack("<IQQIQ", 2, 4, 2, GGML_TYPE_F32, 0)
    out += b"\0" * (-len(out) % 32)
    return out + np.arange(8, dtype=np.float32).tobytes()


HTML_404 = (b"<!DOCTYPE html>\n<html class=\"\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\" />\n"
            b"<title>Hugging Face - The AI community building the future.</title>\n</head>\n"
            b"<body><h1>404</h1><p>Sorry, we can't find the page you are looking for.</p></body>\n</html>\n")
HTML_BOM_LOWER = "\ufeff\r\n\r\n   <html><head><title>502 Bad Gateway</title></head></html>\n".encode()
S3_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message><RequestId>4442587FB7D0A2F9</RequestId>"
            b"<HostId>abc=</HostId></Error>")
BARE_ERROR = b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"
CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
                     "torch_dtype": "bfloat16"}, indent=2).encode() + b"\n"
TOKENIZER_MERGES = json.dumps([["a", "b"], ["c", "d"]]).encode()


# (id, file name, bytes, what the line must say)
def wrong_cases():
    return [
        ("torch-zip", "pytorch_model.bin", torch_zip(), ZIP_HINT),
        ("torch-zip-as-safetensors", "model.safetensors", torch_zip(), ZIP_HINT),
        ("python-zip", "model.pt", python_zip(), ZIP_HINT),
        ("torch-legacy-pickle", "pytorch_model.bin", legacy_torch_pickle(), PICKLE_HINT),
        ("pickle-protocol-2", "weights.pkl", plain_pickle(2), PICKLE_HINT),
        ("pickle-protocol-4", "weights.pkl", plain_pickle(4), PICKLE_HINT),
        ("pickle-protocol-5", "weights.pkl", plain_pickle(5), PICKLE_HINT),
        ("gguf", "model-q4_k_m.gguf", gguf_file(), GGUF_HINT),
        ("html-404", "model.safetensors", HTML_404, HTML_HINT),
        ("html-bom-blank-lines", "model-00001-of-00002.safetensors", HTML_BOM_LOWER, HTML_HINT),
        ("s3-xml-error", "model.safetensors", S3_ERROR, XML_HINT),
        ("bare-xml-error", "model.safetensors", BARE_ERROR, XML_HINT),
        ("config-json", "config.json", CONFIG, JSON_HINT),
        ("json-array", "merges.json", TOKENIZER_MERGES, JSON_HINT),
        ("empty-json-object", "config.json", b"{}", JSON_HINT),  # shorter than 8 bytes
    ]


def check_refused_once(line_source, shown_name, mnt, rc, out, err, before_mounts, hint):
    """Exit 1, one line `safetensorsfs: SOURCE: ...` that says `hint` and names `shown_name`
    exactly once, not the old "header length" wording, nothing on stdout, nothing mounted."""
    assert rc == 1, f"exit status {rc}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"want exactly one line on stderr, got {err!r}"
    line = lines[0]
    assert line.startswith(f"safetensorsfs: {line_source}: "), line
    assert hint in line, line
    assert "header length" not in line, line
    assert line.count(shown_name) == 1, f"{shown_name!r} should appear once: {line}"
    util.assert_nothing_mounted(mnt, before_mounts, out, err)


@pytest.mark.parametrize("case", wrong_cases(), ids=lambda c: c[0])
def test_wrong_file_named_for_what_it_is(tmp_path, case):
    _, name, data, hint = case
    path = tmp_path / name
    path.write_bytes(data)
    assert util.official_refuses(path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    before = util.fingerprint(path)
    rc, out, err = util.run_refused(path, mnt)
    check_refused_once(path, name, mnt, rc, out, err, before_mounts, hint)
    assert util.fingerprint(path) == before
    assert sorted(os.listdir(tmp_path)) == sorted([name, "mnt"]), "something was written"


def test_zip_and_pickle_say_how_to_convert(tmp_path):
    for name, data in (("a.bin", torch_zip()), ("b.bin", legacy_torch_pickle())):
        path = tmp_path / name
        path.write_bytes(data)
        mnt = tmp_path / f"mnt-{name}"
        mnt.mkdir()
        rc, _, err = util.run_refused(path, mnt)
        assert rc == 1 and CONVERT in err, err


def test_wrong_file_in_background(tmp_path):
    """Without -f the line and the status still reach the caller: checks run before detaching."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(HTML_404)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    rc, out, err = util.run_refused(path, mnt, foreground=False)
    check_refused_once(path, path.name, mnt, rc, out, err, before_mounts, HTML_HINT)


def folder_with_bad_shard(tmp_path, data):
    """model/ with a good first shard and `data` as its second: (the folder, the bad shard's name)."""
    src = tmp_path / "model"
    src.mkdir()
    save_file({"a": np.arange(4, dtype=np.float32)}, str(src / "model-00001-of-00002.safetensors"))
    shard = "model-00002-of-00002.safetensors"
    (src / shard).write_bytes(data)
    return src, shard


@pytest.mark.parametrize("bad", ["html", "gguf"])
def test_wrong_shard_in_folder_named_once(tmp_path, bad):
    src, shard = folder_with_bad_shard(tmp_path, HTML_404 if bad == "html" else gguf_file())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    rc, out, err = util.run_refused(src, mnt)
    hint = HTML_HINT if bad == "html" else GGUF_HINT
    check_refused_once(src, shard, mnt, rc, out, err, before_mounts, hint)


@pytest.mark.parametrize("as_source", ["index", "folder"])
def test_wrong_shard_named_by_index_named_once(tmp_path, as_source):
    src, shard = folder_with_bad_shard(tmp_path, S3_ERROR)
    index = src / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                "b": shard}}))
    source = index if as_source == "index" else src
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    rc, out, err = util.run_refused(source, mnt)
    check_refused_once(source, shard, mnt, rc, out, err, before_mounts, XML_HINT)


def test_bare_file_name_named_once(tmp_path):
    """SOURCE given without a folder (`safetensorsfs model.safetensors /mnt`, run in its folder)."""
    name = "model.safetensors"
    (tmp_path / name).write_bytes(HTML_404)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    p = subprocess.run([str(util.binary()), "-f", name, "mnt"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=20, env=util.daemon_env())
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    check_refused_once(name, name, mnt, p.returncode, p.stdout, p.stderr, before_mounts, HTML_HINT)


# ---------------------------------------------------------------- real files that look alike

def official_with_header_len(path, n):
    """A file from the official library whose 8-byte header length is exactly `n` (a multiple
    of 8: the library pads the header with spaces to one), reached by sizing a metadata value."""
    pad = max(0, n - 200)
    for _ in range(4):
        save_file({"a": np.arange(3, dtype=np.uint8)}, str(path), metadata={"pad": "x" * pad})
        got = int.from_bytes(path.read_bytes()[:8], "little")
        if got == n:
            return path
        pad += n - got
    raise AssertionError(f"could not reach header length {n}, got {got}")


def hand_built_with_header_len(path, n):
    """One U8 tensor and a header of exactly `n` bytes, padded with spaces: for lengths the
    official library cannot write (odd ones), checked against the official reader instead."""
    header = json.dumps({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                        separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", n) + header + b" " * (n - len(header)) + b"x")
    with safe_open(str(path), framework="np") as f:
        assert list(f.keys()) == ["a"], "the official library refuses the hand-built file"
    return path


# (id, header length, what its first bytes spell, written by the official library?)
LOOKALIKES = [
    ("zip-signature", 0x04034B50, b"PK\x03\x04\0\0\0\0", True),  # a 67 MB header
    ("pickle-proto-2", 0x0280, b"\x80\x02\0\0", True),
    ("pickle-proto-5", 0x0580, b"\x80\x05\0\0", True),
    ("json-object-quote", 0x227B, b'{"\0\0', False),
    ("json-object-newline", 0x0A7B, b"{\n\0\0", False),
    ("json-array-quote", 0x225B, b'["\0\0', False),
    ("angle-bracket", 0x3C, b"<\0\0\0", False),
]


@pytest.mark.parametrize("case", LOOKALIKES, ids=lambda c: c[0])
def test_real_file_that_looks_alike_mounts(tmp_path, mount, case):
    """"GGUF", "<html", "<?xml" and LFS's "version " as a length exceed the limit, so no real
    file starts with them; these lengths are real and begin like a zip, a pickle or JSON."""
    _, n, spelled, official = case
    path = tmp_path / "lookalike.safetensors"
    (official_with_header_len if official else hand_built_with_header_len)(path, n)
    assert path.read_bytes()[:len(spelled)] == spelled
    m = mount(path)
    assert "a" in os.listdir(m.mnt)
    assert (m.mnt / "a").read_bytes() == (b"\0\1\2" if official else b"x")


@pytest.mark.parametrize("case", [c for c in LOOKALIKES if c[1] < 1 << 20], ids=lambda c: c[0])
def test_truncated_real_file_keeps_its_reason(tmp_path, case):
    """Cut inside its header, a real file whose length looks like a pickle or JSON is refused
    for running past the end, not named a pickle or a JSON file."""
    _, n, _, official = case
    path = tmp_path / "cut.safetensors"
    (official_with_header_len if official else hand_built_with_header_len)(path, n)
    path.write_bytes(path.read_bytes()[:n // 2])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, out, err = util.run_refused(path, mnt)
    assert rc == 1 and "runs past the end" in err, err
    assert not any(h in err for h in (PICKLE_HINT, JSON_HINT, ZIP_HINT, HTML_HINT, XML_HINT)), err


@pytest.mark.parametrize("as_source", ["index", "folder"])
def test_index_that_is_an_html_page(tmp_path, as_source):
    """An index saved from a failed download said "expected a JSON object at byte 0", and in a
    folder did not say which file."""
    src = tmp_path / "model"
    src.mkdir()
    index = src / "model.safetensors.index.json"
    index.write_bytes(HTML_404)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before_mounts = util.mount_lines(tmp_path)
    source = index if as_source == "index" else src
    rc, out, err = util.run_refused(source, mnt)
    check_refused_once(source, index.name, mnt, rc, out, err, before_mounts, HTML_HINT)


def test_bad_index_in_a_folder_is_named(tmp_path):
    d = tmp_path / "pipe" / "unet"
    d.mkdir(parents=True)
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text('{"weight_map": 5}')
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(tmp_path / "pipe", tmp_path / "mnt")
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "unet/diffusion_pytorch_model.safetensors.index.json: weight_map is not an object" in err, err
