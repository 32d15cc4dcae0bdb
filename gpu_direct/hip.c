/*
 * The hip backend's runtime table (struct gd_runtime, used by device.c): ROCm's HIP runtime
 * (libamdhip64) loaded with dlopen, so that one binary runs with or without it. No
 * GPUDirect Storage path: uploads always go through pinned staging buffers.
 *
 * Compiled in C against the real header: hip/hip_runtime_api.h with __HIP_PLATFORM_AMD__
 * (gpu.mk), which gcc takes in C mode (hip_runtime.h itself wants a HIP compiler). Every
 * function pointer type below is written out and checked against the header's prototype at
 * compile time.
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

#include <hip/hip_runtime_api.h>

#include "internal.h"

_Static_assert(sizeof(hipIpcMemHandle_t) == GD_IPC_BYTES, "hipIpcMemHandle_t is not 64 bytes");

#define HIP_CALLS(X)                                                                           \
	X(hipError_t, hipGetDeviceCount, (int *count))                                         \
	X(hipError_t, hipSetDevice, (int deviceId))                                            \
	X(hipError_t, hipMalloc, (void **ptr, size_t size))                                    \
	X(hipError_t, hipFree, (void *ptr))                                                    \
	X(hipError_t, hipHostMalloc, (void **ptr, size_t size, unsigned int flags))            \
	X(hipError_t, hipHostFree, (void *ptr))                                                \
	X(hipError_t, hipStreamCreateWithFlags, (hipStream_t * stream, unsigned int flags))    \
	X(hipError_t, hipStreamDestroy, (hipStream_t stream))                                  \
	X(hipError_t, hipStreamSynchronize, (hipStream_t stream))                              \
	X(hipError_t, hipMemcpyAsync,                                                          \
	  (void *dst, const void *src, size_t sizeBytes, hipMemcpyKind kind,                   \
	   hipStream_t stream))                                                                \
	X(hipError_t, hipMemcpy, (void *dst, const void *src, size_t sizeBytes, hipMemcpyKind kind)) \
	X(hipError_t, hipIpcGetMemHandle, (hipIpcMemHandle_t * handle, void *devPtr))          \
	X(const char *, hipGetErrorString, (hipError_t hipError))                              \
	X(hipError_t, hipRuntimeGetVersion, (int *runtimeVersion))                             \
	X(hipError_t, hipDriverGetVersion, (int *driverVersion))

#define TYPEDEF(ret, name, params) typedef ret(*name##_fn) params;
#define CHECK(ret, name, params)                                                               \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&name), name##_fn),             \
		       #name ": the prototype in hip_runtime_api.h changed");
#define MEMBER(ret, name, params) name##_fn name;
#define LOOKUP(ret, name, params)                                                              \
	if (!(hp.name = (name##_fn)dlsym(hp.lib, #name))) {                                    \
		gd_say(hp.why, sizeof hp.why, "%s has no %s", hp.libname, #name);            \
		return;                                                                        \
	}

HIP_CALLS(TYPEDEF)
HIP_CALLS(CHECK)

static struct {
	void *lib;
	char libname[128];
	int loaded;    /* 1 when every function was found */
	char why[256]; /* why not */
	int runtime_version;
	HIP_CALLS(MEMBER)
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
	HIP_CALLS(LOOKUP)
	if (hp.hipRuntimeGetVersion(&hp.runtime_version) != hipSuccess)
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

static int hp_errno(hipError_t e)
{
	switch (e) {
	case hipErrorOutOfMemory:
		return -ENOMEM;
	case hipErrorNoDevice:
	case hipErrorInvalidDevice:
	case hipErrorInsufficientDriver:
		return -ENODEV;
	case hipErrorNotSupported:
		return -ENOTSUP;
	default:
		return -EIO;
	}
}

static int hp_fail(hipError_t e, const char *call, char *err, size_t errlen)
{
	const char *s = hp.hipGetErrorString(e);

	return gd_fail(hp_errno(e), err, errlen, "%s: %s (hipError %d)", call,
		       s ? s : "unknown error", (int)e);
}

#define HP_TRY(call, name)                                                                     \
	do {                                                                                   \
		hipError_t e_ = (call);                                                        \
		if (e_ != hipSuccess)                                                          \
			return hp_fail(e_, name, err, errlen);                                 \
	} while (0)

/* HIP versions are major * 10^7 + minor * 10^5 + patch. */
static int hp_devices(int *count, char *detail, size_t len)
{
	int v = hp.runtime_version, drv = 0;
	hipError_t e;

	*count = 0;
	e = hp.hipGetDeviceCount(count);
	if (e != hipSuccess) {
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
	hipIpcMemHandle_t h;

	HP_TRY(hp.hipIpcGetMemHandle(&h, ptr), "hipIpcGetMemHandle");
	memcpy(out, &h, GD_IPC_BYTES);
	return 0;
}

static int hp_host_alloc(void **ptr, size_t bytes, char *err, size_t errlen)
{
	HP_TRY(hp.hipHostMalloc(ptr, bytes, hipHostMallocPortable), "hipHostMalloc");
	return 0;
}

static void hp_host_free(void *ptr)
{
	hp.hipHostFree(ptr);
}

static int hp_stream_create(void **stream, char *err, size_t errlen)
{
	hipStream_t s;

	HP_TRY(hp.hipStreamCreateWithFlags(&s, hipStreamNonBlocking), "hipStreamCreateWithFlags");
	*stream = s;
	return 0;
}

static void hp_stream_destroy(void *stream)
{
	hp.hipStreamDestroy((hipStream_t)stream);
}

static int hp_h2d_async(void *dst, const void *src, size_t n, void *stream, char *err,
			size_t errlen)
{
	HP_TRY(hp.hipMemcpyAsync(dst, src, n, hipMemcpyHostToDevice, (hipStream_t)stream),
	       "hipMemcpyAsync");
	return 0;
}

static int hp_stream_sync(void *stream, char *err, size_t errlen)
{
	HP_TRY(hp.hipStreamSynchronize((hipStream_t)stream), "hipStreamSynchronize");
	return 0;
}

static int hp_d2h(void *dst, const void *src, size_t n, char *err, size_t errlen)
{
	HP_TRY(hp.hipMemcpy(dst, src, n, hipMemcpyDeviceToHost), "hipMemcpy");
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
