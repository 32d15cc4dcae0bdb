/*
 * Round-trip latency through a mount: N getxattr calls on one file, then
 * 20k random 256-byte preads (4 KiB-aligned) over another, in µs per call.
 * The figures in docs/BENCHMARKS.md "Round trips" come from it:
 *
 *   cc -O2 -o /tmp/roundtrip scripts/bench/roundtrip.c
 *   taskset -c 0 build/safetensorsfs [-o spin_us=N] MODEL MNT
 *   taskset -c 1 /tmp/roundtrip MNT/small 100000 MNT/big
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int getxattrs(const char *path, long n)
{
	char value[256];
	double t = now();

	for (long i = 0; i < n; i++)
		if (getxattr(path, "user.safetensors.offset", value, sizeof(value)) < 0) {
			perror(path);
			return 1;
		}
	printf("getxattr %.2f us\n", (now() - t) / n * 1e6);
	return 0;
}

static int random_reads(const char *path)
{
	enum { READS = 20000, PAGE = 4096 };
	char buf[256];
	int fd = open(path, O_RDONLY);
	off_t pages = fd < 0 ? 0 : lseek(fd, 0, SEEK_END) / PAGE;
	double t;

	if (pages <= 0) {
		fprintf(stderr, "%s: cannot open, or smaller than a page\n", path);
		return 1;
	}
	srand(1);
	t = now();
	for (int i = 0; i < READS; i++)
		if (pread(fd, buf, sizeof(buf), (off_t)(rand() % pages) * PAGE) < 0) {
			perror(path);
			return 1;
		}
	printf("random %.2f us\n", (now() - t) / READS * 1e6);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s FILE N [BIGFILE]\n", argv[0]);
		return 2;
	}
	if (getxattrs(argv[1], atol(argv[2])))
		return 1;
	return argc > 3 ? random_reads(argv[3]) : 0;
}
