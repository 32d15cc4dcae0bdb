/*
 * Tests of fs/view.c, fs/convert.c and fs/npy.c.
 *
 * With no arguments: unit tests, ending with "N passed, N failed".  Other
 * modes let tests/test_view_units.py compare against NumPy and ml_dtypes:
 *
 *   test_view parse NAME
 *       prints "base=LEN slices=[a:b,...] dtype=NAME|- npy=0|1 view=0|1",
 *       or "ENOENT" (exit 3)
 *   test_view convert SRC DST < elements > elements
 *       converts stdin as a packed array of SRC into DST (sub-byte DST only
 *       as SRC == DST: one code per byte)
 *   test_view read NAME DTYPE SHAPE [PIECE] < tensor bytes > view bytes
 *       plans view NAME (its TENSOR part is ignored) of a tensor of DTYPE and
 *       SHAPE ("4,5,6"; "" for a scalar), then reads it in PIECE-byte reads
 *       (default: one read); stderr gets "size=N contiguous=0|1 src_off=N"
 *       and one "range OFF LEN" line per read_src call; "ENOENT" (exit 3)
 *   test_view bench [MiB]
 *       conversion speed, GB/s of output
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../fs/convert.h"
#include "../../fs/npy.h"
#include "../../fs/view.h"

#include "check.h"

/* ---- A source: tensor bytes in memory, every read_src call checked ---- */

struct src {
	const uint8_t *data;
	uint64_t len;
	unsigned calls;
	uint64_t bytes;
	FILE *log;	/* "range OFF LEN" per call, or NULL */
	int fail_at;	/* make call number fail_at fail (1-based), 0: never */
};

static int src_read(void *ctx, void *dst, size_t n, uint64_t off)
{
	struct src *s = ctx;

	s->calls++;
	s->bytes += n;
	if (s->log)
		fprintf(s->log, "range %" PRIu64 " %zu\n", off, n);
	if ((int)s->calls == s->fail_at)
		return -EIO;
	if (off > s->len || n > s->len - off)
		return -EFAULT;
	memcpy(dst, s->data + off, n);
	return 0;
}

/* ---- Small helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

/* xorshift64*: deterministic, so failures reproduce. */
static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static int parse_shape(const char *s, uint64_t *shape, uint32_t max)
{
	uint32_t rank = 0;

	while (*s && *s != '-') {
		char *end;

		if (rank == max)
			return -1;
		shape[rank++] = strtoull(s, &end, 10);
		if (end == s || (*end && *end != ','))
			return -1;
		s = *end ? end + 1 : end;
	}
	return (int)rank;
}

static int plan_name(const char *name, enum st_dtype dt, const uint64_t *shape, uint32_t rank,
		     struct view_plan *p)
{
	struct view_spec v;
	int rc = view_parse(name, strlen(name), &v);

	return rc < 0 ? rc : view_plan(&v, dt, shape, rank, p);
}

/* ---- Unit tests: names ---- */

static void parses(const char *name, size_t base, uint32_t n_slices, int dtype, bool npy, bool view)
{
	struct view_spec v;
	int rc = view_parse(name, strlen(name), &v);

	CHECK(rc == 0, "%s: refused", name);
	if (rc == 0)
		CHECK(v.base_len == base && v.n_slices == n_slices && v.dtype == dtype && v.npy == npy &&
			      v.is_view == view,
		      "%s: base %zu slices %u dtype %d npy %d view %d", name, v.base_len, v.n_slices,
		      v.dtype, v.npy, v.is_view);
}

static void refuses(const char *name)
{
	struct view_spec v;

	CHECK(view_parse(name, strlen(name), &v) == -ENOENT, "%s: accepted", name);
}

