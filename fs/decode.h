/*
 * Decoders: the dense F32 values of a quantized layer (parser/quant.h) from its
 * inputs, one file per format family (decode_*.c), one row each in the table
 * of decode.c.  A decoder knows nothing of FUSE or of where the bytes live: it
 * asks io->read for byte ranges of its inputs and reads only what the box
 * needs (a column slice reads the packed columns it covers, not whole rows).
 *
 * The layer is seen as a matrix of R = E*N rows (E = 1 for a 2-D layer) and K
 * columns; row r of expert e is row e*N + r.  Every value is computed in F32
 * in the order the format's reference uses (each decode_*.c says which), so
 * that a view converting it to BF16 or F16 rounds once, from that value.
 */
#ifndef FS_DECODE_H
#define FS_DECODE_H

#include <stdint.h>

#include "../parser/dtype.h"
#include "../parser/quant.h"

struct decode_input {
	enum st_dtype dtype;
	uint32_t rank;
	const uint64_t *shape;
	uint64_t nbytes;
};

struct decode_io {
	struct decode_input in[ST_QIN_COUNT]; /* meaningful where layer->in[role].present */
	/* Reads exactly n bytes at byte `off` of input `role`: 0 or a negative errno. */
	int (*read)(void *ctx, enum st_qrole role, void *dst, size_t n, uint64_t off);
	void *ctx;
};

/*
 * Rows [r0, r1) and columns [c0, c1) of the dense layer into out, row-major
 * ((r - r0) * (c1 - c0) + (c - c0)); the box is non-empty and inside the layer.
 * 0, a negative errno from io->read, -ENOMEM, or -EIO when the data contradicts
 * the layer (a g_idx entry past the groups).
 */
typedef int decode_fn(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
		      uint64_t c0, uint64_t c1, float *out);

/* The decoder of a format. */
decode_fn *decode_for(enum st_qformat f);

int decode_fp8(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
	       uint64_t c0, uint64_t c1, float *out);
int decode_gptq(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
		uint64_t c0, uint64_t c1, float *out);
int decode_awq(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
	       uint64_t c0, uint64_t c1, float *out);
int decode_ct_int(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
		  uint64_t c0, uint64_t c1, float *out);
int decode_fp4(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
	       uint64_t c0, uint64_t c1, float *out); /* NVFP4, MXFP4, MXFP8 */
int decode_bnb(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
	       uint64_t c0, uint64_t c1, float *out); /* BNB4, BNB8 */

#endif
