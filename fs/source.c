/*
 * Finding SOURCE's shards (a file, an index, a folder of shards, or a
 * diffusers-style folder of such folders), then opening and parsing them,
 * in parallel where there are several.
 */
#include "source.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "checks.h"
#include "diskcache.h"
#include "folder.h"
#include "http.h"
#include "remote.h"
#include "store.h"

#define INDEX_SUFFIX_STEM ".safetensors.index"
#define INDEX_SUFFIX INDEX_SUFFIX_STEM ".json"
#define SHARD_SUFFIX WEIGHTS_SUFFIX
/* Descriptors kept free for libfuse: /dev/fuse, one clone per worker thread, stdio. */
#define FD_RESERVE 64

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The line of a refusal into err; returns rc.  Checked like printf, so arguments match. */
__attribute__((format(printf, 3, 4))) static int fail(char *err, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, ST_ERR_LEN, fmt, ap);
	va_end(ap);
	return rc;
}

/* NAME in folder DIR: a path, or for a remote source a URL, NAME's bytes percent-encoded. */
static char *join(const struct source *src, const char *dir, const char *name)
{
	char *out, *esc = src->remote ? http_escape(name) : strdup(name);

	if (!esc || asprintf(&out, "%s/%s", dir, esc) < 0)
		out = NULL;
	free(esc);
	return out;
}

/* Shard `file` of `dir`, which is `rel` below SOURCE ("" for SOURCE itself or its folder). */
static int add_shard(struct source *src, const char *dir, const char *rel, const char *file, size_t component)
{
	struct shard *sh;

	if (st_reserve(&src->shards, &src->cap_shards, src->n_shards + 1, sizeof(*src->shards)))
		return -ENOMEM;
	sh = &src->shards[src->n_shards];
	*sh = (struct shard){.component = (uint32_t)component};
	if (!(sh->path = join(src, dir, file)))
		return -ENOMEM;
	if ((rel[0] ? asprintf(&sh->label, "%s/%s", rel, file) : asprintf(&sh->label, "%s", file)) < 0) {
		free(sh->path);
		return -ENOMEM;
	}
	src->n_shards++;
	return 0;
}

static long add_component(struct source *src, const char *name, const char *dir)
{
	struct component *c;

	if (st_reserve(&src->components, &src->cap_components, src->n_components + 1, sizeof(*c)))
		return -ENOMEM;
	c = &src->components[src->n_components];
	*c = (struct component){.name = strdup(name), .dir = strdup(dir), .first = src->n_shards};
	if (!c->name || !c->dir) {
		free(c->name);
		free(c->dir);
		return -ENOMEM;
	}
	return (long)src->n_components++;
}

/* An index file, or a remote one fetched whole; errors without the index's name. */
static int read_index(const struct source *src, const char *path, struct st_index *ix, char *why)
{
	struct http_response r;
	int rc;

	if (!src->remote) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return fail(why, -errno, "%s", strerror(errno));
		rc = st_index_read_fd(fd, ix, why);
		close(fd);
		return rc;
	}
	memset(ix, 0, sizeof(*ix));
	if ((rc = http_get(&src->http, path, &src->remote->auth, ST_MAX_INDEX_LEN, &r, why)) < 0)
		return rc == -EFBIG ? fail(why, -EINVAL, "index larger than %llu bytes", ST_MAX_INDEX_LEN) : rc;
	if (r.status == 200)
		rc = st_index_parse_file(r.body, r.len, ix, why);
	else if (r.status == 401 || r.status == 403)
		rc = fail(why, -EACCES, "access denied (HTTP %ld): %s", r.status,
			  src->remote->auth.token_hint ? src->remote->auth.token_hint : "check the URL and its permissions");
	else
		rc = fail(why, r.status == 404 ? -ENOENT : -EIO, "HTTP %ld", r.status);
	http_response_free(&r);
	return rc;
}

/* The index's shards, in the index's (sorted) file order.  The index is named in a refusal
 * unless it is SOURCE itself, which main.c names. */
