/*
 * The part of the CUDA runtime API (libcudart, cuda_runtime_api.h and driver_types.h of the
 * CUDA toolkit) that cuda.c uses, declared by us so that the build needs no CUDA toolkit:
 * libcudart is dlopen()ed at run time, so only these types, values and prototypes are
 * needed to compile.
 *
 * Every name is CUDA's with a gd_ prefix (gd_cudaSuccess is CUDA's cudaSuccess), so that
 * cuda_abi_check.c can include this file next to the real header and compare the two at
 * compile time: wherever the toolkit's headers are found, a value, size or prototype here
 * that differs from them breaks the build. The values are those of the ABI that libcudart
 * 11, 12 and 13 share.
 */
#ifndef SAFETENSORSFS_CUDA_ABI_H
#define SAFETENSORSFS_CUDA_ABI_H

#include <stddef.h>

/* enum cudaError: only the values cuda.c tells apart; the runtime returns others too. */
typedef enum gd_cudaError {
	gd_cudaSuccess = 0,
	gd_cudaErrorMemoryAllocation = 2,
	gd_cudaErrorInsufficientDriver = 35,
	gd_cudaErrorDevicesUnavailable = 46,
	gd_cudaErrorNoDevice = 100,
	gd_cudaErrorInvalidDevice = 101,
	gd_cudaErrorNotSupported = 801,
} gd_cudaError_t;

typedef enum gd_cudaMemcpyKind {
	gd_cudaMemcpyHostToDevice = 1,
	gd_cudaMemcpyDeviceToHost = 2,
} gd_cudaMemcpyKind;

/* The runtime's opaque stream (the same struct tag as CUDA's: only ever a pointer). */
typedef struct CUstream_st *gd_cudaStream_t;

#define gd_CUDA_IPC_HANDLE_SIZE 64
typedef struct gd_cudaIpcMemHandle {
	char reserved[gd_CUDA_IPC_HANDLE_SIZE];
} gd_cudaIpcMemHandle_t;

#define gd_cudaHostAllocPortable 0x01 /* cudaHostAlloc flag */
#define gd_cudaStreamNonBlocking 0x01 /* cudaStreamCreateWithFlags flag */

/* The functions cuda.c looks up with dlsym: X(return type, CUDA's name, parameters). */
#define GD_CUDA_CALLS(X)                                                                       \
	X(gd_cudaError_t, cudaGetDeviceCount, (int *count))                                    \
	X(gd_cudaError_t, cudaSetDevice, (int device))                                         \
	X(gd_cudaError_t, cudaMalloc, (void **devPtr, size_t size))                            \
	X(gd_cudaError_t, cudaFree, (void *devPtr))                                            \
	X(gd_cudaError_t, cudaHostAlloc, (void **pHost, size_t size, unsigned int flags))      \
	X(gd_cudaError_t, cudaFreeHost, (void *ptr))                                           \
	X(gd_cudaError_t, cudaStreamCreateWithFlags,                                           \
	  (gd_cudaStream_t * pStream, unsigned int flags))                                     \
	X(gd_cudaError_t, cudaStreamDestroy, (gd_cudaStream_t stream))                         \
	X(gd_cudaError_t, cudaStreamSynchronize, (gd_cudaStream_t stream))                     \
	X(gd_cudaError_t, cudaMemcpyAsync,                                                     \
	  (void *dst, const void *src, size_t count, gd_cudaMemcpyKind kind,                   \
	   gd_cudaStream_t stream))                                                            \
	X(gd_cudaError_t, cudaMemcpy,                                                          \
	  (void *dst, const void *src, size_t count, gd_cudaMemcpyKind kind))                  \
	X(gd_cudaError_t, cudaIpcGetMemHandle, (gd_cudaIpcMemHandle_t * handle, void *devPtr)) \
	X(const char *, cudaGetErrorString, (gd_cudaError_t error))                            \
	X(gd_cudaError_t, cudaRuntimeGetVersion, (int *runtimeVersion))                        \
	X(gd_cudaError_t, cudaDriverGetVersion, (int *driverVersion))

#endif
