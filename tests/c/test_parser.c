/*
 * Unit tests of parser/: every rule on a hand-built file, accepted or refused
 * with the expected message.  Run from tests/test_parser_c.py.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../parser/header.h"

#include "check.h"

/* A file of: 8-byte little-endian length of `json`, `json`, then `data_len` bytes of data. */
static uint8_t *make_file(const char *json, size_t json_len, size_t data_len, size_t *len)
{
	uint8_t *f = calloc(1, 8 + json_len + data_len + 1);

	for (int i = 0; i < 8; i++)
		f[i] = (uint8_t)((uint64_t)json_len >> (8 * i));
	memcpy(f + 8, json, json_len);
	for (size_t i = 0; i < data_len; i++)
		f[8 + json_len + i] = (uint8_t)i;
	*len = 8 + json_len + data_len;
	return f;
}

static int parse(const char *json, size_t data_len, struct st_header *h, char *err)
{
	size_t len;
	uint8_t *f = make_file(json, strlen(json), data_len, &len);
	int rc = st_header_parse_buffer(f, len, h, err);

	free(f);
	return rc;
}

static void accepts(const char *json, size_t data_len, size_t tensors)
{
	struct st_header h;
	char err[ST_ERR_LEN] = "";
	int rc = parse(json, data_len, &h, err);

	CHECK(rc == 0, "refused %s: %s", json, err);
	if (rc == 0) {
		CHECK(h.n_tensors == tensors, "%s: %zu tensors, want %zu", json, h.n_tensors, tensors);
		st_header_free(&h);
	}
}

static void refuses(const char *json, size_t data_len, const char *reason)
{
	struct st_header h;
	char err[ST_ERR_LEN] = "";
	int rc = parse(json, data_len, &h, err);

	CHECK(rc < 0, "accepted %s", json);
	CHECK(strstr(err, reason) != NULL, "%s: error \"%s\" lacks \"%s\"", json, err, reason);
	CHECK(strchr(err, '\n') == NULL, "error has a newline: %s", err);
	if (rc == 0)
		st_header_free(&h);
}

static void test_records(void)
{
	struct st_header h;
	char err[ST_ERR_LEN];
	const char *json = "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"1\"},"
			   "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28],\"extra\":[1]},"
			   "\"a.w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";

	CHECK(parse(json, 28, &h, err) == 0, "refused: %s", err);
	CHECK(h.n_tensors == 2, "tensors %zu", h.n_tensors);
	CHECK(h.header_len == strlen(json) && h.data_start == 8 + strlen(json), "lengths");
	CHECK(h.tensors[0].dtype == ST_BF16 && h.tensors[0].rank == 2, "b dtype/rank");
	CHECK(h.dims[h.tensors[0].dims] == 2 && h.dims[h.tensors[0].dims + 1] == 3, "b dims");
	CHECK(h.tensors[0].begin == 16 && h.tensors[0].end == 28, "b offsets");
	CHECK(strcmp(st_tensor_name(&h, &h.tensors[1]), "a.w") == 0, "name order is header order");
	CHECK(h.n_meta == 2, "meta count %zu", h.n_meta);
	CHECK(strcmp(h.metadata_json, "{\"format\":\"pt\",\"x\":\"1\"}") == 0, "metadata json %s",
	      h.metadata_json);
	st_header_free(&h);
}

static void test_names_with_nul_and_escapes(void)
{
	struct st_header h;
	char err[ST_ERR_LEN];
	const char *json = "{\"a\\u0000b\\n\\u00e9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";

	CHECK(parse(json, 1, &h, err) == 0, "refused: %s", err);
	CHECK(h.n_tensors == 1 && h.tensors[0].name_len == 6, "name length %u", h.tensors[0].name_len);
	CHECK(memcmp(st_tensor_name(&h, &h.tensors[0]), "a\0b\n\xc3\xa9", 6) == 0, "name bytes");
	st_header_free(&h);
}

static void test_duplicate_metadata_keys_keep_last(void)
{
	struct st_header h;
	char err[ST_ERR_LEN];

	CHECK(parse("{\"__metadata__\":{\"k\":\"1\",\"j\":\"2\",\"k\":\"3\"}}", 0, &h, err) == 0, "%s", err);
	CHECK(h.n_meta == 2, "n_meta %zu", h.n_meta);
	for (size_t i = 0; i < h.n_meta; i++)
		if (h.strings[h.meta[i].key] == 'k')
			CHECK(h.strings[h.meta[i].value] == '3', "kept the first value");
	st_header_free(&h);
}

