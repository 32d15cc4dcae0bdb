/*
 * A C client of safetensorsfs's /.control: uploads tensors to a CUDA device through the
 * daemon, opens the daemon's buffer by its IPC handle, copies its first bytes back and
 * prints them. The daemon keeps the memory; this process only maps it.
 *
 * Build (either):
 *   nvcc -o ipc_client scripts/ipc_client.c
 *   cc -o ipc_client scripts/ipc_client.c -I/usr/local/cuda/include -L/usr/local/cuda/lib64 -lcudart
 * Run:
 *   ./ipc_client MOUNTPOINT [--device cuda:N] [--keep] PATTERN...
 *
 * Protocol (the contract's "GPU control file"): open MOUNTPOINT/.control read-write, write
 * one command line ending in "\n", read one JSON object ending in "\n"; one command per open.
 * The reply of `upload` is read with a few string searches, enough for its top-level fields
 * (a JSON string cannot hold an unescaped quote, so `"handle":` only matches the key).
 */
#define _GNU_SOURCE
#include <cuda_runtime_api.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Sends one command line, returns the reply line (malloc'd, NUL-terminated) or NULL. */
static char *control(const char *mnt, const char *line)
{
	char path[4096];
	size_t len = strlen(line), cap = 1 << 16, got = 0;
	char *reply;
	int fd;

	snprintf(path, sizeof path, "%s/.control", mnt);
	if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0) {
		fprintf(stderr, "ipc_client: %s: %s%s\n", path, strerror(errno),
			errno == ENOENT ? " (a -o ro mount has no uploads)" : "");
		return NULL;
	}
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, line + done, len - done);
		if (n < 0) {
			fprintf(stderr, "ipc_client: writing %s: %s\n", path, strerror(errno));
			close(fd);
			return NULL;
		}
		done += (size_t)n;
	}
	reply = malloc(cap);
	for (;;) {
		if (!reply) {
			fprintf(stderr, "ipc_client: out of memory\n");
			close(fd);
			return NULL;
		}
		if (got + 1 == cap) {
			char *more = realloc(reply, cap *= 2);

			if (!more)
				free(reply);
			reply = more;
			continue;
		}
		ssize_t n = read(fd, reply + got, cap - got - 1);
		if (n < 0) {
			fprintf(stderr, "ipc_client: reading %s: %s\n", path, strerror(errno));
			free(reply);
			close(fd);
			return NULL;
		}
		got += (size_t)n;
		if (n == 0 || (got && reply[got - 1] == '\n'))
			break;
	}
	close(fd);
	reply[got] = 0;
	return reply;
}

