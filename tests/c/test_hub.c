/*
 * Unit tests of fs/hub.c's parts that need no network: hf:// URIs split as huggingface_hub's
 * parse_hf_uri splits them, the token found where it looks, the URLs it asks, and the tree
 * API's pages checked.  Run from tests/test_hub_c.py (tests/test_hubserver.py checks the
 * same rules against huggingface_hub itself).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../fs/hub.h"

#include "check.h"

/* hub_parse_uri's result as "TYPE|REPO|REV|PATH|file" or "error: ...". */
static void parsed(const char *uri, char *out, size_t len)
{
	struct hub_uri u;
	char err[ST_ERR_LEN];
	int rc = hub_parse_uri(uri, &u, err);

	if (rc)
		snprintf(out, len, "error: %s", err);
	else
		snprintf(out, len, "%s|%s|%s|%s|%s", u.type, u.repo, u.revision, u.path, u.is_file ? "file" : "dir");
	hub_uri_free(&u);
}

#define URI(uri, want)                                                                   \
	do {                                                                             \
		char got_[ST_ERR_LEN + 16];                                              \
		parsed(uri, got_, sizeof(got_));                                         \
		CHECK(strncmp(got_, want, strlen(want)) == 0, "%s: got '%s', want '%s'", \
		      uri, got_, want);                                                  \
	} while (0)

static void test_uris(void)
{
	URI("hf://org/repo", "models|org/repo|main||dir");
	URI("hf://models/org/repo", "models|org/repo|main||dir");
	URI("hf://org/repo/", "models|org/repo|main||dir");
	URI("hf://datasets/org/ds@v1/data/train", "datasets|org/ds|v1|data/train|dir");
	URI("hf://spaces/org/sp", "spaces|org/sp|main||dir");
	/* refs/pr/N and refs/convert/NAME hold a '/'; other revisions end at the first one. */
	URI("hf://org/repo@refs/pr/1", "models|org/repo|refs/pr/1||dir");
	URI("hf://org/repo@refs/pr/12/unet", "models|org/repo|refs/pr/12|unet|dir");
	URI("hf://org/repo@refs/convert/parquet/a", "models|org/repo|refs/convert/parquet|a|dir");
	URI("hf://org/repo@feature/foo", "models|org/repo|feature|foo|dir");
	URI("hf://org/repo@feature%2Ffoo/sub", "models|org/repo|feature/foo|sub|dir");
	URI("hf://org/repo@0123456789abcdef0123456789abcdef01234567",
	    "models|org/repo|0123456789abcdef0123456789abcdef01234567||dir");
	/* An '@' past ORG/REPO is part of the path. */
	URI("hf://org/repo/sub/file@1", "models|org/repo|main|sub/file@1|dir");
	URI("hf://org/repo/model.safetensors", "models|org/repo|main|model.safetensors|file");
	URI("hf://org/repo@v2/unet/diffusion_pytorch_model.safetensors.index.fp16.json",
	    "models|org/repo|v2|unet/diffusion_pytorch_model.safetensors.index.fp16.json|file");
	URI("hf://Org-1/re_po.v2", "models|Org-1/re_po.v2|main||dir");

	URI("hf://", "error: not hf://");
	URI("s3://org/repo", "error: not hf://");
	URI("hf://gpt2", "error: the repository must be ORG/NAME");
	URI("hf://model/org/repo", "error: the type must be plural: 'models/'");
	URI("hf://datasets", "error: ");
	URI("hf://buckets/org/b", "error: buckets are not repositories");
	URI("hf://org/repo@", "error: empty revision");
	URI("hf://org/repo@/x", "error: empty revision");
	URI("hf://org/re--po", "error: 'org/re--po' is no repository id");
	URI("hf://org/re..po", "error: 'org/re..po' is no repository id");
	URI("hf://org/repo.git", "error: 'org/repo.git' is no repository id");
	URI("hf://-org/repo", "error: '-org/repo' is no repository id");
	URI("hf://org/repo-", "error: 'org/repo-' is no repository id");
	URI("hf://org/re po", "error: 'org/re po' is no repository id");
	URI("hf://org/repo//x", "error: the path '/x' has an empty");
	URI("hf://org/repo/a//b", "error: the path 'a//b' has an empty");
	URI("hf://org/repo/../x", "error: the path '../x'");
	URI("hf://org/repo@main/./x", "error: the path './x'");
	URI("hf://org/repo@a%00b", "error: the revision holds a control character");
}

