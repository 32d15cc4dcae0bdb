"""fs/folder.c's unit tests in C (tests/c/test_folder.c): the file-name rules of a folder."""
import util


def test_folder_c_unit_tests():
    util.run_c_unit_tests("test_folder")
