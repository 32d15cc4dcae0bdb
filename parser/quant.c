/*
 * Quantized layers from the quantization config and the headers (quant.h).
 *
 * A layer is found by the tensor that holds its values (`P.qweight`,
 * `P.weight_packed`, an F8 `P.weight`, `X_blocks`, ...) and the companions its
 * format needs beside it; the shapes of the parts then give every parameter
 * (bits, K, N, group size), and what the config says must agree with them.
 * The layouts and the reference code each follows are in
 * docs/QUANTIZATION.md; the decoders (fs/decode_*.c) cite the same code.
 */
#include "quant.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- The config ---- */

struct qconfig {
	char method[32];       /* quant_method, lower case; "" without a config */
	int bits;              /* 0: not said */
	long long group;       /* group_size; 0: not said, -1: one group */
	int desc_act;          /* -1: not said */
	int gptq_v2;           /* -1: not said */
	int ct_stream;         /* -1: not said */
	uint64_t block[2];     /* FP8 weight_block_size / block_structure; 0: not said */
	char ct_format[40];    /* compressed-tensors "format" */
	char awq_version[16];
	char ct_version[16];
};

static const char *str_at(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
		       ? json_object_get_string(v) : NULL;
}

static int int_at(json_object *o, const char *key, long long *out)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return 0;
	*out = json_object_get_int64(v);
	return 1;
}

static int bool_at(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
		return -1;
	return json_object_get_boolean(v);
}

static void copy_lower(char *dst, size_t cap, const char *s)
{
	size_t i = 0;

	for (; s && s[i] && i + 1 < cap; i++)
		dst[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]);
	dst[i] = '\0';
}

/* The object that describes the quantization: config.json's quantization_config (or a VLM's
 * text_config's, or the legacy compression_config), else the file itself (quantize_config.json,
 * hf_quant_config.json). */
static json_object *quant_object(json_object *root)
{
	json_object *q, *t;

	if (json_object_object_get_ex(root, "quantization_config", &q) && json_object_is_type(q, json_type_object))
		return q;
	if (json_object_object_get_ex(root, "compression_config", &q) && json_object_is_type(q, json_type_object))
		return q;
	if (json_object_object_get_ex(root, "text_config", &t) && json_object_is_type(t, json_type_object) &&
	    json_object_object_get_ex(t, "quantization_config", &q) && json_object_is_type(q, json_type_object))
		return q;
	if (json_object_object_get_ex(root, "model_type", &t) || json_object_object_get_ex(root, "architectures", &t))
		return NULL; /* a model's config.json without quantization */
	return root;
}

/* compressed-tensors: the first config group's weights, and the version that wrote it. */
static void read_ct(json_object *q, struct qconfig *c)
{
	json_object *groups, *w;
	long long v;

	copy_lower(c->ct_format, sizeof c->ct_format, str_at(q, "format"));
	copy_lower(c->ct_version, sizeof c->ct_version, str_at(q, "version"));
	if (c->ct_version[0]) {
		unsigned major = 0, minor = 0;
		if (sscanf(c->ct_version, "%u.%u", &major, &minor) == 2)
			c->ct_stream = major > 0 || minor >= 17;
	}
	if (!json_object_object_get_ex(q, "config_groups", &groups) || !json_object_is_type(groups, json_type_object))
		return;
	json_object_object_foreach(groups, key, g) {
		(void)key;
		if (!json_object_is_type(g, json_type_object) || !json_object_object_get_ex(g, "weights", &w) ||
		    !json_object_is_type(w, json_type_object))
			continue;
		if (int_at(w, "num_bits", &v))
			c->bits = (int)v;
		if (int_at(w, "group_size", &v))
			c->group = v;
		json_object *bs;
		if (json_object_object_get_ex(w, "block_structure", &bs) && json_object_is_type(bs, json_type_array) &&
		    json_object_array_length(bs) == 2) {
			c->block[0] = (uint64_t)json_object_get_int64(json_object_array_get_idx(bs, 0));
			c->block[1] = (uint64_t)json_object_get_int64(json_object_array_get_idx(bs, 1));
		}
		if (!c->ct_format[0])
			copy_lower(c->ct_format, sizeof c->ct_format, str_at(g, "format"));
		break;
	}
}

static void read_method(json_object *q, struct qconfig *c)
{
	json_object *prod, *quant, *bs;
	long long v;

	copy_lower(c->method, sizeof c->method, str_at(q, "quant_method"));
	if (!c->method[0] && json_object_object_get_ex(q, "producer", &prod) &&
	    json_object_object_get_ex(q, "quantization", &quant)) { /* hf_quant_config.json */
		snprintf(c->method, sizeof c->method, "modelopt");
		q = quant;
	}
	if (!c->method[0] && (int_at(q, "bits", &v) || json_object_object_get_ex(q, "w_bit", NULL)))
		snprintf(c->method, sizeof c->method, "%s",
			 json_object_object_get_ex(q, "w_bit", NULL) ? "awq" : "gptq"); /* quantize_config.json */
	if (int_at(q, "bits", &v) || int_at(q, "w_bit", &v))
		c->bits = (int)v;
	if (int_at(q, "group_size", &v) || int_at(q, "q_group_size", &v))
		c->group = v;
	c->desc_act = bool_at(q, "desc_act");
	const char *ck = str_at(q, "checkpoint_format");
	if (ck)
		c->gptq_v2 = strcmp(ck, "gptq_v2") == 0;
	copy_lower(c->awq_version, sizeof c->awq_version, str_at(q, "version"));
	if (json_object_object_get_ex(q, "weight_block_size", &bs) && json_object_is_type(bs, json_type_array) &&
	    json_object_array_length(bs) == 2) {
		c->block[0] = (uint64_t)json_object_get_int64(json_object_array_get_idx(bs, 0));
		c->block[1] = (uint64_t)json_object_get_int64(json_object_array_get_idx(bs, 1));
	}
	if (strcmp(c->method, "compressed-tensors") == 0)
		read_ct(q, c);
}

