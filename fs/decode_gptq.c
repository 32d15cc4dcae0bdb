/*
 * GPTQ (AutoGPTQ / GPTQModel packing): qweight [K*b/packbits, N] packed along K,
 * qzeros [ceil(K/G), N*b/packbits] packed along N, scales [ceil(K/G), N], optional
 * g_idx [K].  W[n][k] = scale[g][n] * (float)(q - z), exact in F32.
 *
 * References: AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py (pack(), the
 * torch dequantization, the 3-bit word table), GPTQModel gptqmodel/utils/model.py
 * convert_gptq_v1_to_v2_format (v2 stores the true zero), llama.cpp conversion/base.py
 * dequant_gptq (pack dtypes other than int32); the layout as summarised in
 * shared/reference/quantized-formats.md section 1.
 *
 * Both packed tensors are LSB-first bit streams of little-endian words: a column of
 * qweight (down its rows) and a row of qzeros.  A stream of little-endian words of any
 * width is the same bit stream as its bytes, so one rule serves every pack dtype and
 * 3 bits alike: value i is at bit i*b of the stream.
 */
#include "decode.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "decode_util.h"

/* Packed words of one chunk: small enough to stay in L2 while each of its columns is decoded. */
#define CHUNK_BYTES (512u << 10)
/* Per-column scale and zero tables of one piece of rows. */
#define TABLE_BYTES (8u << 20)
#define MAX_PIECE_ROWS 16384u

/* Bits of a pack word (the dtype of qweight / qzeros), or 0 for a dtype that is none. */
static unsigned pack_bits(enum st_dtype d)
{
	switch (d) {
	case ST_I8: case ST_U8: case ST_I16: case ST_U16:
	case ST_I32: case ST_U32: case ST_I64: case ST_U64:
		return st_dtype_bits(d);
	default:
		return 0;
	}
}




/*
 * The group of each box column [c0, c1), relative to the lowest used (*gmin; *ngr groups
 * from there): from g_idx when present, else k / G.
 */
static int box_groups(const struct decode_io *io, bool has_gidx, uint64_t G, uint64_t ngroups,
		      uint64_t c0, uint64_t c1, uint32_t *gl, uint64_t *gmin, uint64_t *ngr)
{
	uint64_t nc = c1 - c0, lo = UINT64_MAX, hi = 0;

	if (has_gidx) {
		int rc = decode_read_gidx(io, c0, nc, ngroups, gl);
		if (rc < 0)
			return rc;
	} else {
		for (uint64_t i = 0; i < nc; i++) {
			if ((c0 + i) / G >= ngroups)
				return -EIO;
			gl[i] = (uint32_t)((c0 + i) / G);
		}
	}
	for (uint64_t i = 0; i < nc; i++) {
		lo = gl[i] < lo ? gl[i] : lo;
		hi = gl[i] > hi ? gl[i] : hi;
	}
	for (uint64_t i = 0; i < nc; i++)
		gl[i] -= (uint32_t)lo;
	*gmin = lo;
	*ngr = hi - lo + 1;
	return 0;
}

struct gptq {
	const struct st_qlayer *q;
	const struct decode_io *io;
	uint64_t N, K, J;      /* J: rows of qweight */
	unsigned b, pb, wb;    /* value bits; qweight word bits and bytes */
	unsigned zpb, zwb;     /* qzeros word bits and bytes */
	uint64_t zcols;        /* words in a qzeros row */
	uint64_t gmin, ngr;    /* the groups the box uses */
	const uint32_t *gl;    /* per box column, its group - gmin */
	float *stab;           /* [row of piece][group - gmin] */
	int32_t *ztab;
	float *srow;           /* one scales row of a piece */
	uint32_t *zrow;        /* one qzeros row's bytes of a piece, padded */
	unsigned char *chunk;  /* packed rows of a chunk x the piece's columns */
	uint32_t *col;         /* one column of a chunk, as a contiguous stream */
};

