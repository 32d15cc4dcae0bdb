/*
 * compressed-tensors pack-quantized, 1..8 bits: weight_packed I32 [N, words] (or
 * [E, N, words], each 2-D slice packed on its own), weight_scale [N, ngroups] (or a
 * single per-tensor value), optional weight_zero_point I32 packed down the N rows of
 * the [N, ngroups] zero matrix, optional weight_g_idx [K].  Values are stored as
 * u = q + 2^(b-1); W[r][c] = (float)(u - zu) * scale[r][g], exact in F32, with
 * zu = 2^(b-1) when there is no zero point.
 *
 * Two packing generations (layer flag ST_QF_STREAM): >= 0.17 one LSB-first bit stream
 * per row (value c at bit b*c, spilling into the next word); before, floor(32/b) values
 * per word and the top bits unused.  Identical for b in {1, 2, 4, 8}.
 *
 * References: compressed-tensors src/compressed_tensors/compressors/pack_quantized/base.py
 * and src/compressed_tensors/utils/helpers.py (pack_to_int32 / unpack_from_int32, both
 * generations, the offset), src/compressed_tensors/quantization/lifecycle/forward.py
 * (_dequantize, _process_group: g_idx indexes the scale); llama.cpp conversion/base.py
 * dequant_packed; shared/reference/quantized-formats.md section 3a.
 */
#include "decode.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "decode_util.h"

/* Packed rows read at once when the box spans whole rows. */
#define CHUNK_BYTES (512u << 10)
/* Per-row scale and zero tables of one piece of rows. */
#define TABLE_BYTES (8u << 20)


enum scale_mode { PER_ROW, PER_TENSOR, PER_EXPERT };

struct ct {
	const struct st_qlayer *q;
	const struct decode_io *io;
	uint64_t E, N, K, G, W;    /* W: words per packed row */
	unsigned b, pf;            /* pf: values per word (32 for the stream: unused) */
	bool stream;
	enum scale_mode mode;
	uint64_t ng;               /* scale columns (groups) */
	uint64_t zr, zng;          /* zero point: packed rows per expert, columns */
	uint64_t gmin, ngr;        /* the groups the segment's columns use */
	uint32_t *gl;              /* per box column, its group - gmin */
	float *stab;               /* [row of piece][group - gmin] */
	int32_t *ztab;
	uint32_t *zbuf;            /* packed zero rows of a piece x its groups */
	uint32_t *words;           /* packed weight rows */
};


/*
 * The group of each box column [c0, c1) for expert e, relative to the lowest used
 * (s->gmin, s->ngr groups from there): from g_idx when present, else c / G.
 */
static int box_groups(struct ct *s, uint64_t e, uint64_t c0, uint64_t c1)
{
	const struct decode_io *io = s->io;
	uint64_t nc = c1 - c0, lo = UINT64_MAX, hi = 0;
	uint32_t *gl = s->gl;

	if (s->mode != PER_ROW) {
		memset(gl, 0, nc * sizeof *gl);
		s->gmin = 0, s->ngr = 1;
		return 0;
	}
	if (s->q->in[ST_QIN_GIDX].present) {
		/* [K], or [E, K]: one per expert. */
		uint64_t first = io->in[ST_QIN_GIDX].rank == 2 ? e * s->K + c0 : c0;
		int rc = decode_read_gidx(io, first, nc, s->ng, gl);
		if (rc < 0)
			return rc;
	} else {
		for (uint64_t i = 0; i < nc; i++) {
			if ((c0 + i) / s->G >= s->ng)
				return -EIO;
			gl[i] = (uint32_t)((c0 + i) / s->G);
		}
	}
	for (uint64_t i = 0; i < nc; i++) {
		lo = gl[i] < lo ? gl[i] : lo;
		hi = gl[i] > hi ? gl[i] : hi;
	}
	for (uint64_t i = 0; i < nc; i++)
		gl[i] -= (uint32_t)lo;
	s->gmin = lo, s->ngr = hi - lo + 1;
	return 0;
}

