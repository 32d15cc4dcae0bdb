#include "xattr.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_PREFIX XATTR_PREFIX "metadata."
#define XATTR_NAME_LIMIT 255 /* XATTR_NAME_MAX: longer names cannot be asked for */

static const char *const tensor_attrs[] = {"name", "dtype", "shape", "data_offsets", "offset", "file"};
static const char *const root_attrs[] = {"tensors", "bytes", "shards"};

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
		add(b, sh->label, strlen(sh->label));
	}
}

/* A metadata key that can be an xattr name: no NUL, within the kernel's name limit. */
static int meta_key_usable(const struct st_metadata *md, const struct st_meta *m)
{
	return m->key_len > 0 && !memchr(md->strings + m->key, '\0', m->key_len) &&
	       strlen(META_PREFIX) + m->key_len <= XATTR_NAME_LIMIT;
}

static int root_value(const struct fs *fs, const char *name, struct buf *b)
{
	const struct st_metadata *md = &fs->src.metadata;
	uint64_t tensors = 0, bytes = 0;

	for (size_t s = 0; s < fs->src.n_shards; s++) {
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
		add_u64(b, fs->src.n_shards);
		return 0;
	}
	if (strncmp(name, META_PREFIX, strlen(META_PREFIX)) != 0)
		return -ENODATA;
	const char *key = name + strlen(META_PREFIX);
	for (size_t i = 0; i < md->n_items; i++) {
		const struct st_meta *m = &md->items[i];
		if (meta_key_usable(md, m) && strlen(key) == m->key_len &&
		    memcmp(key, md->strings + m->key, m->key_len) == 0) {
			add(b, md->strings + m->value, m->value_len);
			return 0;
		}
	}
	return -ENODATA;
}

int xattr_get(const struct fs *fs, const struct node *n, const char *name, char **value, size_t *len)
{
	struct buf b = {0};
	int rc = -ENODATA;

	if (n == &fs->tree.nodes[0]) {
		rc = root_value(fs, name, &b);
	} else if (n->kind == NODE_TENSOR && strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX)) == 0) {
		for (size_t i = 0; i < sizeof(tensor_attrs) / sizeof(*tensor_attrs); i++)
			if (strcmp(name + strlen(XATTR_PREFIX), tensor_attrs[i]) == 0) {
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

int xattr_list(const struct fs *fs, const struct node *n, char **list, size_t *len)
{
	struct buf b = {0};

	if (n == &fs->tree.nodes[0]) {
		const struct st_metadata *md = &fs->src.metadata;
		for (size_t i = 0; i < md->n_items; i++)
			if (meta_key_usable(md, &md->items[i]))
				add_name(&b, META_PREFIX, md->strings + md->items[i].key, md->items[i].key_len);
		for (size_t i = 0; i < sizeof(root_attrs) / sizeof(*root_attrs); i++)
			add_name(&b, XATTR_PREFIX, root_attrs[i], strlen(root_attrs[i]));
	} else if (n->kind == NODE_TENSOR) {
		for (size_t i = 0; i < sizeof(tensor_attrs) / sizeof(*tensor_attrs); i++)
			add_name(&b, XATTR_PREFIX, tensor_attrs[i], strlen(tensor_attrs[i]));
	}
	return finish(&b, list, len);
}