static void test_paths(void)
{
	CHECK(hub_path_ok("a"), "a");
	CHECK(hub_path_ok("a/b.c/..d"), "..d is a name");
	CHECK(!hub_path_ok(""), "empty");
	CHECK(!hub_path_ok("/a"), "leading /");
	CHECK(!hub_path_ok("a/"), "trailing /");
	CHECK(!hub_path_ok("a//b"), "empty part");
	CHECK(!hub_path_ok("a/../b"), "..");
	CHECK(!hub_path_ok("./b"), ".");
	CHECK(!hub_path_ok("a\nb"), "newline");
}

/* A NULL-ended NAME, VALUE, ... table as the environment. */
static const char *table_env(const char *name, void *arg)
{
	const char *const *t = arg;
	for (; *t; t += 2)
		if (strcmp(t[0], name) == 0)
			return t[1];
	return NULL;
}

static void expect_token_path(const char *const *env, const char *want)
{
	char *path = NULL;
	int rc = hub_token_path(table_env, (void *)env, &path);
	CHECK(rc == 0 && ((!want && !path) || (want && path && strcmp(path, want) == 0)), "token path: got %s, want %s",
	      path ? path : "(none)", want ? want : "(none)");
	free(path);
}

static void test_endpoint_and_token_path(void)
{
	const char *none[] = {NULL}, *slash[] = {"HF_ENDPOINT", "http://127.0.0.1:8080/hf//", NULL};
	const char *empty[] = {"HF_ENDPOINT", "", NULL};
	char *e;

	CHECK((e = hub_endpoint(table_env, none)) && strcmp(e, "https://huggingface.co") == 0, "default endpoint");
	free(e);
	CHECK((e = hub_endpoint(table_env, slash)) && strcmp(e, "http://127.0.0.1:8080/hf") == 0, "endpoint /");
	free(e);
	CHECK((e = hub_endpoint(table_env, empty)) && strcmp(e, "https://huggingface.co") == 0, "empty endpoint");
	free(e);

	expect_token_path((const char *[]){"HOME", "/home/u", NULL}, "/home/u/.cache/huggingface/token");
	expect_token_path((const char *[]){"HOME", "/home/u/", NULL}, "/home/u/.cache/huggingface/token");
	expect_token_path((const char *[]){NULL}, NULL);
	expect_token_path((const char *[]){"HOME", "/h", "XDG_CACHE_HOME", "/xdg", NULL}, "/xdg/huggingface/token");
	expect_token_path((const char *[]){"HOME", "/h", "XDG_CACHE_HOME", "~/c", NULL}, "/h/c/huggingface/token");
	expect_token_path((const char *[]){"HOME", "/h", "XDG_CACHE_HOME", "/x", "HF_HOME", "/hf/", NULL},
			  "/hf/token");
	expect_token_path((const char *[]){"HOME", "/h", "HF_HOME", "~", NULL}, "/h/token");
	expect_token_path((const char *[]){"HOME", "/h", "HF_HOME", "/hf", "HF_TOKEN_PATH", "~/t", NULL}, "/h/t");
	expect_token_path((const char *[]){"HOME", "/h", "HF_HOME", "", NULL}, "/h/.cache/huggingface/token");
	expect_token_path((const char *[]){"HOME", "/h", "HF_HOME", "~other/x", NULL}, "~other/x/token");
}