/* Formats that are refused by name: each is a layout made for one kernel or one library. */
static int refuse_config(json_object *q, const struct qconfig *c, const char *cname, char *err)
{
	static const char *const methods[] = {"hqq", "aqlm", "eetq", "exl2", "torchao", "quanto", "higgs",
					      "vptq", "spqr", "bitnet", "fbgemm_fp8_rowwise"};
	const char *ck = str_at(q, "checkpoint_format");
	const char *why = NULL;

	for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
		if (strcmp(c->method, methods[i]) == 0)
			why = c->method;
	if (ck && strcmp(ck, "marlin") == 0)
		why = "GPTQ checkpoint_format marlin (tiles permuted for the Marlin kernel)";
	if (bool_at(q, "is_marlin_format") == 1)
		why = "GPTQ is_marlin_format (tiles permuted for the Marlin kernel)";
	if (strcmp(c->method, "awq") == 0 && c->awq_version[0] && strcmp(c->awq_version, "gemm") != 0)
		why = "AWQ versions other than gemm (gemv, gemv_fast, marlin, exllama are laid out for their kernels)";
	if (strstr(c->ct_format, "sparse") || strstr(c->ct_format, "marlin"))
		why = "compressed-tensors sparse and marlin-24 formats";
	const char *status = str_at(q, "quantization_status");
	if (strcmp(c->method, "compressed-tensors") == 0 && status && strcmp(status, "compressed") != 0)
		why = "compressed-tensors quantization_status other than compressed";
	if (!why)
		return 0;
	snprintf(err, ST_ERR_LEN, "%s: %s is not supported by -o dequantize", cname, why);
	return -EINVAL;
}

static int read_config(const char *text, size_t len, const char *cname, struct qconfig *c, char *err)
{
	json_tokener *tok;
	json_object *root, *q;
	int rc = 0;

	memset(c, 0, sizeof *c);
	c->desc_act = c->gptq_v2 = c->ct_stream = -1;
	if (!text)
		return 0;
	if (len > (1u << 24) || !(tok = json_tokener_new()))
		return len > (1u << 24) ? (snprintf(err, ST_ERR_LEN, "%s: larger than 16 MiB", cname), -EINVAL) : -ENOMEM;
	root = json_tokener_parse_ex(tok, text, (int)len);
	size_t end = root ? json_tokener_get_parse_end(tok) : 0;
	while (end < len && (text[end] == ' ' || text[end] == '\t' || text[end] == '\r' || text[end] == '\n'))
		end++;
	if (!root || json_tokener_get_error(tok) != json_tokener_success || end != len ||
	    !json_object_is_type(root, json_type_object)) {
		snprintf(err, ST_ERR_LEN, "%s: not a JSON object", cname);
		rc = -EINVAL;
	} else if ((q = quant_object(root))) {
		read_method(q, c);
		rc = refuse_config(q, c, cname, err);
	}
	json_object_put(root);
	json_tokener_free(tok);
	return rc;
}

/* ---- The tensors, by name ---- */

struct ref {
	const struct st_header *h;
	const struct st_tensor *t;
	uint32_t shard, index;
};

struct names {
	const struct st_header *const *headers;
	size_t n_shards;
	uint64_t *slots; /* shard << 32 | index, + 1; 0: empty */
	size_t n_slots;
};

static uint64_t hash_name(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
	return h ^ (h >> 31);
}

static struct ref ref_of(const struct names *m, uint64_t slot)
{
	uint32_t shard = (uint32_t)((slot - 1) >> 32), index = (uint32_t)(slot - 1);
	const struct st_header *h = m->headers[shard];

	return (struct ref){h, &h->tensors[index], shard, index};
}

static int names_build(struct names *m, const struct st_header *const *headers, size_t n_shards)
{
	size_t total = 0;

	m->headers = headers;
	m->n_shards = n_shards;
	for (size_t s = 0; s < n_shards; s++)
		total += headers[s]->n_tensors;
	for (m->n_slots = 16; m->n_slots < 2 * total; m->n_slots *= 2)
		;
	if (!(m->slots = calloc(m->n_slots, sizeof *m->slots)))
		return -ENOMEM;
	for (size_t s = 0; s < n_shards; s++)
		for (size_t i = 0; i < headers[s]->n_tensors; i++) {
			const struct st_tensor *t = &headers[s]->tensors[i];
			size_t at = hash_name(st_tensor_name(headers[s], t), t->name_len) & (m->n_slots - 1);
			while (m->slots[at])
				at = (at + 1) & (m->n_slots - 1);
			m->slots[at] = ((uint64_t)s << 32 | i) + 1;
		}
	return 0;
}

/* The tensor called prefix + suffix, or false. */
static bool lookup(const struct names *m, const char *prefix, size_t plen, const char *suffix, struct ref *out)
{
	char name[1024];
	size_t slen = strlen(suffix);

	if (plen + slen > sizeof name)
		return false;
	memcpy(name, prefix, plen);
	memcpy(name + plen, suffix, slen);
	for (size_t at = hash_name(name, plen + slen) & (m->n_slots - 1); m->slots[at]; at = (at + 1) & (m->n_slots - 1)) {
		struct ref r = ref_of(m, m->slots[at]);
		if (r.t->name_len == plen + slen && memcmp(st_tensor_name(r.h, r.t), name, plen + slen) == 0) {
			*out = r;
			return true;
		}
	}
	return false;
}

static inline uint64_t dim(const struct ref *r, uint32_t i)
{
	return r->h->dims[r->t->dims + i];
}

static uint64_t numel(const struct ref *r)
{
	uint64_t n = 1;

	for (uint32_t i = 0; i < r->t->rank; i++)
		n *= dim(r, i); /* the parser checked the product fits the file */
	return n;
}

