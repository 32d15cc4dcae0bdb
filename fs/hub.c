/*
 * hf://ORG/REPO[@REVISION][/PATH] as a remote listing: the repository's files below PATH,
 * from the Hub's tree API, each read later from /resolve/ (which redirects to the CDN).
 * Every rule here follows huggingface_hub, the client the Hub is built for: a SOURCE that
 * works in hf_hub_download or HfFileSystem works here, with the same token.
 */
#include "hub.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http.h"
#include "remote.h"

#define TOKEN_FILE_MAX 65536
#define TREE_PAGE_MAX (32u << 20)   /* the Hub's pages are 1000 entries: far below this */
#define TREE_PAGES_MAX 100000       /* 10^8 entries: a Link loop, not a repository */
#define REPO_PART_MAX 96            /* huggingface_hub's REPO_ID_REGEX */

static const char *const TYPES[] = {"models", "datasets", "spaces", "kernels"};
static const char *const SINGULAR[] = {"model", "dataset", "space", "kernel"};
#define N_TYPES (sizeof(TYPES) / sizeof(TYPES[0]))

static const char TOKEN_HINT[] = "set HF_TOKEN (or run `hf auth login`) to a token that can read this "
				 "repository: https://huggingface.co/settings/tokens";

void hub_uri_free(struct hub_uri *u)
{
	free(u->type);
	free(u->repo);
	free(u->revision);
	free(u->path);
	memset(u, 0, sizeof(*u));
}

void hub_files_free(struct hub_files *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->paths[i]);
	free(f->paths);
	memset(f, 0, sizeof(*f));
}

bool hub_path_ok(const char *p)
{
	if (!*p || *p == '/')
		return false;
	for (const char *seg = p;;) {
		size_t n = strcspn(seg, "/");
		if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)seg[i] < 0x20 || seg[i] == 0x7f)
				return false;
		if (!seg[n])
			return true;
		seg += n + 1;
	}
}

/* One part of ORG/REPO: [A-Za-z0-9_.-]{1,96}, a word character at each end, as the regex's \b
 * demand; "--", ".." and a trailing ".git" are refused as validate_repo_id refuses them. */
static bool repo_part_ok(const char *s, size_t n)
{
	if (n == 0 || n > REPO_PART_MAX || !(isalnum((unsigned char)s[0]) || s[0] == '_') ||
	    !(isalnum((unsigned char)s[n - 1]) || s[n - 1] == '_'))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!(isalnum(c) || c == '_' || c == '-' || c == '.') || c >= 0x80)
			return false;
		if (i && (c == '-' || c == '.') && s[i - 1] == (char)c)
			return false;
	}
	return true;
}

static bool repo_ok(const char *repo)
{
	const char *slash = strchr(repo, '/');
	size_t n = strlen(repo);

	return slash && !strchr(slash + 1, '/') && repo_part_ok(repo, (size_t)(slash - repo)) &&
	       repo_part_ok(slash + 1, strlen(slash + 1)) && !(n >= 4 && strcmp(repo + n - 4, ".git") == 0);
}

static bool convert_char(char c)
{
	return isalnum((unsigned char)c) || (c && strchr("_.-", c));
}

/* The length of refs/pr/N or refs/convert/NAME at the start of S, else 0: the revisions
 * that hold a '/', which parse_hf_uri matches before splitting at the first '/'. */
static size_t special_ref(const char *s)
{
	size_t start = 0, n = 0;

	if (strncmp(s, "refs/pr/", 8) == 0)
		for (start = 8; isdigit((unsigned char)s[start + n]); n++)
			;
	else if (strncmp(s, "refs/convert/", 13) == 0)
		for (start = 13; convert_char(s[start + n]); n++)
			;
	return n ? start + n : 0;
}

/* %XX decoded as urllib's unquote does; a '%' without two hex digits stays.  *len: the
 * bytes decoded, which a %00 makes more than strlen. */
