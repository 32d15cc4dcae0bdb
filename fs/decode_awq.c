/*
 * AWQ, AutoAWQ version "gemm", 4 bits: qweight I32 [K, N/8] and qzeros I32
 * [ceil(K/G), N/8] packed along N with the interleaved nibble order, scales
 * [ceil(K/G), N].  Column n is nibble AWQ_REVERSE_ORDER[n % 8] of word n / 8;
 * W[n][k] = (float)(q - z) * scale[k/G][n] (zeros as stored, no +1), exact in F32.
 * The dense layer is [N, K], the transpose of how AWQ stores it.
 *
 * References: AutoAWQ awq/utils/packing_utils.py (AWQ_ORDER, AWQ_REVERSE_ORDER,
 * unpack_awq, dequantize_gemm), awq/modules/linear/gemm.py (from_linear, the pack);
 * vLLM vllm/model_executor/layers/quantization/awq_triton.py (the shift table);
 * shared/reference/quantized-formats.md section 2.
 */
#include "decode.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "decode_util.h"

/* Words of one chunk of qweight rows: small enough to stay in L2 while it is transposed. */
#define CHUNK_BYTES (512u << 10)
/* Per-column scale and zero tables of one piece of dense rows. */
#define TABLE_BYTES (8u << 20)

/* Shift of column n % 8 within its word: 4 * AWQ_REVERSE_ORDER[n % 8]. */
static const unsigned char awq_shift[8] = { 0, 16, 4, 20, 8, 24, 12, 28 };

static bool fits(uint64_t rows, uint64_t cols, uint64_t width, uint64_t nbytes)
{
	uint64_t n;

	return !__builtin_mul_overflow(rows, cols, &n) && !__builtin_mul_overflow(n, width, &n) &&
	       n <= nbytes;
}

struct awq {
	const struct decode_io *io;
	uint64_t N, K, G, W;   /* W: words per qweight / qzeros row */
	uint64_t gmin, ngr;    /* the groups the box's columns use */
	float *stab;           /* [dense row of piece][group - gmin] */
	int32_t *ztab;
	float *srow;           /* one scales row of a piece */
	uint32_t *words;       /* a chunk of qweight rows (or one qzeros row), the piece's words */
	uint32_t *gk;          /* group - gmin of each column of a chunk (no division per value) */
};

/* Scale and zero of every (dense row n0 + i, group gmin + j) of a piece. */
static int fill_tables(struct awq *s, uint64_t n0, uint64_t np)
{
	const struct decode_io *io = s->io;
	uint64_t w0 = n0 / 8, w1 = (n0 + np + 7) / 8;

	for (uint64_t j = 0; j < s->ngr; j++) {
		uint64_t g = s->gmin + j;
		int rc = decode_read_f32(io, ST_QIN_SCALE, g * s->N + n0, np, s->srow);
		if (rc < 0)
			return rc;
		rc = io->read(io->ctx, ST_QIN_ZERO, s->words, (w1 - w0) * 4, (g * s->W + w0) * 4);
		if (rc < 0)
			return rc;
		for (uint64_t i = 0; i < np; i++) {
			uint64_t n = n0 + i;
			s->stab[i * s->ngr + j] = s->srow[i];
			s->ztab[i * s->ngr + j] = (int32_t)((s->words[n / 8 - w0] >> awq_shift[n % 8]) & 15);
		}
	}
	return 0;
}

