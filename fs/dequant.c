/* Dense shards: the quantized layers of each component, decoded on read (dequant.h). */
#include "dequant.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convert.h"
#include "decode.h"

/* Decoded values a read holds at once: bounds the scratch of each read. */
#define SCRATCH_ELEMS (1u << 18)

/*
 * A view that cuts columns (w[:, a:b], a rank's column block) reads one short run per row.
 * Decoding each run by itself would read the packed words of every row apart (a pread of a
 * few bytes each for GPTQ, whose rows are its columns) and the group tables again each
 * time, so a run within one row decodes the box of the rows below it at those columns, and
 * the runs that follow are copied out of it.  A few boxes are kept, for threads that read
 * different slices at once.
 */
#define BOXES 4
#define SPARES 8

struct box {
	float *vals;              /* rows [r0, r1) x columns [c0, c1), row-major; NULL: empty */
	size_t layer;
	uint64_t r0, r1, c0, c1;
	uint64_t used;            /* when it was last read, for replacing the oldest */
};

struct dense_store {
	struct store s;
	pthread_mutex_t lock;     /* the boxes */
	struct box boxes[BOXES];
	uint64_t clock;
	float *spare[SPARES];     /* scratch buffers of finished reads */
	size_t n_spare;
	const struct source *src;
	size_t first;             /* the component's first shard: layer inputs count from it */
	struct st_quant q;
	enum st_dtype dtype;
	uint64_t *start;          /* of each layer's bytes in the DTYPE image */
	uint64_t *f32;            /* and in the F32 image */
	uint64_t *count;          /* its elements */
	uint64_t f32_base;        /* where the F32 image begins */
};

/* ---- Reading a layer's inputs ---- */

struct input_ctx {
	const struct dense_store *d;
	const struct st_qlayer *l;
};

static int read_input(void *ctx, enum st_qrole role, void *dst, size_t n, uint64_t off)
{
	const struct input_ctx *c = ctx;
	const struct st_qinput *in = &c->l->in[role];
	const struct shard *sh = &c->d->src->shards[c->d->first + in->shard];
	const struct st_tensor *t = &sh->hdr.tensors[in->index];

	if (!in->present || off > st_tensor_nbytes(t) || n > st_tensor_nbytes(t) - off)
		return -EIO;
	return shard_pread(sh, dst, n, sh->hdr.data_start + t->begin + off);
}

static void make_io(const struct dense_store *d, const struct st_qlayer *l, struct input_ctx *c,
		    struct decode_io *io)
{
	*c = (struct input_ctx){d, l};
	memset(io, 0, sizeof *io);
	io->read = read_input;
	io->ctx = c;
	for (int r = 0; r < ST_QIN_COUNT; r++) {
		if (!l->in[r].present)
			continue;
		const struct shard *sh = &d->src->shards[d->first + l->in[r].shard];
		const struct st_tensor *t = &sh->hdr.tensors[l->in[r].index];
		io->in[r] = (struct decode_input){t->dtype, t->rank, sh->hdr.dims + t->dims, st_tensor_nbytes(t)};
	}
}

/* Row r, columns [c0, c1) of layer i from a kept box: true when one holds it. */
static bool from_box(struct dense_store *d, size_t i, uint64_t r, uint64_t c0, uint64_t c1, float *out)
{
	bool hit = false;

	pthread_mutex_lock(&d->lock);
	for (int b = 0; b < BOXES && !hit; b++) {
		struct box *x = &d->boxes[b];
		if (x->vals && x->layer == i && x->r0 <= r && r < x->r1 && x->c0 <= c0 && c1 <= x->c1) {
			memcpy(out, x->vals + (r - x->r0) * (x->c1 - x->c0) + (c0 - x->c0), (c1 - c0) * sizeof *out);
			x->used = ++d->clock;
			hit = true;
		}
	}
	pthread_mutex_unlock(&d->lock);
	return hit;
}

