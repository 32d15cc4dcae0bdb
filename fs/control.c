#include "control.h"
#include "units.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gpu_direct/gpu.h"
#include "../parser/json_out.h"
#include "fs.h"
#include "loop.h"

#define MAX_LINE (1 << 20)
/* Queued and unfinished lines over all sessions: 2000 sessions at MAX_LINE each would be 2 GB. */
#define MAX_PENDING_IN (64u << 20)

/* A slice of a column block is one piece per row: past this many, upload whole tensors. */
#define MAX_RANGES (1 << 20)

/* One tensor (or slice view) to upload, and where it lands in the buffer. */
struct item {
	uint32_t node;                /* the tensor's tree node */
	const struct view_node *view; /* or NULL */
	const struct shard *shard;    /* read from, and checked after the copy: shard_changed */
	uint64_t src, nbytes, dst;
};

/* Whom a command runs for: a long one gives up when that request is interrupted (its
 * caller was killed, say) or the daemon is stopping, so SIGTERM need not wait for it. */
struct caller {
	struct fs *fs;
	fuse_req_t req; /* or NULL */
};

struct items {
	struct item *v;
	size_t n, cap;
	char *seen; /* per tree node: already taken */
	const struct caller *caller;
};

/* Why a command should stop now, or NULL to go on. */
static const char *gave_up(const struct caller *c)
{
	if (c->fs->se && fuse_session_exited(c->fs->se))
		return "the daemon is stopping";
	if (c->req && fuse_req_interrupted(c->req))
		return "interrupted";
	return NULL;
}

/* Half the RAM, as tmpfs sizes /dev/shm by default: host buffers live there, and past it
 * the copies would fail half-way anyway; device memory is bounded by the device itself. */
static uint64_t default_max_upload(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);

	return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size / 2 : (uint64_t)1 << 32;
}

int control_init(struct control *c, const char *default_device, const char *max_upload)
{
	memset(c, 0, sizeof(*c));
	c->next_id = 1;
	c->default_device = default_device ? default_device : "auto";
	c->max_upload = default_max_upload();
	if (max_upload && parse_size(max_upload, &c->max_upload) < 0)
		return -EINVAL;
	return -pthread_mutex_init(&c->lock, NULL);
}

void control_free(struct control *c)
{
	while (c->sessions)
		control_close(c->sessions); /* the kernel sends no RELEASE once the mount is gone */
	for (size_t i = 0; i < c->n; i++)
		gpu_free(c->bufs[i].buf);
	free(c->bufs);
	pthread_mutex_destroy(&c->lock);
}

struct control_session *control_open(struct control *c)
{
	struct control_session *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	if (pthread_mutex_init(&s->lock, NULL) != 0) {
		free(s);
		return NULL;
	}
	if (pthread_mutex_init(&s->running, NULL) != 0) {
		pthread_mutex_destroy(&s->lock);
		free(s);
		return NULL;
	}
	s->owner = c;
	pthread_mutex_lock(&c->lock);
	s->next = c->sessions;
	if (c->sessions)
		c->sessions->prev = s;
	c->sessions = s;
	pthread_mutex_unlock(&c->lock);
	return s;
}

/* Bytes of queued input given back to the sessions' total. */
static void unaccount(struct control *c, size_t bytes)
{
	if (bytes) {
		pthread_mutex_lock(&c->lock);
		c->pending_in -= bytes;
		pthread_mutex_unlock(&c->lock);
	}
}

