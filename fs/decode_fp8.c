/*
 * FP8 (and INT8) weights times a per-tensor, per-expert, per-channel or block
 * scale: compressed-tensors float-/int-quantized, DeepSeek-V3 block FP8,
 * ModelOpt FP8.  W = (f32(value) - zp) * f32(scale) in F32, one rounding; the
 * zero point is subtracted only where the layer has one, so that -0 stays -0.
 *
 * References: deepseek-ai/DeepSeek-V3 inference/kernel.py (weight_dequant_kernel:
 * y = x.to(float32) * s, one scale per 128x128 block); vllm-project/compressed-tensors
 * src/compressed_tensors/quantization/lifecycle/forward_helpers.py (_dequantize: (x - zp) * scale;
 * block scales [ceil(N/bh), ceil(K/bw)], the weight cropped back from the padded blocks);
 * ggml-org/llama.cpp convert_hf_to_gguf.py (dequant_simple, crops the repeated scale).
 * E4M3 NaN codes decode to ml_dtypes' NaN (convert.c) and stay NaN through the product.
 */
#include "decode.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "convert.h"
#include "decode_util.h"

/* Elements per piece: bounds the scratch memory whatever the box. */
enum { PIECE = 16384 };

/* Where the scale (or zero point) of dense element (r, c) lies in its matrix of `ncols`
 * columns: row (r / n) * nbr + (r % n) / br, column c / g.  Per tensor: nbr 0, br n;
 * per expert: nbr 1, br n; per channel: nbr n, br 1; blocks: nbr ceil(n / br). */
struct smap {
	uint64_t n, br, nbr, g, ncols;
};

static inline uint64_t smap_row(const struct smap *m, uint64_t r)
{
	return (r / m->n) * m->nbr + (r % m->n) / m->br;
}


/* Which of the shapes the scale (or zero point) has, from its element count: a block
 * layout where the layer has blocks and the count fits, else one value, one per expert
 * or one per row.  Anything else contradicts the layer. */
static int smap_of(const struct st_qlayer *q, const struct decode_input *in, struct smap *m)
{
	uint64_t E = q->rank == 3 ? q->shape[0] : 1, N = q->shape[q->rank - 2], K = q->shape[q->rank - 1];
	uint64_t count, en;

	if (decode_elements(in, &count) || __builtin_mul_overflow(E, N, &en))
		return -EIO;
	*m = (struct smap){N, N, 0, K, 1};
	if (q->block_rows && q->group) {
		uint64_t nbr = (N - 1) / q->block_rows + 1, nbc = (K - 1) / q->group + 1, want;

		if (!__builtin_mul_overflow(E * nbr, nbc, &want) && want == count) {
			*m = (struct smap){N, q->block_rows, nbr, q->group, nbc};
			return 0;
		}
	}
	if (count == 1)
		return 0;
	if (count == en) {
		m->br = 1;
		m->nbr = N;
		return 0;
	}
	if (count == E) {
		m->nbr = 1;
		return 0;
	}
	return -EIO;
}

/* The part of a scale matrix that rows [ra, rb) x columns [ca, cb) use, row-major with
 * *cols values a row (srow(r) grows by at most one a row, so at most rb - ra rows). */
static int read_smap_box(const struct decode_io *io, enum st_qrole role, const struct smap *m, uint64_t ra,
			 uint64_t rb, uint64_t ca, uint64_t cb, float *dst, uint64_t *cols)
{
	uint64_t s0 = smap_row(m, ra), s1 = smap_row(m, rb - 1), g0 = ca / m->g, n = (cb - 1) / m->g - g0 + 1;

	*cols = n;
	if (n == m->ncols) /* whole scale rows: one read */
		return decode_read_f32(io, role, s0 * n, (size_t)((s1 - s0 + 1) * n), dst);
	for (uint64_t s = s0; s <= s1; s++) {
		int rc = decode_read_f32(io, role, s * m->ncols + g0, (size_t)n, dst + (s - s0) * n);
		if (rc < 0)
			return rc;
	}
	return 0;
}

struct fp8 {
	const struct decode_io *io;
	uint64_t K;
	struct smap sm, zm;
	bool zero;
	float tab[256]; /* F32 of each value code */
	uint8_t *vals;
	float *sc, *zp;
};