static void test_parse(void)
{
	struct view_spec v;

	parses("w", 1, 0, -1, false, false);
	parses("model.layers.0.weight", 21, 0, -1, false, false);
	parses("w[0:128]", 1, 1, -1, false, true);
	parses("w[:,64:128]", 1, 2, -1, false, true);
	parses("w@F32", 1, 0, ST_F32, false, true);
	parses("w.npy", 1, 0, -1, true, true);
	parses("w[0:4,:]@F32.npy", 1, 2, ST_F32, true, true);
	parses("w[:]", 1, 1, -1, false, true);
	parses("w[-3:-1]@BF16", 1, 1, ST_BF16, false, true);
	parses("w[-9223372036854775808:9223372036854775807]", 1, 1, -1, false, true);
	parses("w[007:]", 1, 1, -1, false, true);
	parses("a@b[0:1]", 3, 1, -1, false, true);	/* '@' before ']': part of the name */
	parses("a.b[1:2].npy", 3, 1, -1, true, true);
	parses("w@F8_E4M3FNUZ", 1, 0, ST_F8_E4M3FNUZ, false, true);
	parses("w.npy@F16", 5, 0, ST_F16, false, true);	/* "w.npy" converted */
	/* Suffixes that are not views stay in TENSOR; no such tensor: ENOENT. */
	parses("w[0:1", 5, 0, -1, false, false);
	parses("w[0:1]@BF16@F32", 11, 0, ST_F32, false, true);
	CHECK(view_parse("w[3:-5]", 7, &v) == 0 && v.slices[0].start == 3 && v.slices[0].stop == -5 &&
		      v.slices[0].has_start && v.slices[0].has_stop,
	      "w[3:-5] bounds");
	CHECK(view_parse("w[:7,2:]", 8, &v) == 0 && !v.slices[0].has_start && v.slices[0].stop == 7 &&
		      v.slices[1].start == 2 && !v.slices[1].has_stop,
	      "w[:7,2:] bounds");
	const char *bad[] = {
		"", ".npy", "@F32", "[0:1]", "[0:1]@F32.npy", "w[]", "w[0]", "w0:1]",
		"w[::2]", "w[0:1:2]", "w[0:1,]", "w[,0:1]", "w[ 0:1]", "w[0 :1]", "w[+1:2]",
		"w[1:2]]", "w[a:b]", "w[--1:]", "w[-:]", "w[9223372036854775808:]",
		"w[-9223372036854775809:]", "w@f32", "w@F33", "w@", "w@F32 ", "w@x",
		"a@b.npy", "w[0:1]@", "w[0:1x]", "w[0x1:2]", "w[1e3:]",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		refuses(bad[i]);
	/* Names are counted bytes, not C strings: the parser stops at len. */
	CHECK(view_parse("w[0:1]XYZ", 6, &v) == 0 && v.n_slices == 1, "length-bounded parse");
	/* 128 slices fit, 129 do not. */
	char big[1024] = "w[";
	for (int i = 0; i < 129; i++)
		strcat(big, i ? ",:" : ":");
	strcat(big, "]");
	refuses(big);
	big[strlen(big) - 3] = ']';
	big[strlen(big) - 2] = 0;
	CHECK(view_parse(big, strlen(big), &v) == 0 && v.n_slices == 128, "128 slices");
}

/* ---- Unit tests: plans ---- */

static void plan_is(const char *name, enum st_dtype dt, const char *shape_s, uint64_t size,
		    uint64_t runs, int contiguous, uint64_t src_off)
{
	uint64_t shape[16], off = ~0ull;
	int rank = parse_shape(shape_s, shape, 16);
	struct view_plan p;
	int rc = plan_name(name, dt, shape, (uint32_t)rank, &p);

	CHECK(rc == 0, "%s %s (%s): refused %d", name, st_dtype_name(dt), shape_s, rc);
	if (rc < 0)
		return;
	int c = view_contiguous(&p, &off);

	CHECK(p.size == size && p.n_runs == runs && c == contiguous && (!c || off == src_off),
	      "%s %s (%s): size %" PRIu64 " runs %" PRIu64 " contiguous %d off %" PRIu64, name,
	      st_dtype_name(dt), shape_s, p.size, p.n_runs, c, off);
	view_plan_free(&p);
}

static void plan_refused(const char *name, enum st_dtype dt, const char *shape_s)
{
	uint64_t shape[16];
	int rank = parse_shape(shape_s, shape, 16);
	struct view_plan p;
	int rc = plan_name(name, dt, shape, (uint32_t)rank, &p);

	CHECK(rc == -ENOENT, "%s %s (%s): planned (%d)", name, st_dtype_name(dt), shape_s, rc);
	if (rc == 0)
		view_plan_free(&p);
}

static void test_plan(void)
{
	plan_is("w", ST_F32, "4,5", 80, 1, 1, 0);
	plan_is("w[1:3]", ST_F32, "4,5", 40, 1, 1, 20);
	plan_is("w[:,1:3]", ST_F32, "4,5", 32, 4, 0, 0);
	plan_is("w[2:3,1:3]", ST_F32, "4,5", 8, 1, 1, 44);	/* one row: one range */
	plan_is("w[:,:]", ST_F32, "4,5", 80, 1, 1, 0);
	plan_is("w[-100:100]", ST_F32, "4,5", 80, 1, 1, 0);	/* clamped */
	plan_is("w[3:1]", ST_F32, "4,5", 0, 0, 1, 0);	/* empty */
	plan_is("w[:,:,1:2]", ST_U8, "2,3,4", 6, 6, 0, 0);
	plan_is("w[1:2,:,1:2]", ST_U8, "2,3,4", 3, 3, 0, 0);
	plan_is("w[:,1:2]", ST_U8, "2,3,4", 8, 2, 0, 0);
	plan_is("w@F32", ST_BF16, "4,5", 80, 1, 0, 0);
	plan_is("w@BF16", ST_BF16, "4,5", 40, 1, 1, 0);	/* its own dtype: raw */
	plan_is("w.npy", ST_F32, "4,5", 128 + 80, 1, 0, 0);
	plan_is("w.npy", ST_F32, "", 128 + 4, 1, 0, 0);	/* a scalar */
	plan_is("w", ST_F32, "", 4, 1, 1, 0);
	plan_is("w[0:0].npy", ST_F32, "4,5", 128, 0, 0, 0);
	plan_is("w[:,2:4]", ST_F4, "3,8", 3, 3, 0, 0);	/* bytes 1, 5, 9 */
	plan_is("w[1:2,2:4]", ST_F4, "3,8", 1, 1, 1, 5);
	plan_is("w.npy", ST_F4, "3,8", 128 + 24, 1, 0, 0);	/* a byte per element */
	plan_is("w[:,1:2].npy", ST_F4, "3,8", 128 + 3, 3, 0, 0);
	plan_is("w[:,1:3]@F32", ST_F6_E2M3, "2,4", 16, 2, 0, 0);
	plan_is("w[0:1]", ST_F6_E3M2, "2,4", 3, 1, 1, 0);
	plan_is("w.npy", ST_C64, "2", 128 + 16, 1, 0, 0);
	plan_is("w@C64", ST_C64, "2", 16, 1, 1, 0);
	plan_refused("w[0:1]", ST_F32, "");	/* more slices than dimensions */
	plan_refused("w[:,:,:]", ST_F32, "4,5");
	plan_refused("w@F32", ST_C64, "2");	/* C64 is not converted */
	plan_refused("w@I32", ST_F32, "2");	/* integer targets are not supported */
	plan_refused("w@F8_E4M3", ST_F32, "2");
	plan_refused("w[:,1:2]", ST_F4, "3,8");	/* off byte boundaries */
	plan_refused("w[:,1:3]", ST_F6_E2M3, "2,4");
	plan_refused("w[:,0:2]", ST_F4, "2,3");	/* aligned runs, but row 1 starts at bit 12 */
	plan_refused("w", ST_F4, "3");	/* 12 bits */
	plan_refused("w", ST_F32, "4611686018427387904,4");	/* 2^64 bytes */
	plan_refused("w[1:]", ST_U8, "18446744073709551615,18446744073709551615");
}

/* ---- Unit tests: npy headers ---- */

static void header_is(enum st_dtype dt, const char *shape_s, const char *dict)
{
	uint64_t shape[16];
	int rank = parse_shape(shape_s, shape, 16);
	char *h;
	size_t len, dlen = strlen(dict);

	if (npy_header(dt, shape, (uint32_t)rank, &h, &len) < 0) {
		CHECK(0, "npy_header %s refused", shape_s);
		return;
	}
	bool ok = len % 64 == 0 && memcmp(h, "\x93NUMPY\x01\x00", 8) == 0 &&
		  (size_t)((uint8_t)h[8] | (uint8_t)h[9] << 8) == len - 10 && len >= 10 + dlen + 1 &&
		  memcmp(h + 10, dict, dlen) == 0 && h[len - 1] == '\n';

	for (size_t i = 10 + dlen; ok && i < len - 1; i++)
		ok = h[i] == ' ';
	CHECK(ok, "npy header for %s (%s): %.*s", st_dtype_name(dt), shape_s, (int)len, h);
	free(h);
}

static void test_npy(void)
{
	/* The dicts np.save writes (numpy 2.4), its padding checked above. */
	header_is(ST_F32, "3", "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }");
	header_is(ST_I64, "2,3", "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }");
	header_is(ST_BOOL, "", "{'descr': '|b1', 'fortran_order': False, 'shape': (), }");
	header_is(ST_BF16, "7", "{'descr': 'bfloat16', 'fortran_order': False, 'shape': (7,), }");
	CHECK(npy_descr(ST_F8_E8M0) && strcmp(npy_descr(ST_F8_E8M0), "float8_e8m0fnu") == 0, "e8m0 descr");
	/* A header past 65535 bytes switches to format 2.0 with a 4-byte length. */
	static uint64_t shape[4000];
	char *h;
	size_t len;

	for (int i = 0; i < 4000; i++)
		shape[i] = 1000000000000000000ull;
	CHECK(npy_header(ST_U8, shape, 4000, &h, &len) == 0 && len % 64 == 0 && h[6] == 2 &&
		      (size_t)((uint8_t)h[8] | (uint8_t)h[9] << 8 | (uint8_t)h[10] << 16) == len - 12 &&
		      h[len - 1] == '\n',
	      "format 2.0 header");
	free(h);
}

/* ---- Unit tests: conversions at chosen values ---- */

static uint64_t conv1(enum st_dtype s, enum st_dtype d, uint64_t in)
{
	uint64_t out = 0;

	convert(s, d, &in, 0, &out, 1);
	return out;
}

static void test_convert(void)
{
	CHECK(conv1(ST_BF16, ST_F32, 0x3f80) == 0x3f800000, "bf16 1.0");
	CHECK(conv1(ST_F16, ST_F32, 0x3c00) == 0x3f800000, "f16 1.0");
	CHECK(conv1(ST_F16, ST_F32, 0x0001) == 0x33800000, "f16 smallest subnormal");
	CHECK(conv1(ST_F16, ST_F32, 0x7c01) == 0x7f802000, "f16 sNaN kept signalling");
	CHECK(conv1(ST_F16, ST_F64, 0xfc01) == 0xfff0040000000000, "f16 -sNaN to f64");
	CHECK(conv1(ST_F32, ST_F16, 0x7f800001) == 0x7c01, "f32 NaN losing its payload stays NaN");
	CHECK(conv1(ST_F32, ST_BF16, 0xffa00000) == 0xffc0, "bf16 NaN is canonical");
	CHECK(conv1(ST_F32, ST_BF16, 0x3f808000) == 0x3f80, "bf16 tie to even down");
	CHECK(conv1(ST_F32, ST_BF16, 0x3f818000) == 0x3f82, "bf16 tie to even up");
	CHECK(conv1(ST_F32, ST_F16, 0x477ff000) == 0x7c00, "65520 overflows half");
	CHECK(conv1(ST_F32, ST_F16, 0x477fefff) == 0x7bff, "just below 65520 is 65504");
	/* 1 + 2^-11 + 2^-40: NumPy rounds double->half once (up), not via float. */
	CHECK(conv1(ST_F64, ST_F16, 0x3ff0020000100000) == 0x3c01, "f64->f16 single rounding");
	/* 1 + 2^-8 + 2^-40: a tie in float, but above the halfway point: one rounding goes up. */
	CHECK(conv1(ST_F64, ST_BF16, 0x3ff0100000100000) == 0x3f81, "f64->bf16 single rounding up");
	/* 1 + 2^-8 - 2^-40: a tie in float too, below the halfway point: down. */
	CHECK(conv1(ST_F64, ST_BF16, 0x3ff00fffffff0000) == 0x3f80, "f64->bf16 single rounding down");
	CHECK(conv1(ST_F64, ST_BF16, 0x47efffffe0000000) == 0x7f80, "f64 FLT_MAX rounds to bf16 inf");
	CHECK(conv1(ST_F64, ST_BF16, 0x7ff0000000000000) == 0x7f80, "f64 inf");
	CHECK(conv1(ST_F8_E4M3, ST_F32, 0x7e) == 0x43e00000, "e4m3 448");
	CHECK(conv1(ST_F8_E4M3, ST_F32, 0xff) == 0xffc00000, "e4m3 -NaN");
	CHECK(conv1(ST_F8_E4M3FNUZ, ST_F32, 0x80) == 0xffc00000, "fnuz NaN");
	CHECK(conv1(ST_F8_E5M2, ST_F32, 0xfc) == 0xff800000, "e5m2 -Inf");
	CHECK(conv1(ST_F8_E8M0, ST_F32, 0x00) == 0x00400000, "e8m0 2^-127");
	CHECK(conv1(ST_F8_E8M0, ST_F16, 0x67) == 0x0001, "e8m0 2^-24 in half");
	CHECK(conv1(ST_F8_E5M2, ST_F64, 0x7f) == 0x7ff8000000000000, "e5m2 NaN in f64");
	CHECK(conv1(ST_I64, ST_F32, 0x7fffffffffffffff) == 0x5f000000, "i64 max");
	CHECK(conv1(ST_U64, ST_F64, ~0ull) == 0x43f0000000000000, "u64 max");
	CHECK(conv1(ST_BOOL, ST_BF16, 0x02) == 0x3f80, "bool nonzero is 1");
	CHECK(conv1(ST_I8, ST_F16, 0x80) == 0xd800, "i8 -128");
	/* F4 0.5 in the high nibble, 6.0 in the low nibble: element 0 is the low one. */
	uint8_t f4 = 0x17, codes[2];
	uint32_t f4v[2];
	convert(ST_F4, ST_F32, &f4, 0, f4v, 2);
	convert(ST_F4, ST_F4, &f4, 0, codes, 2);
	CHECK(f4v[0] == 0x40c00000 && f4v[1] == 0x3f000000 && codes[0] == 7 && codes[1] == 1,
	      "f4 nibble order");
	/* F6: four elements in three bytes, from bit 0 up; start at bit 6. */
	uint8_t f6[3] = {0x40 | 0x3f, 0x0f, 0x00}, c6[2];
	convert(ST_F6_E2M3, ST_F6_E2M3, f6, 6, c6, 2);
	CHECK(c6[0] == 0x3d && c6[1] == 0x00, "f6 bit stream: %x %x", c6[0], c6[1]);
	CHECK(!convert_supported(ST_C64, ST_F32) && convert_supported(ST_C64, ST_C64) &&
		      !convert_supported(ST_F32, ST_I32) && convert_supported(ST_F4, ST_BF16),
	      "supported pairs");
}

/* ---- Unit tests: reads against a naive gather ---- */

/* The view's elements in C order, gathered one index at a time: an oracle
 * independent of view.c's runs.  Returns the byte count. */
static size_t naive_gather(const uint8_t *t, unsigned esize, const uint64_t *shape, uint32_t rank,
			   const uint64_t *lo, const uint64_t *ext, uint8_t *out)
{
	uint64_t idx[8] = {0}, total = 1;
	size_t n = 0;

	for (uint32_t i = 0; i < rank; i++)
		total *= ext[i];
	for (uint64_t k = 0; k < total; k++) {
		uint64_t e = 0;

		for (uint32_t i = 0; i < rank; i++)
			e = e * shape[i] + lo[i] + idx[i];
		memcpy(out + n, t + e * esize, esize);
		n += esize;
		for (uint32_t i = rank; i-- > 0;)
			if (++idx[i] < ext[i])
				break;
			else
				idx[i] = 0;
	}
	return n;
}

/* Reads the whole view in random pieces; each read checked against bounds. */
static int read_pieces(const struct view_plan *p, struct src *s, uint8_t *out)
{
	uint64_t off = 0;

	while (off < p->size) {
		size_t n = 1 + (size_t)rnd_below(p->size - off < 97 ? p->size - off : 97);
		int rc = view_read(p, off, n, out + off, src_read, s);

		if (rc < 0)
			return rc;
		off += n;
	}
	return 0;
}

/* One random raw slice of a random tensor: bytes equal the naive gather,
 * read in one piece it takes exactly n_runs calls and only selected bytes. */
static void random_slice_case(void)
{
	static const enum st_dtype dts[] = {ST_U8, ST_I16, ST_F32, ST_F64, ST_C64};
	enum st_dtype dt = dts[rnd_below(5)];
	unsigned es = st_dtype_bits(dt) / 8;
	uint32_t rank = (uint32_t)rnd_below(5);
	uint64_t shape[8], lo[8], ext[8], total = 1;
	char name[256] = "w[";
	int nsl = rank ? (int)rnd_below(rank + 1) : 0;

	for (uint32_t i = 0; i < rank; i++) {
		shape[i] = rnd_below(6);
		total *= shape[i];
		int64_t a = (int64_t)rnd_below(16) - 8, b = (int64_t)rnd_below(16) - 8;

		lo[i] = 0;
		ext[i] = shape[i];
		if ((int)i < nsl) {
			sprintf(name + strlen(name), "%s%" PRId64 ":%" PRId64, i ? "," : "", a, b);
			uint64_t n = shape[i], s = a < 0 ? (n >= (uint64_t)-a ? n + a : 0) : ((uint64_t)a < n ? (uint64_t)a : n);
			uint64_t e = b < 0 ? (n >= (uint64_t)-b ? n + b : 0) : ((uint64_t)b < n ? (uint64_t)b : n);

			lo[i] = s;
			ext[i] = e > s ? e - s : 0;
		}
	}
	strcat(name, "]");
	if (nsl == 0)
		name[1] = 0;
	uint8_t *t = malloc(total * es + 1), *want = malloc(total * es + 1), *got = malloc(total * es + 1);
	for (uint64_t i = 0; i < total * es; i++)
		t[i] = (uint8_t)rnd();
	size_t wn = naive_gather(t, es, shape, rank, lo, ext, want);
	struct view_plan p;
	struct src s = {t, total * es, 0, 0, NULL, 0};
	int rc = plan_name(name, dt, shape, rank, &p);

	CHECK(rc == 0 && p.size == wn, "%s: plan %d size %" PRIu64 " want %zu", name, rc, rc ? 0 : p.size, wn);
	if (rc == 0 && p.size == wn) {
		CHECK(view_read(&p, 0, wn, got, src_read, &s) == 0 && memcmp(got, want, wn) == 0 &&
			      s.calls == p.n_runs && s.bytes == wn,
		      "%s: one read: %u calls for %" PRIu64 " runs", name, s.calls, p.n_runs);
		memset(got, 0, wn);
		CHECK(read_pieces(&p, &s, got) == 0 && memcmp(got, want, wn) == 0, "%s: pieces", name);
	}
	if (rc == 0)
		view_plan_free(&p);
	free(t);
	free(want);
	free(got);
}

/* BF16 slices converted to F32 and wrapped in .npy: header then values. */
static void test_read_transformed(void)
{
	uint64_t shape[2] = {3, 4};
	uint16_t t[12];
	uint8_t got[256];
	struct view_plan p;
	struct src s = {(const uint8_t *)t, sizeof t, 0, 0, NULL, 0};

	for (int i = 0; i < 12; i++)
		t[i] = (uint16_t)(0x3f80 + i);
	if (plan_name("w[1:3,1:3]@F32.npy", ST_BF16, shape, 2, &p) < 0) {
		CHECK(0, "plan refused");
		return;
	}
	CHECK(p.size == p.hdr_len + 16 && p.n_runs == 2, "size %" PRIu64, p.size);
	CHECK(read_pieces(&p, &s, got) == 0, "pieces");
	uint32_t want[4] = {0x3f850000, 0x3f860000, 0x3f890000, 0x3f8a0000}, v[4];
	memcpy(v, got + p.hdr_len, 16);
	CHECK(memcmp(v, want, 16) == 0 && memcmp(got, p.npy_hdr, p.hdr_len) == 0, "values");
	s.calls = s.bytes = 0;
	view_read(&p, p.hdr_len, 16, got, src_read, &s);
	CHECK(s.calls == 2 && s.bytes == 8, "reads only the selected elements: %u %" PRIu64, s.calls, s.bytes);
	/* Errors from the source come back. */
	s.calls = 0;
	s.fail_at = 2;
	CHECK(view_read(&p, 0, p.size, got, src_read, &s) == -EIO, "EIO passed on");
	CHECK(view_read(&p, p.size, 10, got, src_read, &s) == 0, "read at EOF");
	view_plan_free(&p);
}

static void test_read(void)
{
	for (int i = 0; i < 3000; i++)
		random_slice_case();
	test_read_transformed();
}

/* ---- Modes for the Python tests ---- */

static uint8_t *slurp(FILE *f, size_t *len)
{
	size_t cap = 1 << 16, n = 0, r;
	uint8_t *b = malloc(cap);

	while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
		n += r;
		if (n == cap)
			b = realloc(b, cap *= 2);
	}
	*len = n;
	return b;
}

