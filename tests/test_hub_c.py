"""fs/hub.c's unit tests in C (tests/c/test_hub.c): hf:// URIs, the token, the tree API's pages."""
import util


def test_hub_c_unit_tests():
    util.run_c_unit_tests("test_hub")
