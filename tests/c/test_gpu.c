/*
 * Tests of gpu_direct/ without FUSE and without a GPU.
 *
 * - host backend: several ranges of two real files uploaded into one /dev/shm buffer at
 *   their offsets, under several reader and chunk settings; the file mapped the way a client
 *   maps it and every byte compared (gaps must stay zero); its mode 0600; the handle string;
 *   gpu_read; errors (range past the end, bad fd, a file shorter than its range); free
 *   unlinks it while a client's mapping stays valid.
 * - the GPU upload path (device.c and the staging pipeline of staging.c) over a fake runtime
 *   whose "device" is host memory and whose async copies run only when their stream is
 *   synchronized, so a staging buffer reused before its copy completed shows as wrong bytes;
 *   pinned, pageable and failing runtimes.
 * - cuda and hip: on a machine without their runtime or GPU a request is a clean -ENODEV with
 *   a message; where a device exists, an upload and read back through it.
 * - gpu_built_backends, gpu_parse_device, gpu_device_name, gpu_backends.
 *
 * `test_gpu backends` prints gpu_backends() one line each (for tests/test_gpu_build.py).
 * Ends with "N passed, N failed"; exit status 0 iff none failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../gpu_direct/gpu.h"
#include "../../gpu_direct/internal.h"

#include "check.h"

/* ---- test data: two files of pseudo-random bytes ---- */

struct file {
	char path[64];
	int fd;
	size_t size;
	unsigned char *bytes;
};

static void make_file(struct file *f, size_t size, uint64_t seed)
{
	uint64_t x = seed;

	snprintf(f->path, sizeof f->path, "/tmp/test_gpu.XXXXXX");
	f->fd = mkstemp(f->path);
	if (f->fd < 0) {
		perror("mkstemp");
		exit(2);
	}
	f->size = size;
	f->bytes = malloc(size);
	for (size_t i = 0; i < size; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		f->bytes[i] = (unsigned char)(x >> 24);
	}
	if (write(f->fd, f->bytes, size) != (ssize_t)size) {
		perror("write");
		exit(2);
	}
}

static void drop_file(struct file *f)
{
	close(f->fd);
	unlink(f->path);
	free(f->bytes);
}

static struct file f1, f2;

/* A layout like fs/control.c's: each range at the next multiple of GPU_ALIGN. */
#define NR 7
static struct gpu_range ranges[NR];
static const struct file *range_file[NR];
static uint64_t total;

static void layout(void)
{
	struct {
		const struct file *f;
		uint64_t off, len;
	} want[NR] = {
		{ &f1, 0, 100 },
		{ &f1, 13, 70000 },
		{ &f2, 777, 200000 },
		{ &f1, 5000, 0 },                         /* empty tensor */
		{ &f1, 1000000, f1.size - 1000000 },     /* up to the end of the file */
		{ &f2, 0, f2.size },                      /* a whole file */
		{ &f1, 3, 1 },                            /* one byte */
	};
	uint64_t at = 0;

	for (int i = 0; i < NR; i++) {
		ranges[i] = (struct gpu_range){ .fd = want[i].f->fd,
						.file_offset = want[i].off,
						.nbytes = want[i].len,
						.dst_offset = at };
		range_file[i] = want[i].f;
		at = (at + want[i].len + GPU_ALIGN - 1) / GPU_ALIGN * GPU_ALIGN;
	}
	total = at;
}

/* Every range's bytes where they belong; everything else still zero. */
static int verify(const unsigned char *buf, const char *what)
{
	unsigned char *expect = calloc(1, total ? total : 1);
	int ok = 1;

	for (int i = 0; i < NR; i++)
		memcpy(expect + ranges[i].dst_offset, range_file[i]->bytes + ranges[i].file_offset,
		       ranges[i].nbytes);
	for (uint64_t i = 0; i < total; i++)
		if (buf[i] != expect[i]) {
			CHECK(0, "%s: byte %llu is %u, want %u", what, (unsigned long long)i, buf[i],
			      expect[i]);
			ok = 0;
			break;
		}
	if (ok)
		CHECK(1, "%s", what);
	free(expect);
	return ok;
}

