"""Folders as users keep them: diffusers repos with fp16 variants (-o variant=), folders of
unrelated files (a ComfyUI loras/ folder), and each component directory's own metadata.
Every tensor is compared with safe_open on the file it should come from."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import util

PREFIX = util.PREFIX


def check_file(mnt_dir, src_file, label):
    """Every tensor of src_file, read through mnt_dir, equals safe_open's, from that file."""
    with safe_open(str(src_file), "np") as f:
        names = list(f.keys())
        for name in names:
            p = Path(mnt_dir, *name.split("."))
            assert p.read_bytes() == f.get_tensor(name).tobytes(), name
            assert os.getxattr(p, PREFIX + "file").decode() == label
    return names


def sd_repo(d, variants=("fp16",)):
    """A diffusers repo as SD 1.5's: each component's plain file and its variants next to it;
    unet sharded with an index per variant, as diffusers saves large components."""
    rng = np.random.default_rng(3)
    vae = {"decoder.conv_in.bias": rng.standard_normal(8).astype(np.float32),
           "decoder.conv_in.weight": rng.standard_normal((8, 4)).astype(np.float32)}
    (d / "vae").mkdir(parents=True)
    save_file(vae, str(d / "vae" / "diffusion_pytorch_model.safetensors"))
    for v in variants:
        save_file({k: a.astype(np.float16) for k, a in vae.items()},
                  str(d / "vae" / f"diffusion_pytorch_model.{v}.safetensors"))
    unet = {f"down_blocks.{i}.conv.weight": rng.standard_normal((4, i + 2)).astype(np.float32) for i in range(4)}
    (d / "unet").mkdir()
    for v in (None,) + tuple(variants):
        tag = f".{v}" if v else ""
        wm, total = {}, 0
        for s, names in enumerate((list(unet)[:2], list(unet)[2:])):
            fname = f"diffusion_pytorch_model{tag}-{s + 1:05d}-of-00002.safetensors"
            part = {n: unet[n].astype(np.float16 if v else np.float32) for n in names}
            save_file(part, str(d / "unet" / fname))
            wm.update({n: fname for n in names})
            total += sum(a.nbytes for a in part.values())
        (d / "unet" / f"diffusion_pytorch_model.safetensors.index{tag}.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))
    (d / "text_encoder").mkdir()
    save_file({"text_model.embeddings.weight": np.ones((3, 2), np.float32)},
              str(d / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    (d / "model_index.json").write_text("{}")
    return vae, unet


def test_diffusers_plain_files_by_default(tmp_path, mount):
    """Was refused: "tensor 'decoder.conv_in.bias' is in two shards"."""
    d = tmp_path / "sd"
    sd_repo(d)
    m = mount(d)
    assert sorted(os.listdir(m.mnt)) == [".header.json", ".metadata.json", "text_encoder", "unet", "vae"]
    check_file(m.mnt / "vae", d / "vae" / "diffusion_pytorch_model.safetensors",
               "vae/diffusion_pytorch_model.safetensors")
    for s in (1, 2):
        fname = f"diffusion_pytorch_model-{s:05d}-of-00002.safetensors"
        check_file(m.mnt / "unet", d / "unet" / fname, f"unet/{fname}")
    assert os.getxattr(m.mnt / "vae" / "decoder" / "conv_in" / "bias", PREFIX + "dtype") == b"F32"


@pytest.mark.parametrize("variant", ["fp16", "non_ema"])
def test_diffusers_variant_picks_its_files_and_index(tmp_path, mount, variant):
    d = tmp_path / "sd"
    _, unet = sd_repo(d, variants=("fp16", "non_ema"))
    m = mount(d, "-o", f"variant={variant}")
    check_file(m.mnt / "vae", d / "vae" / f"diffusion_pytorch_model.{variant}.safetensors",
               f"vae/diffusion_pytorch_model.{variant}.safetensors")
    for s in (1, 2):
        fname = f"diffusion_pytorch_model.{variant}-{s:05d}-of-00002.safetensors"
        check_file(m.mnt / "unet", d / "unet" / fname, f"unet/{fname}")
    # The variant's own index: its metadata (F16 bytes), not the plain index's.
    f16_bytes = sum(a.astype(np.float16).nbytes for a in unet.values())
    assert os.getxattr(m.mnt / "unet", PREFIX + "metadata.total_size") == str(f16_bytes).encode()
    # A component without that variant keeps its plain file, as diffusers falls back.
    check_file(m.mnt / "text_encoder", d / "text_encoder" / "model.safetensors", "text_encoder/model.safetensors")


def test_variant_files_without_index(tmp_path, mount):
    """transformers' naming of an unsharded variant, next to the plain file, no index."""
    d = tmp_path / "m"
    d.mkdir()
    save_file({"w": np.arange(4, dtype=np.float32)}, str(d / "model.safetensors"))
    save_file({"w": np.arange(4, dtype=np.float16)}, str(d / "model.fp16.safetensors"))
    m = mount(d)
    assert check_file(m.mnt, d / "model.safetensors", "model.safetensors") == ["w"]
    m2 = mount(d, "-o", "variant=fp16")
    assert check_file(m2.mnt, d / "model.fp16.safetensors", "model.fp16.safetensors") == ["w"]


def test_unknown_variant_is_refused(tmp_path):
    d = tmp_path / "sd"
    sd_repo(d)
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(d, tmp_path / "mnt", ("-o", "variant=bf16"))
    assert rc == 1 and len(err.splitlines()) == 1 and "no file of variant bf16" in err, err
    assert not util.mount_lines(tmp_path / "mnt")


def test_variant_of_a_file_is_refused(tmp_path):
    d = tmp_path / "sd"
    sd_repo(d)
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(d / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "mnt",
                                  ("-o", "variant=fp16"))
    assert rc == 1 and len(err.splitlines()) == 1 and "name the folder" in err, err


def loras(d):
    """A ComfyUI models/loras/ folder: unrelated files, two of them with the same tensor names."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(5)
    files = {}
    for stem, rank in (("style_a", 4), ("style_b", 8), ("detail-tweaker.v1.5", 2)):
        t = {"lora_unet_down.lora_up.weight": rng.standard_normal((16, rank)).astype(np.float16),
             "lora_unet_down.alpha": np.array(rank, np.float16)}
        save_file(t, str(d / f"{stem}.safetensors"), metadata={"ss_network_dim": str(rank), "format": "pt"})
        files[stem] = t
    return files


def test_folder_of_unrelated_files(tmp_path, mount):
    """Was refused as "two shards"; now one directory per file, named after it."""
    d = tmp_path / "loras"
    files = loras(d)
    m = mount(d)
    assert sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == sorted(files)
    for stem in files:
        check_file(m.mnt / stem, d / f"{stem}.safetensors", f"{stem}.safetensors")
        assert os.getxattr(m.mnt / stem, PREFIX + "tensors") == b"2"
        assert os.getxattr(m.mnt / stem, PREFIX + "shards") == b"1"
    assert os.getxattr(m.mnt, PREFIX + "shards") == b"3"


def test_disjoint_unrelated_files_are_not_merged(tmp_path, mount):
    """Two files with disjoint names were silently merged into one tree."""
    d = tmp_path / "mixed"
    d.mkdir()
    save_file({"a.w": np.ones(2, np.float32)}, str(d / "one.safetensors"))
    save_file({"b.w": np.zeros(2, np.float32)}, str(d / "two.safetensors"))
    m = mount(d)
    assert sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == ["one", "two"]
    check_file(m.mnt / "one", d / "one.safetensors", "one.safetensors")
    check_file(m.mnt / "two", d / "two.safetensors", "two.safetensors")


def test_shards_and_unrelated_files_in_one_folder(tmp_path, mount):
    """A sharded model (NAME-I-of-N) next to a lone file: a directory each, the shards as one."""
    d = tmp_path / "ckpts"
    d.mkdir()
    for s in (1, 2):
        save_file({f"layers.{s}.w": np.full(3, s, np.float32)}, str(d / f"big-{s:05d}-of-00002.safetensors"))
    save_file({"x": np.ones(1, np.uint8)}, str(d / "small.safetensors"))
    m = mount(d)
    assert sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == ["big", "small"]
    for s in (1, 2):
        check_file(m.mnt / "big", d / f"big-{s:05d}-of-00002.safetensors", f"big-{s:05d}-of-00002.safetensors")
    assert os.getxattr(m.mnt / "big", PREFIX + "shards") == b"2"


def test_subfolder_of_unrelated_files(tmp_path, mount):
    """A ComfyUI models/ folder: loras/ of unrelated files next to a model's folder."""
    d = tmp_path / "models"
    files = loras(d / "loras")
    (d / "vae").mkdir()
    save_file({"w": np.ones(2, np.float32)}, str(d / "vae" / "diffusion_pytorch_model.safetensors"))
    m = mount(d)
    assert sorted(os.listdir(m.mnt / "loras")) == sorted(files)
    for stem in files:
        check_file(m.mnt / "loras" / stem, d / "loras" / f"{stem}.safetensors", f"loras/{stem}.safetensors")
    check_file(m.mnt / "vae", d / "vae" / "diffusion_pytorch_model.safetensors",
               "vae/diffusion_pytorch_model.safetensors")


def test_two_groups_of_one_name_are_refused(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    save_file({"x": np.ones(1, np.uint8)}, str(d / "m.safetensors"))
    save_file({"y": np.ones(1, np.uint8)}, str(d / "m-00001-of-00001.safetensors"))
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(d, tmp_path / "mnt")
    assert rc == 1 and len(err.splitlines()) == 1 and "would both be the directory 'm'" in err, err


def two_shards_with_index(d):
    """model-0000{1,2}-of-00002.safetensors and their index in d."""
    d.mkdir(parents=True, exist_ok=True)
    wm = {}
    for s in (1, 2):
        fname = f"model-{s:05d}-of-00002.safetensors"
        save_file({f"layers.{s}.w": np.full(3, s, np.float32)}, str(d / fname))
        wm[f"layers.{s}.w"] = fname
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))


def test_index_wins_over_files_that_would_not_group(tmp_path, mount):
    """An index names the model; other files beside it (a consolidated copy) are no matter."""
    d = tmp_path / "c"
    two_shards_with_index(d)
    save_file({"layers.1.w": np.zeros(3, np.float32)}, str(d / "model.safetensors"))
    m = mount(d)
    for s in (1, 2):
        check_file(m.mnt, d / f"model-{s:05d}-of-00002.safetensors", f"model-{s:05d}-of-00002.safetensors")


def test_component_metadata_is_its_own(tmp_path, mount):
    """The root showed one component's index total_size as the mount's."""
    d = tmp_path / "sd"
    _, arrays = sd_repo(d)
    m = mount(d)
    unet = dict((n, os.getxattr(m.mnt / "unet", n)) for n in os.listxattr(m.mnt / "unet"))
    assert unet[PREFIX + "metadata.total_size"] == str(sum(a.nbytes for a in arrays.values())).encode()
    assert unet[PREFIX + "shards"] == b"2" and unet[PREFIX + "tensors"] == b"4"
    te = m.mnt / "text_encoder"
    assert os.getxattr(te, PREFIX + "metadata.format") == b"pt"
    assert PREFIX + "metadata.total_size" not in os.listxattr(te)
    root = os.listxattr(m.mnt)
    assert PREFIX + "metadata.total_size" not in root
    assert os.getxattr(m.mnt, PREFIX + "shards") == b"4"
    want_bytes = sum(os.path.getsize(d / sh) - 8 - util.read_header(d / sh)[0]
                     for sh in json.loads((m.mnt / ".header.json").read_text()))
    assert int(os.getxattr(m.mnt, PREFIX + "bytes")) == want_bytes
    # What the root says holds for the whole mount: only pairs every shard has.
    assert json.loads((m.mnt / ".metadata.json").read_text()) == {}
    # A plain directory below a component has none of these.
    assert os.listxattr(m.mnt / "unet" / "down_blocks") == []


def test_lora_folder_root_metadata_is_what_all_share(tmp_path, mount):
    d = tmp_path / "loras"
    loras(d)
    m = mount(d)
    assert json.loads((m.mnt / ".metadata.json").read_text()) == {"format": "pt"}
    assert os.getxattr(m.mnt, PREFIX + "metadata.format") == b"pt"
    assert PREFIX + "metadata.ss_network_dim" not in os.listxattr(m.mnt)
    assert os.getxattr(m.mnt / "style_b", PREFIX + "metadata.ss_network_dim") == b"8"


def test_root_files_beside_diffusers_subfolders(tmp_path, mount):
    """SDXL's repo: single-file checkpoints in the root next to the diffusers subfolders.
    The subfolders were hidden, and -o variant=fp16 refused as "no file of variant"."""
    d = tmp_path / "sdxl"
    sd_repo(d)
    for stem in ("sd_xl_base_1.0", "sd_xl_base_1.0_0.9vae"):
        save_file({"model.diffusion_model.w": np.ones(2, np.float32)}, str(d / f"{stem}.safetensors"))
    m = mount(d)
    assert sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == [
        "sd_xl_base_1.0", "sd_xl_base_1.0_0.9vae", "text_encoder", "unet", "vae"]
    check_file(m.mnt / "sd_xl_base_1.0", d / "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0.safetensors")
    check_file(m.mnt / "vae", d / "vae" / "diffusion_pytorch_model.safetensors",
               "vae/diffusion_pytorch_model.safetensors")
    m2 = mount(d, "-o", "variant=fp16")
    check_file(m2.mnt / "vae", d / "vae" / "diffusion_pytorch_model.fp16.safetensors",
               "vae/diffusion_pytorch_model.fp16.safetensors")


def test_one_model_beside_subfolders_gets_its_directory(tmp_path, mount):
    """An index in the root and a subfolder with weights: each is a directory, none hidden."""
    d = tmp_path / "repo"
    two_shards_with_index(d)
    (d / "draft").mkdir()
    save_file({"w": np.ones(2, np.float32)}, str(d / "draft" / "model.safetensors"))
    m = mount(d)
    assert sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == ["draft", "model"]
    for s in (1, 2):
        check_file(m.mnt / "model", d / f"model-{s:05d}-of-00002.safetensors", f"model-{s:05d}-of-00002.safetensors")
    check_file(m.mnt / "draft", d / "draft" / "model.safetensors", "draft/model.safetensors")


def test_root_file_named_as_a_subfolder_is_refused(tmp_path):
    d = tmp_path / "c"
    sd_repo(d)
    save_file({"w": np.ones(2, np.float32)}, str(d / "vae.safetensors"))
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(d, tmp_path / "mnt")
    assert rc == 1 and len(err.splitlines()) == 1 and "subfolder vae/" in err, err


def test_partial_shard_set_is_refused(tmp_path):
    """Two of three shards and no index (a download cut short) mounted as if whole."""
    d = tmp_path / "c"
    d.mkdir()
    for s in (1, 2):
        save_file({f"layers.{s}.w": np.full(3, s, np.float32)}, str(d / f"model-{s:05d}-of-00003.safetensors"))
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(d, tmp_path / "mnt")
    assert rc == 1 and len(err.splitlines()) == 1 and "'model' has 2 of its 3 shards here" in err, err


def test_other_dotted_names_are_files_of_their_own(tmp_path, mount):
    """lora.v2 is no variant of lora unless -o variant=v2 says so."""
    d = tmp_path / "loras"
    d.mkdir()
    save_file({"w": np.ones(2, np.float16)}, str(d / "lora.safetensors"))
    save_file({"w": np.zeros(2, np.float16)}, str(d / "lora.v2.safetensors"))
    m = mount(d)
    assert sorted(n for n in os.listdir(m.mnt) if not n.startswith(".")) == ["lora", "lora.v2"]
    m2 = mount(d, "-o", "variant=v2")
    assert check_file(m2.mnt, d / "lora.v2.safetensors", "lora.v2.safetensors") == ["w"]


@pytest.mark.parametrize("variant", ["", "a/b", "*", "..", "1x", "fp-16"])
def test_bad_variant_names_are_refused(tmp_path, variant):
    """-o variant= (empty) matched every plain file; others gave confusing messages later."""
    d = tmp_path / "sd"
    sd_repo(d)
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(d, tmp_path / "mnt", ("-o", f"variant={variant}"))
    assert rc == 1 and err.startswith("safetensorsfs: variant: ") and len(err.splitlines()) == 1, err
