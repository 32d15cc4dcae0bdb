/* What several decoders share (decode.c). */
#ifndef FS_DECODE_UTIL_H
#define FS_DECODE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "decode.h"

/* Elements [first, first + count) of input `role`, of any byte-wide dtype convert() widens
 * to F32 (F16, BF16, F8_*, integers), as F32 values exactly as convert() gives them.
 * 0, a negative errno from io->read, or -EIO past the input's end or for a dtype that cannot. */
int decode_read_f32(const struct decode_io *io, enum st_qrole role, uint64_t first, size_t count, float *out);

/* Value i of width `bits` (1..32) of a little-endian stream of 32-bit words starting at
 * `words` (bit i*bits of the stream, spilling into the next word). */
static inline uint32_t decode_stream_bits(const uint32_t *words, uint64_t i, unsigned bits)
{
	uint64_t bit = i * bits;
	uint64_t w = words[bit / 32];
	unsigned sh = (unsigned)(bit % 32);

	if (sh + bits > 32)
		w |= (uint64_t)words[bit / 32 + 1] << 32;
	return (uint32_t)((w >> sh) & ((1ull << bits) - 1));
}

#endif