static int dtype_arg(const char *s)
{
	int d = st_dtype_from_name(s, strlen(s));

	if (d < 0)
		fprintf(stderr, "unknown dtype %s\n", s);
	return d;
}

static int mode_parse(const char *name)
{
	struct view_spec v;

	if (view_parse(name, strlen(name), &v) < 0) {
		puts("ENOENT");
		return 3;
	}
	printf("base=%zu slices=[", v.base_len);
	for (uint32_t i = 0; i < v.n_slices; i++) {
		const struct view_slice *s = &v.slices[i];

		if (i)
			putchar(',');
		if (s->has_start)
			printf("%" PRId64, s->start);
		printf(":");
		if (s->has_stop)
			printf("%" PRId64, s->stop);
	}
	printf("] dtype=%s npy=%d view=%d\n", v.dtype < 0 ? "-" : st_dtype_name(v.dtype), v.npy, v.is_view);
	return 0;
}

static int mode_convert(const char *s, const char *d)
{
	int src = dtype_arg(s), dst = dtype_arg(d);
	size_t len;

	if (src < 0 || dst < 0 || !convert_supported(src, dst)) {
		puts("ENOENT");
		return 3;
	}
	uint8_t *in = slurp(stdin, &len);
	size_t n = len * 8 / st_dtype_bits(src);
	uint8_t *out = malloc(n * convert_out_size(dst) + 1);

	convert(src, dst, in, 0, out, n);
	fwrite(out, convert_out_size(dst), n, stdout);
	free(in);
	free(out);
	return 0;
}

