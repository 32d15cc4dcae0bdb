/*
 * Unit tests of fs/s3.c's parts that need no network: s3:// URIs, the credentials, region
 * and endpoint found as the AWS CLI finds them (in files of a temporary folder, never the
 * real HOME), the URLs asked, and ListObjectsV2 pages, hostile ones included.  Run from
 * tests/test_s3_c.py; tests/test_s3server.py checks the signing against moto's server.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../fs/http.h"
#include "../../fs/s3.h"

#include "check.h"

/* s3_parse_uri's result as "BUCKET|KEY|file" or "error: ...". */
static void parsed(const char *uri, char *out, size_t len)
{
	struct s3_uri u;
	char err[ST_ERR_LEN];

	if (s3_parse_uri(uri, &u, err))
		snprintf(out, len, "error: %s", err);
	else
		snprintf(out, len, "%s|%s|%s", u.bucket, u.key, u.is_file ? "file" : "dir");
	s3_uri_free(&u);
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
	URI("s3://models", "models||dir");
	URI("s3://models/", "models||dir");
	URI("s3://models/llama/", "models|llama/|dir");
	URI("s3://models/a/b/m.safetensors", "models|a/b/m.safetensors|file");
	URI("s3://models/m.safetensors", "models|m.safetensors|file");
	URI("s3://my.bucket-1/x", "my.bucket-1|x|file");
	/* Written as is: the AWS CLI does not percent-decode, and '?' or '#' is part of a key. */
	URI("s3://b12/a b/c%20d?x#y", "b12|a b/c%20d?x#y|file");
	URI("s3://b12/caf\xc3\xa9/", "b12|caf\xc3\xa9/|dir");
	URI("http://models/x", "error: no bucket");
	URI("s3://", "error: no bucket");
	URI("s3:///x", "error: no bucket");
	URI("s3://ab/x", "error: no bucket");
	URI("s3://-bucket/x", "error: no bucket");
	URI("s3://bucket-/x", "error: no bucket");
	URI("s3://bu@cket/x", "error: no bucket");
	URI("s3://user:pw@bucket/x", "error: no bucket");
	URI("s3://bucket:9000/x", "error: no bucket");
	URI("s3://b12//x", "error: the key '/x' has an empty");
	URI("s3://b12/a//b", "error: the key 'a//b'");
	URI("s3://b12/a//", "error: the key 'a//'");
	URI("s3://b12/../x", "error: the key '../x'");
	URI("s3://b12/a/./x", "error: the key 'a/./x'");
	URI("s3://b12/a/..", "error: the key 'a/..'");
	URI("s3://b12/a\tb", "error: the key 'a\tb'");
	URI("s3://b12/a\x7f", "error: the key");
	URI("s3://b12/..a/", "b12|..a/|dir");
}

/* A NULL-ended NAME, VALUE, ... table as the environment. */
static const char *table_env(const char *name, void *arg)
{
	const char *const *t = arg;

	for (; t && t[0]; t += 2)
		if (strcmp(t[0], name) == 0)
			return t[1];
	return NULL;
}

static char dir[] = "/tmp/test_s3.XXXXXX";

static void write_file(const char *name, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "w"))) {
		fputs(text, f);
		fclose(f);
	}
}

/* s3_find_config's result as "KEY|SECRET|TOKEN|REGION|ENDPOINT|PROFILE" (- for none). */
static int config(const char *const *env, char *out, size_t len)
{
	struct s3_config c;
	char err[ST_ERR_LEN];
	int rc = s3_find_config(table_env, (void *)env, &c, err);

	if (rc) {
		snprintf(out, len, "error %d: %s", rc, err);
		return rc;
	}
#define OR(s) ((s) ? (s) : "-")
	snprintf(out, len, "%s|%s|%s|%s|%s|%s", OR(c.key_id), OR(c.secret), OR(c.token), c.region, OR(c.endpoint),
		 c.profile);
	s3_config_free(&c);
	return 0;
}

#define CONFIG(env, want)                                                                       \
	do {                                                                                    \
		char got_[ST_ERR_LEN + 32];                                                     \
		config(env, got_, sizeof(got_));                                                \
		CHECK(strncmp(got_, want, strlen(want)) == 0, "config: got '%s', want '%s'", got_, \
		      want);                                                                    \
	} while (0)