static const struct gpu_upload_opts settings[] = {
	{ 0, 0, 0 },      /* defaults */
	{ 1, 0, 0 },      /* one reader */
	{ 4, 4097, 0 },   /* many odd-sized pieces */
	{ 8, 65536, 0 },  /* more readers than most ranges have pieces */
	{ 3, 1 << 20, 0 },
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

/* ---- names ---- */

static void test_names(void)
{
	enum gpu_kind k = GPU_HOST;
	int d = -1;
	char name[32];

	CHECK(strcmp(gpu_built_backends(), "cuda hip host") == 0, "built: %s",
	      gpu_built_backends());
	CHECK(strcmp(gpu_kind_name(GPU_CUDA), "cuda") == 0 &&
		      strcmp(gpu_kind_name(GPU_HIP), "hip") == 0 &&
		      strcmp(gpu_kind_name(GPU_HOST), "host") == 0 &&
		      gpu_kind_name((enum gpu_kind)7) == NULL,
	      "kind names");
	CHECK(gpu_parse_device("host", &k, &d) == 0 && k == GPU_HOST && d == 0, "host");
	CHECK(gpu_parse_device("cuda", &k, &d) == 0 && k == GPU_CUDA && d == 0, "cuda");
	CHECK(gpu_parse_device("cuda:3", &k, &d) == 0 && k == GPU_CUDA && d == 3, "cuda:3");
	CHECK(gpu_parse_device("hip:1023", &k, &d) == 0 && k == GPU_HIP && d == 1023, "hip:1023");
	CHECK(gpu_parse_device("hip", &k, &d) == 0 && k == GPU_HIP && d == 0, "hip");
	static const char *const bad[] = { "",        "cuda:",   "cuda:-1", "cuda:1024", "cuda:1x",
					   "cuda 0",  "cuda:0 ",  "CUDA:0",  "host:0",    "cpu",
					   "cuda:+1", "hipster", "cuda:00001" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(gpu_parse_device(bad[i], &k, &d) == -EINVAL, "'%s' accepted", bad[i]);
	CHECK(gpu_parse_device(NULL, &k, &d) == -EINVAL, "NULL accepted");
	gpu_device_name(GPU_CUDA, 2, name, sizeof name);
	CHECK(strcmp(name, "cuda:2") == 0, "%s", name);
	gpu_device_name(GPU_HIP, 0, name, sizeof name);
	CHECK(strcmp(name, "hip:0") == 0, "%s", name);
	gpu_device_name(GPU_HOST, 0, name, sizeof name);
	CHECK(strcmp(name, "host") == 0, "%s", name);
}

static int devices_of(enum gpu_kind kind)
{
	struct gpu_backend_info info[8];
	size_t n = gpu_backends(info, 8);

	for (size_t i = 0; i < n; i++)
		if (info[i].kind == kind)
			return info[i].devices;
	return -1;
}

static void test_backends(void)
{
	struct gpu_backend_info info[8];
	size_t n = gpu_backends(info, 8);

	CHECK(n == 3, "%zu backends", n);
	if (n != 3)
		return;
	CHECK(strcmp(info[0].name, "cuda") == 0 && info[0].kind == GPU_CUDA, "first: %s",
	      info[0].name);
	CHECK(strcmp(info[1].name, "hip") == 0 && info[1].kind == GPU_HIP, "second: %s",
	      info[1].name);
	CHECK(strcmp(info[2].name, "host") == 0 && info[2].kind == GPU_HOST, "third: %s",
	      info[2].name);
	CHECK(info[2].devices == 1, "host devices %d (%s)", info[2].devices, info[2].detail);
	for (size_t i = 0; i < n; i++)
		CHECK(info[i].devices >= 0 && info[i].detail[0], "%s: %d devices, detail '%s'",
		      info[i].name, info[i].devices, info[i].detail);
	CHECK(gpu_backends(info, 1) == 1 && info[0].kind == GPU_CUDA, "max 1");
	CHECK(gpu_backends(info, 0) == 0, "max 0");

	enum gpu_kind k;
	int d = -1;

	gpu_auto_device(&k, &d);
	CHECK(d == 0, "auto device %d", d);
	if (info[0].devices > 0 || devices_of(GPU_CUDA) > 0)
		CHECK(k == GPU_CUDA, "auto %d with a cuda device", (int)k);
	else if (devices_of(GPU_HIP) > 0)
		CHECK(k == GPU_HIP, "auto %d with a hip device", (int)k);
	else
		CHECK(k == GPU_HOST, "auto %d without a GPU", (int)k);
}

/* ---- host backend ---- */

static void test_host(void)
{
	for (size_t s = 0; s < NSETTINGS; s++) {
		struct gpu_buffer *b = NULL;
		struct gpu_upload_stats st;
		char err[256] = "", handle[GPU_HANDLE_MAX], what[96];
		struct stat sb;
		int rc;

		rc = gpu_alloc(GPU_HOST, 0, total, &b, err, sizeof err);
		CHECK(rc == 0 && b, "host alloc: %d %s", rc, err);
		if (rc)
			continue;
		CHECK(gpu_buffer_kind(b) == GPU_HOST && gpu_buffer_device(b) == 0 &&
			      gpu_buffer_bytes(b) == total,
		      "buffer accessors");
		int hl = gpu_handle(b, handle, sizeof handle);
		CHECK(hl > 0 && (size_t)hl == strlen(handle), "handle length %d", hl);
		CHECK(strncmp(handle, "/dev/shm/safetensorsfs-", 23) == 0, "handle %s", handle);
		CHECK(gpu_handle(b, what, 10) == -ENOSPC, "small handle buffer");
		CHECK(stat(handle, &sb) == 0 && S_ISREG(sb.st_mode) && (sb.st_mode & 07777) == 0600 &&
			      sb.st_uid == getuid(),
		      "%s: mode %o", handle, (unsigned)sb.st_mode);
		CHECK((uint64_t)sb.st_size >= total && sb.st_size % GPU_ALIGN == 0, "size %lld",
		      (long long)sb.st_size);

		rc = gpu_upload(b, ranges, NR, &settings[s], &st, err, sizeof err);
		CHECK(rc == 0, "upload with %u readers, chunk %llu: %d %s", settings[s].readers,
		      (unsigned long long)settings[s].chunk_bytes, rc, err);
		CHECK(st.path && strcmp(st.path, "host") == 0, "path %s", st.path);
		CHECK(st.bytes == f1.size + f2.size + 100 + 70000 + 200000 + 1 - 1000000,
		      "stats bytes %llu", (unsigned long long)st.bytes);
		CHECK(st.seconds >= 0 && st.seconds < 60, "seconds %f", st.seconds);

		/* As a client: open the path, map it, compare. */
		size_t maplen = (size_t)sb.st_size;
		int fd = open(handle, O_RDONLY);
		unsigned char *m = fd < 0 ? MAP_FAILED
					  : mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, 0);
		CHECK(m != MAP_FAILED, "map %s: %s", handle, strerror(errno));
		if (fd >= 0)
			close(fd);
		snprintf(what, sizeof what, "host bytes, setting %zu", s);
		if (m != MAP_FAILED)
			verify(m, what);

		/* gpu_read */
		unsigned char back[300];
		CHECK(gpu_read(b, ranges[1].dst_offset + 5, back, sizeof back, err, sizeof err) == 0 &&
			      memcmp(back, f1.bytes + 13 + 5, sizeof back) == 0,
		      "gpu_read: %s", err);
		CHECK(gpu_read(b, total - 10, back, 11, err, sizeof err) == -EINVAL && err[0],
		      "gpu_read past the end");

		/* Free unlinks; the client's mapping stays. */
		gpu_free(b);
		CHECK(stat(handle, &sb) < 0 && errno == ENOENT, "%s still there after free", handle);
		if (m != MAP_FAILED) {
			snprintf(what, sizeof what, "host bytes after free, setting %zu", s);
			verify(m, what);
			munmap(m, maplen);
		}
	}
}

static void test_host_errors(void)
{
	struct gpu_buffer *b = NULL;
	char err[256] = "", handle[GPU_HANDLE_MAX];
	struct gpu_range r;
	int rc;

	gpu_free(NULL);
	rc = gpu_alloc(GPU_HOST, 1, 4096, &b, err, sizeof err);
	CHECK(rc == -EINVAL && !b && err[0], "host:1 %d", rc);
	rc = gpu_alloc((enum gpu_kind)9, 0, 4096, &b, err, sizeof err);
	CHECK(rc == -EINVAL && !b, "kind 9 %d", rc);
	rc = gpu_alloc(GPU_HOST, 0, UINT64_MAX, &b, err, sizeof err);
	CHECK(rc == -EINVAL && !b, "huge %d", rc);

	rc = gpu_alloc(GPU_HOST, 0, 0, &b, err, sizeof err);
	CHECK(rc == 0 && b && gpu_buffer_bytes(b) == 0, "empty buffer %d %s", rc, err);
	CHECK(gpu_upload(b, NULL, 0, NULL, NULL, err, sizeof err) == 0, "no ranges: %s", err);
	gpu_free(b);

	rc = gpu_alloc(GPU_HOST, 0, 1000, &b, err, sizeof err);
	CHECK(rc == 0, "alloc 1000: %s", err);
	if (rc)
		return;
	gpu_handle(b, handle, sizeof handle);
	unsigned char *m = b->ptr; /* internal: to see that a refused upload wrote nothing */

	r = (struct gpu_range){ .fd = f1.fd, .file_offset = 0, .nbytes = 1001, .dst_offset = 0 };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EINVAL && strstr(err, "past"), "too long: %d %s", rc, err);
	r = (struct gpu_range){ .fd = f1.fd, .file_offset = 0, .nbytes = 1, .dst_offset = 1000 };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EINVAL, "dst at the end: %d %s", rc, err);
	r = (struct gpu_range){ .fd = f1.fd, .file_offset = 0, .nbytes = 2, .dst_offset = UINT64_MAX };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EINVAL, "dst overflow: %d %s", rc, err);
	r = (struct gpu_range){ .fd = f1.fd, .file_offset = UINT64_MAX - 1, .nbytes = 10 };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EINVAL, "file offset overflow: %d %s", rc, err);
	int zero = 1;
	for (int i = 0; i < 1000; i++)
		zero &= m[i] == 0;
	CHECK(zero, "a refused upload wrote");

	r = (struct gpu_range){ .fd = -1, .file_offset = 0, .nbytes = 10 };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EBADF, "fd -1: %d %s", rc, err);
	r = (struct gpu_range){ .fd = 987, .file_offset = 0, .nbytes = 10 };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EBADF && strstr(err, "host:"), "closed fd: %d %s", rc, err);
	/* The file ends 10 bytes into the range. */
	r = (struct gpu_range){ .fd = f2.fd, .file_offset = f2.size - 10, .nbytes = 20 };
	rc = gpu_upload(b, &r, 1, NULL, NULL, err, sizeof err);
	CHECK(rc == -EIO && strstr(err, "ends"), "short file: %d %s", rc, err);
	/* Past the end of the file altogether, many pieces on many threads. */
	struct gpu_range many[4];
	for (int i = 0; i < 4; i++)
		many[i] = (struct gpu_range){ .fd = f2.fd,
					      .file_offset = i == 2 ? f2.size + 1 : 0,
					      .nbytes = 200,
					      .dst_offset = (uint64_t)i * 200 };
	struct gpu_upload_opts o = { .readers = 4, .chunk_bytes = 7 };
	rc = gpu_upload(b, many, 4, &o, NULL, err, sizeof err);
	CHECK(rc == -EIO, "one bad range among many: %d %s", rc, err);
	gpu_free(b);
	struct stat sb;
	CHECK(stat(handle, &sb) < 0 && errno == ENOENT, "%s left behind", handle);
}

