/* Remote listings: the plain http(s):// one (a single object), and freeing any of them. */
#include "remote.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void remote_listing_free(struct remote_listing *l)
{
	for (size_t i = 0; i < l->n_paths; i++)
		free(l->paths[i]);
	free(l->paths);
	free(l->base);
	free(l->display);
	http_auth_free(&l->auth);
	memset(l, 0, sizeof(*l));
}

int remote_listing_init(struct remote_listing *out, const char *uri, char err[ST_ERR_LEN])
{
	memset(out, 0, sizeof(*out));
	err[0] = '\0';
	if (!(out->display = malloc(ST_ERR_LEN / 2)))
		return -ENOMEM;
	http_redact(uri, out->display, ST_ERR_LEN / 2);
	return 0;
}

int http_listing(const char *url, struct remote_listing *out, char err[ST_ERR_LEN])
{
	const char *host = strstr(url, "://") + 3;
	size_t end = strcspn(url, "?#"), slash = end;

	while (slash > (size_t)(host - url) && url[slash - 1] != '/')
		slash--;
	if (remote_listing_init(out, url, err) < 0)
		return -ENOMEM;
	if (slash <= (size_t)(host - url) || slash == end) {
		snprintf(err, ST_ERR_LEN, "%s: names no file (a .safetensors file or a *.safetensors.index.json)",
			 out->display);
		return -EINVAL;
	}
	out->is_file = true;
	out->base = strndup(url, slash);
	out->paths = calloc(1, sizeof(*out->paths));
	if (!out->base || !out->paths || !(out->paths[0] = strndup(url + slash, end - slash)))
		return -ENOMEM;
	out->n_paths = 1;
	return 0;
}
