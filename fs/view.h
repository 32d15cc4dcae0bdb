/*
 * Views of a tensor (docs/CONTRACT.md, "Views"): slices, dtype conversion and
 * .npy files, named by suffixes of the tensor's name.  This module parses the
 * names, plans the bytes a view holds and produces them from a reader of the
 * tensor's raw bytes; it knows nothing of FUSE or of the safetensors header.
 *
 *     VIEW  := TENSOR [ "[" SLICE { "," SLICE } "]" ] [ "@" DTYPE ] [ ".npy" ]
 *     SLICE := [START] ":" [STOP]
 *
 * Decisions (the reasons are at the code that applies them):
 *  - Conversions: to F64, F32, F16, BF16 from every dtype but C64, bit-exact
 *    with NumPy/ml_dtypes (convert.h).  "@X" naming the tensor's own dtype is
 *    allowed and changes nothing.  Every other target, and C64 to anything
 *    else, is ENOENT.
 *  - Sub-byte dtypes (F4, F6_*) are a packed little-endian bit stream.  A raw
 *    slice must start and end every contiguous range on a byte boundary, else
 *    ENOENT; converted and .npy views have no such limit.  In a .npy file they
 *    are one element per byte, as ml_dtypes holds them (npy.h).
 *  - C64 has slices and .npy ('<c8') but no conversion.
 */
#ifndef SAFETENSORSFS_VIEW_H
#define SAFETENSORSFS_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../parser/dtype.h"

/* Names are at most 255 bytes and each slice takes at least 2 ("[:", ",:"). */
#define VIEW_MAX_SLICES 128

struct view_slice {
	int64_t start, stop;	/* as written; meaningful only when has_* */
	bool has_start, has_stop;
};

struct view_spec {
	size_t base_len;	/* bytes of the TENSOR part */
	uint32_t n_slices;
	struct view_slice slices[VIEW_MAX_SLICES];
	int dtype;		/* enum st_dtype, -1: unchanged */
	bool npy;
	bool is_view;		/* false when the name has no view suffix at all */
};

/*
 * Parse name[0..len) from the right: an optional ".npy"; then an optional
 * "@DTYPE" (the text after the last '@', unless a ']' follows that '@', must
 * be exactly one of the 22 dtype names); then an optional "[...]" when the
 * rest ends in ']'; the rest, non-empty, is TENSOR.  START and STOP are
 * decimal int64 with an optional '-'; no spaces, no '+', no step, no "[]".
 * 0, or -ENOENT when malformed.  A name with no suffix gives 0 with
 * is_view false; the caller looks up a real tensor by the full name first.
 */
int view_parse(const char *name, size_t len, struct view_spec *v);

struct view_plan {
	uint64_t size;			/* st_size of the view */
	enum st_dtype src_dtype;	/* the tensor's */
	enum st_dtype dtype;		/* the view's elements */
	uint32_t rank;
	uint64_t *shape;		/* the view's shape */
	char *npy_hdr;			/* the .npy header, or NULL */
	uint64_t hdr_len;
	bool transform;			/* converted or unpacked: not raw bytes */
	unsigned out_size;		/* bytes per output element when transform */
	/* The source as n_runs runs of run_elems elements; run r starts at
	 * element base + sum(idx_i * stride[i]), where idx is r in the mixed
	 * radix of extent[0..n_outer). */
	uint64_t n_runs, run_elems, base;
	uint32_t n_outer;
	uint64_t *extent, *stride;	/* elements */
};

/* Plan the view spec of a tensor of dtype and shape.  0, -ENOMEM, or -ENOENT
 * when the spec does not apply: more slices than dimensions, a conversion
 * not supported, a raw sub-byte slice off byte boundaries, an unknown dtype,
 * a view larger than 2^63 bytes. */
int view_plan(const struct view_spec *v, enum st_dtype dtype, const uint64_t *shape, uint32_t rank,
	      struct view_plan *p);
void view_plan_free(struct view_plan *p);

/* 1 with *src_off set when the view's bytes are the tensor's raw bytes
 * [*src_off, *src_off + p->size) (no conversion, no header), else 0: the
 * daemon then serves it from the backing file directly. */
int view_contiguous(const struct view_plan *p, uint64_t *src_off);

/* Whether the view's bytes are the tensor's own (no conversion, no .npy header). */
static inline bool view_raw(const struct view_plan *p)
{
	return !p->transform && !p->npy_hdr;
}

/* Calls fn(ctx, src_off, n) for each run of a raw view in order: the tensor's bytes
 * [src_off, src_off + n) that make up the view.  -EINVAL unless view_raw(p), else 0 or
 * fn's first negative return. */
int view_runs(const struct view_plan *p, int (*fn)(void *ctx, uint64_t src_off, uint64_t n), void *ctx);

typedef int (*view_read_fn)(void *ctx, void *dst, size_t n, uint64_t src_off);

/*
 * Fill buf with view bytes [off, off+len) (clamped to p->size).  read_src
 * reads the tensor's raw bytes [src_off, src_off+n) and returns 0 (all n
 * bytes read) or a negative errno; it is called once per contiguous range the
 * request touches (in pieces of at most 1 MiB of source when converting), and
 * never for bytes the view leaves out (for F4/F6, bytes holding none of its
 * elements).  An element cut by off or off+len costs one more small call.
 * The plan is only read: threads may share it.  Returns 0 or the first
 * negative errno.
 */
int view_read(const struct view_plan *p, uint64_t off, size_t len, void *buf, view_read_fn read_src,
	      void *ctx);

/* Where a request's source bytes lie, for a reader that reads them in fewer, larger pieces. */
struct view_span {
	uint64_t lo, hi;  /* every tensor byte read_src may be asked for lies in [lo, hi) */
	uint64_t run;     /* bytes of source a run spans */
	uint64_t gap;     /* bytes between the end of one run and the start of the next; UINT64_MAX: one run */
};

/* The span of view bytes [off, off+len) (clamped to p->size): 0, or -EINVAL when they
 * need no source bytes (.npy header only, empty view). */
int view_source_span(const struct view_plan *p, uint64_t off, size_t len, struct view_span *s);

#endif
