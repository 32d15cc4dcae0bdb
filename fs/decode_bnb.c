/*
 * bitsandbytes as transformers saves it.
 *
 *  4-bit (NF4 / FP4, the code table is the file's quant_map): the weight is flattened,
 *  element i = r * K + c, two codes a byte, the HIGH nibble the even element; one absmax
 *  per `blocksize` elements; W = quant_map[code] * absmax[i / blocksize] (one F32
 *  rounding).  Double quantization stores absmax as U8 codes of nested_quant_map:
 *  absmax = nested_quant_map[a] * nested_absmax[blk / nested_block] + nested_offset, F32,
 *  in that order (a multiply, then an add: -std=c11 keeps GCC from fusing them).
 *  References: bitsandbytes-foundation/bitsandbytes bitsandbytes/backends/default/ops.py
 *  (_dequantize_4bit_compute: out_dq[::2] = A >> 4, out_dq[1::2] = A & 0xF;
 *  _dequantize_blockwise_compute: code[A] * absmax[block]), bitsandbytes/functional.py
 *  (dequantize_4bit: nested absmax is dequantize_blockwise(absmax, state2) + offset).
 *
 *  LLM.int8: I8 [N, K] and SCB F32 [N] (row absmax): W = ((float)q * SCB[r]) *
 *  7.874015718698502e-3f, two F32 roundings in that order (bitsandbytes/_ops.py,
 *  int8_vectorwise_dequant's default kernel: A * stats.view(-1, 1) * 7.874015718698502e-3).
 *
 * Both are handled as runs of consecutive flattened elements: the whole box when it is
 * full width, else one run a row.
 */
#include "decode.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "decode_util.h"

/* Elements per piece: bounds the scratch memory whatever the box. */
enum { PIECE = 16384 };

struct bnb {
	const struct st_qlayer *q;
	const struct decode_io *io;
	uint64_t K, nblocks;
	bool nested;
	float qmap[16], nqmap[256];
	uint8_t *vals, *am8;
	float *am, *nam;
};


/* The absmax of blocks [b0, b1) into d->am: read, or rebuilt from the nested codes. */
static int bnb_absmax(struct bnb *d, uint64_t b0, uint64_t b1)
{
	size_t n = (size_t)(b1 - b0);

	if (!d->nested)
		return decode_read_f32(d->io, ST_QIN_SCALE, b0, n, d->am);
	uint64_t nb = d->q->nested_block, n0 = b0 / nb, n1 = (b1 - 1) / nb + 1;
	int rc = d->io->read(d->io->ctx, ST_QIN_SCALE, d->am8, n, b0);

	if (rc == 0)
		rc = decode_read_f32(d->io, ST_QIN_NESTED_ABSMAX, n0, (size_t)(n1 - n0), d->nam);
	if (rc < 0)
		return rc;
	for (uint64_t b = b0; b < b1; b++) {
		float prod = d->nqmap[d->am8[b - b0]] * d->nam[b / nb - n0];
		d->am[b - b0] = prod + d->q->nested_offset;
	}
	return 0;
}

/* Flattened elements [i0, i1) of the 4-bit weight into o. */
static int bnb4_piece(struct bnb *d, uint64_t i0, uint64_t i1, float *o)
{
	uint64_t bs = d->q->blocksize, byte0 = i0 / 2, b0 = i0 / bs;
	int rc = d->io->read(d->io->ctx, ST_QIN_VALUES, d->vals, (size_t)((i1 - 1) / 2 + 1 - byte0), byte0);

	if (rc == 0)
		rc = bnb_absmax(d, b0, (i1 - 1) / bs + 1);
	if (rc < 0)
		return rc;
	for (uint64_t i = i0; i < i1;) {
		uint64_t end = (i / bs + 1) * bs < i1 ? (i / bs + 1) * bs : i1;
		float am = d->am[i / bs - b0];

		for (; i < end; i++)
			o[i - i0] = d->qmap[d->vals[i / 2 - byte0] >> (i % 2 ? 0 : 4) & 15] * am;
	}
	return 0;
}

/* Flattened elements [i0, i1) of the int8 weight into o. */
static int bnb8_piece(struct bnb *d, uint64_t i0, uint64_t i1, float *o)
{
	uint64_t row0 = i0 / d->K, rows = (i1 - 1) / d->K + 1 - row0;
	int rc = d->io->read(d->io->ctx, ST_QIN_VALUES, d->vals, (size_t)(i1 - i0), i0);

	if (rc == 0)
		rc = decode_read_f32(d->io, ST_QIN_SCALE, row0, (size_t)rows, d->am);
	if (rc < 0)
		return rc;
	for (uint64_t i = i0; i < i1;) {
		uint64_t end = (i / d->K + 1) * d->K < i1 ? (i / d->K + 1) * d->K : i1;
		float scb = d->am[i / d->K - row0];

		for (; i < end; i++)
			o[i - i0] = ((float)(int8_t)d->vals[i - i0] * scb) * 7.874015718698502e-3f;
	}
	return 0;
}

