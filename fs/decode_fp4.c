/*
 * Microscaled floats: NVFP4 (E2M1 values, E4M3 scales per 16 columns, an F32 global
 * scale), MXFP4 (E2M1 values, E8M0 scales per 32) and MXFP8 (E4M3 values, E8M0 per 32).
 * Values and scales are row-major along K in every layout, two E2M1 values a byte with
 * the low nibble the even column.
 *
 *  NVFP4, compressed-tensors (ST_QF_DIVIDE_GLOBAL): s = f32(e4m3) / global, W = e2m1 * s
 *    (two F32 roundings, divide first): vllm-project/compressed-tensors
 *    src/compressed_tensors/compressors/nvfp4/helpers.py (unpack_fp4_from_uint8) and
 *    quantization/lifecycle/forward_helpers.py (_dequantize: scale / global_scale); vllm-project/vllm
 *    vllm/model_executor/layers/quantization/utils/nvfp4_emulation_utils.py.
 *  NVFP4, ModelOpt (weight_scale_2 multiplies): W = (e2m1 * f32(e4m3)) * global; the first
 *    product is exact, so one rounding (ggml-org/llama.cpp convert_hf_to_gguf.py, modelopt).
 *  MXFP4 / MXFP8: W = value * 2^(s - 127), exact in F32 (openai/gpt-oss gpt_oss/torch/weights.py
 *    _get_mxfp4_tensor: torch.ldexp; compressed-tensors compressors/mx_utils.py).  The
 *    [E, N, K/32, 16] gpt-oss blocks hold each row's K/2 bytes contiguously, as [N, K/2] does.
 * E8M0 0xFF is NaN here (the OCP MX spec, and ml_dtypes' float8_e8m0fnu, which convert()
 * follows); the references' ldexp would give Inf.  2^(s-127) for s = 0 is the F32
 * subnormal 2^-127, exact, and so is every product with an E2M1 or E4M3 value, unless it
 * overflows (to Inf, as ldexp does).
 */
#include "decode.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "convert.h"
#include "decode_util.h"

/* Dense elements per piece: bounds the scratch memory whatever the box. */
enum { PIECE = 16384 };

/* E2M1 by code: bit 3 the sign. */
static const float e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
			       -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

struct fp4 {
	const struct st_qlayer *q;
	const struct decode_io *io;
	uint64_t K, g, ncols; /* columns; columns a scale; scales a row */
	unsigned vbits;       /* 4 (E2M1 nibbles) or 8 (E4M3) */
	float global;
	float vtab[256], stab[256]; /* F32 of each value (E4M3) and scale code */
	uint8_t *vals, *sc;
};

/* Columns [ca, end) of one row into o[0, end - ca), all under scale code sc; v holds the
 * row's bytes from column vb (even) on. */
static void fp4_run(const struct fp4 *d, const uint8_t *v, uint64_t vb, uint8_t sc, uint64_t ca,
		    uint64_t end, float *o)
{
	float f = d->stab[sc];

	if (d->vbits == 8) { /* MXFP8 */
		for (uint64_t c = ca; c < end; c++)
			o[c - ca] = d->vtab[v[c - vb]] * f;
	} else if (d->q->format == ST_Q_NVFP4 && !(d->q->flags & ST_QF_DIVIDE_GLOBAL)) {
		for (uint64_t c = ca; c < end; c++) /* ModelOpt: the first product is exact */
			o[c - ca] = (e2m1[v[(c - vb) / 2] >> (c % 2 * 4) & 15] * f) * d->global;
	} else {
		float s = d->q->format == ST_Q_NVFP4 ? f / d->global : f;
		for (uint64_t c = ca; c < end; c++)
			o[c - ca] = e2m1[v[(c - vb) / 2] >> (c % 2 * 4) & 15] * s;
	}
}

static int fp4_piece(struct fp4 *d, uint64_t ra, uint64_t rb, uint64_t ca, uint64_t cb, float *out,
		     uint64_t ostride)
{
	uint64_t vb0 = d->vbits == 8 ? ca : ca / 2, vb1 = d->vbits == 8 ? cb : (cb - 1) / 2 + 1;
	uint64_t vstride = d->vbits == 8 ? d->K : d->K / 2, g0 = ca / d->g, g1 = (cb - 1) / d->g + 1;
	int rc = decode_read_byte_box(d->io, ST_QIN_VALUES, vstride, ra, rb, vb0, vb1, d->vals);

	if (rc == 0)
		rc = decode_read_byte_box(d->io, ST_QIN_SCALE, d->ncols, ra, rb, g0, g1, d->sc);
	if (rc < 0)
		return rc;
	for (uint64_t r = ra; r < rb; r++) {
		const uint8_t *v = d->vals + (r - ra) * (vb1 - vb0), *s = d->sc + (r - ra) * (g1 - g0);
		float *o = out + (r - ra) * ostride;

		for (uint64_t c = ca; c < cb;) {
			uint64_t end = (c / d->g + 1) * d->g < cb ? (c / d->g + 1) * d->g : cb;
			fp4_run(d, v, d->vbits == 8 ? vb0 : vb0 * 2, s[c / d->g - g0], c, end, o + (c - ca));
			c = end;
		}
	}
	return 0;
}

