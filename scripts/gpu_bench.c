/*
 * gpu_bench: drives gpu_direct/ without FUSE, for scripts/gpu-check.sh on a GPU machine.
 * Prints one JSON object a line on stdout; errors on stderr, exit status 1.
 *
 *   gpu_bench backends
 *   gpu_bench upload DEVICE FILE RANGES [--readers N] [--chunk BYTES]
 *                    [--gds auto|off|force|require] [--repeat K] [--verify] [--hold]
 *       RANGES: one range a line, "FILE_OFFSET NBYTES DST_OFFSET [anything]" (what
 *       fs/control.c makes of the tensors). Allocates one buffer as large as the ranges
 *       need, uploads K times, optionally reads every byte back and compares it with the
 *       file, prints the buffer's handle; with --hold keeps it until stdin closes or gives
 *       a line, so that another process can map it meanwhile.
 *   gpu_bench bus DEVICE FILE BYTES [--repeat K]
 *       The bus limit: BYTES of FILE read into one pinned buffer (not timed), then copied
 *       to the device by one async copy on one stream, K times.
 *
 * Build (no FUSE, no JSON library): see scripts/gpu-check.sh, or
 *   cc -O2 -std=c11 -D_GNU_SOURCE -pthread -I/usr/local/cuda/include -D__HIP_PLATFORM_AMD__ \
 *      scripts/gpu_bench.c gpu_direct/ *.c -ldl -o gpu_bench
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gpu_direct/gpu.h"
#include "../gpu_direct/internal.h"

__attribute__((noreturn)) static void die(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "gpu_bench: ");
	fprintf(stderr, fmt, a, b);
	fputc('\n', stderr);
	exit(1);
}

/* s as JSON string contents (messages hold no control characters but may hold quotes). */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		if ((unsigned char)*s >= 0x20)
			putchar(*s);
	}
	putchar('"');
}

static int backends(void)
{
	struct gpu_backend_info info[8];
	size_t n = gpu_backends(info, 8);

	for (size_t i = 0; i < n; i++) {
		printf("{\"event\":\"backend\",\"name\":\"%s\",\"devices\":%d,\"detail\":", info[i].name,
		       info[i].devices);
		json_str(info[i].detail);
		printf("}\n");
	}
	printf("{\"event\":\"built\",\"backends\":\"%s\"}\n", gpu_built_backends());
	return 0;
}

static struct gpu_range *read_ranges(const char *path, int fd, size_t *n, uint64_t *total)
{
	FILE *f = fopen(path, "r");
	size_t cap = 256;
	struct gpu_range *r = malloc(cap * sizeof *r);
	char line[4096];

	if (!r)
		die("%s: out of memory%s", path, "");
	if (!f)
		die("%s: %s", path, strerror(errno));
	*n = 0;
	*total = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long long off, len, dst;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%llu %llu %llu", &off, &len, &dst) != 3)
			die("%s: bad line: %s", path, line);
		if (*n == cap) {
			struct gpu_range *more = realloc(r, (cap *= 2) * sizeof *r);

			if (!more)
				die("%s: out of memory%s", path, "");
			r = more;
		}
		r[(*n)++] = (struct gpu_range){ .fd = fd, .file_offset = off, .nbytes = len,
						.dst_offset = dst };
		if (dst + len > *total)
			*total = dst + len;
	}
	fclose(f);
	return r;
}