/* Scale and zero of every (row n0 + i, group gmin + j) of a piece into the tables. */
static int fill_tables(struct gptq *s, uint64_t n0, uint64_t np)
{
	const struct decode_io *io = s->io;
	unsigned b = s->b, mask = (1u << b) - 1;
	bool v1 = s->q->flags & ST_QF_ZERO_PLUS_ONE, has_z = s->q->in[ST_QIN_ZERO].present;

	for (uint64_t j = 0; j < s->ngr; j++) {
		uint64_t g = s->gmin + j;
		int rc = decode_read_f32(io, ST_QIN_SCALE, g * s->N + n0, np, s->srow);
		if (rc < 0)
			return rc;
		for (uint64_t i = 0; i < np; i++)
			s->stab[i * s->ngr + j] = s->srow[i];
		if (!has_z) {
			/* No qzeros: the symmetric zero every kernel assumes then. */
			for (uint64_t i = 0; i < np; i++)
				s->ztab[i * s->ngr + j] = 1 << (b - 1);
			continue;
		}
		/* The bytes of row g holding bits b*n0 .. b*(n0+np) of its stream. */
		uint64_t byte0 = b * n0 / 8, byte1 = (b * (n0 + np) + 7) / 8;
		memset(s->zrow, 0, (byte1 - byte0 + 11) / 4 * 4);
		rc = io->read(io->ctx, ST_QIN_ZERO, s->zrow, byte1 - byte0, g * s->zcols * s->zwb + byte0);
		if (rc < 0)
			return rc;
		for (uint64_t i = 0; i < np; i++) {
			uint32_t z = decode_bits_at(s->zrow, b * (n0 + i) - 8 * byte0, b);
			s->ztab[i * s->ngr + j] = (int32_t)(v1 ? (z + 1) & mask : z);
		}
	}
	return 0;
}