static int load_index(struct source *src, const char *index_path, const char *rel, size_t component,
		      bool is_source, char *err)
{
	struct component *c = &src->components[component];
	char why[ST_ERR_LEN];
	int rc = read_index(src, index_path, &c->ix, why);

	if (rc == -ENOENT && !src->remote)
		return fail(err, rc, "%s: %s", index_path, why);
	if (rc) {
		char shown[ST_ERR_LEN / 4];
		http_redact(index_path, shown, sizeof(shown));
		const char *file = strrchr(shown, '/') ? strrchr(shown, '/') + 1 : shown;
		return is_source ? fail(err, rc, "%s", why)
			     : fail(err, rc, "%s%s%s: %.*s", rel, rel[0] ? "/" : "", file, ST_ERR_LEN / 2, why);
	}
	c->has_index = true;
	for (size_t i = 0; i < c->ix.n_files && !rc; i++)
		rc = add_shard(src, c->dir, rel, c->ix.strings + c->ix.files[i].name, component);
	return rc;
}

static int by_string(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int add_name(char ***names, size_t *n, size_t *cap, const char *name, size_t len)
{
	if (*n && strlen((*names)[*n - 1]) == len && strncmp((*names)[*n - 1], name, len) == 0)
		return 0; /* the paths are sorted: a folder's files follow one another */
	if (st_reserve(names, cap, *n + 1, sizeof(**names)) || !((*names)[*n] = strndup(name, len)))
		return -ENOMEM;
	(*n)++;
	return 0;
}

/* list_dir over a remote listing: DIR is base (without its '/') or base/SUB/..., encoded. */
static int list_remote(const struct source *src, const char *dir, const char *suffix, char ***names, size_t *n)
{
	const struct remote_listing *l = src->remote;
	size_t base = strlen(l->base) - 1, cap = 0, rel_len;
	const char *rel = dir + base;

	if (strncmp(dir, l->base, base) != 0)
		return -ENOENT;
	rel += *rel == '/';
	rel_len = strlen(rel);
	for (size_t i = 0; i < l->n_paths; i++) {
		const char *e = src->remote_esc[i], *p = l->paths[i];
		if (rel_len && (strncmp(e, rel, rel_len) != 0 || e[rel_len] != '/'))
			continue;
		/* The same part of the plain path: encoding keeps every '/' and makes none. */
		const char *rest = p;
		for (const char *q = rel; rel_len && q; q = strchr(q + 1, '/'))
			rest = strchr(rest, '/') + 1;
		const char *slash = strchr(rest, '/');
		int rc = 0;
		if (suffix && !slash && ends_with(rest, suffix))
			rc = add_name(names, n, &cap, rest, strlen(rest));
		else if (!suffix && slash)
			rc = add_name(names, n, &cap, rest, (size_t)(slash - rest));
		if (rc)
			return rc;
	}
	return 0;
}

/* The names in `dir` ending in `suffix` (regular files), or its subdirectories when suffix is NULL. */
static int list_dir(const struct source *src, const char *dir, const char *suffix, char ***names, size_t *n)
{
	DIR *d = src->remote ? NULL : opendir(dir);
	struct dirent *e;
	size_t cap = 0;

	*names = NULL;
	*n = 0;
	if (src->remote) {
		int rc = list_remote(src, dir, suffix, names, n);
		if (*n > 1)
			qsort(*names, *n, sizeof(**names), by_string);
		return rc;
	}
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		struct stat st;
		char *p;
		if (e->d_name[0] == '.' || (suffix && !ends_with(e->d_name, suffix)))
			continue;
		if (asprintf(&p, "%s/%s", dir, e->d_name) < 0)
			break;
		int ok = stat(p, &st) == 0 && (suffix ? S_ISREG(st.st_mode) : S_ISDIR(st.st_mode));
		free(p);
		if (!ok)
			continue;
		if (st_reserve(names, &cap, *n + 1, sizeof(**names)) || !((*names)[*n] = strdup(e->d_name)))
			break;
		(*n)++;
	}
	closedir(d);
	if (*n > 1)
		qsort(*names, *n, sizeof(**names), by_string);
	return 0;
}

