"""Sharded models: an index, a folder of shards, a diffusers-style folder, and
the refusals between shards; every tensor compared with safe_open on its shard."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util


def write_sharded(d, shards=3, per=4, index=True, total_size=None):
    rng = np.random.default_rng(7)
    d.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"model.layers.{s * per + i}.w": rng.standard_normal((3, s + i + 1)).astype(np.float32)
                for i in range(per)}
        save_file(part, str(d / fname), metadata={"format": "pt", f"shard{s}": str(s)})
        weight_map.update({k: fname for k in part})
        total += sum(a.nbytes for a in part.values())
    if index:
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total if total_size is None else total_size}, "weight_map": weight_map}))
    return weight_map


def check_against_shards(mnt, d, weight_map, label=""):
    for name, fname in weight_map.items():
        p = Path(mnt, *name.split("."))
        with safe_open(str(d / fname), "np") as f:
            assert p.read_bytes() == f.get_tensor(name).tobytes(), name
        assert os.getxattr(p, "user.safetensors.file").decode() == label + fname


@pytest.mark.parametrize("via", ["index", "folder-with-index", "folder-without-index"])
def test_sharded_model(tmp_path, mount, via):
    d = tmp_path / "ckpt"
    wm = write_sharded(d, index=via != "folder-without-index")
    m = mount(d / "model.safetensors.index.json" if via == "index" else d)
    check_against_shards(m.mnt, d, wm)
    assert os.getxattr(m.mnt, "user.safetensors.shards") == b"3"
    assert os.getxattr(m.mnt, "user.safetensors.tensors") == b"12"
    meta = json.loads((Path(m.mnt) / ".metadata.json").read_text())
    assert meta["format"] == "pt" and meta["shard2"] == "2"
    assert ("total_size" in meta) == (via != "folder-without-index")
    header = json.loads((Path(m.mnt) / ".header.json").read_text())
    assert sorted(header) == sorted(set(wm.values()))
    for fname, h in header.items():
        assert h == json.loads(util.read_header(d / fname)[1])


def test_diffusers_folder(tmp_path, mount):
    d = tmp_path / "pipe"
    wm = write_sharded(d / "unet", shards=2)
    (d / "text_encoder").mkdir()
    save_file({"emb.w": np.ones((2, 2), np.float16)}, str(d / "text_encoder" / "model.safetensors"))
    (d / "scheduler").mkdir()
    (d / "scheduler" / "scheduler_config.json").write_text("{}")
    (d / "model_index.json").write_text("{}")
    m = mount(d)
    assert sorted(os.listdir(m.mnt)) == [".header.json", ".metadata.json", "text_encoder", "unet"]
    check_against_shards(Path(m.mnt) / "unet", d / "unet", wm, label="unet/")
    t = Path(m.mnt) / "text_encoder" / "emb" / "w"
    assert t.read_bytes() == np.ones((2, 2), np.float16).tobytes()
    assert os.getxattr(t, "user.safetensors.file") == b"text_encoder/model.safetensors"


def refused(tmp_path, source, needle):
    (tmp_path / "mnt").mkdir(exist_ok=True)
    rc, _, err = util.run_refused(source, tmp_path / "mnt")
    assert rc == 1 and len(err.splitlines()) == 1 and needle in err, err


def test_index_names_tensor_its_shard_lacks(tmp_path):
    d = tmp_path / "c"
    wm = write_sharded(d)
    wm["ghost.w"] = next(iter(wm.values()))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    refused(tmp_path, d, "tensor 'ghost.w' is in the index")


@pytest.mark.parametrize("as_folder", [False, True], ids=["index", "folder"])
def test_index_with_empty_weight_map(tmp_path, as_folder):
    """An index that names no tensor was a segfault at mount (exit 139)."""
    d = tmp_path / "c"
    d.mkdir()
    ix = d / "model.safetensors.index.json"
    ix.write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    refused(tmp_path, d if as_folder else ix, "weight_map is empty")


def test_tensor_in_two_shards(tmp_path):
    """Shards of one model (one NAME-I-of-N) that both hold a tensor; unrelated files may."""
    d = tmp_path / "c"
    write_sharded(d, index=False)
    save_file({"model.layers.0.w": np.zeros(1, np.float32)}, str(d / "model-00003-of-00003.safetensors"))
    refused(tmp_path, d, "is in two shards")


def test_missing_shard(tmp_path):
    d = tmp_path / "c"
    write_sharded(d)
    (d / "model-00002-of-00003.safetensors").unlink()
    refused(tmp_path, d / "model.safetensors.index.json", "model-00002-of-00003.safetensors: No such file")


def test_shard_tensor_not_in_index(tmp_path):
    d = tmp_path / "c"
    wm = write_sharded(d)
    wm.pop("model.layers.5.w")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    refused(tmp_path, d, "tensor 'model.layers.5.w' in model-00002-of-00003.safetensors is not in the index")


def test_index_puts_tensor_in_wrong_shard(tmp_path):
    d = tmp_path / "c"
    wm = write_sharded(d)
    wm["model.layers.0.w"] = "model-00003-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    refused(tmp_path, d, "but the index puts it in model-00003-of-00003.safetensors")


def test_bad_shard_is_named(tmp_path):
    d = tmp_path / "c"
    write_sharded(d)
    p = d / "model-00003-of-00003.safetensors"
    p.write_bytes(p.read_bytes() + b"junk")
    refused(tmp_path, d, "model-00003-of-00003.safetensors: tensors cover")


def test_total_size_mismatch_warns_and_mounts(tmp_path):
    d = tmp_path / "c"
    wm = write_sharded(d, total_size=12345)
    m = util.Mount(d, tmp_path / "mnt").start()
    try:
        check_against_shards(m.mnt, d, wm)
    finally:
        subprocess.run(["fusermount3", "-u", str(tmp_path / "mnt")], check=True)
        m.proc.wait(timeout=10)
    assert "warning: index total_size 12345" in m.stderr()


def test_many_shards(tmp_path, mount):
    d = tmp_path / "c"
    wm = write_sharded(d, shards=1000, per=1)
    m = mount(d)
    assert os.getxattr(m.mnt, "user.safetensors.shards") == b"1000"
    check_against_shards(m.mnt, d, dict(list(wm.items())[::97]))


def test_huggingface_hub_split(tmp_path, mount):
    hub = pytest.importorskip("huggingface_hub")
    rng = np.random.default_rng(11)
    state = {f"model.layers.{i}.mlp.w": rng.standard_normal((64, 32)).astype(np.float32) for i in range(12)}
    split = hub.split_state_dict_into_shards_factory(
        state, get_storage_size=lambda a: a.nbytes, max_shard_size=20_000,
        filename_pattern="model{suffix}.safetensors")
    assert split.is_sharded and len(split.filename_to_tensors) > 2
    d = tmp_path / "hub"
    d.mkdir()
    for fname, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(d / fname))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
    m = mount(d)
    check_against_shards(m.mnt, d, split.tensor_to_filename)
    assert m.stderr() == ""
