/* .npy headers; npy.h says what they hold and why. */
#include "npy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_ALIGN 64
/* numpy.lib.format.GROWTH_AXIS_MAX_DIGITS: spare room np.save leaves after
 * the dict so the first axis can grow in place; we match it byte for byte. */
#define GROWTH_DIGITS 21
/* magic "\x93NUMPY" and the two version bytes */
#define MAGIC_LEN 8

const char *npy_descr(enum st_dtype dtype)
{
	static const char *const descr[ST_DTYPE_COUNT] = {
		[ST_BOOL] = "|b1", [ST_F4] = "float4_e2m1fn", [ST_F6_E2M3] = "float6_e2m3fn",
		[ST_F6_E3M2] = "float6_e3m2fn", [ST_U8] = "|u1", [ST_I8] = "|i1",
		[ST_F8_E5M2] = "float8_e5m2", [ST_F8_E4M3] = "float8_e4m3fn",
		[ST_F8_E8M0] = "float8_e8m0fnu", [ST_F8_E4M3FNUZ] = "float8_e4m3fnuz",
		[ST_F8_E5M2FNUZ] = "float8_e5m2fnuz", [ST_I16] = "<i2", [ST_U16] = "<u2",
		[ST_F16] = "<f2", [ST_BF16] = "bfloat16", [ST_I32] = "<i4", [ST_U32] = "<u4",
		[ST_F32] = "<f4", [ST_C64] = "<c8", [ST_F64] = "<f8", [ST_I64] = "<i8",
		[ST_U64] = "<u8",
	};

	return (unsigned)dtype < ST_DTYPE_COUNT ? descr[dtype] : NULL;
}

/* Python's repr() of the shape tuple: "()", "(3,)", "(2, 3)". */
static size_t shape_repr(char *p, const uint64_t *shape, uint32_t rank)
{
	size_t n = 0;

	p[n++] = '(';
	for (uint32_t i = 0; i < rank; i++)
		n += (size_t)sprintf(p + n, i ? ", %" PRIu64 : "%" PRIu64, shape[i]);
	if (rank == 1)
		p[n++] = ',';
	p[n++] = ')';
	return n;
}

/* The dict and np.save's spare spaces, without magic, padding or '\n'. */
static size_t dict_text(char *p, const char *descr, const uint64_t *shape, uint32_t rank)
{
	size_t n = (size_t)sprintf(p, "{'descr': '%s', 'fortran_order': False, 'shape': ", descr);

	n += shape_repr(p + n, shape, rank);
	n += (size_t)sprintf(p + n, ", }");
	if (rank > 0) {
		int digits = snprintf(NULL, 0, "%" PRIu64, shape[0]);

		for (int i = digits; i < GROWTH_DIGITS; i++)
			p[n++] = ' ';
	}
	return n;
}

int npy_header(enum st_dtype dtype, const uint64_t *shape, uint32_t rank, char **out, size_t *len)
{
	const char *descr = npy_descr(dtype);

	if (!descr)
		return -ENOENT;
	/* 22 bytes per dimension (20 digits and ", ") plus the fixed text. */
	size_t cap = 128 + strlen(descr) + 22 * (size_t)rank + GROWTH_DIGITS + 2 * NPY_ALIGN;
	char *h = malloc(cap);

	if (!h)
		return -ENOMEM;
	/* Write the dict after the longest prefix (version 2.0's), then slide. */
	size_t text = dict_text(h + MAGIC_LEN + 4, descr, shape, rank);
	size_t lenbytes = 2, hlen = text + 1, pad;

	pad = NPY_ALIGN - (MAGIC_LEN + lenbytes + hlen) % NPY_ALIGN;
	if (hlen + pad > 0xffff) {	/* format 2.0: a 4-byte length */
		lenbytes = 4;
		pad = NPY_ALIGN - (MAGIC_LEN + lenbytes + hlen) % NPY_ALIGN;
	} else {
		memmove(h + MAGIC_LEN + 2, h + MAGIC_LEN + 4, text);
	}
	memcpy(h, "\x93NUMPY", 6);
	h[6] = lenbytes == 2 ? 1 : 2;
	h[7] = 0;
	for (size_t i = 0; i < lenbytes; i++)
		h[MAGIC_LEN + i] = (char)((hlen + pad) >> (8 * i));
	memset(h + MAGIC_LEN + lenbytes + text, ' ', pad);
	h[MAGIC_LEN + lenbytes + text + pad] = '\n';
	*out = h;
	*len = MAGIC_LEN + lenbytes + hlen + pad;
	return 0;
}
