/*
 * libFuzzer target for what the remote sources parse (fs/s3.c, fs/hub.c, fs/http.c,
 * fs/remote.c).  The first byte picks the function (byte % N_TARGETS) and a small
 * parameter (byte / N_TARGETS: an output size, a flag); the rest is its input, or, where
 * it takes two, split at the first NUL into a string and the bytes after it (which may
 * hold NULs).  Bodies are passed in buffers of exactly their length, so that reading past
 * `len` is an ASan error.  Checks: listings only ever yield safe relative paths (no empty,
 * "." or ".." segment, no leading or trailing '/', no control character or NUL), sorted
 * and distinct once finished; a redacted URL holds no userinfo and nothing of its query;
 * escaping reverses; every output is NUL-terminated within its bound, and a shorter bound
 * gives a prefix of the longer one's output.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../fs/http.h"
#include "../../fs/hub.h"
#include "../../fs/remote.h"
#include "../../fs/s3.h"

#define BIG 4096

#define ASSERT(c)                    \
	do {                         \
		if (!(c))            \
			__builtin_trap(); \
	} while (0)

enum {
	T_S3_URI,
	T_S3_LISTING,
	T_S3_ERROR,
	T_S3_INI,
	T_HUB_URI,
	T_HUB_TREE,
	T_HUB_ERROR,
	T_REDACT,
	T_SIBLING,
	T_ESCAPE,
	T_HTTP_LISTING,
	N_TARGETS
};

/* The input as a string (up to its first NUL) and the bytes after that NUL. */
struct split {
	char *s;        /* malloc'd, NUL-terminated */
	char *rest;     /* malloc'd, exactly rest_len bytes (1 when 0, never read) */
	size_t rest_len;
};

static void split_at_nul(const uint8_t *d, size_t n, struct split *sp)
{
	const uint8_t *nul = memchr(d, 0, n);
	size_t a = nul ? (size_t)(nul - d) : n;

	sp->s = strndup((const char *)d, a);
	sp->rest_len = nul ? n - a - 1 : 0;
	sp->rest = malloc(sp->rest_len ? sp->rest_len : 1);
	if (sp->rest_len)
		memcpy(sp->rest, nul + 1, sp->rest_len);
}

static void split_free(struct split *sp)
{
	free(sp->s);
	free(sp->rest);
}

/* What a listing may yield: relative, '/'-separated, no empty, "." or ".." segment, no
 * control character (and so no NUL before its end, which strlen cannot see anyway). */
static void check_path(const char *p)
{
	size_t n = strlen(p), start = 0;

	ASSERT(n > 0 && p[0] != '/' && p[n - 1] != '/');
	for (size_t i = 0; i <= n; i++) {
		if (i < n) {
			ASSERT((unsigned char)p[i] >= 0x20 && p[i] != 0x7f);
			if (p[i] != '/')
				continue;
		}
		size_t seg = i - start;
		ASSERT(seg > 0);
		ASSERT(!(seg == 1 && p[start] == '.'));
		ASSERT(!(seg == 2 && p[start] == '.' && p[start + 1] == '.'));
		start = i + 1;
	}
	ASSERT(hub_path_ok(p));
}

static void check_sorted(char **paths, size_t n)
{
	for (size_t i = 1; i < n; i++)
		ASSERT(strcmp(paths[i - 1], paths[i]) < 0);
}

/* Only bytes an escaped URL part may hold, with '%' always followed by two hex digits. */
static void check_escaped(const char *s, const char *also)
{
	for (const char *c = s; *c; c++) {
		if (*c == '%') {
			ASSERT(isxdigit((unsigned char)c[1]) && isxdigit((unsigned char)c[2]));
			continue;
		}
		ASSERT(isalnum((unsigned char)*c) || strchr("._~-", *c) || strchr(also, *c));
	}
}