/* ---- the device path over a fake runtime ---- */

/* A stream queues its copies; they happen when it is synchronized (or destroyed, which
 * counts as a failure: device.c must complete every copy before it frees the buffers). */
struct copy {
	void *dst;
	const void *src;
	size_t n;
};
struct fake_stream {
	struct copy q[64];
	int n;
};

static struct {
	int fail_host_alloc;  /* pinned memory refused */
	int fail_copy_at;     /* the Nth h2d_async fails (0: never) */
	int copies;
	int streams_live;
	int pinned_live;
	int destroyed_busy;   /* a stream destroyed with copies still queued */
	int queue_overflow;
} fake;

static int fk_load(char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	return 0;
}

static int fk_devices(int *count, char *detail, size_t len)
{
	*count = 1;
	gd_say(detail, len, "fake");
	return 0;
}

static int fk_set_device(int device, char *err, size_t errlen)
{
	return device == 0 ? 0 : gd_fail(-ENODEV, err, errlen, "no device %d", device);
}

static int fk_dev_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	*ptr = calloc(1, bytes);
	return *ptr ? 0 : gd_fail(-ENOMEM, err, errlen, "calloc");
}

static void fk_dev_free(void *ptr)
{
	free(ptr);
}

static int fk_ipc_handle(void *ptr, unsigned char out[GD_IPC_BYTES], char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	memset(out, 0, GD_IPC_BYTES);
	memcpy(out, &ptr, sizeof ptr);
	out[GD_IPC_BYTES - 1] = 0xab;
	return 0;
}

