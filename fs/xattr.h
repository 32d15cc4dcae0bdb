/* Extended attributes: the values of docs/CONTRACT.md's table, built on demand. */
#ifndef FS_XATTR_H
#define FS_XATTR_H

#include <stddef.h>

#include "fs.h"

#define XATTR_PREFIX "user.safetensors."

/*
 * The attribute `name` of node N, or of view V when V is not NULL (N is then V's
 * tensor); *value is malloc'ed.  Returns 0, -ENODATA for a name it lacks, or -ENOMEM.
 */
int xattr_get(const struct fs *fs, const struct node *n, const struct view_node *v, const char *name,
	      char **value, size_t *len);

/* The NUL-separated list of every name xattr_get answers; *list is malloc'ed. */
int xattr_list(const struct fs *fs, const struct node *n, const struct view_node *v, char **list, size_t *len);

#endif