static inline uint64_t ceil_div(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

/* ---- Finding layers ---- */

struct find {
	struct names m;
	const struct qconfig *c;
	const struct st_quant_hints *hints;
	const char *cname;
	struct st_quant *out;
	char *err;
};

static int fail(struct find *f, const char *prefix, size_t plen, const char *fmt, const char *what)
{
	char q[160];

	st_quote(q, sizeof q, prefix, plen);
	snprintf(f->err, ST_ERR_LEN, "quantized layer %s: %s%s", q, fmt, what ? what : "");
	return -EINVAL;
}

static void consume(struct find *f, const struct ref *r)
{
	f->out->consumed[r->shard][r->index] = 1;
}


static void set_input(struct find *f, struct st_qlayer *l, enum st_qrole role, const struct ref *r)
{
	l->in[role] = (struct st_qinput){true, r->shard, r->index};
	consume(f, r);
}

static bool is_float(const struct ref *r)
{
	return r->t->dtype == ST_F16 || r->t->dtype == ST_BF16 || r->t->dtype == ST_F32;
}

/* The family a config's quant_method names; -1 for none. */
static bool method_allows(const struct qconfig *c, enum st_qformat fmt)
{
	const char *m = c->method;

	if (!m[0])
		return true;
	switch (fmt) {
	case ST_Q_GPTQ: return !strcmp(m, "gptq") || !strcmp(m, "auto-round");
	case ST_Q_AWQ: return !strcmp(m, "awq");
	case ST_Q_CT_INT: case ST_Q_MXFP8: return !strcmp(m, "compressed-tensors");
	case ST_Q_FP8: return !strcmp(m, "fp8") || !strcmp(m, "fbgemm_fp8") || !strcmp(m, "modelopt") ||
			      !strcmp(m, "compressed-tensors");
	case ST_Q_NVFP4: return !strcmp(m, "modelopt") || !strcmp(m, "compressed-tensors");
	case ST_Q_MXFP4: return !strcmp(m, "mxfp4") || !strcmp(m, "compressed-tensors");
	case ST_Q_BNB4: case ST_Q_BNB8: return !strcmp(m, "bitsandbytes");
	default: return false;
	}
}

static int wrong_method(struct find *f, const char *prefix, size_t plen, enum st_qformat format)
{
	static const char *const looks[ST_Q_FORMAT_COUNT] = {
		[ST_Q_FP8] = "an FP8 or INT8 layer", [ST_Q_GPTQ] = "a GPTQ layer", [ST_Q_AWQ] = "an AWQ layer",
		[ST_Q_CT_INT] = "a compressed-tensors pack-quantized layer", [ST_Q_NVFP4] = "an NVFP4 layer",
		[ST_Q_MXFP4] = "an MXFP4 layer", [ST_Q_MXFP8] = "an MXFP8 layer",
		[ST_Q_BNB4] = "a bitsandbytes 4-bit layer", [ST_Q_BNB8] = "a bitsandbytes int8 layer"};
	char what[512];

	snprintf(what, sizeof what, "%s, where %.150s says quant_method \"%s\"", looks[format], f->cname,
		 f->c->method);
	return fail(f, prefix, plen, what, NULL);
}

/* A new layer of FORMAT called prefix + dense (e.g. "weight"), or NULL with *rc: -EINVAL with
 * the line when the config names another method, -ENOMEM. */
static struct st_qlayer *add_layer(struct find *f, const char *prefix, size_t plen, const char *dense,
				   enum st_qformat format, int *rc)
{
	struct st_quant *q = f->out;
	size_t dlen = strlen(dense);
	struct st_qlayer *l, *grown;

	if (!method_allows(f->c, format)) {
		*rc = wrong_method(f, prefix, plen, format);
		return NULL;
	}
	*rc = -ENOMEM;
	if (!(grown = realloc(q->layers, (q->n_layers + 1) * sizeof *q->layers)))
		return NULL;
	q->layers = grown;
	l = memset(&q->layers[q->n_layers], 0, sizeof *l);
	if (!(l->name = malloc(plen + dlen + 1)))
		return NULL;
	memcpy(l->name, prefix, plen);
	memcpy(l->name + plen, dense, dlen + 1);
	l->format = format;
	q->n_layers++;
	return l;
}

/* ---- GPTQ and AWQ: P.qweight, P.qzeros, P.scales [, P.g_idx] ---- */

static unsigned pack_bits(const struct ref *r)
{
	switch (r->t->dtype) {
	case ST_I32: return 32;
	case ST_I64: return 64;
	case ST_I16: return 16;
	case ST_I8: return 8;
	default: return 0;
	}
}

/* GPTQ's bits, from the zero points' width (and K's, where g_idx gives K): 0 if none fits. */
static unsigned gptq_bits(const struct ref *qw, const struct ref *qz, uint64_t n, uint64_t k, unsigned pb)
{
	static const unsigned choices[] = {2, 3, 4, 8};
	unsigned found = 0;

	for (size_t i = 0; i < 4; i++) {
		unsigned b = choices[i];
		if ((n * b) % pb || dim(qz, 1) != n * b / pb)
			continue;
		if (k ? dim(qw, 0) * pb != k * b : (dim(qw, 0) * pb) % b)
			continue;
		found = b;
	}
	return found;
}

/* The group size: the config's (-1: one group) checked against the scales' rows, else those rows'. */
static int group_of(struct find *f, const char *p, size_t pl, uint64_t k, uint64_t groups, uint64_t *g)
{
	long long cg = f->c->group;

	*g = cg > 0 ? (uint64_t)cg : cg < 0 ? k : ceil_div(k, groups ? groups : 1);
	if (!*g || ceil_div(k, *g) != groups)
		return fail(f, p, pl, "the scales' groups do not match group_size", NULL);
	return 0;
}

static int try_gptq(struct find *f, const char *p, size_t pl, const struct ref *qw, const struct ref *qz,
		    const struct ref *sc)
{
	struct ref gi;
	bool has_g = lookup(&f->m, p, pl, "g_idx", &gi);
	unsigned pb = pack_bits(qw), bits;
	uint64_t n = dim(qw, 1), k = 0, g;
	int v2 = f->c->method[0] ? (f->c->gptq_v2 > 0) : f->hints->gptq_v2;

	if (has_g && (gi.t->dtype != ST_I32 || gi.t->rank != 1))
		return fail(f, p, pl, "g_idx is not a 1-D I32 tensor", NULL);
	k = has_g ? dim(&gi, 0) : 0;
	if (!(bits = gptq_bits(qw, qz, n, k, pb)) || (f->c->bits && (unsigned)f->c->bits != bits))
		return fail(f, p, pl, bits ? "the config's bits do not match the shapes of qweight and qzeros"
					   : "qweight, qzeros and g_idx fit no GPTQ bit width (2, 3, 4, 8)", NULL);
	if (!k)
		k = dim(qw, 0) * pb / bits;
	if (group_of(f, p, pl, k, dim(sc, 0), &g) < 0)
		return -EINVAL;
	if (f->hints->gptq_v2 >= 0)
		v2 = f->hints->gptq_v2;
	if (v2 < 0)
		return fail(f, p, pl, "GPTQ zero points are stored as in v1 (gptq) or v2 (gptq_v2), and no config says "
				      "which: mount with -o gptq_format=gptq or -o gptq_format=gptq_v2", NULL);
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_GPTQ, &rc);
	if (!l)
		return rc;
	l->rank = 2;
	l->shape[0] = n;
	l->shape[1] = k;
	l->bits = bits;
	l->group = g;
	l->flags = v2 ? 0 : ST_QF_ZERO_PLUS_ONE;
	set_input(f, l, ST_QIN_VALUES, qw);
	set_input(f, l, ST_QIN_ZERO, qz);
	set_input(f, l, ST_QIN_SCALE, sc);
	if (has_g)
		set_input(f, l, ST_QIN_GIDX, &gi);
	snprintf(l->desc, sizeof l->desc, "gptq bits=%u group_size=%lld desc_act=%s checkpoint_format=%s",
		 bits, g == k && f->c->group < 0 ? -1LL : (long long)g,
		 f->c->desc_act < 0 ? (has_g ? "unknown" : "false") : f->c->desc_act ? "true" : "false",
		 v2 ? "gptq_v2" : "gptq");
	return 1;
}

