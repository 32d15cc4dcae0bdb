#include "xattr.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dequant.h"

#define META_PREFIX XATTR_PREFIX "metadata."
/* The kernel's XATTR_NAME_MAX, XATTR_SIZE_MAX and XATTR_LIST_MAX (linux/limits.h). */
#define XATTR_NAME_LIMIT 255
#define XATTR_VALUE_LIMIT 65536
#define XATTR_LIST_LIMIT 65536

static const char *const tensor_attrs[] = {"name", "dtype", "shape", "data_offsets", "offset", "file",
					   "quantization"};
static const char *const dir_attrs[] = {"tensors", "bytes", "shards"};
/* And "offset" where the view's bytes are one range of the backing file. */
static const char *const view_attrs[] = {"dtype", "shape", "file", "view_of"};

struct buf {
	char *p;
	size_t len, cap;
	int failed;
};

static void add(struct buf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *np = realloc(b->p, cap);
		if (!np) {
			b->failed = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void add_u64(struct buf *b, uint64_t v)
{
	char num[24];

	add(b, num, (size_t)snprintf(num, sizeof(num), "%" PRIu64, v));
}

static int finish(struct buf *b, char **value, size_t *len)
{
	if (b->failed) {
		free(b->p);
		return -ENOMEM;
	}
	if (!b->p)
		add(b, "", 0);
	*value = b->p;
	*len = b->len;
	return b->failed ? -ENOMEM : 0;
}

/* A dense tensor (-o dequantize=) has no bytes in a file, so no offsets, and says its format;
 * a tensor of the file has no format to say. */
static bool tensor_has(const struct fs *fs, const struct node *n, const char *attr)
{
	bool dense = dequant_is_dense(&fs->src, n->tensor.shard);

	if (strcmp(attr, "quantization") == 0)
		return dense;
	return !dense || (strcmp(attr, "offset") != 0 && strcmp(attr, "data_offsets") != 0);
}

static void tensor_value(const struct fs *fs, const struct node *n, const char *attr, struct buf *b)
{
	const struct shard *sh = shard_of(fs, n);
	const struct st_header *h = &sh->hdr;
	const struct st_tensor *t = tensor_of(fs, n);

	if (strcmp(attr, "name") == 0) {
		add(b, st_tensor_name(h, t), t->name_len);
	} else if (strcmp(attr, "dtype") == 0) {
		add(b, st_dtype_name(t->dtype), strlen(st_dtype_name(t->dtype)));
	} else if (strcmp(attr, "shape") == 0) {
		add(b, "[", 1);
		for (uint32_t i = 0; i < t->rank; i++) {
			if (i)
				add(b, ",", 1);
			add_u64(b, h->dims[t->dims + i]);
		}
		add(b, "]", 1);
	} else if (strcmp(attr, "data_offsets") == 0) {
		add(b, "[", 1);
		add_u64(b, t->begin);
		add(b, ",", 1);
		add_u64(b, t->end);
		add(b, "]", 1);
	} else if (strcmp(attr, "offset") == 0) {
		add_u64(b, tensor_file_offset(fs, n));
	} else if (strcmp(attr, "file") == 0) {
		/* A dense tensor is in the file its packed values are in. */
		if (dequant_is_dense(&fs->src, n->tensor.shard))
			sh = &fs->src.shards[dequant_values_shard(sh, n->tensor.index)];
		add(b, sh->label, strlen(sh->label));
	} else if (strcmp(attr, "quantization") == 0) {
		uint64_t f32;
		const struct st_qlayer *l = dequant_layer(sh, n->tensor.index, &f32);
		add(b, l->desc, strlen(l->desc));
	}
}

/* The part of the mount a directory's attributes describe: all of it, or one component. */
struct scope {
	const struct st_metadata *md;
	size_t first, count; /* its shards */
};

/* The root speaks for the whole mount; a component's directory for that component. */
static int scope_of(const struct fs *fs, const struct node *n, struct scope *sc)
{
	if (n == &fs->tree.nodes[0]) {
		*sc = (struct scope){&fs->src.metadata, 0, fs->src.n_shards};
		return 0;
	}
	if (n->kind != NODE_DIR || !n->dir.component)
		return -1;
	const struct component *c = &fs->src.components[n->dir.component - 1];
	*sc = (struct scope){&c->metadata, c->first, c->count};
	return 0;
}

/* The bytes of the fixed names a directory lists before its metadata keys. */
static size_t fixed_list_len(void)
{
	size_t len = 0;

	for (size_t i = 0; i < sizeof(dir_attrs) / sizeof(*dir_attrs); i++)
		len += strlen(XATTR_PREFIX) + strlen(dir_attrs[i]) + 1;
	return len;
}

/*
 * Calls fn for each metadata entry that is an xattr: its key has no NUL and makes a name
 * of at most 255 bytes, its value fits XATTR_SIZE_MAX, and its name still fits in the
 * XATTR_LIST_MAX bytes of the list, in the metadata's order.  The kernel refuses a value
 * or a list past 64 KiB as a whole (E2BIG), so one outsized entry would hide all the
 * others; .metadata.json has every entry whatever its size.  Stops at fn's nonzero return.
 */
static int each_meta_xattr(const struct st_metadata *md, int (*fn)(void *ctx, const struct st_meta *m),
			   void *ctx)
{
	size_t listed = fixed_list_len();

	for (size_t i = 0; i < md->n_items; i++) {
		const struct st_meta *m = &md->items[i];
		size_t name_len = strlen(META_PREFIX) + m->key_len;
		if (m->key_len == 0 || memchr(md->strings + m->key, '\0', m->key_len) ||
		    name_len > XATTR_NAME_LIMIT || m->value_len > XATTR_VALUE_LIMIT ||
		    listed + name_len + 1 > XATTR_LIST_LIMIT)
			continue;
		listed += name_len + 1;
		int rc = fn(ctx, m);
		if (rc)
			return rc;
	}
	return 0;
}

struct meta_find {
	const struct st_metadata *md;
	const char *key;
	struct buf *b;
};

static int add_if_key(void *ctx, const struct st_meta *m)
{
	struct meta_find *f = ctx;

	if (strlen(f->key) != m->key_len || memcmp(f->key, f->md->strings + m->key, m->key_len) != 0)
		return 0;
	add(f->b, f->md->strings + m->value, m->value_len);
	return 1;
}

static int dir_value(const struct fs *fs, const struct scope *sc, const char *name, struct buf *b)
{
	uint64_t tensors = 0, bytes = 0;

	for (size_t s = sc->first; s < sc->first + sc->count; s++) {
		const struct st_header *h = &fs->src.shards[s].hdr;
		tensors += h->n_tensors;
		bytes += h->file_size - h->data_start; /* tensors tile the data region exactly */
	}
	if (strcmp(name, XATTR_PREFIX "tensors") == 0) {
		add_u64(b, tensors);
		return 0;
	}
	if (strcmp(name, XATTR_PREFIX "bytes") == 0) {
		add_u64(b, bytes);
		return 0;
	}
	if (strcmp(name, XATTR_PREFIX "shards") == 0) {
		add_u64(b, sc->count);
		return 0;
	}
	if (strncmp(name, META_PREFIX, strlen(META_PREFIX)) != 0)
		return -ENODATA;
	struct meta_find f = {sc->md, name + strlen(META_PREFIX), b};
	return each_meta_xattr(sc->md, add_if_key, &f) ? 0 : -ENODATA;
}

/* A view's own dtype and shape, the tensor it shows, and where a raw one's bytes start. */
static int view_value(const struct fs *fs, const struct view_node *v, const char *attr, struct buf *b)
{
	const struct node *n = &fs->tree.nodes[v->tensor];
	const struct shard *sh = shard_of(fs, n);
	const struct st_tensor *t = tensor_of(fs, n);
	uint64_t off;

	if (strcmp(attr, "dtype") == 0) {
		add(b, st_dtype_name(v->plan.dtype), strlen(st_dtype_name(v->plan.dtype)));
	} else if (strcmp(attr, "shape") == 0) {
		add(b, "[", 1);
		for (uint32_t i = 0; i < v->plan.rank; i++) {
			if (i)
				add(b, ",", 1);
			add_u64(b, v->plan.shape[i]);
		}
		add(b, "]", 1);
	} else if (strcmp(attr, "view_of") == 0) {
		add(b, st_tensor_name(&sh->hdr, t), t->name_len);
	} else if (strcmp(attr, "file") == 0) {
		const struct shard *in = dequant_is_dense(&fs->src, n->tensor.shard)
			? &fs->src.shards[dequant_values_shard(sh, n->tensor.index)] : sh;
		add(b, in->label, strlen(in->label));
	} else if (strcmp(attr, "offset") == 0 && view_contiguous(&v->plan, &off) &&
		   !dequant_is_dense(&fs->src, n->tensor.shard)) {
		add_u64(b, v->src_start + off);
	} else {
		return -ENODATA;
	}
	return 0;
}

int xattr_get(const struct fs *fs, const struct node *n, const struct view_node *v, const char *name,
	      char **value, size_t *len)
{
	struct buf b = {0};
	struct scope sc;
	int rc = -ENODATA;

	if (strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX)) != 0)
		return -ENODATA;
	if (v) {
		rc = view_value(fs, v, name + strlen(XATTR_PREFIX), &b);
	} else if (scope_of(fs, n, &sc) == 0) {
		rc = dir_value(fs, &sc, name, &b);
	} else if (n->kind == NODE_TENSOR) {
		for (size_t i = 0; i < sizeof(tensor_attrs) / sizeof(*tensor_attrs); i++)
			if (strcmp(name + strlen(XATTR_PREFIX), tensor_attrs[i]) == 0 && tensor_has(fs, n, tensor_attrs[i])) {
				tensor_value(fs, n, tensor_attrs[i], &b);
				rc = 0;
			}
	}
	if (rc) {
		free(b.p);
		return rc;
	}
	return finish(&b, value, len);
}