static void test_env_config(void)
{
	const char *const none[] = {"HOME", dir, NULL};
	const char *const keys[] = {"HOME", dir, "AWS_ACCESS_KEY_ID", "AKID", "AWS_SECRET_ACCESS_KEY", "s/e+c",
				    "AWS_SESSION_TOKEN", "tok", NULL};
	const char *const half[] = {"HOME", dir, "AWS_ACCESS_KEY_ID", "AKID", NULL};
	const char *const other_half[] = {"HOME", dir, "AWS_SECRET_ACCESS_KEY", "s", NULL};
	const char *const empty[] = {"HOME", dir, "AWS_ACCESS_KEY_ID", "", "AWS_SECRET_ACCESS_KEY", "", NULL};
	const char *const regions[] = {"HOME", dir, "AWS_REGION", "eu-west-1", "AWS_DEFAULT_REGION", "us-west-2", NULL};
	const char *const dflt_region[] = {"HOME", dir, "AWS_DEFAULT_REGION", "us-west-2", NULL};
	const char *const bad_region[] = {"HOME", dir, "AWS_REGION", "us-east-1:x", NULL};
	const char *const endpoints[] = {"HOME", dir, "AWS_ENDPOINT_URL", "http://a:1", "AWS_ENDPOINT_URL_S3",
					 "http://127.0.0.1:9000//", NULL};
	const char *const endpoint[] = {"HOME", dir, "AWS_ENDPOINT_URL", "https://minio.example/s3", NULL};
	const char *const ignored[] = {"HOME", dir, "AWS_ENDPOINT_URL", "http://a:1",
				       "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "True", NULL};
	const char *const bad_endpoint[] = {"HOME", dir, "AWS_ENDPOINT_URL", "ftp://a", NULL};
	const char *const query_endpoint[] = {"HOME", dir, "AWS_ENDPOINT_URL", "http://a/?x", NULL};
	const char *const colon[] = {"HOME", dir, "AWS_ACCESS_KEY_ID", "A:B", "AWS_SECRET_ACCESS_KEY", "s", NULL};
	const char *const crlf[] = {"HOME", dir, "AWS_ACCESS_KEY_ID", "A", "AWS_SECRET_ACCESS_KEY", "s",
				    "AWS_SESSION_TOKEN", "t\r\nX-Evil: 1", NULL};

	CONFIG(none, "-|-|-|us-east-1|-|default");
	CONFIG(keys, "AKID|s/e+c|tok|us-east-1|-|default");
	CONFIG(half, "error -22: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not");
	CONFIG(other_half, "error -22: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not");
	CONFIG(empty, "-|-|-|us-east-1|-|default");
	CONFIG(regions, "-|-|-|eu-west-1|");
	CONFIG(dflt_region, "-|-|-|us-west-2|");
	CONFIG(bad_region, "error -22: 'us-east-1:x' is no AWS region");
	CONFIG(endpoints, "-|-|-|us-east-1|http://127.0.0.1:9000|");
	CONFIG(endpoint, "-|-|-|us-east-1|https://minio.example/s3|");
	CONFIG(ignored, "-|-|-|us-east-1|-|");
	CONFIG(bad_endpoint, "error -22: the S3 endpoint 'ftp://a'");
	CONFIG(query_endpoint, "error -22: the S3 endpoint");
	CONFIG(colon, "error -22: the access key ID holds a ':'");
	CONFIG(crlf, "error -22: a key, secret or session token holds a control character");
}

/* A credentials file and a config file with a profile of each kind, in DIR/creds and DIR/conf. */
static void write_profiles(void)
{
	write_file("creds",
		   "# comment\n"
		   "[default]\n"
		   "aws_access_key_id=DEFKEY\n"
		   "aws_secret_access_key = defsecret  \r\n"
		   "\n"
		   "[dev]\n"
		   "  ; indented comment\n"
		   "AWS_ACCESS_KEY_ID : DEVKEY\n"
		   "aws_secret_access_key = dev=secret\n"
		   "aws_session_token = devtoken\n"
		   "[half]\n"
		   "aws_access_key_id = HALF\n");
	write_file("conf",
		   "[default]\n"
		   "region = us-west-1\n"
		   "[profile   dev]\n"
		   "s3 =\n"
		   "  region = not-this-one\n"
		   "  addressing_style = path\n"
		   "region = ca-central-1\n"
		   "endpoint_url = http://127.0.0.1:9/\n"
		   "[dev]\n"
		   "region = not-a-profile-section\n"
		   "[profile sso]\n"
		   "sso_session = corp\n"
		   "[profile proc]\n"
		   "credential_process = /bin/creds\n"
		   "[profile role]\n"
		   "role_arn = arn:aws:iam::1:role/r\n"
		   "source_profile = default\n"
		   "[profile half]\n"
		   "[profile confkeys]\n"
		   "aws_access_key_id = CONFKEY\n"
		   "aws_secret_access_key = confsecret\n"
		   "region = sa-east-1\n");
}

static void test_file_config(void)
{
	char creds[256], conf[256];
	snprintf(creds, sizeof(creds), "%s/creds", dir);
	snprintf(conf, sizeof(conf), "%s/conf", dir);
	const char *const home[] = {"HOME", dir, NULL};
	const char *const files[] = {"HOME", "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE",
				     conf, NULL};
	const char *const prof[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE",
				    "dev", NULL};
	const char *const dflt_prof[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf,
					 "AWS_PROFILE", "dev", "AWS_DEFAULT_PROFILE", "default", NULL};
	const char *const missing[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE",
				       "nope", NULL};
	const char *const env_wins[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf,
					"AWS_ACCESS_KEY_ID", "ENV", "AWS_SECRET_ACCESS_KEY", "envs", "AWS_REGION",
					"ap-south-1", NULL};
	const char *const tilde[] = {"HOME", dir, "AWS_SHARED_CREDENTIALS_FILE", "~/creds", "AWS_CONFIG_FILE",
				     "~/conf", NULL};
	const char *const no_home[] = {"AWS_PROFILE", "dev", NULL};

	/* ~/.aws/credentials and ~/.aws/config under HOME. */
	char aws[256];
	snprintf(aws, sizeof(aws), "%s/.aws", dir);
	CHECK(mkdir(aws, 0700) == 0, "mkdir %s", aws);
	write_file(".aws/credentials", "[default]\naws_access_key_id = HOMEKEY\naws_secret_access_key=homesecret\n");
	write_file(".aws/config", "[default]\nregion = eu-central-1\n");
	CONFIG(home, "HOMEKEY|homesecret|-|eu-central-1|-|default");

	write_profiles();
	CONFIG(files, "DEFKEY|defsecret|-|us-west-1|-|default");
	CONFIG(tilde, "DEFKEY|defsecret|-|us-west-1|-|default");
	CONFIG(prof, "DEVKEY|dev=secret|devtoken|ca-central-1|http://127.0.0.1:9|dev");
	/* botocore reads AWS_DEFAULT_PROFILE before AWS_PROFILE. */
	CONFIG(dflt_prof, "DEFKEY|defsecret|-|us-west-1|-|default");
	CONFIG(missing, "error -2: profile 'nope' (AWS_PROFILE) is in neither");
	CONFIG(env_wins, "ENV|envs|-|ap-south-1|-|default");
	CONFIG(no_home, "error -2: profile 'dev' (AWS_PROFILE) is in neither ~/.aws/credentials nor ~/.aws/config");
}

/* Profiles that get their key elsewhere, or half of it, in the files test_file_config wrote. */
static void test_file_refusals(void)
{
	char creds[256], conf[256];
	snprintf(creds, sizeof(creds), "%s/creds", dir);
	snprintf(conf, sizeof(conf), "%s/conf", dir);
	const char *const sso[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE", "sso", NULL};
	const char *const proc[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE", "proc", NULL};
	const char *const role[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE", "role", NULL};
	const char *const halfp[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE", "half", NULL};
	const char *const confkeys[] = {"AWS_SHARED_CREDENTIALS_FILE", creds, "AWS_CONFIG_FILE", conf, "AWS_PROFILE",
					"confkeys", NULL};
	CONFIG(sso, "error -95: profile 'sso' gets its key through sso_session");
	CONFIG(proc, "error -95: profile 'proc' gets its key through credential_process");
	CONFIG(role, "error -95: profile 'role' gets its key through role_arn");
	CONFIG(halfp, "error -22: profile 'half' has aws_access_key_id but no aws_secret_access_key");
	CONFIG(confkeys, "CONFKEY|confsecret|-|sa-east-1|-|confkeys");

	/* A folder where a file should be is refused, not taken as no file. */
	const char *const a_dir[] = {"AWS_SHARED_CREDENTIALS_FILE", dir, NULL};
	CONFIG(a_dir, "error -22: cannot read");
}

static void test_ini(void)
{
	static const char ini[] = "[a]\nk = 1\nk = 2\n[ b ]\nK:x:y\n[c]d]\nz=\n[e\n  f = g\n";
	char *v;

	CHECK(s3_ini_value(ini, strlen(ini), "a", "k", &v) == 1 && strcmp(v, "1") == 0, "first wins");
	free(v);
	CHECK(s3_ini_value(ini, strlen(ini), "b", "k", &v) == 1 && strcmp(v, "x:y") == 0, "':' and case");
	free(v);
	CHECK(s3_ini_value(ini, strlen(ini), "c]d", "z", &v) == 1 && strcmp(v, "") == 0, "empty value");
	free(v);
	CHECK(s3_ini_value(ini, strlen(ini), "e", "f", &v) == 0 && !v, "no section '[e'");
	CHECK(s3_ini_value(ini, strlen(ini), "a", "z", &v) == 0, "absent key");
	CHECK(s3_ini_value(NULL, 0, "a", "k", &v) == 0, "no file");
	/* Bounded by len, not by a NUL: the text stops inside "k = 1". */
	CHECK(s3_ini_value(ini, 8, "a", "k", &v) == 1 && strcmp(v, "") == 0, "bounded (%s)", v ? v : "-");
	free(v);
	CHECK(s3_ini_has_section(ini, strlen(ini), "b") && !s3_ini_has_section(ini, strlen(ini), "x"), "sections");
}

static void test_urls(void)
{
	struct s3_config aws = {.region = "eu-west-1"}, cn = {.region = "cn-north-1"};
	struct s3_config ep = {.region = "us-east-1", .endpoint = "http://127.0.0.1:9000"};
	char *u;

	CHECK((u = s3_bucket_url(&aws, "models")) && strcmp(u, "https://models.s3.eu-west-1.amazonaws.com") == 0,
	      "virtual host: %s", u);
	free(u);
	CHECK((u = s3_bucket_url(&aws, "my.models")) && strcmp(u, "https://s3.eu-west-1.amazonaws.com/my.models") == 0,
	      "dotted bucket path-style: %s", u);
	free(u);
	CHECK((u = s3_bucket_url(&cn, "models")) && strcmp(u, "https://models.s3.cn-north-1.amazonaws.com.cn") == 0,
	      "china: %s", u);
	free(u);
	CHECK((u = s3_bucket_url(&ep, "models")) && strcmp(u, "http://127.0.0.1:9000/models") == 0, "endpoint: %s", u);
	free(u);
	CHECK((u = s3_list_url("http://h/b", "", NULL, 0)) && strcmp(u, "http://h/b/?list-type=2&prefix=") == 0,
	      "list root: %s", u);
	free(u);
	CHECK((u = s3_list_url("http://h/b", "a b/c&d=+~_.-/", "1/a+b=", 1)) &&
		      strcmp(u, "http://h/b/?continuation-token=1%2Fa%2Bb%3D&list-type=2&max-keys=1"
				"&prefix=a%20b%2Fc%26d%3D%2B~_.-%2F") == 0,
	      "list sorted, strict: %s", u);
	free(u);
	CHECK((u = s3_list_url("http://h/b", "caf\xc3\xa9", NULL, 0)) &&
		      strcmp(u, "http://h/b/?list-type=2&prefix=caf%C3%A9") == 0,
	      "list utf-8: %s", u);
	free(u);
}

/* s3_parse_listing over BODY as "p1,p2,...;truncated;token;skipped" or "error: ...". */
static void listing(const char *body, size_t len, const char *prefix, char *out, size_t outlen)
{
	struct s3_keys k = {0};
	char err[ST_ERR_LEN];
	int rc = s3_parse_listing(body, len, prefix, &k, err);
	size_t used = 0;

	if (rc) {
		snprintf(out, outlen, "error: %s", err);
	} else {
		out[0] = '\0';
		for (size_t i = 0; i < k.n && used < outlen; i++)
			used += (size_t)snprintf(out + used, outlen - used, "%s%s", i ? "," : "", k.paths[i]);
		if (used < outlen)
			snprintf(out + used, outlen - used, ";%s;%s;%zu", k.truncated ? "more" : "last",
				 k.next_token ? k.next_token : "-", k.skipped);
	}
	s3_keys_free(&k);
}

#define LISTING(body, prefix, want)                                                               \
	do {                                                                                      \
		char got_[4096];                                                                  \
		listing(body, sizeof(body) - 1, prefix, got_, sizeof(got_));                      \
		CHECK(strncmp(got_, want, strlen(want)) == 0, "listing: got '%s', want '%s'", got_, \
		      want);                                                                      \
	} while (0)

#define HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" \
	     "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
#define ITEM(k) "<Contents><Key>" k "</Key><Size>5</Size><Owner><ID>x</ID></Owner></Contents>"

static void test_listing(void)
{
	LISTING(HEAD "<Name>b</Name><Prefix>m/</Prefix><IsTruncated>false</IsTruncated>"
		ITEM("m/a.safetensors") ITEM("m/") ITEM("m/sub/") ITEM("m/sub/b c&amp;d&lt;&gt;&quot;&apos;.json")
		"<KeyCount>4</KeyCount></ListBucketResult>",
		"m/", "a.safetensors,sub/b c&d<>\"'.json;last;-;0");
	LISTING(HEAD "<IsTruncated>true</IsTruncated>" ITEM("x") "<NextContinuationToken>1a/B+c=</NextContinuationToken>"
		"</ListBucketResult>", "", "x;more;1a/B+c=;0");
	/* A token on the last page means nothing. */
	LISTING(HEAD "<IsTruncated>false</IsTruncated><NextContinuationToken>t</NextContinuationToken></ListBucketResult>",
		"", ";last;-;0");
	/* Character references, comments, empty elements, attributes with '>' in quotes. */
	LISTING("<!-- hi --><ListBucketResult a='>' b=\"<x\"><Contents><Key>caf&#xE9;&#233;&#x1F600;</Key></Contents>"
		"<Contents><Owner/><Key>a<!-- c -->b</Key></Contents><Marker/></ListBucketResult>\n",
		"", "caf\xc3\xa9\xc3\xa9\xf0\x9f\x98\x80,ab;last;-;0");
	/* Keys no path can hold are left out and counted. */
	LISTING(HEAD ITEM("../etc/passwd") ITEM("a//b") ITEM("a/./b") ITEM("a/..") ITEM("/abs") ITEM("t&#9;ab")
		ITEM("ok") "</ListBucketResult>", "", "ok;last;-;6");
	LISTING(HEAD "</ListBucketResult>", "", ";last;-;0");

	LISTING(HEAD ITEM("other/x") "</ListBucketResult>", "m/", "error: S3's listing is malformed: a key outside the prefix");
	LISTING(HEAD "<IsTruncated>true</IsTruncated>" ITEM("x") "</ListBucketResult>", "",
		"error: S3's listing is malformed: a truncated page without NextContinuationToken");
	LISTING("<Error><Code>AccessDenied</Code></Error>", "", "error: S3's listing is malformed: no <ListBucketResult>");
	LISTING("", "", "error: S3's listing is malformed: no <ListBucketResult>");
	LISTING("not xml at all", "", "error: S3's listing is malformed: no <ListBucketResult>");
	LISTING(HEAD ITEM("x"), "", "error: S3's listing is malformed: the document ends inside an element");
	LISTING(HEAD "<Contents><Key>x</Contents></ListBucketResult>", "", "error: S3's listing is malformed: an end tag that closes no open element");
	LISTING(HEAD "</ListBucketResult><ListBucketResult>", "", "error: S3's listing is malformed: a second root element");
	LISTING("<!DOCTYPE x [<!ENTITY a \"aaaa\">]><ListBucketResult><Contents><Key>&a;</Key></Contents></ListBucketResult>",
		"", "error: S3's listing is malformed: a DTD or CDATA section");
	LISTING(HEAD "<Contents><Key><![CDATA[x]]></Key></Contents></ListBucketResult>", "",
		"error: S3's listing is malformed: a DTD or CDATA section");
	LISTING(HEAD ITEM("a&b") "</ListBucketResult>", "", "error: S3's listing is malformed: a '&' that starts no entity");
	LISTING(HEAD ITEM("a&unknown;") "</ListBucketResult>", "", "error: S3's listing is malformed: an entity other than");
	LISTING(HEAD ITEM("a&#0;") "</ListBucketResult>", "", "error: S3's listing is malformed: a character reference to a character XML forbids");
	LISTING(HEAD ITEM("a&#x110000;") "</ListBucketResult>", "", "error: S3's listing is malformed: a character reference to");
	LISTING(HEAD ITEM("a&#xD800;") "</ListBucketResult>", "", "error: S3's listing is malformed: a character reference to");
	LISTING(HEAD ITEM("a&#x;") "</ListBucketResult>", "", "error: S3's listing is malformed: an empty character reference");
	LISTING(HEAD ITEM("a&#12a;") "</ListBucketResult>", "", "error: S3's listing is malformed: a malformed character reference");
	LISTING(HEAD "<Contents><Key>a<b/>c</Key></Contents></ListBucketResult>", "",
		"error: S3's listing is malformed: a <Key> that holds elements");
	LISTING(HEAD "<Contents><Key>a\0b</Key></Contents></ListBucketResult>", "", "error: S3's listing is malformed: a NUL byte");
	LISTING(HEAD "<Contents><Key>ab</Key></Contents></ListBucketResult", "", "error: S3's listing is malformed: an end tag that does not end");
	LISTING(HEAD "<Contents a=\"x></Contents></ListBucketResult>", "", "error: S3's listing is malformed: a tag that does not end");
	LISTING(HEAD "<!-- never ends", "", "error: S3's listing is malformed: a comment that does not end");
	LISTING(HEAD "<?pi", "", "error: S3's listing is malformed: a processing instruction that does not end");
	LISTING(HEAD "< Contents>", "", "error: S3's listing is malformed: a '<' that starts no tag");
	LISTING(HEAD "<", "", "error: S3's listing is malformed: a '<' that starts no tag");
	LISTING(HEAD "<Contents><Key>x</Key></Contents>&", "", "error: S3's listing is malformed: a '&' that starts no entity");
}

/* Hostile sizes: deep nesting, long names, a key longer than S3 allows, a huge page. */
static void test_listing_limits(void)
{
	char *deep = malloc(64 * 4 + 64), *p = deep, out[512];
	for (int i = 0; i < 64; i++)
		p += sprintf(p, "<a>");
	listing(deep, (size_t)(p - deep), "", out, sizeof(out));
	CHECK(strstr(out, "nested too deep"), "deep: %s", out);
	free(deep);

	char name[200] = "<";
	memset(name + 1, 'N', 150);
	strcpy(name + 151, ">");
	listing(name, strlen(name), "", out, sizeof(out));
	CHECK(strstr(out, "element name too long"), "long name: %s", out);

	size_t klen = 5000;
	char *big = malloc(klen + 200);
	size_t n = (size_t)sprintf(big, "<ListBucketResult><Contents><Key>");
	memset(big + n, 'k', klen);
	n += klen;
	n += (size_t)sprintf(big + n, "</Key></Contents></ListBucketResult>");
	listing(big, n, "", out, sizeof(out));
	CHECK(strstr(out, "a key longer than S3 allows"), "long key: %s", out);
	/* The same bytes, cut anywhere, never read past the end (ASan would say). */
	for (size_t cut = 0; cut < 120; cut++)
		listing(big + n - cut, cut, "", out, sizeof(out));
	free(big);

	size_t keys = 20000;
	char *page = malloc(keys * 64 + 200);
	n = (size_t)sprintf(page, HEAD);
	for (size_t i = 0; i < keys; i++)
		n += (size_t)sprintf(page + n, "<Contents><Key>d/%06zu.safetensors</Key></Contents>", keys - i);
	n += (size_t)sprintf(page + n, "<IsTruncated>false</IsTruncated></ListBucketResult>");
	struct s3_keys k = {0};
	char err[ST_ERR_LEN];
	CHECK(s3_parse_listing(page, n, "", &k, err) == 0 && k.n == keys, "big page: %zu", k.n);
	CHECK(s3_keys_finish(&k, err) == 0 && strcmp(k.paths[0], "d/000001.safetensors") == 0, "sorted: %s",
	      k.n ? k.paths[0] : "-");
	/* A second page that lists a key again. */
	CHECK(s3_parse_listing(page, n, "", &k, err) == 0 && s3_keys_finish(&k, err) == -EPROTO &&
		      strstr(err, "listed the key 'd/000001.safetensors' twice"),
	      "twice: %s", err);
	s3_keys_free(&k);
	free(page);
}

static void test_error_fields(void)
{
	static const char body[] = "<?xml version=\"1.0\"?><Error><Code>AuthorizationHeaderMalformed</Code>"
				   "<Message>the region 'us-east-1' is wrong; expecting 'eu-west-1'\x01</Message>"
				   "<Region>eu-west-1</Region><RequestId>1</RequestId></Error>";
	char out[64];

	s3_error_field(body, sizeof(body) - 1, "Code", out, sizeof(out));
	CHECK(strcmp(out, "AuthorizationHeaderMalformed") == 0, "code: %s", out);
	s3_error_field(body, sizeof(body) - 1, "Region", out, sizeof(out));
	CHECK(strcmp(out, "eu-west-1") == 0, "region: %s", out);
	s3_error_field(body, sizeof(body) - 1, "Message", out, 20);
	CHECK(strcmp(out, "the region 'us-east") == 0, "message cut: %s", out);
	s3_error_field(body, sizeof(body) - 1, "Nope", out, sizeof(out));
	CHECK(out[0] == '\0', "absent: %s", out);
	s3_error_field("", 0, "Code", out, sizeof(out));
	CHECK(out[0] == '\0', "empty body");
	s3_error_field("<Error><Code>A&#0;</Code></Error>", 33, "Code", out, sizeof(out));
	CHECK(out[0] == '\0', "malformed: '%s'", out);
	s3_error_field("<Other><Code>X</Code></Other>", 29, "Code", out, sizeof(out));
	CHECK(out[0] == '\0', "not an Error: '%s'", out);
	/* fuzz_remote: outlen 0 wrote out[0]. */
	out[0] = 'K';
	s3_error_field(body, sizeof(body) - 1, "Code", out, 0);
	CHECK(out[0] == 'K', "outlen 0 writes nothing: '%c'", out[0]);
}

/* fuzz_remote: an empty listing finished (paths NULL) passed NULL to qsort. */
static void test_finish_empty(void)
{
	struct s3_keys k = {0};
	char err[ST_ERR_LEN];

	CHECK(s3_keys_finish(&k, err) == 0 && k.n == 0, "finish empty: %s", err);
	s3_keys_free(&k);
}

#define REDACT(url, want)                                                                     \
	do {                                                                                  \
		char got_[256];                                                               \
		http_redact(url, got_, sizeof(got_));                                         \
		CHECK(strcmp(got_, want) == 0, "redact %s: got '%s', want '%s'", url, got_, want); \
	} while (0)

/* The SOURCE shown in messages (s3_open's display): no userinfo, no query. */
static void test_redact(void)
{
	REDACT("https://u:pw@host:8443/a/b?X-Amz-Signature=1#f", "https://host:8443/a/b?...");
	REDACT("s3://bucket/k", "s3://bucket/k");
	/* fuzz_remote: a password holding '@' showed its tail ("ss@host"); the last '@' ends it. */
	REDACT("https://u:p@ss@host/x", "https://host/x");
	REDACT("u:p@ss@host/x", "host/x");
	/* fuzz_remote: a "://" in the query was taken for the scheme, and the query shown. */
	REDACT("https:/host/p?X-Amz-Signature=s3://b/c", "https:/host/p?...");
	REDACT("host/p?next=http://u:pw@evil/", "host/p?...");
	REDACT("https://host/p?next=http://u:pw@evil/", "https://host/p?...");
	/* review: a password holding '/' or '?' (libcurl refuses the URL; its refusal names it). */
	REDACT("http://alice:s3cr/et@127.0.0.1:9/m", "http://127.0.0.1:9/m");
	REDACT("http://alice:s3cr?et@127.0.0.1:9/m", "http://127.0.0.1:9/m");
	REDACT("http://127.0.0.1:9/a@b", "http://127.0.0.1:9/a@b");
	/* hf://'s '@' is its revision's, no userinfo. */
	REDACT("hf://org/repo@main/unet", "hf://org/repo@main/unet");
}

static void remove_dir(void)
{
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_uris();
	test_env_config();
	test_file_config();
	test_file_refusals();
	test_ini();
	test_urls();
	test_listing();
	test_listing_limits();
	test_error_fields();
	test_finish_empty();
	test_redact();
	remove_dir();
	printf("test_s3: %d passed, %d failed\n", passed, failed);
	return failed != 0;
}
