#include "viewnodes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dequant.h"
#include "fs.h"

int view_table_init(struct view_table *t)
{
	memset(t, 0, sizeof(*t));
	t->limit = VIEW_TABLE_CAP;
	int rc = pthread_mutex_init(&t->gathers.lock, NULL);
	if (rc)
		return -rc;
	if ((rc = pthread_mutex_init(&t->lock, NULL)))
		pthread_mutex_destroy(&t->gathers.lock);
	return -rc;
}

static void node_free(struct view_node *v)
{
	view_plan_free(&v->plan);
	free(v->name);
	free(v);
}

void view_table_free(struct view_table *t)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->items[i])
			node_free(t->items[i]);
	free(t->items);
	free(t->generations);
	free(t->free_slots);
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	/* No job is left: a thread gathers until the queue is empty, and the loop waits for it. */
	pthread_mutex_destroy(&t->gathers.lock);
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

static uint64_t hash_key(uint32_t parent, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ parent;

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

/* The slot of (parent, name), or -1.  Under the lock. */
static long find(const struct view_table *t, uint32_t parent, const char *name, uint64_t hash)
{
	if (!t->n_buckets)
		return -1;
	for (uint32_t s = t->buckets[hash & (t->n_buckets - 1)]; s; s = t->items[s - 1]->next) {
		const struct view_node *v = t->items[s - 1];
		if (v->hash == hash && v->parent == parent && strcmp(v->name, name) == 0)
			return (long)s - 1;
	}
	return -1;
}

/* Doubles the buckets when the chains would average more than one entry.  Under the lock. */
static int grow_buckets(struct view_table *t)
{
	size_t n = t->n_buckets ? t->n_buckets * 2 : 256;
	uint32_t *b;

	if (t->live + 1 <= t->n_buckets)
		return 0;
	if (!(b = calloc(n, sizeof(*b))))
		return -ENOMEM;
	for (size_t s = 0; s < t->n; s++) {
		struct view_node *v = t->items[s];
		if (!v)
			continue;
		v->next = b[v->hash & (n - 1)];
		b[v->hash & (n - 1)] = (uint32_t)s + 1;
	}
	free(t->buckets);
	t->buckets = b;
	t->n_buckets = n;
	return 0;
}

/* A slot for a new entry: a freed one first, so the table stays as small as what is held. */
static long take_slot(struct view_table *t)
{
	if (t->n_free)
		return t->free_slots[--t->n_free];
	if (t->n >= UINT32_MAX - 1)
		return -ENOMEM;
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 256;
		struct view_node **items = realloc(t->items, cap * sizeof(*items));
		if (!items)
			return -ENOMEM;
		t->items = items;
		uint64_t *gens = realloc(t->generations, cap * sizeof(*gens));
		if (!gens)
			return -ENOMEM;
		t->generations = gens;
		uint32_t *free_slots = realloc(t->free_slots, cap * sizeof(*free_slots));
		if (!free_slots)
			return -ENOMEM;
		t->free_slots = free_slots;
		t->cap = cap;
	}
	t->items[t->n] = NULL;
	t->generations[t->n] = 0;
	return (long)t->n++;
}

/* A plan for `name` if it is a view of a tensor file in `parent`: 0, -ENOENT or -ENOMEM. */
static int make(struct fs *fs, uint32_t parent, const char *name, struct view_node **out)
{
	struct view_spec spec;
	struct view_node *v;
	long base;
	int rc;

	if (view_parse(name, strlen(name), &spec) < 0 || !spec.is_view)
		return -ENOENT;
	base = tree_lookup(&fs->tree, parent, name, spec.base_len);
	if (base < 0 || fs->tree.nodes[base].kind != NODE_TENSOR)
		return -ENOENT;
	const struct node *n = &fs->tree.nodes[base];
	const struct st_header *h = &shard_of(fs, n)->hdr;
	const struct st_tensor *t = tensor_of(fs, n);
	if (!(v = calloc(1, sizeof(*v))))
		return -ENOMEM;
	/* A dense tensor's views read its F32 image: every conversion rounds once, from the decoded value. */
	enum st_dtype dtype = (enum st_dtype)t->dtype;
	v->src_start = tensor_file_offset(fs, n);
	if (dequant_is_dense(&fs->src, n->tensor.shard)) {
		dequant_layer(shard_of(fs, n), n->tensor.index, &v->src_start);
		dtype = ST_F32;
		if (spec.dtype < 0) /* a slice or .npy keeps the tensor's dtype, as for any tensor */
			spec.dtype = t->dtype;
	}
	if ((rc = view_plan(&spec, dtype, h->dims + t->dims, t->rank, &v->plan)) < 0 ||
	    !(v->name = strdup(name))) {
		/* Out of memory is no answer about the name: it must not become a cached ENOENT. */
		view_plan_free(&v->plan);
		free(v);
		return rc < 0 ? rc : -ENOMEM;
	}
	v->tensor = (uint32_t)base;
	v->parent = parent;
	*out = v;
	return 0;
}