static int try_awq(struct find *f, const char *p, size_t pl, const struct ref *qw, const struct ref *qz,
		   const struct ref *sc)
{
	uint64_t k = dim(qw, 0), n = dim(sc, 1), g;

	if (qw->t->dtype != ST_I32 || qz->t->dtype != ST_I32 || dim(qz, 1) * 8 != n || dim(qz, 0) != dim(sc, 0))
		return fail(f, p, pl, "qweight, qzeros and scales do not fit AWQ gemm's 4-bit layout", NULL);
	if (f->c->bits && f->c->bits != 4)
		return fail(f, p, pl, "AWQ gemm packs 4 bits only, and the config says otherwise", NULL);
	if (group_of(f, p, pl, k, dim(sc, 0), &g) < 0)
		return -EINVAL;
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_AWQ, &rc);
	if (!l)
		return rc;
	l->rank = 2;
	l->shape[0] = n;
	l->shape[1] = k;
	l->bits = 4;
	l->group = g;
	set_input(f, l, ST_QIN_VALUES, qw);
	set_input(f, l, ST_QIN_ZERO, qz);
	set_input(f, l, ST_QIN_SCALE, sc);
	snprintf(l->desc, sizeof l->desc, "awq bits=4 group_size=%lld version=gemm",
		 g == k && f->c->group < 0 ? -1LL : (long long)g);
	return 1;
}

static int find_qweight(struct find *f, const char *p, size_t pl, const struct ref *qw)
{
	struct ref qz, sc, gi;

	if (!lookup(&f->m, p, pl, "qzeros", &qz) || !lookup(&f->m, p, pl, "scales", &sc))
		return 0;
	if (qw->t->rank != 2 || qz.t->rank != 2 || sc.t->rank != 2 || !pack_bits(qw) || !is_float(&sc) ||
	    qz.t->dtype != qw->t->dtype)
		return fail(f, p, pl, "qweight, qzeros and scales are not 2-D integer, integer and float tensors", NULL);
	bool gptq = lookup(&f->m, p, pl, "g_idx", &gi) || dim(qw, 1) == dim(&sc, 1);
	if (!strcmp(f->c->method, "awq") || !strcmp(f->c->method, "gptq") || !strcmp(f->c->method, "auto-round"))
		gptq = strcmp(f->c->method, "awq") != 0;
	if (!method_allows(f->c, gptq ? ST_Q_GPTQ : ST_Q_AWQ))
		return wrong_method(f, p, pl, gptq ? ST_Q_GPTQ : ST_Q_AWQ);
	if (gptq && dim(qw, 1) != dim(&sc, 1))
		return fail(f, p, pl, "qweight and scales differ in out_features", NULL);
	return gptq ? try_gptq(f, p, pl, qw, &qz, &sc) : try_awq(f, p, pl, qw, &qz, &sc);
}

/* ---- compressed-tensors: P.weight_packed with P.weight_shape, or the FP4 forms ---- */

/* Packed words per row of k values of b bits: one bit stream, or whole values per word. */
static uint64_t ct_width(uint64_t k, unsigned b, bool stream)
{
	return stream ? ceil_div(k * b, 32) : ceil_div(k, 32 / b);
}

/* Leading expert dimension: 2-D tensors have E = 1.  Checks `r` has rank 2 + (e > 1 or 3-D). */
static bool rows_cols(const struct ref *r, uint32_t rank, uint64_t e, uint64_t *rows, uint64_t *cols)
{
	if (r->t->rank != rank || (rank == 3 && dim(r, 0) != e))
		return false;
	*rows = dim(r, rank - 2);
	*cols = dim(r, rank - 1);
	return true;
}

/* The bits and packing generation a packed width allows; -EINVAL when it takes an option. */
static int ct_bits(struct find *f, const char *p, size_t pl, uint64_t k, uint64_t w, unsigned *bits, bool *stream)
{
	int want = f->hints->ct_stream >= 0 ? f->hints->ct_stream : f->c->ct_stream;
	unsigned nb = 0;
	int ngen = 0;

	for (unsigned b = 1; b <= 8; b++) {
		if (f->c->bits && (unsigned)f->c->bits != b)
			continue;
		bool s_fit = ct_width(k, b, true) == w, w_fit = ct_width(k, b, false) == w;
		if (want >= 0 ? (want ? s_fit : w_fit) : (s_fit || w_fit)) {
			nb++;
			*bits = b;
			*stream = want >= 0 ? want : s_fit;
			ngen = want >= 0 || !(s_fit && w_fit) || (32 % b == 0) ? 1 : 2;
		}
	}
	if (nb != 1)
		return fail(f, p, pl, nb ? "weight_packed's width fits several bit widths and no config says which"
					 : "weight_packed's width fits no bit width of its weight_shape", NULL);
	if (ngen == 2)
		return fail(f, p, pl, "the packing generation (per word before compressed-tensors 0.17, one stream "
				      "from 0.17) is not in the config: mount with -o ct_packing=word or stream", NULL);
	return 0;
}

