/*
 * gpu_direct's public entry points (gpu.h): argument checks, then the backend: host.c, or
 * device.c over cuda.c's or hip.c's runtime table.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

const char *gpu_built_backends(void)
{
	return "cuda hip host";
}

const char *gpu_kind_name(enum gpu_kind kind)
{
	switch (kind) {
	case GPU_HOST:
		return "host";
	case GPU_CUDA:
		return "cuda";
	case GPU_HIP:
		return "hip";
	}
	return NULL;
}

static const struct gd_runtime *runtime(enum gpu_kind kind)
{
	return kind == GPU_CUDA ? &gd_cuda_runtime : kind == GPU_HIP ? &gd_hip_runtime : NULL;
}

int gpu_parse_device(const char *s, enum gpu_kind *kind, int *device)
{
	static const struct {
		const char *name;
		enum gpu_kind kind;
	} kinds[] = { { "cuda", GPU_CUDA }, { "hip", GPU_HIP } };

	if (!s)
		return -EINVAL;
	if (strcmp(s, "host") == 0) {
		*kind = GPU_HOST;
		*device = 0;
		return 0;
	}
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		size_t l = strlen(kinds[i].name);
		int n = 0;

		if (strncmp(s, kinds[i].name, l) != 0)
			continue;
		s += l;
		if (*s == ':') {
			/* 1 to 4 decimal digits, below 1024, no sign, no spaces. */
			const char *d = ++s;

			if (*d < '0' || *d > '9')
				return -EINVAL;
			for (; *d >= '0' && *d <= '9'; d++)
				if (d - s >= 4 || (n = n * 10 + (*d - '0')) >= 1024)
					return -EINVAL;
			s = d;
		}
		if (*s)
			return -EINVAL;
		*kind = kinds[i].kind;
		*device = n;
		return 0;
	}
	return -EINVAL;
}

int gpu_device_name(enum gpu_kind kind, int device, char *out, size_t outlen)
{
	if (kind == GPU_HOST)
		return gd_say(out, outlen, "host");
	return gd_say(out, outlen, "%s:%d", gpu_kind_name(kind) ? gpu_kind_name(kind) : "?",
			device);
}

size_t gpu_backends(struct gpu_backend_info *out, size_t max)
{
	static const enum gpu_kind order[] = { GPU_CUDA, GPU_HIP, GPU_HOST };
	size_t n = 0;

	for (size_t i = 0; i < sizeof order / sizeof order[0] && n < max; i++, n++) {
		struct gpu_backend_info *b = &out[n];

		b->kind = order[i];
		b->name = gpu_kind_name(order[i]);
		b->detail[0] = 0;
		if (order[i] == GPU_HOST) {
			int ok = access("/dev/shm", W_OK | X_OK) == 0;

			b->devices = ok;
			gd_say(b->detail, sizeof b->detail, ok ? "/dev/shm" : "/dev/shm: %s",
				 strerror(errno));
		} else {
			b->devices = gd_device_count(runtime(order[i]), b->detail, sizeof b->detail);
		}
	}
	return n;
}

void gpu_auto_device(enum gpu_kind *kind, int *device)
{
	char detail[256];

	*device = 0;
	if (gd_device_count(&gd_cuda_runtime, detail, sizeof detail) > 0)
		*kind = GPU_CUDA;
	else if (gd_device_count(&gd_hip_runtime, detail, sizeof detail) > 0)
		*kind = GPU_HIP;
	else
		*kind = GPU_HOST;
}

int gpu_alloc(enum gpu_kind kind, int device, uint64_t bytes, struct gpu_buffer **out, char *err,
	      size_t errlen)
{
	struct gpu_buffer *b;
	int rc;

	*out = NULL;
	if (!gpu_kind_name(kind))
		return gd_fail(-EINVAL, err, errlen, "no such backend (%d)", (int)kind);
	if (device < 0 || (kind == GPU_HOST && device != 0))
		return gd_fail(-EINVAL, err, errlen, "%s: no device %d", gpu_kind_name(kind), device);
	/* Room for the rounding below, and for size_t on 32-bit machines. */
	if (bytes > (uint64_t)SIZE_MAX - GPU_ALIGN || bytes > (uint64_t)INT64_MAX - GPU_ALIGN)
		return gd_fail(-EINVAL, err, errlen, "%s: %llu bytes is too large",
			       gpu_kind_name(kind), (unsigned long long)bytes);
	if (!(b = calloc(1, sizeof *b)))
		return gd_fail(-ENOMEM, err, errlen, "out of memory");
	b->kind = kind;
	b->device = device;
	b->bytes = bytes;
	b->capacity = bytes ? (bytes + GPU_ALIGN - 1) / GPU_ALIGN * GPU_ALIGN : GPU_ALIGN;
	b->fd = -1;
	if (kind == GPU_HOST)
		rc = gd_host_alloc(b, err, errlen);
	else
		rc = gd_device_alloc(runtime(kind), device, b, err, errlen);
	if (rc < 0) {
		free(b);
		return rc;
	}
	*out = b;
	return 0;
}