static int fk_host_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	if (fake.fail_host_alloc)
		return gd_fail(-ENOMEM, err, errlen, "no pinned memory today");
	*ptr = malloc(bytes);
	/* Garbage, so that a copy of an unread buffer shows. */
	if (*ptr)
		memset(*ptr, 0x5a, bytes);
	fake.pinned_live += *ptr != NULL;
	return *ptr ? 0 : gd_fail(-ENOMEM, err, errlen, "malloc");
}

static void fk_host_free(void *ptr)
{
	fake.pinned_live--;
	free(ptr);
}

static int fk_stream_create(void **stream, char *err, size_t errlen)
{
	*stream = calloc(1, sizeof(struct fake_stream));
	fake.streams_live += *stream != NULL;
	return *stream ? 0 : gd_fail(-ENOMEM, err, errlen, "calloc");
}

static void fk_stream_destroy(void *stream)
{
	struct fake_stream *s = stream;

	fake.destroyed_busy += s->n != 0;
	fake.streams_live--;
	free(s);
}

static int fk_h2d_async(void *dst, const void *src, size_t n, void *stream, char *err,
			size_t errlen)
{
	struct fake_stream *s = stream;

	if (++fake.copies == fake.fail_copy_at)
		return gd_fail(-EIO, err, errlen, "injected copy failure");
	if (s->n == 64) {
		fake.queue_overflow++;
		return gd_fail(-EIO, err, errlen, "queue full");
	}
	s->q[s->n++] = (struct copy){ dst, src, n };
	return 0;
}

