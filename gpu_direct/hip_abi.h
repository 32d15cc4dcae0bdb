/*
 * The part of ROCm's HIP runtime API (libamdhip64, hip/hip_runtime_api.h and
 * hip/driver_types.h for the AMD platform) that hip.c uses, declared by us so that the
 * build needs no HIP headers: libamdhip64 is dlopen()ed at run time, so only these types,
 * values and prototypes are needed to compile.
 *
 * Every name is HIP's with a gd_ prefix (gd_hipSuccess is HIP's hipSuccess), so that
 * hip_abi_check.c can include this file next to the real header and compare the two at
 * compile time: wherever hip_runtime_api.h is found (Debian's libamdhip64-dev, or ROCm
 * under HIP_PATH), a value, size or prototype here that differs from it breaks the build.
 * The values are those of the ABI of libamdhip64 5 and 6.
 */
#ifndef SAFETENSORSFS_HIP_ABI_H
#define SAFETENSORSFS_HIP_ABI_H

#include <stddef.h>

/* hipError_t: only the values hip.c tells apart; the runtime returns others too. */
typedef enum gd_hipError {
	gd_hipSuccess = 0,
	gd_hipErrorOutOfMemory = 2,
	gd_hipErrorInsufficientDriver = 35,
	gd_hipErrorNoDevice = 100,
	gd_hipErrorInvalidDevice = 101,
	gd_hipErrorNotSupported = 801,
} gd_hipError_t;

typedef enum gd_hipMemcpyKind {
	gd_hipMemcpyHostToDevice = 1,
	gd_hipMemcpyDeviceToHost = 2,
} gd_hipMemcpyKind;

/* The runtime's opaque stream (the same struct tag as HIP's: only ever a pointer). */
typedef struct ihipStream_t *gd_hipStream_t;

#define gd_HIP_IPC_HANDLE_SIZE 64
typedef struct gd_hipIpcMemHandle {
	char reserved[gd_HIP_IPC_HANDLE_SIZE];
} gd_hipIpcMemHandle_t;

#define gd_hipHostMallocPortable 0x1 /* hipHostMalloc flag */
#define gd_hipStreamNonBlocking 0x01 /* hipStreamCreateWithFlags flag */

/* The functions hip.c looks up with dlsym: X(return type, HIP's name, parameters). */
#define GD_HIP_CALLS(X)                                                                        \
	X(gd_hipError_t, hipGetDeviceCount, (int *count))                                      \
	X(gd_hipError_t, hipSetDevice, (int deviceId))                                         \
	X(gd_hipError_t, hipMalloc, (void **ptr, size_t size))                                 \
	X(gd_hipError_t, hipFree, (void *ptr))                                                 \
	X(gd_hipError_t, hipHostMalloc, (void **ptr, size_t size, unsigned int flags))         \
	X(gd_hipError_t, hipHostFree, (void *ptr))                                             \
	X(gd_hipError_t, hipStreamCreateWithFlags, (gd_hipStream_t * stream, unsigned int flags)) \
	X(gd_hipError_t, hipStreamDestroy, (gd_hipStream_t stream))                            \
	X(gd_hipError_t, hipStreamSynchronize, (gd_hipStream_t stream))                        \
	X(gd_hipError_t, hipMemcpyAsync,                                                       \
	  (void *dst, const void *src, size_t sizeBytes, gd_hipMemcpyKind kind,                \
	   gd_hipStream_t stream))                                                             \
	X(gd_hipError_t, hipMemcpy,                                                            \
	  (void *dst, const void *src, size_t sizeBytes, gd_hipMemcpyKind kind))               \
	X(gd_hipError_t, hipIpcGetMemHandle, (gd_hipIpcMemHandle_t * handle, void *devPtr))    \
	X(const char *, hipGetErrorString, (gd_hipError_t hipError))                           \
	X(gd_hipError_t, hipRuntimeGetVersion, (int *runtimeVersion))                          \
	X(gd_hipError_t, hipDriverGetVersion, (int *driverVersion))

#endif
