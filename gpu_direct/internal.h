/*
 * gpu_direct internals shared by its files; not for callers (they use gpu.h).
 *
 *   gpu.c      the public entry points: argument checks, dispatch to a backend
 *   staging.c  reader threads: parallel preads into memory, and the pinned-buffer pipeline
 *   device.c   a GPU backend written once over a table of runtime calls (struct gd_runtime)
 *   cuda.c     that table from the dlopen'd CUDA runtime, plus GPUDirect Storage (libcufile)
 *   hip.c      that table from the dlopen'd HIP runtime
 *   host.c     the /dev/shm backend
 */
#ifndef SAFETENSORSFS_GPU_INTERNAL_H
#define SAFETENSORSFS_GPU_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>

#include "gpu.h"

#define GD_IPC_BYTES 64 /* sizeof(cudaIpcMemHandle_t) == sizeof(hipIpcMemHandle_t) */
/* Small enough that the staging slots stay in the CPU's cache: 2 MiB pieces uploaded at
 * 1.8x the speed of 8 MiB ones on an H100 (docs/BENCHMARKS.md). */
#define GD_DEFAULT_CHUNK (2u << 20)
#define GD_MAX_READERS 64
#define GD_DEFAULT_MAX_READERS 8
#define GD_MAX_STAGING (1ull << 30) /* pinned staging memory of one upload, at most */

struct gd_runtime;

struct gpu_buffer {
	enum gpu_kind kind;
	int device;
	uint64_t bytes;    /* as asked */
	uint64_t capacity; /* as allocated: bytes rounded up to GPU_ALIGN, at least GPU_ALIGN */
	void *ptr;         /* device pointer, or the host mapping */
	/* cuda, hip */
	const struct gd_runtime *rt;
	unsigned char ipc[GD_IPC_BYTES];
	/* host */
	int fd;
	char path[64];
};

/* The calls of a GPU runtime that device.c needs, each returning 0 or a negative errno with
 * a message in err (prefixed by nothing: device.c adds the backend's name). */
struct gd_runtime {
	enum gpu_kind kind;
	const char *name;
	/* Loads the runtime if not yet done; 0, or -ENODEV and why. */
	int (*load)(char *err, size_t errlen);
	/* Usable devices, and a line about the runtime for gpu_backends. */
	int (*devices)(int *count, char *detail, size_t detaillen);
	int (*set_device)(int device, char *err, size_t errlen);
	int (*dev_alloc)(void **ptr, size_t bytes, char *err, size_t errlen);
	void (*dev_free)(void *ptr);
	int (*ipc_handle)(void *ptr, unsigned char out[GD_IPC_BYTES], char *err, size_t errlen);
	/* Pinned host memory; -ENOMEM when the runtime refuses. */
	int (*host_alloc)(void **ptr, size_t bytes, char *err, size_t errlen);
	void (*host_free)(void *ptr);
	int (*stream_create)(void **stream, char *err, size_t errlen);
	void (*stream_destroy)(void *stream);
	int (*h2d_async)(void *dst, const void *src, size_t n, void *stream, char *err,
			 size_t errlen);
	int (*stream_sync)(void *stream, char *err, size_t errlen);
	int (*d2h)(void *dst, const void *src, size_t n, char *err, size_t errlen);
	/* Optional (NULL for hip): copy the ranges straight from storage to b->ptr (GPUDirect
	 * Storage), on `readers` threads in pieces of chunk bytes. Returns 1 when done, 0 when
	 * it does not apply here (note says why, and nothing was copied), or a negative errno.
	 * flags: GPU_UPLOAD_FORCE_GDS. Called with b's device current. */
	int (*direct)(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned readers,
		      uint64_t chunk, unsigned flags, char *note, size_t notelen, char *err,
		      size_t errlen);
};

extern const struct gd_runtime gd_cuda_runtime;
extern const struct gd_runtime gd_hip_runtime;

/* device.c: the cuda and hip backends. */
int gd_device_alloc(const struct gd_runtime *rt, int device, struct gpu_buffer *b, char *err,
		    size_t errlen);
int gd_device_upload(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned readers,
		     uint64_t chunk, unsigned flags, struct gpu_upload_stats *st, char *err,
		     size_t errlen);
int gd_device_read(const struct gpu_buffer *b, uint64_t off, void *dst, uint64_t n, char *err,
		   size_t errlen);
void gd_device_free(struct gpu_buffer *b);
int gd_device_count(const struct gd_runtime *rt, char *detail, size_t detaillen);

/* dlopen()s the library named by the environment variable env if set, else the first of
 * names (NULL-terminated) that opens; its name goes to libname. NULL and why if none. */
void *gd_dlopen_first(const char *env, const char *const *names, char *libname, size_t len,
		      char *why, size_t whylen);

/* host.c */
int gd_host_alloc(struct gpu_buffer *b, char *err, size_t errlen);
int gd_host_upload(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned readers,
		   uint64_t chunk, struct gpu_upload_stats *st, char *err, size_t errlen);
void gd_host_free(struct gpu_buffer *b);

/* staging.c */

/* Calls fn(ctx, piece) for every piece of at most chunk bytes of every range, on `threads`
 * threads (the caller's among them), in no set order; stops at the first error. */
typedef int (*gd_piece_fn)(void *ctx, const struct gpu_range *piece, char *err, size_t errlen);
int gd_parallel(const struct gpu_range *r, size_t n, uint64_t chunk, unsigned threads,
		gd_piece_fn fn, void *ctx, char *err, size_t errlen);

/* Reads len bytes at off of fd into buf, all of them: -EIO if the file ends first. */
/* How many pieces of at most chunk bytes the ranges make. */
uint64_t gd_count_pieces(const struct gpu_range *r, size_t n, uint64_t chunk);
int gd_pread_full(int fd, void *buf, size_t len, uint64_t off, char *err, size_t errlen);
/* The same for range R's source: its fd, or its read function. */
int gd_read_range(const struct gpu_range *r, void *buf, size_t len, uint64_t off, char *err, size_t errlen);

/* A consumer of filled staging buffers: submit starts moving slot's len bytes at src to
 * dst_offset (may return before the copy is done); complete waits until it is done.
 * Both are called on gd_pipeline's caller's thread only. */
struct gd_sink {
	void *ctx;
	int (*submit)(void *ctx, unsigned slot, const void *src, uint64_t dst_offset, size_t len,
		      char *err, size_t errlen);
	int (*complete)(void *ctx, unsigned slot, char *err, size_t errlen);
};

/* Reader threads pread pieces of the ranges into the nslots buffers slots[i] (slot_bytes
 * each) while the calling thread hands filled ones to sink and gives them back once
 * complete. Every submitted slot is completed before this returns, error or not. */
int gd_pipeline(const struct gpu_range *r, size_t n, void *const *slots, unsigned nslots,
		size_t slot_bytes, unsigned readers, const struct gd_sink *sink, char *err,
		size_t errlen);

/* The number of readers to use when the caller asked for `asked` (0: default). */
unsigned gd_readers(unsigned asked);

/* err helpers: snprintf into err if err is non-NULL; returns rc. */
int gd_fail(int rc, char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* snprintf without -Wformat-truncation's complaints: messages are cut short on purpose. */
int gd_say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
double gd_now(void);

#endif