static int fk_stream_sync(void *stream, char *err, size_t errlen)
{
	struct fake_stream *s = stream;

	(void)err;
	(void)errlen;
	for (int i = 0; i < s->n; i++)
		memcpy(s->q[i].dst, s->q[i].src, s->q[i].n);
	s->n = 0;
	return 0;
}

static int fk_d2h(void *dst, const void *src, size_t n, char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	memcpy(dst, src, n);
	return 0;
}

static const struct gd_runtime fake_runtime = {
	.kind = GPU_CUDA,
	.name = "fake",
	.load = fk_load,
	.devices = fk_devices,
	.set_device = fk_set_device,
	.dev_alloc = fk_dev_alloc,
	.dev_free = fk_dev_free,
	.ipc_handle = fk_ipc_handle,
	.host_alloc = fk_host_alloc,
	.host_free = fk_host_free,
	.stream_create = fk_stream_create,
	.stream_destroy = fk_stream_destroy,
	.h2d_async = fk_h2d_async,
	.stream_sync = fk_stream_sync,
	.d2h = fk_d2h,
	.direct = NULL,
};

static struct gpu_buffer *fake_buffer(void)
{
	struct gpu_buffer *b = calloc(1, sizeof *b);
	char err[256];

	b->kind = GPU_CUDA;
	b->device = 0;
	b->bytes = total;
	b->capacity = (total + GPU_ALIGN - 1) / GPU_ALIGN * GPU_ALIGN;
	b->fd = -1;
	if (gd_device_alloc(&fake_runtime, 0, b, err, sizeof err) < 0) {
		fprintf(stderr, "fake alloc: %s\n", err);
		exit(2);
	}
	return b;
}

