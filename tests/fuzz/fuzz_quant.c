/* libFuzzer target: the quantized-layer finder and every decoder on what it finds, over
 * arbitrary file contents (hostile headers, configs and packed bytes alike), without a config
 * and with the header's own JSON as one.  What the finder accepts must hold together; each
 * layer is decoded over a box of at most BOX_MAX values, whole rows where they fit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../fs/decode.h"
#include "../../parser/header.h"
#include "../../parser/quant.h"

#define BOX_MAX (1u << 16)

struct input {
	const uint8_t *data;
	const struct st_header *h;
	const struct st_qlayer *l;
};

static int read_tensor(void *ctx, uint32_t shard, uint32_t index, void *buf, size_t len)
{
	const struct input *in = ctx;
	const struct st_tensor *t = &in->h->tensors[index];

	if (shard != 0 || index >= in->h->n_tensors || len > t->end - t->begin)
		__builtin_trap(); /* the finder asked for bytes the tensor does not have */
	memcpy(buf, in->data + in->h->data_start + t->begin, len);
	return 0;
}

static int read_input(void *ctx, enum st_qrole role, void *dst, size_t n, uint64_t off)
{
	const struct input *in = ctx;
	const struct st_tensor *t = &in->h->tensors[in->l->in[role].index];

	if (!in->l->in[role].present || off > t->end - t->begin || n > t->end - t->begin - off)
		__builtin_trap(); /* a decoder read past its input */
	memcpy(dst, in->data + in->h->data_start + t->begin + off, n);
	return 0;
}

static void decode_layer(struct input *in, const struct st_qlayer *l)
{
	uint64_t k = l->shape[l->rank - 1], rows = l->shape[l->rank - 2] * (l->rank == 3 ? l->shape[0] : 1);
	struct decode_io io = {.read = read_input, .ctx = in};
	float *out;

	in->l = l;
	for (int r = 0; r < ST_QIN_COUNT; r++) {
		if (!l->in[r].present)
			continue;
		const struct st_tensor *t = &in->h->tensors[l->in[r].index];
		io.in[r] = (struct decode_input){t->dtype, t->rank, in->h->dims + t->dims, t->end - t->begin};
	}
	if (!k || !rows)
		return;
	uint64_t c1 = k < BOX_MAX ? k : BOX_MAX, r1 = BOX_MAX / c1 < rows ? BOX_MAX / c1 : rows;
	uint64_t c0 = c1 > 3 ? 1 : 0; /* off the first column, as a slice would be */
	if (!(out = malloc(r1 * c1 * sizeof *out)))
		return;
	decode_for(l->format)(l, &io, 0, r1, c0, c1, out);
	decode_for(l->format)(l, &io, rows - 1, rows, 0, c1, out);
	free(out);
}

/* Every layer names tensors it hid, of shape rank 2 or 3; every refusal is one line. */
static void find_and_decode(const uint8_t *data, const struct st_header *h, const char *config, size_t len)
{
	const struct st_header *hdrs[1] = {h};
	struct input in = {data, h, NULL};
	struct st_quant_hints hints = {.gptq_v2 = 0, .ct_stream = -1, .read = read_tensor, .ctx = &in};
	struct st_quant q;
	char err[ST_ERR_LEN];

	if (st_quant_find(hdrs, 1, config, len, "config", &hints, &q, err) < 0) {
		if (!err[0] || memchr(err, '\n', strlen(err)))
			__builtin_trap();
		return;
	}
	for (size_t i = 0; i < q.n_layers; i++) {
		const struct st_qlayer *l = &q.layers[i];
		if ((l->rank != 2 && l->rank != 3) || !l->name)
			__builtin_trap();
		for (int r = 0; r < ST_QIN_COUNT; r++)
			if (l->in[r].present && (l->in[r].shard != 0 || l->in[r].index >= h->n_tensors ||
						 !q.consumed[0][l->in[r].index]))
				__builtin_trap();
		decode_layer(&in, l);
	}
	st_quant_free(&q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_header h;
	char err[ST_ERR_LEN];

	if (st_header_parse_buffer(data, size, &h, err) != 0)
		return 0;
	find_and_decode(data, &h, NULL, 0);
	find_and_decode(data, &h, (const char *)data + 8, (size_t)h.header_len);
	st_header_free(&h);
	return 0;
}
