/* libFuzzer target: the whole parser, on arbitrary file contents, and the quantized-layer
 * finder on what it accepts (with the header's own JSON as a config, too). */
#include <stdint.h>
#include <string.h>

#include "../../parser/header.h"
#include "../../parser/quant.h"

struct input {
	const uint8_t *data;
	const struct st_header *h;
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

static void find_layers(const uint8_t *data, const struct st_header *h, const char *config, size_t len)
{
	const struct st_header *hdrs[1] = {h};
	struct input in = {data, h};
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
	}
	st_quant_free(&q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_header h;
	char err[ST_ERR_LEN];

	if (st_header_parse_buffer(data, size, &h, err) == 0) {
		/* What was accepted must hold together: every tensor inside the data region. */
		for (size_t i = 0; i < h.n_tensors; i++)
			if (h.tensors[i].end > h.file_size - h.data_start || h.tensors[i].begin > h.tensors[i].end)
				__builtin_trap();
		find_layers(data, &h, NULL, 0);
		find_layers(data, &h, (const char *)data + 8, (size_t)h.header_len);
		st_header_free(&h);
	} else if (!err[0] || memchr(err, '\n', strlen(err))) {
		__builtin_trap(); /* every refusal is one line */
	}
	return 0;
}
