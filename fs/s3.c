/*
 * s3://BUCKET/KEY and s3://BUCKET/PREFIX/ as remote listings: one object, or every key
 * below the prefix from ListObjectsV2, each read later with signed range GETs.  Every
 * setting is found where the AWS CLI finds it, so a SOURCE that `aws s3 ls` reads with
 * some environment mounts with the same one.  Signing is libcurl's CURLOPT_AWS_SIGV4.
 */
#include "s3.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "remote.h"

#define AWS_FILE_MAX (1u << 20)      /* a credentials or config file: far below this */
#define LIST_PAGE_MAX (16u << 20)    /* a page of 1000 keys of 1 KiB and their fields */
#define LIST_PAGES_MAX 100000        /* 10^8 keys: a token loop, not a bucket */
#define XML_DEPTH 16
#define XML_NAME 64
#define XML_TEXT 4096                /* a key is at most 1024 bytes, a token some hundred */
#define REGION_MAX 32

static const char TOKEN_HINT[] = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), "
				 "or AWS_PROFILE, to credentials that may read this bucket";

/* ------------------------------------------------------------------ s3:// URIs */

void s3_uri_free(struct s3_uri *u)
{
	free(u->bucket);
	free(u->key);
	memset(u, 0, sizeof(*u));
}

/* 3 to 63 of [A-Za-z0-9._-], a letter or digit at each end: S3's rules with the legacy
 * upper case and '_' of old us-east-1 buckets, and nothing a URL or host would change. */
static bool bucket_ok(const char *b, size_t n)
{
	if (n < 3 || n > 63 || !isalnum((unsigned char)b[0]) || !isalnum((unsigned char)b[n - 1]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)b[i]) && !strchr("._-", b[i]))
			return false;
	return true;
}

/* A path the mount can hold: relative, no empty, "." or ".." part, no control character. */
static bool path_ok(const char *p, size_t n)
{
	size_t start = 0;

	if (n == 0)
		return false;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && ((unsigned char)p[i] < 0x20 || p[i] == 0x7f))
			return false;
		if (i < n && p[i] != '/')
			continue;
		size_t seg = i - start;
		if (seg == 0 || (seg == 1 && p[start] == '.') ||
		    (seg == 2 && p[start] == '.' && p[start + 1] == '.'))
			return false;
		start = i + 1;
	}
	return true;
}

int s3_parse_uri(const char *uri, struct s3_uri *out, char err[ST_ERR_LEN])
{
	const char *body = strncmp(uri, "s3://", 5) == 0 ? uri + 5 : NULL;
	size_t blen = body ? strcspn(body, "/") : 0;
	const char *key = body && body[blen] ? body + blen + 1 : "";
	size_t klen = strlen(key);

	memset(out, 0, sizeof(*out));
	err[0] = '\0';
	if (!body || !bucket_ok(body, blen)) {
		snprintf(err, ST_ERR_LEN, "no bucket name (3 to 63 letters, digits, '.', '-'): s3://BUCKET/KEY "
			 "or s3://BUCKET/PREFIX/");
		return -EINVAL;
	}
	/* A prefix ends in '/': check it without, so that "a/" passes and "a//" does not. */
	if (klen && !path_ok(key, klen - (key[klen - 1] == '/'))) {
		snprintf(err, ST_ERR_LEN, "the key '%.200s' has an empty, '.' or '..' part or a control character",
			 key);
		return -EINVAL;
	}
	out->bucket = strndup(body, blen);
	out->key = strdup(key);
	if (!out->bucket || !out->key)
		return -ENOMEM;
	out->is_file = klen && key[klen - 1] != '/';
	return 0;
}

/* ------------------------------------------------------------------ INI files */

/* One line of an INI text: its content trimmed, and how far it was indented. */
struct ini_line {
	const char *s;
	size_t n, indent;
};

static const char *next_line(const char *p, const char *end, struct ini_line *l)
{
	const char *eol = memchr(p, '\n', (size_t)(end - p));
	const char *e = eol ? eol : end;

	l->indent = 0;
	while (p < e && (*p == ' ' || *p == '\t'))
		p++, l->indent++;
	while (e > p && isspace((unsigned char)e[-1]))
		e--;
	l->s = p;
	l->n = (size_t)(e - p);
	return eol ? eol + 1 : end;
}

static void trim(const char **s, size_t *n)
{
	while (*n && isspace((unsigned char)**s))
		(*s)++, (*n)--;
	while (*n && isspace((unsigned char)(*s)[*n - 1]))
		(*n)--;
}

/* Whether a section header's content names WANTED: "profile NAME" as botocore splits it
 * (any blanks between), anything else exactly. */
static bool section_is(const char *h, size_t n, const char *wanted)
{
	trim(&h, &n);
	if (strncmp(wanted, "profile ", 8) == 0) {
		if (n < 8 || strncmp(h, "profile", 7) != 0 || !isspace((unsigned char)h[7]))
			return false;
		h += 7, n -= 7;
		trim(&h, &n);
		wanted += 8;
	}
	return n == strlen(wanted) && strncmp(h, wanted, n) == 0;
}

/* The section a header line starts, as configparser's "\[(?P<header>.+)\]" matches it. */
static bool header_line(const struct ini_line *l, const char **h, size_t *n)
{
	const char *close = l->n > 2 && l->s[0] == '[' ? l->s + l->n : NULL;

	while (close && close > l->s + 1 && close[-1] != ']')
		close--;
	if (!close || close <= l->s + 2)
		return false;
	*h = l->s + 1;
	*n = (size_t)(close - 1 - *h);
	return true;
}

/* KEY = VALUE (or KEY: VALUE) on line L: whether its key is KEY, and the value. */
static bool key_line(const struct ini_line *l, const char *key, const char **v, size_t *vn)
{
	size_t k = 0;
	const char *ks = l->s;

	while (k < l->n && l->s[k] != '=' && l->s[k] != ':')
		k++;
	if (k == l->n)
		return false;
	size_t kn = k;
	trim(&ks, &kn);
	*v = l->s + k + 1;
	*vn = l->n - k - 1;
	trim(v, vn);
	return kn == strlen(key) && strncasecmp(ks, key, kn) == 0;
}

