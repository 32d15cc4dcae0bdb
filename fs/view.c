/*
 * View names, plans and reads; view.h has the grammar and the decisions.
 *
 * A view selects, in C order, a box of the tensor: per dimension a range
 * [start, start+extent).  Below the innermost dimension the box does not
 * cover in full, every dimension is whole, so the box is a set of equal
 * runs of contiguous elements, one per index of the outer dimensions, and no
 * two runs touch: the fewest ranges that hold it and nothing else.
 */
#include "view.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "npy.h"

/* Largest piece of source read and converted at once: bounds the scratch
 * buffer while keeping reads large. */
#define CHUNK_BYTES (1u << 20)
/* Outer dimensions with extent 1 are folded into the base, so each kept one
 * at least doubles the run count, which fits in 64 bits. */
#define MAX_OUTER 64

/* ---- Names ---- */

/* A decimal int64 with an optional '-' in s[0..n).  0 or -ENOENT. */
static int parse_int(const char *s, size_t n, int64_t *out)
{
	bool neg = n > 0 && s[0] == '-';
	uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;

	if (neg) {
		s++;
		n--;
	}
	if (n == 0)
		return -ENOENT;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -ENOENT;
		unsigned d = (unsigned)(s[i] - '0');

		if (v > (limit - d) / 10)
			return -ENOENT;
		v = v * 10 + d;
	}
	/* -(2^63) has no positive int64: negate in unsigned arithmetic. */
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 0;
}

/* One SLICE, s[0..n): [START] ":" [STOP]. */
static int parse_slice(const char *s, size_t n, struct view_slice *sl)
{
	const char *colon = memchr(s, ':', n);

	if (!colon)
		return -ENOENT;
	size_t a = (size_t)(colon - s), b = n - a - 1;

	sl->has_start = a > 0;
	sl->has_stop = b > 0;
	sl->start = sl->stop = 0;
	if (a > 0 && parse_int(s, a, &sl->start) < 0)
		return -ENOENT;
	if (b > 0 && parse_int(colon + 1, b, &sl->stop) < 0)	/* a second ':' fails here */
		return -ENOENT;
	return 0;
}

/* The "[...]" that ends name[0..*end); *end moves to its '['. */
static int parse_slices(const char *name, size_t *end, struct view_spec *v)
{
	size_t close = *end - 1, open = close;

	while (open > 0 && name[open - 1] != '[')
		open--;
	if (open == 0)
		return -ENOENT;
	const char *s = name + open, *stop = name + close;

	for (;;) {
		const char *comma = memchr(s, ',', (size_t)(stop - s));
		const char *e = comma ? comma : stop;

		if (v->n_slices == VIEW_MAX_SLICES || parse_slice(s, (size_t)(e - s), &v->slices[v->n_slices]) < 0)
			return -ENOENT;
		v->n_slices++;
		if (!comma)
			break;
		s = comma + 1;
	}
	*end = open - 1;
	return 0;
}

/* The "@DTYPE" that ends name[0..*end), if any.  An '@' with a ']' after it
 * belongs to the tensor's name, so "a@b[0:1]" slices a tensor "a@b". */
static int parse_dtype(const char *name, size_t *end, struct view_spec *v)
{
	size_t at = *end;

	while (at > 0 && name[at - 1] != '@' && name[at - 1] != ']')
		at--;
	if (at == 0 || name[at - 1] != '@')
		return 0;
	int dtype = st_dtype_from_name(name + at, *end - at);

	if (dtype < 0)
		return -ENOENT;
	v->dtype = dtype;
	*end = at - 1;
	return 0;
}

int view_parse(const char *name, size_t len, struct view_spec *v)
{
	size_t end = len;

	v->n_slices = 0;
	v->dtype = -1;
	v->npy = end >= 4 && memcmp(name + end - 4, ".npy", 4) == 0;
	if (v->npy)
		end -= 4;
	if (parse_dtype(name, &end, v) < 0)
		return -ENOENT;
	if (end > 0 && name[end - 1] == ']' && parse_slices(name, &end, v) < 0)
		return -ENOENT;
	if (end == 0)
		return -ENOENT;
	v->base_len = end;
	v->is_view = v->npy || v->dtype >= 0 || v->n_slices > 0;
	return 0;
}

/* ---- Plans ---- */

/* Python's clamping of one bound of a step-1 slice of a dimension of n. */
static uint64_t clamp_bound(bool has, int64_t x, uint64_t dflt, uint64_t n)
{
	if (!has)
		return dflt;
	if (x >= 0)
		return (uint64_t)x < n ? (uint64_t)x : n;
	uint64_t back = 0 - (uint64_t)x;

	return back < n ? n - back : 0;
}

