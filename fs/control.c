#include "control.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gpu_direct/gpu.h"
#include "../parser/json_out.h"
#include "fs.h"

#define MAX_LINE (1 << 20)

/* A slice of a column block is one piece per row: past this many, upload whole tensors. */
#define MAX_RANGES (1 << 20)

/* One tensor (or slice view) to upload, and where it lands in the buffer. */
struct item {
	uint32_t node;                /* the tensor's tree node */
	const struct view_node *view; /* or NULL */
	int fd;
	uint64_t src, nbytes, dst;
};

struct items {
	struct item *v;
	size_t n, cap;
	char *seen; /* per tree node: already taken */
};

int control_init(struct control *c, const char *default_device)
{
	memset(c, 0, sizeof(*c));
	c->next_id = 1;
	c->default_device = default_device ? default_device : "auto";
	return -pthread_mutex_init(&c->lock, NULL);
}

void control_free(struct control *c)
{
	for (size_t i = 0; i < c->n; i++)
		gpu_free(c->bufs[i].buf);
	free(c->bufs);
	pthread_mutex_destroy(&c->lock);
}

struct control_session *control_open(void)
{
	return calloc(1, sizeof(struct control_session));
}

void control_close(struct control_session *s)
{
	if (s) {
		free(s->in);
		free(s->out);
		free(s);
	}
}

size_t control_read(struct control_session *s, char *buf, size_t size)
{
	size_t n = s->out_len - s->out_off < size ? s->out_len - s->out_off : size;

	if (n == 0)
		return 0;
	memcpy(buf, s->out + s->out_off, n);
	s->out_off += n;
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
	return add(it, (struct item){node, NULL, shard_of(fs, n)->fd, tensor_file_offset(fs, n),
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
					rc = add(it, (struct item){vn->tensor, vn, shard_of(fs, n)->fd,
								   tensor_file_offset(fs, n), vn->plan.size, 0});
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

/* The path of tree node `n` below the mount. */
static void path_of(const struct fs *fs, uint32_t n, char *out, size_t len)
{
	char tmp[4096];
	size_t used = 0;

	out[0] = '\0';
	while (n != 0) {
		const struct node *nd = &fs->tree.nodes[n];
		int w = snprintf(tmp, sizeof(tmp), "%s%s%s", node_name(&fs->tree, nd), used ? "/" : "", out);
		if (w < 0 || (size_t)w >= len)
			return;
		memcpy(out, tmp, (size_t)w + 1);
		used = (size_t)w;
		n = nd->parent;
	}
}

/* A shell glob over the tensors' paths. */
static int add_glob(const struct fs *fs, struct items *it, const char *pattern)
{
	char path[4096];
	int rc = 0, matched = 0;

	for (uint32_t i = 1; i < fs->tree.n_nodes && !rc; i++) {
		if (fs->tree.nodes[i].kind != NODE_TENSOR && fs->tree.nodes[i].kind != NODE_DIR)
			continue;
		path_of(fs, i, path, sizeof(path));
		if (fnmatch(pattern, path, FNM_PATHNAME) == 0) {
			matched = 1;
			rc = fs->tree.nodes[i].kind == NODE_DIR ? add_dir(fs, it, i) : add_tensor(fs, it, i);
		}
	}
	return rc ? rc : !matched;
}

static void reply_error(struct jout *j, const char *msg)
{
	jout_begin(j, '{');
	jout_key(j, "ok");
	jout_bool(j, 0);
	jout_key(j, "error");
	jout_str(j, msg, strlen(msg));
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
	char path[4096];

	jout_begin(j, '{');
	jout_key(j, "name");
	if (x->view) {
		path_of(fs, x->view->parent, path, sizeof(path));
		size_t len = strlen(path);
		snprintf(path + len, sizeof(path) - len, "%s%s", len ? "/" : "", x->view->name);
		jout_str(j, path, strlen(path));
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
	int fd;
	uint64_t src, dst;
};

static int add_run(void *ctx, uint64_t src_off, uint64_t n)
{
	struct run_sink *s = ctx;

	s->r[s->n++] = (struct gpu_range){s->fd, s->src + src_off, n, s->dst};
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
		s.fd = x->fd;
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
	rc = gpu_alloc(kind, dev, total ? total : GPU_ALIGN, &b.buf, why, 256);
	if (!rc)
		rc = gpu_upload(b.buf, ranges, nranges, NULL, &stats, why, 256);
	free(ranges);
	if (!rc && (rc = gpu_handle(b.buf, handle, sizeof(handle))) > 0)
		rc = 0; /* its length */
	if (rc) {
		if (b.buf)
			gpu_free(b.buf);
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

static void run_upload(struct fs *fs, char *args, struct jout *j)
{
	struct items it = {.seen = calloc(fs->tree.n_nodes, 1)};
	const char *dev = NULL;
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
		rc = add_path(fs, &it, w, why, sizeof(why));
		if (rc == 1 && strpbrk(w, "*?["))
			rc = add_glob(fs, &it, w);
		if (rc == 1) {
			snprintf(why, sizeof(why), "%s: no such tensor, directory or view", w);
			rc = -ENOENT;
		}
	}
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

static void run_line(struct fs *fs, char *line, struct jout *j)
{
	char *save = NULL, *cmd = strtok_r(line, " \t", &save);
	char *rest = save ? save : (char *)"";

	if (!cmd)
		reply_error(j, "empty command");
	else if (strcmp(cmd, "backends") == 0)
		reply_backends(j);
	else if (strcmp(cmd, "upload") == 0)
		run_upload(fs, rest, j);
	else if (strcmp(cmd, "free") == 0)
		run_free(&fs->control, strtok_r(NULL, " \t", &save), j);
	else if (strcmp(cmd, "list") == 0)
		run_list(&fs->control, j);
	else
		reply_error(j, "unknown command (backends, upload, free, list)");
}

int control_write(struct fs *fs, struct control_session *s, const char *data, size_t len)
{
	char *nl;

	if (s->in_len + len > MAX_LINE)
		return -E2BIG;
	char *in = realloc(s->in, s->in_len + len + 1);
	if (!in)
		return -ENOMEM;
	s->in = in;
	memcpy(s->in + s->in_len, data, len);
	s->in_len += len;
	s->in[s->in_len] = '\0';
	while ((nl = memchr(s->in, '\n', s->in_len))) {
		struct jout j = {0};
		size_t used = (size_t)(nl - s->in) + 1;
		*nl = '\0';
		run_line(fs, s->in, &j);
		jout_end(&j, '\n');
		if (j.failed) {
			jout_free(&j);
			return -ENOMEM;
		}
		char *out = realloc(s->out, s->out_len + j.len);
		if (!out) {
			jout_free(&j);
			return -ENOMEM;
		}
		s->out = out;
		memcpy(s->out + s->out_len, j.p, j.len);
		s->out_len += j.len;
		jout_free(&j);
		memmove(s->in, s->in + used, s->in_len - used + 1);
		s->in_len -= used;
	}
	return 0;
}