static int bnb_run(struct bnb *d, uint64_t i0, uint64_t i1, float *o)
{
	int rc = 0;

	for (uint64_t i = i0; i < i1 && rc == 0; i += PIECE) {
		uint64_t e = i1 - i < PIECE ? i1 : i + PIECE;
		rc = d->q->format == ST_Q_BNB4 ? bnb4_piece(d, i, e, o + (i - i0)) : bnb8_piece(d, i, e, o + (i - i0));
	}
	return rc;
}

/* An input of `want` elements of dtype dt, all there. */
static bool input_is(const struct decode_io *io, enum st_qrole role, enum st_dtype dt, uint64_t want)
{
	const struct decode_input *in = &io->in[role];
	uint64_t n;

	return in->dtype == dt && !decode_elements(in, &n) && n == want && in->nbytes / (st_dtype_bits(dt) / 8) >= want;
}

/* The 4-bit layer's inputs against its parameters, and its code tables. */
static int bnb4_setup(struct bnb *d, uint64_t n)
{
	const struct st_qlayer *q = d->q;
	const struct decode_io *io = d->io;

	if (!q->blocksize || io->in[ST_QIN_VALUES].nbytes < n / 2 + n % 2 || !q->in[ST_QIN_QMAP].present ||
	    !input_is(io, ST_QIN_QMAP, ST_F32, 16))
		return -EIO;
	d->nblocks = (n - 1) / q->blocksize + 1;
	d->nested = q->flags & ST_QF_NESTED;
	if (d->nested && (!q->nested_block || !q->in[ST_QIN_NESTED_ABSMAX].present ||
			  !q->in[ST_QIN_NESTED_QMAP].present || !input_is(io, ST_QIN_SCALE, ST_U8, d->nblocks) ||
			  !input_is(io, ST_QIN_NESTED_ABSMAX, ST_F32, (d->nblocks - 1) / q->nested_block + 1) ||
			  !input_is(io, ST_QIN_NESTED_QMAP, ST_F32, 256)))
		return -EIO;
	if (!d->nested && !input_is(io, ST_QIN_SCALE, ST_F32, d->nblocks))
		return -EIO;
	int rc = decode_read_f32(io, ST_QIN_QMAP, 0, 16, d->qmap);
	if (rc == 0 && d->nested)
		rc = decode_read_f32(io, ST_QIN_NESTED_QMAP, 0, 256, d->nqmap);
	return rc;
}

int decode_bnb(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1, uint64_t c0,
	       uint64_t c1, float *out)
{
	struct bnb d = {.q = q, .io = io, .K = q->shape[q->rank - 1]};
	uint64_t R = q->shape[0], n, w = c1 - c0;
	int rc;

	if ((q->rank != 2 && q->rank != 3) || (q->rank == 3 && __builtin_mul_overflow(R, q->shape[1], &R)) ||
	    __builtin_mul_overflow(R, d.K, &n) || !q->in[ST_QIN_SCALE].present)
		return -EIO;
	if (q->format == ST_Q_BNB4)
		rc = bnb4_setup(&d, n);
	else /* the weight's own shape is [N, K]; its bytes are what matter */
		rc = !input_is(io, ST_QIN_VALUES, ST_I8, n) || !input_is(io, ST_QIN_SCALE, ST_F32, R) ? -EIO : 0;
	if (rc < 0)
		return rc;
	/* Scratch for one piece: its bytes, and its absmax (or SCB) values: at most one a
	 * block or row it touches, so PIECE + 2. */
	d.vals = malloc(PIECE);
	d.am = malloc((PIECE + 2) * sizeof(float));
	d.am8 = d.nested ? malloc(PIECE + 2) : NULL;
	d.nam = d.nested ? malloc((PIECE + 2) * sizeof(float)) : NULL;
	if (!d.vals || !d.am || (d.nested && (!d.am8 || !d.nam)))
		rc = -ENOMEM;
	else if (c0 == 0 && c1 == d.K) /* whole rows are one run */
		rc = bnb_run(&d, r0 * d.K, r1 * d.K, out);
	else
		for (uint64_t r = r0; r < r1 && rc == 0; r++)
			rc = bnb_run(&d, r * d.K + c0, r * d.K + c1, out + (r - r0) * w);
	free(d.vals);
	free(d.am);
	free(d.am8);
	free(d.nam);
	return rc;
}
