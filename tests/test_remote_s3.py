"""SOURCE as s3://BUCKET/KEY or s3://BUCKET/PREFIX/, against moto's S3 server with
authentication on (s3server.py): every request is signed with SigV4 and a wrong secret is
refused; credentials, region and endpoint come from where the AWS CLI takes them; a
prefix mounts as a local folder of the same files does; tensors are the official
library's; the object is pinned; no secret is ever shown."""
import errno
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import netservers as ns
import util
from s3server import s3_server

SECRET_MARK = "the-secret"  # moto's secrets are random; this one is for a wrong-secret test


def write_model(d):
    """m.safetensors, a sharded model (index + 2 shards) under llama/, a diffusers folder."""
    rng = np.random.default_rng(3)
    d.mkdir(parents=True, exist_ok=True)
    save_file({"a.w": rng.standard_normal((64, 32)).astype(np.float32), "a.b": np.arange(7, dtype=np.int64)},
              str(d / "m.safetensors"), metadata={"k": "v"})
    (d / "llama").mkdir()
    wm, total = {}, 0
    for s in range(2):
        name = f"model-{s + 1:05d}-of-00002.safetensors"
        part = {f"layers.{s}.w": rng.standard_normal((16, 40)).astype(np.float32)}
        save_file(part, str(d / "llama" / name))
        wm.update({k: name for k in part})
        total += sum(a.nbytes for a in part.values())
    (d / "llama" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                         "weight_map": wm}))
    (d / "sd" / "unet").mkdir(parents=True)
    (d / "sd" / "vae").mkdir()
    save_file({"conv": rng.standard_normal((3, 3)).astype(np.float16)}, str(d / "sd" / "unet" / "u.safetensors"))
    save_file({"dec": rng.standard_normal(9).astype(np.float32)}, str(d / "sd" / "vae" / "v.safetensors"))
    return d


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("s3model"))


@pytest.fixture(scope="module")
def s3(local, tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket("models")
        for p in sorted(local.rglob("*")):
            if p.is_file():
                server.put("models", str(p.relative_to(local)), p.read_bytes())
        yield server


@pytest.fixture
def aws_env(s3, monkeypatch, tmp_path):
    """The daemon's environment (util.daemon_env copies os.environ): this server, its key,
    and no AWS files of the machine's."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    return s3


@pytest.fixture
def smount(tmp_path, fuse_environment):
    with ns.remote_mounts(tmp_path, "smnt") as start:
        yield start


def listing(mnt):
    out = {}
    for dirpath, dirs, files in os.walk(mnt):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, mnt)] = ({a: os.getxattr(p, a) for a in os.listxattr(p)},
                                            None if os.path.isdir(p) else open(p, "rb").read())
    return out


def check_tensors(mnt, files):
    for f in files:
        for name, arr in load_file(str(f)).items():
            assert (mnt / name.replace(".", "/")).read_bytes() == arr.tobytes(), name


@pytest.mark.parametrize("url,local_rel", [("s3://models/m.safetensors", "m.safetensors"),
                                           ("s3://models/llama/", "llama"),
                                           ("s3://models/llama/model.safetensors.index.json",
                                            "llama/model.safetensors.index.json"),
                                           ("s3://models/sd/", "sd")])
def test_mounts_as_the_local_files_do(aws_env, local, smount, tmp_path, url, local_rel):
    m = smount(url, secrets=(aws_env.secret,))
    with util.mounted(local / local_rel, tmp_path / "local"):
        assert listing(m.mnt) == listing(tmp_path / "local")
    check_tensors(m.mnt, [local / "m.safetensors"] if local_rel == "m.safetensors" else [])
    assert aws_env.secret not in open("/proc/self/mounts").read()
    assert aws_env.key not in open("/proc/self/mounts").read()


def test_whole_bucket_is_a_folder(aws_env, local, smount, tmp_path):
    m = smount("s3://models")
    # the bucket's root has m.safetensors beside a subfolder with weights: both mount
    assert {"m", "llama"} <= set(os.listdir(m.mnt))
    with util.mounted(local, tmp_path / "local"):
        assert listing(m.mnt) == listing(tmp_path / "local")
    check_tensors(m.mnt / "m", [local / "m.safetensors"])


def test_session_token(aws_env, local, smount, monkeypatch):
    key, secret, token = aws_env.session_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    m = smount("s3://models/m.safetensors", secrets=(secret, token))
    check_tensors(m.mnt, [local / "m.safetensors"])


def test_profile_in_the_credentials_file(aws_env, local, smount, monkeypatch, tmp_path):
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
        f"[reader]\naws_access_key_id = {aws_env.key}\naws_secret_access_key = {aws_env.secret}\n")
    (tmp_path / ".aws" / "config").write_text("[profile reader]\nregion = us-east-1\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_PROFILE", "reader")
    m = smount("s3://models/m.safetensors", secrets=(aws_env.secret,))
    check_tensors(m.mnt, [local / "m.safetensors"])


def refused(url, tmp_path):
    (tmp_path / "r").mkdir(exist_ok=True)
    rc, out, err = util.run_refused(url, tmp_path / "r")
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1, err
    return lines[0]


def test_wrong_secret_refused(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_MARK)
    line = refused("s3://models/m.safetensors", tmp_path)
    assert "s3://models/m.safetensors" in line and SECRET_MARK not in line


@pytest.mark.parametrize("url", ["s3://nobucket/m.safetensors", "s3://models/nokey.safetensors",
                                 "s3://models/empty-prefix/", "s3://"])
def test_missing_or_malformed_refused(aws_env, tmp_path, url):
    line = refused(url, tmp_path)
    assert (url if url != "s3://" else "s3://") in line


def test_changed_object_gives_eio(aws_env, local, smount, tmp_path):
    aws_env.put("models", "changing.safetensors", (local / "m.safetensors").read_bytes())
    m = smount("s3://models/changing.safetensors", "-o", "block_size=4096")
    m.stderr_ok = True
    arr = load_file(str(local / "m.safetensors"))["a.w"]
    new = {"a.w": -arr, "a.b": np.arange(7, dtype=np.int64)}
    save_file(new, str(tmp_path / "new.safetensors"), metadata={"k": "v"})
    aws_env.put("models", "changing.safetensors", (tmp_path / "new.safetensors").read_bytes())
    # The header was pinned with the old object; its bytes beyond the first block are gone.
    with pytest.raises(OSError) as e:
        (m.mnt / "a" / "w").read_bytes()
    assert e.value.errno == errno.EIO
    assert os.getxattr(m.mnt / "a" / "w", "user.safetensors.dtype") == b"F32"
    assert "changed" in m.stderr()