void view_plan_free(struct view_plan *p)
{
	free(p->shape);
	free(p->npy_hdr);
	free(p->extent);
	free(p->stride);
	memset(p, 0, sizeof *p);
}

/* Per dimension start and extent into start[] and p->shape, and the element
 * count into *total.  -ENOENT on overflow. */
static int plan_box(const struct view_spec *v, const uint64_t *shape, uint32_t rank, uint64_t *start,
		    struct view_plan *p, uint64_t *total)
{
	*total = 1;
	for (uint32_t i = 0; i < rank; i++) {
		uint64_t lo = 0, hi = shape[i];

		if (i < v->n_slices) {
			const struct view_slice *s = &v->slices[i];

			lo = clamp_bound(s->has_start, s->start, 0, shape[i]);
			hi = clamp_bound(s->has_stop, s->stop, shape[i], shape[i]);
		}
		start[i] = lo;
		p->shape[i] = hi > lo ? hi - lo : 0;
	}
	/* A zero extent empties the box however large the others are. */
	for (uint32_t i = 0; i < rank; i++)
		if (p->shape[i] == 0) {
			*total = 0;
			return 0;
		}
	for (uint32_t i = 0; i < rank; i++)
		if (__builtin_mul_overflow(*total, p->shape[i], total))
			return -ENOENT;
	return 0;
}

/* The runs of the box (see the top of this file).  -ENOENT on overflow. */
static int plan_runs(const uint64_t *shape, uint32_t rank, const uint64_t *start, uint64_t total,
		     struct view_plan *p)
{
	uint32_t m = rank;	/* the innermost dimension the box cuts */
	uint64_t stride = 1;

	if (total == 0)	/* no runs: nothing is ever read */
		return 0;
	while (m > 0 && start[m - 1] == 0 && p->shape[m - 1] == shape[m - 1])
		m--;
	p->n_runs = 1;
	p->run_elems = total;
	if (m == 0)
		return 0;
	for (uint32_t i = rank - 1; i >= m; i--)	/* whole dimensions below m */
		if (__builtin_mul_overflow(stride, shape[i], &stride))
			return -ENOENT;
	p->run_elems = p->shape[m - 1] * stride;
	for (uint32_t i = m; i-- > 0;) {
		uint64_t off;

		if (__builtin_mul_overflow(start[i], stride, &off) ||
		    __builtin_add_overflow(p->base, off, &p->base))
			return -ENOENT;
		if (i < m - 1 && p->shape[i] > 1) {	/* extent 1 adds no runs */
			p->extent[p->n_outer] = p->shape[i];
			p->stride[p->n_outer++] = stride;
		}
		if (i > 0 && __builtin_mul_overflow(stride, shape[i], &stride))
			return -ENOENT;
	}
	/* Collected innermost first; the cursor wants outermost first. */
	for (uint32_t i = 0; i < p->n_outer / 2; i++) {
		uint32_t j = p->n_outer - 1 - i;
		uint64_t e = p->extent[i], s = p->stride[i];

		p->extent[i] = p->extent[j];
		p->stride[i] = p->stride[j];
		p->extent[j] = e;
		p->stride[j] = s;
	}
	p->n_runs = total / p->run_elems;
	return 0;
}

/* A raw view of a packed sub-byte dtype is a byte stream only when every
 * run starts and ends on a byte boundary; in elements, when the base, the run
 * length and every outer stride are. */
static bool raw_byte_aligned(const struct view_plan *p)
{
	unsigned bits = st_dtype_bits(p->src_dtype);

	if (bits % 8 == 0 || p->n_runs == 0)
		return true;
	if ((p->base * bits) % 8 || (p->run_elems * bits) % 8)
		return false;
	for (uint32_t i = 0; i < p->n_outer; i++)
		if ((p->stride[i] * bits) % 8)
			return false;
	return true;
}

/* The view's data size and, for .npy, header.  -ENOENT past 2^63 bytes. */
static int plan_bytes(const struct view_spec *v, uint64_t total, struct view_plan *p)
{
	uint64_t data;

	if (p->transform) {
		if (__builtin_mul_overflow(total, p->out_size, &data))
			return -ENOENT;
	} else {
		if (__builtin_mul_overflow(total, st_dtype_bits(p->src_dtype), &data))
			return -ENOENT;
		data /= 8;
	}
	if (v->npy) {
		size_t len;
		int rc = npy_header(p->dtype, p->shape, p->rank, &p->npy_hdr, &len);

		if (rc < 0)
			return rc;
		p->hdr_len = len;
	}
	if (__builtin_add_overflow(data, p->hdr_len, &p->size) || p->size > (uint64_t)INT64_MAX)
		return -ENOENT;
	return 0;
}

