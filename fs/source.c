#include "source.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int open_shard(const char *path, struct shard *sh, char *err)
{
	struct stat st;
	int rc;

	memset(sh, 0, sizeof(*sh));
	sh->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (sh->fd < 0) {
		rc = -errno;
		snprintf(err, ST_ERR_LEN, "%s", strerror(errno));
		return rc;
	}
	if (fstat(sh->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, ST_ERR_LEN, "not a regular file");
		close(sh->fd);
		return -EINVAL;
	}
	if ((rc = st_header_read_fd(sh->fd, &sh->hdr, err)) < 0) {
		close(sh->fd);
		return rc;
	}
	sh->mtime = st.st_mtim;
	sh->size = st.st_size;
	sh->path = strdup(path);
	if (!sh->path) {
		st_header_free(&sh->hdr);
		close(sh->fd);
		snprintf(err, ST_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	const char *slash = strrchr(sh->path, '/');
	sh->name = slash ? slash + 1 : sh->path;
	return 0;
}

/* A directory that holds exactly one .safetensors file mounts that file. */
static int find_single_file(const char *dir, char **found, char *err)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int files = 0, indexes = 0;

	if (!d) {
		snprintf(err, ST_ERR_LEN, "%s", strerror(errno));
		return -errno;
	}
	*found = NULL;
	while ((e = readdir(d))) {
		if (ends_with(e->d_name, ".safetensors.index.json"))
			indexes++;
		else if (ends_with(e->d_name, ".safetensors") && files++ == 0 &&
			 asprintf(found, "%s/%s", dir, e->d_name) < 0)
			*found = NULL;
	}
	closedir(d);
	if (files == 1 && !indexes && *found)
		return 0;
	free(*found);
	*found = NULL;
	if (files == 0 && !indexes)
		snprintf(err, ST_ERR_LEN, "directory holds no .safetensors file");
	else
		snprintf(err, ST_ERR_LEN, "directory holds a sharded model (%d .safetensors files, "
			 "%d index): mounting shards is not supported yet", files, indexes);
	return -EINVAL;
}

int source_open(const char *path, struct source *src, char err[ST_ERR_LEN])
{
	struct stat st;
	char *file = NULL;
	int rc;

	memset(src, 0, sizeof(*src));
	if (stat(path, &st) < 0) {
		snprintf(err, ST_ERR_LEN, "%s", strerror(errno));
		return -errno;
	}
	if (S_ISDIR(st.st_mode)) {
		if ((rc = find_single_file(path, &file, err)))
			return rc;
		path = file;
	} else if (ends_with(path, ".index.json")) {
		snprintf(err, ST_ERR_LEN, "an index of shards: mounting shards is not supported yet");
		return -EINVAL;
	}
	src->shards = calloc(1, sizeof(*src->shards));
	if (!src->shards) {
		free(file);
		snprintf(err, ST_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	rc = open_shard(path, &src->shards[0], err);
	if (rc == 0) {
		src->n_shards = 1;
	} else {
		if (file) {
			/* Say which file inside the directory is at fault. */
			char why[ST_ERR_LEN];
			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, ST_ERR_LEN, "%s: %.*s", strrchr(file, '/') + 1, ST_ERR_LEN / 2, why);
		}
		free(src->shards);
		src->shards = NULL;
	}
	free(file);
	return rc;
}

void source_close(struct source *src)
{
	for (size_t i = 0; i < src->n_shards; i++) {
		close(src->shards[i].fd);
		st_header_free(&src->shards[i].hdr);
		free(src->shards[i].path);
	}
	free(src->shards);
	memset(src, 0, sizeof(*src));
}

int shard_changed(const struct shard *sh)
{
	struct stat st;

	if (fstat(sh->fd, &st) < 0)
		return 1;
	return st.st_nlink == 0 || st.st_size != sh->size || st.st_mtim.tv_sec != sh->mtime.tv_sec ||
	       st.st_mtim.tv_nsec != sh->mtime.tv_nsec;
}

int shard_pread(const struct shard *sh, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(sh->fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		done += (size_t)r;
	}
	return 0;
}
