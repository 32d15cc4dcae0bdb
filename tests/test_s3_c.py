"""fs/s3.c's unit tests in C (tests/c/test_s3.c): s3:// URIs, the AWS settings as the AWS
CLI finds them, and ListObjectsV2 pages, hostile ones included."""
import util


def test_s3_c_unit_tests():
    util.run_c_unit_tests("test_s3")