/* hub_find_token's result as the token, "(none)", or "error: ...". */
static void expect_token(const char *const *env, const char *want)
{
	char *token = NULL, err[ST_ERR_LEN] = "", got[ST_ERR_LEN + 8];
	int rc = hub_find_token(table_env, (void *)env, &token, err);

	if (rc)
		snprintf(got, sizeof(got), "error: %s", err);
	else
		snprintf(got, sizeof(got), "%s", token ? token : "(none)");
	CHECK(strncmp(got, want, strlen(want)) == 0 && (rc || strlen(got) == strlen(want)), "token: got '%s', want '%s'",
	      got, want);
	free(token);
}

static void write_file(const char *path, const char *text, size_t len)
{
	FILE *f = fopen(path, "wb");
	CHECK(f && fwrite(text, 1, len, f) == len, "writing %s", path);
	if (f)
		fclose(f);
}

static void test_tokens(void)
{
	char dir[] = "/tmp/test_hub_XXXXXX", file[64], nul[64];
	CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	snprintf(file, sizeof(file), "%s/token", dir);
	snprintf(nul, sizeof(nul), "%s/nul", dir);
	write_file(file, " hf_file\r\n", 10);
	write_file(nul, "hf_a\0b", 6);

	expect_token((const char *[]){"HF_TOKEN", " hf_env\n", NULL}, "hf_env");
	expect_token((const char *[]){"HF_TOKEN", "hf_a", "HUGGING_FACE_HUB_TOKEN", "hf_b", NULL}, "hf_a");
	expect_token((const char *[]){"HF_TOKEN", "", "HUGGING_FACE_HUB_TOKEN", "hf_b", NULL}, "hf_b");
	/* A blank HF_TOKEN is chosen over HUGGING_FACE_HUB_TOKEN, cleans to nothing: the file's. */
	expect_token((const char *[]){"HF_TOKEN", " \n", "HUGGING_FACE_HUB_TOKEN", "hf_b", "HF_HOME", dir, NULL},
		     "hf_file");
	expect_token((const char *[]){"HF_TOKEN", "hf_\nab\r", NULL}, "hf_ab");
	expect_token((const char *[]){"HF_HOME", dir, NULL}, "hf_file");
	expect_token((const char *[]){"HF_TOKEN_PATH", file, "HF_HOME", "/nonexistent", NULL}, "hf_file");
	expect_token((const char *[]){"HF_HOME", "/nonexistent", NULL}, "(none)");
	expect_token((const char *[]){NULL}, "(none)");
	expect_token((const char *[]){"HF_TOKEN", "hf_a", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "yes", NULL}, "(none)");
	expect_token((const char *[]){"HF_HOME", dir, "HF_HUB_DISABLE_IMPLICIT_TOKEN", "True", NULL}, "(none)");
	expect_token((const char *[]){"HF_TOKEN", "hf_a", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "0", NULL}, "hf_a");
	expect_token((const char *[]){"HF_TOKEN", "hf_a\tb", NULL}, "error: HF_TOKEN: the token holds a control");
	expect_token((const char *[]){"HF_TOKEN_PATH", nul, NULL}, "error: the token file");
	expect_token((const char *[]){"HF_TOKEN_PATH", dir, NULL}, "error: the token file"); /* a directory */
	unlink(file);
	unlink(nul);
	rmdir(dir);
}

static void expect_url(char *got, const char *want)
{
	CHECK(got && strcmp(got, want) == 0, "url: got %s, want %s", got ? got : "(null)", want);
	free(got);
}