static char *unquote(const char *s, size_t n, size_t *len)
{
	char *out = malloc(n + 1), *p = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
		    isxdigit((unsigned char)s[i + 2])) {
			char hex[3] = {s[i + 1], s[i + 2], 0};
			*p++ = (char)strtol(hex, NULL, 16);
			i += 2;
		} else {
			*p++ = s[i];
		}
	}
	*p = '\0';
	*len = (size_t)(p - out);
	return out;
}

/* TYPE/ at the start of BODY: *type set, the rest returned; NULL with err when refused. */
static const char *split_type(const char *body, char **type, char err[ST_ERR_LEN])
{
	size_t n = strcspn(body, "/");

	for (size_t t = 0; t < N_TYPES; t++) {
		if (strlen(TYPES[t]) == n && strncmp(body, TYPES[t], n) == 0) {
			if (!body[n]) {
				snprintf(err, ST_ERR_LEN, "no repository after '%s/'", TYPES[t]);
				return NULL;
			}
			*type = strdup(TYPES[t]);
			return body + n + 1;
		}
		if (strlen(SINGULAR[t]) == n && strncmp(body, SINGULAR[t], n) == 0) {
			snprintf(err, ST_ERR_LEN, "the type must be plural: '%s/'", TYPES[t]);
			return NULL;
		}
	}
	if (n == 7 && strncmp(body, "buckets", 7) == 0) {
		snprintf(err, ST_ERR_LEN, "buckets are not repositories: name a model, dataset or space");
		return NULL;
	}
	*type = strdup("models");
	return body;
}

/* REVISION[/PATH] after the '@': *rev decoded, *path the rest; false with err. */
static bool split_revision(const char *s, struct hub_uri *out, char err[ST_ERR_LEN])
{
	size_t n = special_ref(s);
	const char *path;
	size_t len;

	if (n) {
		path = s + n + (s[n] == '/');
	} else {
		n = strcspn(s, "/");
		path = s + n + (s[n] == '/');
	}
	out->path = strdup(path);
	if (!(out->revision = unquote(s, n, &len)) || !out->path)
		return false;
	if (!out->revision[0]) {
		snprintf(err, ST_ERR_LEN, "empty revision after '@'");
		return false;
	}
	for (const char *c = out->revision; c < out->revision + len; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f) {
			snprintf(err, ST_ERR_LEN, "the revision holds a control character");
			return false;
		}
	return true;
}

/* ORG/REPO[@REVISION][/PATH], with the slashes around it taken off (as _parse_repo_body). */
static bool split_location(const char *loc, size_t len, struct hub_uri *out, char err[ST_ERR_LEN])
{
	const char *at = memchr(loc, '@', len), *slash = memchr(loc, '/', len);
	char *s = strndup(loc, len);
	bool ok = false;

	if (!s)
		return false;
	if (at && slash && slash < at && !memchr(slash + 1, '/', (size_t)(at - slash - 1))) {
		s[at - loc] = '\0';
		out->repo = strdup(s);
		ok = out->repo && split_revision(s + (at - loc) + 1, out, err);
	} else if (slash) {
		const char *second = strchr(s + (slash - loc) + 1, '/');
		out->repo = second ? strndup(s, (size_t)(second - s)) : strdup(s);
		out->path = strdup(second ? second + 1 : "");
		out->revision = strdup(HUB_DEFAULT_REVISION);
		ok = out->repo && out->path && out->revision;
	} else {
		snprintf(err, ST_ERR_LEN, "the repository must be ORG/NAME");
	}
	free(s);
	return ok;
}

/* What the daemon takes PATH to name: one weights file or index, else a folder. */
static bool names_file(const char *path)
{
	const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	size_t n = strlen(name);

	return (n > 12 && strcmp(name + n - 12, ".safetensors") == 0) ||
	       (strstr(name, ".safetensors.index.") && n > 5 && strcmp(name + n - 5, ".json") == 0);
}