static int read_shape(struct find *f, const struct ref *ws, uint64_t *e, uint64_t *n, uint64_t *k)
{
	int64_t v[3] = {1, 0, 0};
	uint64_t len = numel(ws);

	if (ws->t->dtype != ST_I64 || ws->t->rank != 1 || (len != 2 && len != 3) || !f->hints->read)
		return -EINVAL;
	if (f->hints->read(f->hints->ctx, ws->shard, ws->index, v + (3 - len), len * 8) < 0)
		return -EIO;
	for (int i = 0; i < 3; i++)
		if (v[i] <= 0 || v[i] > (int64_t)1 << 40)
			return -EINVAL;
	*e = (uint64_t)v[0];
	*n = (uint64_t)v[1];
	*k = (uint64_t)v[2];
	return (int)len;
}

static void dense_shape(struct st_qlayer *l, uint32_t rank, uint64_t e, uint64_t n, uint64_t k)
{
	l->rank = rank;
	if (rank == 3) {
		l->shape[0] = e;
		l->shape[1] = n;
		l->shape[2] = k;
	} else {
		l->shape[0] = n;
		l->shape[1] = k;
	}
}

/* The scale's groups per row: [.., N, groups], or one element for the whole tensor. */
static int scale_groups(const struct ref *sc, uint32_t rank, uint64_t e, uint64_t n, uint64_t *groups)
{
	uint64_t rows;

	if (numel(sc) == 1) {
		*groups = 1;
		return 0;
	}
	return rows_cols(sc, rank, e, &rows, groups) && rows == n ? 0 : -1;
}

static int try_ct_int(struct find *f, const char *p, size_t pl, const struct ref *wp, const struct ref *ws)
{
	struct ref sc, zp, gi;
	uint64_t e, n, k, rows, w, groups, g;
	unsigned bits = 0;
	bool stream = false, has_z, has_g;
	int rank = read_shape(f, ws, &e, &n, &k);

	if (rank == -EIO)
		return fail(f, p, pl, "weight_shape could not be read", NULL);
	if (rank < 0 || !rows_cols(wp, (uint32_t)rank, e, &rows, &w) || rows != n || wp->t->dtype != ST_I32)
		return fail(f, p, pl, "weight_shape does not fit weight_packed", NULL);
	if (!lookup(&f->m, p, pl, "weight_scale", &sc) || !is_float(&sc) || scale_groups(&sc, (uint32_t)rank, e, n, &groups))
		return fail(f, p, pl, "weight_scale is missing or does not fit weight_shape", NULL);
	if (ct_bits(f, p, pl, k, w, &bits, &stream) < 0)
		return -EINVAL;
	has_g = lookup(&f->m, p, pl, "weight_g_idx", &gi);
	if (has_g && (gi.t->dtype != ST_I32 || gi.t->rank != 1 || dim(&gi, 0) != k))
		return fail(f, p, pl, "weight_g_idx is not an I32 tensor of in_features entries", NULL);
	if (group_of(f, p, pl, k, groups, &g) < 0 && !(numel(&sc) == 1 || groups == 1))
		return -EINVAL;
	if (groups == 1)
		g = k;
	has_z = lookup(&f->m, p, pl, "weight_zero_point", &zp);
	uint64_t zr, zc;
	if (has_z && (zp.t->dtype != ST_I32 || !rows_cols(&zp, (uint32_t)rank, e, &zr, &zc) || zc != groups ||
		      zr != ct_width(n, bits, stream)))
		return fail(f, p, pl, "weight_zero_point does not fit the scales and the packing", NULL);
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_CT_INT, &rc);
	if (!l)
		return rc;
	dense_shape(l, (uint32_t)rank, e, n, k);
	l->bits = bits;
	l->group = g;
	l->flags = stream ? ST_QF_STREAM : 0;
	set_input(f, l, ST_QIN_VALUES, wp);
	set_input(f, l, ST_QIN_SCALE, &sc);
	consume(f, ws);
	if (has_z)
		set_input(f, l, ST_QIN_ZERO, &zp);
	if (has_g)
		set_input(f, l, ST_QIN_GIDX, &gi);
	snprintf(l->desc, sizeof l->desc,
		 "compressed-tensors pack-quantized bits=%u strategy=%s group_size=%llu symmetric=%s packing=%s%s",
		 bits, numel(&sc) == 1 ? "tensor" : groups == 1 ? "channel" : "group", (unsigned long long)g,
		 has_z ? "false" : "true", stream ? "stream" : "word", has_g ? " actorder=group" : "");
	return 1;
}

/* E2M1 values two per byte, rows of K/2 bytes, with per-group scales: NVFP4 (E4M3 scales over 16, a
 * global scale) or MXFP4 (E8M0 scales over 32).  `scale2` is ModelOpt's weight_scale_2. */
