/*
 * A remote SOURCE as a listing of objects: what s3.c and hub.c resolve s3:// and hf://
 * SOURCEs to, and what source.c picks shards from with the same rules as for a local
 * folder (folder.h).  A plain http(s):// URL is one object beside nothing.
 */
#ifndef FS_REMOTE_H
#define FS_REMOTE_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"

struct remote_listing {
	char *base;       /* the folder's URL, ending in '/': an object's URL is base + its path,
			   * each segment percent-encoded (http_escape) */
	char **paths;     /* the objects below base, relative, '/'-separated, sorted (strcmp) */
	size_t n_paths;
	bool is_file;     /* SOURCE named one object: paths[0] (a .safetensors or an index) */
	struct http_auth auth; /* for every request to these objects */
	char *display;    /* SOURCE for messages, without credentials or query */
};

void remote_listing_free(struct remote_listing *l);

/* OUT emptied, with its display (URI redacted) and err "" set: how each resolver starts. */
int remote_listing_init(struct remote_listing *out, const char *uri, char err[ST_ERR_LEN]);

/* http(s)://HOST/PATH/NAME[?QUERY] as one object NAME (as written) beside nothing, in
 * base http(s)://HOST/PATH/.  Returns 0 or -ENOMEM; -EINVAL with err for a URL without a
 * file name. */
int http_listing(const char *url, struct remote_listing *out, char err[ST_ERR_LEN]);

/*
 * s3://BUCKET/KEY (is_file) or s3://BUCKET/PREFIX/ (every key below it, all pages of
 * ListObjectsV2), with credentials, region and endpoint found as the AWS CLI finds them
 * (s3.c).  hf://ORG/REPO[@REVISION][/SUBFOLDER]: the repository's files below SUBFOLDER at
 * REVISION (default main), through the Hub's API at HF_ENDPOINT, token from HF_TOKEN or
 * the huggingface_hub token file (hub.c).  Return 0, or a negative errno with one line in
 * err that names SOURCE (redacted) and says what to do.
 */
int s3_open(const struct http_settings *s, const char *uri, struct remote_listing *out,
	    char err[ST_ERR_LEN]);
int hub_open(const struct http_settings *s, const char *uri, struct remote_listing *out,
	     char err[ST_ERR_LEN]);

#endif
