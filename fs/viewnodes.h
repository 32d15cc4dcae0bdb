/*
 * Views resolved at lookup (fs/view.c) get inode numbers after the tree's:
 * the view in slot i is inode tree.n_nodes + 1 + i.
 *
 * Any user of the mount can name views, so the table must not grow with
 * them: entries live while something holds them and their slots are reused.
 * The kernel holds an entry from each LOOKUP (or READDIRPLUS entry) it was
 * given until FORGET says it dropped them all; a slot reused for another view
 * gets a new generation, so (inode, generation) never means two views.
 * Holders the kernel does not count (the control file's uploads, plain
 * -o listviews listings, which report inode numbers without a lookup) pin
 * their entry until unmount; listings pin at most one entry per tensor.
 *
 * Entries the kernel holds or the control file pins are capped at
 * VIEW_TABLE_CAP; past it a new view is refused with ENFILE until the kernel
 * forgets some (it does under memory pressure, or at drop_caches).
 */
#ifndef FS_VIEWNODES_H
#define FS_VIEWNODES_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "view.h"

/* At about 300 bytes an entry (name, plan, .npy header), some 20 MiB at most. */
#define VIEW_TABLE_CAP 65536

struct view_node {
	uint32_t tensor;         /* the tree node of the tensor it views */
	uint32_t parent;         /* the directory it was looked up in */
	char *name;
	struct view_plan plan;   /* read-only after creation */
	uint64_t src_start;      /* where the plan's source begins in the tensor's shard: the tensor's
				  * bytes, or a dense tensor's F32 image (dequant.h) */
	uint64_t generation;     /* of its slot when made: FUSE's entry generation */
	/* The rest is the table's, under its lock. */
	uint64_t nlookup;        /* the kernel's references */
	bool pinned;             /* held until unmount */
	bool capped;             /* counts towards VIEW_TABLE_CAP */
	uint64_t hash;
	uint32_t next;           /* slot + 1 of the next entry in its bucket; 0 ends it */
};

enum view_hold {
	VIEW_REF,     /* one more kernel reference, released by view_forget */
	VIEW_PIN,     /* kept until unmount, within the cap (the control file) */
	VIEW_LISTED,  /* kept until unmount, outside the cap: one per tensor at most */
};

/*
 * Gathered view reads waiting for a thread allowed to gather (ops.c): gathers may be slow
 * (a pread per run), so only some of the threads do them at once and the others stay free
 * for everyone else's requests.
 */
struct view_job;

struct view_queue {
	pthread_mutex_t lock;
	struct view_job *head, *tail;
	unsigned busy; /* threads gathering now */
};

struct view_table {
	struct view_queue gathers;
	pthread_mutex_t lock;
	struct view_node **items;  /* by slot; NULL: free */
	uint64_t *generations;     /* by slot: how often it was given out */
	uint32_t *free_slots;      /* a stack of the NULL slots */
	size_t n, cap, n_free;     /* slots in use or freed, allocated, free */
	uint32_t *buckets;         /* slot + 1 of each chain's first entry */
	size_t n_buckets;          /* a power of two, or 0 */
	size_t live, capped;       /* entries, and those within the cap */
	size_t limit;              /* VIEW_TABLE_CAP */
};

struct fs;

int view_table_init(struct view_table *t);
void view_table_free(struct view_table *t);

/*
 * The view `name` in directory `parent`, made if new, held as HOW says: its
 * slot, or -ENOENT (no such view: the kernel may cache that), -ENOMEM, or
 * -ENFILE when the cap is reached (neither of which it may cache).
 */
long view_lookup_hold(struct fs *fs, uint32_t parent, const char *name, enum view_hold how);

/* view_lookup_hold(..., VIEW_PIN), for the control file. */
long view_lookup(struct fs *fs, uint32_t parent, const char *name);

/* The kernel dropped N references to slot INDEX (FORGET); the entry goes with the last. */
void view_forget(struct view_table *t, size_t index, uint64_t n);

/* The entry in slot INDEX, or NULL.  It stays valid while its holder holds it. */
const struct view_node *view_get(struct view_table *t, size_t index);

#endif