static int try_fp4(struct find *f, const char *p, size_t pl, const struct ref *wp, const char *global_name,
		   const char *dense, const char *producer)
{
	struct ref sc, gl;
	uint64_t e = wp->t->rank == 3 ? dim(wp, 0) : 1, n, half, sn, sg;
	uint32_t rank = wp->t->rank;
	bool nv = lookup(&f->m, p, pl, global_name, &gl);
	uint64_t group = nv ? 16 : 32;

	if (wp->t->dtype != ST_U8 || (rank != 2 && rank != 3) || !rows_cols(wp, rank, e, &n, &half) ||
	    !lookup(&f->m, p, pl, "weight_scale", &sc) || !rows_cols(&sc, rank, e, &sn, &sg) || sn != n ||
	    sg != ceil_div(2 * half, group))
		return fail(f, p, pl, "the packed FP4 values and their weight_scale do not fit", NULL);
	if (nv ? sc.t->dtype != ST_F8_E4M3 || gl.t->dtype != ST_F32 || numel(&gl) != 1
	       : sc.t->dtype != ST_U8 && sc.t->dtype != ST_F8_E8M0)
		return fail(f, p, pl, nv ? "NVFP4 scales must be F8_E4M3 with one F32 global scale"
					 : "MXFP4 scales must be U8 or F8_E8M0 (E8M0)", NULL);
	enum st_qformat fmt = nv ? ST_Q_NVFP4 : ST_Q_MXFP4;
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, dense, fmt, &rc);
	if (!l)
		return rc;
	dense_shape(l, rank, e, n, 2 * half);
	l->bits = 4;
	l->group = group;
	set_input(f, l, ST_QIN_VALUES, wp);
	set_input(f, l, ST_QIN_SCALE, &sc);
	if (nv) {
		set_input(f, l, ST_QIN_GLOBAL, &gl);
		l->flags = strcmp(global_name, "weight_global_scale") == 0 ? ST_QF_DIVIDE_GLOBAL : 0;
	}
	snprintf(l->desc, sizeof l->desc, "%s %s group_size=%llu", producer,
		 nv ? (l->flags ? "nvfp4-pack-quantized" : "nvfp4") : "mxfp4-pack-quantized",
		 (unsigned long long)group);
	return 1;
}

static int find_weight_packed(struct find *f, const char *p, size_t pl, const struct ref *wp)
{
	struct ref ws;

	if (lookup(&f->m, p, pl, "weight_shape", &ws)) {
		if (!method_allows(f->c, ST_Q_CT_INT))
			return wrong_method(f, p, pl, ST_Q_CT_INT);
		return try_ct_int(f, p, pl, wp, &ws);
	}
	return try_fp4(f, p, pl, wp, "weight_global_scale", "weight", "compressed-tensors");
}

/* ---- P.weight beside its scales: FP8, MXFP8, INT8, ModelOpt NVFP4, bitsandbytes int8 ---- */

/* FP8 and INT8 weight scales: one for the tensor, one per row, or one per block. */
static int try_scaled(struct find *f, const char *p, size_t pl, const struct ref *w, const struct ref *sc, bool inv)
{
	uint64_t n = dim(w, 0), k = dim(w, 1), bh = f->c->block[0] ? f->c->block[0] : 128;
	uint64_t bw = f->c->block[1] ? f->c->block[1] : 128;
	struct ref zp;
	const char *kind;

	if (!is_float(sc))
		return fail(f, p, pl, "the weight's scale is not an F32, BF16 or F16 tensor", NULL);
	if (numel(sc) == 1 && !inv) {
		kind = "tensor", bh = 0;
	} else if (!inv && numel(sc) == n && (sc->t->rank == 1 || (sc->t->rank == 2 && dim(sc, 1) == 1))) {
		kind = "channel", bh = 0;
	} else if (sc->t->rank == 2 && dim(sc, 0) == ceil_div(n, bh) && dim(sc, 1) == ceil_div(k, bw)) {
		kind = "block";
	} else {
		return fail(f, p, pl, "the weight's scale is neither per tensor, per row nor per block of the "
				      "config's weight_block_size (128x128 without one)", NULL);
	}
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_FP8, &rc);
	if (!l)
		return rc;
	dense_shape(l, 2, 1, n, k);
	l->bits = 8;
	l->block_rows = bh;
	l->group = bh ? bw : k;
	set_input(f, l, ST_QIN_VALUES, w);
	set_input(f, l, ST_QIN_SCALE, sc);
	if (w->t->dtype == ST_I8 && lookup(&f->m, p, pl, "weight_zero_point", &zp) && numel(&zp) == numel(sc) &&
	    zp.t->dtype == ST_I8)
		set_input(f, l, ST_QIN_ZERO, &zp);
	if (bh)
		snprintf(l->desc, sizeof l->desc, "%s scale=block block=%llux%llu%s",
			 w->t->dtype == ST_I8 ? "int8" : "fp8 e4m3", (unsigned long long)bh, (unsigned long long)bw,
			 inv ? " (weight_scale_inv, multiplied)" : "");
	else
		snprintf(l->desc, sizeof l->desc, "%s scale=%s%s", w->t->dtype == ST_I8 ? "int8" : "fp8 e4m3", kind,
			 l->in[ST_QIN_ZERO].present ? " asymmetric" : "");
	return 1;
}

static int try_mxfp8(struct find *f, const char *p, size_t pl, const struct ref *w, const struct ref *sc)
{
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_MXFP8, &rc);
	if (!l)
		return rc;
	dense_shape(l, 2, 1, dim(w, 0), dim(w, 1));
	l->bits = 8;
	l->group = 32;
	set_input(f, l, ST_QIN_VALUES, w);
	set_input(f, l, ST_QIN_SCALE, sc);
	snprintf(l->desc, sizeof l->desc, "compressed-tensors mxfp8-quantized group_size=32");
	return 1;
}

static int try_bnb8(struct find *f, const char *p, size_t pl, const struct ref *w, const struct ref *scb)
{
	struct ref wf;

	if (scb->t->dtype != ST_F32 || numel(scb) != dim(w, 0))
		return fail(f, p, pl, "SCB is not one F32 per row of the int8 weight", NULL);
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_BNB8, &rc);
	if (!l)
		return rc;
	dense_shape(l, 2, 1, dim(w, 0), dim(w, 1));
	l->bits = 8;
	l->group = dim(w, 1);
	set_input(f, l, ST_QIN_VALUES, w);
	set_input(f, l, ST_QIN_SCALE, scb);
	if (lookup(&f->m, p, pl, "weight_format", &wf))
		consume(f, &wf);
	snprintf(l->desc, sizeof l->desc, "bitsandbytes int8 (LLM.int8, row scales SCB)");
	return 1;
}