/* qweight rows [ka, kb), words [w0, w1), into s->words; one read when rows are whole. */
static int read_chunk(struct awq *s, uint64_t ka, uint64_t kb, uint64_t w0, uint64_t w1)
{
	const struct decode_io *io = s->io;
	uint64_t nw = w1 - w0;

	if (nw == s->W)
		return io->read(io->ctx, ST_QIN_VALUES, s->words, (kb - ka) * nw * 4, ka * nw * 4);
	for (uint64_t k = ka; k < kb; k++) {
		int rc = io->read(io->ctx, ST_QIN_VALUES, s->words + (k - ka) * nw, nw * 4,
				  (k * s->W + w0) * 4);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Dense rows [n0, n0+np) x columns [c0, c1) (out: the box from r0, nc columns wide). */
static int decode_piece(struct awq *s, uint64_t n0, uint64_t np, uint64_t kc, uint64_t r0,
			uint64_t c0, uint64_t c1, float *out)
{
	uint64_t w0 = n0 / 8, w1 = (n0 + np + 7) / 8, nw = w1 - w0, nc = c1 - c0;
	int rc = fill_tables(s, n0, np);

	for (uint64_t ka = c0; rc == 0 && ka < c1; ka += kc) {
		uint64_t kb = c1 - ka < kc ? c1 : ka + kc;
		if ((rc = read_chunk(s, ka, kb, w0, w1)) < 0)
			break;
		for (uint64_t k = ka; k < kb; k++)
			s->gk[k - ka] = (uint32_t)(k / s->G - s->gmin);
		/* Transpose: dense row n walks down one nibble of a column of words. */
		for (uint64_t i = 0; i < np; i++) {
			uint64_t n = n0 + i;
			const uint32_t *w = s->words + (n / 8 - w0);
			unsigned sh = awq_shift[n % 8];
			const float *st = s->stab + i * s->ngr;
			const int32_t *zt = s->ztab + i * s->ngr;
			float *o = out + (n - r0) * nc + (ka - c0);
			for (uint64_t k = ka; k < kb; k++) {
				uint32_t g = s->gk[k - ka];
				int32_t qv = (int32_t)((w[(k - ka) * nw] >> sh) & 15);
				o[k - ka] = (float)(qv - zt[g]) * st[g];
			}
		}
	}
	return rc;
}

int decode_awq(const struct st_qlayer *q, const struct decode_io *io, uint64_t r0, uint64_t r1,
	       uint64_t c0, uint64_t c1, float *out)
{
	const struct decode_input *qw = &io->in[ST_QIN_VALUES], *qz = &io->in[ST_QIN_ZERO];
	const struct decode_input *sc = &io->in[ST_QIN_SCALE];
	struct awq s = { .io = io, .N = q->shape[0], .K = q->shape[1], .G = q->group };

	s.W = (s.N + 7) / 8;
	/* AutoAWQ gemm always carries qzeros; the offsets below rest on these shapes. */
	if (q->rank != 2 || q->bits != 4 || s.G == 0 || !q->in[ST_QIN_ZERO].present ||
	    qw->dtype != ST_I32 || qz->dtype != ST_I32 || qw->rank != 2 || qw->shape[0] != s.K ||
	    qw->shape[1] != s.W || qz->rank != 2 || qz->shape[1] != s.W || sc->rank != 2 ||
	    sc->shape[1] != s.N || (c1 - 1) / s.G >= sc->shape[0] || qz->shape[0] < sc->shape[0] ||
	    !fits(s.K, s.W, 4, qw->nbytes) || !fits(sc->shape[0], s.W, 4, qz->nbytes))
		return -EIO;
	s.gmin = c0 / s.G, s.ngr = (c1 - 1) / s.G - s.gmin + 1;
	uint64_t nr = r1 - r0, np = TABLE_BYTES / (s.ngr * 8);
	np = np < 8 ? 8 : np / 8 * 8;
	np = np > nr ? nr : np;
	uint64_t nw = (np + 7) / 8 + 1; /* words a piece can touch */
	uint64_t kc = CHUNK_BYTES / (nw * 4);
	kc = kc < 16 ? 16 : kc;
	int rc = -ENOMEM;
	s.stab = malloc(np * s.ngr * sizeof *s.stab);
	s.ztab = malloc(np * s.ngr * sizeof *s.ztab);
	s.srow = malloc(np * sizeof *s.srow);
	s.words = malloc(kc * nw * 4);
	s.gk = malloc(kc * sizeof *s.gk);
	if (s.stab && s.ztab && s.srow && s.words && s.gk) {
		rc = 0;
		for (uint64_t n0 = r0; rc == 0 && n0 < r1; n0 += np)
			rc = decode_piece(&s, n0, r1 - n0 < np ? r1 - n0 : np, kc, r0, c0, c1, out);
	}
	free(s.stab), free(s.ztab), free(s.srow), free(s.words), free(s.gk);
	return rc;
}