static void test_fake_device(void)
{
	char err[256], what[96], handle[GPU_HANDLE_MAX];

	for (int pageable = 0; pageable < 2; pageable++)
		for (size_t s = 0; s < NSETTINGS; s++) {
			struct gpu_buffer *b = fake_buffer();
			struct gpu_upload_stats st;
			int rc;

			memset(&fake, 0, sizeof fake);
			fake.fail_host_alloc = pageable;
			rc = gpu_upload(b, ranges, NR, &settings[s], &st, err, sizeof err);
			CHECK(rc == 0, "fake upload, setting %zu: %d %s", s, rc, err);
			CHECK(strcmp(st.path, pageable ? "pageable" : "pinned") == 0, "path %s",
			      st.path);
			CHECK(!pageable || strstr(st.note, "no pinned memory today"), "note '%s'",
			      st.note);
			CHECK(strstr(st.note, "gds: fake has no GPUDirect Storage path") != NULL,
			      "note '%s'", st.note);
			snprintf(what, sizeof what, "fake device bytes, %s, setting %zu",
				 pageable ? "pageable" : "pinned", s);
			verify(b->ptr, what);
			CHECK(fake.streams_live == 0 && fake.pinned_live == 0 &&
				      fake.destroyed_busy == 0 && fake.queue_overflow == 0,
			      "leftovers: %d streams, %d pinned, %d busy, %d overflow",
			      fake.streams_live, fake.pinned_live, fake.destroyed_busy,
			      fake.queue_overflow);

			unsigned char back[64];
			CHECK(gpu_read(b, ranges[2].dst_offset, back, sizeof back, err, sizeof err) == 0 &&
				      memcmp(back, f2.bytes + 777, sizeof back) == 0,
			      "fake gpu_read: %s", err);
			CHECK(gpu_handle(b, handle, sizeof handle) == 128 && strlen(handle) == 128 &&
				      strcmp(handle + 126, "ab") == 0 &&
				      strspn(handle, "0123456789abcdef") == 128,
			      "ipc handle hex %s", handle);
			gpu_free(b);
		}

	/* GDS asked for where there is none. */
	{
		struct gpu_buffer *b = fake_buffer();
		struct gpu_upload_opts o = { .flags = GPU_UPLOAD_REQUIRE_GDS };
		int rc = gpu_upload(b, ranges, NR, &o, NULL, err, sizeof err);

		CHECK(rc == -ENOTSUP && strstr(err, "GPUDirect"), "require gds: %d %s", rc, err);
		o.flags = GPU_UPLOAD_NO_GDS;
		rc = gpu_upload(b, ranges, NR, &o, NULL, err, sizeof err);
		CHECK(rc == 0, "no gds: %d %s", rc, err);
		gpu_free(b);
	}

	/* A copy fails midway: an error, and every queued copy still completed before the
	 * staging buffers went away. */
	for (int at = 1; at <= 9; at += 4) {
		struct gpu_buffer *b = fake_buffer();
		struct gpu_upload_opts o = { .readers = 4, .chunk_bytes = 4096 };
		int rc;

		memset(&fake, 0, sizeof fake);
		fake.fail_copy_at = at;
		rc = gpu_upload(b, ranges, NR, &o, NULL, err, sizeof err);
		CHECK(rc == -EIO && strstr(err, "injected"), "copy %d fails: %d %s", at, rc, err);
		CHECK(fake.streams_live == 0 && fake.pinned_live == 0 && fake.destroyed_busy == 0,
		      "after failure: %d streams, %d pinned, %d busy", fake.streams_live,
		      fake.pinned_live, fake.destroyed_busy);
		gpu_free(b);
	}

	/* A read fails midway (the file ends early). */
	{
		struct gpu_buffer *b = fake_buffer();
		struct gpu_range r[3] = { ranges[1], ranges[2], ranges[5] };
		struct gpu_upload_opts o = { .readers = 3, .chunk_bytes = 1000 };
		int rc;

		r[1].file_offset = f2.size - 100; /* 200000 bytes wanted, 100 there */
		memset(&fake, 0, sizeof fake);
		rc = gpu_upload(b, r, 3, &o, NULL, err, sizeof err);
		CHECK(rc == -EIO && strstr(err, "ends"), "short read: %d %s", rc, err);
		CHECK(fake.streams_live == 0 && fake.pinned_live == 0 && fake.destroyed_busy == 0,
		      "after short read: %d streams, %d pinned, %d busy", fake.streams_live,
		      fake.pinned_live, fake.destroyed_busy);
		gpu_free(b);
	}
}

/* A column slice: one small range per row, the rows side by side in the buffer. The staging
 * pipeline must carry many of them per buffer and copy, not one each. */