/* Unpacked value i of a packed column whose packed row j0 + j is w[j * stride]. */
static uint32_t column_value(const struct ct *s, const uint32_t *w, uint64_t stride, uint64_t i,
			     uint64_t j0)
{
	uint32_t mask = (1u << s->b) - 1;

	if (!s->stream)
		return (w[(i / s->pf - j0) * stride] >> (s->b * (i % s->pf))) & mask;
	uint64_t bit = i * s->b - j0 * 32, v = w[bit / 32 * stride];
	unsigned sh = (unsigned)(bit % 32);
	if (sh + s->b > 32)
		v |= (uint64_t)w[(bit / 32 + 1) * stride] << 32;
	return (uint32_t)(v >> sh) & mask;
}

/* Zero points of rows [rr0, rr0+np) of expert e, groups [gmin, gmin+ngr), into s->ztab. */
static int fill_zeros(struct ct *s, uint64_t e, uint64_t rr0, uint64_t np)
{
	const struct decode_io *io = s->io;
	uint64_t ngr = s->ngr;

	if (!s->q->in[ST_QIN_ZERO].present) {
		for (uint64_t i = 0; i < np * ngr; i++)
			s->ztab[i] = 1 << (s->b - 1);
		return 0;
	}
	if (s->mode != PER_ROW) {
		/* One zero for the tensor (or the expert): value 0 of its word. */
		uint32_t w;
		int rc = io->read(io->ctx, ST_QIN_ZERO, &w, 4, s->mode == PER_EXPERT ? e * 4 : 0);
		for (uint64_t i = 0; rc == 0 && i < np; i++)
			s->ztab[i] = (int32_t)(w & ((1u << s->b) - 1));
		return rc;
	}
	/* The packed rows [jlo, jhi) of the zero matrix that hold rows rr0.. of the piece. */
	uint64_t jlo = s->stream ? rr0 * s->b / 32 : rr0 / s->pf;
	uint64_t jhi = s->stream ? ((rr0 + np) * s->b + 31) / 32 : (rr0 + np - 1) / s->pf + 1;
	jhi = jhi < s->zr ? jhi : s->zr;
	for (uint64_t j = jlo; j < jhi; j++) {
		int rc = io->read(io->ctx, ST_QIN_ZERO, s->zbuf + (j - jlo) * ngr, ngr * 4,
				  ((e * s->zr + j) * s->zng + s->gmin) * 4);
		if (rc < 0)
			return rc;
	}
	/* A spill past the last packed row reads this zeroed word, never used bits. */
	memset(s->zbuf + (jhi - jlo) * ngr, 0, ngr * 4);
	for (uint64_t i = 0; i < np; i++)
		for (uint64_t g = 0; g < ngr; g++)
			s->ztab[i * ngr + g] = (int32_t)column_value(s, s->zbuf + g, ngr, rr0 + i, jlo);
	return 0;
}