/* Every byte of every range, read back from the device, against the file. */
static int verify(const struct gpu_buffer *b, const struct gpu_range *r, size_t n, uint64_t *bytes)
{
	const size_t piece = 64u << 20;
	char *want = malloc(piece), *got = malloc(piece), err[256];

	*bytes = 0;
	for (size_t i = 0; i < n; i++)
		for (uint64_t o = 0; o < r[i].nbytes; o += piece) {
			size_t len = r[i].nbytes - o < piece ? (size_t)(r[i].nbytes - o) : piece;

			if (gd_pread_full(r[i].fd, want, len, r[i].file_offset + o, err, sizeof err) < 0 ||
			    gpu_read(b, r[i].dst_offset + o, got, len, err, sizeof err) < 0)
				die("verify: %s%s", err, "");
			if (memcmp(want, got, len) != 0) {
				for (size_t k = 0; k < len; k++)
					if (want[k] != got[k]) {
						fprintf(stderr,
							"gpu_bench: verify: range %zu byte %" PRIu64
							" differs (file offset %" PRIu64 ")\n",
							i, o + k, r[i].file_offset + o + k);
						break;
					}
				free(want);
				free(got);
				return 0;
			}
			*bytes += len;
		}
	free(want);
	free(got);
	return 1;
}