static void test_urls(void)
{
	struct hub_uri u;
	char err[ST_ERR_LEN];
	const char *ep = "http://127.0.0.1:9/hf";

	CHECK(hub_parse_uri("hf://org/repo@refs/pr/1/sub dir/x", &u, err) == 0, "%s", err);
	expect_url(hub_tree_url(ep, &u, u.path, true),
		   "http://127.0.0.1:9/hf/api/models/org/repo/tree/refs%2Fpr%2F1/sub%20dir%2Fx?recursive=true&expand=false");
	expect_url(hub_tree_url(ep, &u, "", false),
		   "http://127.0.0.1:9/hf/api/models/org/repo/tree/refs%2Fpr%2F1?recursive=false&expand=false");
	expect_url(hub_resolve_base(ep, &u, u.path), "http://127.0.0.1:9/hf/org/repo/resolve/refs%2Fpr%2F1/sub%20dir/x/");
	expect_url(hub_resolve_base(ep, &u, ""), "http://127.0.0.1:9/hf/org/repo/resolve/refs%2Fpr%2F1/");
	hub_uri_free(&u);
	CHECK(hub_parse_uri("hf://datasets/org/ds", &u, err) == 0, "%s", err);
	expect_url(hub_tree_url(ep, &u, "", true),
		   "http://127.0.0.1:9/hf/api/datasets/org/ds/tree/main?recursive=true&expand=false");
	expect_url(hub_resolve_base(ep, &u, ""), "http://127.0.0.1:9/hf/datasets/org/ds/resolve/main/");
	hub_uri_free(&u);
}

/* hub_parse_tree_page (and hub_files_finish) over PAGE as "a,b," or "error: ...". */
static void tree(const char *page, const char *dir, char *out, size_t len)
{
	struct hub_files f = {0};
	char err[ST_ERR_LEN];
	int rc = hub_parse_tree_page(page, strlen(page), dir, &f, err);

	if (!rc)
		rc = hub_files_finish(&f, err);
	out[0] = '\0';
	if (rc)
		snprintf(out, len, "error: %s", err);
	for (size_t i = 0, used = 0; !rc && i < f.n; i++)
		used += (size_t)snprintf(out + used, len - used, "%s,", f.paths[i]);
	hub_files_free(&f);
}

#define TREE(dir, want, page)                                                            \
	do {                                                                             \
		char got_[ST_ERR_LEN + 16];                                              \
		tree(page, dir, got_, sizeof(got_));                                     \
		CHECK(strncmp(got_, want, strlen(want)) == 0 && (want[0] == 'e' || strlen(got_) == strlen(want)), \
		      "tree: got '%s', want '%s'", got_, want);                          \
	} while (0)

#define F(path) "{\"type\":\"file\",\"oid\":\"ab\",\"size\":3,\"path\":\"" path "\"}"
#define D(path) "{\"type\":\"directory\",\"oid\":\"cd\",\"size\":0,\"path\":\"" path "\"}"
#define LFS(path, size, lfs) \
	"{\"type\":\"file\",\"oid\":\"ab\",\"size\":" size ",\"lfs\":" lfs ",\"path\":\"" path "\"}"

