/*
 * Quantized layers: which tensors of a checkpoint are the packed parts of one
 * dense weight, in which format, and with what parameters (-o dequantize=).
 *
 * Recognised from the checkpoint's quantization config (config.json's
 * quantization_config, quantize_config.json, hf_quant_config.json) where
 * there is one, else from the headers alone: name suffixes, dtypes and the
 * shape relations between the parts.  Every parameter the config states is
 * checked against the shapes; a contradiction is refused, never guessed
 * around.  Knows nothing of FUSE or of how bytes are read: the decoders
 * (fs/decode.h) turn a layer's inputs into dense values.
 */
#ifndef ST_QUANT_H
#define ST_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "header.h"

enum st_qformat {
	ST_Q_FP8,    /* F8_E4M3 weight times a per-tensor, per-channel or block scale */
	ST_Q_GPTQ,   /* AutoGPTQ / GPTQModel qweight, qzeros, scales, g_idx */
	ST_Q_AWQ,    /* AutoAWQ version "gemm", 4 bits */
	ST_Q_CT_INT, /* compressed-tensors pack-quantized, 1..8 bits */
	ST_Q_NVFP4,  /* E2M1 values, E4M3 scales per 16, an F32 global scale */
	ST_Q_MXFP4,  /* E2M1 values, E8M0 scales per 32 (compressed-tensors, gpt-oss) */
	ST_Q_MXFP8,  /* E4M3 values, E8M0 scales per 32 */
	ST_Q_BNB4,   /* bitsandbytes NF4 / FP4 */
	ST_Q_BNB8,   /* bitsandbytes LLM.int8 */
	ST_Q_FORMAT_COUNT
};

/* What each input of a layer is; a format uses some of them. */
enum st_qrole {
	ST_QIN_VALUES,  /* the packed or low-precision values */
	ST_QIN_SCALE,   /* scales (absmax for bitsandbytes 4-bit, SCB for int8) */
	ST_QIN_ZERO,    /* packed zero points */
	ST_QIN_GIDX,    /* group of each input column */
	ST_QIN_GLOBAL,  /* NVFP4's F32 global scale (or ModelOpt's weight_scale_2) */
	ST_QIN_QMAP,    /* bitsandbytes: the 16-entry code table */
	ST_QIN_NESTED_ABSMAX, /* bitsandbytes double quantization */
	ST_QIN_NESTED_QMAP,
	ST_QIN_COUNT
};

/* Layer flags: the conventions a format's variants differ in. */
#define ST_QF_ZERO_PLUS_ONE  0x01u /* GPTQ v1: the stored zero is one less than the real one */
#define ST_QF_STREAM         0x02u /* compressed-tensors >= 0.17: one bit stream per row */
#define ST_QF_DIVIDE_GLOBAL  0x04u /* compressed-tensors NVFP4: scale / global (ModelOpt multiplies) */
#define ST_QF_INTERLEAVED    0x08u /* gpt-oss gate_up: even rows gate, odd rows up */
#define ST_QF_BNB_FP4        0x10u /* bitsandbytes FP4 rather than NF4 (the table is the file's) */
#define ST_QF_NESTED         0x20u /* bitsandbytes double quantization of absmax */

struct st_qinput {
	bool present;
	uint32_t shard, index; /* the tensor: headers[shard]->tensors[index] */
};

struct st_qlayer {
	char *name;              /* the dense tensor's name, e.g. "model.layers.0.mlp.down_proj.weight" */
	enum st_qformat format;
	uint32_t rank;           /* 2: [N, K]; 3: [E, N, K] */
	uint64_t shape[3];
	unsigned bits;           /* of each packed value */
	uint64_t group;          /* input columns per scale (K when one group; FP8 block columns) */
	uint64_t block_rows;     /* FP8 block scales: rows per block; 0 when not blocks */
	uint64_t blocksize;      /* bitsandbytes 4-bit: values per absmax */
	uint64_t nested_block;   /* bitsandbytes: absmax values per nested absmax */
	float nested_offset;
	unsigned flags;          /* ST_QF_* */
	struct st_qinput in[ST_QIN_COUNT];
	char desc[192];          /* user.safetensors.quantization, e.g. "gptq bits=4 group_size=128 ..." */
};

struct st_quant {
	struct st_qlayer *layers;
	size_t n_layers;
	/* Per shard, per tensor: 1 when the tensor is a part of some layer (hidden from the tree). */
	uint8_t **consumed;
	size_t n_shards;
};

/* What the options settle where neither the config nor the headers can, and how to read the
 * few small tensors whose bytes say what a header cannot (compressed-tensors' weight_shape). */
struct st_quant_hints {
	int gptq_v2;    /* -o gptq_format=: -1 not given, 0 "gptq" (v1), 1 "gptq_v2" */
	int ct_stream;  /* -o ct_packing=: -1 not given, 0 "word" (< 0.17), 1 "stream" (>= 0.17) */
	/* The first len bytes of tensor `index` of shard `shard`: 0 or a negative errno. */
	int (*read)(void *ctx, uint32_t shard, uint32_t index, void *buf, size_t len);
	void *ctx;
};

/*
 * Find the quantized layers of a set of shards that share one namespace.  `config` is the
 * text of the quantization config file (or NULL; `config_name` names it in errors).
 * 0 (no layers is no error), or -EINVAL / -ENOMEM with one line in err: a format this
 * mount refuses (by name), a config the shapes contradict, or a question only an option
 * settles (the line names the option).
 */
int st_quant_find(const struct st_header *const *headers, size_t n_shards, const char *config,
		  size_t config_len, const char *config_name, const struct st_quant_hints *hints,
		  struct st_quant *out, char err[ST_ERR_LEN]);
void st_quant_free(struct st_quant *q);

const char *st_qformat_name(enum st_qformat f);

#endif