static void free_list(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/*
 * The index of `dir` that names a model: with `variant` its *.safetensors.index.VARIANT.json,
 * else the plain *.safetensors.index.json (transformers and diffusers name them so).  0 with
 * *path NULL when there is none; two of them are refused, as nothing says which one is meant.
 */
static int find_index(const struct source *src, const char *dir, const char *variant, char **path, char *err)
{
	char **idx, *suffix;
	size_t n;
	int rc;

	*path = NULL;
	if ((variant ? asprintf(&suffix, "%s.%s.json", INDEX_SUFFIX_STEM, variant)
		     : asprintf(&suffix, "%s", INDEX_SUFFIX)) < 0)
		return -ENOMEM;
	rc = list_dir(src, dir, suffix, &idx, &n);
	free(suffix);
	if (rc < 0)
		return fail(err, rc, "%s: %s", dir, strerror(-rc));
	if (n > 1)
		rc = fail(err, -EINVAL, "%s holds several indexes (%s, ...): name one as SOURCE",
			  src->remote ? src->remote->display : dir, idx[0]);
	else if (n == 1 && !(*path = join(src, dir, idx[0])))
		rc = -ENOMEM;
	free_list(idx, n);
	return rc;
}

/* The component a group of files becomes: the folder's own when it is the only group (and
 * the folder's files need no directory of their own: `named`). */
static char *group_component(const char *rel, const struct folder_pick *pick, size_t g, bool named)
{
	char *name;

	if (pick->n_groups == 1 && !named)
		return strdup(rel);
	if (!rel[0])
		return strdup(pick->groups[g].name);
	return asprintf(&name, "%s/%s", rel, pick->groups[g].name) < 0 ? NULL : name;
}

/* The groups folder_pick made of dir's files: one is the folder's model, several one directory each. */
static int add_groups(struct source *src, const char *dir, const char *rel, char **files,
		      const struct folder_pick *pick, bool named)
{
	int rc = 0;

	for (size_t g = 0; g < pick->n_groups && !rc; g++) {
		const struct folder_group *gr = &pick->groups[g];
		char *name = group_component(rel, pick, g, named);
		long c = name ? add_component(src, name, dir) : -ENOMEM;
		free(name);
		if (c < 0)
			return -ENOMEM;
		for (size_t i = gr->first; i < gr->first + gr->count && !rc; i++)
			rc = add_shard(src, dir, rel, files[i], (size_t)c);
	}
	return rc;
}

/*
 * Which of dir's weights to take: *index set to the variant's index, else files[] holds the
 * variant's files (pick->variant_found), else *index is the plain index, else files[] the
 * plain files, grouped (folder.h).
 */
static int choose_weights(struct source *src, const char *dir, const char *rel, char **index, char ***files,
			  size_t *n_files, struct folder_pick *pick, char *err)
{
	char why[ST_ERR_LEN / 2];
	int rc = src->variant ? find_index(src, dir, src->variant, index, err) : 0;

	if (rc || *index) {
		src->variant_found |= *index != NULL;
		return rc;
	}
	list_dir(src, dir, SHARD_SUFFIX, files, n_files);
	int picked = folder_pick(*files, n_files, src->variant, pick, why, sizeof(why));
	if (picked == -ENOMEM)
		return picked;
	src->variant_found |= pick->variant_found;
	if (picked == 0 && pick->variant_found)
		return 0;
	/* Files the index leaves aside (consolidated.safetensors) may not group: no matter then. */
	if ((rc = find_index(src, dir, NULL, index, err)) || *index || picked == 0)
		return rc;
	return fail(err, picked, rel[0] ? "%s: %s" : "%s%s", rel, why);
}

/* "model" of DIR/model.safetensors.index[.VARIANT].json: the directory it needs beside others. */
static char *index_component(const char *index)
{
	const char *file = strrchr(index, '/') ? strrchr(index, '/') + 1 : index;

	return strndup(file, (size_t)(strstr(file, INDEX_SUFFIX_STEM) - file));
}

/*
 * A folder's weights (choose_weights) as components: the folder's own, or with `named` one
 * directory per model even when it holds one (its subfolders have weights too).  Returns 1
 * if it has none.
 */
static int load_folder(struct source *src, const char *dir, const char *rel, bool named, char *err)
{
	struct folder_pick pick = {0};
	char **files = NULL, *index = NULL;
	size_t n_files = 0;
	int rc = choose_weights(src, dir, rel, &index, &files, &n_files, &pick, err);

	if (!rc && index) {
		char *name = named ? index_component(index) : strdup(rel);
		long c = name ? add_component(src, name, dir) : -ENOMEM;
		free(name);
		rc = c < 0 ? -ENOMEM : load_index(src, index, rel, (size_t)c, false, err);
	} else if (!rc) {
		rc = n_files == 0 ? 1 : add_groups(src, dir, rel, files, &pick, named);
	}
	free(index);
	free_list(files, n_files);
	folder_pick_free(&pick);
	return rc;
}

/* A diffusers-style folder: one component per subfolder that holds weights. */
static int load_subfolders(struct source *src, const char *dir, char *err)
{
	char **subs;
	size_t n_subs;
	int rc = list_dir(src, dir, NULL, &subs, &n_subs), found = 0;

	for (size_t i = 0; i < n_subs && rc >= 0; i++) {
		char *p = join(src, dir, subs[i]);
		if (!p) {
			rc = -ENOMEM;
			break;
		}
		rc = load_folder(src, p, subs[i], false, err);
		found |= rc == 0;
		free(p);
	}
	free_list(subs, n_subs);
	if (rc < 0)
		return rc;
	return found ? 0 : fail(err, -EINVAL, "%s holds no .safetensors file or index", dir);
}

/* Whether a subfolder of DIR holds .safetensors files or an index (as diffusers repos do). */
static bool subfolders_have_weights(const struct source *src, const char *dir)
{
	char **subs, **files;
	size_t n_subs, n_files;
	bool found = false;

	if (list_dir(src, dir, NULL, &subs, &n_subs) < 0)
		return false;
	for (size_t i = 0; i < n_subs && !found; i++) {
		char *p = join(src, dir, subs[i]);
		if (!p)
			break;
		if (list_dir(src, p, SHARD_SUFFIX, &files, &n_files) == 0) {
			found = n_files > 0;
			free_list(files, n_files);
		}
		if (!found && list_dir(src, p, ".json", &files, &n_files) == 0) {
			for (size_t j = 0; j < n_files && !found; j++)
				found = strstr(files[j], INDEX_SUFFIX_STEM) != NULL;
			free_list(files, n_files);
		}
		free(p);
	}
	free_list(subs, n_subs);
	return found;
}

/* The root's own files (components [0, from_root)) beside its subfolders: one name each. */
static int check_top_names(const struct source *src, size_t from_root, char *err)
{
	for (size_t i = 0; i < from_root; i++)
		for (size_t j = from_root; j < src->n_components; j++) {
			const char *a = src->components[i].name, *b = src->components[j].name;
			size_t n = strlen(a);
			if (strncmp(a, b, n) == 0 && (b[n] == '\0' || b[n] == '/'))
				return fail(err, -EINVAL, "'%s' would be the directory both of files beside the "
					    "subfolders and of the subfolder %s/: name one of them as SOURCE", a, a);
		}
	return 0;
}

/* A folder (local, or a remote listing's base): its own weights and its subfolders'. */
static int load_tree(struct source *src, const char *path, char *err)
{
	bool subs = subfolders_have_weights(src, path);
	int rc = load_folder(src, path, "", subs, err);
	size_t from_root = src->n_components;

	if (rc == 1 || (rc == 0 && subs))
		rc = load_subfolders(src, path, err);
	if (rc == 0)
		rc = check_top_names(src, from_root, err);
	if (rc == 0 && src->variant && !src->variant_found)
		rc = fail(err, -EINVAL, "no file of variant %s here (*.%s.safetensors or an index of it)",
			  src->variant, src->variant);
	return rc;
}

/* SOURCE names one file, FILE of DIR, at PATH: an index, or the one shard. */
static int load_named(struct source *src, const char *path, const char *dir, const char *file, char *err)
{
	long c = add_component(src, "", dir);

	if (c < 0)
		return -ENOMEM;
	if (src->variant)
		return fail(err, -EINVAL, "-o variant=%s picks among a folder's files: name the folder", src->variant);
	if (ends_with(file, ".index.json"))
		return load_index(src, path, "", (size_t)c, true, err);
	int rc = add_shard(src, dir, "", file, (size_t)c);
	src->named_file = true;
	if (rc == 0 && src->remote) { /* the URL as given: it is already encoded */
		free(src->shards[src->n_shards - 1].path);
		if (!(src->shards[src->n_shards - 1].path = strdup(path)))
			rc = -ENOMEM;
	}
	return rc;
}

static int find_remote(struct source *src, const char *source, char *err)
{
	const struct remote_listing *l = src->remote;
	char *dir = strndup(l->base, strlen(l->base) - 1), *url = NULL;
	int rc;

	if (!dir)
		return -ENOMEM;
	if (!l->is_file) {
		rc = load_tree(src, dir, err);
	} else {
		bool plain = strncmp(source, "http://", 7) == 0 || strncmp(source, "https://", 8) == 0;
		url = plain ? strdup(source) : join(src, dir, l->paths[0]);
		rc = url ? load_named(src, url, dir, l->paths[0], err) : -ENOMEM;
	}
	free(url);
	free(dir);
	return rc;
}

static int find_shards(struct source *src, const char *path, char *err)
{
	struct stat st;
	int rc;

	if (src->remote)
		return find_remote(src, path, err);
	if (stat(path, &st) < 0)
		return fail(err, -errno, "%s", strerror(errno));
	if (S_ISDIR(st.st_mode))
		return load_tree(src, path, err);
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	const char *dir = dirname(copy);
	rc = load_named(src, path, dir, strrchr(path, '/') ? strrchr(path, '/') + 1 : path, err);
	free(copy);
	return rc;
}

/* Each shard needs a descriptor for the whole mount: raise the soft limit if they would not fit. */
static int ensure_fds(size_t shards, char *err)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)shards + FD_RESERVE;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need)
		return 0;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		snprintf(err, ST_ERR_LEN,
			 "%zu shards need %llu open files but the hard limit is %llu: raise it (ulimit -Hn)",
			 shards, (unsigned long long)need, (unsigned long long)rl.rlim_max);
		return -EMFILE;
	}
	rl.rlim_cur = need;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(err, ST_ERR_LEN, "cannot raise the open-file limit to %llu: %s",
			 (unsigned long long)need, strerror(errno));
		return -errno;
	}
	return 0;
}

