/*
 * The Hugging Face Hub as a remote source (hub_open in remote.h): the parts that need no
 * network, apart so that tests/c/test_hub.c can check them against what huggingface_hub
 * does (hf_file_system.py, utils/_hf_uris.py, utils/_auth.py, constants.py, hf_api.py).
 */
#ifndef FS_HUB_H
#define FS_HUB_H

#include <stdbool.h>
#include <stddef.h>

#include "../parser/header.h" /* ST_ERR_LEN */

#define HUB_DEFAULT_ENDPOINT "https://huggingface.co"
#define HUB_DEFAULT_REVISION "main"

/*
 * hf://[TYPE/]ORG/REPO[@REVISION][/PATH], split as huggingface_hub's parse_hf_uri splits it:
 * TYPE is models (the default), datasets, spaces or kernels; an '@' counts only right after
 * ORG/REPO; REVISION ends at the next '/' unless it is a refs/pr/N or refs/convert/NAME (the
 * two refs that hold a '/'), and is then percent-decoded, so that a branch "a/b" is
 * written a%2Fb.  PATH is a folder below which to list, or one .safetensors file or
 * *.safetensors.index.json (is_file).
 */
struct hub_uri {
	char *type;     /* "models", "datasets", ...: as in /api/TYPE/ */
	char *repo;     /* "ORG/REPO" */
	char *revision; /* decoded; HUB_DEFAULT_REVISION when the URI names none */
	char *path;     /* "" for the repository's root, else without leading or trailing '/' */
	bool is_file;   /* path names one weights file (or an index), not a folder */
};

int hub_parse_uri(const char *uri, struct hub_uri *out, char err[ST_ERR_LEN]);
void hub_uri_free(struct hub_uri *u);

/* Whether P is a path the daemon takes from a listing: relative, no empty, "." or ".."
 * segment, no control character. */
bool hub_path_ok(const char *p);

/* The environment as hub.c reads it: getenv, or a table in tests.  NULL when unset. */
typedef const char *(*hub_getenv_fn)(const char *name, void *arg);

/* HF_ENDPOINT without trailing '/', or HUB_DEFAULT_ENDPOINT.  NULL when out of memory. */
char *hub_endpoint(hub_getenv_fn env, void *arg);

/* The token file: HF_TOKEN_PATH, else $HF_HOME/token, HF_HOME defaulting to
 * $XDG_CACHE_HOME/huggingface, that to ~/.cache/huggingface; a leading ~ is $HOME.  An
 * empty variable counts as unset.  Returns 0 with *path malloc'd, or NULL when a ~ is
 * needed and there is no HOME; -ENOMEM. */
int hub_token_path(hub_getenv_fn env, void *arg, char **path);

/*
 * The token huggingface_hub would send without being given one: none when
 * HF_HUB_DISABLE_IMPLICIT_TOKEN is true; else HF_TOKEN, else HUGGING_FACE_HUB_TOKEN, else
 * the token file's; each with CR and LF taken out and blanks trimmed, empty meaning none.
 * Returns 0 with *token malloc'd or NULL (none; a missing file is none); -ENOMEM; -EACCES,
 * -EIO or -EINVAL with one line in err (an unreadable file, a control character).
 */
int hub_find_token(hub_getenv_fn env, void *arg, char **token, char err[ST_ERR_LEN]);

/* GET {endpoint}/api/TYPE/REPO/tree/REV[/DIR]?recursive=B&expand=false, REV and DIR each
 * one escaped segment, as hf_api.py's list_repo_tree sends it.  NULL when out of memory. */
char *hub_tree_url(const char *endpoint, const struct hub_uri *u, const char *dir, bool recursive);

/* {endpoint}/[TYPE/]REPO/resolve/REV/[DIR/]: what hf_hub_url puts before a file's path
 * (models have no TYPE/ there).  NULL when out of memory. */
char *hub_resolve_base(const char *endpoint, const struct hub_uri *u, const char *dir);

/* A growing list of file paths, relative to the listed folder. */
struct hub_files {
	char **paths;
	size_t n, cap;
};

void hub_files_free(struct hub_files *f);

/*
 * One page of the tree API's answer (a JSON array of {type, path, size, oid[, lfs]}):
 * appends each "file" below DIR ("" for the root) to F, relative to DIR.  Directories are
 * skipped.  Returns 0, -ENOMEM, or -EPROTO with one line in err for anything not as the
 * Hub writes it (a field missing or of another type, an unsafe path, one outside DIR).
 */
int hub_parse_tree_page(const char *body, size_t len, const char *dir, struct hub_files *f,
			char err[ST_ERR_LEN]);

/* Sorts F (strcmp); -EPROTO with one line naming the path listed twice. */
int hub_files_finish(struct hub_files *f, char err[ST_ERR_LEN]);

/* The "error" string of a Hub error body ({"error": "..."}), printable ASCII, at most
 * outlen-1 bytes; "" when there is none. */
void hub_error_message(const char *body, size_t len, char *out, size_t outlen);

#endif