void control_close(struct control_session *s)
{
	if (!s)
		return;
	struct control *c = s->owner;

	unaccount(c, s->in_cap);
	pthread_mutex_lock(&c->lock);
	*(s->prev ? &s->prev->next : &c->sessions) = s->next;
	if (s->next)
		s->next->prev = s->prev;
	pthread_mutex_unlock(&c->lock);
	free(s->in);
	free(s->out);
	pthread_mutex_destroy(&s->running);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Copies reply bytes already run; all read, the replies go before the close does. */
static size_t copy_out(struct control_session *s, char *buf, size_t size)
{
	pthread_mutex_lock(&s->lock);
	size_t n = s->out_len - s->out_off < size ? s->out_len - s->out_off : size;

	if (n)
		memcpy(buf, s->out + s->out_off, n);
	s->out_off += n;
	if (s->out_off == s->out_len) {
		free(s->out);
		s->out = NULL;
		s->out_len = s->out_off = s->out_cap = 0;
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

static int add(struct items *it, struct item x)
{
	if (!x.view) {
		if (it->seen[x.node])
			return 0;
		it->seen[x.node] = 1;
	}
	if (st_reserve(&it->v, &it->cap, it->n + 1, sizeof(*it->v)))
		return -ENOMEM;
	it->v[it->n++] = x;
	return 0;
}

static int add_tensor(const struct fs *fs, struct items *it, uint32_t node)
{
	const struct node *n = &fs->tree.nodes[node];
	return add(it, (struct item){node, NULL, shard_of(fs, n), tensor_file_offset(fs, n),
				     st_tensor_nbytes(tensor_of(fs, n)), 0});
}

/* Every tensor below directory `dir`, depth first. */
static int add_dir(const struct fs *fs, struct items *it, uint32_t dir)
{
	const struct node *d = &fs->tree.nodes[dir];
	int rc = 0;

	for (uint32_t i = 0; i < d->dir.count && !rc; i++) {
		uint32_t c = fs->tree.children[d->dir.first + i];
		if (fs->tree.nodes[c].kind == NODE_DIR)
			rc = add_dir(fs, it, c);
		else if (fs->tree.nodes[c].kind == NODE_TENSOR)
			rc = add_tensor(fs, it, c);
	}
	return rc;
}

/* A path below the mount: a tensor, a directory or a raw slice view. 1 when it named nothing. */
static int add_path(struct fs *fs, struct items *it, const char *pattern, char *why, size_t whylen)
{
	char *copy = strdup(pattern), *save = NULL, *part;
	long node = 0;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	for (part = strtok_r(copy, "/", &save); part && node >= 0; part = strtok_r(NULL, "/", &save)) {
		long next = tree_lookup(&fs->tree, (uint32_t)node, part, strlen(part));
		int last = strspn(save, "/") == strlen(save);
		if (next < 0 && last && fs->tree.nodes[node].kind == NODE_DIR) {
			long v = view_lookup(fs, (uint32_t)node, part);
			if (v >= 0) {
				const struct view_node *vn = view_get(&fs->views, (size_t)v);
				if (!view_raw(&vn->plan)) {
					snprintf(why, whylen, "%s: converted and .npy views do not upload "
						 "(tensors and slices do)", pattern);
					rc = -EINVAL;
				} else {
					/* src: the tensor's first byte; its slice's runs are added at upload. */
					const struct node *n = &fs->tree.nodes[vn->tensor];
					rc = add(it, (struct item){vn->tensor, vn, shard_of(fs, n),
								   vn->src_start, vn->plan.size, 0});
				}
				free(copy);
				return rc;
			}
		}
		node = next;
	}
	free(copy);
	if (node < 0)
		return 1;
	if (fs->tree.nodes[node].kind == NODE_DIR)
		return add_dir(fs, it, (uint32_t)node);
	if (fs->tree.nodes[node].kind == NODE_TENSOR)
		return add_tensor(fs, it, (uint32_t)node);
	return 1;
}

/* The whole path of tree node `n` below the mount, however long (a fixed buffer cut long
 * paths to their last parts, and globs matched the tail).  `*buf` grows as needed; NULL
 * when out of memory. */
static const char *path_of(const struct fs *fs, uint32_t n, char **buf, size_t *cap)
{
	size_t len = 0, at;

	for (uint32_t m = n; m != 0; m = fs->tree.nodes[m].parent)
		len += strlen(node_name(&fs->tree, &fs->tree.nodes[m])) + 1;
	if (st_reserve(buf, cap, len + 1, 1))
		return NULL;
	at = len ? len - 1 : 0;
	(*buf)[at] = '\0';
	for (uint32_t m = n; m != 0; m = fs->tree.nodes[m].parent) {
		const char *name = node_name(&fs->tree, &fs->tree.nodes[m]);
		size_t w = strlen(name);
		at -= w;
		memcpy(*buf + at, name, w);
		if (at)
			(*buf)[--at] = '/';
	}
	return *buf;
}

/* A shell glob over the tensors' whole paths. */
static int add_glob(const struct fs *fs, struct items *it, const char *pattern)
{
	char *buf = NULL;
	size_t cap = 0;
	int rc = 0, matched = 0;

	for (uint32_t i = 1; i < fs->tree.n_nodes && !rc; i++) {
		if (i % 256 == 0 && gave_up(it->caller)) {
			rc = -EINTR;
			break;
		}
		if (fs->tree.nodes[i].kind != NODE_TENSOR && fs->tree.nodes[i].kind != NODE_DIR)
			continue;
		const char *path = path_of(fs, i, &buf, &cap);
		if (!path) {
			rc = -ENOMEM;
		} else if (fnmatch(pattern, path, FNM_PATHNAME) == 0) {
			matched = 1;
			rc = fs->tree.nodes[i].kind == NODE_DIR ? add_dir(fs, it, i) : add_tensor(fs, it, i);
		}
	}
	free(buf);
	return rc ? rc : !matched;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xC2 && s[0] < 0xE0 ? 2
		: s[0] >= 0xE0 && s[0] < 0xF0 ? 3 : s[0] >= 0xF0 && s[0] < 0xF5 ? 4 : 0;

	if (!len || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	/* Overlong forms, surrogates and past U+10FFFF. */
	if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0) ||
	    (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))
		return 0;
	return len;
}

/* Error text quotes what the client wrote (raw bytes, or cut mid-character by snprintf):
 * each invalid byte becomes U+FFFD, so that every reply is valid JSON. */
static void jout_text(struct jout *j, const char *msg)
{
	size_t n = strlen(msg), o = 0;
	char *t = malloc(n * 3 + 1);

	if (!t) {
		j->failed = 1;
		return;
	}
	for (size_t i = 0; i < n;) {
		size_t l = utf8_len((const unsigned char *)msg + i, n - i);
		if (l) {
			memcpy(t + o, msg + i, l);
			o += l;
			i += l;
		} else {
			memcpy(t + o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
		}
	}
	jout_str(j, t, o);
	free(t);
}

static void reply_error(struct jout *j, const char *msg)
{
	jout_begin(j, '{');
	jout_key(j, "ok");
	jout_bool(j, 0);
	jout_key(j, "error");
	jout_text(j, msg);
	jout_end(j, '}');
}

static void reply_backends(struct jout *j)
{
	struct gpu_backend_info info[8];
	size_t n = gpu_backends(info, 8);

	jout_begin(j, '{');
	jout_key(j, "ok");
	jout_bool(j, 1);
	jout_key(j, "backends");
	jout_begin(j, '[');
	for (size_t i = 0; i < n; i++) {
		jout_begin(j, '{');
		jout_key(j, "name");
		jout_str(j, info[i].name, strlen(info[i].name));
		jout_key(j, "devices");
		jout_u64(j, (uint64_t)(info[i].devices > 0 ? info[i].devices : 0));
		jout_end(j, '}');
	}
	jout_end(j, ']');
	jout_end(j, '}');
}

static int pick_device(const struct control *c, const char *dev, enum gpu_kind *kind, int *index)
{
	if (!dev) {
		dev = c->default_device;
		if (strcmp(dev, "none") == 0)
			return -ENODEV;
		if (strcmp(dev, "auto") == 0) {
			gpu_auto_device(kind, index);
			return 0;
		}
	}
	return gpu_parse_device(dev, kind, index) < 0 ? -EINVAL : 0;
}

static void tensor_entry(const struct fs *fs, struct jout *j, const struct item *x)
{
	const struct node *n = &fs->tree.nodes[x->node];
	const struct st_header *h = &shard_of(fs, n)->hdr;
	const struct st_tensor *t = tensor_of(fs, n);
	enum st_dtype dtype = x->view ? x->view->plan.dtype : (enum st_dtype)t->dtype;
	uint32_t rank = x->view ? x->view->plan.rank : t->rank;
	const uint64_t *shape = x->view ? x->view->plan.shape : h->dims + t->dims;
	char *buf = NULL;
	size_t cap = 0;

	jout_begin(j, '{');
	jout_key(j, "name");
	if (x->view) {
		const char *dir = path_of(fs, x->view->parent, &buf, &cap);
		size_t len = dir ? strlen(dir) : 0, vlen = strlen(x->view->name);
		if (!dir || st_reserve(&buf, &cap, len + vlen + 2, 1)) {
			j->failed = 1;
		} else {
			if (len)
				buf[len++] = '/';
			memcpy(buf + len, x->view->name, vlen + 1);
			jout_text(j, buf);
		}
		free(buf);
	} else {
		jout_str(j, st_tensor_name(h, t), t->name_len);
	}
	jout_key(j, "offset");
	jout_u64(j, x->dst);
	jout_key(j, "nbytes");
	jout_u64(j, x->nbytes);
	jout_key(j, "dtype");
	jout_str(j, st_dtype_name(dtype), strlen(st_dtype_name(dtype)));
	jout_key(j, "shape");
	jout_begin(j, '[');
	for (uint32_t i = 0; i < rank; i++)
		jout_u64(j, shape[i]);
	jout_end(j, ']');
	jout_end(j, '}');
}

/* A slice's runs as file ranges, one after another from dst. */
struct run_sink {
	struct gpu_range *r;
	size_t n;
	struct store *store;
	uint64_t src, dst;
};

/* A remote shard's bytes, which gpu_direct reads through this (it knows no stores). */
static int read_store(void *ctx, void *buf, size_t len, uint64_t off)
{
	return store_read(ctx, buf, len, off);
}

static int add_run(void *ctx, uint64_t src_off, uint64_t n)
{
	struct run_sink *s = ctx;
	bool local = s->store->fd >= 0;

	s->r[s->n++] = (struct gpu_range){s->store->fd, s->src + src_off, n, s->dst, local ? NULL : read_store,
					  local ? NULL : s->store};
	s->dst += n;
	return 0;
}

static uint64_t ranges_of(const struct item *x)
{
	return x->view ? x->view->plan.n_runs : 1;
}

/* Each item's ranges, the items 256-byte aligned one after another; -E2BIG past MAX_RANGES. */
static int lay_out(struct items *it, struct gpu_range **out, size_t *nout, uint64_t *total, char *why)
{
	size_t n = 0;

	for (size_t i = 0; i < it->n; i++) {
		uint64_t more = ranges_of(&it->v[i]);
		if (more > MAX_RANGES - n) {
			snprintf(why, 256, "more than %d pieces to copy: upload whole tensors and slice "
				 "them on the device", MAX_RANGES);
			return -E2BIG;
		}
		n += (size_t)more;
	}
	struct run_sink s = {.r = calloc(n ? n : 1, sizeof(*s.r))};
	if (!s.r)
		return -ENOMEM;
	*total = 0;
	for (size_t i = 0; i < it->n; i++) {
		struct item *x = &it->v[i];
		x->dst = *total;
		s.store = x->shard->store;
		s.src = x->src;
		s.dst = x->dst;
		if (x->view)
			view_runs(&x->view->plan, add_run, &s);
		else
			add_run(&s, 0, x->nbytes);
		*total += (x->nbytes + GPU_ALIGN - 1) / GPU_ALIGN * GPU_ALIGN;
	}
	*out = s.r;
	*nout = s.n;
	return 0;
}

/* Counts `bytes` against -o max_upload before the allocation, so two uploads at once
 * cannot both pass it; -ENOSPC past it. */
static int reserve(struct control *c, uint64_t bytes, char *why)
{
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	if (bytes > c->max_upload || c->resident > c->max_upload - bytes)
		rc = -ENOSPC;
	else
		c->resident += bytes;
	pthread_mutex_unlock(&c->lock);
	if (rc)
		snprintf(why, 256, "upload of %llu bytes refused: buffers hold %llu of -o max_upload=%llu "
			 "(free some)", (unsigned long long)bytes, (unsigned long long)c->resident,
			 (unsigned long long)c->max_upload);
	return rc;
}

static void unreserve(struct control *c, uint64_t bytes)
{
	pthread_mutex_lock(&c->lock);
	c->resident -= bytes;
	pthread_mutex_unlock(&c->lock);
}

/* A shard rewritten during (or before) the copy gave the buffer bytes no read would serve
 * (reads answer EIO then): -EIO, so no client takes them for the model's. */
static int check_shards(const struct items *it, char *why)
{
	for (size_t i = 0; i < it->n; i++)
		if (i == 0 || it->v[i].shard != it->v[i - 1].shard)
			if (shard_changed(it->v[i].shard)) {
				snprintf(why, 256, "a backing file changed since mount: remount to "
					 "read it (%s)", strerror(EIO));
				return -EIO;
			}
	return 0;
}

/* Lays the items out, allocates, uploads and registers the buffer. */
static int upload(struct fs *fs, struct items *it, enum gpu_kind kind, int dev, struct jout *j, char *why)
{
	struct control *c = &fs->control;
	struct gpu_range *ranges = NULL;
	struct gpu_upload_stats stats = {0};
	struct control_buffer b = {0};
	uint64_t total = 0;
	size_t nranges = 0;
	char handle[GPU_HANDLE_MAX];
	int rc;

	if ((rc = lay_out(it, &ranges, &nranges, &total, why)) < 0)
		return rc;
	total = total ? total : GPU_ALIGN;
	if ((rc = reserve(c, total, why)) < 0) {
		free(ranges);
		return rc;
	}
	rc = gpu_alloc(kind, dev, total, &b.buf, why, 256);
	if (!rc)
		rc = gpu_upload(b.buf, ranges, nranges, NULL, &stats, why, 256);
	free(ranges);
	if (!rc)
		rc = check_shards(it, why);
	if (!rc && (rc = gpu_handle(b.buf, handle, sizeof(handle))) > 0)
		rc = 0; /* its length */
	if (rc) {
		if (b.buf)
			gpu_free(b.buf);
		unreserve(c, total);
		return rc;
	}
	gpu_device_name(kind, dev, b.device, sizeof(b.device));
	b.bytes = total;
	b.tensors = it->n;
	pthread_mutex_lock(&c->lock);
	b.id = c->next_id++;
	if (st_reserve(&c->bufs, &c->cap, c->n + 1, sizeof(*c->bufs)) == 0)
		c->bufs[c->n++] = b;
	else
		rc = -ENOMEM;
	pthread_mutex_unlock(&c->lock);
	if (rc) {
		gpu_free(b.buf);
		unreserve(c, total);
		return rc;
	}
	jout_begin(j, '{');
	jout_key(j, "ok");
	jout_bool(j, 1);
	jout_key(j, "id");
	jout_u64(j, b.id);
	jout_key(j, "device");
	jout_str(j, b.device, strlen(b.device));
	jout_key(j, "bytes");
	jout_u64(j, total);
	jout_key(j, "seconds");
	jout_double(j, stats.seconds);
	jout_key(j, "handle");
	jout_str(j, handle, strlen(handle));
	jout_key(j, "tensors");
	jout_begin(j, '[');
	for (size_t i = 0; i < it->n; i++)
		tensor_entry(fs, j, &it->v[i]);
	jout_end(j, ']');
	jout_end(j, '}');
	return 0;
}

static void run_upload(const struct caller *caller, char *args, struct jout *j)
{
	struct fs *fs = caller->fs;
	struct items it = {.seen = calloc(fs->tree.n_nodes, 1), .caller = caller};
	const char *dev = NULL, *stop;
	char why[256] = "", *save = NULL;
	enum gpu_kind kind;
	int index, rc = it.seen ? 0 : -ENOMEM, patterns = 0;

	for (char *w = strtok_r(args, " \t", &save); w && !rc; w = strtok_r(NULL, " \t", &save)) {
		if (strncmp(w, "device=", 7) == 0) {
			dev = w + 7;
			continue;
		}
		patterns++;
		while (*w == '/')
			w++;
		rc = gave_up(caller) ? -EINTR : add_path(fs, &it, w, why, sizeof(why));
		if (rc == 1 && strpbrk(w, "*?["))
			rc = add_glob(fs, &it, w);
		if (rc == 1) {
			snprintf(why, sizeof(why), "%s: no such tensor, directory or view", w);
			rc = -ENOENT;
		}
	}
	if (rc == -EINTR && (stop = gave_up(caller)))
		snprintf(why, sizeof(why), "upload stopped: %s", stop);
	if (!rc && !patterns) {
		snprintf(why, sizeof(why), "usage: upload [device=DEV] PATTERN...");
		rc = -EINVAL;
	}
	if (!rc && (rc = pick_device(&fs->control, dev, &kind, &index)) < 0)
		snprintf(why, sizeof(why), "%s", rc == -ENODEV ? "uploads are off (-o gpu=none)" : "unknown device");
	if (!rc && (rc = upload(fs, &it, kind, index, j, why)) < 0 && !why[0])
		snprintf(why, sizeof(why), "%s", strerror(-rc));
	if (rc)
		reply_error(j, why);
	free(it.v);
	free(it.seen);
}

static void run_free(struct control *c, const char *arg, struct jout *j)
{
	char *end;
	unsigned long long id = strtoull(arg ? arg : "", &end, 10);
	struct gpu_buffer *victim = NULL;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; arg && *arg && !*end && i < c->n && !victim; i++)
		if (c->bufs[i].id == id) {
			victim = c->bufs[i].buf;
			c->resident -= c->bufs[i].bytes;
			c->bufs[i] = c->bufs[--c->n];
		}
	pthread_mutex_unlock(&c->lock);
	if (!victim) {
		reply_error(j, "free: no buffer with that id");
		return;
	}
	gpu_free(victim);
	jout_begin(j, '{');
	jout_key(j, "ok");
	jout_bool(j, 1);
	jout_end(j, '}');
}

static void run_list(struct control *c, struct jout *j)
{
	jout_begin(j, '{');
	jout_key(j, "ok");
	jout_bool(j, 1);
	jout_key(j, "buffers");
	jout_begin(j, '[');
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n; i++) {
		jout_begin(j, '{');
		jout_key(j, "id");
		jout_u64(j, c->bufs[i].id);
		jout_key(j, "device");
		jout_str(j, c->bufs[i].device, strlen(c->bufs[i].device));
		jout_key(j, "bytes");
		jout_u64(j, c->bufs[i].bytes);
		jout_key(j, "tensors");
		jout_u64(j, c->bufs[i].tensors);
		jout_end(j, '}');
	}
	pthread_mutex_unlock(&c->lock);
	jout_end(j, ']');
	jout_end(j, '}');
}

static void run_line(const struct caller *caller, char *line, struct jout *j)
{
	struct control *c = &caller->fs->control;
	char *save = NULL, *cmd = strtok_r(line, " \t", &save);
	char *rest = save ? save : (char *)"";

	if (!cmd)
		reply_error(j, "empty command");
	else if (strcmp(cmd, "backends") == 0)
		reply_backends(j);
	else if (strcmp(cmd, "upload") == 0)
		run_upload(caller, rest, j);
	else if (strcmp(cmd, "free") == 0)
		run_free(c, strtok_r(NULL, " \t", &save), j);
	else if (strcmp(cmd, "list") == 0)
		run_list(c, j);
	else
		reply_error(j, "unknown command (backends, upload, free, list)");
}

/* Appends reply `j` to what the session has for reading; read replies are gone already. */
static int queue_reply(struct control_session *s, struct jout *j)
{
	int rc = 0;

	if (j->failed)
		return -ENOMEM;
	pthread_mutex_lock(&s->lock);
	if (st_reserve(&s->out, &s->out_cap, s->out_len + j->len, 1))
		rc = -ENOMEM;
	else {
		memcpy(s->out + s->out_len, j->p, j->len);
		s->out_len += j->len;
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/*
 * Queued input, each line a tag and its text and '\n':
 *   'L' text   a command line, run when its turn comes;
 *   'X'        a line that passed MAX_LINE, answered with one error in its turn.
 * The tag keeps the error in order with the replies around it, whatever bytes a line holds.
 */
#define TAG_LINE 'L'
#define TAG_TOO_LONG 'X'

/* Room for `extra` more input bytes, within MAX_PENDING_IN over all sessions. */
static int reserve_input(struct control_session *s, size_t extra)
{
	struct control *c = s->owner;
	size_t cap = s->in_cap, need = s->in_len + extra, grow;
	int rc = 0;

	if (need <= cap)
		return 0;
	grow = need < 2 * cap ? 2 * cap : need;
	grow = grow < 256 ? 256 : grow;
	pthread_mutex_lock(&c->lock);
	if (grow > need && c->pending_in + (grow - cap) > MAX_PENDING_IN)
		grow = need; /* near the bound: no spare room */
	if (c->pending_in + (grow - cap) > MAX_PENDING_IN)
		rc = -ENOBUFS;
	else
		c->pending_in += grow - cap;
	pthread_mutex_unlock(&c->lock);
	char *in = rc ? NULL : realloc(s->in, grow);
	if (!rc && !in) {
		unaccount(c, grow - cap);
		rc = -ENOMEM;
	}
	if (rc)
		return rc;
	s->in = in;
	s->in_cap = grow;
	return 0;
}

/* One stretch of written bytes up to (not including) a newline, or the rest; `line_end`
 * says whether a newline follows.  Each byte is looked at once: linear in what is written. */
static int take_piece(struct control_session *s, const char *data, size_t len, int line_end)
{
	int rc;

	if (s->skipping) {
		s->skipping = !line_end;
		return 0;
	}
	if (!s->in_line) {
		if ((rc = reserve_input(s, 1)) < 0)
			return rc;
		s->line_start = s->in_len;
		s->in[s->in_len++] = TAG_LINE;
		s->in_line = 1;
	}
	if (s->in_len - s->line_start - 1 + len > MAX_LINE) {
		/* One reply for the line, then the session goes on at the next newline. */
		s->in_len = s->line_start;
		s->in_line = 0;
		s->skipping = !line_end;
		if ((rc = reserve_input(s, 2)) < 0)
			return rc; /* the write fails: no reply for the line */
		s->in[s->in_len++] = TAG_TOO_LONG;
		s->in[s->in_len++] = '\n';
		return 0;
	}
	if ((rc = reserve_input(s, len + 1)) < 0)
		return rc;
	memcpy(s->in + s->in_len, data, len);
	s->in_len += len;
	if (line_end) {
		s->in[s->in_len++] = '\n';
		s->in_line = 0;
	}
	return 0;
}

int control_write(struct control_session *s, const char *data, size_t len)
{
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	while (!rc && len) {
		const char *nl = memchr(data, '\n', len);
		size_t piece = nl ? (size_t)(nl - data) : len;
		rc = take_piece(s, data, piece, nl != NULL);
		piece += nl != NULL;
		data += piece;
		len -= piece;
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* The complete queued lines, taken out of the session (the unfinished one stays).
 * `*accounted`: bytes of the total to give back once they are run. */
static char *take_queued(struct control_session *s, size_t *len, size_t *accounted)
{
	size_t done = s->in_line ? s->line_start : s->in_len;
	char *batch;

	*len = done;
	*accounted = 0;
	if (!done)
		return NULL;
	if (done == s->in_len) {
		/* The common case, whole lines only: the buffer itself, and a large one is
		 * not kept for the next line. */
		batch = s->in;
		*accounted = s->in_cap;
		s->in = NULL;
		s->in_len = s->in_cap = 0;
		return batch;
	}
	if (!(batch = malloc(done)))
		return NULL;
	memcpy(batch, s->in, done);
	memmove(s->in, s->in + done, s->in_len - done);
	s->in_len -= done;
	s->line_start -= done;
	return batch;
}

/* Runs the lines queued so far, each reply queued as soon as it is made. */
static int run_queued(struct fs *fs, struct control_session *s, fuse_req_t req)
{
	const struct caller caller = {fs, req};
	size_t len, accounted;
	char *batch;
	int rc = 0;

	pthread_mutex_lock(&s->running);
	pthread_mutex_lock(&s->lock);
	batch = take_queued(s, &len, &accounted);
	pthread_mutex_unlock(&s->lock);
	if (len && !batch)
		rc = -ENOMEM;
	if (batch)
		loop_step_aside(fs->loop); /* commands can be slow: others' requests are read meanwhile */
	for (size_t at = 0; batch && at < len && !rc;) {
		char *line = batch + at, *nl = memchr(line, '\n', len - at);
		const char *stop = gave_up(&caller);
		struct jout j = {0};
		char why[64];

		*nl = '\0';
		at = (size_t)(nl - batch) + 1;
		if (line[0] == TAG_TOO_LONG) {
			reply_error(&j, "line longer than 1 MiB: dropped up to its newline");
		} else if (stop) {
			snprintf(why, sizeof(why), "not run: %s", stop);
			reply_error(&j, why);
		} else {
			run_line(&caller, line + 1, &j);
		}
		jout_end(&j, '\n');
		rc = queue_reply(s, &j);
		jout_free(&j);
	}
	free(batch);
	unaccount(s->owner, accounted);
	pthread_mutex_unlock(&s->running);
	return rc;
}

ssize_t control_read(struct fs *fs, struct control_session *s, fuse_req_t req, char *buf, size_t size)
{
	int rc = run_queued(fs, s, req);
	size_t n = copy_out(s, buf, size);

	return n || !rc ? (ssize_t)n : rc;
}

void control_flush(struct fs *fs, struct control_session *s, fuse_req_t req)
{
	(void)run_queued(fs, s, req);
}