/* Walks TEXT for [SECTION] KEY (key NULL: the section alone).  1 with *v, *vn, else 0. */
static int ini_find(const char *text, size_t len, const char *section, const char *key, const char **v,
		    size_t *vn)
{
	const char *p = text, *end = text + len, *h;
	bool in = false, have_key = false;
	size_t key_indent = 0, hn;
	struct ini_line l;

	while (p < end) {
		p = next_line(p, end, &l);
		/* An indented line after a key continues its value, whatever it holds. */
		if (have_key && l.n && l.indent > key_indent)
			continue;
		if (!l.n || l.s[0] == '#' || l.s[0] == ';')
			continue;
		have_key = false;
		if (header_line(&l, &h, &hn)) {
			in = section_is(h, hn, section);
			if (in && !key)
				return 1;
			continue;
		}
		if (memchr(l.s, '=', l.n) || memchr(l.s, ':', l.n))
			have_key = true, key_indent = l.indent;
		if (in && key && key_line(&l, key, v, vn))
			return 1;
	}
	return 0;
}

int s3_ini_value(const char *text, size_t len, const char *section, const char *key, char **value)
{
	const char *v;
	size_t vn;

	*value = NULL;
	if (!text || !ini_find(text, len, section, key, &v, &vn))
		return 0;
	return (*value = strndup(v, vn)) ? 1 : -ENOMEM;
}

bool s3_ini_has_section(const char *text, size_t len, const char *section)
{
	const char *v;
	size_t vn;

	return text && ini_find(text, len, section, NULL, &v, &vn);
}

/* ------------------------------------------------------------------ settings */

void s3_config_free(struct s3_config *c)
{
	free(c->key_id);
	if (c->secret)
		explicit_bzero(c->secret, strlen(c->secret));
	free(c->secret);
	free(c->token);
	free(c->region);
	free(c->endpoint);
	free(c->profile);
	memset(c, 0, sizeof(*c));
}

/* The two files of one profile, as read: NULL text for a missing file. */
struct aws_files {
	char *cred_path, *conf_path;
	char *cred, *conf;
	size_t cred_len, conf_len;
	char *cred_section, *conf_section; /* "NAME"; "profile NAME" or "default" */
};

static void aws_files_free(struct aws_files *f)
{
	free(f->cred_path);
	free(f->conf_path);
	if (f->cred)
		explicit_bzero(f->cred, f->cred_len);
	free(f->cred);
	free(f->conf);
	free(f->cred_section);
	free(f->conf_section);
}

static const char *var(s3_getenv_fn env, void *arg, const char *name)
{
	const char *v = env(name, arg);
	return v && *v ? v : NULL;
}

/* VAR's file name, else DEFAULT (under ~); a leading ~ is $HOME.  NULL name: no HOME. */
static int file_path(s3_getenv_fn env, void *arg, const char *name, const char *dflt, char **out)
{
	const char *p = var(env, arg, name) ? var(env, arg, name) : dflt;
	const char *home = var(env, arg, "HOME");

	*out = NULL;
	if (p[0] != '~' || (p[1] && p[1] != '/'))
		return (*out = strdup(p)) ? 0 : -ENOMEM;
	if (!home)
		return 0;
	return asprintf(out, "%s%s", home, p + 1) < 0 ? (*out = NULL, -ENOMEM) : 0;
}

/* Why FD (PATH) cannot be read whole, as an errno; 0 when it can. */
static int unreadable(int fd, struct stat *st)
{
	if (fstat(fd, st) < 0)
		return errno;
	if (!S_ISREG(st->st_mode))
		return EINVAL;
	return st->st_size > AWS_FILE_MAX ? EFBIG : 0;
}

