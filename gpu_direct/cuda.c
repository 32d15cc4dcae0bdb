/*
 * The cuda backend's runtime table (struct gd_runtime, used by device.c): the CUDA runtime
 * loaded with dlopen, so that one binary runs with or without it; and its direct path,
 * GPUDirect Storage through libcufile, also dlopened.
 *
 * Compiled against our own declarations of the CUDA runtime (cuda_abi.h: its gd_-prefixed
 * names are CUDA's), so no toolkit is needed to build; where the toolkit's headers are found,
 * cuda_abi_check.c compares those declarations with them at compile time, so a toolkit that
 * changes a prototype or value breaks the build instead of miscalling. GPUDirect Storage's
 * names come from cufile.h where installed, else cufile_abi.h (checked below against
 * cufile.h wherever it is found).
 *
 * Global state: `cu` and `cf`, each filled once under its pthread_once and only read after
 * (the libraries stay loaded for the life of the process).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "cuda_abi.h"

#if __has_include(<cufile.h>)
#include <cufile.h>
#define HAVE_CUFILE_H 1
#else
#include "cufile_abi.h"
#define HAVE_CUFILE_H 0
#endif

#include "internal.h"

_Static_assert(sizeof(gd_cudaIpcMemHandle_t) == GD_IPC_BYTES, "cudaIpcMemHandle_t is not 64 bytes");

/* ---- the CUDA runtime ---- */