/* ---- bitsandbytes 4-bit: P.weight, P.weight.absmax, .quant_map, .quant_state.bitsandbytes__nf4 ---- */

/* The quant state's JSON (bitsandbytes QuantState.as_dict(packed=True)): shape, blocksize, nesting. */
static int bnb_state(struct find *f, const struct ref *qs, struct st_qlayer *l, bool *fp4)
{
	uint64_t len = numel(qs);
	char *text;
	int rc = -EINVAL;

	if (qs->t->dtype != ST_U8 || len == 0 || len > 65536 || !f->hints->read || !(text = malloc(len + 1)))
		return -EINVAL;
	json_object *o = NULL, *shape, *v;
	if (f->hints->read(f->hints->ctx, qs->shard, qs->index, text, len) == 0) {
		text[len] = '\0';
		o = strlen(text) == len ? json_tokener_parse(text) : NULL;
	}
	free(text);
	const char *type = o ? str_at(o, "quant_type") : NULL;
	long long bs = 0, nb = 0;
	if (type && (!strcmp(type, "nf4") || !strcmp(type, "fp4")) && int_at(o, "blocksize", &bs) && bs > 0 &&
	    json_object_object_get_ex(o, "shape", &shape) && json_object_is_type(shape, json_type_array) &&
	    json_object_array_length(shape) == 2) {
		*fp4 = !strcmp(type, "fp4");
		l->rank = 2;
		l->blocksize = (uint64_t)bs;
		rc = 0;
		for (int i = 0; i < 2; i++) {
			json_object *d = json_object_array_get_idx(shape, (size_t)i);
			long long x = json_object_is_type(d, json_type_int) ? json_object_get_int64(d) : 0;
			if (x <= 0 || x > (1LL << 40))
				rc = -EINVAL;
			l->shape[i] = (uint64_t)x;
		}
		if (int_at(o, "nested_blocksize", &nb)) {
			l->nested_block = nb > 0 ? (uint64_t)nb : 0;
			rc = nb > 0 ? rc : -EINVAL;
			if (json_object_object_get_ex(o, "nested_offset", &v) &&
			    (json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
				l->nested_offset = (float)json_object_get_double(v);
			else
				rc = -EINVAL;
		}
	}
	json_object_put(o);
	return rc;
}

static int try_bnb4(struct find *f, const char *p, size_t pl, const struct ref *w, const struct ref *am)
{
	struct ref qm, qs, na, nq;
	bool fp4 = false;

	if (!lookup(&f->m, p, pl, "weight.quant_map", &qm) ||
	    !(lookup(&f->m, p, pl, "weight.quant_state.bitsandbytes__nf4", &qs) ||
	      lookup(&f->m, p, pl, "weight.quant_state.bitsandbytes__fp4", &qs)))
		return fail(f, p, pl, "bitsandbytes 4-bit needs weight.quant_map and weight.quant_state", NULL);
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "weight", ST_Q_BNB4, &rc);
	if (!l)
		return rc;
	if (bnb_state(f, &qs, l, &fp4) < 0)
		return fail(f, p, pl, "weight.quant_state is not the JSON bitsandbytes writes", NULL);
	bool nested = l->nested_block != 0;
	uint64_t n = l->shape[0] * l->shape[1], blocks = ceil_div(n, l->blocksize);
	if (qm.t->dtype != ST_F32 || numel(&qm) != 16 || numel(am) != blocks ||
	    am->t->dtype != (nested ? ST_U8 : ST_F32) || st_tensor_nbytes(w->t) < ceil_div(n, 2))
		return fail(f, p, pl, "the weight, absmax and quant_map do not fit the quant state's shape", NULL);
	if (nested && (!lookup(&f->m, p, pl, "weight.nested_absmax", &na) ||
		       !lookup(&f->m, p, pl, "weight.nested_quant_map", &nq) || na.t->dtype != ST_F32 ||
		       nq.t->dtype != ST_F32 || numel(&nq) != 256 || numel(&na) != ceil_div(blocks, l->nested_block)))
		return fail(f, p, pl, "double quantization needs weight.nested_absmax and nested_quant_map to fit", NULL);
	l->bits = 4;
	l->group = l->blocksize;
	l->flags = (fp4 ? ST_QF_BNB_FP4 : 0) | (nested ? ST_QF_NESTED : 0);
	set_input(f, l, ST_QIN_VALUES, w);
	set_input(f, l, ST_QIN_SCALE, am);
	set_input(f, l, ST_QIN_QMAP, &qm);
	consume(f, &qs);
	if (nested) {
		set_input(f, l, ST_QIN_NESTED_ABSMAX, &na);
		set_input(f, l, ST_QIN_NESTED_QMAP, &nq);
	}
	snprintf(l->desc, sizeof l->desc, "bitsandbytes %s blocksize=%llu double_quant=%s", fp4 ? "fp4" : "nf4",
		 (unsigned long long)l->blocksize, nested ? "true" : "false");
	return 1;
}

static int find_weight(struct find *f, const char *p, size_t pl, const struct ref *w)
{
	struct ref sc, x;
	bool has_sc = lookup(&f->m, p, pl, "weight_scale", &sc);
	enum st_dtype d = (enum st_dtype)w->t->dtype;

	if (lookup(&f->m, p, pl, "weight.absmax", &x))
		return try_bnb4(f, p, pl, w, &x);
	if (w->t->rank != 2)
		return 0;
	if (d == ST_F8_E4M3 && lookup(&f->m, p, pl, "weight_scale_inv", &x))
		return try_scaled(f, p, pl, w, &x, true);
	if (d == ST_F8_E4M3 && has_sc && (sc.t->dtype == ST_U8 || sc.t->dtype == ST_F8_E8M0)) {
		uint64_t r, c;
		if (!rows_cols(&sc, 2, 1, &r, &c) || r != dim(w, 0) || c != ceil_div(dim(w, 1), 32))
			return fail(f, p, pl, "MXFP8 weight_scale is not one E8M0 per 32 values of each row", NULL);
		return try_mxfp8(f, p, pl, w, &sc);
	}
	if ((d == ST_F8_E4M3 || d == ST_I8) && has_sc)
		return try_scaled(f, p, pl, w, &sc, false);
	if (d == ST_U8 && has_sc && lookup(&f->m, p, pl, "weight_scale_2", &x))
		return try_fp4(f, p, pl, w, "weight_scale_2", "weight", "modelopt");
	if (d == ST_I8 && lookup(&f->m, p, pl, "SCB", &x))
		return try_bnb8(f, p, pl, w, &x);
	return 0;
}

/* ---- gpt-oss: X_blocks U8 [E, R, C/32, 16] and X_scales [E, R, C/32] ---- */

static int find_blocks(struct find *f, const char *p, size_t pl, const struct ref *b)
{
	struct ref sc;
	char scales[] = "_scales";

	if (!lookup(&f->m, p, pl, scales, &sc))
		return 0;
	if (b->t->dtype != ST_U8 || b->t->rank != 4 || dim(b, 3) != 16 || sc.t->rank != 3 ||
	    (sc.t->dtype != ST_U8 && sc.t->dtype != ST_F8_E8M0) || dim(&sc, 0) != dim(b, 0) ||
	    dim(&sc, 1) != dim(b, 1) || dim(&sc, 2) != dim(b, 2))
		return fail(f, p, pl, "_blocks and _scales do not fit gpt-oss's MXFP4 layout", NULL);
	int rc;
	struct st_qlayer *l = add_layer(f, p, pl, "", ST_Q_MXFP4, &rc);
	if (!l)
		return rc;
	dense_shape(l, 3, dim(b, 0), dim(b, 1), dim(b, 2) * 32);
	l->bits = 4;
	l->group = 32;
	bool gate_up = pl >= 12 && memcmp(p + pl - 12, "gate_up_proj", 12) == 0;
	l->flags = gate_up ? ST_QF_INTERLEAVED : 0;
	set_input(f, l, ST_QIN_VALUES, b);
	set_input(f, l, ST_QIN_SCALE, &sc);
	snprintf(l->desc, sizeof l->desc, "mxfp4 group_size=32 layout=[experts,out,in]%s",
		 gate_up ? " rows=interleaved (even rows gate, odd rows up)" : "");
	return 1;
}

/* ---- The walk ---- */

static bool ends_with(const char *s, size_t n, const char *suffix, size_t *plen)
{
	size_t k = strlen(suffix);

	if (n <= k || memcmp(s + n - k, suffix, k) != 0)
		return false;
	*plen = n - k;
	return true;
}

/* The layer whose values tensor `r` is, if any: 1 found, 0 not a values tensor, or an error. */
static int find_one(struct find *f, const struct ref *r)
{
	const char *name = st_tensor_name(r->h, r->t);
	size_t n = r->t->name_len, pl;

	if (memchr(name, '\0', n))
		return 0;
	if (ends_with(name, n, ".qweight", &pl))
		return find_qweight(f, name, pl + 1, r);
	if (ends_with(name, n, ".weight_packed", &pl))
		return find_weight_packed(f, name, pl + 1, r);
	if (ends_with(name, n, ".weight", &pl))
		return find_weight(f, name, pl + 1, r);
	if (ends_with(name, n, "_blocks", &pl))
		return find_blocks(f, name, pl, r);
	return 0;
}

/* A dense name that a tensor left visible already has would make two files of one name. */
static int check_names(struct find *f)
{
	for (size_t i = 0; i < f->out->n_layers; i++) {
		const char *name = f->out->layers[i].name;
		struct ref r;
		if (lookup(&f->m, name, strlen(name), "", &r) && !f->out->consumed[r.shard][r.index])
			return fail(f, name, strlen(name), "a tensor of that name is in the file too", NULL);
	}
	return 0;
}

int st_quant_find(const struct st_header *const *headers, size_t n_shards, const char *config,
		  size_t config_len, const char *config_name, const struct st_quant_hints *hints,
		  struct st_quant *out, char err[ST_ERR_LEN])
{
	struct qconfig c;
	struct find f = {.c = &c, .hints = hints, .cname = config_name ? config_name : "the config", .out = out,
			 .err = err};
	int rc;

	memset(out, 0, sizeof *out);
	if ((rc = read_config(config, config_len, f.cname, &c, err)) < 0)
		return rc;
	if (!(out->consumed = calloc(n_shards ? n_shards : 1, sizeof *out->consumed)))
		return -ENOMEM;
	out->n_shards = n_shards;
	for (size_t s = 0; s < n_shards; s++)
		if (!(out->consumed[s] = calloc(headers[s]->n_tensors ? headers[s]->n_tensors : 1, 1)))
			rc = -ENOMEM;
	if (!rc)
		rc = names_build(&f.m, headers, n_shards);
	for (size_t s = 0; s < n_shards && rc >= 0; s++)
		for (size_t i = 0; i < headers[s]->n_tensors && rc >= 0; i++) {
			struct ref r = {headers[s], &headers[s]->tensors[i], (uint32_t)s, (uint32_t)i};
			if (!out->consumed[s][i])
				rc = find_one(&f, &r);
		}
	if (rc >= 0)
		rc = check_names(&f);
	free(f.m.slots);
	if (rc < 0) {
		if (rc == -ENOMEM)
			snprintf(err, ST_ERR_LEN, "out of memory while finding quantized layers");
		st_quant_free(out);
		return rc;
	}
	return 0;
}

void st_quant_free(struct st_quant *q)
{
	for (size_t i = 0; i < q->n_layers; i++)
		free(q->layers[i].name);
	free(q->layers);
	for (size_t s = 0; q->consumed && s < q->n_shards; s++)
		free(q->consumed[s]);
	free(q->consumed);
	memset(q, 0, sizeof *q);
}

const char *st_qformat_name(enum st_qformat f)
{
	static const char *const names[ST_Q_FORMAT_COUNT] = {"fp8", "gptq", "awq", "compressed-tensors int",
							     "nvfp4", "mxfp4", "mxfp8", "bitsandbytes 4-bit",
							     "bitsandbytes int8"};
	return (unsigned)f < ST_Q_FORMAT_COUNT ? names[f] : "?";
}
