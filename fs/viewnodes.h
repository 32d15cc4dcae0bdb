/*
 * Views resolved at lookup (fs/view.c) get inode numbers after the tree's:
 * view i is inode tree.n_nodes + 1 + i.  The table only grows while mounted,
 * so an inode number, once given to the kernel, always means the same view.
 */
#ifndef FS_VIEWNODES_H
#define FS_VIEWNODES_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "view.h"

struct view_node {
	uint32_t tensor;         /* the tree node of the tensor it views */
	uint32_t parent;         /* the directory it was looked up in */
	char *name;
	struct view_plan plan;   /* read-only after creation */
};

struct view_table {
	pthread_mutex_t lock;
	struct view_node **items;
	size_t n, cap;
};

struct fs;

int view_table_init(struct view_table *t);
void view_table_free(struct view_table *t);

/* The view `name` in directory `parent`: its index, or -ENOENT / -ENOMEM. */
long view_lookup(struct fs *fs, uint32_t parent, const char *name);
const struct view_node *view_get(struct view_table *t, size_t index);

#endif
