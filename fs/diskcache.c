/* Blocks on local disk (diskcache.h): one checked file per block, oldest removed first. */
#include "diskcache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "STFSBLK1"
#define FILE_SUFFIX ".blk"
#define MAX_KEY 4096

struct file_head {
	char magic[8];
	uint32_t key_len;
	uint32_t data_len;
	uint64_t checksum; /* of the key and the data */
};

struct diskcache {
	char *dir;
	int dir_fd;
	uint64_t max_bytes;
	pthread_mutex_t trim_lock;
	uint64_t bytes; /* under trim_lock: what the directory holds, as last counted plus puts since */
	atomic_uint_fast64_t tmp_seq;
};

/* FNV-1a, 64 bits: names files and catches damage; the key in the file settles collisions. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

#define FNV_START 0xcbf29ce484222325ull

static void file_name(const char *key, char out[64])
{
	snprintf(out, 64, "%016llx%s", (unsigned long long)fnv(FNV_START, key, strlen(key)), FILE_SUFFIX);
}

/* Everything in the directory that is one of ours, oldest first by mtime, each with its size. */
struct entry {
	char name[64];
	struct timespec mtime;
	uint64_t size;
};

static int older(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : x->mtime.tv_nsec > y->mtime.tv_nsec;
}

static size_t list(struct diskcache *c, struct entry **out, uint64_t *total)
{
	int fd = openat(c->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;
	size_t n = 0, cap = 0;

	*out = NULL;
	*total = 0;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	while ((e = readdir(d))) {
		struct stat st;
		size_t len = strlen(e->d_name);
		/* A mount that died while writing leaves its temporary file: gone after an hour. */
		if (strncmp(e->d_name, ".tmp-", 5) == 0 && fstatat(c->dir_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_mtim.tv_sec + 3600 < time(NULL))
			unlinkat(c->dir_fd, e->d_name, 0);
		if (len >= 64 || len < sizeof(FILE_SUFFIX) || strcmp(e->d_name + len - 4, FILE_SUFFIX) ||
		    fstatat(c->dir_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (st_reserve(out, &cap, n + 1, sizeof(**out)))
			break;
		snprintf((*out)[n].name, 64, "%s", e->d_name);
		(*out)[n].mtime = st.st_mtim;
		(*out)[n].size = (uint64_t)st.st_size;
		*total += (uint64_t)st.st_size;
		n++;
	}
	closedir(d);
	return n;
}

/* Under trim_lock, over the bound: the least recently used files go until 90% of it is
 * left, and the count is what the directory holds (other mounts' files included). */
static void trim(struct diskcache *c)
{
	struct entry *v;
	uint64_t total;

	size_t n = list(c, &v, &total);
	if (total > c->max_bytes) {
		qsort(v, n, sizeof(*v), older);
		for (size_t i = 0; i < n && total > c->max_bytes / 10 * 9; i++)
			if (unlinkat(c->dir_fd, v[i].name, 0) == 0)
				total -= v[i].size;
	}
	c->bytes = total;
	free(v);
}

int diskcache_open(const char *dir, uint64_t max_bytes, struct diskcache **out, char err[ST_ERR_LEN])
{
	struct diskcache *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (!c || !(c->dir = strdup(dir))) {
		free(c);
		return -ENOMEM;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(err, ST_ERR_LEN, "-o cache=%s: cannot make it: %s", dir, strerror(errno));
		goto fail;
	}
	if ((c->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 || faccessat(c->dir_fd, ".", W_OK, 0) < 0) {
		snprintf(err, ST_ERR_LEN, "-o cache=%s: not a directory this user can write: %s", dir, strerror(errno));
		if (c->dir_fd >= 0)
			close(c->dir_fd);
		goto fail;
	}
	c->max_bytes = max_bytes;
	pthread_mutex_init(&c->trim_lock, NULL);
	pthread_mutex_lock(&c->trim_lock);
	trim(c);
	pthread_mutex_unlock(&c->trim_lock);
	*out = c;
	return 0;
fail:
	free(c->dir);
	free(c);
	return -EINVAL;
}

void diskcache_close(struct diskcache *c)
{
	if (!c)
		return;
	close(c->dir_fd);
	pthread_mutex_destroy(&c->trim_lock);
	free(c->dir);
	free(c);
}

static int read_all(int fd, void *buf, size_t len)
{
	return st_pread_exact(fd, buf, len, 0) == 0 ? 0 : -EIO;
}

int diskcache_get(struct diskcache *c, const char *key, void *buf, size_t len)
{
	size_t key_len = strlen(key);
	char name[64], *stored = NULL;
	struct file_head h;
	struct stat st;
	int fd, ok = 0;

	file_name(key, name);
	if (key_len > MAX_KEY || (fd = openat(c->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return -ENOENT;
	uint8_t *all = fstat(fd, &st) == 0 && (uint64_t)st.st_size == sizeof(h) + key_len + len
			       ? malloc(sizeof(h) + key_len + len) : NULL;
	if (all && read_all(fd, all, sizeof(h) + key_len + len) == 0) {
		memcpy(&h, all, sizeof(h));
		stored = (char *)all + sizeof(h);
		ok = memcmp(h.magic, MAGIC, 8) == 0 && h.key_len == key_len && h.data_len == len &&
		     memcmp(stored, key, key_len) == 0 &&
		     h.checksum == fnv(fnv(FNV_START, key, key_len), stored + key_len, len);
	}
	if (ok) {
		memcpy(buf, stored + key_len, len);
		futimens(fd, NULL); /* recently used: trimmed last */
	} else {
		unlinkat(c->dir_fd, name, 0); /* another key's, cut short or damaged: fetched anew */
	}
	free(all);
	close(fd);
	return ok ? 0 : -ENOENT;
}

void diskcache_put(struct diskcache *c, const char *key, const void *buf, size_t len)
{
	size_t key_len = strlen(key);
	struct file_head h = {.key_len = (uint32_t)key_len, .data_len = (uint32_t)len};
	char name[64], tmp[96];
	int fd;

	if (key_len > MAX_KEY || len > UINT32_MAX)
		return;
	memcpy(h.magic, MAGIC, 8);
	h.checksum = fnv(fnv(FNV_START, key, key_len), buf, len);
	file_name(key, name);
	snprintf(tmp, sizeof(tmp), ".tmp-%d-%llu", (int)getpid(), (unsigned long long)atomic_fetch_add(&c->tmp_seq, 1));
	if ((fd = openat(c->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
		return;
	bool whole = write(fd, &h, sizeof(h)) == (ssize_t)sizeof(h) && write(fd, key, key_len) == (ssize_t)key_len &&
		     write(fd, buf, len) == (ssize_t)len;
	if (close(fd) < 0)
		whole = false;
	/* Renamed only when whole: a reader sees the old file, the new one, or none. */
	if (!whole || renameat(c->dir_fd, tmp, c->dir_fd, name) < 0) {
		unlinkat(c->dir_fd, tmp, 0);
		return;
	}
	/* Counted one put at a time, so that the bound holds: the trim is rare, the wait short. */
	pthread_mutex_lock(&c->trim_lock);
	c->bytes += sizeof(h) + key_len + len;
	if (c->bytes > c->max_bytes)
		trim(c);
	pthread_mutex_unlock(&c->trim_lock);
}