static int read_store(void *ctx, void *buf, size_t len, uint64_t off)
{
	return store_read_direct(ctx, buf, len, off);
}

static int open_shard(const struct source *src, struct shard *sh, bool name_it, char *err)
{
	const char *fmt = name_it ? "%s: %s" : "%.0s%s";
	char why[ST_ERR_LEN];
	int rc;

	if (src->remote) /* its line names the URL */
		rc = store_http_open(sh->path, &src->from, &sh->store, err);
	else if ((rc = store_file_open(sh->path, &sh->store, why)) < 0)
		return fail(err, rc, fmt, sh->label, why);
	if (rc)
		return rc;
	if ((rc = st_header_read(read_store, sh->store, sh->store->size, &sh->hdr, why)) < 0)
		return fail(err, rc, fmt, sh->label, why);
	store_http_done_opening(sh->store);
	return 0;
}

struct opener {
	struct source *src;
	atomic_size_t next;
	bool name_shards; /* say which shard is at fault: SOURCE alone does not */
	int *rcs;
	char (*errs)[ST_ERR_LEN];
};

static void *open_some(void *arg)
{
	struct opener *o = arg;
	size_t i;

	while ((i = atomic_fetch_add(&o->next, 1)) < o->src->n_shards)
		o->rcs[i] = open_shard(o->src, &o->src->shards[i], o->name_shards, o->errs[i]);
	return NULL;
}

