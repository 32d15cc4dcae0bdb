/*
 * -o dequantize=DTYPE: each component's quantized layers (parser/quant.h) become
 * one more shard of the source, a "dense shard", whose header lists the dense
 * tensors and whose store (store.h) decodes them on read (fs/decode.h).  The
 * tree, the views, the xattrs and /.control then treat a dense tensor as any
 * other tensor, and the packed parts it replaces are hidden.
 *
 * A dense shard's store holds two images of its tensors one after the other:
 * the tensors in DTYPE, as its header says (what reads of P.weight get), then
 * the same tensors in F32, which views read so that P.weight@BF16 or a slice
 * converted to F16 rounds once, from the decoded value.
 */
#ifndef FS_DEQUANT_H
#define FS_DEQUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "../parser/dtype.h"
#include "../parser/quant.h"
#include "source.h"

struct dequant_opts {
	int dtype;                  /* enum st_dtype: BF16, F16 or F32; -1: not dequantizing */
	struct st_quant_hints hints; /* -o gptq_format=, ct_packing= */
};

/* Adds a dense shard for each component that has quantized layers, and hides their parts.
 * 0, or a negative errno with one line in err. */
int dequant_attach(struct source *src, const struct dequant_opts *o, char err[ST_ERR_LEN]);

/* Whether shard `s` of the source is a dense shard. */
static inline bool dequant_is_dense(const struct source *src, size_t s)
{
	return s >= src->n_shards;
}

/* The layer behind tensor `index` of dense shard `sh`, and where its F32 image begins in the
 * shard's store. */
const struct st_qlayer *dequant_layer(const struct shard *sh, uint32_t index, uint64_t *f32_start);

/* The shard of the source that holds the packed values of tensor `index` of dense shard `sh`. */
size_t dequant_values_shard(const struct shard *sh, uint32_t index);

#endif