#define TYPEDEF(ret, name, params) typedef ret(*name##_fn) params;
#define MEMBER(ret, name, params) name##_fn name;
#define LOOKUP(ret, name, params)                                                              \
	if (!(cu.name = (name##_fn)dlsym(cu.lib, #name))) {                                    \
		gd_say(cu.why, sizeof cu.why, "%s has no %s", cu.libname, #name);            \
		return;                                                                        \
	}

GD_CUDA_CALLS(TYPEDEF)

static struct {
	void *lib;
	char libname[128];
	int loaded;    /* 1 when every function was found */
	char why[256]; /* why not */
	int runtime_version;
	GD_CUDA_CALLS(MEMBER)
} cu;
static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

static void cu_load_once(void)
{
	static const char *const names[] = {
		"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so",
		"/usr/local/cuda/lib64/libcudart.so.13", "/usr/local/cuda/lib64/libcudart.so.12",
		"/usr/local/cuda/lib64/libcudart.so", NULL,
	};

	cu.lib = gd_dlopen_first("SAFETENSORSFS_CUDART", names, cu.libname, sizeof cu.libname, cu.why,
			    sizeof cu.why);
	if (!cu.lib)
		return;
	GD_CUDA_CALLS(LOOKUP)
	if (cu.cudaRuntimeGetVersion(&cu.runtime_version) != gd_cudaSuccess)
		cu.runtime_version = 0;
	cu.loaded = 1;
}

static int cu_load(char *err, size_t errlen)
{
	pthread_once(&cu_once, cu_load_once);
	if (!cu.loaded)
		return gd_fail(-ENODEV, err, errlen, "%s", cu.why);
	return 0;
}

static int cu_errno(gd_cudaError_t e)
{
	switch (e) {
	case gd_cudaErrorMemoryAllocation:
		return -ENOMEM;
	case gd_cudaErrorNoDevice:
	case gd_cudaErrorInvalidDevice:
	case gd_cudaErrorInsufficientDriver:
	case gd_cudaErrorDevicesUnavailable:
		return -ENODEV;
	case gd_cudaErrorNotSupported:
		return -ENOTSUP;
	default:
		return -EIO;
	}
}

static int cu_fail(gd_cudaError_t e, const char *call, char *err, size_t errlen)
{
	const char *s = cu.cudaGetErrorString(e);

	return gd_fail(cu_errno(e), err, errlen, "%s: %s (cudaError %d)", call,
		       s ? s : "unknown error", (int)e);
}

#define CU_TRY(call, name)                                                                     \
	do {                                                                                   \
		gd_cudaError_t e_ = (call);                                                    \
		if (e_ != gd_cudaSuccess)                                                      \
			return cu_fail(e_, name, err, errlen);                                 \
	} while (0)

static int cu_devices(int *count, char *detail, size_t len)
{
	int drv = 0;
	gd_cudaError_t e;

	*count = 0;
	e = cu.cudaGetDeviceCount(count);
	cu.cudaDriverGetVersion(&drv);
	if (e != gd_cudaSuccess) {
		*count = 0;
		gd_say(detail, len, "CUDA runtime %d.%d (%s): %s", cu.runtime_version / 1000,
			 cu.runtime_version % 1000 / 10, cu.libname, cu.cudaGetErrorString(e));
		return 0;
	}
	gd_say(detail, len, "CUDA runtime %d.%d (%s), driver %d.%d", cu.runtime_version / 1000,
		 cu.runtime_version % 1000 / 10, cu.libname, drv / 1000, drv % 1000 / 10);
	return 0;
}

static int cu_set_device(int device, char *err, size_t errlen)
{
	CU_TRY(cu.cudaSetDevice(device), "cudaSetDevice");
	return 0;
}

static int cu_dev_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	CU_TRY(cu.cudaMalloc(ptr, bytes), "cudaMalloc");
	return 0;
}

static void cu_dev_free(void *ptr)
{
	cu.cudaFree(ptr);
}

static int cu_ipc_handle(void *ptr, unsigned char out[GD_IPC_BYTES], char *err, size_t errlen)
{
	gd_cudaIpcMemHandle_t h;

	CU_TRY(cu.cudaIpcGetMemHandle(&h, ptr), "cudaIpcGetMemHandle");
	memcpy(out, &h, GD_IPC_BYTES);
	return 0;
}

static int cu_host_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	CU_TRY(cu.cudaHostAlloc(ptr, bytes, gd_cudaHostAllocPortable), "cudaHostAlloc");
	return 0;
}

static void cu_host_free(void *ptr)
{
	cu.cudaFreeHost(ptr);
}

static int cu_stream_create(void **stream, char *err, size_t errlen)
{
	gd_cudaStream_t s;

	CU_TRY(cu.cudaStreamCreateWithFlags(&s, gd_cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
	*stream = s;
	return 0;
}

static void cu_stream_destroy(void *stream)
{
	cu.cudaStreamDestroy((gd_cudaStream_t)stream);
}

static int cu_h2d_async(void *dst, const void *src, size_t n, void *stream, char *err,
			size_t errlen)
{
	CU_TRY(cu.cudaMemcpyAsync(dst, src, n, gd_cudaMemcpyHostToDevice, (gd_cudaStream_t)stream),
	       "cudaMemcpyAsync");
	return 0;
}

static int cu_stream_sync(void *stream, char *err, size_t errlen)
{
	CU_TRY(cu.cudaStreamSynchronize((gd_cudaStream_t)stream), "cudaStreamSynchronize");
	return 0;
}

static int cu_d2h(void *dst, const void *src, size_t n, char *err, size_t errlen)
{
	CU_TRY(cu.cudaMemcpy(dst, src, n, gd_cudaMemcpyDeviceToHost), "cudaMemcpy");
	return 0;
}

/* ---- GPUDirect Storage (libcufile) ---- */

#define CUFILE_CALLS(X)                                                                        \
	X(CUfileError_t, cuFileDriverOpen, (void))                                             \
	X(CUfileError_t, cuFileDriverGetProperties, (CUfileDrvProps_t * props))                \
	X(CUfileError_t, cuFileHandleRegister, (CUfileHandle_t * fh, CUfileDescr_t * descr))   \
	X(void, cuFileHandleDeregister, (CUfileHandle_t fh))                                   \
	X(CUfileError_t, cuFileBufRegister, (const void *bufPtr_base, size_t length, int flags)) \
	X(CUfileError_t, cuFileBufDeregister, (const void *bufPtr_base))                       \
	X(ssize_t, cuFileRead,                                                                 \
	  (CUfileHandle_t fh, void *bufPtr_base, size_t size, off_t file_offset,               \
	   off_t bufPtr_offset))

#undef CHECK
#define CHECK(ret, name, params)                                                               \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&name), name##_fn),             \
		       #name ": the prototype in cufile.h changed");

CUFILE_CALLS(TYPEDEF)
#if HAVE_CUFILE_H
CUFILE_CALLS(CHECK)
#endif

#undef LOOKUP
#define LOOKUP(ret, name, params)                                                              \
	if (!(cf.name = (name##_fn)dlsym(cf.lib, #name))) {                                    \
		gd_say(cf.why, sizeof cf.why, "gds: %s has no %s", cf.libname, #name);       \
		return;                                                                        \
	}

static struct {
	void *lib;
	char libname[128];
	int opened;     /* the driver is open: cuFileRead can be used (maybe in compat mode) */
	char why[256];  /* why not */
	unsigned nvfs_major, nvfs_minor;
	unsigned dstatusflags; /* which filesystems nvidia-fs serves (CU_FILE_*_SUPPORTED bits) */
	CUFILE_CALLS(MEMBER)
} cf;
static pthread_once_t cf_once = PTHREAD_ONCE_INIT;

static const char *cf_strerror(CUfileError_t e, char *buf, size_t len)
{
#if HAVE_CUFILE_H
	gd_say(buf, len, "%s (cuFile %d, CUresult %d)", cufileop_status_error(e.err), (int)e.err,
		 (int)e.cu_err);
#else
	gd_say(buf, len, "cuFile error %d (CUresult %d)", (int)e.err, (int)e.cu_err);
#endif
	return buf;
}

static void cf_load_once(void)
{
	static const char *const names[] = {
		"libcufile.so.0", "libcufile.so", "/usr/local/cuda/lib64/libcufile.so.0", NULL,
	};
	/* Properties of any later libcufile fit: it may have grown the struct. */
	union {
		CUfileDrvProps_t p;
		char room[4096];
	} props;
	CUfileError_t e;
	char buf[160];

	cf.lib = gd_dlopen_first("SAFETENSORSFS_CUFILE", names, cf.libname, sizeof cf.libname, buf,
			    sizeof buf);
	if (!cf.lib) {
		gd_say(cf.why, sizeof cf.why, "gds: %s", buf);
		return;
	}
	CUFILE_CALLS(LOOKUP)
	e = cf.cuFileDriverOpen();
	if (e.err != CU_FILE_SUCCESS) {
		gd_say(cf.why, sizeof cf.why, "gds: cuFileDriverOpen: %s",
			 cf_strerror(e, buf, sizeof buf));
		return;
	}
	memset(&props, 0, sizeof props);
	e = cf.cuFileDriverGetProperties(&props.p);
	if (e.err == CU_FILE_SUCCESS) {
		cf.nvfs_major = props.p.nvfs.major_version;
		cf.nvfs_minor = props.p.nvfs.minor_version;
		cf.dstatusflags = props.p.nvfs.dstatusflags;
	}
	cf.opened = 1;
}

/* Whether nvidia-fs serves the filesystem that holds fd; why not in note. */
static int cf_serves(int fd, char *note, size_t len)
{
	struct statfs sf;
	unsigned need;
	const char *fs;

	if (fstatfs(fd, &sf) < 0) {
		gd_say(note, len, "gds: fstatfs: %s", strerror(errno));
		return 0;
	}
	switch ((unsigned long)sf.f_type) {
	case EXT4_SUPER_MAGIC: /* ext2/3/4 share it */
	case XFS_SUPER_MAGIC:
		fs = sf.f_type == XFS_SUPER_MAGIC ? "xfs" : "ext4";
		need = 1u << CU_FILE_NVME_SUPPORTED | 1u << CU_FILE_NVMEOF_SUPPORTED |
		       1u << CU_FILE_SCSI_SUPPORTED | 1u << CU_FILE_NVMESH_SUPPORTED |
		       1u << CU_FILE_SCALEFLUX_CSD_SUPPORTED;
		break;
	case NFS_SUPER_MAGIC:
		fs = "nfs";
		need = 1u << CU_FILE_NFS_SUPPORTED;
		break;
	case 0x0BD00BD0u:
		fs = "lustre";
		need = 1u << CU_FILE_LUSTRE_SUPPORTED;
		break;
	case 0x47504653u:
		fs = "gpfs";
		need = 1u << CU_FILE_GPFS_SUPPORTED;
		break;
	case 0x19830326u:
		fs = "beegfs";
		need = 1u << CU_FILE_BEEGFS_SUPPORTED;
		break;
	default:
		gd_say(note, len, "gds: not for this filesystem (type 0x%lx)",
			 (unsigned long)sf.f_type);
		return 0;
	}
	if (cf.nvfs_major == 0) {
		gd_say(note, len, "gds: nvidia-fs driver not loaded (libcufile in compat mode)");
		return 0;
	}
	if (!(cf.dstatusflags & need)) {
		gd_say(note, len, "gds: nvidia-fs %u.%u does not serve %s here", cf.nvfs_major,
			 cf.nvfs_minor, fs);
		return 0;
	}
	return 1;
}

struct gds_file {
	int fd;        /* the caller's */
	int direct_fd; /* ours, O_DIRECT, or -1 */
	CUfileHandle_t fh;
	int registered;
};

struct gds_ctx {
	struct gpu_buffer *b;
	struct gds_file *files;
	size_t nfiles;
};

static int gds_piece(void *arg, const struct gpu_range *piece, char *err, size_t errlen)
{
	struct gds_ctx *g = arg;
	CUfileHandle_t fh = NULL;
	uint64_t done = 0;
	gd_cudaError_t ce;

	for (size_t i = 0; i < g->nfiles; i++)
		if (g->files[i].fd == piece->fd)
			fh = g->files[i].fh;
	/* cuFile works on the calling thread's current device. */
	if ((ce = cu.cudaSetDevice(g->b->device)) != gd_cudaSuccess)
		return cu_fail(ce, "cudaSetDevice", err, errlen);
	while (done < piece->nbytes) {
		ssize_t got = cf.cuFileRead(fh, g->b->ptr, (size_t)(piece->nbytes - done),
					    (off_t)(piece->file_offset + done),
					    (off_t)(piece->dst_offset + done));
		if (got < 0) {
			if (got == -1)
				return gd_fail(-errno, err, errlen, "cuFileRead at %llu: %s",
					       (unsigned long long)(piece->file_offset + done),
					       strerror(errno));
			return gd_fail(-EIO, err, errlen, "cuFileRead at %llu: cuFile error %lld",
				       (unsigned long long)(piece->file_offset + done),
				       (long long)-got);
		}
		if (got == 0)
			return gd_fail(-EIO, err, errlen,
				       "file ends before offset %llu (it shrank?)",
				       (unsigned long long)(piece->file_offset + done));
		done += (uint64_t)got;
	}
	return 0;
}

static int cu_direct(struct gpu_buffer *b, const struct gpu_range *r, size_t n, unsigned readers,
		     uint64_t chunk, unsigned flags, char *note, size_t notelen, char *err,
		     size_t errlen)
{
	int force = (flags & GPU_UPLOAD_FORCE_GDS) != 0;
	struct gds_file *files;
	size_t nfiles = 0;
	int rc = 0, bufreg = 0;
	char buf[160];

	/* cuFileDriverOpen takes ~0.4 s, and without nvidia-fs cuFile only reads in compat mode,
	 * slower than the staging pipeline: look for the driver first. */
	if (!force && access("/proc/driver/nvidia-fs", F_OK) != 0 &&
	    access("/sys/module/nvidia_fs", F_OK) != 0) {
		gd_say(note, notelen, "gds: nvidia-fs driver not loaded");
		return 0;
	}
	pthread_once(&cf_once, cf_load_once);
	if (!cf.opened) {
		gd_say(note, notelen, "%s", cf.why);
		return 0;
	}
	if (!(files = calloc(n ? n : 1, sizeof *files)))
		return gd_fail(-ENOMEM, err, errlen, "out of memory");
	for (size_t i = 0; i < n; i++) {
		size_t j = 0;

		while (j < nfiles && files[j].fd != r[i].fd)
			j++;
		if (j < nfiles || r[i].nbytes == 0)
			continue;
		if (r[i].fd < 0) { /* a remote object: only staged copies */
			gd_say(note, notelen, "a range is no local file");
			goto out;
		}
		files[nfiles].fd = r[i].fd;
		files[nfiles].direct_fd = -1;
		nfiles++;
		if (!force && !cf_serves(r[i].fd, note, notelen))
			goto out; /* rc 0: not applicable */
	}
	for (size_t j = 0; j < nfiles; j++) {
		struct gds_file *f = &files[j];
		CUfileDescr_t d;
		CUfileError_t e;

		/* nvidia-fs wants O_DIRECT: open the caller's file again with it (the caller's
		 * descriptor stays as it is). Where O_DIRECT is refused, compat mode can still
		 * read through the plain descriptor. */
		gd_say(buf, sizeof buf, "/proc/self/fd/%d", f->fd);
		f->direct_fd = open(buf, O_RDONLY | O_DIRECT | O_CLOEXEC);
		memset(&d, 0, sizeof d);
		d.type = CU_FILE_HANDLE_TYPE_OPAQUE_FD;
		d.handle.fd = f->direct_fd >= 0 ? f->direct_fd : f->fd;
		e = cf.cuFileHandleRegister(&f->fh, &d);
		if (e.err != CU_FILE_SUCCESS) {
			gd_say(note, notelen, "gds: cuFileHandleRegister: %s",
				 cf_strerror(e, buf, sizeof buf));
			if (force)
				rc = gd_fail(-EIO, err, errlen, "%s", note);
			goto out;
		}
		f->registered = 1;
	}
	/* Registering the destination lets nvidia-fs DMA into it without bounce buffers; a
	 * buffer too large for the BAR is still read, just through them. */
	bufreg = cf.cuFileBufRegister(b->ptr, (size_t)b->capacity, 0).err == CU_FILE_SUCCESS;

	struct gds_ctx g = { .b = b, .files = files, .nfiles = nfiles };

	rc = gd_parallel(r, n, chunk, readers, gds_piece, &g, err, errlen);
	if (rc == 0)
		rc = 1;
	if (bufreg)
		cf.cuFileBufDeregister(b->ptr);
out:
	for (size_t j = 0; j < nfiles; j++) {
		if (files[j].registered)
			cf.cuFileHandleDeregister(files[j].fh);
		if (files[j].direct_fd >= 0)
			close(files[j].direct_fd);
	}
	free(files);
	return rc;
}

const struct gd_runtime gd_cuda_runtime = {
	.kind = GPU_CUDA,
	.name = "cuda",
	.load = cu_load,
	.devices = cu_devices,
	.set_device = cu_set_device,
	.dev_alloc = cu_dev_alloc,
	.dev_free = cu_dev_free,
	.ipc_handle = cu_ipc_handle,
	.host_alloc = cu_host_alloc,
	.host_free = cu_host_free,
	.stream_create = cu_stream_create,
	.stream_destroy = cu_stream_destroy,
	.h2d_async = cu_h2d_async,
	.stream_sync = cu_stream_sync,
	.d2h = cu_d2h,
	.direct = cu_direct,
};
