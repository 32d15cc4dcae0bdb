/*
 * HTTP(S) over libcurl: one request at a time per easy handle, retried where a retry can
 * help (5xx, 429, a dropped or stalled connection), never where it cannot (DNS, TLS, 4xx).
 * Handles are kept in a pool so that connections (and TLS sessions) are reused.
 */
#include "http.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#define MAX_REDIRECTS 8
#define BACKOFF_FIRST_MS 200
#define BACKOFF_MAX_MS 4000
#define RETRY_AFTER_MAX_S 30

void http_auth_free(struct http_auth *a)
{
	free(a->userpwd);
	free(a->sigv4);
	free(a->header);
	memset(a, 0, sizeof(*a));
}

void http_response_free(struct http_response *r)
{
	free(r->body);
	free(r->next_url);
	memset(r, 0, sizeof(*r));
}

bool http_is_url(const char *s)
{
	return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0 || strncmp(s, "s3://", 5) == 0 ||
	       strncmp(s, "hf://", 5) == 0;
}

/* Where the host begins after SCHEME://: past user:password@ when there is one.  The
 * authority is what precedes the first '/', '?' or '#'; its last '@' ends the userinfo (a
 * password may hold '@').  A password holding '/' or '?' makes an authority "user:pass"
 * with no port after its ':' (libcurl refuses such a URL, and its refusal still names
 * it): then the first '@' after it ends the userinfo. */
static const char *past_userinfo(const char *host)
{
	size_t authority = strcspn(host, "/?#");
	const char *at = memrchr(host, '@', authority), *colon = memchr(host, ':', authority);

	if (at)
		return at + 1;
	if (colon && strspn(colon + 1, "0123456789") != (size_t)(host + authority - colon - 1) &&
	    (at = strchr(host + authority, '@')))
		return at + 1;
	return host;
}

void http_redact(const char *url, char *out, size_t outlen)
{
	const char *scheme = strstr(url, "://");
	/* A "://" after a '/', '?' or '#' is in the path or query ("?next=http://..."): no scheme. */
	if (scheme && (size_t)(scheme - url) >= strcspn(url, "/?#"))
		scheme = NULL;
	const char *host = scheme ? scheme + 3 : url;
	/* Only http(s) has a userinfo: hf://ORG/REPO@REVISION's '@' is the revision's. */
	if (!scheme || strncmp(url, "http", 4) == 0)
		host = past_userinfo(host);
	size_t authority = strcspn(host, "/?#"), path = strcspn(host + authority, "?#");

	snprintf(out, outlen, "%.*s%.*s%.*s%s", scheme ? (int)(scheme + 3 - url) : 0, url, (int)authority, host,
		 (int)path, host + authority, host[authority + path] == '?' ? "?..." : "");
}

static bool plain(unsigned char c, bool slash_ok)
{
	return isalnum(c) || c == '.' || c == '_' || c == '~' || c == '-' || (slash_ok && c == '/');
}

static char *escape(const char *s, bool slash_ok)
{
	size_t n = strlen(s);
	char *out = malloc(3 * n + 1), *p = out;

	if (!out)
		return NULL;
	for (; *s; s++) {
		if (plain((unsigned char)*s, slash_ok))
			*p++ = *s;
		else
			p += sprintf(p, "%%%02X", (unsigned char)*s);
	}
	*p = '\0';
	return out;
}

char *http_escape(const char *s)
{
	return escape(s, false);
}

char *http_escape_path(const char *s)
{
	return escape(s, true);
}

char *http_sibling(const char *url, const char *rel)
{
	size_t path_end = strcspn(url, "?#");
	const char *scheme = strstr(url, "://");
	size_t dir = path_end;
	char *esc = escape(rel, true), *out;

	while (dir > 0 && url[dir - 1] != '/')
		dir--;
	if (!esc || !scheme || dir <= (size_t)(scheme + 3 - url)) {
		free(esc);
		return NULL;
	}
	if (asprintf(&out, "%.*s%s", (int)dir, url, esc) < 0)
		out = NULL;
	free(esc);
	return out;
}

/*
 * A transfer that brings no byte for read_timeout seconds is cut at once: libcurl's own
 * low-speed limit (set too, for trickles) averages over seconds, so bytes that came
 * before a stall would hide it for long.
 */
