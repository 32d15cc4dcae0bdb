/*
 * The lowlevel operations: answers to the kernel from the immutable tree.
 * Tensor bytes go from the backing file to the kernel as fd buffers
 * (spliced where enabled), never through a copy the daemon keeps.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fs.h"
#include "readahead.h"
#include "loop.h"
#include "xattr.h"

/* The tree never changes while mounted, so the kernel may cache it for as long as it likes. */
#define TIMEOUT (86400.0 * 365)
#define BLOCK 4096
/* Advertised as st_blksize so that cat, cp and Python read in max_read-sized requests. */
#define IO_BLOCK (1 << 20)

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static const struct node *node_of(const struct fs *fs, fuse_ino_t ino)
{
	return ino >= 1 && ino <= fs->tree.n_nodes ? &fs->tree.nodes[ino - 1] : NULL;
}

/* A view looked up by name (viewnodes.h), or NULL. */
static const struct view_node *view_of(const struct fs *fs, fuse_ino_t ino)
{
	if (ino <= fs->tree.n_nodes)
		return NULL;
	/* The table's lock is not part of the tree's immutability: it is the one mutable thing here. */
	return view_get((struct view_table *)&fs->views, ino - fs->tree.n_nodes - 1);
}

/* One shard's header as stored, or {"label":header,...} for several (source.h). */
static uint64_t header_json_size(const struct source *src)
{
	uint64_t size = 0;

	for (size_t i = 0; i < src->n_shards; i++)
		size += src->shards[i].hdr.header_len + (src->glue ? strlen(src->glue[i]) : 0);
	return size + (src->glue ? strlen(src->glue[src->n_shards]) : 0);
}

static uint64_t node_size(const struct fs *fs, const struct node *n)
{
	const struct st_header *h = &shard_of(fs, n)->hdr;

	switch (n->kind) {
	case NODE_TENSOR:
		return st_tensor_nbytes(&h->tensors[n->tensor.index]);
	case NODE_HEADER_JSON:
		return header_json_size(&fs->src);
	case NODE_METADATA_JSON:
		return fs->src.metadata.json_len;
	case NODE_CONTROL:
		return 0;
	default:
		return BLOCK;
	}
}

static void fill_stat(const struct fs *fs, fuse_ino_t ino, struct stat *st)
{
	const struct view_node *v = view_of(fs, ino);
	const struct node *n = v ? &fs->tree.nodes[v->tensor] : node_of(fs, ino);
	const struct shard *sh = shard_of(fs, n);
	uint64_t size = v ? v->plan.size : node_size(fs, n);

	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (n->kind == NODE_CONTROL) {
		/* Whatever -o uid=, gid= and umask= say: it shows who open_control lets in. */
		st->st_mode = S_IFREG | 0600;
		st->st_uid = fs->uid;
		st->st_gid = fs->gid;
	} else {
		mode_t perm = (n->kind == NODE_DIR ? 0555 : 0444) & ~fs->umask_bits;

		st->st_mode = (n->kind == NODE_DIR ? S_IFDIR : S_IFREG) | perm;
		st->st_uid = fs->file_uid;
		st->st_gid = fs->file_gid;
	}
	st->st_nlink = n->kind == NODE_DIR ? 2 + n->dir.subdirs : 1;
	st->st_size = (off_t)size;
	/* Directories keep 4 KiB: glibc sizes its getdents buffer by st_blksize (32 KiB at
	 * least), and the kernel allocates (and maps) a reply buffer that large per call. */
	st->st_blksize = n->kind == NODE_DIR ? BLOCK : IO_BLOCK;
	/* What the node holds on disk: directories hold nothing (du adds up st_blocks). */
	st->st_blocks = n->kind == NODE_DIR ? 0 : (blkcnt_t)((size + 511) / 512);
	st->st_atim = st->st_mtim = st->st_ctim = sh->store->mtime;
}