/* decode_by_pieces calls it back with the decoder's state. */
static int fp4_piece_of(void *ctx, uint64_t ra, uint64_t rb, uint64_t ca, uint64_t cb, float *out, uint64_t stride)
{
	return fp4_piece(ctx, ra, rb, ca, cb, out, stride);
}

/* Whether an input's shape is the layer's leading dimensions followed by `tail`. */
static bool shape_is(const struct st_qlayer *q, const struct decode_input *in, const uint64_t *tail, uint32_t nt)
{
	if (in->rank != q->rank - 1 + nt)
		return false;
	for (uint32_t i = 0; i + 1 < q->rank; i++)
		if (in->shape[i] != q->shape[i])
			return false;
	for (uint32_t i = 0; i < nt; i++)
		if (in->shape[q->rank - 1 + i] != tail[i])
			return false;
	return true;
}

/* The layer's inputs against its format: dtypes, shapes, and that the bytes are there. */
static int fp4_check(struct fp4 *d, uint64_t R)
{
	const struct st_qlayer *q = d->q;
	const struct decode_input *v = &d->io->in[ST_QIN_VALUES], *s = &d->io->in[ST_QIN_SCALE];
	uint64_t vtail[1] = {d->vbits == 8 ? d->K : d->K / 2}, gtail[2] = {d->K / 32, 16}, stail[1] = {d->ncols};
	uint64_t vbytes, sbytes;
	bool mx = q->format != ST_Q_NVFP4;

	if ((d->vbits == 4 && d->K % 2) || !q->in[ST_QIN_SCALE].present ||
	    v->dtype != (d->vbits == 8 ? ST_F8_E4M3 : ST_U8) ||
	    !(shape_is(q, v, vtail, 1) || (q->format == ST_Q_MXFP4 && d->K % 32 == 0 && shape_is(q, v, gtail, 2))) ||
	    (mx ? s->dtype != ST_U8 && s->dtype != ST_F8_E8M0 : s->dtype != ST_F8_E4M3) || !shape_is(q, s, stail, 1) ||
	    __builtin_mul_overflow(R, vtail[0], &vbytes) || v->nbytes < vbytes ||
	    __builtin_mul_overflow(R, d->ncols, &sbytes) || s->nbytes < sbytes)
		return -EIO;
	return 0;
}

int decode_fp4(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1, uint64_t c0,
	       uint64_t c1, float *out)
{
	struct fp4 d = {.q = q, .io = io, .K = q->shape[q->rank - 1], .vbits = q->format == ST_Q_MXFP8 ? 8 : 4};
	uint64_t R = q->shape[0];
	uint8_t codes[256];

	d.g = q->group ? q->group : q->format == ST_Q_NVFP4 ? 16 : 32;
	d.ncols = (d.K - 1) / d.g + 1;
	if ((q->rank != 2 && q->rank != 3) || (q->rank == 3 && __builtin_mul_overflow(R, q->shape[1], &R)) ||
	    fp4_check(&d, R))
		return -EIO;
	if (q->format == ST_Q_NVFP4) { /* one F32 */
		const struct decode_input *gl = &io->in[ST_QIN_GLOBAL];
		int rc = !q->in[ST_QIN_GLOBAL].present || gl->dtype != ST_F32 || gl->nbytes != 4
				 ? -EIO
				 : decode_read_f32(io, ST_QIN_GLOBAL, 0, 1, &d.global);
		if (rc < 0)
			return rc;
	}
	for (unsigned i = 0; i < 256; i++)
		codes[i] = (uint8_t)i;
	convert(ST_F8_E4M3, ST_F32, codes, 0, d.vtab, 256);
	convert(q->format == ST_Q_NVFP4 ? ST_F8_E4M3 : ST_F8_E8M0, ST_F32, codes, 0, d.stab, 256);

	uint64_t w = c1 - c0, rows = w <= PIECE ? PIECE / w : 1, wmax = w <= PIECE ? w : PIECE;
	if (rows > r1 - r0)
		rows = r1 - r0;
	d.vals = malloc((size_t)(rows * (wmax + 2)));
	d.sc = malloc((size_t)(rows * ((wmax - 1) / d.g + 2)));
	int rc = !d.vals || !d.sc ? -ENOMEM : decode_by_pieces(fp4_piece_of, &d, PIECE, r0, r1, c0, c1, out);
	free(d.vals);
	free(d.sc);
	return rc;
}
