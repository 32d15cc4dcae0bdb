/*
 * The cuda and hip backends, written once over struct gd_runtime: one device allocation per
 * buffer, exported by an IPC handle; uploads by the runtime's direct path (GPUDirect
 * Storage) where it has one and it applies, else through pinned staging buffers (pageable
 * ones if pinned memory cannot be had) with one stream per buffer.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *gd_dlopen_first(const char *env, const char *const *names, char *libname, size_t len,
			char *why, size_t whylen)
{
	const char *path = secure_getenv(env);
	void *lib;

	if (path && *path) {
		if ((lib = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
			gd_say(libname, len, "%s", path);
			return lib;
		}
		gd_say(why, whylen, "%s=%s: %s", env, path, dlerror());
		return NULL;
	}
	for (size_t i = 0; names[i]; i++)
		if ((lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL))) {
			gd_say(libname, len, "%s", names[i]);
			return lib;
		}
	gd_say(why, whylen, "%s not found, nor any other version of it (%s=PATH names one)",
		 names[0], env);
	return NULL;
}

int gd_device_count(const struct gd_runtime *rt, char *detail, size_t detaillen)
{
	int count = 0;

	if (rt->load(detail, detaillen) < 0)
		return 0;
	if (rt->devices(&count, detail, detaillen) < 0)
		return 0;
	return count;
}

int gd_device_alloc(const struct gd_runtime *rt, int device, struct gpu_buffer *b, char *err,
		    size_t errlen)
{
	char msg[256];
	int count = 0, rc;

	if ((rc = rt->load(msg, sizeof msg)) < 0)
		return gd_fail(rc, err, errlen, "%s: %s", rt->name, msg);
	if ((rc = rt->devices(&count, msg, sizeof msg)) < 0)
		return gd_fail(rc, err, errlen, "%s: %s", rt->name, msg);
	if (device < 0 || device >= count)
		return gd_fail(-ENODEV, err, errlen, "%s:%d: no such device (%d %s device%s: %s)",
			       rt->name, device, count, rt->name, count == 1 ? "" : "s", msg);
	if ((rc = rt->set_device(device, msg, sizeof msg)) < 0)
		return gd_fail(rc, err, errlen, "%s:%d: %s", rt->name, device, msg);
	if ((rc = rt->dev_alloc(&b->ptr, (size_t)b->capacity, msg, sizeof msg)) < 0)
		return gd_fail(rc, err, errlen, "%s:%d: allocating %llu bytes: %s", rt->name,
			       device, (unsigned long long)b->capacity, msg);
	if ((rc = rt->ipc_handle(b->ptr, b->ipc, msg, sizeof msg)) < 0) {
		rt->dev_free(b->ptr);
		b->ptr = NULL;
		return gd_fail(rc, err, errlen, "%s:%d: IPC handle: %s", rt->name, device, msg);
	}
	b->rt = rt;
	return 0;
}

void gd_device_free(struct gpu_buffer *b)
{
	char msg[256];

	if (!b->ptr)
		return;
	b->rt->set_device(b->device, msg, sizeof msg);
	b->rt->dev_free(b->ptr);
	b->ptr = NULL;
}

int gd_device_read(const struct gpu_buffer *b, uint64_t off, void *dst, uint64_t n, char *err,
		   size_t errlen)
{
	char msg[256];
	int rc;

	if (n == 0)
		return 0;
	if ((rc = b->rt->set_device(b->device, msg, sizeof msg)) < 0 ||
	    (rc = b->rt->d2h(dst, (char *)b->ptr + off, (size_t)n, msg, sizeof msg)) < 0)
		return gd_fail(rc, err, errlen, "%s:%d: reading back: %s", b->rt->name, b->device,
			       msg);
	return 0;
}

/* The staging pipeline's sink: slot i's copies go on stream i. */
struct staged {
	struct gpu_buffer *b;
	void **streams;
};

static int staged_submit(void *ctx, unsigned slot, const void *src, uint64_t dst_offset,
			 size_t len, char *err, size_t errlen)
{
	struct staged *s = ctx;

	return s->b->rt->h2d_async((char *)s->b->ptr + dst_offset, src, len, s->streams[slot], err,
				   errlen);
}

static int staged_complete(void *ctx, unsigned slot, char *err, size_t errlen)
{
	struct staged *s = ctx;

	return s->b->rt->stream_sync(s->streams[slot], err, errlen);
}