int gpu_upload(struct gpu_buffer *b, const struct gpu_range *ranges, size_t n,
	       const struct gpu_upload_opts *opts, struct gpu_upload_stats *stats, char *err,
	       size_t errlen)
{
	struct gpu_upload_opts o = { 0 };
	struct gpu_upload_stats st = { .path = "" };
	double t0 = gd_now();
	int rc;

	if (opts)
		o = *opts;
	if (stats)
		*stats = st;
	if (!b || (n && !ranges))
		return gd_fail(-EINVAL, err, errlen, "no buffer or no ranges");
	for (size_t i = 0; i < n; i++) {
		const struct gpu_range *r = &ranges[i];

		if (r->fd < 0 && !r->read)
			return gd_fail(-EBADF, err, errlen, "range %zu: no file", i);
		if (r->dst_offset > b->bytes || r->nbytes > b->bytes - r->dst_offset)
			return gd_fail(-EINVAL, err, errlen,
				       "range %zu: %llu bytes at %llu end past the buffer's %llu", i,
				       (unsigned long long)r->nbytes,
				       (unsigned long long)r->dst_offset,
				       (unsigned long long)b->bytes);
		if (r->file_offset > (uint64_t)INT64_MAX - r->nbytes)
			return gd_fail(-EINVAL, err, errlen, "range %zu: file offset %llu too large",
				       i, (unsigned long long)r->file_offset);
		st.bytes += r->nbytes;
	}
	if (o.chunk_bytes == 0)
		o.chunk_bytes = GD_DEFAULT_CHUNK;
	if (o.chunk_bytes > (1u << 30))
		o.chunk_bytes = 1u << 30;
	o.readers = gd_readers(o.readers);

	if (b->kind == GPU_HOST)
		rc = gd_host_upload(b, ranges, n, o.readers, o.chunk_bytes, &st, err, errlen);
	else
		rc = gd_device_upload(b, ranges, n, o.readers, o.chunk_bytes, o.flags, &st, err,
				      errlen);
	st.seconds = gd_now() - t0;
	if (stats)
		*stats = st;
	return rc;
}

int gpu_read(const struct gpu_buffer *b, uint64_t off, void *dst, uint64_t nbytes, char *err,
	     size_t errlen)
{
	if (off > b->bytes || nbytes > b->bytes - off)
		return gd_fail(-EINVAL, err, errlen, "read of %llu bytes at %llu is past the end (%llu)",
			       (unsigned long long)nbytes, (unsigned long long)off,
			       (unsigned long long)b->bytes);
	if (b->kind == GPU_HOST) {
		memcpy(dst, (const char *)b->ptr + off, (size_t)nbytes);
		return 0;
	}
	return gd_device_read(b, off, dst, nbytes, err, errlen);
}

int gpu_handle(const struct gpu_buffer *b, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";

	if (b->kind == GPU_HOST) {
		size_t l = strlen(b->path);

		if (outlen <= l)
			return -ENOSPC;
		memcpy(out, b->path, l + 1);
		return (int)l;
	}
	if (outlen <= 2 * GD_IPC_BYTES)
		return -ENOSPC;
	for (size_t i = 0; i < GD_IPC_BYTES; i++) {
		out[2 * i] = hex[b->ipc[i] >> 4];
		out[2 * i + 1] = hex[b->ipc[i] & 15];
	}
	out[2 * GD_IPC_BYTES] = 0;
	return 2 * GD_IPC_BYTES;
}

enum gpu_kind gpu_buffer_kind(const struct gpu_buffer *b)
{
	return b->kind;
}

int gpu_buffer_device(const struct gpu_buffer *b)
{
	return b->device;
}

uint64_t gpu_buffer_bytes(const struct gpu_buffer *b)
{
	return b->bytes;
}

void gpu_free(struct gpu_buffer *b)
{
	if (!b)
		return;
	if (b->kind == GPU_HOST)
		gd_host_free(b);
	else
		gd_device_free(b);
	free(b);
}