struct stall {
	curl_off_t seen;
	struct timespec since;
	unsigned timeout;
	bool cut;
};

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	struct stall *st = arg;
	struct timespec now;

	(void)dltotal, (void)ultotal, (void)ulnow;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (dlnow != st->seen || st->since.tv_sec == 0) {
		st->seen = dlnow;
		st->since = now;
		return 0;
	}
	st->cut = now.tv_sec - st->since.tv_sec + (now.tv_nsec - st->since.tv_nsec) / 1e9 >= st->timeout;
	return st->cut;
}

/* The options every request shares: TLS, timeouts, redirects, credentials. */
static struct curl_slist *set_common(CURL *h, const struct http_settings *s, const struct http_auth *auth,
				     struct stall *st)
{
	struct curl_slist *headers = NULL;

	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	/* A redirect never goes from https to http, and SigV4 requests follow none: their
	 * signature and session token are for the host they name. */
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, s->https_only ? "https" : "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, auth && auth->sigv4 ? 0L : 1L);
	curl_easy_setopt(h, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, (long)s->connect_timeout);
	/* Stalled: less than one byte a second for read_timeout seconds. */
	*st = (struct stall){.timeout = s->read_timeout};
	/* And a trickle (a byte now and then) is cut too, when it averages under 1 KiB/s. */
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)s->read_timeout);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, st);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "safetensorsfs/" SAFETENSORSFS_VERSION);
	curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	/* Blocks are large: fewer, larger reads from the socket (libcurl's default is 16 KiB). */
	curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L * 1024);
	if (s->cacert)
		curl_easy_setopt(h, CURLOPT_CAINFO, s->cacert);
	/* Both set every time: a handle is reused without curl_easy_reset (below). */
	curl_easy_setopt(h, CURLOPT_AWS_SIGV4, auth ? auth->sigv4 : NULL);
	curl_easy_setopt(h, CURLOPT_USERPWD, auth && auth->sigv4 ? auth->userpwd : NULL);
	if (auth && auth->header)
		headers = curl_slist_append(headers, auth->header);
	/* S3 refuses a signed request without its payload's hash (libcurl 7.88 adds none, and
	 * signs it when given): every request here is a GET, of an empty body. */
	if (auth && auth->sigv4)
		headers = curl_slist_append(headers, "x-amz-content-sha256: "
					    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	return headers;
}

/* What a failed transfer means to a user, in a few words. */
static const char *transfer_error(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_RESOLVE_HOST: return "cannot resolve the host name (DNS)";
	case CURLE_COULDNT_CONNECT: return "cannot connect";
	case CURLE_OPERATION_TIMEDOUT: return "timed out (see -o connect_timeout= and -o read_timeout=)";
	case CURLE_PEER_FAILED_VERIFICATION:
		return "TLS: the server's certificate is not trusted (name its CA with -o cacert=FILE)";
	case CURLE_SSL_CACERT_BADFILE: return "TLS: cannot read the -o cacert= file";
	case CURLE_SSL_CONNECT_ERROR: return "TLS handshake failed";
	case CURLE_TOO_MANY_REDIRECTS: return "too many redirects";
	case CURLE_UNSUPPORTED_PROTOCOL: return "redirected to something that is not http(s)";
	default: return curl_easy_strerror(c);
	}
}

static bool http_retryable(CURLcode c, long status)
{
	if (c == CURLE_OK)
		return status >= 500 || status == 429 || status == 408;
	return c == CURLE_COULDNT_CONNECT || c == CURLE_OPERATION_TIMEDOUT || c == CURLE_RECV_ERROR ||
	       c == CURLE_SEND_ERROR || c == CURLE_PARTIAL_FILE || c == CURLE_GOT_NOTHING ||
	       c == CURLE_HTTP2 || c == CURLE_HTTP2_STREAM;
}