static int unhex(char c)
{
	return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* The inverse of http_escape: IN decoded into a new string. */
static char *unescape(const char *in)
{
	char *out = malloc(strlen(in) + 1), *o = out;

	for (; *in; in++) {
		if (*in == '%') {
			*o++ = (char)(unhex(in[1]) * 16 + unhex(in[2]));
			in += 2;
		} else {
			*o++ = *in;
		}
	}
	*o = '\0';
	return out;
}

/* OUT from a function given OUTLEN: NUL-terminated within it, and the first bytes of
 * FULL (the same function's output with room to spare). */
static void check_bounded(const char *out, size_t outlen, const char *full)
{
	if (!outlen)
		return;
	size_t n = strnlen(out, outlen);
	ASSERT(n < outlen);
	ASSERT(n == (strlen(full) < outlen - 1 ? strlen(full) : outlen - 1));
	ASSERT(memcmp(out, full, n) == 0);
}

/* An output buffer of exactly LEN bytes, filled with junk, that ends where its allocation
 * ends (one byte is kept before it, so that even LEN 0 has a byte past it for ASan to
 * catch); free *BASE. */
static char *outbuf(size_t len, char **base)
{
	*base = malloc(len + 1);
	memset(*base, 'J', len + 1);
	return *base + 1;
}

static void fuzz_s3_uri(const char *uri)
{
	struct s3_uri u;
	char err[ST_ERR_LEN];

	if (s3_parse_uri(uri, &u, err) != 0) {
		ASSERT(strnlen(err, ST_ERR_LEN) < ST_ERR_LEN && err[0]);
		s3_uri_free(&u);
		return;
	}
	size_t bl = strlen(u.bucket), kl = strlen(u.key);
	ASSERT(bl >= 3 && bl <= 63 && strncmp(uri + 5, u.bucket, bl) == 0);
	for (size_t i = 0; i < bl; i++)
		ASSERT(isalnum((unsigned char)u.bucket[i]) || strchr("._-", u.bucket[i]));
	ASSERT(u.is_file == (kl && u.key[kl - 1] != '/'));
	if (kl) {
		char *k = strndup(u.key, kl - !u.is_file);
		check_path(k);
		free(k);
	}

	struct s3_config c = {.region = "us-east-1"};
	char *bucket_url = s3_bucket_url(&c, u.bucket);
	char *list = bucket_url ? s3_list_url(bucket_url, u.key, u.key, 1) : NULL;
	ASSERT(bucket_url && list);
	const char *q = strchr(list, '?');
	ASSERT(q && !strchr(q + 1, '?') && !strchr(list, '#'));
	check_escaped(q + 1, "=&");
	free(list);
	free(bucket_url);
	s3_uri_free(&u);
}

static void fuzz_s3_listing(const struct split *sp)
{
	struct s3_keys k = {0};
	char err[ST_ERR_LEN];
	int rc = s3_parse_listing(sp->rest, sp->rest_len, sp->s, &k, err);

	ASSERT(rc == 0 || rc == -EPROTO);
	if (rc) {
		ASSERT(strnlen(err, ST_ERR_LEN) < ST_ERR_LEN);
	} else {
		ASSERT(!k.truncated || (k.next_token && k.next_token[0]));
		ASSERT(k.truncated || !k.next_token);
	}
	for (size_t i = 0; i < k.n; i++)
		check_path(k.paths[i]);
	if (!rc && s3_keys_finish(&k, err) == 0)
		check_sorted(k.paths, k.n);
	s3_keys_free(&k);
}

static void fuzz_s3_error(const struct split *sp, size_t outlen)
{
	char full[BIG], *base, *out = outbuf(outlen, &base);

	s3_error_field(sp->rest, sp->rest_len, sp->s, full, sizeof(full));
	ASSERT(strnlen(full, sizeof(full)) < sizeof(full));
	for (const char *c = full; *c; c++)
		ASSERT(*c >= 0x20 && *c < 0x7f);
	s3_error_field(sp->rest, sp->rest_len, sp->s, out, outlen);
	check_bounded(out, outlen, full);
	free(base);
}

/* The string part is "SECTION\nKEY"; the bytes after the NUL are the INI text. */
static void fuzz_s3_ini(const struct split *sp)
{
	char *nl = strchr(sp->s, '\n'), *v = (char *)1;
	const char *key = nl ? nl + 1 : "region";

	if (nl)
		*nl = '\0';
	int rc = s3_ini_value(sp->rest, sp->rest_len, sp->s, key, &v);
	bool has = s3_ini_has_section(sp->rest, sp->rest_len, sp->s);
	ASSERT(rc == 0 || rc == 1);
	ASSERT((rc == 1) == (v != NULL));
	if (rc == 1) {
		size_t n = strlen(v);
		ASSERT(has);
		ASSERT(!strchr(v, '\n'));
		ASSERT(!n || !isspace((unsigned char)v[0]));
		/* Trimmed at its end too, unless a NUL in the text cut it short (strndup). */
		ASSERT(!n || !isspace((unsigned char)v[n - 1]) || memchr(sp->rest, 0, sp->rest_len));
	}
	free(v);
}

static void fuzz_hub_uri(const char *uri, bool recursive)
{
	struct hub_uri u;
	char err[ST_ERR_LEN];

	if (hub_parse_uri(uri, &u, err) != 0) {
		ASSERT(strnlen(err, ST_ERR_LEN) < ST_ERR_LEN && err[0]);
		ASSERT(!u.type && !u.repo && !u.revision && !u.path);
		return;
	}
	static const char *const types[] = {"models", "datasets", "spaces", "kernels"};
	bool type_ok = false;
	for (size_t t = 0; t < 4; t++)
		type_ok |= strcmp(u.type, types[t]) == 0;
	ASSERT(type_ok);
	const char *slash = strchr(u.repo, '/');
	ASSERT(slash && slash > u.repo && slash[1] && !strchr(slash + 1, '/'));
	for (const char *c = u.repo; *c; c++)
		ASSERT(isalnum((unsigned char)*c) || strchr("_.-/", *c));
	ASSERT(u.revision[0]);
	for (const char *c = u.revision; *c; c++)
		ASSERT((unsigned char)*c >= 0x20 && *c != 0x7f);
	if (u.path[0])
		check_path(u.path);
	ASSERT(!u.is_file || u.path[0]);

	const char *ep = "https://huggingface.co";
	char *tree = hub_tree_url(ep, &u, u.path, recursive), *base = hub_resolve_base(ep, &u, u.path);
	ASSERT(tree && base);
	ASSERT(strncmp(tree, ep, strlen(ep)) == 0 && strncmp(base, ep, strlen(ep)) == 0);
	const char *q = strchr(tree, '?');
	ASSERT(q && !strchr(q + 1, '?') && !strchr(tree, '#'));
	check_escaped(tree + strlen(ep), "/?=&");
	check_escaped(base + strlen(ep), "/");
	ASSERT(base[strlen(base) - 1] == '/');
	free(tree);
	free(base);
	hub_uri_free(&u);
}

static void fuzz_hub_tree(const struct split *sp)
{
	struct hub_files f = {0};
	char err[ST_ERR_LEN];
	int rc = hub_parse_tree_page(sp->rest, sp->rest_len, sp->s, &f, err);

	ASSERT(rc == 0 || rc == -EPROTO);
	if (rc)
		ASSERT(strnlen(err, ST_ERR_LEN) < ST_ERR_LEN);
	for (size_t i = 0; i < f.n; i++)
		check_path(f.paths[i]);
	if (!rc && hub_files_finish(&f, err) == 0)
		check_sorted(f.paths, f.n);
	hub_files_free(&f);
}

static void fuzz_hub_error(const uint8_t *d, size_t n, size_t outlen)
{
	char *body = malloc(n ? n : 1), full[BIG], *base, *out = outbuf(outlen, &base);

	memcpy(body, d, n);
	hub_error_message(body, n, full, sizeof(full));
	ASSERT(strnlen(full, sizeof(full)) < sizeof(full));
	for (const char *c = full; *c; c++)
		ASSERT(*c >= 0x20 && *c < 0x7f);
	hub_error_message(body, n, out, outlen);
	check_bounded(out, outlen, full);
	free(base);
	free(body);
}

static void fuzz_redact(const char *url, size_t outlen)
{
	char *fbase, *full = outbuf(strlen(url) + 8, &fbase), *base, *out = outbuf(outlen, &base);
	const char *scheme = strstr(url, "://");
	/* A scheme is "NAME://" before any '/', '?' or '#'. */
	size_t pre = scheme && strcspn(url, "/?#") == (size_t)(scheme - url) + 1 ? (size_t)(scheme - url) + 3 : 0;

	http_redact(url, full, strlen(url) + 8);
	ASSERT(strlen(full) < strlen(url) + 8);
	ASSERT(strncmp(full, url, pre) == 0);
	/* No userinfo: the authority shown holds no '@'. */
	size_t authority = strcspn(full + pre, "/?#");
	ASSERT(!memchr(full + pre, '@', authority));
	/* Nothing of a query or fragment: at most "?..." at the end. */
	const char *q = strchr(full, '?');
	ASSERT(!strchr(full, '#'));
	ASSERT(!q || strcmp(q, "?...") == 0);
	ASSERT(strlen(full) - (q ? 4 : 0) <= strcspn(url, "?#"));
	ASSERT(!q == (url[strcspn(url, "?#")] != '?'));
	http_redact(url, out, outlen);
	check_bounded(out, outlen, full);
	free(base);
	free(fbase);
}

/* The string part is the URL, the bytes after the NUL (to the next NUL) the relative path. */
static void fuzz_sibling(const struct split *sp)
{
	char *rel = strndup(sp->rest, sp->rest_len);
	char *out = http_sibling(sp->s, rel);

	if (out) {
		size_t dir = strcspn(sp->s, "?#");
		while (dir > 0 && sp->s[dir - 1] != '/')
			dir--;
		ASSERT(dir > 0 && strncmp(out, sp->s, dir) == 0);
		ASSERT(!strpbrk(out, "?#"));
		check_escaped(out + dir, "/");
		char *back = unescape(out + dir);
		ASSERT(strcmp(back, rel) == 0);
		free(back);
		free(out);
	}
	free(rel);
}

static void fuzz_escape(const char *s)
{
	char *seg = http_escape(s), *path = http_escape_path(s);

	ASSERT(seg && path);
	ASSERT(strlen(seg) <= 3 * strlen(s) && strlen(path) <= strlen(seg));
	check_escaped(seg, "");
	check_escaped(path, "/");
	char *a = unescape(seg), *b = unescape(path);
	ASSERT(strcmp(a, s) == 0 && strcmp(b, s) == 0);
	free(a);
	free(b);
	free(seg);
	free(path);
}

static void fuzz_http_listing(const char *in)
{
	char *url = NULL, err[ST_ERR_LEN];
	struct remote_listing l;

	/* As source.c calls it: only with http:// or https://. */
	if (strncmp(in, "http://", 7) == 0 || strncmp(in, "https://", 8) == 0)
		url = strdup(in);
	else if (asprintf(&url, "https://%s", in) < 0)
		return;
	int rc = http_listing(url, &l, err);
	ASSERT(rc == 0 || rc == -EINVAL);
	if (l.display) {
		ASSERT(strnlen(l.display, ST_ERR_LEN / 2) < ST_ERR_LEN / 2);
		ASSERT(!strchr(l.display, '#'));
	}
	if (rc == 0) {
		size_t bl = strlen(l.base), pl;
		ASSERT(l.is_file && l.n_paths == 1 && bl > 0 && l.base[bl - 1] == '/');
		pl = strlen(l.paths[0]);
		ASSERT(pl > 0 && !strchr(l.paths[0], '/'));
		ASSERT(strncmp(url, l.base, bl) == 0 && strncmp(url + bl, l.paths[0], pl) == 0);
		ASSERT(bl + pl == strcspn(url, "?#"));
	} else {
		ASSERT(strnlen(err, ST_ERR_LEN) < ST_ERR_LEN);
	}
	remote_listing_free(&l);
	free(url);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned target = data[0] % N_TARGETS, param = data[0] / N_TARGETS;
	const uint8_t *d = data + 1;
	size_t n = size - 1;
	struct split sp;

	split_at_nul(d, n, &sp);
	switch (target) {
	case T_S3_URI:
		fuzz_s3_uri(sp.s);
		break;
	case T_S3_LISTING:
		fuzz_s3_listing(&sp);
		break;
	case T_S3_ERROR:
		fuzz_s3_error(&sp, param);
		break;
	case T_S3_INI:
		fuzz_s3_ini(&sp);
		break;
	case T_HUB_URI:
		fuzz_hub_uri(sp.s, param & 1);
		break;
	case T_HUB_TREE:
		fuzz_hub_tree(&sp);
		break;
	case T_HUB_ERROR:
		fuzz_hub_error(d, n, param);
		break;
	case T_REDACT:
		fuzz_redact(sp.s, param);
		break;
	case T_SIBLING:
		fuzz_sibling(&sp);
		break;
	case T_ESCAPE:
		fuzz_escape(sp.s);
		break;
	case T_HTTP_LISTING:
		fuzz_http_listing(sp.s);
		break;
	}
	split_free(&sp);
	return 0;
}
