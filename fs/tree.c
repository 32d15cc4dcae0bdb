/*
 * Building the inode table: directories for every '.'-separated prefix
 * (tree layout) or none (flat layout), then one file per tensor, then the
 * per-directory child lists that readdir walks.
 */
#include "tree.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "escape.h"

static const struct {
	const char *name;
	enum node_kind kind;
} reserved[] = {{".header.json", NODE_HEADER_JSON}, {".metadata.json", NODE_METADATA_JSON},
		{".control", NODE_CONTROL}};

static uint64_t hash_key(uint32_t parent, const char *name, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ parent;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)name[i]) * 0x100000001b3ULL;
	return h ^ (h >> 29);
}

/* A slot holds the key's 32-bit hash tag above node index + 1, so probes rarely touch nodes. */
static uint64_t slot_value(uint64_t hash, size_t node)
{
	return (hash >> 32) << 32 | (uint64_t)(node + 1);
}

/* The node's index, or -1 with *slot set to where it would go. */
static long find(const struct tree *t, uint32_t parent, const char *name, size_t len, size_t *slot)
{
	size_t mask = t->n_slots - 1;
	uint64_t hash = hash_key(parent, name, len);

	for (size_t i = hash & mask;; i = (i + 1) & mask) {
		uint64_t v = t->slots[i];
		if (v == 0) {
			*slot = i;
			return -1;
		}
		if (v >> 32 != hash >> 32)
			continue;
		const struct node *n = &t->nodes[(uint32_t)v - 1];
		if (n->parent == parent && n->name_len == len && memcmp(t->names + n->name, name, len) == 0)
			return (long)(uint32_t)v - 1;
	}
}

long tree_lookup(const struct tree *t, uint32_t parent, const char *name, size_t len)
{
	size_t slot;

	return t->n_slots ? find(t, parent, name, len, &slot) : -1;
}

/* Keep the table at most half full so probes stay short. */
static int grow_slots(struct tree *t)
{
	size_t n = t->n_slots ? t->n_slots * 2 : 1024;
	uint64_t *old = t->slots;
	size_t old_n = t->n_slots, slot;

	if (!(t->slots = calloc(n, sizeof(*t->slots)))) {
		t->slots = old;
		return -ENOMEM;
	}
	t->n_slots = n;
	for (size_t i = 0; i < old_n; i++) {
		if (!old[i])
			continue;
		const struct node *nd = &t->nodes[(uint32_t)old[i] - 1];
		find(t, nd->parent, t->names + nd->name, nd->name_len, &slot);
		t->slots[slot] = old[i];
	}
	free(old);
	return 0;
}

/* Appends a node named `name` under `parent`; the caller has checked it is new. */
static long add_node(struct tree *t, uint32_t parent, const char *name, size_t len, enum node_kind kind)
{
	size_t slot;
	struct node *n;

	if ((t->n_nodes + 1) * 2 > t->n_slots && grow_slots(t))
		return -ENOMEM;
	if (t->n_nodes >= UINT32_MAX - 1 || t->n_names + len + 1 > UINT32_MAX ||
	    st_reserve(&t->nodes, &t->cap_nodes, t->n_nodes + 1, sizeof(*t->nodes)) ||
	    st_reserve(&t->names, &t->cap_names, t->n_names + len + 1, 1))
		return -ENOMEM;
	memcpy(t->names + t->n_names, name, len);
	t->names[t->n_names + len] = '\0';
	n = &t->nodes[t->n_nodes];
	*n = (struct node){.parent = parent, .name = (uint32_t)t->n_names, .name_len = (uint32_t)len,
			   .kind = (uint8_t)kind};
	t->n_names += len + 1;
	if (find(t, parent, name, len, &slot) < 0)
		t->slots[slot] = slot_value(hash_key(parent, name, len), t->n_nodes);
	return (long)t->n_nodes++;
}

/* The directory `part` under `parent`, made if missing. */
static long dir_for(struct tree *t, uint32_t parent, const char *part, size_t len, char *scratch)
{
	size_t elen = name_part(scratch, part, len, parent == 0, NAME_MAX);
	long i = tree_lookup(t, parent, scratch, elen);

	return i >= 0 ? i : add_node(t, parent, scratch, elen, NODE_DIR);
}

/*
 * The parts of the previous tensor's name and their directories.  Names in a
 * header come sorted, so most share their leading parts with the one before:
 * those directories are reused without a lookup.
 */