static void test_tree_pages(void)
{
	TREE("", "", "[]");
	TREE("", "a.json,b/c.safetensors,", "[" F("b/c.safetensors") "," D("b") "," F("a.json") "]");
	TREE("", "m.safetensors,",
	     "[" LFS("m.safetensors", "100", "{\"oid\":\"e3b0\",\"size\":100,\"pointerSize\":134}") "]");
	TREE("", "m,", "[" LFS("m", "100", "null") "]");
	TREE("unet", "a,x/b,", "[" D("unet/x") "," F("unet/x/b") "," F("unet/a") "]");
	/* Fields the Hub adds (xetHash, lastCommit with expand=true) are not looked at. */
	TREE("", "a,", "[{\"type\":\"file\",\"oid\":\"ab\",\"size\":1,\"path\":\"a\",\"xetHash\":\"x\"}]");
	TREE("", "a,", "[" F("a") ",{\"type\":\"submodule\",\"path\":\"s\"}]");

	TREE("", "error: the tree listing is not a JSON array", "{}");
	TREE("", "error: the tree listing is not a JSON array", "[" F("a") "");
	TREE("", "error: the tree listing is not a JSON array", "[] []");
	TREE("", "error: the tree listing has an entry that is not an object", "[1]");
	TREE("", "error: the tree listing has an entry without", "[{\"type\":\"file\"}]");
	TREE("", "error: the tree listing has an entry without", "[{\"type\":1,\"path\":\"a\"}]");
	TREE("", "error: the tree listing has no \"size\"", "[{\"type\":\"file\",\"oid\":\"ab\",\"path\":\"a\"}]");
	TREE("", "error: the tree listing has no \"size\"",
	     "[{\"type\":\"file\",\"oid\":\"ab\",\"size\":\"3\",\"path\":\"a\"}]");
	TREE("", "error: the tree listing has no \"size\"",
	     "[{\"type\":\"file\",\"oid\":\"ab\",\"size\":-1,\"path\":\"a\"}]");
	TREE("", "error: the tree listing has no \"size\"",
	     "[{\"type\":\"file\",\"oid\":\"ab\",\"size\":1.5,\"path\":\"a\"}]");
	TREE("", "error: the tree listing has no \"oid\"", "[{\"type\":\"file\",\"size\":3,\"path\":\"a\"}]");
	TREE("", "error: the tree listing has an \"lfs\" that is not", "[" LFS("m", "1", "[]") "]");
	TREE("", "error: the tree listing has an \"lfs\" that is not",
	     "[" LFS("m", "1", "{\"oid\":\"e3\",\"size\":1}") "]");
	TREE("", "error: the tree listing has an \"lfs\" size other",
	     "[" LFS("m", "1", "{\"oid\":\"e3\",\"size\":2,\"pointerSize\":134}") "]");
	TREE("", "error: the tree listing has a path with", "[" F("../a") "]");
	TREE("", "error: the tree listing has a path with", "[" F("/a") "]");
	TREE("", "error: the tree listing has a path with", "[" F("a//b") "]");
	TREE("", "error: the tree listing has a path with", "[" D("a/./b") "]");
	TREE("", "error: the tree listing has a path with", "[" F("") "]");
	TREE("", "error: the tree listing has an entry without", "[" F("a\\u0000b") "]");
	TREE("unet", "error: the tree listing of 'unet' has 'vae/a', outside it", "[" F("vae/a") "]");
	TREE("unet", "error: the tree listing of 'unet' has 'unetx/a', outside it", "[" F("unetx/a") "]");
	TREE("unet", "error: the tree listing of 'unet' has 'unet', outside it", "[" F("unet") "]");
	TREE("", "error: the tree listing names 'a' twice", "[" F("a") "," F("b") "," F("a") "]");
}

static void test_error_messages(void)
{
	char msg[32];
	const char *body = "{\"error\":\"Repository not found\"}";

	hub_error_message(body, strlen(body), msg, sizeof(msg));
	CHECK(strcmp(msg, "Repository not found") == 0, "got '%s'", msg);
	body = "{\"error\":[\"first\\n\",\"second\"]}";
	hub_error_message(body, strlen(body), msg, sizeof(msg));
	CHECK(strcmp(msg, "first?") == 0, "got '%s'", msg);
	body = "<html>Bad gateway</html>";
	hub_error_message(body, strlen(body), msg, sizeof(msg));
	CHECK(strcmp(msg, "") == 0, "got '%s'", msg);
	body = "{\"error\":\"a very long message that does not fit\"}";
	hub_error_message(body, strlen(body), msg, 8);
	CHECK(strcmp(msg, "a very ") == 0, "got '%s'", msg);
	/* fuzz_remote: the body was read to a NUL, past its len (ASan: heap-buffer-overflow). */
	body = "{\"error\":\"Not found\"}";
	char *exact = malloc(strlen(body));
	memcpy(exact, body, strlen(body));
	hub_error_message(exact, strlen(body), msg, sizeof(msg));
	CHECK(strcmp(msg, "Not found") == 0, "no NUL after len: got '%s'", msg);
	free(exact);
	hub_error_message(body, 12, msg, sizeof(msg));
	CHECK(strcmp(msg, "") == 0, "len cuts the body: got '%s'", msg);
}

int main(void)
{
	test_uris();
	test_paths();
	test_endpoint_and_token_path();
	test_tokens();
	test_urls();
	test_tree_pages();
	test_error_messages();
	printf("test_hub: %d passed, %d failed\n", passed, failed);
	return failed != 0;
}