static int upload_staged(struct gpu_buffer *b, const struct gpu_range *r, size_t n,
			 unsigned readers, uint64_t chunk, struct gpu_upload_stats *st, char *err,
			 size_t errlen)
{
	const struct gd_runtime *rt = b->rt;
	uint64_t pieces = gd_count_pieces(r, n, chunk), stride;
	unsigned nslots;
	void *block = NULL, **slots = NULL, **streams = NULL;
	int pinned = 1, rc = 0;
	unsigned nstreams = 0;
	char msg[256];

	if (pieces == 0) {
		st->path = "pinned";
		return 0;
	}
	/* Two buffers per reader (one filling while the other's copy runs), no more than there
	 * are pieces to stage. */
	nslots = 2 * readers;
	if (nslots > pieces)
		nslots = (unsigned)pieces;
	/* Each slot starts on a page: DMA engines like that. */
	stride = (chunk + 4095) / 4096 * 4096;
	/* No more than GD_MAX_STAGING of pinned memory, but always two slots to alternate. */
	if (nslots > 2 && (uint64_t)nslots * stride > GD_MAX_STAGING)
		nslots = GD_MAX_STAGING / stride > 2 ? (unsigned)(GD_MAX_STAGING / stride) : 2;
	if (readers > nslots)
		readers = nslots;

	if (rt->host_alloc(&block, (size_t)(nslots * stride), msg, sizeof msg) < 0) {
		size_t l = strlen(st->note);

		pinned = 0;
		gd_say(st->note + l, sizeof st->note - l, "%sno pinned memory (%s): pageable staging",
			 l ? "; " : "", msg);
		block = aligned_alloc(4096, (size_t)(nslots * stride));
		if (!block)
			return gd_fail(-ENOMEM, err, errlen, "%s:%d: no memory for %u staging buffers",
				       rt->name, b->device, nslots);
	}
	slots = calloc(nslots, sizeof *slots);
	streams = calloc(nslots, sizeof *streams);
	if (!slots || !streams) {
		rc = gd_fail(-ENOMEM, err, errlen, "%s: out of memory", rt->name);
		goto out;
	}
	for (unsigned i = 0; i < nslots; i++)
		slots[i] = (char *)block + (size_t)(i * stride);
	for (; nstreams < nslots; nstreams++)
		if ((rc = rt->stream_create(&streams[nstreams], msg, sizeof msg)) < 0) {
			rc = gd_fail(rc, err, errlen, "%s:%d: creating a stream: %s", rt->name,
				     b->device, msg);
			goto out;
		}

	struct staged ctx = { .b = b, .streams = streams };
	struct gd_sink sink = { .ctx = &ctx, .submit = staged_submit, .complete = staged_complete };

	rc = gd_pipeline(r, n, slots, nslots, (size_t)chunk, readers, &sink, msg, sizeof msg);
	if (rc < 0)
		gd_fail(rc, err, errlen, "%s:%d: %s", rt->name, b->device, msg);
	st->path = pinned ? "pinned" : "pageable";
out:
	for (unsigned i = 0; i < nstreams; i++)
		rt->stream_destroy(streams[i]);
	free(streams);
	free(slots);
	if (pinned)
		rt->host_free(block);
	else
		free(block);
	return rc;
}

int gd_device_upload(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned readers,
		     uint64_t chunk, unsigned flags, struct gpu_upload_stats *st, char *err,
		     size_t errlen)
{
	const struct gd_runtime *rt = b->rt;
	char msg[256], note[192] = "";
	int rc;

	if ((rc = rt->set_device(b->device, msg, sizeof msg)) < 0)
		return gd_fail(rc, err, errlen, "%s:%d: %s", rt->name, b->device, msg);

	if (flags & GPU_UPLOAD_NO_GDS) {
		gd_say(note, sizeof note, "gds: not asked for");
	} else if (!rt->direct) {
		gd_say(note, sizeof note, "gds: %s has no GPUDirect Storage path", rt->name);
	} else {
		rc = rt->direct(b, r, n, readers, chunk, flags, note, sizeof note, msg, sizeof msg);
		if (rc == 1) {
			st->path = "gds";
			return 0;
		}
		if (rc < 0) {
			if (flags & GPU_UPLOAD_REQUIRE_GDS)
				return gd_fail(rc, err, errlen, "%s:%d: gds: %s", rt->name,
					       b->device, msg);
			/* Staging rewrites every byte, so a half-done direct upload is harmless. */
			gd_say(note, sizeof note, "gds failed (%s): staged instead", msg);
		}
	}
	if (flags & GPU_UPLOAD_REQUIRE_GDS)
		return gd_fail(-ENOTSUP, err, errlen, "%s:%d: %s", rt->name, b->device, note);
	gd_say(st->note, sizeof st->note, "%s", note);
	return upload_staged(b, r, n, readers, chunk, st, err, errlen);
}
