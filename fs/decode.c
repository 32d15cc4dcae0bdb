/* The table of decoders, and what several of them share. */
#include "decode.h"

#include <errno.h>

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