/* Parse every shard's header, on every core when there are several; report the first failure. */
static int open_all(struct source *src, bool name_shards, char *err)
{
	struct opener o = {.src = src, .name_shards = name_shards};
	/* Remote headers wait on the network, not on a core: all of them at once. */
	long cores = src->remote ? 64 : sysconf(_SC_NPROCESSORS_ONLN);
	size_t n = src->n_shards < (size_t)(cores > 0 ? cores : 1) ? src->n_shards : (size_t)cores;
	pthread_t threads[64];
	size_t started = 0;
	int rc = 0;

	if (n > 64)
		n = 64;
	o.rcs = calloc(src->n_shards, sizeof(*o.rcs));
	o.errs = calloc(src->n_shards, sizeof(*o.errs));
	if (!o.rcs || !o.errs) {
		free(o.rcs);
		free(o.errs);
		return -ENOMEM;
	}
	while (started + 1 < n && pthread_create(&threads[started], NULL, open_some, &o) == 0)
		started++;
	open_some(&o);
	for (size_t i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	for (size_t i = 0; i < src->n_shards && !rc; i++)
		if ((rc = o.rcs[i]))
			snprintf(err, ST_ERR_LEN, "%s", o.errs[i]);
	free(o.rcs);
	free(o.errs);
	return rc;
}

/* .header.json of several shards: {"label":<its header>,...}, the headers read from the shards. */
static int make_glue(struct source *src)
{
	if (src->n_shards < 2)
		return 0;
	if (!(src->glue = calloc(src->n_shards + 1, sizeof(*src->glue))))
		return -ENOMEM;
	for (size_t i = 0; i < src->n_shards; i++) {
		char *q = st_json_quote(src->shards[i].label, strlen(src->shards[i].label));
		if (!q || asprintf(&src->glue[i], "%s%s:", i ? "," : "{", q) < 0) {
			free(q);
			return -ENOMEM;
		}
		free(q);
	}
	return (src->glue[src->n_shards] = strdup("}")) ? 0 : -ENOMEM;
}

/*
 * The metadata of shards [first, first+n), with ix's (may be NULL) taking precedence; with
 * `common`, only the pairs all of them hold (st_metadata_common).
 */
static int merge_some(const struct source *src, size_t first, size_t n, const struct st_index *ix,
		      bool common, struct st_metadata *out)
{
	const struct st_header **hdrs = malloc((n ? n : 1) * sizeof(*hdrs));
	int rc;

	if (!hdrs)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		hdrs[i] = &src->shards[first + i].hdr;
	rc = common ? st_metadata_common(hdrs, n, out) : st_metadata_merge(hdrs, n, ix, out);
	free(hdrs);
	return rc;
}

static int merge_metadata(struct source *src)
{
	const struct component *only = src->n_components == 1 ? &src->components[0] : NULL;
	int rc = 0;

	for (size_t c = 0; c < src->n_components && !rc; c++) {
		struct component *k = &src->components[c];
		if (k->name[0])
			rc = merge_some(src, k->first, k->count, k->has_index ? &k->ix : NULL, false, &k->metadata);
	}
	/* The model at the root keeps its metadata there; over several components the root
	 * says only what holds for all of them, never one component's total_size as the mount's. */
	if (rc)
		return rc;
	if (only && !only->name[0])
		return merge_some(src, 0, src->n_shards, only->has_index ? &only->ix : NULL, false, &src->metadata);
	return merge_some(src, 0, src->n_shards, NULL, true, &src->metadata);
}

/* A remote SOURCE: what it names, and the pool and cache its reads share. */
static int open_remote(struct source *src, const char *path, const struct source_opts *o, char *err)
{
	struct remote_listing *l = calloc(1, sizeof(*l));
	int rc;

	if (!l)
		return -ENOMEM;
	src->remote = l;
	src->http = o->http;
	if (strncmp(path, "s3://", 5) == 0)
		rc = s3_open(&o->http, path, l, err);
	else if (strncmp(path, "hf://", 5) == 0)
		rc = hub_open(&o->http, path, l, err);
	else
		rc = http_listing(path, l, err);
	if (rc)
		return rc;
	uint64_t memory = o->cache_dir ? STORE_DEFAULT_CACHE : o->cache_size;
	/* With the disk cache, memory holds what reads in flight need, at least. */
	if (memory < (uint64_t)STORE_MIN_BLOCKS * o->block_size)
		memory = (uint64_t)STORE_MIN_BLOCKS * o->block_size;
	src->http.https_only = strncmp(l->base, "https://", 8) == 0;
	src->from = (struct http_source){.auth = &l->auth, .settings = &src->http};
	if (o->cache_dir && (rc = diskcache_open(o->cache_dir, o->cache_size, &src->from.disk, err)) < 0)
		return rc;
	if (!(src->remote_esc = calloc(l->n_paths ? l->n_paths : 1, sizeof(char *))) ||
	    !(src->from.pool = http_pool_new()) || !(src->from.cache = block_cache_new(o->block_size, memory)) ||
	    !(src->from.fetchers = fetchers_new()))
		return -ENOMEM;
	for (size_t i = 0; i < l->n_paths; i++)
		if (!(src->remote_esc[i] = http_escape_path(l->paths[i])))
			return -ENOMEM;
	return 0;
}

int source_open(const char *path, const struct source_opts *opts, struct source *src, char err[ST_ERR_LEN])
{
	int rc = 0;

	memset(src, 0, sizeof(*src));
	err[0] = '\0';
	src->variant = opts->variant;
	if (http_is_url(path))
		rc = open_remote(src, path, opts, err);
	if (!rc)
		rc = find_shards(src, path, err);
	for (size_t c = 0; c < src->n_components; c++)
		src->components[c].count = (c + 1 < src->n_components ? src->components[c + 1].first
								    : src->n_shards) - src->components[c].first;
	if (!rc && src->n_shards == 0) /* every way of finding shards refuses this; a last guard */
		rc = fail(err, -EINVAL, "holds no .safetensors shard");
	if (!rc && !src->remote)
		rc = ensure_fds(src->n_shards, err);
	if (!rc)
		rc = open_all(src, !src->named_file, err);
	if (!rc)
		rc = check_shards(src, err);
	if (!rc)
		rc = make_glue(src);
	if (!rc)
		rc = merge_metadata(src);
	if (rc == -ENOMEM && !err[0])
		snprintf(err, ST_ERR_LEN, "out of memory");
	if (rc)
		source_close(src);
	return rc;
}

void source_close(struct source *src)
{
	for (size_t i = 0; i < src->n_shards + src->n_dense; i++) {
		store_close(src->shards[i].store);
		st_header_free(&src->shards[i].hdr);
		free(src->shards[i].path);
		free(src->shards[i].label);
	}
	for (size_t c = 0; c < src->n_components; c++) {
		free(src->components[c].name);
		free(src->components[c].dir);
		st_index_free(&src->components[c].ix);
		st_metadata_free(&src->components[c].metadata);
	}
	for (size_t i = 0; src->glue && i <= src->n_shards; i++)
		free(src->glue[i]);
	free(src->glue);
	free(src->shards);
	free(src->components);
	st_metadata_free(&src->metadata);
	free(src->warning);
	if (src->remote) {
		for (size_t i = 0; src->remote_esc && i < src->remote->n_paths; i++)
			free(src->remote_esc[i]);
		remote_listing_free(src->remote);
		free(src->remote);
	}
	free(src->remote_esc);
	fetchers_free(src->from.fetchers); /* after the stores: their readahead needs them */
	block_cache_free(src->from.cache);
	http_pool_free(src->from.pool);
	diskcache_close(src->from.disk);
	memset(src, 0, sizeof(*src));
}