/* Decodes the box below row r at columns [c0, c1) (as many rows as SCRATCH_ELEMS values
 * hold), keeps it in place of the oldest, and copies row r out.  Decoded outside the lock. */
static int via_box(struct dense_store *d, size_t i, const struct decode_io *io, uint64_t r, uint64_t c0,
		   uint64_t c1, float *out)
{
	const struct st_qlayer *l = &d->q.layers[i];
	uint64_t rows = d->count[i] / l->shape[l->rank - 1], w = c1 - c0;
	uint64_t n = w < SCRATCH_ELEMS ? SCRATCH_ELEMS / w : 1;
	uint64_t r1 = rows - r < n ? rows : r + n;
	struct box x = {.layer = i, .r0 = r, .r1 = r1, .c0 = c0, .c1 = c1};
	int rc;

	if (!(x.vals = malloc((r1 - r) * w * sizeof *x.vals)))
		return -ENOMEM;
	if ((rc = decode_for(l->format)(l, io, r, r1, c0, c1, x.vals)) < 0) {
		free(x.vals);
		return rc;
	}
	memcpy(out, x.vals, w * sizeof *out);
	pthread_mutex_lock(&d->lock);
	struct box *old = &d->boxes[0];
	for (int b = 1; b < BOXES; b++)
		if (d->boxes[b].used < old->used)
			old = &d->boxes[b];
	float *gone = old->vals;
	x.used = ++d->clock;
	*old = x;
	pthread_mutex_unlock(&d->lock);
	free(gone);
	return 0;
}

/* Elements [e, e + n) of layer i, n <= SCRATCH_ELEMS, into out: a partial first row, whole
 * rows, a partial last row, each one box; a run inside one row through the kept boxes. */
static int decode_elems(struct dense_store *d, size_t i, uint64_t e, uint64_t n, float *out)
{
	const struct st_qlayer *l = &d->q.layers[i];
	uint64_t k = l->shape[l->rank - 1];
	decode_fn *fn = decode_for(l->format);
	struct input_ctx c;
	struct decode_io io;
	int rc = 0;

	if (!fn)
		return -EIO;
	make_io(d, l, &c, &io);
	while (n > 0 && !rc) {
		uint64_t r = e / k, col = e % k, take;
		if (col || n < k) {
			take = k - col < n ? k - col : n;
			if (!from_box(d, i, r, col, col + take, out))
				rc = via_box(d, i, &io, r, col, col + take, out);
		} else {
			uint64_t rows = n / k;
			take = rows * k;
			rc = fn(l, &io, r, r + rows, 0, k, out);
		}
		e += take;
		n -= take;
		out += take;
	}
	return rc;
}

/* ---- The store ---- */

