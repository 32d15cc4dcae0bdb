/* What several decoders share (decode.c). */
#ifndef FS_DECODE_UTIL_H
#define FS_DECODE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decode.h"

/* Elements [first, first + count) of input `role`, of any byte-wide dtype convert() widens
 * to F32 (F16, BF16, F8_*, integers), as F32 values exactly as convert() gives them.
 * 0, a negative errno from io->read, or -EIO past the input's end or for a dtype that cannot. */
int decode_read_f32(const struct decode_io *io, enum st_qrole role, uint64_t first, size_t count, float *out);

/* b bits (1..32) at bit `bit` of a little-endian stream of 32-bit words, spilling into the
 * next word where they cross one. */
static inline uint32_t decode_bits_at(const uint32_t *w, uint64_t bit, unsigned b)
{
	uint64_t v = w[bit >> 5];
	unsigned sh = (unsigned)(bit & 31);

	if (sh + b > 32)
		v |= (uint64_t)w[(bit >> 5) + 1] << 32;
	return (uint32_t)(v >> sh) & (uint32_t)((1ull << b) - 1);
}

/* Whether rows x cols elements of `width` bytes fit in an input of `nbytes`. */
static inline bool decode_fits(uint64_t rows, uint64_t cols, uint64_t width, uint64_t nbytes)
{
	uint64_t n;

	return !__builtin_mul_overflow(rows, cols, &n) && !__builtin_mul_overflow(n, width, &n) &&
	       n <= nbytes;
}

/* An input's element count: 0, or -EIO when it overflows. */
int decode_elements(const struct decode_input *in, uint64_t *count);

/* g_idx entries [first, first + count) (I32 or I64) into gl; one outside [0, ngroups) would
 * index past the scales: -EIO.  Read as integers: through a float a huge value could round
 * onto a valid group. */
int decode_read_gidx(const struct decode_io *io, uint64_t first, uint64_t count, uint64_t ngroups, uint32_t *gl);

/* Bytes [b0, b1) of rows [ra, rb) of input `role` seen as a row-major byte matrix of `stride`
 * bytes a row, into dst packed: one read when the rows are whole, else one a row.  The caller
 * checked that the matrix fits the input. */
int decode_read_byte_box(const struct decode_io *io, enum st_qrole role, uint64_t stride, uint64_t ra,
			 uint64_t rb, uint64_t b0, uint64_t b1, uint8_t *dst);

/* Fills the box [r0, r1) x [c0, c1) of out (row stride c1 - c0) by pieces of at most `piece`
 * values: whole rows where a row fits, else each row piece by piece.  fn's first error ends it. */
typedef int decode_piece_fn(void *ctx, uint64_t ra, uint64_t rb, uint64_t ca, uint64_t cb, float *out,
			    uint64_t stride);
int decode_by_pieces(decode_piece_fn *fn, void *ctx, uint64_t piece, uint64_t r0, uint64_t r1, uint64_t c0,
		     uint64_t c1, float *out);

#endif