static void http_backoff(CURL *h, unsigned attempt)
{
	curl_off_t after = 0;
	long ms = BACKOFF_FIRST_MS << (attempt < 5 ? attempt : 5);

	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	if (h && curl_easy_getinfo(h, CURLINFO_RETRY_AFTER, &after) == CURLE_OK && after > 0)
		ms = 1000L * (after < RETRY_AFTER_MAX_S ? (long)after : RETRY_AFTER_MAX_S);
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int http_fail(CURLcode c, const char *url, char err[ST_ERR_LEN])
{
	char shown[ST_ERR_LEN / 2];

	http_redact(url, shown, sizeof(shown));
	snprintf(err, ST_ERR_LEN, "%s: %s", shown, transfer_error(c));
	return c == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : c == CURLE_COULDNT_RESOLVE_HOST ? -EHOSTUNREACH : -EIO;
}

struct body {
	struct http_response *r;
	size_t max;
	bool too_big;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t len = size * n;

	if (len > b->max - b->r->len) {
		b->too_big = true;
		return 0;
	}
	char *grown = realloc(b->r->body, b->r->len + len + 1);
	if (!grown)
		return 0;
	memcpy(grown + b->r->len, data, len);
	b->r->body = grown;
	b->r->len += len;
	grown[b->r->len] = '\0';
	return len;
}

/* Link: <URL>; rel="next", as the Hub paginates its listings. */
static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct http_response *r = arg;
	size_t len = size * n;

	if (len > 5 && strncasecmp(data, "link:", 5) == 0 && !r->next_url) {
		char line[4096];
		snprintf(line, sizeof(line), "%.*s", (int)len, data);
		char *lt = strchr(line, '<'), *gt = lt ? strchr(lt, '>') : NULL;
		if (gt && strstr(gt, "rel=\"next\""))
			r->next_url = strndup(lt + 1, (size_t)(gt - lt - 1));
	}
	return len;
}

int http_get(const struct http_settings *s, const char *url, const struct http_auth *auth, size_t max_len,
	     struct http_response *r, char err[ST_ERR_LEN])
{
	CURL *h = curl_easy_init();
	CURLcode c = CURLE_OUT_OF_MEMORY;

	memset(r, 0, sizeof(*r));
	if (!h)
		return -ENOMEM;
	for (unsigned attempt = 0;; attempt++) {
		struct body b = {r, max_len, false};
		struct stall st;
		http_response_free(r);
		curl_easy_reset(h);
		struct curl_slist *headers = set_common(h, s, auth, &st);
		curl_easy_setopt(h, CURLOPT_URL, url);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
		curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
		curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
		c = curl_easy_perform(h);
		if (c == CURLE_ABORTED_BY_CALLBACK && st.cut)
			c = CURLE_OPERATION_TIMEDOUT;
		curl_slist_free_all(headers);
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
		if (b.too_big) {
			char shown[ST_ERR_LEN / 2];
			http_redact(url, shown, sizeof(shown));
			snprintf(err, ST_ERR_LEN, "%s: larger than %zu bytes", shown, max_len);
			c = CURLE_FILESIZE_EXCEEDED;
			break;
		}
		if (!http_retryable(c, r->status) || attempt >= s->retries)
			break;
		http_backoff(h, attempt);
	}
	curl_easy_cleanup(h);
	if (c == CURLE_FILESIZE_EXCEEDED)
		return -EFBIG;
	if (c != CURLE_OK)
		return http_fail(c, url, err);
	if (!r->body && !(r->body = calloc(1, 1)))
		return -ENOMEM;
	return 0;
}

int http_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -ENOMEM;
}

/* ------------------------------------------------------------------ byte ranges */

#define POOL_MAX 64

struct http_pool {
	pthread_mutex_t lock;
	CURL *idle[POOL_MAX];
	size_t n;
};

struct http_pool *http_pool_new(void)
{
	struct http_pool *p = calloc(1, sizeof(*p));

	if (p)
		pthread_mutex_init(&p->lock, NULL);
	return p;
}

void http_pool_free(struct http_pool *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++)
		curl_easy_cleanup(p->idle[i]);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

static CURL *pool_take(struct http_pool *p)
{
	CURL *h = NULL;

	pthread_mutex_lock(&p->lock);
	if (p->n)
		h = p->idle[--p->n];
	pthread_mutex_unlock(&p->lock);
	return h ? h : curl_easy_init();
}

