/*
 * The inode table: built once at mount from the parsed headers and never
 * changed, so lookups need no locks.  Inode number = node index + 1, which
 * makes the root FUSE_ROOT_ID.
 */
#ifndef FS_TREE_H
#define FS_TREE_H

#include <stddef.h>
#include <stdint.h>

#include "source.h"

enum node_kind { NODE_DIR, NODE_TENSOR, NODE_HEADER_JSON, NODE_METADATA_JSON, NODE_CONTROL };

enum layout { LAYOUT_TREE, LAYOUT_FLAT };

/* A tensor whose file name is also a directory (tensors a.b and a.b.c) gets this suffix. */
#define COLLISION_SUFFIX ".tensor"

struct node {
	uint32_t parent;
	uint32_t name, name_len; /* the escaped entry name, in tree.names */
	uint8_t kind;            /* enum node_kind */
	union {
		struct {
			uint32_t first, count; /* listed children: tree.children[first .. first+count) */
			uint32_t subdirs;      /* for st_nlink, which find(1) may trust */
			uint32_t component;    /* 1 + the source component it is the directory of; 0: none */
		} dir;
		struct {
			uint32_t shard, index; /* source.shards[shard].hdr.tensors[index] */
		} tensor;
	};
};

struct tree {
	struct node *nodes;
	size_t n_nodes, cap_nodes;
	char *names;
	size_t n_names, cap_names;
	uint32_t *children;
	uint64_t *slots; /* open addressing on (parent, name): hash tag and node index + 1; 0 = empty */
	size_t n_slots;
};

/* Returns 0, or a negative errno with one line in `err`. */
int tree_build(struct tree *t, const struct source *src, enum layout layout, char *err, size_t errlen);
void tree_free(struct tree *t);

/* The child of `parent` called `name`, or -1. */
long tree_lookup(const struct tree *t, uint32_t parent, const char *name, size_t len);

static inline const char *node_name(const struct tree *t, const struct node *n)
{
	return t->names + n->name;
}

#endif