struct prefix {
	const char *name;
	size_t depth, cap;
	size_t *ends;   /* where part d of `name` ends (at a '.') */
	uint32_t *dirs; /* the directory that part d names */
};

static int remember(struct prefix *p, size_t d, size_t end, uint32_t dir)
{
	if (d >= p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		size_t *ends = realloc(p->ends, cap * sizeof(*ends));
		if (!ends)
			return -ENOMEM;
		p->ends = ends;
		uint32_t *dirs = realloc(p->dirs, cap * sizeof(*dirs));
		if (!dirs)
			return -ENOMEM;
		p->dirs = dirs;
		p->cap = cap;
	}
	p->ends[d] = end;
	p->dirs[d] = dir;
	return 0;
}

/* The directory that holds a tensor called `name`, made (with its parents) where missing. */
static long parent_dir(struct tree *t, struct prefix *p, long base, const char *name, size_t len,
		       char *scratch)
{
	size_t d = 0, start = 0;
	int same = 1;
	const char *dot;
	long dir = base;

	for (; (dot = memchr(name + start, '.', len - start)); d++, start = (size_t)(dot - name) + 1) {
		size_t end = (size_t)(dot - name);
		same = same && d < p->depth && p->ends[d] == end &&
		       memcmp(name + start, p->name + start, end - start) == 0;
		if (same)
			dir = p->dirs[d];
		else if ((dir = dir_for(t, (uint32_t)dir, name + start, end - start, scratch)) < 0 ||
			 remember(p, d, end, (uint32_t)dir) < 0)
			return dir < 0 ? dir : -ENOMEM;
	}
	p->name = name;
	p->depth = d;
	return dir;
}

/* Pass 1: the directories of every tensor's name; remembers each tensor's parent. */
static int make_dirs(struct tree *t, const struct st_header *h, const uint8_t *hidden, enum layout layout,
		     long base, uint32_t *parents, char *scratch)
{
	struct prefix p = {0};
	int rc = 0;

	for (size_t i = 0; i < h->n_tensors && !rc; i++) {
		if (hidden && hidden[i])
			continue;
		long dir = layout == LAYOUT_FLAT ? base :
			parent_dir(t, &p, base, st_tensor_name(h, &h->tensors[i]), h->tensors[i].name_len, scratch);
		if (dir < 0)
			rc = (int)dir;
		else
			parents[i] = (uint32_t)dir;
	}
	free(p.ends);
	free(p.dirs);
	return rc;
}

/* Pass 2: one file per tensor, renamed with COLLISION_SUFFIX where a directory took its name. */
static int make_files(struct tree *t, const struct st_header *h, const uint8_t *hidden, enum layout layout,
		      uint32_t shard, const uint32_t *parents, char *scratch)
{
	for (size_t i = 0; i < h->n_tensors; i++) {
		if (hidden && hidden[i]) /* a packed part: its dense tensor stands for it */
			continue;
		const struct st_tensor *ts = &h->tensors[i];
		const char *name = st_tensor_name(h, ts);
		const char *dot = layout == LAYOUT_TREE ? memrchr(name, '.', ts->name_len) : NULL;
		const char *last = dot ? dot + 1 : name;
		size_t len;
		long n;

		size_t part = ts->name_len - (size_t)(last - name), suffix = strlen(COLLISION_SUFFIX);
		len = name_part(scratch, last, part, parents[i] == 0, NAME_MAX);
		if (tree_lookup(t, parents[i], scratch, len) >= 0) {
			/* The suffix must fit too: a name it would make too long takes its alias. */
			if (len + suffix > NAME_MAX)
				len = name_part(scratch, last, part, parents[i] == 0, NAME_MAX - suffix);
			memcpy(scratch + len, COLLISION_SUFFIX, sizeof(COLLISION_SUFFIX));
			len += strlen(COLLISION_SUFFIX);
		}
		if ((n = add_node(t, parents[i], scratch, len, NODE_TENSOR)) < 0)
			return (int)n;
		t->nodes[n].tensor.shard = shard;
		t->nodes[n].tensor.index = (uint32_t)i;
	}
	return 0;
}

/*
 * A diffusers-style folder's subfolder, or a file of a folder of unrelated files, is a
 * top-level directory ("unet", "style_a"; "loras/style_a" is two levels); the model
 * itself is the root.
 */