static int check_parsed(struct hub_uri *out, char err[ST_ERR_LEN])
{
	if (!repo_ok(out->repo)) {
		snprintf(err, ST_ERR_LEN, "'%s' is no repository id (ORG/NAME: letters, digits, '-', '_', '.')",
			 out->repo);
		return -EINVAL;
	}
	if (out->path[0] && !hub_path_ok(out->path)) {
		snprintf(err, ST_ERR_LEN, "the path '%s' has an empty, '.' or '..' part", out->path);
		return -EINVAL;
	}
	out->is_file = out->path[0] && names_file(out->path);
	return 0;
}

int hub_parse_uri(const char *uri, struct hub_uri *out, char err[ST_ERR_LEN])
{
	const char *body = strncmp(uri, "hf://", 5) == 0 ? uri + 5 : NULL, *loc;
	size_t len;

	memset(out, 0, sizeof(*out));
	err[0] = '\0';
	if (!body || !*body) {
		snprintf(err, ST_ERR_LEN, "not hf://ORG/REPO[@REVISION][/PATH]");
		return -EINVAL;
	}
	if (!(loc = split_type(body, &out->type, err)))
		return -EINVAL;
	while (*loc == '/')
		loc++;
	for (len = strlen(loc); len && loc[len - 1] == '/'; len--)
		;
	if (!out->type || !split_location(loc, len, out, err) || !out->repo || !out->path || !out->revision) {
		int rc = err[0] ? -EINVAL : -ENOMEM;
		hub_uri_free(out);
		return rc;
	}
	int rc = check_parsed(out, err);
	if (rc)
		hub_uri_free(out);
	return rc;
}

static const char *nonempty(hub_getenv_fn env, void *arg, const char *name)
{
	const char *v = env(name, arg);
	return v && *v ? v : NULL;
}

char *hub_endpoint(hub_getenv_fn env, void *arg)
{
	const char *v = nonempty(env, arg, "HF_ENDPOINT");
	size_t n = v ? strlen(v) : 0;

	while (n && v[n - 1] == '/')
		n--;
	return n ? strndup(v, n) : strdup(HUB_DEFAULT_ENDPOINT);
}

/* DIR + "/" + NAME with a leading ~ of DIR as $HOME (os.path.expanduser, os.path.join). */
static int home_join(hub_getenv_fn env, void *arg, const char *dir, const char *name, char **out)
{
	const char *home = "", *rest = dir;
	size_t n, h = 0;

	*out = NULL;
	if (dir[0] == '~' && (dir[1] == '/' || !dir[1])) {
		if (!(home = nonempty(env, arg, "HOME")))
			return 0;
		for (h = strlen(home); h > 1 && home[h - 1] == '/'; h--)
			; /* expanduser: HOME's trailing '/' go, "/" stays */
		rest = dir + 1;
	}
	n = strlen(rest);
	bool slash = name[0] && (n ? rest[n - 1] != '/' : h && home[h - 1] != '/');
	if (asprintf(out, "%.*s%s%s%s", (int)h, home, rest, slash ? "/" : "", name) < 0) {
		*out = NULL;
		return -ENOMEM;
	}
	return 0;
}

int hub_token_path(hub_getenv_fn env, void *arg, char **path)
{
	const char *v;

	if ((v = nonempty(env, arg, "HF_TOKEN_PATH")))
		return home_join(env, arg, v, "", path);
	if ((v = nonempty(env, arg, "HF_HOME")))
		return home_join(env, arg, v, "token", path);
	if ((v = nonempty(env, arg, "XDG_CACHE_HOME")))
		return home_join(env, arg, v, "huggingface/token", path);
	return home_join(env, arg, "~/.cache", "huggingface/token", path);
}

/* _clean_token: CR and LF out, blanks trimmed; *out NULL when nothing is left. */
static int clean_token(const char *s, size_t n, char **out)
{
	char *t = malloc(n + 1), *p = t, *start;

	if (!(*out = t))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (s[i] != '\r' && s[i] != '\n')
			*p++ = s[i];
	while (p > t && isspace((unsigned char)p[-1]))
		p--;
	*p = '\0';
	for (start = t; isspace((unsigned char)*start); start++)
		;
	memmove(t, start, strlen(start) + 1);
	if (!t[0]) {
		free(t);
		*out = NULL;
	}
	return 0;
}