/* The raw value of top-level key `key` (a string without its quotes, or a number) into out. */
static int field(const char *json, const char *key, char *out, size_t outlen)
{
	char pat[64];
	const char *p, *e;

	snprintf(pat, sizeof pat, "\"%s\":", key);
	if (!(p = strstr(json, pat)))
		return -1;
	p += strlen(pat);
	while (*p == ' ')
		p++;
	if (*p == '"') {
		/* A string: undo the simple escapes (\" \\ \/ \n \t; \uXXXX stays as it is). */
		size_t k = 0;

		for (p++; *p && *p != '"'; p++) {
			char c = *p;

			if (c == '\\' && p[1]) {
				c = *++p;
				c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'u' ? (p--, '\\') : c;
			}
			if (k + 1 >= outlen)
				return -1;
			out[k++] = c;
		}
		if (*p != '"')
			return -1;
		out[k] = 0;
		return 0;
	}
	e = p + strcspn(p, ",}] \n");
	if ((size_t)(e - p) >= outlen)
		return -1;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = 0;
	return 0;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
		: c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int main(int argc, char **argv)
{
	const char *mnt = NULL;
	int keep = 0, npat = 0;
	size_t cap = 64;
	char *cmd, *reply;
	char handle_hex[256], dev[32], bytes_s[32], id[128], err[512];

	for (int i = 1; i < argc; i++)
		cap += strlen(argv[i]) + 1;
	if (!(cmd = malloc(cap)))
		return 1;
	/* The daemon takes device= anywhere among the patterns. */
	strcpy(cmd, "upload");
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
			strcat(strcat(cmd, " device="), argv[++i]);
		} else if (strcmp(argv[i], "--keep") == 0) {
			keep = 1;
		} else if (!mnt) {
			mnt = argv[i];
		} else {
			strcat(strcat(cmd, " "), argv[i]);
			npat++;
		}
	}
	if (!mnt || !npat) {
		fprintf(stderr, "usage: %s MOUNTPOINT [--device cuda:N] [--keep] PATTERN...\n",
			argv[0]);
		return 2;
	}
	strcat(cmd, "\n");

	if (!(reply = control(mnt, cmd)))
		return 1;
	char ok[8];

	if (field(reply, "ok", ok, sizeof ok) < 0 || strcmp(ok, "true") != 0) {
		if (field(reply, "error", err, sizeof err) < 0)
			snprintf(err, sizeof err, "%s", reply);
		fprintf(stderr, "ipc_client: %s\n", err);
		return 1;
	}
	if (field(reply, "handle", handle_hex, sizeof handle_hex) < 0 ||
	    field(reply, "device", dev, sizeof dev) < 0 ||
	    field(reply, "bytes", bytes_s, sizeof bytes_s) < 0 || field(reply, "id", id, sizeof id) < 0) {
		fprintf(stderr, "ipc_client: reply lacks handle, device, bytes or id: %s", reply);
		return 1;
	}
	if (strncmp(dev, "cuda", 4) != 0) {
		fprintf(stderr, "ipc_client: the buffer is on %s, not a CUDA device\n", dev);
		return 1;
	}
	int devno = dev[4] == ':' ? atoi(dev + 5) : 0;
	unsigned long long bytes = strtoull(bytes_s, NULL, 10);
	cudaIpcMemHandle_t h;

	if (strlen(handle_hex) != 2 * sizeof h) {
		fprintf(stderr, "ipc_client: handle is %zu hex digits, want %zu\n",
			strlen(handle_hex), 2 * sizeof h);
		return 1;
	}
	for (size_t i = 0; i < sizeof h; i++) {
		int hi = hexval(handle_hex[2 * i]), lo = hexval(handle_hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			fprintf(stderr, "ipc_client: handle is not hex\n");
			return 1;
		}
		((unsigned char *)&h)[i] = (unsigned char)(hi << 4 | lo);
	}

	void *ptr = NULL;
	unsigned char first[64];
	size_t n = bytes < sizeof first ? (size_t)bytes : sizeof first;
	cudaError_t e;

	if ((e = cudaSetDevice(devno)) != cudaSuccess ||
	    (e = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess)) != cudaSuccess ||
	    (e = cudaMemcpy(first, ptr, n, cudaMemcpyDeviceToHost)) != cudaSuccess) {
		fprintf(stderr, "ipc_client: %s\n", cudaGetErrorString(e));
		return 1;
	}
	printf("buffer %s: %llu bytes on %s, mapped at %p; first %zu bytes:\n", id, bytes, dev, ptr,
	       n);
	for (size_t i = 0; i < n; i++)
		printf("%02x%s", first[i], i % 16 == 15 || i + 1 == n ? "\n" : " ");
	cudaIpcCloseMemHandle(ptr);

	if (!keep) {
		char line[160];
		char *r;

		snprintf(line, sizeof line, "free %s\n", id);
		if (!(r = control(mnt, line)))
			return 1;
		if (field(r, "ok", ok, sizeof ok) < 0 || strcmp(ok, "true") != 0)
			fprintf(stderr, "ipc_client: free %s: %s", id, r);
		free(r);
	}
	free(reply);
	free(cmd);
	return 0;
}