static void fill_entry(const struct fs *fs, fuse_ino_t ino, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	const struct view_node *v = view_of(fs, ino);

	e->ino = ino;
	/* A view's slot is reused once the kernel forgot it: the generation tells the two apart. */
	e->generation = v ? v->generation : 1;
	e->attr_timeout = e->entry_timeout = TIMEOUT;
	fill_stat(fs, ino, &e->attr);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;

	/* Immutable files: nothing to invalidate when mtime is seen again. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Readdirplus always: in libfuse's default "auto" mode the kernel turns to plain READDIR
	 * after the first buffer and then sends a LOOKUP for most entries it stats (799 of 1001
	 * directories, measured); every entry's attributes come with the listing instead. */
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	/* Off unless -o splice_write asks (fuse_apply_conn_info_opts): measured in docs/BENCHMARKS.md. */
	conn->want &= ~FUSE_CAP_SPLICE_WRITE;
	/* More readahead requests in flight keep a sequential reader's pipe full. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	if (fs->conn_opts)
		fuse_apply_conn_info_opts(fs->conn_opts, conn);
	fs->splice_write = (conn->want & FUSE_CAP_SPLICE_WRITE) != 0;
	fs->no_opendir = (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
	/* The reply's max_readahead lowers the window; set both, the window first (readahead.h). */
	if (fs->opt.read_ahead_kb) {
		int rc = readahead_set(fs->mountpoint, fs->opt.read_ahead_kb);
		if (rc == 0)
			conn->max_readahead = fs->opt.read_ahead_kb * 1024u;
		else if (fs->debug)
			fprintf(stderr, "safetensorsfs: cannot set the readahead window to %u KiB: %s\n",
				fs->opt.read_ahead_kb, strerror(-rc));
	}
	/* -o max_readahead caps that window. */
	if (conn->max_readahead > fs->opt.max_readahead)
		conn->max_readahead = fs->opt.max_readahead;
	/* libfuse 3.14 fails INIT (the mount is gone at once) unless max_read is the
	 * -o max_read it mounted with, 0 when not given. */
	conn->max_read = fs->opt.max_read;
	/* auto_unmount's fusermount3 unmounts only where opening the mountpoint fails with
	 * ENOTCONN, which a dead mount whose kernel was told to skip OPENDIR never answers. */
	if (fs->opt.auto_unmount)
		fs->no_opendir = 0;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	const struct node *p = node_of(fs, parent);
	struct fuse_entry_param e;
	long i, v = -1;

	if (!p || p->kind != NODE_DIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	i = tree_lookup(&fs->tree, (uint32_t)(parent - 1), name, strlen(name));
	if (i >= 0 && fs->tree.nodes[i].kind == NODE_CONTROL && fs->opt.read_only)
		i = -1; /* -o ro: no uploads, so no /.control */
	else if (i < 0 && (i = v = view_lookup_hold(fs, (uint32_t)(parent - 1), name, VIEW_REF)) >= 0)
		i += (long)fs->tree.n_nodes; /* a real entry of that name wins, as docs/CONTRACT.md says */
	if (i == -1 || i == -ENOENT) {
		/* A cached negative entry: the name cannot appear later. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = TIMEOUT;
		fuse_reply_entry(req, &e);
		return;
	}
	if (i < 0) {
		/* Out of memory, or the view table full: the kernel caches no error but ENOENT. */
		fuse_reply_err(req, (int)-i);
		return;
	}
	fill_entry(fs, (fuse_ino_t)i + 1, &e);
	/* A reply the kernel no longer waits for gives it no reference to count. */
	if (fuse_reply_entry(req, &e) != 0 && v >= 0)
		view_forget(&fs->views, (size_t)v, 1);
}

/* The kernel dropped NLOOKUP references to INO: only views are ever let go. */
static void forget_one(struct fs *fs, fuse_ino_t ino, uint64_t nlookup)
{
	if (ino > fs->tree.n_nodes)
		view_forget(&fs->views, ino - fs->tree.n_nodes - 1, nlookup);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(fs_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(fs_of(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct stat st;

	(void)fi;
	if (!node_of(fs, ino) && !view_of(fs, ino)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_stat(fs, ino, &st);
	fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct node *n = node_of(fs_of(req), ino);

	if (!n || n->kind != NODE_DIR) {
		fuse_reply_err(req, n ? ENOTDIR : ENOENT);
		return;
	}
	/* Where the kernel can do without OPENDIR, say so: it then caches every listing (as
	 * FOPEN_CACHE_DIR would) and sends neither OPENDIR nor RELEASEDIR again, two round trips
	 * per directory of a walk. */
	if (fs_of(req)->no_opendir) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

/* Adds one entry; returns its size, or 0 when it no longer fits. */
static size_t add_entry(fuse_req_t req, char *buf, size_t left, const char *name, fuse_ino_t ino,
			off_t next, int plus)
{
	const struct fs *fs = fs_of(req);
	struct fuse_entry_param e;

	fill_entry(fs, ino, &e);
	if (!plus)
		return fuse_add_direntry(req, buf, left, name, &e.attr, next);
	/* The kernel takes no lookup reference for an entry without a node id: not for . and ..,
	 * and not for views, which would otherwise count against the view table's cap. */
	if (ino > fs->tree.n_nodes || (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))))
		e.ino = 0;
	return fuse_add_direntry_plus(req, buf, left, name, &e, next);
}

/*
 * The .npy view listed after tensor CHILD of directory DIR (-o listviews): its slot, -1 when
 * there is none to list (not a tensor, a real file of that name, a name too long), or a
 * negative errno.  Listings give the kernel no reference to views (add_entry), so that a
 * listing of any size never meets the view table's cap; the entry is pinned instead (one per
 * tensor at most), and the inode number listed stays true.
 */
static long listed_view(struct fs *fs, fuse_ino_t dir, fuse_ino_t child, char *npy)
{
	const char *name = node_name(&fs->tree, node_of(fs, child));

	if (node_of(fs, child)->kind != NODE_TENSOR ||
	    (size_t)snprintf(npy, NAME_MAX + 1, "%s.npy", name) > NAME_MAX ||
	    tree_lookup(&fs->tree, (uint32_t)(dir - 1), npy, strlen(npy)) >= 0)
		return -1;
	long v = view_lookup_hold(fs, (uint32_t)(dir - 1), npy, VIEW_LISTED);
	return v == -ENOENT ? -1 : v;
}

/* Adds listing offset I of directory D: its size, 0 when it does not fit, or a negative errno. */
static long add_offset(fuse_req_t req, const struct node *d, fuse_ino_t ino, off_t i, char *buf,
		       size_t left, int plus)
{
	struct fs *fs = fs_of(req);
	off_t per = fs->opt.listviews ? 2 : 1;
	char npy[NAME_MAX + 1];
	fuse_ino_t child;
	const char *name;
	long v = -1;

	if (i < 2) {
		child = i == 0 ? ino : d->parent + 1;
		name = i == 0 ? "." : "..";
	} else {
		child = (fuse_ino_t)fs->tree.children[d->dir.first + (size_t)(i - 2) / (size_t)per] + 1;
		name = node_name(&fs->tree, node_of(fs, child));
		if ((i - 2) % per) {
			if ((v = listed_view(fs, ino, child, npy)) < 0)
				return v; /* -1: nothing to list here */
			child = (fuse_ino_t)(fs->tree.n_nodes + 1 + (size_t)v);
			name = npy;
		}
	}
	size_t n = add_entry(req, buf, left, name, child, i + 1, plus);
	return n > left ? 0 : (long)n;
}

static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
	struct fs *fs = fs_of(req);
	const struct node *d = node_of(fs, ino);
	char *buf;
	size_t used = 0;
	long n = 0;

	if (!d || d->kind != NODE_DIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (!(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/*
	 * Offsets 0 and 1 are "." and "..", then the children in order; with
	 * -o listviews every child takes two offsets, the second for its .npy view.
	 */
	off_t end = (off_t)d->dir.count * (fs->opt.listviews ? 2 : 1) + 2;
	for (off_t i = off; i < end; i++) {
		if ((n = add_offset(req, d, ino, i, buf + used, size - used, plus)) == 0 || n < -1)
			break;
		if (n > 0)
			used += (size_t)n;
	}
	/* A view that could not be made ends this reply early; with nothing in it, it is an error. */
	if (n < -1 && used == 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, 1);
}

/* Owner-only whatever the mount options: the kernel checks modes only with default_permissions.
 * The owner is the mounting user (and root), also where -o uid= shows others as the files' owner:
 * uploads hold GPU memory and /dev/shm of the daemon's user. */
static void open_control(fuse_req_t req, struct fuse_file_info *fi)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct control_session *s;

	if (ctx->uid != fs_of(req)->uid && ctx->uid != 0) {
		fuse_reply_err(req, EACCES);
		return;
	}
	if (!(s = control_open(&fs_of(req)->control))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)s;
	fi->direct_io = 1; /* replies are per open: never cached */
	fi->nonseekable = 1;
	fuse_reply_open(req, fi);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	const struct node *n = node_of(fs_of(req), ino);
	int rc;

	(void)off;
	if (!n || n->kind != NODE_CONTROL) {
		fuse_reply_err(req, EROFS);
		return;
	}
	rc = control_write((struct control_session *)(uintptr_t)fi->fh, data, size);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_write(req, size);
}

/* Only /.control has anything to do at close: the commands it has queued. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct node *n = node_of(fs_of(req), ino);

	if (n && n->kind == NODE_CONTROL)
		control_flush(fs_of(req), (struct control_session *)(uintptr_t)fi->fh, req);
	fuse_reply_err(req, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct node *n = node_of(fs_of(req), ino);

	if (n && n->kind == NODE_CONTROL)
		control_close((struct control_session *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct view_node *v = view_of(fs_of(req), ino);
	const struct node *n = v ? &fs_of(req)->tree.nodes[v->tensor] : node_of(fs_of(req), ino);

	if (!n) {
		fuse_reply_err(req, ENOENT);
	} else if (n->kind == NODE_DIR) {
		fuse_reply_err(req, EISDIR);
	} else if (n->kind == NODE_CONTROL) {
		open_control(req, fi);
	} else if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
	} else {
		/* The bytes cannot change while mounted: keep them cached across opens. */
		fi->keep_cache = 1;
		fi->noflush = 1;
		fuse_reply_open(req, fi);
	}
}

/*
 * Every reply the daemon builds itself: fill a buffer, then check the backing
 * file after the read (writers update mtime before they change bytes), so a
 * truncated, rewritten or deleted file never shows wrong or short data.
 */
typedef int fill_fn(const void *ctx, char *buf, size_t size);

static void reply_filled(fuse_req_t req, const struct shard *checked, size_t size, fill_fn *fill,
			 const void *ctx)
{
	struct bufpool *pool = &fs_of(req)->replies;
	char *buf = bufpool_get(pool, size);
	int rc = buf ? fill(ctx, buf, size) : -ENOMEM;

	if (rc == 0 && checked && shard_changed(checked))
		rc = -EIO;
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_buf(req, buf, size);
	bufpool_put(pool, buf, size);
}

struct backing_range {
	const struct shard *sh;
	uint64_t pos;
	struct loop *loop;
};

/* What the page cache holds comes at once; before waiting on the disk, other requests get a reader. */
static int fill_backing(const void *ctx, char *buf, size_t size)
{
	const struct backing_range *r = ctx;
	size_t got = shard_pread_cached(r->sh, buf, size, r->pos);

	if (got == size)
		return 0;
	loop_step_aside(r->loop);
	return shard_pread(r->sh, buf + got, size - got, r->pos + got);
}

/*
 * Bytes of the backing file at `pos`.  The check after the read is what keeps
 * a truncated, rewritten or deleted backing file from ever showing wrong or
 * short data: writers update mtime before they change bytes.
 */
static void reply_from_backing(fuse_req_t req, const struct fs *fs, const struct shard *sh,
			       uint64_t pos, size_t size)
{
	if (fs->splice_write && sh->store->fd >= 0) {
		/* Spliced replies cannot be checked after the read; check before. */
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = sh->store->fd;
		bv.buf[0].pos = (off_t)pos;
		if (shard_changed(sh))
			fuse_reply_err(req, EIO);
		else
			fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	struct backing_range r = {sh, pos, fs->loop};
	reply_filled(req, sh, size, fill_backing, &r);
}

/* Copies the part of [at, at+len) of one piece that overlaps the request [off, off+size). */
static int copy_piece(char *buf, uint64_t off, size_t size, uint64_t at, uint64_t len,
		      const char *mem, const struct shard *sh)
{
	uint64_t from = off > at ? off : at, to = off + size < at + len ? off + size : at + len;

	if (from >= to)
		return 0;
	if (mem) {
		memcpy(buf + (from - off), mem + (from - at), to - from);
		return 0;
	}
	return shard_pread(sh, buf + (from - off), to - from, 8 + (from - at));
}

struct header_request {
	const struct source *src;
	uint64_t off;
};

/* {"label":header,...}: glue from memory, each header from its shard, each shard checked. */
static int fill_header_json(const void *ctx, char *buf, size_t size)
{
	const struct header_request *r = ctx;
	const struct source *src = r->src;
	uint64_t at = 0;
	int rc = 0;

	for (size_t i = 0; i <= src->n_shards && !rc; i++) {
		size_t glen = strlen(src->glue[i]);
		rc = copy_piece(buf, r->off, size, at, glen, src->glue[i], NULL);
		at += glen;
		if (i < src->n_shards && !rc) {
			const struct shard *sh = &src->shards[i];
			rc = copy_piece(buf, r->off, size, at, sh->hdr.header_len, NULL, sh);
			if (!rc && shard_changed(sh))
				rc = -EIO;
			at += sh->hdr.header_len;
		}
	}
	return rc;
}

static void reply_header_json(fuse_req_t req, const struct source *src, uint64_t off, size_t size)
{
	struct header_request r = {src, off};

	if (src->remote) /* the headers are fetched again: others' requests are read meanwhile */
		loop_step_aside(fs_of(req)->loop);

	reply_filled(req, NULL, size, fill_header_json, &r);
}

/*
 * A view with many small runs close together (a column of a matrix) would cost a pread per
 * run: 16,384 of 4 bytes for 64 KiB of one float column.  Its source is read instead in
 * windows of the span the request covers, at most WINDOW_MAX bytes each, and the runs copied
 * out of them.  Only where the gaps are small: copying a gap costs less than a system call
 * only up to a few KiB, and sparser runs are read one by one as before.
 */
#define WINDOW_MAX (1u << 20)
#define WINDOW_GAP 4096 /* reading a page between two runs is no dearer than a pread for each */
#define WINDOW_RUN 4096 /* longer runs gain little from fewer calls and would be copied twice */

struct view_source {
	const struct shard *sh;
	uint64_t start; /* the tensor's first byte in the backing file */
	const struct view_plan *plan;
	uint64_t off; /* of the request in the view */
	uint8_t *win;           /* NULL: every run is read by itself */
	size_t cap;             /* of win */
	uint64_t lo, hi, end;   /* the window holds tensor bytes [lo, hi); the request ends at end */
};

static int read_tensor_bytes(void *ctx, void *dst, size_t n, uint64_t src_off)
{
	struct view_source *vs = ctx;
	int rc;

	/* Runs come in order: the next window starts at this one and holds what follows. */
	size_t len = src_off < vs->end && vs->end - src_off < vs->cap ? (size_t)(vs->end - src_off) : vs->cap;

	if (!vs->win || src_off >= vs->end || n > len)
		return shard_pread(vs->sh, dst, n, vs->start + src_off);
	if (src_off < vs->lo || src_off + n > vs->hi) {
		vs->lo = vs->hi = 0;
		if ((rc = shard_pread(vs->sh, vs->win, len, vs->start + src_off)) < 0)
			return rc;
		vs->lo = src_off;
		vs->hi = src_off + len;
	}
	memcpy(dst, vs->win + (src_off - vs->lo), n);
	return 0;
}

static int fill_view(const void *ctx, char *buf, size_t size)
{
	struct view_source vs = *(const struct view_source *)ctx;
	struct view_span span;
	int rc;

	if (view_source_span(vs.plan, vs.off, size, &span) == 0 && span.gap <= WINDOW_GAP &&
	    span.run <= WINDOW_RUN) {
		vs.end = span.hi;
		/* No window is no error: the runs are then read one by one. */
		vs.cap = span.hi - span.lo < WINDOW_MAX ? (size_t)(span.hi - span.lo) : WINDOW_MAX;
		vs.win = malloc(vs.cap);
	}
	rc = view_read(vs.plan, vs.off, size, buf, read_tensor_bytes, &vs);
	free(vs.win);
	return rc;
}

/* Answers a read of gathered or converted view V. */
static void gather(fuse_req_t req, const struct fs *fs, const struct view_node *v, size_t size, off_t off)
{
	const struct node *n = &fs->tree.nodes[v->tensor];
	const struct shard *sh = shard_of(fs, n);
	struct view_source vs = {sh, v->src_start, &v->plan, (uint64_t)off, NULL, 0, 0, 0, 0};

	/* A gather may make a pread per run: let other requests be read meanwhile. */
	loop_step_aside(fs->loop);
	reply_filled(req, sh, size, fill_view, &vs);
}

struct view_job {
	struct view_job *next;
	fuse_req_t req;
	const struct view_node *v; /* held by the kernel until the read is answered */
	size_t size;
	off_t off;
};

/* Threads that may gather at once: the others stay free for whatever else is asked. */
static unsigned gather_threads(const struct fs *fs)
{
	return fs->opt.max_threads > 1 ? fs->opt.max_threads / 2 : 1;
}

/*
 * Slow readers of views must not hold up everyone else: were every thread gathering, no
 * one would read the next request.  A read is queued, and answered by the first of at most
 * gather_threads() threads that gather, in turn; a thread that finds them all busy goes
 * back to serving requests at once.  A gathering thread leaves only with the queue empty,
 * so nothing queued is left behind.
 */
static void queue_gather(fuse_req_t req, struct fs *fs, const struct view_node *v, size_t size, off_t off)
{
	struct view_queue *q = &fs->views.gathers;
	struct view_job *job = malloc(sizeof(*job));

	if (!job) {
		gather(req, fs, v, size, off); /* no queue without memory: answered here */
		return;
	}
	*job = (struct view_job){NULL, req, v, size, off};
	pthread_mutex_lock(&q->lock);
	*(q->tail ? &q->tail->next : &q->head) = job;
	q->tail = job;
	if (q->busy >= gather_threads(fs)) {
		pthread_mutex_unlock(&q->lock);
		return;
	}
	q->busy++;
	while ((job = q->head)) {
		if (!(q->head = job->next))
			q->tail = NULL;
		pthread_mutex_unlock(&q->lock);
		gather(job->req, fs, job->v, job->size, job->off);
		free(job);
		pthread_mutex_lock(&q->lock);
	}
	q->busy--;
	pthread_mutex_unlock(&q->lock);
}

/* Contiguous raw views come from the backing file like tensors; the rest are gathered or converted. */
static void read_view(fuse_req_t req, struct fs *fs, const struct view_node *v, size_t size, off_t off)
{
	const struct node *n = &fs->tree.nodes[v->tensor];
	uint64_t src;

	if (off < 0 || (uint64_t)off >= v->plan.size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > v->plan.size - (uint64_t)off)
		size = (size_t)(v->plan.size - (uint64_t)off);
	if (view_contiguous(&v->plan, &src))
		reply_from_backing(req, fs, shard_of(fs, n), v->src_start + src + (uint64_t)off, size);
	else
		queue_gather(req, fs, v, size, off);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct node *n = node_of(fs, ino);
	const struct shard *sh;
	uint64_t total, start;

	(void)fi;
	const struct view_node *v = view_of(fs, ino);
	if (v) {
		read_view(req, fs, v, size, off);
		return;
	}
	if (!n || n->kind == NODE_DIR) {
		fuse_reply_err(req, n ? EISDIR : ENOENT);
		return;
	}
	if (n->kind == NODE_CONTROL) {
		char *buf = malloc(size ? size : 1);
		if (!buf) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		ssize_t got = control_read(fs, (struct control_session *)(uintptr_t)fi->fh, req, buf, size);
		if (got < 0)
			fuse_reply_err(req, (int)-got);
		else
			fuse_reply_buf(req, buf, (size_t)got);
		free(buf);
		return;
	}
	sh = shard_of(fs, n);
	total = node_size(fs, n);
	if (off < 0 || (uint64_t)off >= total) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > total - (uint64_t)off)
		size = (size_t)(total - (uint64_t)off);
	if (n->kind == NODE_METADATA_JSON) {
		fuse_reply_buf(req, fs->src.metadata.json + off, size);
		return;
	}
	if (n->kind == NODE_HEADER_JSON && fs->src.glue) {
		reply_header_json(req, &fs->src, (uint64_t)off, size);
		return;
	}
	start = n->kind == NODE_TENSOR ? tensor_file_offset(fs, n) : 8;
	reply_from_backing(req, fs, sh, start + (uint64_t)off, size);
}

static void reply_xattr(fuse_req_t req, size_t size, int rc, char *value, size_t len)
{
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else if (size == 0)
		fuse_reply_xattr(req, len);
	else if (len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
	free(value);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = fs_of(req);
	const struct view_node *v = view_of(fs, ino);
	const struct node *n = v ? &fs->tree.nodes[v->tensor] : node_of(fs, ino);
	char *value = NULL;
	size_t len = 0;
	int rc = n ? xattr_get(fs, n, v, name, &value, &len) : -ENOENT;

	reply_xattr(req, size, rc, value, len);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct fs *fs = fs_of(req);
	const struct view_node *v = view_of(fs, ino);
	const struct node *n = v ? &fs->tree.nodes[v->tensor] : node_of(fs, ino);
	char *list = NULL;
	size_t len = 0;
	int rc = n ? xattr_list(fs, n, v, &list, &len) : -ENOENT;

	reply_xattr(req, size, rc, list, len);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fs_of(req);
	struct statvfs st = {.f_bsize = BLOCK, .f_frsize = BLOCK, .f_namemax = 255,
			     .f_files = fs->tree.n_nodes, .f_flag = ST_RDONLY};

	(void)ino;
	for (size_t s = 0; s < fs->src.n_shards; s++)
		st.f_blocks += (fs->src.shards[s].hdr.file_size + BLOCK - 1) / BLOCK;
	fuse_reply_statfs(req, &st);
}

/* Everything that would change the tree or the bytes: the backing file is never written. */
static void erofs(fuse_req_t req)
{
	fuse_reply_err(req, EROFS);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int set, struct fuse_file_info *fi)
{
	(void)ino, (void)a, (void)set, (void)fi;
	erofs(req);
}

static void op_mknod(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, dev_t rdev)
{
	(void)p, (void)name, (void)mode, (void)rdev;
	erofs(req);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode)
{
	(void)p, (void)name, (void)mode;
	erofs(req);
}

static void op_remove(fuse_req_t req, fuse_ino_t p, const char *name)
{
	(void)p, (void)name;
	erofs(req);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t p, const char *name)
{
	(void)link, (void)p, (void)name;
	erofs(req);
}

static void op_rename(fuse_req_t req, fuse_ino_t p, const char *name, fuse_ino_t np,
		      const char *nname, unsigned int flags)
{
	(void)p, (void)name, (void)np, (void)nname, (void)flags;
	erofs(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t np, const char *nname)
{
	(void)ino, (void)np, (void)nname;
	erofs(req);
}

static void op_create(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	(void)p, (void)name, (void)mode, (void)fi;
	erofs(req);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	(void)ino, (void)name, (void)value, (void)size, (void)flags;
	erofs(req);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino, (void)name;
	erofs(req);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.statfs = op_statfs,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_remove,
	.rmdir = op_remove,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
};
