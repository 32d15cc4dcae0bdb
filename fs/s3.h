/*
 * S3 as a remote source (s3_open in remote.h): the parts that need no network, apart so
 * that tests/c/test_s3.c can check them.  Credentials, region and endpoint are found where
 * the AWS CLI finds them (botocore's configprovider.py, credentials.py, configloader.py),
 * so that a SOURCE that `aws s3 ls` reads is one that mounts, with the same settings.
 */
#ifndef FS_S3_H
#define FS_S3_H

#include <stdbool.h>
#include <stddef.h>

#include "../parser/header.h" /* ST_ERR_LEN */

#define S3_DEFAULT_REGION "us-east-1"
#define S3_DEFAULT_PROFILE "default"

/* s3://BUCKET/KEY (is_file), s3://BUCKET/PREFIX/ or s3://BUCKET[/]: the key or prefix as
 * written (the AWS CLI does not percent-decode s3:// URIs), checked to be a path: no
 * empty, "." or ".." part, no control character. */
struct s3_uri {
	char *bucket;
	char *key;    /* is_file: the object's key; else the prefix: "" or ending in '/' */
	bool is_file;
};

int s3_parse_uri(const char *uri, struct s3_uri *out, char err[ST_ERR_LEN]);
void s3_uri_free(struct s3_uri *u);

/* The environment as s3.c reads it: getenv, or a table in tests.  NULL when unset. */
typedef const char *(*s3_getenv_fn)(const char *name, void *arg);

/* What requests to S3 are sent with.  No key: anonymous (unsigned) requests. */
struct s3_config {
	char *key_id, *secret, *token; /* each NULL, or key_id and secret both set */
	char *region;
	char *endpoint;   /* AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL without trailing '/'
			   * (path-style requests), or NULL for AWS's own virtual hosts */
	char *profile;    /* the profile that was read: for messages */
	const char *from; /* where the key came from, for messages: "the environment", ... */
};

void s3_config_free(struct s3_config *c);

/*
 * As the AWS CLI: the key from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
 * AWS_SESSION_TOKEN), else from profile AWS_DEFAULT_PROFILE or AWS_PROFILE (default
 * "default") in AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials), then in AWS_CONFIG_FILE
 * (~/.aws/config); the region from AWS_REGION, AWS_DEFAULT_REGION, the profile, else
 * us-east-1; the endpoint from AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL (unless
 * AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true).  A leading ~ in a file's name is $HOME; an
 * empty variable counts as unset; a missing file is an empty one.  Returns 0; -ENOMEM;
 * -EINVAL, -ENOENT, -ENOTSUP or the errno of an unreadable file with one line in err (half
 * a key pair, a named profile that is nowhere, a profile that gets its key from a process,
 * a role or SSO, an endpoint that is not http(s)://).
 */
int s3_find_config(s3_getenv_fn env, void *arg, struct s3_config *out, char err[ST_ERR_LEN]);

/*
 * KEY's value in [SECTION] of an INI file's TEXT, as Python's configparser reads the AWS
 * files: '=' or ':' between key and value, both trimmed, keys case-insensitive, "#" and
 * ";" lines comments, indented lines after a key part of its value (nested settings such
 * as "s3 =" hold, never keys of the section).  The first one wins.  Returns 1 with *value
 * malloc'd, 0 when absent, -ENOMEM.
 */
int s3_ini_value(const char *text, size_t len, const char *section, const char *key, char **value);

/* Whether [SECTION] is in TEXT. */
bool s3_ini_has_section(const char *text, size_t len, const char *section);

/* ENDPOINT/BUCKET (path-style), or https://BUCKET.s3.REGION.amazonaws.com (path-style on
 * s3.REGION.amazonaws.com for a bucket with a '.', which no wildcard certificate covers).
 * Without trailing '/'.  NULL when out of memory. */
char *s3_bucket_url(const struct s3_config *c, const char *bucket);

/*
 * BUCKET_URL/?list-type=2[&max-keys=N]&prefix=P[&continuation-token=T]: the parameters in
 * the order of their names and encoded as SigV4 canonicalizes them (each byte outside
 * [A-Za-z0-9_.~-] as %XX), because libcurl 7.88 signs the query as it is sent, unsorted.
 * max_keys 0: S3's default (1000).  NULL when out of memory.
 */
char *s3_list_url(const char *bucket_url, const char *prefix, const char *token, unsigned max_keys);

/* Every key of a listing below one prefix, relative to it. */
struct s3_keys {
	char **paths;
	size_t n, cap;
	size_t skipped;   /* keys that cannot be a path in the mount ("a//b", "../x") */
	bool truncated;   /* IsTruncated: another page follows */
	char *next_token; /* NextContinuationToken, decoded; NULL on the last page */
};

void s3_keys_free(struct s3_keys *k);

/*
 * One page of ListObjectsV2's XML: appends each key below PREFIX to K, relative to it, and
 * sets truncated and next_token.  Keys ending in '/' (the console's folders) are skipped, as
 * are keys that are no safe relative path (counted in skipped).  The XML is read minimally:
 * no DTD, no CDATA, elements nested at most a few deep, the five named entities and
 * character references decoded, NUL refused.  Returns 0, -ENOMEM, or -EPROTO with one line
 * in err for anything else (malformed XML, a key outside PREFIX, a truncated page without
 * a token, no ListBucketResult).
 */
int s3_parse_listing(const char *body, size_t len, const char *prefix, struct s3_keys *k,
		     char err[ST_ERR_LEN]);

/* Sorts K's paths (strcmp); -EPROTO with one line naming a key listed twice. */
int s3_keys_finish(struct s3_keys *k, char err[ST_ERR_LEN]);

/* The text of <Error>'s child NAME ("Code", "Message", "Region") in an S3 error body,
 * printable ASCII, at most outlen-1 bytes; "" when there is none. */
void s3_error_field(const char *body, size_t len, const char *name, char *out, size_t outlen);

#endif