static void test_fake_device_rows(void)
{
	enum { ROWS = 3000, ROW = 37, STRIDE = 101 };
	static struct gpu_range r[ROWS + 2];
	struct gpu_upload_opts o[] = { { 0 }, { .readers = 3, .chunk_bytes = 4096 },
				       { .readers = 1, .chunk_bytes = ROW } };
	char err[256];

	for (int i = 0; i < ROWS; i++)
		r[i] = (struct gpu_range){ .fd = f1.fd, .file_offset = 11 + (uint64_t)i * STRIDE,
					   .nbytes = ROW, .dst_offset = (uint64_t)i * ROW };
	/* then a tensor of its own at the next aligned offset, and an empty one */
	r[ROWS] = (struct gpu_range){ .fd = f2.fd, .file_offset = 5, .nbytes = 9000,
				      .dst_offset = (ROWS * ROW + GPU_ALIGN - 1) / GPU_ALIGN * GPU_ALIGN };
	r[ROWS + 1] = (struct gpu_range){ .fd = f2.fd, .file_offset = 0, .nbytes = 0,
					  .dst_offset = r[ROWS].dst_offset + 9000 };
	for (size_t k = 0; k < sizeof o / sizeof o[0]; k++) {
		struct gpu_buffer *b = fake_buffer();
		uint64_t chunk = o[k].chunk_bytes ? o[k].chunk_bytes : GD_DEFAULT_CHUNK;
		int rc, ok = 1;

		memset(&fake, 0, sizeof fake);
		rc = gpu_upload(b, r, ROWS + 2, &o[k], NULL, err, sizeof err);
		CHECK(rc == 0, "rows, setting %zu: %d %s", k, rc, err);
		const unsigned char *got = b->ptr;
		for (int i = 0; i < ROWS && ok; i++)
			ok = memcmp(got + (size_t)i * ROW, f1.bytes + 11 + (size_t)i * STRIDE, ROW) == 0;
		CHECK(ok && memcmp(got + r[ROWS].dst_offset, f2.bytes + 5, 9000) == 0,
		      "rows, setting %zu: bytes", k);
		/* one copy per full staging buffer, plus the tensor's own */
		int most = (int)((ROWS * ROW + chunk - 1) / chunk + (9000 + chunk - 1) / chunk) + 1;
		CHECK(fake.copies <= most, "rows, setting %zu: %d copies, want at most %d", k,
		      fake.copies, most);
		gpu_free(b);
	}
}

/* ---- the real GPU backends ---- */

static void test_gpu_kind(enum gpu_kind kind)
{
	const char *name = gpu_kind_name(kind);
	int devices = devices_of(kind);
	struct gpu_buffer *b = NULL;
	char err[256] = "";
	int rc;

	rc = gpu_alloc(kind, 1000, 4096, &b, err, sizeof err);
	CHECK(rc == -ENODEV && !b && err[0], "%s:1000: %d %s", name, rc, err);
	printf("# %s:1000: %s\n", name, err);

	rc = gpu_alloc(kind, 0, total, &b, err, sizeof err);
	if (devices <= 0) {
		CHECK(rc == -ENODEV && !b && strstr(err, name) == err,
		      "%s without a device: %d '%s'", name, rc, err);
		printf("# %s:0 (no device here): %s\n", name, err);
		return;
	}
	/* A machine with the GPU: the real thing, every byte read back. */
	CHECK(rc == 0, "%s:0: %d %s", name, rc, err);
	if (rc)
		return;
	for (size_t s = 0; s < NSETTINGS; s++) {
		struct gpu_upload_stats st;
		unsigned char *back = malloc(total);
		char what[96];

		rc = gpu_upload(b, ranges, NR, &settings[s], &st, err, sizeof err);
		CHECK(rc == 0, "%s upload: %d %s", name, rc, err);
		CHECK(gpu_read(b, 0, back, total, err, sizeof err) == 0, "%s read: %s", name, err);
		snprintf(what, sizeof what, "%s bytes (%s), setting %zu", name, st.path, s);
		/* Gaps are whatever cudaMalloc left: compare the ranges only. */
		for (int i = 0; i < NR; i++)
			CHECK(memcmp(back + ranges[i].dst_offset,
				     range_file[i]->bytes + ranges[i].file_offset,
				     ranges[i].nbytes) == 0,
			      "%s: range %d", what, i);
		free(back);
	}
	gpu_free(b);
}

static int list_backends(void)
{
	struct gpu_backend_info info[8];
	size_t n = gpu_backends(info, 8);

	for (size_t i = 0; i < n; i++)
		printf("%s %d %s\n", info[i].name, info[i].devices, info[i].detail);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "backends") == 0)
		return list_backends();

	make_file(&f1, (1u << 20) + 1234, 0x9e3779b97f4a7c15ull);
	make_file(&f2, 300 * 1024 + 5, 0xdeadbeefcafef00dull);
	layout();

	test_names();
	test_backends();
	test_host();
	test_host_errors();
	test_fake_device();
	test_fake_device_rows();
	test_gpu_kind(GPU_CUDA);
	test_gpu_kind(GPU_HIP);

	drop_file(&f1);
	drop_file(&f2);
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}