/* PATH whole (NUL-terminated), or NULL text for a file that is not there. */
static int read_file(const char *path, char **text, size_t *len, char err[ST_ERR_LEN])
{
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1, e = fd < 0 ? errno : 0;
	struct stat st;

	*text = NULL;
	*len = 0;
	if (fd < 0 && (!path || e == ENOENT || e == ENOTDIR))
		return 0;
	if (fd >= 0)
		e = unreadable(fd, &st);
	if (!e && !(*text = malloc((size_t)st.st_size + 1)))
		e = ENOMEM;
	while (!e && *len < (size_t)st.st_size) {
		ssize_t got = read(fd, *text + *len, (size_t)st.st_size - *len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break; /* shorter than it said: what was there */
		*len += (size_t)got;
	}
	if (fd >= 0)
		close(fd);
	if (e) {
		free(*text);
		*text = NULL;
		if (e != ENOMEM)
			snprintf(err, ST_ERR_LEN, "cannot read %.300s: %s", path, strerror(e));
		return -e;
	}
	(*text)[*len] = '\0';
	return 0;
}

static int load_files(s3_getenv_fn env, void *arg, const char *profile, struct aws_files *f,
		      char err[ST_ERR_LEN])
{
	int rc = file_path(env, arg, "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", &f->cred_path);

	if (!rc)
		rc = file_path(env, arg, "AWS_CONFIG_FILE", "~/.aws/config", &f->conf_path);
	if (!rc)
		rc = read_file(f->cred_path, &f->cred, &f->cred_len, err);
	if (!rc)
		rc = read_file(f->conf_path, &f->conf, &f->conf_len, err);
	if (!rc && !(f->cred_section = strdup(profile)))
		rc = -ENOMEM;
	if (!rc && strcmp(profile, "default") == 0)
		f->conf_section = strdup("default");
	else if (!rc && asprintf(&f->conf_section, "profile %s", profile) < 0)
		f->conf_section = NULL;
	return rc ? rc : f->conf_section ? 0 : -ENOMEM;
}

/* The profile's KEY: the credentials file's, else the config file's (botocore merges the
 * two, the credentials file winning).  1 with *v, 0 when absent, -ENOMEM. */
static int profile_value(const struct aws_files *f, const char *key, char **v)
{
	int rc = s3_ini_value(f->cred, f->cred_len, f->cred_section, key, v);

	if (rc == 0)
		rc = s3_ini_value(f->conf, f->conf_len, f->conf_section, key, v);
	/* [profile default] is default too, where [default] does not say. */
	if (rc == 0 && strcmp(f->cred_section, "default") == 0)
		rc = s3_ini_value(f->conf, f->conf_len, "profile default", key, v);
	return rc;
}

static bool profile_exists(const struct aws_files *f)
{
	return s3_ini_has_section(f->cred, f->cred_len, f->cred_section) ||
	       s3_ini_has_section(f->conf, f->conf_len, f->conf_section) ||
	       (strcmp(f->cred_section, "default") == 0 &&
		s3_ini_has_section(f->conf, f->conf_len, "profile default"));
}

/* Where botocore gets a key that is not written down: none of these runs here. */
static const char *const UNSUPPORTED[] = {"credential_process", "role_arn", "sso_session",
					  "sso_start_url", "web_identity_token_file"};

static int unsupported_source(const struct aws_files *f, const char *profile, char err[ST_ERR_LEN])
{
	for (size_t i = 0; i < sizeof(UNSUPPORTED) / sizeof(UNSUPPORTED[0]); i++) {
		char *v;
		int rc = profile_value(f, UNSUPPORTED[i], &v);
		free(v);
		if (rc < 0)
			return rc;
		if (rc) {
			snprintf(err, ST_ERR_LEN, "profile '%.100s' gets its key through %s, which safetensorsfs "
				 "does not run: export it first with eval \"$(aws configure export-credentials "
				 "--profile %.100s --format env)\"", profile, UNSUPPORTED[i], profile);
			return -ENOTSUP;
		}
	}
	return 0;
}

/* The key pair from the environment, if any: both halves or neither. */
static int env_keys(s3_getenv_fn env, void *arg, struct s3_config *c, char err[ST_ERR_LEN])
{
	const char *id = var(env, arg, "AWS_ACCESS_KEY_ID"), *secret = var(env, arg, "AWS_SECRET_ACCESS_KEY");
	const char *token = var(env, arg, "AWS_SESSION_TOKEN");

	if (!token)
		token = var(env, arg, "AWS_SECURITY_TOKEN"); /* the name boto2 used, still read */
	if (!id != !secret) {
		snprintf(err, ST_ERR_LEN, "%s is set but %s is not: set both, or neither",
			 id ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
			 id ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
		return -EINVAL;
	}
	if (!id)
		return 0;
	c->key_id = strdup(id);
	c->secret = strdup(secret);
	c->token = token ? strdup(token) : NULL;
	c->from = "AWS_ACCESS_KEY_ID";
	return c->key_id && c->secret && (!token || c->token) ? 0 : -ENOMEM;
}

/* The key pair of the profile in its files, if any. */
static int profile_keys(const struct aws_files *f, struct s3_config *c, char err[ST_ERR_LEN])
{
	int rc = profile_value(f, "aws_access_key_id", &c->key_id);

	if (rc >= 0)
		rc = profile_value(f, "aws_secret_access_key", &c->secret);
	if (rc >= 0 && (rc = profile_value(f, "aws_session_token", &c->token)) == 0)
		rc = profile_value(f, "aws_security_token", &c->token);
	if (rc < 0)
		return rc;
	if (!c->key_id && !c->secret) {
		free(c->token); /* a token alone signs nothing */
		c->token = NULL;
		return 0;
	}
	if (!c->key_id != !c->secret) {
		snprintf(err, ST_ERR_LEN, "profile '%.100s' has %s but no %s (%.150s, %.150s)", c->profile,
			 c->key_id ? "aws_access_key_id" : "aws_secret_access_key",
			 c->key_id ? "aws_secret_access_key" : "aws_access_key_id", f->cred_path ? f->cred_path : "-",
			 f->conf_path ? f->conf_path : "-");
		return -EINVAL;
	}
	c->from = "the profile's files";
	return 0;
}

/* [a-z0-9-]: a region goes into a host name and into "aws:amz:REGION:s3". */
static bool region_ok(const char *r)
{
	size_t n = strlen(r);

	if (n == 0 || n > REGION_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!islower((unsigned char)r[i]) && !isdigit((unsigned char)r[i]) && r[i] != '-')
			return false;
	return true;
}

static int find_region(s3_getenv_fn env, void *arg, const struct aws_files *f, struct s3_config *c,
		       char err[ST_ERR_LEN])
{
	const char *r = var(env, arg, "AWS_REGION") ? var(env, arg, "AWS_REGION") : var(env, arg, "AWS_DEFAULT_REGION");
	int rc = 0;

	if (r)
		c->region = strdup(r);
	else if ((rc = profile_value(f, "region", &c->region)) == 0)
		c->region = strdup(S3_DEFAULT_REGION);
	if (rc < 0 || !c->region)
		return -ENOMEM;
	if (!region_ok(c->region)) {
		snprintf(err, ST_ERR_LEN, "'%.60s' is no AWS region (us-east-1, eu-west-1, ...): check AWS_REGION, "
			 "AWS_DEFAULT_REGION and profile '%.100s'", c->region, c->profile);
		return -EINVAL;
	}
	return 0;
}

/* AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url: an S3-compatible
 * server (MinIO, Ceph, R2, moto), reached path-style as the AWS CLI does for them. */
static int find_endpoint(s3_getenv_fn env, void *arg, const struct aws_files *f, struct s3_config *c,
			 char err[ST_ERR_LEN])
{
	const char *ignore = var(env, arg, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
	const char *e = var(env, arg, "AWS_ENDPOINT_URL_S3");
	int rc = 0;

	if (ignore && strcasecmp(ignore, "true") == 0)
		return 0;
	if (!e)
		e = var(env, arg, "AWS_ENDPOINT_URL");
	if (e && !(c->endpoint = strdup(e)))
		return -ENOMEM;
	if (!e && (rc = profile_value(f, "endpoint_url", &c->endpoint)) <= 0)
		return rc;
	size_t n = strlen(c->endpoint);
	while (n && c->endpoint[n - 1] == '/')
		c->endpoint[--n] = '\0';
	if ((strncmp(c->endpoint, "http://", 7) != 0 && strncmp(c->endpoint, "https://", 8) != 0) ||
	    strpbrk(c->endpoint, "?# \t\r\n") || !strchr(c->endpoint, '/')[2]) {
		snprintf(err, ST_ERR_LEN, "the S3 endpoint '%.200s' (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) is no "
			 "http(s)://HOST[:PORT]", c->endpoint);
		return -EINVAL;
	}
	return 0;
}

/* What a key, secret and token may hold: a ':' in the key would split "KEY:SECRET" wrongly,
 * a line break in the token would end its header. */
static int check_keys(const struct s3_config *c, char err[ST_ERR_LEN])
{
	const char *bad = NULL;

	if (c->key_id && strchr(c->key_id, ':'))
		bad = "the access key ID holds a ':'";
	for (const char *const *s = (const char *const[]){c->key_id, c->secret, c->token, NULL}; !bad && *s; s++)
		for (const char *p = *s; *p && !bad; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				bad = "a key, secret or session token holds a control character";
	if (bad)
		snprintf(err, ST_ERR_LEN, "%s (from %s)", bad, c->from);
	return bad ? -EINVAL : 0;
}

int s3_find_config(s3_getenv_fn env, void *arg, struct s3_config *out, char err[ST_ERR_LEN])
{
	const char *named = var(env, arg, "AWS_DEFAULT_PROFILE") ? var(env, arg, "AWS_DEFAULT_PROFILE")
								 : var(env, arg, "AWS_PROFILE");
	struct aws_files f = {0};
	int rc;

	memset(out, 0, sizeof(*out));
	err[0] = '\0';
	if (!(out->profile = strdup(named ? named : S3_DEFAULT_PROFILE)))
		return -ENOMEM;
	rc = load_files(env, arg, out->profile, &f, err);
	if (!rc && named && !profile_exists(&f)) {
		snprintf(err, ST_ERR_LEN, "profile '%.100s' (AWS_PROFILE) is in neither %.150s nor %.150s",
			 out->profile, f.cred_path ? f.cred_path : "~/.aws/credentials",
			 f.conf_path ? f.conf_path : "~/.aws/config");
		rc = -ENOENT;
	}
	if (!rc)
		rc = env_keys(env, arg, out, err);
	if (!rc && !out->key_id && !(rc = profile_keys(&f, out, err)) && !out->key_id)
		rc = unsupported_source(&f, out->profile, err);
	if (!rc)
		rc = check_keys(out, err);
	if (!rc)
		rc = find_region(env, arg, &f, out, err);
	if (!rc)
		rc = find_endpoint(env, arg, &f, out, err);
	aws_files_free(&f);
	if (rc)
		s3_config_free(out);
	return rc;
}

/* ------------------------------------------------------------------ URLs */

char *s3_bucket_url(const struct s3_config *c, const char *bucket)
{
	const char *tld = strncmp(c->region, "cn-", 3) == 0 ? "amazonaws.com.cn" : "amazonaws.com";
	char *url;
	int n;

	if (c->endpoint)
		n = asprintf(&url, "%s/%s", c->endpoint, bucket);
	else if (strchr(bucket, '.'))
		n = asprintf(&url, "https://s3.%s.%s/%s", c->region, tld, bucket);
	else
		n = asprintf(&url, "https://%s.s3.%s.%s", bucket, c->region, tld);
	return n < 0 ? NULL : url;
}

/* S as SigV4 canonicalizes a query value: each byte outside [A-Za-z0-9_.~-] as %XX. */
static char *query_escape(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = malloc(strlen(s) * 3 + 1), *p = out;

	if (!out)
		return NULL;
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		if (isalnum(*c) || strchr("_.~-", *c)) {
			*p++ = (char)*c;
		} else {
			*p++ = '%';
			*p++ = hex[*c >> 4];
			*p++ = hex[*c & 15];
		}
	}
	*p = '\0';
	return out;
}

char *s3_list_url(const char *bucket_url, const char *prefix, const char *token, unsigned max_keys)
{
	char *p = query_escape(prefix), *t = token ? query_escape(token) : NULL, *url = NULL;
	char max[32] = "";

	if (max_keys)
		snprintf(max, sizeof(max), "&max-keys=%u", max_keys);
	/* Sorted by name: continuation-token < list-type < max-keys < prefix. */
	if (p && (!token || t) &&
	    asprintf(&url, "%s/?%s%s%slist-type=2%s&prefix=%s", bucket_url, t ? "continuation-token=" : "",
		     t ? t : "", t ? "&" : "", max, p) < 0)
		url = NULL;
	free(p);
	free(t);
	return url;
}

/* ------------------------------------------------------------------ XML */

/*
 * Just enough XML for S3's answers: elements, attributes skipped, text with entities.  No
 * DTD (and so no entity of the server's own, nor their expansion), no CDATA, no NUL; at most
 * XML_DEPTH open elements of names below XML_NAME bytes; text above XML_TEXT bytes in an
 * element is cut (and flagged) rather than grown.
 */
struct xml {
	const char *p, *end;
	char names[XML_DEPTH][XML_NAME];
	int depth;          /* open elements */
	bool rooted;        /* the root element was seen */
	char text[XML_TEXT];/* the innermost element's text so far, decoded */
	size_t text_len;
	bool text_long;     /* more than XML_TEXT - 1 bytes */
	bool leaf;          /* no element inside the innermost one so far */
	bool closing;       /* names[depth - 1] has ended: popped at the next event */
	bool empty;         /* the last start tag was <a/>: its end comes next */
	const char *error;  /* why the document is refused */
};

enum xml_event { XML_EOF, XML_OPEN, XML_CLOSE, XML_FAIL };

static bool fail(struct xml *x, const char *why)
{
	x->error = why;
	return false;
}

static void text_put(struct xml *x, const char *s, size_t n)
{
	if (x->text_len + n >= XML_TEXT) {
		x->text_long = true;
		n = XML_TEXT - 1 - x->text_len;
	}
	memcpy(x->text + x->text_len, s, n);
	x->text_len += n;
	x->text[x->text_len] = '\0';
}

/* A character reference's code point as UTF-8 into TEXT; false for one XML forbids. */
static bool put_codepoint(struct xml *x, unsigned long c)
{
	char u[4];
	size_t n;

	if (c == 0 || (c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff || (c < 0x20 && !strchr("\t\n\r", (int)c)))
		return fail(x, "a character reference to a character XML forbids");
	if (c < 0x80) {
		u[0] = (char)c, n = 1;
	} else if (c < 0x800) {
		u[0] = (char)(0xc0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3f)), n = 2;
	} else if (c < 0x10000) {
		u[0] = (char)(0xe0 | c >> 12), u[1] = (char)(0x80 | (c >> 6 & 0x3f));
		u[2] = (char)(0x80 | (c & 0x3f)), n = 3;
	} else {
		u[0] = (char)(0xf0 | c >> 18), u[1] = (char)(0x80 | (c >> 12 & 0x3f));
		u[2] = (char)(0x80 | (c >> 6 & 0x3f)), u[3] = (char)(0x80 | (c & 0x3f)), n = 4;
	}
	text_put(x, u, n);
	return true;
}

/* The entity at S (after its '&', N bytes to its ';'): one of XML's five, or &#N; / &#xH;. */
static bool entity(struct xml *x, const char *s, size_t n)
{
	static const char *const names[] = {"amp", "lt", "gt", "quot", "apos"};
	static const char chars[] = "&<>\"'";
	unsigned long c = 0;

	for (size_t i = 0; i < 5; i++)
		if (n == strlen(names[i]) && strncmp(s, names[i], n) == 0) {
			text_put(x, &chars[i], 1);
			return true;
		}
	if (n < 2 || n > 9 || s[0] != '#')
		return fail(x, "an entity other than &amp; &lt; &gt; &quot; &apos; or a character reference");
	bool hexa = s[1] == 'x';
	if (hexa && n == 2)
		return fail(x, "an empty character reference");
	for (size_t i = 1 + hexa; i < n; i++) {
		if (!(hexa ? isxdigit((unsigned char)s[i]) : isdigit((unsigned char)s[i])))
			return fail(x, "a malformed character reference");
		c = c * (hexa ? 16 : 10) + (unsigned long)(isdigit((unsigned char)s[i]) ? s[i] - '0'
									   : (tolower((unsigned char)s[i]) - 'a' + 10));
	}
	return put_codepoint(x, c);
}

/* Character data up to the next '<' (or the end), decoded into TEXT. */
static bool text(struct xml *x)
{
	while (x->p < x->end && *x->p != '<') {
		const char *amp = x->p;
		while (amp < x->end && *amp != '<' && *amp != '&' && *amp != '\0')
			amp++;
		if (x->depth)
			text_put(x, x->p, (size_t)(amp - x->p));
		x->p = amp;
		if (amp == x->end || *amp == '<')
			break;
		if (*amp == '\0')
			return fail(x, "a NUL byte");
		const char *semi = memchr(amp, ';', (size_t)(x->end - amp) < 12 ? (size_t)(x->end - amp) : 12);
		if (!semi)
			return fail(x, "a '&' that starts no entity");
		if (!entity(x, amp + 1, (size_t)(semi - amp - 1)))
			return false;
		x->p = semi + 1;
	}
	return true;
}

/* Skips to just past MARK ("?>", "-->"); false at the end. */
static bool skip_past(struct xml *x, const char *mark, const char *what)
{
	size_t n = strlen(mark);

	for (const char *q = x->p; q + n <= x->end; q++)
		if (memcmp(q, mark, n) == 0) {
			x->p = q + n;
			return true;
		}
	return fail(x, what);
}

static bool name_char(char c)
{
	return isalnum((unsigned char)c) || c == '_' || c == ':' || c == '.' || c == '-';
}

/* A tag's name at x->p into NAME; false for none or one too long. */
static bool tag_name(struct xml *x, char name[XML_NAME])
{
	size_t n = 0;

	while (x->p + n < x->end && name_char(x->p[n]))
		n++;
	if (n == 0 || n >= XML_NAME)
		return fail(x, n ? "an element name too long" : "a '<' that starts no tag");
	memcpy(name, x->p, n);
	name[n] = '\0';
	x->p += n;
	return true;
}

/* Past a start tag's attributes to its '>' ("/>": *empty).  Quoted values may hold '>'. */
static bool attributes(struct xml *x, bool *empty)
{
	*empty = false;
	while (x->p < x->end) {
		char c = *x->p++;
		if (c == '>')
			return true;
		if (c == '/' && x->p < x->end && *x->p == '>') {
			x->p++;
			*empty = true;
			return true;
		}
		if (c == '"' || c == '\'') {
			const char *q = memchr(x->p, c, (size_t)(x->end - x->p));
			if (!q)
				break;
			x->p = q + 1;
		} else if (c == '<' || c == '\0') {
			return fail(x, "a '<' or NUL inside a tag");
		}
	}
	return fail(x, "a tag that does not end");
}

static enum xml_event close_tag(struct xml *x)
{
	char name[XML_NAME];

	x->p += 2;
	if (!tag_name(x, name))
		return XML_FAIL;
	while (x->p < x->end && isspace((unsigned char)*x->p))
		x->p++;
	if (x->p == x->end || *x->p++ != '>')
		return fail(x, "an end tag that does not end"), XML_FAIL;
	if (x->depth == 0 || strcmp(name, x->names[x->depth - 1]) != 0)
		return fail(x, "an end tag that closes no open element"), XML_FAIL;
	x->closing = true;
	return XML_CLOSE;
}

static enum xml_event open_tag(struct xml *x)
{
	char name[XML_NAME];

	x->p++;
	if (!tag_name(x, name) || !attributes(x, &x->empty))
		return XML_FAIL;
	if (x->depth == XML_DEPTH)
		return fail(x, "elements nested too deep"), XML_FAIL;
	if (x->depth == 0 && x->rooted)
		return fail(x, "a second root element"), XML_FAIL;
	x->rooted = true;
	memcpy(x->names[x->depth++], name, XML_NAME);
	x->text_len = 0;
	x->text[0] = '\0';
	x->text_long = false;
	x->leaf = true;
	return XML_OPEN;
}

/*
 * The next start or end of an element.  At XML_CLOSE, names[depth - 1] is the element that
 * ends, text its text and leaf whether it held no element; the next call pops it.  An
 * empty element (<a/>) comes as XML_OPEN then XML_CLOSE.
 */
static enum xml_event xml_next(struct xml *x)
{
	if (x->closing) {
		x->depth--;
		x->closing = false;
		x->leaf = false;
	}
	if (x->empty) {
		x->empty = false;
		x->closing = true;
		return XML_CLOSE;
	}
	for (;;) {
		if (!text(x))
			return XML_FAIL;
		if (x->p == x->end)
			return x->depth ? (fail(x, "the document ends inside an element"), XML_FAIL) : XML_EOF;
		if (x->end - x->p >= 2 && x->p[1] == '?') {
			if (!skip_past(x, "?>", "a processing instruction that does not end"))
				return XML_FAIL;
		} else if (x->end - x->p >= 4 && memcmp(x->p, "<!--", 4) == 0) {
			if (!skip_past(x, "-->", "a comment that does not end"))
				return XML_FAIL;
		} else if (x->end - x->p >= 2 && x->p[1] == '!') {
			return fail(x, "a DTD or CDATA section"), XML_FAIL;
		} else if (x->end - x->p >= 2 && x->p[1] == '/') {
			return close_tag(x);
		} else {
			return open_tag(x);
		}
	}
}

/* Whether the element that ends is PARENT/NAME, at DEPTH (1: the root). */
static bool at(const struct xml *x, int depth, const char *parent, const char *name)
{
	return x->depth == depth && strcmp(x->names[depth - 1], name) == 0 &&
	       (!parent || strcmp(x->names[depth - 2], parent) == 0);
}

void s3_keys_free(struct s3_keys *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->paths[i]);
	free(k->paths);
	free(k->next_token);
	memset(k, 0, sizeof(*k));
}

static int keys_add(struct s3_keys *k, const char *path)
{
	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 64;
		char **p = realloc(k->paths, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		k->paths = p;
		k->cap = cap;
	}
	return (k->paths[k->n] = strdup(path)) ? (k->n++, 0) : -ENOMEM;
}

/* One <Contents><Key>: below PREFIX, or the page is not the one asked for. */
static int take_key(struct xml *x, const char *prefix, struct s3_keys *k)
{
	size_t plen = strlen(prefix), len = x->text_len - plen;
	const char *rel = x->text + plen;

	if (x->text_long || !x->leaf)
		return fail(x, x->leaf ? "a key longer than S3 allows" : "a <Key> that holds elements"), -EPROTO;
	if (strlen(x->text) != x->text_len)
		return fail(x, "a key holding NUL"), -EPROTO;
	if (x->text_len < plen || strncmp(x->text, prefix, plen) != 0)
		return fail(x, "a key outside the prefix asked for"), -EPROTO;
	if (len == 0 || rel[len - 1] == '/')
		return 0; /* a "folder": the console's empty object that shows one */
	if (!path_ok(rel, len)) {
		k->skipped++;
		return 0;
	}
	return keys_add(k, rel);
}

/* The end of an element of ListBucketResult: a key, IsTruncated, NextContinuationToken. */
static int listing_close(struct xml *x, const char *prefix, struct s3_keys *k)
{
	if (x->depth == 1 && strcmp(x->names[0], "ListBucketResult") != 0)
		return fail(x, "no <ListBucketResult>"), -EPROTO;
	if (at(x, 3, "Contents", "Key"))
		return take_key(x, prefix, k);
	if (at(x, 2, "ListBucketResult", "IsTruncated"))
		k->truncated = strcmp(x->text, "true") == 0;
	if (at(x, 2, "ListBucketResult", "NextContinuationToken")) {
		if (x->text_long || !x->leaf || !x->text_len || strlen(x->text) != x->text_len)
			return fail(x, "a malformed continuation token"), -EPROTO;
		free(k->next_token);
		if (!(k->next_token = strdup(x->text)))
			return -ENOMEM;
	}
	return 0;
}

int s3_parse_listing(const char *body, size_t len, const char *prefix, struct s3_keys *k,
		     char err[ST_ERR_LEN])
{
	struct xml *x = calloc(1, sizeof(*x));
	enum xml_event e;
	int rc = 0;

	if (!x)
		return -ENOMEM;
	x->p = body;
	x->end = body + len;
	free(k->next_token);
	k->next_token = NULL;
	k->truncated = false;
	while (!rc && (e = xml_next(x)) != XML_EOF)
		rc = e == XML_FAIL ? -EPROTO : e == XML_CLOSE ? listing_close(x, prefix, k) : 0;
	if (!rc && !x->rooted)
		rc = (fail(x, "no <ListBucketResult>"), -EPROTO);
	if (!rc && k->truncated && !k->next_token)
		rc = (fail(x, "a truncated page without NextContinuationToken"), -EPROTO);
	if (!rc && !k->truncated) {
		free(k->next_token);
		k->next_token = NULL;
	}
	if (rc == -EPROTO)
		snprintf(err, ST_ERR_LEN, "S3's listing is malformed: %s", x->error);
	free(x);
	return rc;
}

static int cmp_paths(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int s3_keys_finish(struct s3_keys *k, char err[ST_ERR_LEN])
{
	if (k->n)
		qsort(k->paths, k->n, sizeof(*k->paths), cmp_paths); /* paths is NULL when n is 0 */
	for (size_t i = 1; i < k->n; i++)
		if (strcmp(k->paths[i - 1], k->paths[i]) == 0) {
			snprintf(err, ST_ERR_LEN, "S3 listed the key '%.200s' twice", k->paths[i]);
			return -EPROTO;
		}
	return 0;
}

void s3_error_field(const char *body, size_t len, const char *name, char *out, size_t outlen)
{
	struct xml *x = calloc(1, sizeof(*x));
	enum xml_event e;

	if (outlen)
		out[0] = '\0';
	if (!x || !outlen)
		goto done;
	x->p = body;
	x->end = body + len;
	while ((e = xml_next(x)) != XML_EOF && e != XML_FAIL)
		if (e == XML_CLOSE && at(x, 2, "Error", name) && x->leaf)
			break;
	if (e == XML_CLOSE) {
		size_t n = 0;
		for (size_t i = 0; i < x->text_len && n + 1 < outlen; i++)
			if (x->text[i] >= 0x20 && x->text[i] < 0x7f)
				out[n++] = x->text[i];
		out[n] = '\0';
	}
done:
	free(x);
}

/* ------------------------------------------------------------------ s3_open */

/* What s3_open's steps share. */
struct s3_ctx {
	const struct http_settings *s;
	struct s3_uri u;
	struct s3_config c;
	char *bucket_url;
	const struct http_auth *auth;
	const char *display; /* the SOURCE, redacted */
};

static const char *env_get(const char *name, void *arg)
{
	(void)arg;
	return getenv(name);
}

/* Where the credentials came from, for a line about their refusal. */
static void creds_from(const struct s3_ctx *c, char *out, size_t len)
{
	if (!c->c.key_id)
		snprintf(out, len, "no credentials: anonymous requests");
	else if (strcmp(c->c.from, "the profile's files") == 0)
		snprintf(out, len, "the key of profile '%.100s'", c->c.profile);
	else
		snprintf(out, len, "the key from %s", c->c.from);
}

/* The line for a refusal with 403 (or 400, 401): S3's Code tells which part is wrong. */
static int denied(const struct s3_ctx *c, const char *code, const char *msg, char err[ST_ERR_LEN])
{
	char who[160];

	creds_from(c, who, sizeof(who));
	if (!c->c.key_id)
		snprintf(err, ST_ERR_LEN, "%s: S3 refuses anonymous requests (%s): %s", c->display, code, TOKEN_HINT);
	else if (strcmp(code, "SignatureDoesNotMatch") == 0)
		snprintf(err, ST_ERR_LEN, "%s: S3 refuses the signature of %s: the secret access key does not "
			 "belong to the key ID", c->display, who);
	else if (strcmp(code, "InvalidAccessKeyId") == 0)
		snprintf(err, ST_ERR_LEN, "%s: S3 knows no such access key ID (%s)", c->display, who);
	else if (strstr(code, "Token"))
		snprintf(err, ST_ERR_LEN, "%s: S3 refuses the session token of %s (%s): renew the temporary "
			 "credentials", c->display, who, code);
	else
		snprintf(err, ST_ERR_LEN, "%s: S3 denies %s listing bucket '%s' (%s%s%.200s): they need "
			 "s3:ListBucket there", c->display, who, c->u.bucket, code, *msg ? ": " : "", msg);
	return -EACCES;
}

/* The line for a listing that S3 answered with STATUS other than 200. */
static int refused(const struct s3_ctx *c, const struct http_response *r, char err[ST_ERR_LEN])
{
	char code[64], msg[200], region[REGION_MAX + 1];

	s3_error_field(r->body, r->len, "Code", code, sizeof(code));
	s3_error_field(r->body, r->len, "Message", msg, sizeof(msg));
	s3_error_field(r->body, r->len, "Region", region, sizeof(region));
	if (r->status == 404 && strcmp(code, "NoSuchBucket") == 0) {
		snprintf(err, ST_ERR_LEN, "%s: no bucket '%s'%s%s", c->display, c->u.bucket,
			 c->c.endpoint ? " at " : "", c->c.endpoint ? c->c.endpoint : "");
		return -ENOENT;
	}
	if (r->status == 301 || strcmp(code, "AuthorizationHeaderMalformed") == 0 ||
	    strcmp(code, "PermanentRedirect") == 0) {
		snprintf(err, ST_ERR_LEN, "%s: bucket '%s' is not in region %s: set AWS_REGION%s%s", c->display,
			 c->u.bucket, c->c.region, *region ? "=" : " to its region", region);
		return -EINVAL;
	}
	if (r->status == 401 || r->status == 403 || strcmp(code, "InvalidToken") == 0)
		return denied(c, *code ? code : "no reason given", msg, err);
	snprintf(err, ST_ERR_LEN, "%s: S3 answered %ld%s%s%s%.200s", c->display, r->status, *code ? " " : "", code,
		 *msg ? ": " : "", msg);
	return r->status == 404 ? -ENOENT : -EIO;
}

/* One page of the keys below PREFIX (from TOKEN), relative to REL_TO, added to K. */
static int list_page(const struct s3_ctx *c, const char *prefix, const char *rel_to, unsigned max_keys,
		     struct s3_keys *k, char err[ST_ERR_LEN])
{
	char *url = s3_list_url(c->bucket_url, prefix, k->next_token, max_keys), line[ST_ERR_LEN];
	struct http_response r;
	int rc;

	if (!url)
		return -ENOMEM;
	rc = http_get(c->s, url, c->auth, LIST_PAGE_MAX, &r, line);
	free(url);
	if (rc) {
		if (rc != -ENOMEM)
			snprintf(err, ST_ERR_LEN, "%s: listing the bucket failed: %.400s", c->display, line);
		return rc;
	}
	if (r.status != 200)
		rc = refused(c, &r, err);
	else if ((rc = s3_parse_listing(r.body, r.len, rel_to, k, line)) == -EPROTO)
		snprintf(err, ST_ERR_LEN, "%s: %.400s", c->display, line);
	http_response_free(&r);
	return rc;
}

/* Every key below the prefix, all pages, sorted. */
static int list_all(const struct s3_ctx *c, struct s3_keys *k, char err[ST_ERR_LEN])
{
	int rc = 0;

	for (size_t page = 0; !rc; page++) {
		char *before = k->next_token ? strdup(k->next_token) : NULL;
		if (page && !before)
			return -ENOMEM;
		rc = list_page(c, c->u.key, c->u.key, 0, k, err);
		/* The same token twice would list the same page for ever. */
		bool loop = !rc && k->truncated && before && strcmp(before, k->next_token) == 0;
		free(before);
		if (!rc && (loop || page + 1 >= LIST_PAGES_MAX)) {
			snprintf(err, ST_ERR_LEN, "%s: S3's listing does not end (%zu pages)", c->display, page + 1);
			return -EPROTO;
		}
		if (!rc && !k->truncated)
			break;
	}
	if (!rc && k->n == 0) {
		snprintf(err, ST_ERR_LEN, "%s: no key below '%s' in bucket '%s'%s", c->display, c->u.key, c->u.bucket,
			 k->skipped ? " that can be a file name (no empty, '.' or '..' part)" : "");
		return -ENOENT;
	}
	if (!rc && (rc = s3_keys_finish(k, err)) == -EPROTO) {
		char line[ST_ERR_LEN];
		snprintf(line, sizeof(line), "%s", err);
		snprintf(err, ST_ERR_LEN, "%s: %.400s", c->display, line);
	}
	return rc;
}

/* Whether the named key is there: the first key listed from it is itself.  A reader that
 * may get objects but not list them (AccessDenied) is let through: its reads will tell. */
static int check_key(const struct s3_ctx *c, const char *dir, const char *name, char err[ST_ERR_LEN])
{
	struct s3_keys k = {0};
	int rc = list_page(c, c->u.key, dir, 1, &k, err);
	bool found = !rc && k.n == 1 && strcmp(k.paths[0], name) == 0;
	char folder[ST_ERR_LEN];

	s3_keys_free(&k);
	if (rc == -EACCES && strstr(err, "s3:ListBucket"))
		return 0;
	if (rc || found)
		return rc;
	/* Not there: say so, and whether it is a folder written without its '/'. */
	snprintf(folder, sizeof(folder), "%s/", c->u.key);
	rc = list_page(c, folder, folder, 1, &k, err);
	bool is_dir = !rc && (k.n || k.skipped);
	s3_keys_free(&k);
	snprintf(err, ST_ERR_LEN, "%s: no key '%s' in bucket '%s'%s", c->display, c->u.key, c->u.bucket,
		 is_dir ? ": a folder? end it with '/' to mount every file below it" : "");
	return -ENOENT;
}

/* SigV4 for libcurl, or nothing for anonymous requests. */
static int make_auth(const struct s3_config *c, struct http_auth *a)
{
	memset(a, 0, sizeof(*a));
	a->token_hint = TOKEN_HINT;
	if (!c->key_id)
		return 0;
	if (asprintf(&a->userpwd, "%s:%s", c->key_id, c->secret) < 0)
		a->userpwd = NULL;
	if (asprintf(&a->sigv4, "aws:amz:%s:s3", c->region) < 0)
		a->sigv4 = NULL;
	if (c->token && asprintf(&a->header, "x-amz-security-token: %s", c->token) < 0)
		a->header = NULL;
	return a->userpwd && a->sigv4 && (!c->token || a->header) ? 0 : -ENOMEM;
}

/* BUCKET_URL/ + the escaped folder part of the key (DIR_LEN bytes: "" or ending in '/'). */
static char *base_url(const struct s3_ctx *c, size_t dir_len)
{
	char *dir = strndup(c->u.key, dir_len), *esc = dir ? http_escape_path(dir) : NULL, *url = NULL;

	if (esc && asprintf(&url, "%s/%s", c->bucket_url, esc) < 0)
		url = NULL;
	free(dir);
	free(esc);
	return url;
}

static int s3_listing(struct s3_ctx *c, struct remote_listing *out, char err[ST_ERR_LEN])
{
	const char *slash = strrchr(c->u.key, '/');
	size_t dir_len = c->u.is_file ? (slash ? (size_t)(slash + 1 - c->u.key) : 0) : strlen(c->u.key);
	struct s3_keys k = {0};
	char *dir = strndup(c->u.key, dir_len);
	int rc = dir ? make_auth(&c->c, &out->auth) : -ENOMEM;

	c->auth = &out->auth;
	if (!rc && !(c->bucket_url = s3_bucket_url(&c->c, c->u.bucket)))
		rc = -ENOMEM;
	if (!rc && c->u.is_file && !(rc = check_key(c, dir, c->u.key + dir_len, err)))
		rc = keys_add(&k, c->u.key + dir_len);
	else if (!rc && !c->u.is_file)
		rc = list_all(c, &k, err);
	if (!rc && !(out->base = base_url(c, dir_len)))
		rc = -ENOMEM;
	if (!rc) {
		out->paths = k.paths;
		out->n_paths = k.n;
		out->is_file = c->u.is_file;
		k.paths = NULL;
		k.n = 0;
	}
	s3_keys_free(&k);
	free(dir);
	return rc;
}

int s3_open(const struct http_settings *s, const char *uri, struct remote_listing *out, char err[ST_ERR_LEN])
{
	struct s3_ctx c = {.s = s};
	char line[ST_ERR_LEN];
	int rc;

	if (remote_listing_init(out, uri, err) < 0)
		return -ENOMEM;
	c.display = out->display;
	if ((rc = s3_parse_uri(uri, &c.u, line)) == 0 && (rc = s3_find_config(env_get, NULL, &c.c, line)) == 0)
		rc = s3_listing(&c, out, err);
	else if (rc != -ENOMEM)
		snprintf(err, ST_ERR_LEN, "%s: %.400s", c.display, line);
	s3_uri_free(&c.u);
	s3_config_free(&c.c);
	free(c.bucket_url);
	return rc;
}