static void pool_give(struct http_pool *p, CURL *h)
{
	pthread_mutex_lock(&p->lock);
	if (p->n < POOL_MAX) {
		p->idle[p->n++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&p->lock);
	if (h)
		curl_easy_cleanup(h);
}

void http_object_free(struct http_object *o)
{
	free(o->url);
	free(atomic_load(&o->direct));
	free(o->etag);
	free(o->any_etag);
	free(o->last_modified);
	memset(o, 0, sizeof(*o));
}

/* One answer to a range request, as its headers and body arrive. */
struct range_answer {
	long status;           /* of the last response (redirects come first) */
	bool has_range;
	bool encoded;          /* a Content-Encoding other than identity: no byte offsets */
	bool long_etag;        /* longer than etag holds: not comparable */
	uint64_t first, last, total;
	char etag[1024];
	char last_modified[64];
	const struct http_piece *pieces; /* where the range's bytes go, one after another */
	size_t n_pieces;
	size_t want, got;
	bool overflow;         /* more bytes than the range holds */
};

static void header_value(const char *data, size_t len, size_t name_len, char *out, size_t outlen)
{
	const char *v = data + name_len;
	size_t n = len - name_len;

	while (n && (*v == ' ' || *v == '\t'))
		v++, n--;
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
		n--;
	snprintf(out, outlen, "%.*s", n < outlen ? (int)n : 0, v);
}

/* Decimal digits up to `stop`, at most INT64_MAX (an off_t); the rest after it in *end. */
static bool number(const char *s, char stop, uint64_t *out, const char **end)
{
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return false;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (INT64_MAX - (uint64_t)(*s - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	*end = s + (*s == stop && stop);
	return *s == stop;
}

/* "bytes FIRST-LAST/TOTAL", exactly. */
static bool content_range(const char *v, struct range_answer *a)
{
	const char *p;

	return strncmp(v, "bytes ", 6) == 0 && number(v + 6, '-', &a->first, &p) && number(p, '/', &a->last, &p) &&
	       number(p, '\0', &a->total, &p) && a->first <= a->last && a->last < a->total;
}

static size_t on_range_header(char *data, size_t size, size_t n, void *arg)
{
	struct range_answer *a = arg;
	size_t len = size * n;
	char v[256];

	if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) { /* a new response: forget the redirect's */
		const char *sp = memchr(data, ' ', len);
		a->status = sp && sp + 4 <= data + len ? strtol(sp + 1, NULL, 10) : 0;
		a->has_range = a->encoded = a->long_etag = false;
		a->etag[0] = a->last_modified[0] = '\0';
	} else if (len > 14 && strncasecmp(data, "content-range:", 14) == 0) {
		header_value(data, len, 14, v, sizeof(v));
		a->has_range = content_range(v, a);
	} else if (len > 17 && strncasecmp(data, "content-encoding:", 17) == 0) {
		header_value(data, len, 17, v, sizeof(v));
		a->encoded = v[0] && strcasecmp(v, "identity") != 0;
	} else if (len > 5 && strncasecmp(data, "etag:", 5) == 0) {
		a->long_etag = len - 5 >= sizeof(a->etag);
		header_value(data, len, 5, a->etag, sizeof(a->etag));
	} else if (len > 14 && strncasecmp(data, "last-modified:", 14) == 0) {
		header_value(data, len, 14, a->last_modified, sizeof(a->last_modified));
	}
	return len;
}

static size_t on_range_body(char *data, size_t size, size_t n, void *arg)
{
	struct range_answer *a = arg;
	size_t len = size * n;

	/* Only a 206 has the bytes: a 200 is the whole object (never downloaded), and an
	 * error's body is not worth reading over a connection that may be slow. */
	if (a->status != 206)
		return 0;
	if (len > a->want - a->got) {
		a->overflow = true;
		return 0;
	}
	/* Into the pieces: the one that holds byte `got` of the range, and those after it. */
	for (size_t done = 0, at = 0, i = 0; done < len; i++) {
		size_t plen = a->pieces[i].len;
		if (a->got + done >= at + plen) {
			at += plen;
			continue;
		}
		size_t in = a->got + done - at, n = plen - in < len - done ? plen - in : len - done;
		memcpy((char *)a->pieces[i].buf + in, data + done, n);
		done += n;
		at += plen;
	}
	a->got += len;
	return len;
}

/* Writes err for a range answer that is not the bytes asked for; returns its errno. */
static int bad_answer(const struct http_object *o, const struct range_answer *a, uint64_t off, char err[ST_ERR_LEN])
{
	char url[ST_ERR_LEN / 2];
	const char *hint = o->auth && o->auth->token_hint ? o->auth->token_hint : "check the URL and its permissions";

	http_redact(o->url, url, sizeof(url));
	switch (a->status) {
	case 200:
		snprintf(err, ST_ERR_LEN, "%s: the server ignores Range requests (answered 200 with the whole "
			 "object): refused rather than downloaded", url);
		return -EPROTO;
	case 401: case 403:
		snprintf(err, ST_ERR_LEN, "%s: access denied (HTTP %ld): %s", url, a->status, hint);
		return -EACCES;
	case 404: case 410:
		snprintf(err, ST_ERR_LEN, "%s: not found (HTTP %ld)", url, a->status);
		return -ENOENT;
	case 412:
		snprintf(err, ST_ERR_LEN, "%s: the object changed since it was mounted (HTTP 412): reads give EIO", url);
		return -ESTALE;
	case 416:
		if (o->pinned) {
			snprintf(err, ST_ERR_LEN, "%s: the object shrank since it was mounted (HTTP 416): reads give EIO", url);
			return -ESTALE;
		}
		snprintf(err, ST_ERR_LEN, "%s: is empty", url);
		return -EINVAL;
	}
	if (a->status != 206) {
		snprintf(err, ST_ERR_LEN, "%s: HTTP %ld", url, a->status);
		return -EIO;
	}
	snprintf(err, ST_ERR_LEN, "%s: a range answer at %" PRIu64 " %s", url, off,
		 a->encoded ? "in a Content-Encoding (its bytes are not the object's)" : "without a matching Content-Range");
	return -EIO;
}

/* Whether the answer is the object pinned, or pins it; -ESTALE with err when it is another. */
/* Whether the answer is the object pinned, or pins it; -ESTALE with err when it is another.
 * A weak ETag is no If-Match condition, but it is compared all the same: a same-size
 * replacement behind a compressing proxy must not pass. */
static int check_identity(struct http_object *o, const struct range_answer *a, char err[ST_ERR_LEN])
{
	char url[ST_ERR_LEN / 2];
	bool strong = a->etag[0] && strncmp(a->etag, "W/", 2) != 0;

	if (a->long_etag) {
		http_redact(o->url, url, sizeof(url));
		snprintf(err, ST_ERR_LEN, "%s: an ETag longer than %zu bytes cannot be pinned", url, sizeof(a->etag) - 1);
		return -EPROTO;
	}
	if (!o->pinned) {
		o->size = a->total;
		o->etag = strong ? strdup(a->etag) : NULL;
		o->any_etag = a->etag[0] ? strdup(a->etag) : NULL;
		o->last_modified = a->last_modified[0] ? strdup(a->last_modified) : NULL;
		if ((strong && !o->etag) || (a->etag[0] && !o->any_etag) || (a->last_modified[0] && !o->last_modified))
			return snprintf(err, ST_ERR_LEN, "out of memory"), -ENOMEM;
		o->pinned = true;
		return 0;
	}
	if (a->total == o->size && (!o->any_etag || !a->etag[0] || strcmp(o->any_etag, a->etag) == 0) &&
	    (!o->last_modified || !a->last_modified[0] || strcmp(o->last_modified, a->last_modified) == 0))
		return 0;
	http_redact(o->url, url, sizeof(url));
	snprintf(err, ST_ERR_LEN, "%s: the object changed since it was mounted (%s): reads give EIO", url,
		 a->total != o->size ? "another size" : "another ETag or Last-Modified");
	return -ESTALE;
}

static struct curl_slist *range_headers(CURL *h, const struct http_settings *s, const struct http_auth *auth,
					const struct http_object *o, uint64_t off, size_t len, struct stall *st)
{
	struct curl_slist *headers = set_common(h, s, auth, st);
	char line[400];

	snprintf(line, sizeof(line), "Range: bytes=%" PRIu64 "-%" PRIu64, off, off + len - 1);
	headers = curl_slist_append(headers, line);
	/* The bytes must arrive as stored: a compressed answer has no byte offsets. */
	headers = curl_slist_append(headers, "Accept-Encoding: identity");
	if (o->etag) {
		snprintf(line, sizeof(line), "If-Match: %s", o->etag);
		headers = curl_slist_append(headers, line);
	} else if (o->last_modified) { /* no strong ETag: the time is what can be compared */
		snprintf(line, sizeof(line), "If-Unmodified-Since: %s", o->last_modified);
		headers = curl_slist_append(headers, line);
	}
	return headers;
}

/* After the first answer, later ones skip the redirect: the URL it led to is asked directly. */
static void learn_direct(CURL *h, struct http_object *o)
{
	char *eff = NULL, *copy, *none = NULL;

	if (atomic_load(&o->direct) || curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &eff) != CURLE_OK || !eff ||
	    strcmp(eff, o->url) == 0 || !(copy = strdup(eff)))
		return;
	if (!atomic_compare_exchange_strong(&o->direct, &none, copy))
		free(copy);
}

/* One try: 0, a negative errno, or 1 for one worth retrying. */
static int range_once(CURL *h, const struct http_settings *s, struct http_object *o, struct range_answer *a,
		      uint64_t off, char err[ST_ERR_LEN])
{
	char *direct = atomic_load(&o->direct);
	bool use_direct = direct && !atomic_load(&o->direct_dead);

	/* No curl_easy_reset: it would drop the receive buffer, reallocated for every block.
	 * Every option a range request uses is set each time (set_common, here). */
	/* The redirect's target is another host: the source's credentials are not for it. */
	struct stall st;
	struct curl_slist *headers = range_headers(h, s, use_direct ? NULL : o->auth, o, off, a->want, &st);
	curl_easy_setopt(h, CURLOPT_URL, use_direct ? direct : o->url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_range_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_range_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
	a->got = 0;
	a->status = 0;
	a->overflow = false;
	CURLcode c = curl_easy_perform(h);
	if (c == CURLE_ABORTED_BY_CALLBACK && st.cut)
		c = CURLE_OPERATION_TIMEDOUT;
	curl_slist_free_all(headers);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a->status);
	if (a->overflow) {
		char url[ST_ERR_LEN / 2];
		http_redact(o->url, url, sizeof(url));
		snprintf(err, ST_ERR_LEN, "%s: sent more bytes than the range asked for", url);
		return -EIO;
	}
	if (use_direct && (a->status == 401 || a->status == 403 || a->status == 404 || a->status == 410)) {
		atomic_store(&o->direct_dead, true); /* expired: through the redirect again */
		return 1;
	}
	if (c == CURLE_WRITE_ERROR || (c == CURLE_OK && a->status != 206))
		return http_retryable(CURLE_OK, a->status) ? 1 : bad_answer(o, a, off, err);
	if (c != CURLE_OK)
		return http_retryable(c, 0) ? 1 : http_fail(c, o->url, err);
	if (!a->has_range || a->encoded || a->first != off || a->last - a->first + 1 > a->want)
		return bad_answer(o, a, off, err);
	int rc = check_identity(o, a, err);
	if (rc)
		return rc;
	learn_direct(h, o);
	/* The whole range, or at the object's end what there is: a short body was cut off. */
	size_t expect = (size_t)(a->last - a->first + 1);
	if (a->got != expect || (o->pinned && expect != a->want && a->last + 1 != o->size))
		return 1;
	return 0;
}

int http_read_range(const struct http_settings *s, struct http_pool *pool, struct http_object *o, void *buf,
		    uint64_t off, size_t len, size_t *got, char err[ST_ERR_LEN])
{
	struct http_piece one = {buf, len};

	return http_read_pieces(s, pool, o, &one, 1, off, got, err);
}

int http_read_pieces(const struct http_settings *s, struct http_pool *pool, struct http_object *o,
		     const struct http_piece *pieces, size_t n_pieces, uint64_t off, size_t *got, char err[ST_ERR_LEN])
{
	size_t len = 0;

	for (size_t i = 0; i < n_pieces; i++)
		len += pieces[i].len;
	struct range_answer a = {.pieces = pieces, .n_pieces = n_pieces, .want = len};
	CURL *h = len ? pool_take(pool) : NULL;
	int rc = -ENOMEM;

	*got = 0;
	snprintf(err, ST_ERR_LEN, "out of memory");
	if (!h)
		return len ? -ENOMEM : 0;
	for (unsigned attempt = 0;; attempt++) {
		rc = range_once(h, s, o, &a, off, err);
		if (rc != 1)
			break;
		if (attempt >= s->retries) {
			char url[ST_ERR_LEN / 2];
			http_redact(o->url, url, sizeof(url));
			snprintf(err, ST_ERR_LEN, "%s: no complete answer at offset %" PRIu64 " after %u tries (last: %s)",
				 url, off, attempt + 1, a.status ? "HTTP status or a cut-off body" : "no answer");
			rc = -EIO;
			break;
		}
		http_backoff(h, attempt);
	}
	pool_give(pool, h);
	if (rc == 0) {
		*got = a.got;
		if (o->pinned && a.got != len && off + a.got != o->size)
			rc = -EIO;
	}
	return rc;
}

bool http_time(const char *date, time_t *t)
{
	time_t v = date ? curl_getdate(date, NULL) : -1;

	if (v < 0)
		return false;
	*t = v;
	return true;
}
