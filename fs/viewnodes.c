#include "viewnodes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

int view_table_init(struct view_table *t)
{
	memset(t, 0, sizeof(*t));
	return -pthread_mutex_init(&t->lock, NULL);
}

void view_table_free(struct view_table *t)
{
	for (size_t i = 0; i < t->n; i++) {
		view_plan_free(&t->items[i]->plan);
		free(t->items[i]->name);
		free(t->items[i]);
	}
	free(t->items);
	pthread_mutex_destroy(&t->lock);
}

const struct view_node *view_get(struct view_table *t, size_t index)
{
	const struct view_node *v = NULL;

	pthread_mutex_lock(&t->lock);
	if (index < t->n)
		v = t->items[index];
	pthread_mutex_unlock(&t->lock);
	return v;
}

/* A plan for `name` if it is a view of a tensor file in `parent`. */
static struct view_node *make(struct fs *fs, uint32_t parent, const char *name)
{
	struct view_spec spec;
	struct view_node *v;
	long base;

	if (view_parse(name, strlen(name), &spec) < 0 || !spec.is_view)
		return NULL;
	base = tree_lookup(&fs->tree, parent, name, spec.base_len);
	if (base < 0 || fs->tree.nodes[base].kind != NODE_TENSOR)
		return NULL;
	const struct node *n = &fs->tree.nodes[base];
	const struct st_header *h = &shard_of(fs, n)->hdr;
	const struct st_tensor *t = tensor_of(fs, n);
	if (!(v = calloc(1, sizeof(*v))))
		return NULL;
	if (view_plan(&spec, t->dtype, h->dims + t->dims, t->rank, &v->plan) < 0 || !(v->name = strdup(name))) {
		free(v);
		return NULL;
	}
	v->tensor = (uint32_t)base;
	v->parent = parent;
	return v;
}

long view_lookup(struct fs *fs, uint32_t parent, const char *name)
{
	struct view_table *t = &fs->views;
	struct view_node *v;
	long found = -1;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n && found < 0; i++)
		if (t->items[i]->parent == parent && strcmp(t->items[i]->name, name) == 0)
			found = (long)i;
	pthread_mutex_unlock(&t->lock);
	if (found >= 0)
		return found;
	if (!(v = make(fs, parent, name)))
		return -ENOENT;
	pthread_mutex_lock(&t->lock);
	if (st_reserve(&t->items, &t->cap, t->n + 1, sizeof(*t->items)) == 0) {
		t->items[t->n] = v;
		found = (long)t->n++;
	}
	pthread_mutex_unlock(&t->lock);
	if (found < 0) {
		view_plan_free(&v->plan);
		free(v->name);
		free(v);
		return -ENOMEM;
	}
	return found;
}