static void test_must_accept(void)
{
	accepts("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, 1);
	accepts("{\"e\":{\"dtype\":\"F32\",\"shape\":[2,0],\"data_offsets\":[0,0]}}", 0, 1);
	accepts("{}        ", 0, 0);
	accepts("  \n{}\t ", 0, 0);
	accepts("{\"__metadata__\":{\"a\":\"b\"}}", 0, 0);
	accepts("{\"__metadata__\":null}", 0, 0);
	accepts("{\"z1\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[0,0]},"
		"\"z2\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[0,0]},"
		"\"x\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 3);
	accepts("{\"f4\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[0,3]},"
		"\"f6\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[3,6]}}", 6, 2);
	/* Out of order in the header is fine: only the sorted offsets must tile. */
	accepts("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
		"\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 2, 2);
	accepts("{\"big\":{\"dtype\":\"U8\",\"shape\":[0,18446744073709551614],\"data_offsets\":[0,0]}}", 0, 1);
}

static void test_preamble(void)
{
	struct st_header h;
	char err[ST_ERR_LEN];
	uint8_t small[5] = {1, 0, 0, 0, 0};
	uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	uint8_t big[16] = {0x01, 0xe1, 0xf5, 0x05}; /* 100000001 */
	uint8_t past[16] = {100};
	const char *lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n";

	CHECK(st_header_parse_buffer(small, sizeof(small), &h, err) < 0 && strstr(err, "shorter than"), "%s", err);
	CHECK(st_header_parse_buffer(huge, sizeof(huge), &h, err) < 0 && strstr(err, "exceeds the limit"), "%s", err);
	CHECK(st_header_parse_buffer(big, sizeof(big), &h, err) < 0 && strstr(err, "exceeds the limit"), "%s", err);
	CHECK(st_header_parse_buffer(past, sizeof(past), &h, err) < 0 && strstr(err, "past the end"), "%s", err);
	CHECK(st_header_parse_buffer((const uint8_t *)lfs, strlen(lfs), &h, err) < 0 && strstr(err, "Git LFS"),
	      "%s", err);
}

/* `len` bytes refused with `reason`, and kept on one line. */
static void refuses_bytes(const void *file, size_t len, const char *reason)
{
	struct st_header h;
	char err[ST_ERR_LEN] = "";
	int rc = st_header_parse_buffer(file, len, &h, err);

	CHECK(rc < 0 && strstr(err, reason) != NULL, "want \"%s\", got rc %d \"%s\"", reason, rc, err);
	CHECK(strchr(err, '\n') == NULL, "error has a newline: %s", err);
	if (rc == 0)
		st_header_free(&h);
}

static void refuses_text(const char *text, const char *reason)
{
	refuses_bytes(text, strlen(text), reason);
}

/* Files mounted by mistake are named for what they are, from their first bytes. */
static void test_wrong_files(void)
{
	static const uint8_t gguf[24] = {'G', 'G', 'U', 'F', 3}; /* magic, version 3, no tensors or keys */
	static const uint8_t torch_zip[64] = {'P', 'K', 3, 4, 0, 0, 8, 8}; /* torch.save's first bytes */
	static const uint8_t py_zip[64] = {'P', 'K', 3, 4, 20, 0, 0, 0};   /* Python's zipfile */
	static const uint8_t legacy_torch[16] = {0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20};
	static const uint8_t pickle4[32] = {0x80, 4, 0x95, 0x20};

	refuses_bytes(gguf, sizeof(gguf), "a GGUF file");
	refuses_bytes(torch_zip, sizeof(torch_zip), "a zip archive (a PyTorch");
	refuses_bytes(py_zip, sizeof(py_zip), "a zip archive");
	refuses_bytes(legacy_torch, sizeof(legacy_torch), "a Python pickle");
	refuses_bytes(pickle4, sizeof(pickle4), "a Python pickle");
	refuses_text("<!DOCTYPE html><html><body>404</body></html>", "an HTML page");
	refuses_text("\xef\xbb\xbf\r\n  <HTML lang=en>", "an HTML page");
	refuses_text("<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code></Error>", "an XML document");
	refuses_text("<Error><Code>AccessDenied</Code></Error>", "an XML document");
	refuses_text("{\n  \"architectures\": [\"LlamaForCausalLM\"]\n}\n", "a JSON file");
	refuses_text("[1, 2, 3]", "a JSON file");
	refuses_text("{}", "a JSON file");
	/* Not one of the kinds: the length's own message stays. */
	refuses_text("<!-- nothing -->", "exceeds the limit");
	refuses_text("{x: 1, y: 2}", "exceeds the limit");
	refuses_text("GGU", "shorter than");
	refuses_text("PK\x05\x06", "shorter than");
}

/*
 * A real file whose length's first bytes spell a wrong kind's magic is read
 * as safetensors, or refused for what is really wrong with it.
 */
static void test_wrong_kinds_never_take_a_real_file(void)
{
	struct st_header h;
	char err[ST_ERR_LEN] = "";
	static const uint64_t lengths[] = {
		0x227b, /* "{\"" */ 0x0a7b, /* "{\n" */ 0x225b, /* "[\"" */
		0x0280, /* PROTO 2 */ 0x0580, /* PROTO 5 */ 0x3c, /* '<' */
	};

	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		size_t n = (size_t)lengths[i], len;
		char *json = malloc(n + 1);
		memset(json, ' ', n);
		memcpy(json, "{}", 2);
		uint8_t *f = make_file(json, n, 0, &len);
		int rc = st_header_parse_buffer(f, len, &h, err);
		CHECK(rc == 0, "length %zu: %s", n, err);
		if (rc == 0)
			st_header_free(&h);
		/* Cut short, it is refused for that, not named a pickle or JSON. */
		rc = st_header_parse_buffer(f, len - 1, &h, err);
		CHECK(rc < 0 && strstr(err, "runs past the end"), "length %zu cut short: %s", n, err);
		free(f);
		free(json);
	}
	/* "PK\3\4" as a length is 67324752, under the limit: a truncated file says so. */
	static const uint8_t pk[16] = {'P', 'K', 3, 4};
	refuses_bytes(pk, sizeof(pk), "runs past the end");
}

static void test_refusals(void)
{
	refuses("\xff{}", 0, "not valid UTF-8 at byte 8");
	refuses("{\"\xc0\x80\":{}}", 0, "not valid UTF-8");
	refuses("[]", 0, "expected a JSON object at byte 8");
	refuses("\"x\"", 0, "expected a JSON object");
	refuses("{} x", 0, "trailing bytes after the header's JSON object at byte 11");
	refuses("{}{}", 0, "trailing bytes");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},}", 1, "expected a string key");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1, "expected ',' or '}'");
	refuses("{\"a\" {}}", 0, "expected ':'");
	refuses("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
	refuses("{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16, "unknown dtype");
	refuses("{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unknown dtype");
	refuses("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "missing field 'dtype'");
	refuses("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "missing field 'shape'");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "missing field 'data_offsets'");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":5,\"data_offsets\":[0,1]}}", 1, "shape is not an array");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, "non-negative integer");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1, "non-negative integer");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1, "non-negative integer");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1,
		"non-negative integer");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "data_offsets is not [begin,end]");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1, "data_offsets is not");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1, "data_offsets is not");
	refuses("{\"a\":[1]}", 0, "tensor 'a': entry is not an object");
	refuses("{\"a\":null}", 0, "tensor 'a': entry is not an object");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1,
		"tensor 'a': data_offsets [0,1] hold 1 bytes but dtype U8 and its shape need 2");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,0]}}", 1, "end before they begin");
	refuses("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, "not a whole number of bytes");
	refuses("{\"a\":{\"dtype\":\"U64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
		"element count of shape overflows");
	refuses("{\"a\":{\"dtype\":\"U64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8,
		"bit count of shape and dtype overflows");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
		"\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 3, "overlap another tensor");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
		"\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}", 3, "leave a gap");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "leave a gap");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 2, "trailing bytes after the last tensor");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 1, "the file is truncated");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
		"\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "tensor 'a': name appears twice");
	refuses("{\"__metadata__\":{\"a\":1}}", 0, "__metadata__ value is not a string");
	refuses("{\"__metadata__\":[\"a\"]}", 0, "__metadata__ is not an object of strings");
	refuses("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate key '__metadata__'");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1, "expected ',' or '}'");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,", 0, "unterminated JSON value");
	refuses("{'a':1}", 0, "expected a string key");
	refuses("{\"a\":{\"dtype\":\"U8\",\"shape\":[01],\"data_offsets\":[0,1]}}", 1, "malformed JSON");
	refuses("{\"\x01\":5}", 0, "unescaped control character in a JSON string at byte 10");
	refuses("{\"a\\\"\x1f\":5}", 0, "unescaped control character");
	refuses("{\"\\u0001\":5}", 0, "tensor '\\x01': entry is not an object");
}

/* `test_parser FILE...`: parse each file as the daemon would and print one line for it. */
static int check_files(int n, char **files)
{
	for (int i = 0; i < n; i++) {
		struct st_header h;
		char err[ST_ERR_LEN] = "";
		int fd = open(files[i], O_RDONLY);

		if (fd < 0) {
			printf("%s: cannot open\n", files[i]);
			continue;
		}
		if (st_header_read_fd(fd, &h, err) == 0) {
			printf("%s: ok, %zu tensors\n", files[i], h.n_tensors);
			st_header_free(&h);
		} else {
			printf("%s: refused: %s\n", files[i], err);
		}
		close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		return check_files(argc - 1, argv + 1);
	test_records();
	test_names_with_nul_and_escapes();
	test_duplicate_metadata_keys_keep_last();
	test_must_accept();
	test_preamble();
	test_refusals();
	test_wrong_files();
	test_wrong_kinds_never_take_a_real_file();
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}
