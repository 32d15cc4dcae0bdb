"""fs/hub.c's unit tests in C (tests/c/test_hub.c): hf:// URIs, the token, the tree API's pages."""
import os
import subprocess
from pathlib import Path

import pytest

import util

BIN = Path(os.environ.get("TEST_BIN_DIR", util.ROOT / "build")) / "test_hub"


def test_hub_c_unit_tests():
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run make (TEST_BIN_DIR names the build folder)")
    r = subprocess.run([str(BIN)], capture_output=True, text=True, timeout=60, env=util.daemon_env())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert not any(m in out for m in util.SANITIZER_MARKERS), out[-4000:]
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert last.endswith(" 0 failed") and " passed, " in last, last