/* Scales of rows [rr0, rr0+np) of expert e, groups [gmin, gmin+ngr), into s->stab. */
static int fill_scales(struct ct *s, uint64_t e, uint64_t rr0, uint64_t np)
{
	if (s->mode != PER_ROW) {
		float v;
		int rc = decode_read_f32(s->io, ST_QIN_SCALE, s->mode == PER_EXPERT ? e : 0, 1, &v);
		for (uint64_t i = 0; rc == 0 && i < np; i++)
			s->stab[i] = v;
		return rc;
	}
	if (s->ngr == s->ng) /* every group: the piece's rows are contiguous, one read */
		return decode_read_f32(s->io, ST_QIN_SCALE, (e * s->N + rr0) * s->ng, np * s->ng, s->stab);
	for (uint64_t i = 0; i < np; i++) {
		int rc = decode_read_f32(s->io, ST_QIN_SCALE, (e * s->N + rr0 + i) * s->ng + s->gmin,
					 s->ngr, s->stab + i * s->ngr);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Columns [c0, c1) of one dense row from its packed words, the first being word wlo. */
static void decode_row(const struct ct *s, const uint32_t *w, uint64_t wlo, uint64_t c0, uint64_t c1,
		       const float *st, const int32_t *zt, float *o)
{
	const uint32_t *gl = s->gl;
	unsigned b = s->b, mask = (1u << b) - 1;

	if (s->stream) {
		uint64_t bit = c0 * b - wlo * 32;
		for (uint64_t i = 0; i < c1 - c0; i++, bit += b)
			o[i] = (float)((int32_t)decode_bits_at(w, bit, b) - zt[gl[i]]) * st[gl[i]];
		return;
	}
	/* Per-word: walk word and slot together (no division per value). */
	uint64_t wi = c0 / s->pf - wlo;
	unsigned pos = (unsigned)(c0 % s->pf);
	for (uint64_t i = 0; i < c1 - c0; i++) {
		int32_t u = (int32_t)((w[wi] >> (b * pos)) & mask);
		o[i] = (float)(u - zt[gl[i]]) * st[gl[i]];
		if (++pos == s->pf)
			pos = 0, wi++;
	}
}

/* Rows [rr0, rr0+np) of expert e, columns [c0, c1); out points at the piece's first row. */
static int decode_piece(struct ct *s, uint64_t e, uint64_t rr0, uint64_t np, uint64_t rb,
			uint64_t c0, uint64_t c1, float *out)
{
	const struct decode_io *io = s->io;
	uint64_t nc = c1 - c0;
	uint64_t wlo = s->stream ? c0 * s->b / 32 : c0 / s->pf;
	uint64_t whi = s->stream ? (c1 * s->b + 31) / 32 : (c1 - 1) / s->pf + 1;
	int rc = fill_scales(s, e, rr0, np);

	if (rc == 0)
		rc = fill_zeros(s, e, rr0, np);
	whi = whi < s->W ? whi : s->W;
	/* Whole packed rows are contiguous, across experts too: read rb of them at once. */
	uint64_t per = wlo == 0 && whi == s->W ? rb : 1, nw = whi - wlo;
	for (uint64_t i = 0; rc == 0 && i < np; i += per) {
		uint64_t m = np - i < per ? np - i : per, row = e * s->N + rr0 + i;
		rc = io->read(io->ctx, ST_QIN_VALUES, s->words, m * nw * 4, (row * s->W + wlo) * 4);
		s->words[m * nw] = 0;
		for (uint64_t j = 0; rc == 0 && j < m; j++)
			decode_row(s, s->words + j * nw, wlo, c0, c1, s->stab + (i + j) * s->ngr,
				   s->ztab + (i + j) * s->ngr, out + (i + j) * nc);
	}
	return rc;
}

/* The scale's shape decides per row (groups in its last dimension), per tensor or per expert. */
static int check_scale(struct ct *s)
{
	const struct decode_input *sc = &s->io->in[ST_QIN_SCALE];
	uint64_t S;

	if (decode_elements(sc, &S))
		return -EIO;
	s->ng = sc->rank ? sc->shape[sc->rank - 1] : 1;
	if (S == 1)
		s->mode = PER_TENSOR;
	else if (s->ng && S / s->ng == s->E * s->N && S % s->ng == 0)
		s->mode = PER_ROW;
	else if (s->E > 1 && S == s->E)
		s->mode = PER_EXPERT;
	else
		return -EIO;
	return 0;
}

/* The zero point matches the scale's mode; its packed rows cover the N rows of an expert. */
static int check_zero(struct ct *s)
{
	const struct decode_input *z = &s->io->in[ST_QIN_ZERO];
	uint64_t n;

	if (!s->q->in[ST_QIN_ZERO].present)
		return 0;
	if (decode_elements(z, &n))
		return -EIO;
	if (z->dtype != ST_I32 && z->dtype != ST_U32)
		return -EIO;
	if (s->mode != PER_ROW)
		return n == (s->mode == PER_EXPERT ? s->E : 1) && decode_fits(n, 1, 4, z->nbytes) ? 0 : -EIO;
	if (z->rank != s->q->rank || (z->rank == 3 && z->shape[0] != s->E))
		return -EIO;
	s->zr = z->shape[z->rank - 2], s->zng = z->shape[z->rank - 1];
	if (s->zng != s->ng || s->zr > UINT64_MAX / 32 ||
	    (s->stream ? s->zr * 32 < s->N * s->b : s->zr * s->pf < s->N) ||
	    !decode_fits(s->E * s->zr, s->zng, 4, z->nbytes))
		return -EIO;
	return 0;
}

static int check_inputs(struct ct *s)
{
	const struct st_qlayer *q = s->q;
	const struct decode_input *v = &s->io->in[ST_QIN_VALUES];

	if (q->rank != 2 && q->rank != 3)
		return -EIO;
	s->E = q->rank == 3 ? q->shape[0] : 1;
	s->N = q->shape[q->rank - 2], s->K = q->shape[q->rank - 1];
	s->G = q->group, s->b = q->bits, s->stream = q->flags & ST_QF_STREAM;
	if (s->b < 1 || s->b > 8 || s->G == 0 || (v->dtype != ST_I32 && v->dtype != ST_U32) ||
	    v->rank != q->rank || (v->rank == 3 && v->shape[0] != s->E) || v->shape[v->rank - 2] != s->N)
		return -EIO;
	s->pf = 32 / s->b;
	s->W = v->shape[v->rank - 1];
	if (s->W > UINT64_MAX / 32 || (s->stream ? s->W * 32 < s->K * s->b : s->W * s->pf < s->K) ||
	    !decode_fits(s->E * s->N, s->W, 4, v->nbytes))
		return -EIO;
	int rc = check_scale(s);
	return rc < 0 ? rc : check_zero(s);
}

/* Rows [ra, rb) of one expert e (rows of the dense [E*N, K] view), pieces bounded by the tables. */
static int decode_expert(struct ct *s, uint64_t e, uint64_t ra, uint64_t rb, uint64_t r0,
			 uint64_t c0, uint64_t c1, float *out)
{
	int rc = box_groups(s, e, c0, c1);
	if (rc < 0)
		return rc;
	uint64_t nr = rb - ra, np = TABLE_BYTES / (s->ngr * 8);
	np = np < 1 ? 1 : np > nr ? nr : np;
	uint64_t rows = CHUNK_BYTES / (s->W * 4);
	rows = rows < 1 ? 1 : rows > np ? np : rows;
	uint64_t nw = rows * s->W > s->W ? rows * s->W : s->W;
	s->stab = malloc(np * s->ngr * sizeof *s->stab);
	s->ztab = malloc(np * s->ngr * sizeof *s->ztab);
	s->zbuf = malloc((np / s->pf + 3) * s->ngr * 4);
	s->words = malloc((nw + 1) * 4);
	rc = -ENOMEM;
	if (s->stab && s->ztab && s->zbuf && s->words) {
		rc = 0;
		for (uint64_t r = ra; rc == 0 && r < rb; r += np) {
			uint64_t m = rb - r < np ? rb - r : np;
			rc = decode_piece(s, e, r - e * s->N, m, rows, c0, c1, out + (r - r0) * (c1 - c0));
		}
	}
	free(s->stab), free(s->ztab), free(s->zbuf), free(s->words);
	return rc;
}

int decode_ct_int(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
		  uint64_t c0, uint64_t c1, float *out)
{
	struct ct s = { .q = q, .io = io };
	int rc = check_inputs(&s);
	if (rc < 0)
		return rc;
	s.gl = malloc((c1 - c0) * sizeof *s.gl);
	if (!s.gl)
		return -ENOMEM;
	for (uint64_t r = r0; rc == 0 && r < r1;) {
		uint64_t e = r / s.N, end = (e + 1) * s.N < r1 ? (e + 1) * s.N : r1;
		rc = decode_expert(&s, e, r, end, r0, c0, c1, out);
		r = end;
	}
	free(s.gl);
	return rc;
}