int view_plan(const struct view_spec *v, enum st_dtype dtype, const uint64_t *shape, uint32_t rank,
	      struct view_plan *p)
{
	uint64_t total, *start;
	int rc;

	memset(p, 0, sizeof *p);
	if ((unsigned)dtype >= ST_DTYPE_COUNT || v->dtype >= ST_DTYPE_COUNT || v->n_slices > rank)
		return -ENOENT;
	p->src_dtype = dtype;
	p->dtype = v->dtype < 0 ? dtype : (enum st_dtype)v->dtype;
	if (!convert_supported(dtype, p->dtype))
		return -ENOENT;
	/* A .npy of a sub-byte dtype is unpacked to a byte per element. */
	p->transform = p->dtype != dtype || (v->npy && st_dtype_bits(dtype) < 8);
	p->out_size = convert_out_size(p->dtype);
	p->rank = rank;
	p->shape = calloc(rank + 1, sizeof *p->shape);
	p->extent = calloc(rank + 1, sizeof *p->extent);
	p->stride = calloc(rank + 1, sizeof *p->stride);
	start = calloc(rank + 1, sizeof *start);
	if (!p->shape || !p->extent || !p->stride || !start)
		rc = -ENOMEM;
	else if ((rc = plan_box(v, shape, rank, start, p, &total)) == 0 &&
		 (rc = plan_runs(shape, rank, start, total, p)) == 0)
		rc = !p->transform && !raw_byte_aligned(p) ? -ENOENT : plan_bytes(v, total, p);
	free(start);
	if (rc < 0)
		view_plan_free(p);
	return rc;
}

int view_contiguous(const struct view_plan *p, uint64_t *src_off)
{
	if (!view_raw(p) || p->n_runs > 1)
		return 0;
	*src_off = p->base * st_dtype_bits(p->src_dtype) / 8;
	return 1;
}

/* ---- Reads ---- */

/* Walks the runs in order, keeping the outer index as an odometer so that
 * moving to the next run costs no division. */
struct cursor {
	const struct view_plan *p;
	uint64_t idx[MAX_OUTER];
	uint64_t start;	/* first element of the current run */
};

static void cursor_init(struct cursor *c, const struct view_plan *p, uint64_t run)
{
	c->p = p;
	c->start = p->base;
	for (uint32_t i = p->n_outer; i-- > 0;) {
		c->idx[i] = run % p->extent[i];
		run /= p->extent[i];
		c->start += c->idx[i] * p->stride[i];
	}
}

static void cursor_next(struct cursor *c)
{
	const struct view_plan *p = c->p;

	for (uint32_t i = p->n_outer; i-- > 0;) {
		c->start += p->stride[i];
		if (++c->idx[i] < p->extent[i])
			return;
		c->start -= p->stride[i] * p->extent[i];
		c->idx[i] = 0;
	}
}

