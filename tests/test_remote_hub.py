"""SOURCE as hf://ORG/REPO[@REVISION][/SUBFOLDER], against the test Hub of hubserver.py (which
test_hubserver.py holds to what huggingface_hub itself reads from it): a repository mounts as
the same files in a local folder mount, tensors as the official library reads them; only
the listing and the headers are fetched at mount; private and gated repositories need a
token, taken from HF_TOKEN or the token file as huggingface_hub takes it, and never shown."""
import json
import os
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import netservers as ns
import util
from hubserver import HubServer

TOKEN = "hf_alice"


def write_repo(d):
    """A diffusers-style repository: unet/ sharded with an index, text_encoder/ one file, a
    variant beside it, and files that are no weights."""
    rng = np.random.default_rng(5)
    d.mkdir(parents=True, exist_ok=True)
    (d / "unet").mkdir()
    (d / "text_encoder").mkdir()
    wm, total = {}, 0
    for s in range(2):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-00002.safetensors"
        part = {f"down.{s}.w": rng.standard_normal((8, 16 + s)).astype(np.float32),
                f"down.{s}.b": rng.standard_normal(5).astype(np.float16)}
        save_file(part, str(d / "unet" / name), metadata={"format": "pt"})
        wm.update({k: name for k in part})
        total += sum(a.nbytes for a in part.values())
    (d / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))
    save_file({"emb": rng.standard_normal((4, 3)).astype(np.float32)}, str(d / "text_encoder" / "model.safetensors"))
    save_file({"emb": np.zeros((4, 3), np.float16)}, str(d / "text_encoder" / "model.fp16.safetensors"))
    (d / "model_index.json").write_text("{}")
    (d / "unet" / "config.json").write_text("{}")
    return d


def repo_files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory):
    return write_repo(tmp_path_factory.mktemp("hubrepo") / "sd")


@pytest.fixture(scope="module")
def hub(local_repo):
    with HubServer(page_size=3) as h:
        files = repo_files(local_repo)
        h.add_repo("org/sd", files)
        h.add_repo("org/sd", {"model.safetensors": files["text_encoder/model.safetensors"]}, revision="refs/pr/1")
        h.add_repo("org/private", {"model.safetensors": files["text_encoder/model.safetensors"]},
                   private=True, readers={"alice"})
        h.add_repo("org/gated", {"model.safetensors": files["text_encoder/model.safetensors"]}, gated=True)
        yield h


@pytest.fixture
def hub_env(hub, monkeypatch, tmp_path):
    """The daemon's environment (util.daemon_env copies os.environ): this Hub, no token."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return hub


@pytest.fixture
def hmount(tmp_path, fuse_environment):
    with ns.remote_mounts(tmp_path, "hmnt") as start:
        yield start


def tree_of(mnt):
    """Every path below mnt with its size and xattrs but user.safetensors.file's directory part."""
    out = {}
    for dirpath, dirs, files in os.walk(mnt):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            attrs = {a: os.getxattr(p, a) for a in os.listxattr(p)}
            out[os.path.relpath(p, mnt)] = (os.path.isdir(p), None if os.path.isdir(p) else os.path.getsize(p), attrs)
    return out


def test_repository_mounts_as_its_local_folder_does(hub_env, local_repo, hmount, tmp_path):
    remote = hmount("hf://org/sd")
    with util.mounted(local_repo, tmp_path / "local"):
        assert tree_of(remote.mnt) == tree_of(tmp_path / "local")
    for sub, files in (("unet", ["diffusion_pytorch_model-00001-of-00002.safetensors",
                                 "diffusion_pytorch_model-00002-of-00002.safetensors"]),
                       ("text_encoder", ["model.safetensors"])):
        for f in files:
            for name, arr in load_file(str(local_repo / sub / f)).items():
                path = remote.mnt / sub / name.replace(".", "/")
                assert path.read_bytes() == arr.tobytes(), path
    remote.check_output()


def test_mount_fetches_only_the_listing_and_the_headers(hub_env, hmount):
    before = len(hub_env.requests)
    m = hmount("hf://org/sd")
    sent = hub_env.requests[before:]
    ranges = [r for r in sent if r["headers"].get("Range")]
    shards = 3  # unet's two and text_encoder's plain file: the fp16 variant is left out
    # Each shard: its first block, through the resolve redirect (two requests), and nothing more
    # since every header fits that block.
    assert len([r for r in ranges if r["server"] == "CdnHandler"]) == shards, sent
    assert all(r["headers"]["Range"] == "bytes=0-1048575" for r in ranges), ranges
    assert not any("fp16" in r["path"] for r in sent), sent
    m.check_output()