/* The token file's contents: 0 with *text (NULL when there is no file), or -errno and err. */
static int read_token_file(const char *path, char **text, size_t *len, char err[ST_ERR_LEN])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got = 0;

	*text = NULL;
	if (fd < 0 && errno == ENOENT)
		return 0; /* huggingface_hub: no file is no token */
	if (fd < 0) {
		int e = errno;
		snprintf(err, ST_ERR_LEN, "the token file %s: %s", path, strerror(e));
		return e == EACCES ? -EACCES : -EIO;
	}
	if (!(*text = malloc(TOKEN_FILE_MAX + 1))) {
		close(fd);
		return -ENOMEM;
	}
	*len = 0;
	while (*len <= TOKEN_FILE_MAX && (got = read(fd, *text + *len, TOKEN_FILE_MAX + 1 - *len)) > 0)
		*len += (size_t)got;
	int e = errno;
	close(fd);
	if (got < 0 || *len > TOKEN_FILE_MAX) {
		snprintf(err, ST_ERR_LEN, "the token file %s: %s", path,
			 got < 0 ? strerror(e) : "too large to be a token");
		free(*text);
		*text = NULL;
		return got < 0 ? -EIO : -EINVAL;
	}
	return 0;
}

static int token_from_file(hub_getenv_fn env, void *arg, char **token, char err[ST_ERR_LEN])
{
	char *path, *text;
	size_t len = 0;
	int rc = hub_token_path(env, arg, &path);

	if (rc || !path)
		return rc;
	if (!(rc = read_token_file(path, &text, &len, err)) && text) {
		rc = memchr(text, 0, len) ? 1 : clean_token(text, len, token);
		free(text);
	}
	if (rc == 1)
		snprintf(err, ST_ERR_LEN, "the token file %s holds a NUL byte", path);
	free(path);
	return rc == 1 ? -EINVAL : rc;
}

static bool env_true(hub_getenv_fn env, void *arg, const char *name)
{
	const char *v = env(name, arg);
	static const char *const yes[] = {"1", "ON", "YES", "TRUE"};

	for (size_t i = 0; v && i < sizeof(yes) / sizeof(yes[0]); i++)
		if (strcasecmp(v, yes[i]) == 0)
			return true;
	return false;
}

int hub_find_token(hub_getenv_fn env, void *arg, char **token, char err[ST_ERR_LEN])
{
	const char *v = nonempty(env, arg, "HF_TOKEN"), *from = "HF_TOKEN";
	int rc = 0;

	*token = NULL;
	if (env_true(env, arg, "HF_HUB_DISABLE_IMPLICIT_TOKEN"))
		return 0; /* get_token_to_send: no token unless one is passed, and none is */
	if (!v)
		v = nonempty(env, arg, "HUGGING_FACE_HUB_TOKEN"), from = "HUGGING_FACE_HUB_TOKEN";
	if (v && clean_token(v, strlen(v), token))
		return -ENOMEM;
	if (!*token)
		from = "the huggingface_hub token file";
	if (!*token && (rc = token_from_file(env, arg, token, err)))
		return rc;
	for (const char *c = *token; c && *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f) {
			snprintf(err, ST_ERR_LEN, "%s: the token holds a control character", from);
			free(*token);
			*token = NULL;
			return -EINVAL;
		}
	return 0;
}

char *hub_tree_url(const char *endpoint, const struct hub_uri *u, const char *dir, bool recursive)
{
	char *rev = http_escape(u->revision), *d = http_escape(dir), *out = NULL;

	if (rev && d && asprintf(&out, "%s/api/%s/%s/tree/%s%s%s?recursive=%s&expand=false", endpoint, u->type,
				 u->repo, rev, d[0] ? "/" : "", d, recursive ? "true" : "false") < 0)
		out = NULL;
	free(rev);
	free(d);
	return out;
}

