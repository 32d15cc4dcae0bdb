"""Writes tests/corpus/: hostile and borderline .safetensors files, and MANIFEST.tsv
saying for each whether it must mount ("accept") or be refused ("refuse", with a
piece of the expected one-line reason).

The cases follow the reference implementation's reader tests (safetensors'
tensor.rs tests, its Python tests and attacks/ scripts) and go further.
Regenerating gives byte-identical files; tests/test_corpus.py checks that.
Large cases (--big) go elsewhere: they are built at test time, not committed.
"""
import json
import struct
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "corpus"


def blob(header, data=b"", n=None):
    """8-byte length (n, or the header's), header bytes, data bytes."""
    if isinstance(header, (dict, list)):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def cases():
    c = []

    def accept(name, b):
        c.append((name, b, "accept", ""))

    def refuse(name, b, why):
        c.append((name, b, "refuse", why))

    one = {"x": t("U8", [1], 0, 1)}
    # --- must accept (the reference's accepted cases, and names it allows) ---
    accept("scalar", blob({"s": t("F64", [], 0, 8)}, bytes(8)))
    accept("zero-dim", blob({"z": t("F32", [2, 0], 0, 0)}))
    accept("empty-padded", blob(b"{}      "))
    accept("empty-leading-ws", blob(b" \n\t{}\r\n"))
    accept("metadata-only", blob({"__metadata__": {"a": "b"}}))
    accept("metadata-null", blob(b'{"__metadata__":null}'))
    accept("zero-sized-shared-offset", blob({"a": t("I8", [0], 0, 0), "b": t("I8", [0], 0, 0),
                                              "c": t("I8", [2], 0, 2)}, b"ab"))
    accept("unsorted-offsets", blob({"b": t("U8", [1], 1, 2), "a": t("U8", [1], 0, 1)}, b"xy"))
    accept("extra-fields", blob({"x": {**t("U8", [1], 0, 1), "extra": {"deep": [1, 2]}}}, b"x"))
    accept("f4-even", blob({"f": t("F4", [2, 3], 0, 3)}, b"abc"))
    accept("f6-e2m3", blob({"f": t("F6_E2M3", [4], 0, 3)}, b"abc"))
    accept("f6-e3m2", blob({"f": t("F6_E3M2", [8], 0, 6)}, b"abcdef"))
    accept("name-nul", blob(b'{"a\\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"))
    accept("name-slash", blob({"a/b": t("U8", [1], 0, 1)}, b"x"))
    accept("name-dotdot", blob({"..": t("U8", [1], 0, 1), "a..b": t("U8", [1], 1, 2)}, b"xy"))
    accept("name-dot", blob({".": t("U8", [1], 0, 1)}, b"x"))
    accept("name-empty", blob({"": t("U8", [1], 0, 1)}, b"x"))
    accept("name-percent", blob({"50%": t("U8", [1], 0, 1), "%25": t("U8", [1], 1, 2)}, b"xy"))
    accept("name-reserved", blob({".header.json": t("U8", [1], 0, 1), ".metadata.json": t("U8", [1], 1, 2)}, b"xy"))
    accept("name-1000-parts", blob({".".join(["p"] * 1000): t("U8", [1], 0, 1)}, b"x"))
    accept("name-file-and-dir", blob({"a.b": t("U8", [1], 0, 1), "a.b.c": t("U8", [1], 1, 2)}, b"xy"))
    accept("name-unicode", blob({"emb\u00e9dding.\u6743\u91cd": t("U8", [1], 0, 1)}, b"x"))
    accept("n-not-multiple-of-8", blob(json.dumps(one, separators=(",", ":")) + " ", b"x"))
    # --- the header length ---
    refuse("short-file", b"\x05\x00\x00", "shorter than the 8-byte header length")
    refuse("n-zero", blob(b"", n=0), "expected a JSON object")
    refuse("n-max", blob(b"{}", n=2**64 - 1), "exceeds the limit")
    refuse("n-over-limit", blob(b"{}", n=100_000_001), "exceeds the limit")
    refuse("n-beyond-file", blob(b"{}", n=1000), "runs past the end")
    refuse("n-1000-small-file", blob(b"{}" + b" " * 20, n=1000), "runs past the end")
    refuse("git-lfs-pointer", b"version https://git-lfs.github.com/spec/v1\noid sha256:"
           + b"0" * 64 + b"\nsize 123456\n", "Git LFS pointer")
    # --- the JSON ---
    refuse("non-utf8", blob(b'{"\xff":1}'), "not valid UTF-8")
    refuse("overlong-utf8", blob(b'{"\xc0\xaf":1}'), "not valid UTF-8")
    refuse("surrogate-utf8", blob(b'{"\xed\xa0\x80":1}'), "not valid UTF-8")
    refuse("control-in-name", blob(b'{"a\x01":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
           "unescaped control character")
    refuse("json-array", blob(b"[]"), "expected a JSON object")
    refuse("json-string", blob(b'"hello"'), "expected a JSON object")
    refuse("json-number", blob(b"42"), "expected a JSON object")
    refuse("trailing-garbage", blob(b"{}garbage"), "trailing bytes after the header's JSON object")
    refuse("trailing-second-object", blob(b"{}{}"), "trailing bytes")
    refuse("trailing-nul-padding", blob(b"{}\x00\x00"), "trailing bytes")
    refuse("polyglot-trailing-data", blob(b"{}", b"<html>polyglot</html>"), "trailing bytes after the last tensor")
    refuse("truncated-json", blob(b'{"x":{"dtype":"U8","shape":[1],'), "unterminated JSON value")
    refuse("single-quotes", blob(b"{'x':1}"), "expected a string key")
    refuse("trailing-comma", blob(b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},}', b"x"),
           "expected a string key")
    # --- dtypes ---
    refuse("dtype-unknown", blob({"x": t("F128", [1], 0, 16)}, bytes(16)), "unknown dtype")
    refuse("dtype-lowercase", blob({"x": t("f32", [1], 0, 4)}, bytes(4)), "unknown dtype")
    refuse("dtype-torch-name", blob({"x": t("float32", [1], 0, 4)}, bytes(4)), "unknown dtype")
    refuse("dtype-not-string", blob({"x": t(32, [1], 0, 4)}, bytes(4)), "unknown dtype")
    refuse("dtype-missing", blob({"x": {"shape": [1], "data_offsets": [0, 1]}}, b"x"), "missing field 'dtype'")
    # --- shapes ---
    refuse("shape-not-array", blob({"x": t("U8", 1, 0, 1)}, b"x"), "shape is not an array")
    refuse("shape-negative", blob({"x": t("U8", [-1], 0, 1)}, b"x"), "non-negative integer")
    refuse("shape-fractional", blob(b'{"x":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}', b"x"),
           "non-negative integer")
    refuse("shape-string", blob({"x": t("U8", ["1"], 0, 1)}, b"x"), "non-negative integer")
    refuse("shape-huge", blob(b'{"x":{"dtype":"U8","shape":[100000000000000000000000],"data_offsets":[0,1]}}',
                              b"x"), "non-negative integer")
    refuse("shape-missing", blob({"x": {"dtype": "U8", "data_offsets": [0, 1]}}, b"x"), "missing field 'shape'")
    refuse("element-count-overflow", blob({"x": t("U8", [2**32, 2**32], 0, 1)}, b"x"),
           "element count of shape overflows")
    refuse("bit-count-overflow", blob({"x": t("F64", [2**61], 0, 8)}, bytes(8)), "bit count of shape and dtype overflows")
    refuse("f4-odd-elements", blob({"x": t("F4", [3], 0, 2)}, b"ab"), "not a whole number of bytes")
    refuse("f6-partial-byte", blob({"x": t("F6_E3M2", [3], 0, 3)}, b"abc"), "not a whole number of bytes")
    refuse("size-mismatch", blob({"x": t("F32", [2, 2], 0, 12)}, bytes(12)), "need 16")
    # --- offsets ---
    refuse("offsets-missing", blob({"x": {"dtype": "U8", "shape": [1]}}, b"x"), "missing field 'data_offsets'")
    refuse("offsets-one", blob({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"x"),
           "data_offsets is not [begin,end]")
    refuse("offsets-three", blob({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}, b"x"),
           "data_offsets is not [begin,end]")
    refuse("offsets-negative", blob({"x": t("U8", [1], -1, 0)}, b"x"), "data_offsets is not [begin,end]")
    refuse("offsets-reversed", blob({"x": t("U8", [0], 1, 0)}, b"x"), "end before they begin")
    refuse("offsets-overlap", blob({"a": t("U8", [2], 0, 2), "b": t("U8", [2], 1, 3)}, b"abc"),
           "overlap another tensor")
    refuse("ten-on-one-range", blob({f"t{i}": t("U8", [4], 0, 4) for i in range(10)}, b"abcd"),
           "overlap another tensor")
    refuse("offsets-gap", blob({"a": t("U8", [1], 0, 1), "b": t("U8", [1], 2, 3)}, b"abc"), "leave a gap")
    refuse("offsets-not-from-zero", blob({"a": t("U8", [1], 1, 2)}, b"ab"), "leave a gap")
    refuse("offsets-beyond-data", blob({"a": t("U8", [4], 0, 4)}, b"ab"), "the file is truncated")
    refuse("offsets-beyond-2-63", blob({"a": t("U8", [1], 2**63, 2**63 + 1)}, b"x"), "leave a gap")
    refuse("data-longer", blob(one, b"xyz"), "trailing bytes after the last tensor")
    refuse("data-shorter", blob({"x": t("U8", [4], 0, 4)}, b"xy"), "the file is truncated")
    # --- metadata and names ---
    refuse("metadata-not-map", blob({"__metadata__": ["a"]}), "__metadata__ is not an object of strings")
    refuse("metadata-number-value", blob({"__metadata__": {"a": 1}}), "__metadata__ value is not a string")
    refuse("metadata-nested", blob({"__metadata__": {"a": {"b": "c"}}}), "__metadata__ value is not a string")
    refuse("metadata-as-tensor", blob({"__metadata__": t("U8", [1], 0, 1)}, b"x"), "__metadata__ value is not a string")
    refuse("metadata-twice", blob(b'{"__metadata__":{},"__metadata__":{}}'), "duplicate key '__metadata__'")
    refuse("duplicate-names", blob(b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                   b'"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy"),
           "name appears twice")
    refuse("entry-not-object", blob({"x": [1, 2]}), "entry is not an object")
    return c


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rows = ["# file\texpect\treason (a piece of the one-line error)"]
    for name, data, expect, why in cases():
        (OUT / f"{name}.safetensors").write_bytes(data)
        rows.append(f"{name}.safetensors\t{expect}\t{why}")
    (OUT / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} cases to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