/* Row r's columns [ca, cb): runs of constant scale (and zero point). */
static void fp8_row(const struct fp8 *d, const uint8_t *v, const float *sp, uint64_t sg0, const float *zp,
		    uint64_t zg0, uint64_t ca, uint64_t cb, float *o)
{
	uint64_t g = d->sm.g < d->zm.g ? d->sm.g : d->zm.g;

	for (uint64_t c = ca; c < cb;) {
		uint64_t end = (c / g + 1) * g < cb ? (c / g + 1) * g : cb;
		float s = sp[c / d->sm.g - sg0];

		if (d->zero) {
			float z = zp[c / d->zm.g - zg0];
			for (; c < end; c++)
				o[c - ca] = (d->tab[v[c - ca]] - z) * s;
		} else {
			for (; c < end; c++)
				o[c - ca] = d->tab[v[c - ca]] * s;
		}
	}
}

static int fp8_piece(struct fp8 *d, uint64_t ra, uint64_t rb, uint64_t ca, uint64_t cb, float *out,
		     uint64_t ostride)
{
	const struct decode_io *io = d->io;
	uint64_t w = cb - ca, sn, zn = 0;
	int rc = decode_read_byte_box(io, ST_QIN_VALUES, d->K, ra, rb, ca, cb, d->vals);

	if (rc == 0)
		rc = read_smap_box(io, ST_QIN_SCALE, &d->sm, ra, rb, ca, cb, d->sc, &sn);
	if (rc == 0 && d->zero)
		rc = read_smap_box(io, ST_QIN_ZERO, &d->zm, ra, rb, ca, cb, d->zp, &zn);
	if (rc < 0)
		return rc;
	uint64_t s0 = smap_row(&d->sm, ra), z0 = smap_row(&d->zm, ra);
	for (uint64_t r = ra; r < rb; r++)
		fp8_row(d, d->vals + (r - ra) * w, d->sc + (smap_row(&d->sm, r) - s0) * sn, ca / d->sm.g,
			d->zp ? d->zp + (smap_row(&d->zm, r) - z0) * zn : NULL, ca / d->zm.g, ca, cb,
			out + (r - ra) * ostride);
	return 0;
}

/* Scale values a piece of at most `rows` rows and `w` columns needs at most. */
static size_t smap_scratch(const struct smap *m, uint64_t rows, uint64_t w)
{
	uint64_t cols = (w - 1) / m->g + 2;

	return (size_t)(rows * (cols < m->ncols ? cols : m->ncols));
}

/* decode_by_pieces calls it back with the decoder's state. */
static int fp8_piece_of(void *ctx, uint64_t ra, uint64_t rb, uint64_t ca, uint64_t cb, float *out, uint64_t stride)
{
	return fp8_piece(ctx, ra, rb, ca, cb, out, stride);
}

int decode_fp8(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1, uint64_t c0,
	       uint64_t c1, float *out)
{
	const struct decode_input *vin = &io->in[ST_QIN_VALUES];
	struct fp8 d = {.io = io, .K = q->shape[q->rank - 1]};
	uint64_t R = q->shape[0], vn, n;
	uint8_t codes[256];

	if ((q->rank != 2 && q->rank != 3) || !q->in[ST_QIN_SCALE].present ||
	    (q->rank == 3 && __builtin_mul_overflow(R, q->shape[1], &R)) ||
	    (vin->dtype != ST_F8_E4M3 && vin->dtype != ST_I8) || decode_elements(vin, &vn) ||
	    __builtin_mul_overflow(R, d.K, &n) || vn != n || vin->nbytes < n ||
	    smap_of(q, &io->in[ST_QIN_SCALE], &d.sm))
		return -EIO;
	enum st_dtype sdt = io->in[ST_QIN_SCALE].dtype;
	d.zero = q->in[ST_QIN_ZERO].present;
	d.zm = d.sm;
	if ((sdt != ST_F32 && sdt != ST_BF16 && sdt != ST_F16) ||
	    (d.zero && (io->in[ST_QIN_ZERO].dtype != ST_I8 || smap_of(q, &io->in[ST_QIN_ZERO], &d.zm))))
		return -EIO;
	for (unsigned i = 0; i < 256; i++)
		codes[i] = (uint8_t)i;
	convert(vin->dtype, ST_F32, codes, 0, d.tab, 256);

	uint64_t w = c1 - c0, rows = w <= PIECE ? PIECE / w : 1, wmax = w <= PIECE ? w : PIECE;
	if (rows > r1 - r0)
		rows = r1 - r0;
	d.vals = malloc((size_t)(rows * wmax));
	d.sc = malloc(smap_scratch(&d.sm, rows, wmax) * sizeof(float));
	d.zp = d.zero ? malloc(smap_scratch(&d.zm, rows, wmax) * sizeof(float)) : NULL;
	int rc = !d.vals || !d.sc || (d.zero && !d.zp) ? -ENOMEM : decode_by_pieces(fp8_piece_of, &d, PIECE, r0, r1, c0, c1, out);
	free(d.vals);
	free(d.sc);
	free(d.zp);
	return rc;
}
