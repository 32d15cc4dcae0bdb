/*
 * gpu_direct: put byte ranges of files into one buffer on a GPU (CUDA or ROCm HIP) or in
 * shared host memory, and export that buffer so that other processes can map it.
 *
 * Knows nothing of FUSE, JSON or safetensors: a caller (fs/control.c) turns tensors into
 * struct gpu_range (backing file descriptor, byte range, place in the buffer) and replies to
 * its clients with gpu_handle()'s string.
 *
 *   struct gpu_buffer *b;
 *   char err[256];
 *   int rc = gpu_alloc(GPU_CUDA, 0, total, &b, err, sizeof err);       // one cudaMalloc
 *   if (rc == 0)
 *           rc = gpu_upload(b, ranges, n, NULL, &stats, err, sizeof err);
 *   if (rc == 0)
 *           gpu_handle(b, hex, sizeof hex);   // cudaIpcMemHandle_t as 128 hex digits
 *   ...                                       // clients map it for as long as it lives
 *   gpu_free(b);
 *
 * Backends (all three are compiled into every build; gpu_built_backends() names them):
 *   cuda  the CUDA runtime, loaded with dlopen on first use (SAFETENSORSFS_CUDART=PATH, else
 *         libcudart.so.13, .12, .11.0, libcudart.so, then the same under /usr/local/cuda/lib64).
 *         Upload: GPUDirect Storage through libcufile (also dlopened: SAFETENSORSFS_CUFILE=PATH,
 *         else libcufile.so.0) when its nvidia-fs driver serves the backing file's filesystem;
 *         otherwise reader threads pread into pinned staging buffers (cudaHostAlloc) while
 *         cudaMemcpyAsync on one stream per buffer moves the filled ones to the device;
 *         pageable buffers if pinned memory cannot be had. Handle: cudaIpcGetMemHandle.
 *   hip   the same through libamdhip64.so (SAFETENSORSFS_HIP=PATH, else libamdhip64.so,
 *         .so.6, .so.5, /opt/rocm/lib/libamdhip64.so): hipHostMalloc, hipMemcpyAsync,
 *         hipIpcGetMemHandle. No GPUDirect Storage path.
 *   host  a 0600 file in /dev/shm, filled by reader threads preading straight into it.
 *         Handle: its path, for clients to open and mmap. Always there; for machines
 *         without a GPU and for tests.
 * A missing runtime, driver or device is an error reply from gpu_alloc (-ENODEV and a
 * message) and a count of 0 from gpu_backends, never a crash or a failed mount.
 *
 * Errors: functions that can fail return 0 or a negative errno and, where they take
 * (err, errlen), write a one-line message (no trailing newline) into err.
 *
 * Threads: every function may be called from any thread. One buffer may be uploaded to from
 * several threads at once (ranges are independent); gpu_free must not race with other
 * calls on the same buffer. Upload creates its reader threads itself and joins them before
 * it returns.
 *
 * Global state: none, except in cuda.c and hip.c, where the dlopen'd runtime's handle and a
 * table of its function pointers are filled once under pthread_once and only read after
 * that (the libraries are never unloaded). Nothing here touches a GPU runtime before the
 * first call that needs one (gpu_backends, gpu_auto_device, gpu_alloc): CUDA and HIP do not
 * survive fork, so a daemon should make those calls only after it has detached.
 */
#ifndef SAFETENSORSFS_GPU_H
#define SAFETENSORSFS_GPU_H

#include <stddef.h>
#include <stdint.h>

enum gpu_kind { GPU_HOST = 0, GPU_CUDA = 1, GPU_HIP = 2 };

/* A buffer on a device (or in /dev/shm), opaque. */
struct gpu_buffer;

/* Every range's place in a buffer (dst_offset) should be a multiple of this (the contract's
 * tensor alignment); gpu_upload accepts any offset, but GPU copies are fastest aligned. */
#define GPU_ALIGN 256

/* Longest string gpu_handle writes, with its NUL: 128 hex digits of an IPC handle, or a
 * /dev/shm path. */
#define GPU_HANDLE_MAX 160

/* Reads exactly len bytes at off of a source that is no file (a remote object): 0 or a
 * negative errno. */
typedef int gpu_read_fn(void *ctx, void *buf, size_t len, uint64_t off);

/* One contiguous run of bytes to copy: nbytes bytes of the file open as fd, from
 * file_offset, to dst_offset in the buffer. fd is only pread, never moved or closed.
 * With fd -1, the bytes come from read(read_ctx, ...) instead, never by GPUDirect. */
struct gpu_range {
	int fd;
	uint64_t file_offset;
	uint64_t nbytes;
	uint64_t dst_offset;
	gpu_read_fn *read;
	void *read_ctx;
};

/* What one backend can do on this machine now (gpu_backends). */
struct gpu_backend_info {
	enum gpu_kind kind;
	const char *name;  /* "cuda", "hip", "host" */
	int devices;       /* usable devices: 0 when the runtime, driver or GPU is missing */
	char detail[192];  /* e.g. "CUDA runtime 12.8 (libcudart.so.12), driver 12.8",
			    * "/dev/shm", or why devices is 0 */
};

