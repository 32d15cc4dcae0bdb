/*
 * HTTP(S) for remote sources, over libcurl: whole small documents (an index, a bucket or
 * repository listing) and byte ranges of one pinned object (store_http.c).  S3 and the
 * Hugging Face Hub are resolvers above this (s3.c, hub.c): they turn their URLs into plain
 * HTTP(S) URLs and a struct http_auth.
 *
 * Nothing here prints: errors are a negative errno and one line, and no line ever holds a
 * credential or a URL's query string (http_redact).
 */
#ifndef FS_HTTP_H
#define FS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "../parser/header.h" /* ST_ERR_LEN */

/* How requests to one source are signed or authorized.  Every field may be NULL. */
struct http_auth {
	char *userpwd; /* "KEY:SECRET": with sigv4, the AWS access key and secret */
	char *sigv4;   /* CURLOPT_AWS_SIGV4's "aws:amz:REGION:s3" */
	char *header;  /* one more request header: "Authorization: Bearer hf_..." or
			* "x-amz-security-token: ..." */
	const char *token_hint; /* what to tell a user refused with 401/403 ("set HF_TOKEN") */
};

void http_auth_free(struct http_auth *a);

/* The mount's settings for every request (-o cacert=, connect_timeout=, read_timeout=, retries=). */
struct http_settings {
	const char *cacert;        /* NULL: the system's CAs */
	unsigned connect_timeout;  /* seconds */
	unsigned read_timeout;     /* seconds without a byte before a transfer counts as stalled */
	unsigned retries;          /* more tries after a 5xx, 429 or a dropped connection */
	bool https_only;           /* SOURCE is https: no redirect to plain http */
};

#define HTTP_DEFAULT_CONNECT_TIMEOUT 10
#define HTTP_DEFAULT_READ_TIMEOUT 30
#define HTTP_DEFAULT_RETRIES 4

/* Whether SOURCE names a remote object: http://, https://, s3:// or hf://. */
bool http_is_url(const char *source);

/* URL for messages: without user:password@ and without ?query (a presigned URL's signature). */
void http_redact(const char *url, char *out, size_t outlen);

/* One whole GET's answer. */
struct http_response {
	long status;
	char *body;      /* NUL-terminated, `len` bytes before the NUL */
	size_t len;
	char *next_url;  /* the Link header's rel="next" (the Hub's pagination), or NULL */
};

void http_response_free(struct http_response *r);

/*
 * GETs URL whole (following redirects), at most max_len bytes: more is refused (-EFBIG).
 * Retries as for range reads.  Returns 0 with any HTTP status in r->status (the caller
 * decides what 404 means), or a negative errno and one line in err for a transfer that
 * failed (DNS, TLS, connect, timeout).
 */
int http_get(const struct http_settings *s, const char *url, const struct http_auth *auth,
	     size_t max_len, struct http_response *r, char err[ST_ERR_LEN]);

/* "https://host/a/b?q" + "c d/e" -> "https://host/a/c%20d/e": REL resolved beside URL's last
 * part, each byte outside [A-Za-z0-9._~/-] percent-encoded.  NULL when out of memory. */
char *http_sibling(const char *url, const char *rel);

/*
 * Byte ranges of one remote object, pinned at its first read: its size and its ETag (or,
 * without a strong one, its Last-Modified), sent as If-Match (If-Unmodified-Since) with
 * every later range so that a changed object is refused by the server, and checked again
 * in every answer (Content-Range's total, ETag) for servers that ignore the condition.
 */
struct http_object {
	char *url;
	const struct http_auth *auth; /* the source's: not owned */
	uint64_t size;                /* 0 until pinned */
	char *etag;                   /* strong ETag as sent (If-Match), or NULL */
	char *any_etag;               /* the ETag, weak ones too: compared in every answer */
	char *last_modified;          /* or NULL; sent as If-Unmodified-Since without a strong ETag */
	bool pinned;
	/* Where the first answer came from after redirects (the Hub's CDN), asked directly
	 * from then on, until it refuses (a presigned URL that expired): set once. */
	_Atomic(char *) direct;
	_Atomic(bool) direct_dead;
};

/* A pool of libcurl handles: each keeps its connections open for the next request. */
struct http_pool;
struct http_pool *http_pool_new(void);
void http_pool_free(struct http_pool *p);

/*
 * Reads [off, off+len) of O into buf, retrying as the settings say.  Unpinned, it pins O
 * from the answer and may get less than len (the object is shorter): *got says how much.
 * Pinned, it gets exactly len bytes or fails.  Returns 0; -ESTALE when the object is no
 * longer what was pinned (412, another size or ETag); -EPROTO for a server that ignores
 * Range; -EACCES, -ENOENT for 401/403 and 404; -EIO, -ETIMEDOUT otherwise; each with one line.
 */
int http_read_range(const struct http_settings *s, struct http_pool *pool, struct http_object *o,
		    void *buf, uint64_t off, size_t len, size_t *got, char err[ST_ERR_LEN]);
void http_object_free(struct http_object *o);

/* The same for a range whose bytes go to several buffers, one after another (blocks). */
struct http_piece {
	void *buf;
	size_t len;
};
int http_read_pieces(const struct http_settings *s, struct http_pool *pool, struct http_object *o,
		     const struct http_piece *pieces, size_t n_pieces, uint64_t off, size_t *got,
		     char err[ST_ERR_LEN]);

/* An HTTP date (Last-Modified) as a time. */
bool http_time(const char *date, time_t *t);

/* Once per process, before any thread starts: libcurl's global set-up. */
int http_global_init(void);

/* S as a percent-encoded path: each part as http_escape, the '/' between them kept. */
char *http_escape_path(const char *s);

/* S as one percent-encoded path segment ("/" encoded too: "refs/pr/1" -> "refs%2Fpr%2F1"). */
char *http_escape(const char *s);

#endif