static void add_name(struct buf *b, const char *prefix, const char *s, size_t n)
{
	add(b, prefix, strlen(prefix));
	add(b, s, n);
	add(b, "", 1); /* the separating NUL */
}

struct meta_list {
	const struct st_metadata *md;
	struct buf *b;
};

static int list_key(void *ctx, const struct st_meta *m)
{
	struct meta_list *l = ctx;

	add_name(l->b, META_PREFIX, l->md->strings + m->key, m->key_len);
	return 0;
}

static void list_names(struct buf *b, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		add_name(b, XATTR_PREFIX, names[i], strlen(names[i]));
}

int xattr_list(const struct fs *fs, const struct node *n, const struct view_node *v, char **list, size_t *len)
{
	struct buf b = {0};
	struct scope sc;
	uint64_t off;

	if (v) {
		list_names(&b, view_attrs, sizeof(view_attrs) / sizeof(*view_attrs));
		if (view_contiguous(&v->plan, &off) && !dequant_is_dense(&fs->src, fs->tree.nodes[v->tensor].tensor.shard))
			add_name(&b, XATTR_PREFIX, "offset", strlen("offset"));
	} else if (scope_of(fs, n, &sc) == 0) {
		/* The fixed names first: each_meta_xattr counts them in the list's room. */
		list_names(&b, dir_attrs, sizeof(dir_attrs) / sizeof(*dir_attrs));
		struct meta_list l = {sc.md, &b};
		each_meta_xattr(sc.md, list_key, &l);
	} else if (n->kind == NODE_TENSOR) {
		for (size_t i = 0; i < sizeof(tensor_attrs) / sizeof(*tensor_attrs); i++)
			if (tensor_has(fs, n, tensor_attrs[i]))
				add_name(&b, XATTR_PREFIX, tensor_attrs[i], strlen(tensor_attrs[i]));
	}
	return finish(&b, list, len);
}