/* The layer whose bytes hold image offset off (starts[] ascending), or -1. */
static long layer_at(const struct dense_store *d, const uint64_t *starts, uint64_t off)
{
	size_t lo = 0, hi = d->q.n_layers;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (starts[mid] <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo ? (long)lo - 1 : -1;
}

/* Bytes [off, off + len) of layer i's image of dtype `dt` (F32 or the mount's). */
static int read_layer(struct dense_store *d, size_t i, enum st_dtype dt, uint64_t off, uint8_t *buf,
		      size_t len, float *scratch)
{
	unsigned w = convert_out_size(dt);

	while (len > 0) {
		uint64_t e = off / w, skip = off % w;
		uint64_t n = (skip + len + w - 1) / w;
		n = n < SCRATCH_ELEMS ? n : SCRATCH_ELEMS;
		if (e + n > d->count[i])
			return -EIO;
		int rc = decode_elems(d, i, e, n, scratch);
		if (rc < 0)
			return rc;
		size_t got = (size_t)(n * w - skip) < len ? (size_t)(n * w - skip) : len;
		if (dt != ST_F32 && !skip && got == n * w) { /* whole elements: narrowed into place */
			convert(ST_F32, dt, scratch, 0, buf, (size_t)n);
		} else {
			uint8_t *bytes = (uint8_t *)scratch;
			if (dt != ST_F32) /* narrowed into the scratch's second half */
				convert(ST_F32, dt, scratch, 0, bytes = (uint8_t *)(scratch + SCRATCH_ELEMS), (size_t)n);
			memcpy(buf, bytes + skip, got);
		}
		buf += got;
		len -= got;
		off += got;
	}
	return 0;
}

/* Scratch buffers are kept for the next read: a fresh one of this size would be mapped and
 * faulted in page by page on every read. */
static float *take_scratch(struct dense_store *d)
{
	float *s = NULL;

	pthread_mutex_lock(&d->lock);
	if (d->n_spare)
		s = d->spare[--d->n_spare];
	pthread_mutex_unlock(&d->lock);
	return s ? s : malloc(2 * SCRATCH_ELEMS * sizeof(float));
}

static void give_scratch(struct dense_store *d, float *s)
{
	pthread_mutex_lock(&d->lock);
	if (d->n_spare < SPARES)
		d->spare[d->n_spare++] = s, s = NULL;
	pthread_mutex_unlock(&d->lock);
	free(s);
}

static int dense_read(struct store *s, void *buf, size_t len, uint64_t off)
{
	struct dense_store *d = (struct dense_store *)s;
	float *scratch;
	uint8_t *out = buf;
	int rc = 0;

	if (off > s->size || len > s->size - off)
		return -EIO;
	if (!(scratch = take_scratch(d)))
		return -ENOMEM;
	while (len > 0 && !rc) {
		bool f32 = off >= d->f32_base;
		const uint64_t *starts = f32 ? d->f32 : d->start;
		enum st_dtype dt = f32 ? ST_F32 : d->dtype;
		long i = layer_at(d, starts, off);
		if (i < 0) {
			rc = -EIO;
			break;
		}
		uint64_t end = starts[i] + d->count[i] * convert_out_size(dt);
		size_t n = end - off < len ? (size_t)(end - off) : len;
		rc = read_layer(d, (size_t)i, dt, off - starts[i], out, n, scratch);
		out += n;
		len -= n;
		off += n;
	}
	give_scratch(d, scratch);
	return rc;
}

/* A dense tensor changed when any file of its component did. */
static bool dense_changed(struct store *s)
{
	const struct dense_store *d = (const struct dense_store *)s;

	for (size_t i = 0; i < d->q.n_shards; i++)
		if (shard_changed(&d->src->shards[d->first + i]))
			return true;
	return false;
}

static void dense_close(struct store *s)
{
	struct dense_store *d = (struct dense_store *)s;

	st_quant_free(&d->q);
	for (int b = 0; b < BOXES; b++)
		free(d->boxes[b].vals);
	for (size_t b = 0; b < d->n_spare; b++)
		free(d->spare[b]);
	pthread_mutex_destroy(&d->lock);
	free(d->start);
	free(d->f32);
	free(d->count);
	free(d);
}

static const struct store_ops dense_ops = {
	.read = dense_read,
	.changed = dense_changed,
	.close = dense_close,
};

const struct st_qlayer *dequant_layer(const struct shard *sh, uint32_t index, uint64_t *f32_start)
{
	const struct dense_store *d = (const struct dense_store *)sh->store;

	*f32_start = d->f32[index];
	return &d->q.layers[index];
}

size_t dequant_values_shard(const struct shard *sh, uint32_t index)
{
	const struct dense_store *d = (const struct dense_store *)sh->store;

	return d->first + d->q.layers[index].in[ST_QIN_VALUES].shard;
}

/* ---- Attaching ---- */

/* Where the quantization config may be, in this order, and how long it may be. */
static const char *const config_files[] = {"config.json", "quantize_config.json", "quant_config.json",
					   "hf_quant_config.json"};
#define CONFIG_MAX (16u << 20)

/* config.json counts only where it speaks of quantization; the others always do. */
static bool quant_said(const char *text, size_t n)
{
	return memmem(text, n, "quantization_config", 19) || memmem(text, n, "compression_config", 18);
}

/* The text of the first quantization config in dir, or NULL (*name says which file). */
static char *read_config(const char *dir, const char **name, size_t *len)
{
	const char *const *files = config_files;

	for (size_t i = 0; i < sizeof config_files / sizeof *config_files; i++) {
		char path[4096], *text;
		int fd;
		if (snprintf(path, sizeof path, "%s/%s", dir, files[i]) >= (int)sizeof path ||
		    (fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0)
			continue;
		size_t cap = CONFIG_MAX + 1, n = 0;
		ssize_t got = 0;
		if (!(text = malloc(cap))) {
			close(fd);
			return NULL;
		}
		while (n < cap && (got = read(fd, text + n, cap - n)) > 0)
			n += (size_t)got;
		close(fd);
		if (got < 0 || (i == 0 && !quant_said(text, n))) {
			free(text);
			continue;
		}
		*name = files[i];
		*len = n;
		return text;
	}
	return NULL;
}

/* The same beside a remote component: the first of the names the server has (any answer but
 * 200 means "not there"; a quantized layer is then read from its header alone). */
static char *fetch_config(const struct source *src, const char *dir, const char **name, size_t *len)
{
	for (size_t i = 0; i < sizeof config_files / sizeof *config_files; i++) {
		struct http_response r;
		char url[8192], err[ST_ERR_LEN], *text = NULL;
		if (snprintf(url, sizeof url, "%s/%s", dir, config_files[i]) >= (int)sizeof url ||
		    http_get(&src->http, url, &src->remote->auth, CONFIG_MAX, &r, err) < 0)
			continue;
		if (r.status == 200 && (i > 0 || quant_said(r.body, r.len)) && (text = malloc(r.len + 1))) {
			memcpy(text, r.body, r.len);
			*name = config_files[i];
			*len = r.len;
		}
		http_response_free(&r);
		if (text)
			return text;
	}
	return NULL;
}

/* The dense shard's header: one tensor per layer, in DTYPE, laid end to end. */
static int dense_header(struct dense_store *d, struct st_header *h)
{
	size_t n = d->q.n_layers, names = 0;
	unsigned w = convert_out_size(d->dtype);
	uint64_t at = 0, at32 = 0;

	memset(h, 0, sizeof *h);
	for (size_t i = 0; i < n; i++)
		names += strlen(d->q.layers[i].name) + 1;
	h->tensors = calloc(n, sizeof *h->tensors);
	h->dims = calloc(3 * n, sizeof *h->dims);
	h->strings = malloc(names);
	d->start = calloc(n, sizeof *d->start);
	d->f32 = calloc(n, sizeof *d->f32);
	d->count = calloc(n, sizeof *d->count);
	if (!h->tensors || !h->dims || !h->strings || !d->start || !d->f32 || !d->count || names > UINT32_MAX)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct st_qlayer *l = &d->q.layers[i];
		struct st_tensor *t = &h->tensors[i];
		uint64_t count = 1, bytes;
		for (uint32_t j = 0; j < l->rank; j++) {
			h->dims[3 * i + j] = l->shape[j];
			if (__builtin_mul_overflow(count, l->shape[j], &count))
				return -EOVERFLOW;
		}
		if (count > (UINT64_MAX >> 3) || __builtin_mul_overflow(count, (uint64_t)w, &bytes) ||
		    __builtin_add_overflow(at, bytes, &t->end) || __builtin_add_overflow(at32, count * 4, &at32))
			return -EOVERFLOW;
		*t = (struct st_tensor){.begin = at, .end = at + bytes, .name = (uint32_t)h->n_strings,
					.name_len = (uint32_t)strlen(l->name), .dims = (uint32_t)(3 * i),
					.rank = l->rank, .dtype = (uint8_t)d->dtype};
		memcpy(h->strings + h->n_strings, l->name, t->name_len + 1);
		h->n_strings += t->name_len + 1;
		d->start[i] = at;
		d->count[i] = count;
		at += bytes;
	}
	h->n_tensors = h->cap_tensors = n;
	h->n_dims = h->cap_dims = 3 * n;
	h->cap_strings = names;
	/* The F32 image follows the DTYPE one, its tensors in the same order. */
	d->f32_base = at;
	for (size_t i = 0; i < n; i++)
		d->f32[i] = i ? d->f32[i - 1] + d->count[i - 1] * 4 : at;
	if (__builtin_add_overflow(at, at32, &h->file_size))
		return -EOVERFLOW;
	d->s.size = h->file_size;
	if (!(h->metadata_json = strdup("{}")))
		return -ENOMEM;
	h->metadata_json_len = 2;
	return 0;
}

static int read_small(void *ctx, uint32_t shard, uint32_t index, void *buf, size_t len)
{
	const struct dense_store *d = ctx;
	const struct shard *sh = &d->src->shards[d->first + shard];
	const struct st_tensor *t = &sh->hdr.tensors[index];

	if (len > st_tensor_nbytes(t))
		return -EIO;
	return shard_pread(sh, buf, len, sh->hdr.data_start + t->begin);
}

/* The layers of component c, as a dense shard appended to the source (or none). */
static int attach_component(struct source *src, size_t c, const struct dequant_opts *o, char *err)
{
	const struct component *k = &src->components[c];
	const struct st_header **hdrs = calloc(k->count ? k->count : 1, sizeof *hdrs);
	struct dense_store *d = calloc(1, sizeof *d);
	const char *cname = NULL;
	size_t clen = 0;
	char *config = NULL;
	int rc;

	if (!hdrs || !d) {
		free(hdrs);
		free(d);
		return -ENOMEM;
	}
	for (size_t i = 0; i < k->count; i++)
		hdrs[i] = &src->shards[k->first + i].hdr;
	config = src->remote ? fetch_config(src, k->dir, &cname, &clen) : read_config(k->dir, &cname, &clen);
	*d = (struct dense_store){.s = {.ops = &dense_ops, .fd = -1, .mtime = src->shards[k->first].store->mtime},
				  .src = src, .first = k->first, .dtype = (enum st_dtype)o->dtype};
	struct st_quant_hints hints = o->hints;
	pthread_mutex_init(&d->lock, NULL);
	hints.read = read_small;
	hints.ctx = d;
	rc = st_quant_find(hdrs, k->count, config, clen, cname, &hints, &d->q, err);
	free(config);
	free(hdrs);
	if (rc < 0 || d->q.n_layers == 0) {
		dense_close(&d->s);
		return rc;
	}
	struct shard sh = {.store = &d->s, .component = (uint32_t)c};
	if ((rc = dense_header(d, &sh.hdr)) < 0 || !(sh.path = strdup("")) ||
	    !(sh.label = strdup(src->shards[k->first].label))) {
		st_header_free(&sh.hdr);
		free(sh.path);
		dense_close(&d->s);
		if (rc == -EOVERFLOW)
			snprintf(err, ST_ERR_LEN, "a dense tensor would be larger than 2^64 bytes");
		return rc < 0 ? rc : -ENOMEM;
	}
	if (st_reserve(&src->shards, &src->cap_shards, src->n_shards + src->n_dense + 1, sizeof sh)) {
		st_header_free(&sh.hdr);
		free(sh.path);
		free(sh.label);
		dense_close(&d->s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < k->count; i++)
		src->shards[k->first + i].hidden = d->q.consumed[i];
	src->shards[src->n_shards + src->n_dense++] = sh;
	return 0;
}

int dequant_attach(struct source *src, const struct dequant_opts *o, char err[ST_ERR_LEN])
{
	int rc = 0;

	if (o->dtype < 0)
		return 0;
	for (size_t c = 0; c < src->n_components && !rc; c++)
		rc = attach_component(src, c, o, err);
	if (rc == -ENOMEM && !err[0])
		snprintf(err, ST_ERR_LEN, "out of memory while finding quantized layers");
	return rc;
}