static void hold(struct view_node *v, enum view_hold how)
{
	if (how == VIEW_REF)
		v->nlookup++;
	else
		v->pinned = true;
}

/* Enters V, made outside the lock, as (parent, name): its slot or a negative errno.  Under the lock. */
static long insert(struct view_table *t, struct view_node *v, enum view_hold how)
{
	long s;

	if (how != VIEW_LISTED && t->capped >= t->limit)
		return -ENFILE;
	if (grow_buckets(t) < 0 || (s = take_slot(t)) < 0)
		return -ENOMEM;
	size_t b = v->hash & (t->n_buckets - 1);
	v->next = t->buckets[b];
	t->buckets[b] = (uint32_t)s + 1;
	v->generation = ++t->generations[s];
	v->capped = how != VIEW_LISTED;
	t->items[s] = v;
	t->live++;
	t->capped += v->capped;
	hold(v, how);
	return s;
}

/* The held entry (parent, name) if there is one, else -1; -ENFILE when a new one would pass the cap. */
static long held(struct view_table *t, uint32_t parent, const char *name, uint64_t hash, enum view_hold how)
{
	long s = find(t, parent, name, hash);

	if (s >= 0)
		hold(t->items[s], how);
	else if (how != VIEW_LISTED && t->capped >= t->limit)
		s = -ENFILE;
	return s;
}

long view_lookup_hold(struct fs *fs, uint32_t parent, const char *name, enum view_hold how)
{
	struct view_table *t = &fs->views;
	uint64_t hash = hash_key(parent, name);
	struct view_node *v = NULL;
	bool mine = false;
	long s;
	int rc;

	pthread_mutex_lock(&t->lock);
	s = held(t, parent, name, hash, how);
	pthread_mutex_unlock(&t->lock);
	if (s != -1)
		return s;
	/* Planned outside the lock: a plan allocates, and other lookups need not wait for it. */
	if ((rc = make(fs, parent, name, &v)) < 0)
		return rc;
	v->hash = hash;
	pthread_mutex_lock(&t->lock);
	/* Another thread may have entered the same name meanwhile: one entry per name. */
	if ((s = held(t, parent, name, hash, how)) == -1)
		mine = (s = insert(t, v, how)) >= 0;
	pthread_mutex_unlock(&t->lock);
	if (!mine)
		node_free(v);
	return s;
}

long view_lookup(struct fs *fs, uint32_t parent, const char *name)
{
	return view_lookup_hold(fs, parent, name, VIEW_PIN);
}

/* Takes slot S's entry out of its chain and frees it.  Under the lock. */
static void release(struct view_table *t, size_t s)
{
	struct view_node *v = t->items[s];
	uint32_t *link = &t->buckets[v->hash & (t->n_buckets - 1)];

	while (*link != s + 1)
		link = &t->items[*link - 1]->next;
	*link = v->next;
	t->items[s] = NULL;
	t->free_slots[t->n_free++] = (uint32_t)s;
	t->live--;
	t->capped -= v->capped;
	node_free(v);
}

void view_forget(struct view_table *t, size_t index, uint64_t n)
{
	pthread_mutex_lock(&t->lock);
	struct view_node *v = index < t->n ? t->items[index] : NULL;
	if (v) {
		v->nlookup -= n < v->nlookup ? n : v->nlookup;
		if (v->nlookup == 0 && !v->pinned)
			release(t, index);
	}
	pthread_mutex_unlock(&t->lock);
}