static long component_dir(struct tree *t, const struct source *src, uint32_t c, char *scratch)
{
	const char *name = src->components[c].name, *slash;
	long dir = 0;

	if (!name[0])
		return 0;
	for (; dir >= 0; name = slash + 1) {
		slash = strchr(name, '/');
		size_t len = slash ? (size_t)(slash - name) : strlen(name);
		dir = dir_for(t, (uint32_t)dir, name, len, scratch);
		if (!slash)
			break;
	}
	if (dir >= 0)
		t->nodes[dir].dir.component = c + 1;
	return dir;
}

/*
 * Whether readdir lists the node.  /.control is reachable by name only: listed, it would
 * make another user's cp -r, tar or grep -r over the mount fail on its mode 0600.
 */
static bool listed(const struct node *n)
{
	return n->kind != NODE_CONTROL;
}

/* Child lists in creation order, so readdir is stable and cheap. */
static int link_children(struct tree *t)
{
	uint32_t *fill;

	if (!(t->children = malloc(t->n_nodes * sizeof(*t->children))) ||
	    !(fill = calloc(t->n_nodes, sizeof(*fill))))
		return -ENOMEM;
	for (size_t i = 1; i < t->n_nodes; i++) {
		if (!listed(&t->nodes[i]))
			continue;
		struct node *p = &t->nodes[t->nodes[i].parent];
		p->dir.count++;
		p->dir.subdirs += t->nodes[i].kind == NODE_DIR;
	}
	uint32_t next = 0;
	for (size_t i = 0; i < t->n_nodes; i++) {
		if (t->nodes[i].kind != NODE_DIR)
			continue;
		t->nodes[i].dir.first = next;
		next += t->nodes[i].dir.count;
	}
	for (size_t i = 1; i < t->n_nodes; i++) {
		if (!listed(&t->nodes[i]))
			continue;
		struct node *p = &t->nodes[t->nodes[i].parent];
		t->children[p->dir.first + fill[t->nodes[i].parent]++] = (uint32_t)i;
	}
	free(fill);
	return 0;
}

static int build(struct tree *t, const struct source *src, enum layout layout)
{
	size_t max_name = 0, total = 0;

	for (size_t c = 0; c < src->n_components; c++)
		if (strlen(src->components[c].name) > max_name)
			max_name = strlen(src->components[c].name);
	uint32_t *parents;
	char *scratch;
	int rc = 0;

	size_t n_shards = src->n_shards + src->n_dense;

	for (size_t s = 0; s < n_shards; s++) {
		const struct st_header *h = &src->shards[s].hdr;
		for (size_t i = 0; i < h->n_tensors; i++)
			if (h->tensors[i].name_len > max_name)
				max_name = h->tensors[i].name_len;
		total += h->n_tensors;
	}
	scratch = malloc(ESCAPED_MAX(max_name) + sizeof(COLLISION_SUFFIX));
	parents = malloc((total ? total : 1) * sizeof(*parents));
	if (!scratch || !parents || add_node(t, 0, "", 0, NODE_DIR) < 0)
		rc = -ENOMEM;
	for (size_t i = 0; i < sizeof(reserved) / sizeof(*reserved) && !rc; i++)
		if (add_node(t, 0, reserved[i].name, strlen(reserved[i].name), reserved[i].kind) < 0)
			rc = -ENOMEM;
	/* All directories first, so a tensor file never takes a name a directory needs. */
	for (size_t s = 0, first = 0; s < n_shards && !rc; first += src->shards[s++].hdr.n_tensors) {
		const struct shard *sh = &src->shards[s];
		long base = component_dir(t, src, sh->component, scratch);
		rc = base < 0 ? (int)base : make_dirs(t, &sh->hdr, sh->hidden, layout, base, parents + first, scratch);
	}
	for (size_t s = 0, first = 0; s < n_shards && !rc; first += src->shards[s++].hdr.n_tensors)
		rc = make_files(t, &src->shards[s].hdr, src->shards[s].hidden, layout, (uint32_t)s, parents + first,
				scratch);
	if (!rc)
		rc = link_children(t);
	free(scratch);
	free(parents);
	return rc;
}

int tree_build(struct tree *t, const struct source *src, enum layout layout, char *err, size_t errlen)
{
	int rc;

	memset(t, 0, sizeof(*t));
	if ((rc = build(t, src, layout)) < 0) {
		snprintf(err, errlen, "out of memory while building the tree of %zu nodes", t->n_nodes);
		tree_free(t);
	}
	return rc;
}

void tree_free(struct tree *t)
{
	free(t->nodes);
	free(t->names);
	free(t->children);
	free(t->slots);
	memset(t, 0, sizeof(*t));
}