def test_revision_and_subfolder(hub_env, local_repo, hmount):
    m = hmount("hf://org/sd/text_encoder")
    want = load_file(str(local_repo / "text_encoder" / "model.safetensors"))["emb"]
    assert (m.mnt / "emb").read_bytes() == want.tobytes()
    m2 = hmount("hf://org/sd@refs/pr/1")
    assert (m2.mnt / "emb").read_bytes() == want.tobytes()
    assert sorted(os.listdir(m2.mnt)) == [".header.json", ".metadata.json", "emb"]


def test_one_file_of_a_repository(hub_env, local_repo, hmount):
    m = hmount("hf://org/sd/unet/diffusion_pytorch_model.safetensors.index.json")
    for f in ("diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"):
        for name, arr in load_file(str(local_repo / "unet" / f)).items():
            assert (m.mnt / name.replace(".", "/")).read_bytes() == arr.tobytes()


def refused(url, tmp_path):
    (tmp_path / "r").mkdir(exist_ok=True)
    return util.run_refused(url, tmp_path / "r")


def one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_private_repository_needs_a_token(hub_env, tmp_path, monkeypatch, hmount):
    rc, out, err = refused("hf://org/private", tmp_path)
    line = one_line(err)
    assert rc == 1 and "hf://org/private" in line and "HF_TOKEN" in line, err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    m = hmount("hf://org/private", secrets=(TOKEN,))
    assert (m.mnt / "emb").stat().st_size == 48
    assert TOKEN not in open("/proc/self/mounts").read()
    for dirpath, dirs, files in os.walk(m.mnt):
        for name in files + dirs:
            p = os.path.join(dirpath, name)
            assert all(TOKEN.encode() not in os.getxattr(p, a) for a in os.listxattr(p))
    assert TOKEN.encode() not in (m.mnt / ".header.json").read_bytes()


def test_token_file_as_huggingface_hub_reads_it(hub_env, tmp_path, monkeypatch, hmount):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    m = hmount("hf://org/private", secrets=(TOKEN,))
    assert (m.mnt / "emb").exists()


def test_wrong_token_refused_without_showing_it(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_123")
    rc, out, err = refused("hf://org/sd", tmp_path)
    assert rc == 1 and "hf_not_a_real_token_123" not in err and "hf://org/sd" in one_line(err), err


def test_gated_repository_says_so(hub_env, tmp_path):
    rc, out, err = refused("hf://org/gated", tmp_path)
    line = one_line(err)
    assert rc == 1 and "hf://org/gated" in line and ("gated" in line.lower() or "restricted" in line.lower()), err


@pytest.mark.parametrize("url", ["hf://org/nothing", "hf://org/sd@no-such-branch", "hf://org/sd/no_folder",
                                 "hf://just-one-part", "hf://org/sd@"])
def test_missing_or_malformed_refused(hub_env, tmp_path, url):
    rc, out, err = refused(url, tmp_path)
    assert rc == 1 and url.split("@")[0] in one_line(err), err


def test_unreachable_endpoint_refused(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{ns.free_port()}")
    rc, out, err = refused("hf://org/sd", tmp_path)
    assert rc == 1 and "connect" in one_line(err), err


def test_variant_over_the_hub(hub_env, local_repo, hmount):
    m = hmount("hf://org/sd", "-o", "variant=fp16")
    assert (m.mnt / "text_encoder" / "emb").read_bytes() == np.zeros((4, 3), np.float16).tobytes()


def test_reads_go_to_the_cdn_after_the_first(hub_env, local_repo, hmount):
    m = hmount("hf://org/sd/unet")
    before = len(hub_env.requests)
    subprocess.run(["cat", *[str(p) for p in m.mnt.rglob("*") if p.is_file()]], check=True, capture_output=True)
    later = hub_env.requests[before:]
    # Everything was in the first blocks: no request at all, and none through the Hub again.
    assert not [r for r in later if r["server"] == "HubHandler" and "/resolve/" in r["path"]], later
