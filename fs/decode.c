/* The table of decoders, and what several of them share. */
#include "decode.h"

#include <errno.h>
#include <string.h>

#include "decode_util.h"
#include "convert.h"

static decode_fn *const decoders[ST_Q_FORMAT_COUNT] = {
	[ST_Q_FP8] = decode_fp8,
	[ST_Q_GPTQ] = decode_gptq,
	[ST_Q_AWQ] = decode_awq,
	[ST_Q_CT_INT] = decode_ct_int,
	[ST_Q_NVFP4] = decode_fp4,
	[ST_Q_MXFP4] = decode_fp4,
	[ST_Q_MXFP8] = decode_fp4,
	[ST_Q_BNB4] = decode_bnb,
	[ST_Q_BNB8] = decode_bnb,
};

decode_fn *decode_for(enum st_qformat f)
{
	return (unsigned)f < ST_Q_FORMAT_COUNT ? decoders[f] : NULL;
}

int decode_read_f32(const struct decode_io *io, enum st_qrole role, uint64_t first, size_t count, float *out)
{
	const struct decode_input *in = &io->in[role];
	unsigned bits = st_dtype_bits(in->dtype);
	uint64_t end;

	if (bits % 8 || !convert_supported(in->dtype, ST_F32) ||
	    __builtin_add_overflow(first, (uint64_t)count, &end) || end > in->nbytes / (bits / 8))
		return -EIO;
	if (count == 0)
		return 0;
	if (in->dtype == ST_F32)
		return io->read(io->ctx, role, out, count * 4, first * 4);
	/* Other dtypes go through a small buffer, converted a piece at a time. */
	size_t width = bits / 8, per = sizeof(uint64_t[512]) / width;
	uint64_t raw[512];

	for (size_t done = 0; done < count;) {
		size_t n = count - done < per ? count - done : per;
		int rc = io->read(io->ctx, role, raw, n * width, (first + done) * width);
		if (rc < 0)
			return rc;
		convert(in->dtype, ST_F32, raw, 0, out + done, n);
		done += n;
	}
	return 0;
}

int decode_elements(const struct decode_input *in, uint64_t *count)
{
	uint64_t c = 1;

	for (uint32_t i = 0; i < in->rank; i++)
		if (__builtin_mul_overflow(c, in->shape[i], &c))
			return -EIO;
	*count = c;
	return 0;
}

int decode_read_gidx(const struct decode_io *io, uint64_t first, uint64_t count, uint64_t ngroups, uint32_t *gl)
{
	const struct decode_input *in = &io->in[ST_QIN_GIDX];
	unsigned w = in->dtype == ST_I32 ? 4 : in->dtype == ST_I64 ? 8 : 0;
	unsigned char buf[4096];

	if (!w || !decode_fits(first + count, 1, w, in->nbytes))
		return -EIO;
	for (uint64_t done = 0; done < count;) {
		size_t n = count - done < sizeof buf / w ? count - done : sizeof buf / w;
		int rc = io->read(io->ctx, ST_QIN_GIDX, buf, n * w, (first + done) * w);
		if (rc < 0)
			return rc;
		for (size_t i = 0; i < n; i++) {
			int64_t v;
			int32_t v32;
			if (w == 4)
				memcpy(&v32, buf + 4 * i, 4), v = v32;
			else
				memcpy(&v, buf + 8 * i, 8);
			if (v < 0 || (uint64_t)v >= ngroups)
				return -EIO;
			gl[done + i] = (uint32_t)v;
		}
		done += n;
	}
	return 0;
}

int decode_by_pieces(decode_piece_fn *fn, void *ctx, uint64_t piece, uint64_t r0, uint64_t r1, uint64_t c0,
		     uint64_t c1, float *out)
{
	uint64_t w = c1 - c0;
	int rc = 0;

	if (w <= piece) { /* whole box rows, piece / w at a time */
		uint64_t rows = piece / w;
		for (uint64_t ra = r0; ra < r1 && rc == 0; ra += rows)
			rc = fn(ctx, ra, r1 - ra < rows ? r1 : ra + rows, c0, c1, out + (ra - r0) * w, w);
		return rc;
	}
	for (uint64_t r = r0; r < r1; r++) /* rows wider than a piece: `piece` columns at a time */
		for (uint64_t ca = c0; ca < c1 && rc == 0; ca += piece)
			rc = fn(ctx, r, r + 1, ca, c1 - ca < piece ? c1 : ca + piece, out + (r - r0) * w + (ca - c0), w);
	return rc;
}

int decode_read_byte_box(const struct decode_io *io, enum st_qrole role, uint64_t stride, uint64_t ra,
			 uint64_t rb, uint64_t b0, uint64_t b1, uint8_t *dst)
{
	size_t n = (size_t)(b1 - b0);

	if (b0 == 0 && b1 == stride)
		return io->read(io->ctx, role, dst, (size_t)(rb - ra) * n, ra * stride);
	for (uint64_t r = ra; r < rb; r++) {
		int rc = io->read(io->ctx, role, dst + (r - ra) * n, n, r * stride + b0);
		if (rc < 0)
			return rc;
	}
	return 0;
}