/* Tuning for gpu_upload; NULL or zeroed fields take the defaults. */
struct gpu_upload_opts {
	unsigned readers;     /* reader threads (default: online CPUs, at most 8) */
	uint64_t chunk_bytes; /* bytes per pread and per staging buffer (default 2 MiB) */
	unsigned flags;       /* GPU_UPLOAD_* */
};
#define GPU_UPLOAD_NO_GDS 1u      /* never use GPUDirect Storage */
#define GPU_UPLOAD_REQUIRE_GDS 2u /* fail (-ENOTSUP) rather than upload another way */
/* Use libcufile even where its nvidia-fs driver does not serve the file's filesystem (it
 * then reads in its compatibility mode, through its own host buffers): for tests and
 * measurements of the cuFile path on machines without GPUDirect Storage. */
#define GPU_UPLOAD_FORCE_GDS 4u

/* What gpu_upload did. */
struct gpu_upload_stats {
	double seconds;   /* wall time of the whole call, setup and staging buffers included */
	uint64_t bytes;   /* sum of the ranges' nbytes */
	const char *path; /* "gds", "pinned", "pageable" or "host" (a static string) */
	char note[192];   /* why a faster path was not taken, or "" */
};

/* "cuda hip host": the backends compiled in, for --version. Loads nothing. */
const char *gpu_built_backends(void);

/* "cuda", "hip", "host"; NULL for anything else. */
const char *gpu_kind_name(enum gpu_kind kind);

/* Parses a device name: "host", "cuda", "cuda:N", "hip", "hip:N" ("cuda" is "cuda:0";
 * N is decimal, below 1024). Returns 0, or -EINVAL for anything else. */
int gpu_parse_device(const char *s, enum gpu_kind *kind, int *device);

/* Writes "cuda:0", "hip:1" or "host" into out; returns what snprintf returns. */
int gpu_device_name(enum gpu_kind kind, int device, char *out, size_t outlen);

/* Fills out[0..] with one entry per built backend (cuda, hip, host, in that order; at most
 * max) and returns how many it wrote. Loads the GPU runtimes on first call. Never fails:
 * a backend that cannot be used says so with devices = 0 and a detail. */
size_t gpu_backends(struct gpu_backend_info *out, size_t max);

/* The device "-o gpu=auto" means: cuda:0 if CUDA has a device, else hip:0 if HIP has one,
 * else host. */
void gpu_auto_device(enum gpu_kind *kind, int *device);

/* Allocates a buffer of bytes bytes (0 is allowed; contents undefined until uploaded, zero
 * for host) on the device and makes it exportable: one cudaMalloc / hipMalloc, or one
 * /dev/shm file, of bytes rounded up to GPU_ALIGN. -ENODEV: no such runtime or device;
 * -ENOMEM / -ENOSPC: no room; -EINVAL: bad kind, device or size. */
int gpu_alloc(enum gpu_kind kind, int device, uint64_t bytes, struct gpu_buffer **out, char *err,
	      size_t errlen);

/* Copies every range into the buffer by the fastest path the machine has (see the top of
 * this file), and returns once all bytes are on the device. A range past the buffer's end
 * is -EINVAL and a negative fd without a read function -EBADF, and nothing is copied; a file that ends before a
 * range does is -EIO; other read errors are pread's (negated). On error the buffer's
 * contents are undefined. opts and stats may be NULL; stats is filled on error too. */
int gpu_upload(struct gpu_buffer *b, const struct gpu_range *ranges, size_t n,
	       const struct gpu_upload_opts *opts, struct gpu_upload_stats *stats, char *err,
	       size_t errlen);

/* Copies nbytes from offset off of the buffer back into host memory at dst (for checks and
 * small reads; not a fast path). -EINVAL when the range is past the end. */
int gpu_read(const struct gpu_buffer *b, uint64_t off, void *dst, uint64_t nbytes, char *err,
	     size_t errlen);

/* The string clients use to map the buffer: for cuda and hip the IPC memory handle
 * (cudaIpcMemHandle_t / hipIpcMemHandle_t, 64 bytes, of the whole allocation: offsets
 * count from the pointer cudaIpcOpenMemHandle gives) as 128 lower-case hex digits; for
 * host the absolute path of the 0600 shared-memory file (/dev/shm/safetensorsfs-PID-RANDOM,
 * of the buffer's size rounded up to GPU_ALIGN), which clients open and mmap. Returns its
 * length, or -ENOSPC (and writes nothing) when outlen is too small; GPU_HANDLE_MAX always
 * suffices. */
int gpu_handle(const struct gpu_buffer *b, char *out, size_t outlen);

/* The buffer's kind, device and size in bytes (as asked of gpu_alloc). */
enum gpu_kind gpu_buffer_kind(const struct gpu_buffer *b);
int gpu_buffer_device(const struct gpu_buffer *b);
uint64_t gpu_buffer_bytes(const struct gpu_buffer *b);

/* Frees the device memory (or unlinks and unmaps the shared-memory file). Clients that have
 * a host buffer mapped keep their mapping; a GPU buffer must not be freed while clients use
 * it (CUDA leaves that undefined). NULL is a no-op. */
void gpu_free(struct gpu_buffer *b);

#endif
