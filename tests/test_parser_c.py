"""The parser's unit tests in C (tests/c/test_parser.c), run from pytest.
TEST_PARSER names the binary; the Makefile sets it."""
import os
import subprocess

import pytest

import util


def test_parser_c_unit_tests():
    binary = os.environ.get("TEST_PARSER")
    if not binary:
        pytest.skip("TEST_PARSER is not set (make test sets it to the C parser tests' binary)")
    assert os.path.exists(binary), f"TEST_PARSER={binary} does not exist: run make"
    r = subprocess.run([binary], capture_output=True, text=True, timeout=120, env=util.daemon_env(),
                       cwd=util.ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert not any(m in out for m in util.SANITIZER_MARKERS), out[-4000:]
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert last.endswith(" 0 failed") and " passed, " in last, last
