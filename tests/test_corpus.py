"""tests/corpus: every hostile or borderline file does what MANIFEST.tsv says,
the corpus is what scripts/make_corpus.py writes, and the parser runs clean
under valgrind on all of it."""
import importlib.util
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import util

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"


def manifest():
    rows = []
    for line in (CORPUS / "MANIFEST.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            name, expect, why = (line.split("\t") + [""])[:3]
            rows.append((name, expect, why))
    return rows


def test_corpus_is_what_the_script_writes():
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "scripts" / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = mod.cases()
    assert len(cases) == len(manifest()) >= 70
    for name, data, expect, why in cases:
        assert (CORPUS / f"{name}.safetensors").read_bytes() == data, name


def header_tensors(path):
    """The tensor names of a file's header, read with json, not by the daemon's parser."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


@pytest.mark.parametrize("name,expect,why", manifest(), ids=[r[0] for r in manifest()])
def test_corpus_case(tmp_path, mount, name, expect, why):
    src = CORPUS / name
    if expect == "accept":
        m = mount(src)
        stack, files = [str(m.mnt)], 0
        while stack:  # iterative: 1000-level trees are in the corpus
            for e in os.scandir(stack.pop()):
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    with open(e.path, "rb") as f:
                        f.read()
                    files += 1
        # every tensor, and the dot-files of the root
        assert files == len(header_tensors(src)) + len(util.RESERVED), files
        return
    (tmp_path / "mnt").mkdir()
    rc, out, err = util.run_refused(src, tmp_path / "mnt")
    assert rc == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"safetensorsfs: {src}: "), err
    assert why in lines[0]
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed (scripts/deps.sh installs it)")
def test_parser_under_valgrind():
    test_parser = os.environ.get("TEST_PARSER")
    if not test_parser:
        pytest.skip("TEST_PARSER is not set (make test sets it)")
    if "asan" in test_parser:
        pytest.skip("valgrind does not run sanitizer builds")
    files = sorted(str(p) for p in CORPUS.glob("*.safetensors"))
    r = subprocess.run(["valgrind", "-q", "--error-exitcode=9", "--leak-check=full",
                        "--errors-for-leak-kinds=definite", test_parser, *files],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == len(files)


def test_200k_tensors_mount(tmp_path, mount):
    path = tmp_path / "many.safetensors"
    save_file({f"layers.{i % 100}.t{i}": np.zeros(1, np.uint8) for i in range(200_000)}, str(path))
    m = mount(path)
    assert os.getxattr(m.mnt, "user.safetensors.tensors") == b"200000"
    assert len(os.listdir(Path(m.mnt) / "layers" / "7")) == 2000


def test_100mb_header_refused(tmp_path):
    path = tmp_path / "huge-header.safetensors"
    n = 100_000_001
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + b"{}")
        f.truncate(8 + n)
    (tmp_path / "mnt").mkdir()
    rc, _, err = util.run_refused(path, tmp_path / "mnt")
    assert rc == 1 and "exceeds the limit" in err