int view_runs(const struct view_plan *p, int (*fn)(void *ctx, uint64_t src_off, uint64_t n), void *ctx)
{
	unsigned bits = st_dtype_bits(p->src_dtype);
	struct cursor c;

	if (!view_raw(p))
		return -EINVAL;
	cursor_init(&c, p, 0);
	for (uint64_t r = 0; r < p->n_runs; r++, cursor_next(&c)) {
		int rc = fn(ctx, c.start * bits / 8, p->run_elems * bits / 8);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Raw views: data bytes [off, off+len), one read per run touched. */
static int read_raw(const struct view_plan *p, uint64_t off, size_t len, uint8_t *out,
		    view_read_fn read_src, void *ctx)
{
	unsigned bits = st_dtype_bits(p->src_dtype);
	uint64_t run_bytes = p->run_elems * bits / 8, in = off % run_bytes;
	struct cursor c;

	cursor_init(&c, p, off / run_bytes);
	while (len > 0) {
		size_t n = run_bytes - in < len ? (size_t)(run_bytes - in) : len;
		int rc = read_src(ctx, out, n, c.start * bits / 8 + in);

		if (rc < 0)
			return rc;
		out += n;
		len -= n;
		in = 0;
		cursor_next(&c);
	}
	return 0;
}

/* Elements [e, e+count) of a transformed view into out: the source of each
 * run piece read at once, then converted. */
static int convert_elems(const struct view_plan *p, uint64_t e, uint64_t count, uint8_t *out,
			 view_read_fn read_src, void *ctx)
{
	unsigned bits = st_dtype_bits(p->src_dtype);
	uint64_t chunk = (uint64_t)CHUNK_BYTES * 8 / bits, within = e % p->run_elems;
	uint64_t first = count < chunk ? count : chunk;
	size_t cap = (size_t)((first * bits + 7) / 8 + 1);	/* +1: a sub-byte piece off a boundary */
	uint8_t small[64], *scratch = cap <= sizeof small ? small : malloc(cap);
	struct cursor c;
	int rc = 0;

	if (!scratch)
		return -ENOMEM;
	cursor_init(&c, p, e / p->run_elems);
	while (count > 0 && rc == 0) {
		uint64_t k = p->run_elems - within;

		k = k < count ? k : count;
		k = k < chunk ? k : chunk;
		uint64_t bit = (c.start + within) * bits;
		unsigned bit_off = (unsigned)(bit % 8);

		rc = read_src(ctx, scratch, (size_t)((bit_off + k * bits + 7) / 8), bit / 8);
		if (rc == 0)
			convert(p->src_dtype, p->dtype, scratch, bit_off, out, (size_t)k);
		out += k * p->out_size;
		count -= k;
		within += k;
		if (within == p->run_elems) {
			within = 0;
			cursor_next(&c);
		}
	}
	if (scratch != small)
		free(scratch);
	return rc < 0 ? rc : 0;
}

/* Transformed views: whole elements straight into out; an element cut by
 * off or len goes through a small buffer. */
static int read_transformed(const struct view_plan *p, uint64_t off, size_t len, uint8_t *out,
			    view_read_fn read_src, void *ctx)
{
	unsigned os = p->out_size;
	uint64_t e = off / os;
	unsigned skip = (unsigned)(off % os);
	uint8_t tmp[8];
	int rc;

	if (skip) {
		size_t n = os - skip < len ? os - skip : len;

		if ((rc = convert_elems(p, e++, 1, tmp, read_src, ctx)) < 0)
			return rc;
		memcpy(out, tmp + skip, n);
		out += n;
		len -= n;
	}
	if (len / os > 0) {
		if ((rc = convert_elems(p, e, len / os, out, read_src, ctx)) < 0)
			return rc;
		e += len / os;
		out += len / os * os;
		len %= os;
	}
	if (len > 0) {
		if ((rc = convert_elems(p, e, 1, tmp, read_src, ctx)) < 0)
			return rc;
		memcpy(out, tmp, len);
	}
	return 0;
}

int view_read(const struct view_plan *p, uint64_t off, size_t len, void *buf, view_read_fn read_src,
	      void *ctx)
{
	uint8_t *out = buf;

	if (off >= p->size)
		return 0;
	if (len > p->size - off)
		len = (size_t)(p->size - off);
	if (off < p->hdr_len) {
		size_t n = p->hdr_len - off < len ? (size_t)(p->hdr_len - off) : len;

		memcpy(out, p->npy_hdr + off, n);
		out += n;
		off += n;
		len -= n;
	}
	if (len == 0)
		return 0;
	off -= p->hdr_len;
	return p->transform ? read_transformed(p, off, len, out, read_src, ctx)
			    : read_raw(p, off, len, out, read_src, ctx);
}

/* The source element behind view element e (a data element, after any header). */
static uint64_t source_elem(const struct view_plan *p, uint64_t e)
{
	struct cursor c;

	cursor_init(&c, p, e / p->run_elems);
	return c.start + e % p->run_elems;
}

int view_source_span(const struct view_plan *p, uint64_t off, size_t len, struct view_span *s)
{
	unsigned bits = st_dtype_bits(p->src_dtype);
	uint64_t end = off + len < p->size ? off + len : p->size;

	off = off > p->hdr_len ? off - p->hdr_len : 0;
	end = end > p->hdr_len ? end - p->hdr_len : 0;
	if (p->n_runs == 0 || off >= end)
		return -EINVAL;
	/* The view elements that data bytes [off, end) hold, whole or in part. */
	uint64_t e0 = p->transform ? off / p->out_size : off * 8 / bits;
	uint64_t e1 = p->transform ? (end + p->out_size - 1) / p->out_size : (end * 8 + bits - 1) / bits;
	s->lo = source_elem(p, e0) * bits / 8;
	s->hi = ((source_elem(p, e1 - 1) + 1) * bits + 7) / 8;
	s->run = (p->run_elems * bits + 7) / 8;
	/* Consecutive runs are the innermost kept outer stride apart. */
	s->gap = p->n_outer ? (p->stride[p->n_outer - 1] * bits + 7) / 8 - s->run : UINT64_MAX;
	return 0;
}