/* Packed rows [jlo, jhi) of columns [n0, n0+np) into s->chunk, row by row. */
static int read_chunk(struct gptq *s, uint64_t n0, uint64_t np, uint64_t jlo, uint64_t jhi)
{
	const struct decode_io *io = s->io;

	if (np == s->N) /* whole rows are contiguous: one read */
		return io->read(io->ctx, ST_QIN_VALUES, s->chunk, (jhi - jlo) * s->N * s->wb,
				jlo * s->N * s->wb);
	for (uint64_t j = jlo; j < jhi; j++) {
		int rc = io->read(io->ctx, ST_QIN_VALUES, s->chunk + (j - jlo) * np * s->wb, np * s->wb,
				  (j * s->N + n0) * s->wb);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Columns the chunk is transposed by at a time: one cache line of 32-bit words. */
#define TILE 16

/* Values [0, n) of one column's stream from bit `bit` into o, a run of equal groups at a time. */
static void decode_column(unsigned b, const uint32_t *col, uint64_t bit, uint64_t n, const uint32_t *gl,
			  const float *st, const int32_t *zt, float *o)
{
	uint32_t mask = (1u << b) - 1;

	for (uint64_t k = 0; k < n;) {
		uint32_t g = gl[k];
		uint64_t end = k + 1;
		while (end < n && gl[end] == g)
			end++;
		float sc = st[g];
		int32_t z = zt[g];
		if (32 % b == 0) /* no value straddles two words */
			for (; k < end; k++, bit += b)
				o[k] = sc * (float)((int32_t)((col[bit >> 5] >> (bit & 31)) & mask) - z);
		else
			for (; k < end; k++, bit += b)
				o[k] = sc * (float)((int32_t)decode_bits_at(col, bit, b) - z);
	}
}

/*
 * Columns [ka, kb) of dense rows [n0, n0+np) from a chunk holding packed rows from jlo.
 * A dense row is a column of the chunk: TILE of them are first copied out into
 * contiguous streams, reading each packed row's TILE words together (walking one
 * column down the chunk alone would touch a cache line per word).
 */
static void decode_chunk(struct gptq *s, uint64_t n0, uint64_t np, uint64_t jlo, uint64_t nj,
			 uint64_t ka, uint64_t kb, uint64_t r0, uint64_t c0, uint64_t nc, float *out)
{
	unsigned b = s->b, wb = s->wb;
	uint64_t cw = (nj * wb + 3) / 4 + 2; /* words per column stream, padded */
	unsigned char *col = (unsigned char *)s->col;

	for (uint64_t i0 = 0; i0 < np; i0 += TILE) {
		uint64_t ni = np - i0 < TILE ? np - i0 : TILE;
		memset(col, 0, ni * cw * 4);
		for (uint64_t j = 0; j < nj; j++) {
			const unsigned char *src = s->chunk + (j * np + i0) * wb;
			if (wb == 4)
				for (uint64_t t = 0; t < ni; t++)
					memcpy(col + (t * cw + j) * 4, src + 4 * t, 4);
			else
				for (uint64_t t = 0; t < ni; t++)
					memcpy(col + t * cw * 4 + j * wb, src + t * wb, wb);
		}
		for (uint64_t t = 0; t < ni; t++) {
			uint64_t i = i0 + t;
			decode_column(b, s->col + t * cw, b * ka - jlo * s->pb, kb - ka, s->gl + (ka - c0),
				      s->stab + i * s->ngr, s->ztab + i * s->ngr,
				      out + (n0 + i - r0) * nc + (ka - c0));
		}
	}
}

/* Dense rows [n0, n0+np) x columns [c0, c1), chunk by chunk along K. */
static int decode_piece(struct gptq *s, uint64_t n0, uint64_t np, uint64_t kc, uint64_t r0,
			uint64_t c0, uint64_t c1, float *out)
{
	int rc = fill_tables(s, n0, np);

	for (uint64_t ka = c0; rc == 0 && ka < c1;) {
		uint64_t kb = (ka / kc + 1) * kc;
		kb = kb < c1 ? kb : c1;
		uint64_t jlo = s->b * ka / s->pb, jhi = (s->b * kb + s->pb - 1) / s->pb;
		jhi = jhi < s->J ? jhi : s->J;
		rc = read_chunk(s, n0, np, jlo, jhi);
		if (rc == 0)
			decode_chunk(s, n0, np, jlo, jhi - jlo, ka, kb, r0, c0, c1 - c0, out);
		ka = kb;
	}
	return rc;
}

/* Checks what the offsets rest on; fills the sizes of s. */
static int check_inputs(struct gptq *s)
{
	const struct st_qlayer *q = s->q;
	const struct decode_input *qw = &s->io->in[ST_QIN_VALUES], *sc = &s->io->in[ST_QIN_SCALE];
	const struct decode_input *qz = &s->io->in[ST_QIN_ZERO];

	s->N = q->shape[0], s->K = q->shape[1], s->b = q->bits;
	s->pb = pack_bits(qw->dtype), s->wb = s->pb / 8;
	if (q->rank != 2 || !s->pb || s->b < 1 || s->b > 8 || q->group == 0 || qw->rank != 2 ||
	    qw->shape[1] != s->N || sc->rank != 2 || sc->shape[1] != s->N || sc->shape[0] == 0)
		return -EIO;
	s->J = qw->shape[0];
	if (s->J > UINT64_MAX / s->pb || s->J * s->pb < s->K * s->b || !decode_fits(s->J, s->N, s->wb, qw->nbytes))
		return -EIO;
	if (q->in[ST_QIN_ZERO].present) {
		s->zpb = pack_bits(qz->dtype), s->zwb = s->zpb / 8;
		if (!s->zpb || qz->rank != 2 || qz->shape[0] < sc->shape[0])
			return -EIO;
		s->zcols = qz->shape[1];
		if (s->zcols > UINT64_MAX / s->zpb || s->zcols * s->zpb < s->N * s->b ||
		    !decode_fits(sc->shape[0], s->zcols, s->zwb, qz->nbytes))
			return -EIO;
	}
	return 0;
}

int decode_gptq(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
		uint64_t c0, uint64_t c1, float *out)
{
	struct gptq s = { .q = q, .io = io };
	int rc = check_inputs(&s);
	if (rc < 0)
		return rc;
	uint64_t nc = c1 - c0, nr = r1 - r0;
	uint32_t *gl = malloc(nc * sizeof *gl);
	if (!gl)
		return -ENOMEM;
	s.gl = gl;
	rc = box_groups(io, q->in[ST_QIN_GIDX].present, q->group, io->in[ST_QIN_SCALE].shape[0], c0,
			c1, gl, &s.gmin, &s.ngr);
	if (rc < 0)
		goto out;
	/* Rows per piece: as many as the tables allow (all of them, usually), and few enough
	 * that a chunk of at least 64 values down every one of them stays small. */
	uint64_t np = TABLE_BYTES / (s.ngr * 8);
	np = np < 1 ? 1 : np > MAX_PIECE_ROWS ? MAX_PIECE_ROWS : np;
	np = np > nr ? nr : np;
	/* Values per chunk along K: a multiple of 64 so that chunks start on word boundaries. */
	uint64_t kc = (uint64_t)CHUNK_BYTES * 8 / ((uint64_t)s.b * np) / 64 * 64;
	kc = kc < 64 ? 64 : kc > 65536 ? 65536 : kc;
	uint64_t nj = s.b * kc / s.pb + 2; /* packed rows a chunk can touch */
	s.stab = malloc(np * s.ngr * sizeof *s.stab);
	s.ztab = malloc(np * s.ngr * sizeof *s.ztab);
	s.srow = malloc(np * sizeof *s.srow);
	s.zrow = malloc((s.b * np + 7) / 8 + 12);
	s.chunk = malloc(nj * np * s.wb);
	s.col = malloc(TILE * ((nj * s.wb + 3) / 4 + 2) * 4);
	rc = -ENOMEM;
	if (s.stab && s.ztab && s.srow && s.zrow && s.chunk && s.col) {
		rc = 0;
		for (uint64_t n0 = r0; rc == 0 && n0 < r1; n0 += np)
			rc = decode_piece(&s, n0, r1 - n0 < np ? r1 - n0 : np, kc, r0, c0, c1, out);
	}
	free(s.stab), free(s.ztab), free(s.srow), free(s.zrow), free(s.chunk), free(s.col);
out:
	free(gl);
	return rc;
}