static int mode_read(int argc, char **argv)
{
	uint64_t shape[64], off = 0, src_off = 0;
	int dt = dtype_arg(argv[3]), rank = parse_shape(argv[4], shape, 64);
	size_t len, piece = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
	struct view_plan p;

	if (dt < 0 || rank < 0)
		return 2;
	if (plan_name(argv[2], dt, shape, (uint32_t)rank, &p) < 0) {
		fprintf(stderr, "ENOENT\n");
		return 3;
	}
	uint8_t *t = slurp(stdin, &len), *out = malloc(p.size + 1);
	struct src s = {t, len, 0, 0, stderr, 0};
	int c = view_contiguous(&p, &src_off);

	fprintf(stderr, "size=%" PRIu64 " contiguous=%d src_off=%" PRIu64 "\n", p.size, c, c ? src_off : 0);
	piece = piece ? piece : p.size;
	for (int rc = 0; off < p.size; off += piece)
		if ((rc = view_read(&p, off, piece, out + off, src_read, &s)) < 0) {
			fprintf(stderr, "read error %d\n", rc);
			return 4;
		}
	fwrite(out, 1, p.size, stdout);
	view_plan_free(&p);
	free(t);
	free(out);
	return 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Output GB/s of view_read converting a tensor of MiB source bytes, in
 * 1 MiB reads (FUSE's largest) from a memory "file". */
static double bench_view(enum st_dtype src, enum st_dtype dst, size_t mib)
{
	size_t len = mib << 20, piece = 1 << 20;
	uint64_t shape[1] = {len * 8 / st_dtype_bits(src)};
	uint8_t *t = malloc(len), *out = malloc(piece);
	struct src s = {t, len, 0, 0, NULL, 0};
	struct view_plan p;
	char name[32];

	for (size_t i = 0; i < len; i++)
		t[i] = (uint8_t)(i * 131 + (i >> 9));
	snprintf(name, sizeof name, "w@%s", st_dtype_name(dst));
	plan_name(name, src, shape, 1, &p);
	double t0 = now();
	for (uint64_t off = 0; off < p.size; off += piece)
		view_read(&p, off, piece, out, src_read, &s);
	double gbs = p.size / (now() - t0) / 1e9;

	view_plan_free(&p);
	free(t);
	free(out);
	return gbs;
}

static int mode_bench(size_t mib)
{
	static const enum st_dtype pairs[][2] = {
		{ST_BF16, ST_F32}, {ST_F16, ST_F32}, {ST_F8_E4M3, ST_F32}, {ST_F8_E4M3, ST_BF16},
		{ST_F32, ST_BF16}, {ST_F32, ST_F16}, {ST_BF16, ST_F16}, {ST_F4, ST_F32},
	};

	for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++)
		printf("%s->%s: %.2f GB/s of output (view_read, %zu MiB source, 1 MiB reads)\n",
		       st_dtype_name(pairs[i][0]), st_dtype_name(pairs[i][1]),
		       bench_view(pairs[i][0], pairs[i][1], mib), mib);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "parse") == 0)
		return mode_parse(argv[2]);
	if (argc == 4 && strcmp(argv[1], "convert") == 0)
		return mode_convert(argv[2], argv[3]);
	if ((argc == 5 || argc == 6) && strcmp(argv[1], "read") == 0)
		return mode_read(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "bench") == 0)
		return mode_bench(argc > 2 ? strtoull(argv[2], NULL, 10) : 1024);
	if (argc != 1) {
		fprintf(stderr, "usage: see the comment at the top of tests/c/test_view.c\n");
		return 2;
	}
	test_parse();
	test_plan();
	test_npy();
	test_convert();
	test_read();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