char *hub_resolve_base(const char *endpoint, const struct hub_uri *u, const char *dir)
{
	char *rev = http_escape(u->revision), *d = http_escape_path(dir), *out = NULL;
	bool model = strcmp(u->type, "models") == 0;

	if (rev && d && asprintf(&out, "%s/%s%s%s/resolve/%s/%s%s", endpoint, model ? "" : u->type,
				 model ? "" : "/", u->repo, rev, d, d[0] ? "/" : "") < 0)
		out = NULL;
	free(rev);
	free(d);
	return out;
}

/* ENTRY's string field NAME, NULL when missing, not a string or holding a NUL. */
static const char *string_field(json_object *entry, const char *name)
{
	json_object *v;

	if (!json_object_object_get_ex(entry, name, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	const char *s = json_object_get_string(v);
	return strlen(s) == (size_t)json_object_get_string_len(v) ? s : NULL;
}

/* ENTRY's field NAME as a size: false when missing, not an integer, or negative. */
static bool size_field(json_object *entry, const char *name, int64_t *out)
{
	json_object *v;

	if (!json_object_object_get_ex(entry, name, &v) || !json_object_is_type(v, json_type_int))
		return false;
	*out = json_object_get_int64(v);
	return *out >= 0;
}

/* A file entry's size, oid and lfs {oid, size, pointerSize}: NULL, or what is wrong. */
static const char *file_fields_wrong(json_object *entry)
{
	json_object *lfs;
	int64_t size, lfs_size, pointer;

	if (!size_field(entry, "size", &size))
		return "no \"size\" (a number of bytes)";
	if (!string_field(entry, "oid"))
		return "no \"oid\" (a string)";
	if (!json_object_object_get_ex(entry, "lfs", &lfs) || json_object_is_type(lfs, json_type_null))
		return NULL;
	if (!json_object_is_type(lfs, json_type_object) || !string_field(lfs, "oid") ||
	    !size_field(lfs, "size", &lfs_size) || !size_field(lfs, "pointerSize", &pointer))
		return "an \"lfs\" that is not {oid, size, pointerSize}";
	return lfs_size == size ? NULL : "an \"lfs\" size other than its \"size\"";
}

/* Appends PATH (below DIR) to F relative to DIR: 0, -ENOMEM, or 1 when outside DIR. */
static int add_file(struct hub_files *f, const char *dir, const char *path)
{
	size_t d = strlen(dir);

	if (d && (strncmp(path, dir, d) != 0 || path[d] != '/' || !path[d + 1]))
		return 1;
	if (f->n == f->cap) {
		size_t cap = f->cap ? 2 * f->cap : 64;
		char **grown = realloc(f->paths, cap * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		f->paths = grown;
		f->cap = cap;
	}
	if (!(f->paths[f->n] = strdup(path + (d ? d + 1 : 0))))
		return -ENOMEM;
	f->n++;
	return 0;
}

/* One entry of a page: a file added, a directory checked and skipped. */
static int parse_entry(json_object *entry, const char *dir, struct hub_files *f, char err[ST_ERR_LEN])
{
	const char *type = string_field(entry, "type"), *path = string_field(entry, "path"), *wrong = NULL;
	int rc;

	if (!json_object_is_type(entry, json_type_object))
		wrong = "an entry that is not an object";
	else if (!type || !path)
		wrong = "an entry without \"type\" and \"path\" strings";
	else if (!hub_path_ok(path))
		wrong = "a path with an empty, '.' or '..' part or a leading '/'";
	else if (strcmp(type, "file") == 0)
		wrong = file_fields_wrong(entry);
	if (wrong) {
		snprintf(err, ST_ERR_LEN, "the tree listing has %s%s%.200s%s", wrong, path ? " ('" : "",
			 path ? path : "", path ? "')" : "");
		return -EPROTO;
	}
	if (strcmp(type, "file") != 0)
		return 0; /* "directory": a recursive listing names each file itself */
	if ((rc = add_file(f, dir, path)) == 1) {
		snprintf(err, ST_ERR_LEN, "the tree listing of '%s' has '%.200s', outside it", dir, path);
		return -EPROTO;
	}
	return rc;
}

int hub_parse_tree_page(const char *body, size_t len, const char *dir, struct hub_files *f, char err[ST_ERR_LEN])
{
	json_tokener *tok = json_tokener_new();
	json_object *page;
	int rc = 0;

	if (!tok)
		return -ENOMEM;
	page = len <= (size_t)INT32_MAX ? json_tokener_parse_ex(tok, body, (int)len) : NULL;
	if (!page || json_tokener_get_error(tok) != json_tokener_success ||
	    json_tokener_get_parse_end(tok) != len || !json_object_is_type(page, json_type_array)) {
		snprintf(err, ST_ERR_LEN, "the tree listing is not a JSON array");
		rc = -EPROTO;
	}
	for (size_t i = 0; !rc && i < json_object_array_length(page); i++)
		rc = parse_entry(json_object_array_get_idx(page, i), dir, f, err);
	json_object_put(page);
	json_tokener_free(tok);
	return rc;
}

static int cmp_paths(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int hub_files_finish(struct hub_files *f, char err[ST_ERR_LEN])
{
	if (f->n)
		qsort(f->paths, f->n, sizeof(*f->paths), cmp_paths);
	for (size_t i = 1; i < f->n; i++)
		if (strcmp(f->paths[i - 1], f->paths[i]) == 0) {
			snprintf(err, ST_ERR_LEN, "the tree listing names '%.200s' twice", f->paths[i]);
			return -EPROTO;
		}
	return 0;
}

void hub_error_message(const char *body, size_t len, char *out, size_t outlen)
{
	/* LEN bytes of BODY, not to a NUL: json_tokener_parse would read past them. */
	json_tokener *tok = len <= (size_t)INT32_MAX ? json_tokener_new() : NULL;
	json_object *doc = tok ? json_tokener_parse_ex(tok, body, (int)len) : NULL, *e;
	const char *s = NULL;
	size_t n = 0;

	if (doc && json_object_is_type(doc, json_type_object) && json_object_object_get_ex(doc, "error", &e)) {
		if (json_object_is_type(e, json_type_array) && json_object_array_length(e))
			e = json_object_array_get_idx(e, 0); /* {"error": ["one", "two"]} */
		if (json_object_is_type(e, json_type_string))
			s = json_object_get_string(e);
	}
	for (; s && s[n] && n + 1 < outlen; n++)
		out[n] = (unsigned char)s[n] >= 0x20 && (unsigned char)s[n] < 0x7f ? s[n] : '?';
	if (outlen)
		out[n] = '\0';
	json_object_put(doc);
	if (tok)
		json_tokener_free(tok);
}

/* What hub_open's steps share. */
struct hub_ctx {
	const struct http_settings *s;
	struct hub_uri u;
	char *endpoint;
	const struct http_auth *auth;
	const char *display; /* the SOURCE, redacted */
};

static const char *env_get(const char *name, void *arg)
{
	(void)arg;
	return getenv(name);
}

/* The status of GET {endpoint}/api/TYPE/REPO[/revision/REV] (model_info), or 0 when the
 * request failed: only asked after a refusal, to say which part of the SOURCE is wrong. */
static long probe(const struct hub_ctx *c, bool with_revision)
{
	struct http_response r;
	char *rev = http_escape(c->u.revision), *url = NULL, err[ST_ERR_LEN];
	long status = 0;

	if (rev && asprintf(&url, "%s/api/%s/%s%s%s", c->endpoint, c->u.type, c->u.repo,
			    with_revision ? "/revision/" : "", with_revision ? rev : "") < 0)
		url = NULL;
	if (url && http_get(c->s, url, c->auth, TREE_PAGE_MAX, &r, err) == 0) {
		status = r.status;
		http_response_free(&r);
	}
	free(url);
	free(rev);
	return status;
}

/* The line for a tree listing refused with STATUS: the Hub answers 401 for a private
 * repository as for a missing one, and only the repository's page tells gated from both. */
static int refused(const struct hub_ctx *c, long status, const char *msg, const char *dir, char err[ST_ERR_LEN])
{
	bool token = c->auth->header != NULL;
	long repo = status == 401 || status == 403 || status == 404 ? probe(c, false) : 0;

	if (repo == 200 && status != 404) {
		snprintf(err, ST_ERR_LEN, "%s: a gated repository: accept its conditions at %s/%s, then %s (%ld: %s)",
			 c->display, c->endpoint, c->u.repo, token ? "use a token of that account" : "set HF_TOKEN",
			 status, msg);
		return -EACCES;
	}
	if (repo == 200 && probe(c, true) == 200) {
		snprintf(err, ST_ERR_LEN, "%s: no folder '%s' at revision %s", c->display, dir, c->u.revision);
		return -ENOENT;
	}
	if (repo == 200) {
		snprintf(err, ST_ERR_LEN, "%s: no revision '%s' (a branch, tag or commit) in %s", c->display,
			 c->u.revision, c->u.repo);
		return -ENOENT;
	}
	if (repo == 401 && token && strstr(msg, "Invalid credentials")) {
		snprintf(err, ST_ERR_LEN, "%s: the Hub refuses the token (HF_TOKEN or the token file): %s", c->display, msg);
		return -EACCES;
	}
	if (repo == 401 || repo == 403 || repo == 404) {
		snprintf(err, ST_ERR_LEN, "%s: no repository %s%s (%ld: %s)", c->display, c->u.repo,
			 token ? ", or the token cannot read it" : ", or it is private: set HF_TOKEN to a token that can read it",
			 status, msg);
		return -ENOENT;
	}
	snprintf(err, ST_ERR_LEN, "%s: the Hub answered %ld to the tree listing%s%s", c->display, status,
		 msg[0] ? ": " : "", msg);
	return -EIO;
}

/* Whether NEXT (a Link rel="next") stays on the endpoint's origin: the token goes with it. */
static bool same_origin(const char *endpoint, const char *next)
{
	const char *host = strstr(endpoint, "://");
	size_t n = host ? (size_t)(host + 3 - endpoint) + strcspn(host + 3, "/?#") : 0;

	return n && strncmp(endpoint, next, n) == 0 && (next[n] == '/' || next[n] == '?');
}

/* One page of the tree at URL into F; *next the page after it, or NULL. */
static int tree_page(const struct hub_ctx *c, const char *url, const char *dir, struct hub_files *f,
		     char **next, char err[ST_ERR_LEN])
{
	struct http_response r;
	char line[ST_ERR_LEN], msg[200];
	int rc = http_get(c->s, url, c->auth, TREE_PAGE_MAX, &r, line);

	*next = NULL;
	if (rc) {
		snprintf(err, ST_ERR_LEN, "%s: %.480s", c->display, line);
		return rc;
	}
	hub_error_message(r.body, r.len, msg, sizeof(msg));
	if (r.status != 200)
		rc = refused(c, r.status, msg, dir, err);
	else if ((rc = hub_parse_tree_page(r.body, r.len, dir, f, line)))
		snprintf(err, ST_ERR_LEN, "%s: %.480s", c->display, line);
	else if (r.next_url && !same_origin(c->endpoint, r.next_url))
		snprintf(err, ST_ERR_LEN, "%s: the tree listing's next page is off %s", c->display, c->endpoint),
			rc = -EPROTO;
	if (!rc)
		*next = r.next_url, r.next_url = NULL;
	http_response_free(&r);
	return rc;
}

/* Every page of DIR's tree, following Link rel="next" as huggingface_hub's paginate does. */
static int list_tree(const struct hub_ctx *c, const char *dir, bool recursive, struct hub_files *f,
		     char err[ST_ERR_LEN])
{
	char *url = hub_tree_url(c->endpoint, &c->u, dir, recursive), *next = NULL;
	int rc = url ? 0 : -ENOMEM;

	for (unsigned pages = 0; !rc && url; pages++) {
		if (pages == TREE_PAGES_MAX) {
			snprintf(err, ST_ERR_LEN, "%s: the tree listing goes on past %u pages", c->display, pages);
			rc = -EPROTO;
			break;
		}
		rc = tree_page(c, url, dir, f, &next, err);
		free(url);
		url = next;
	}
	free(url);
	if (!rc)
		rc = hub_files_finish(f, err);
	return rc;
}

/* The listing's paths: F's files (a folder), or the one file the SOURCE names. */
static int take_paths(const struct hub_ctx *c, struct hub_files *f, struct remote_listing *out,
		      char err[ST_ERR_LEN])
{
	const char *name = strrchr(c->u.path, '/') ? strrchr(c->u.path, '/') + 1 : c->u.path;

	if (c->u.is_file) {
		size_t i = 0;
		while (i < f->n && strcmp(f->paths[i], name) != 0)
			i++;
		if (i == f->n) {
			snprintf(err, ST_ERR_LEN, "%s: no file '%s' at revision %s", c->display, c->u.path,
				 c->u.revision);
			return -ENOENT;
		}
		char *keep = f->paths[i];
		f->paths[i] = f->paths[0];
		f->paths[0] = keep;
		for (size_t j = 1; j < f->n; j++)
			free(f->paths[j]);
		f->n = 1;
	} else if (!f->n) {
		snprintf(err, ST_ERR_LEN, "%s: no files in %s%s%s at revision %s", c->display, c->u.repo,
			 c->u.path[0] ? "/" : "", c->u.path, c->u.revision);
		return -ENOENT;
	}
	out->paths = f->paths;
	out->n_paths = f->n;
	out->is_file = c->u.is_file;
	memset(f, 0, sizeof(*f));
	return 0;
}

/* The token as "Authorization: Bearer ..." in AUTH, or no header without one. */
static int hub_auth(struct http_auth *auth, char err[ST_ERR_LEN])
{
	char *token;
	int rc = hub_find_token(env_get, NULL, &token, err);

	auth->token_hint = TOKEN_HINT;
	if (rc || !token)
		return rc;
	if (asprintf(&auth->header, "Authorization: Bearer %s", token) < 0)
		auth->header = NULL, rc = -ENOMEM;
	memset(token, 0, strlen(token));
	free(token);
	return rc;
}

static int hub_listing(struct hub_ctx *c, struct remote_listing *out, char err[ST_ERR_LEN])
{
	struct hub_files f = {0};
	const char *slash = strrchr(c->u.path, '/');
	char *dir = c->u.is_file ? strndup(c->u.path, slash ? (size_t)(slash - c->u.path) : 0) : strdup(c->u.path);
	int rc = dir ? 0 : -ENOMEM;

	if (!rc && !(c->endpoint = hub_endpoint(env_get, NULL)))
		rc = -ENOMEM;
	if (!rc && !(rc = hub_auth(&out->auth, err))) {
		c->auth = &out->auth;
		/* A named file needs only its folder's own entries: no recursion there. */
		rc = list_tree(c, dir, !c->u.is_file, &f, err);
	}
	if (!rc)
		rc = take_paths(c, &f, out, err);
	if (!rc && !(out->base = hub_resolve_base(c->endpoint, &c->u, dir)))
		rc = -ENOMEM;
	hub_files_free(&f);
	free(dir);
	return rc;
}

int hub_open(const struct http_settings *s, const char *uri, struct remote_listing *out, char err[ST_ERR_LEN])
{
	struct hub_ctx c = {.s = s};
	char line[ST_ERR_LEN];
	int rc;

	if (remote_listing_init(out, uri, err) < 0)
		return -ENOMEM;
	c.display = out->display;
	if ((rc = hub_parse_uri(uri, &c.u, line))) {
		if (rc != -ENOMEM)
			snprintf(err, ST_ERR_LEN, "%s: %.400s (hf://[TYPE/]ORG/REPO[@REVISION][/PATH])", c.display, line);
		return rc;
	}
	rc = hub_listing(&c, out, line);
	if (rc && rc != -ENOMEM)
		snprintf(err, ST_ERR_LEN, "%s", line);
	hub_uri_free(&c.u);
	free(c.endpoint);
	return rc;
}
