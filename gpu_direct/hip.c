/*
 * The hip backend's runtime table (struct gd_runtime, used by device.c): ROCm's HIP runtime
 * (libamdhip64) loaded with dlopen, so that one binary runs with or without it. No
 * GPUDirect Storage path: uploads always go through pinned staging buffers.
 *
 * Compiled against our own declarations of the HIP runtime (hip_abi.h: its gd_-prefixed names
 * are HIP's), so no HIP headers are needed to build; where hip/hip_runtime_api.h is found
 * (Debian's libamdhip64-dev, or ROCm under HIP_PATH), hip_abi_check.c compares those
 * declarations with it at compile time, so a HIP that changes a prototype or value breaks
 * the build instead of miscalling.
 *
 * Global state: `hp`, filled once under pthread_once and only read after (the library stays
 * loaded for the life of the process).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hip_abi.h"

#include "internal.h"

_Static_assert(sizeof(gd_hipIpcMemHandle_t) == GD_IPC_BYTES, "hipIpcMemHandle_t is not 64 bytes");

#define TYPEDEF(ret, name, params) typedef ret(*name##_fn) params;
#define MEMBER(ret, name, params) name##_fn name;
#define LOOKUP(ret, name, params)                                                              \
	if (!(hp.name = (name##_fn)dlsym(hp.lib, #name))) {                                    \
		gd_say(hp.why, sizeof hp.why, "%s has no %s", hp.libname, #name);            \
		return;                                                                        \
	}

GD_HIP_CALLS(TYPEDEF)

static struct {
	void *lib;
	char libname[128];
	int loaded;    /* 1 when every function was found */
	char why[256]; /* why not */
	int runtime_version;
	GD_HIP_CALLS(MEMBER)
} hp;
static pthread_once_t hp_once = PTHREAD_ONCE_INIT;

static void hp_load_once(void)
{
	static const char *const names[] = {
		"libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5",
		"/opt/rocm/lib/libamdhip64.so", NULL,
	};

	hp.lib = gd_dlopen_first("SAFETENSORSFS_HIP", names, hp.libname, sizeof hp.libname, hp.why,
				 sizeof hp.why);
	if (!hp.lib)
		return;
	GD_HIP_CALLS(LOOKUP)
	if (hp.hipRuntimeGetVersion(&hp.runtime_version) != gd_hipSuccess)
		hp.runtime_version = 0;
	hp.loaded = 1;
}

static int hp_load(char *err, size_t errlen)
{
	pthread_once(&hp_once, hp_load_once);
	if (!hp.loaded)
		return gd_fail(-ENODEV, err, errlen, "%s", hp.why);
	return 0;
}

static int hp_errno(gd_hipError_t e)
{
	switch (e) {
	case gd_hipErrorOutOfMemory:
		return -ENOMEM;
	case gd_hipErrorNoDevice:
	case gd_hipErrorInvalidDevice:
	case gd_hipErrorInsufficientDriver:
		return -ENODEV;
	case gd_hipErrorNotSupported:
		return -ENOTSUP;
	default:
		return -EIO;
	}
}

static int hp_fail(gd_hipError_t e, const char *call, char *err, size_t errlen)
{
	const char *s = hp.hipGetErrorString(e);

	return gd_fail(hp_errno(e), err, errlen, "%s: %s (hipError %d)", call,
		       s ? s : "unknown error", (int)e);
}

#define HP_TRY(call, name)                                                                     \
	do {                                                                                   \
		gd_hipError_t e_ = (call);                                                     \
		if (e_ != gd_hipSuccess)                                                       \
			return hp_fail(e_, name, err, errlen);                                 \
	} while (0)

/* HIP versions are major * 10^7 + minor * 10^5 + patch. */
static int hp_devices(int *count, char *detail, size_t len)
{
	int v = hp.runtime_version, drv = 0;
	gd_hipError_t e;

	*count = 0;
	e = hp.hipGetDeviceCount(count);
	if (e != gd_hipSuccess) {
		*count = 0;
		gd_say(detail, len, "HIP runtime %d.%d (%s): %s", v / 10000000,
			 v / 100000 % 100, hp.libname, hp.hipGetErrorString(e));
		return 0;
	}
	hp.hipDriverGetVersion(&drv);
	gd_say(detail, len, "HIP runtime %d.%d (%s), driver %d", v / 10000000, v / 100000 % 100,
		 hp.libname, drv);
	return 0;
}

static int hp_set_device(int device, char *err, size_t errlen)
{
	HP_TRY(hp.hipSetDevice(device), "hipSetDevice");
	return 0;
}

static int hp_dev_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	HP_TRY(hp.hipMalloc(ptr, bytes), "hipMalloc");
	return 0;
}

static void hp_dev_free(void *ptr)
{
	hp.hipFree(ptr);
}

static int hp_ipc_handle(void *ptr, unsigned char out[GD_IPC_BYTES], char *err, size_t errlen)
{
	gd_hipIpcMemHandle_t h;

	HP_TRY(hp.hipIpcGetMemHandle(&h, ptr), "hipIpcGetMemHandle");
	memcpy(out, &h, GD_IPC_BYTES);
	return 0;
}

static int hp_host_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	HP_TRY(hp.hipHostMalloc(ptr, bytes, gd_hipHostMallocPortable), "hipHostMalloc");
	return 0;
}

static void hp_host_free(void *ptr)
{
	hp.hipHostFree(ptr);
}

static int hp_stream_create(void **stream, char *err, size_t errlen)
{
	gd_hipStream_t s;

	HP_TRY(hp.hipStreamCreateWithFlags(&s, gd_hipStreamNonBlocking), "hipStreamCreateWithFlags");
	*stream = s;
	return 0;
}

static void hp_stream_destroy(void *stream)
{
	hp.hipStreamDestroy((gd_hipStream_t)stream);
}

static int hp_h2d_async(void *dst, const void *src, size_t n, void *stream, char *err,
			size_t errlen)
{
	HP_TRY(hp.hipMemcpyAsync(dst, src, n, gd_hipMemcpyHostToDevice, (gd_hipStream_t)stream),
	       "hipMemcpyAsync");
	return 0;
}

static int hp_stream_sync(void *stream, char *err, size_t errlen)
{
	HP_TRY(hp.hipStreamSynchronize((gd_hipStream_t)stream), "hipStreamSynchronize");
	return 0;
}

static int hp_d2h(void *dst, const void *src, size_t n, char *err, size_t errlen)
{
	HP_TRY(hp.hipMemcpy(dst, src, n, gd_hipMemcpyDeviceToHost), "hipMemcpy");
	return 0;
}

const struct gd_runtime gd_hip_runtime = {
	.kind = GPU_HIP,
	.name = "hip",
	.load = hp_load,
	.devices = hp_devices,
	.set_device = hp_set_device,
	.dev_alloc = hp_dev_alloc,
	.dev_free = hp_dev_free,
	.ipc_handle = hp_ipc_handle,
	.host_alloc = hp_host_alloc,
	.host_free = hp_host_free,
	.stream_create = hp_stream_create,
	.stream_destroy = hp_stream_destroy,
	.h2d_async = hp_h2d_async,
	.stream_sync = hp_stream_sync,
	.d2h = hp_d2h,
	.direct = NULL,
};