static int upload(int argc, char **argv)
{
	struct gpu_upload_opts o = { 0 };
	int repeat = 1, do_verify = 0, hold = 0, fresh = 0;
	enum gpu_kind kind;
	int device;
	char err[512], handle[GPU_HANDLE_MAX], name[32];

	if (argc < 5)
		die("usage: upload DEVICE FILE RANGES [options]%s%s", "", "");
	if (gpu_parse_device(argv[2], &kind, &device) < 0)
		die("bad device %s%s", argv[2], "");
	for (int i = 5; i < argc; i++) {
		if (strcmp(argv[i], "--readers") == 0 && i + 1 < argc)
			o.readers = (unsigned)atoi(argv[++i]);
		else if (strcmp(argv[i], "--chunk") == 0 && i + 1 < argc)
			o.chunk_bytes = strtoull(argv[++i], NULL, 0);
		else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
			repeat = atoi(argv[++i]);
		else if (strcmp(argv[i], "--verify") == 0)
			do_verify = 1;
		else if (strcmp(argv[i], "--hold") == 0)
			hold = 1;
		else if (strcmp(argv[i], "--fresh") == 0) /* a new buffer each run, as the daemon */
			fresh = 1;
		else if (strcmp(argv[i], "--gds") == 0 && i + 1 < argc) {
			const char *g = argv[++i];

			o.flags = strcmp(g, "off") == 0       ? GPU_UPLOAD_NO_GDS
				  : strcmp(g, "force") == 0   ? GPU_UPLOAD_FORCE_GDS
				  : strcmp(g, "require") == 0 ? GPU_UPLOAD_REQUIRE_GDS
				  : strcmp(g, "auto") == 0    ? 0
							      : (die("bad --gds %s%s", g, ""), 0);
		} else
			die("unknown option %s%s", argv[i], "");
	}

	int fd = open(argv[3], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("%s: %s", argv[3], strerror(errno));
	size_t n;
	uint64_t total;
	struct gpu_range *r = read_ranges(argv[4], fd, &n, &total);
	struct gpu_buffer *b;
	double t0 = gd_now();

	if (gpu_alloc(kind, device, total, &b, err, sizeof err) < 0)
		die("%s%s", err, "");
	double alloc_s = gd_now() - t0;

	gpu_device_name(kind, device, name, sizeof name);
	for (int k = 0; k < repeat; k++) {
		struct gpu_upload_stats st;

		if (fresh && k > 0) {
			gpu_free(b);
			t0 = gd_now();
			if (gpu_alloc(kind, device, total, &b, err, sizeof err) < 0)
				die("%s%s", err, "");
			alloc_s = gd_now() - t0;
		}
		if (gpu_upload(b, r, n, &o, &st, err, sizeof err) < 0)
			die("upload: %s%s", err, "");
		printf("{\"event\":\"upload\",\"run\":%d,\"device\":\"%s\",\"seconds\":%.6f,"
		       "\"bytes\":%" PRIu64 ",\"gbps\":%.3f,\"readers\":%u,\"chunk\":%" PRIu64
		       ",\"alloc_seconds\":%.6f,\"path\":\"%s\",\"note\":",
		       k, name, st.seconds, st.bytes, st.seconds > 0 ? st.bytes / st.seconds / 1e9 : 0,
		       gd_readers(o.readers), o.chunk_bytes ? o.chunk_bytes : (uint64_t)GD_DEFAULT_CHUNK,
		       alloc_s, st.path);
		json_str(st.note);
		printf("}\n");
		fflush(stdout);
	}
	if (do_verify) {
		uint64_t checked;
		double v0 = gd_now();
		int ok = verify(b, r, n, &checked);

		printf("{\"event\":\"verify\",\"ok\":%s,\"bytes\":%" PRIu64 ",\"seconds\":%.3f}\n",
		       ok ? "true" : "false", checked, gd_now() - v0);
		fflush(stdout);
		if (!ok)
			return 1;
	}
	gpu_handle(b, handle, sizeof handle);
	printf("{\"event\":\"buffer\",\"device\":\"%s\",\"bytes\":%" PRIu64
	       ",\"alloc_seconds\":%.6f,\"handle\":\"%s\"}\n",
	       name, total, alloc_s, handle);
	fflush(stdout);
	if (hold) {
		char line[64];

		if (!fgets(line, sizeof line, stdin))
			line[0] = 0;
	}
	gpu_free(b);
	printf("{\"event\":\"freed\"}\n");
	free(r);
	close(fd);
	return 0;
}

static int bus(int argc, char **argv)
{
	enum gpu_kind kind;
	int device, repeat = 3;
	char err[512], name[32];
	void *host = NULL, *dev = NULL, *stream = NULL;

	if (argc < 5)
		die("usage: bus DEVICE FILE BYTES [--repeat K]%s%s", "", "");
	if (gpu_parse_device(argv[2], &kind, &device) < 0 || kind == GPU_HOST)
		die("bad device %s (cuda:N or hip:N)%s", argv[2], "");
	if (argc > 6 && strcmp(argv[5], "--repeat") == 0)
		repeat = atoi(argv[6]);
	const struct gd_runtime *rt = kind == GPU_CUDA ? &gd_cuda_runtime : &gd_hip_runtime;
	size_t bytes = (size_t)strtoull(argv[4], NULL, 0);
	int fd = open(argv[3], O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		die("%s: %s", argv[3], strerror(errno));
	if (rt->load(err, sizeof err) < 0 || rt->set_device(device, err, sizeof err) < 0 ||
	    rt->host_alloc(&host, bytes, err, sizeof err) < 0 ||
	    rt->dev_alloc(&dev, bytes, err, sizeof err) < 0 ||
	    rt->stream_create(&stream, err, sizeof err) < 0)
		die("bus: %s%s", err, "");
	if (gd_pread_full(fd, host, bytes, 0, err, sizeof err) < 0)
		die("bus: %s%s", err, "");
	gpu_device_name(kind, device, name, sizeof name);
	for (int k = 0; k < repeat; k++) {
		double t0 = gd_now();

		if (rt->h2d_async(dev, host, bytes, stream, err, sizeof err) < 0 ||
		    rt->stream_sync(stream, err, sizeof err) < 0)
			die("bus: %s%s", err, "");
		double s = gd_now() - t0;

		printf("{\"event\":\"bus\",\"run\":%d,\"device\":\"%s\",\"seconds\":%.6f,\"bytes\":%zu,"
		       "\"gbps\":%.3f}\n",
		       k, name, s, bytes, bytes / s / 1e9);
		fflush(stdout);
	}
	rt->stream_destroy(stream);
	rt->dev_free(dev);
	rt->host_free(host);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "backends") == 0)
		return backends();
	if (argc >= 2 && strcmp(argv[1], "upload") == 0)
		return upload(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "bus") == 0)
		return bus(argc, argv);
	fprintf(stderr, "usage: gpu_bench backends | upload DEVICE FILE RANGES [options] | "
			"bus DEVICE FILE BYTES [--repeat K]\n");
	return 2;
}
