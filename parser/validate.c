/*
 * The reference implementation's rules for a parsed header, one error per
 * rule: sizes that match dtype and shape, offsets that tile the data region
 * exactly, unique names.  All arithmetic is overflow-checked.
 */
#include "header.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const struct st_header *h, const struct st_tensor *t, char *err,
		const char *what)
{
	char q[ST_ERR_LEN / 2];

	st_quote(q, sizeof(q), st_tensor_name(h, t), t->name_len);
	snprintf(err, ST_ERR_LEN, "tensor '%s': %s", q, what);
	return -EINVAL;
}

static int check_size(const struct st_header *h, const struct st_tensor *t, char *err)
{
	uint64_t elems = 1, bits;
	char what[ST_ERR_LEN / 2 - 64];

	for (uint32_t i = 0; i < t->rank; i++)
		if (__builtin_mul_overflow(elems, h->dims[t->dims + i], &elems))
			return fail(h, t, err, "element count of shape overflows 64 bits");
	if (__builtin_mul_overflow(elems, st_dtype_bits(t->dtype), &bits))
		return fail(h, t, err, "bit count of shape and dtype overflows 64 bits");
	if (bits % 8) {
		snprintf(what, sizeof(what), "%" PRIu64 " elements of %s are not a whole number of bytes",
			 elems, st_dtype_name(t->dtype));
		return fail(h, t, err, what);
	}
	if (t->end < t->begin) {
		snprintf(what, sizeof(what), "data_offsets [%" PRIu64 ",%" PRIu64 "] end before they begin",
			 t->begin, t->end);
		return fail(h, t, err, what);
	}
	if (t->end - t->begin != bits / 8) {
		snprintf(what, sizeof(what),
			 "data_offsets [%" PRIu64 ",%" PRIu64 "] hold %" PRIu64
			 " bytes but dtype %s and its shape need %" PRIu64,
			 t->begin, t->end, t->end - t->begin, st_dtype_name(t->dtype), bits / 8);
		return fail(h, t, err, what);
	}
	return 0;
}

static int by_offsets(const void *a, const void *b)
{
	const struct st_tensor *x = *(struct st_tensor *const *)a, *y = *(struct st_tensor *const *)b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

static int by_name(const void *a, const void *b, void *strings)
{
	const struct st_tensor *x = *(struct st_tensor *const *)a, *y = *(struct st_tensor *const *)b;
	size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
	int c = memcmp((const char *)strings + x->name, (const char *)strings + y->name, n);

	return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Offsets sorted by start must begin at 0, leave no gap or overlap, and end at the file's end. */
static int check_tiling(const struct st_header *h, struct st_tensor **sorted, char *err)
{
	uint64_t expect = 0, data_len = h->file_size - h->data_start;
	char what[ST_ERR_LEN / 2 - 64];

	qsort(sorted, h->n_tensors, sizeof(*sorted), by_offsets);
	for (size_t i = 0; i < h->n_tensors; i++) {
		const struct st_tensor *t = sorted[i];
		if (t->begin != expect) {
			snprintf(what, sizeof(what),
				 "data_offsets [%" PRIu64 ",%" PRIu64 "] %s: the previous tensor ends at %" PRIu64
				 " (file byte %" PRIu64 ")", t->begin, t->end,
				 t->begin < expect ? "overlap another tensor" : "leave a gap", expect,
				 h->data_start + expect);
			return fail(h, t, err, what);
		}
		expect = t->end;
	}
	if (expect != data_len) {
		snprintf(err, ST_ERR_LEN,
			 "tensors cover %" PRIu64 " bytes but the data region (file byte %" PRIu64
			 " to the end) holds %" PRIu64 ": %s", expect, h->data_start, data_len,
			 expect < data_len ? "trailing bytes after the last tensor"
					   : "the file is truncated");
		return -EINVAL;
	}
	return 0;
}

static int check_unique(const struct st_header *h, struct st_tensor **sorted, char *err)
{
	qsort_r(sorted, h->n_tensors, sizeof(*sorted), by_name, h->strings);
	for (size_t i = 1; i < h->n_tensors; i++)
		if (by_name(&sorted[i - 1], &sorted[i], h->strings) == 0)
			return fail(h, sorted[i], err, "name appears twice in the header");
	return 0;
}

int st_header_validate(const struct st_header *h, char err[ST_ERR_LEN])
{
	struct st_tensor **sorted;
	int rc = 0;

	for (size_t i = 0; i < h->n_tensors && !rc; i++)
		rc = check_size(h, &h->tensors[i], err);
	if (rc)
		return rc;
	if (!(sorted = malloc((h->n_tensors ? h->n_tensors : 1) * sizeof(*sorted))))
		return -ENOMEM;
	for (size_t i = 0; i < h->n_tensors; i++)
		sorted[i] = &h->tensors[i];
	rc = check_unique(h, sorted, err);
	if (!rc)
		rc = check_tiling(h, sorted, err);
	free(sorted);
	return rc;
}
