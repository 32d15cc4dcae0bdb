/* libFuzzer target: the whole parser, on arbitrary file contents. */
#include <stdint.h>
#include <string.h>

#include "../../parser/header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_header h;
	char err[ST_ERR_LEN];

	if (st_header_parse_buffer(data, size, &h, err) == 0) {
		/* What was accepted must hold together: every tensor inside the data region. */
		for (size_t i = 0; i < h.n_tensors; i++)
			if (h.tensors[i].end > h.file_size - h.data_start || h.tensors[i].begin > h.tensors[i].end)
				__builtin_trap();
		st_header_free(&h);
	} else if (!err[0] || memchr(err, '\n', strlen(err))) {
		__builtin_trap(); /* every refusal is one line */
	}
	return 0;
}
