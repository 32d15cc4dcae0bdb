/*
 * Keeps cuda_abi.h honest: where the CUDA toolkit's cuda_runtime_api.h is found (gpu.mk puts
 * $(CUDA_HOME)/include on the path when it exists), every value, type and prototype that
 * cuda_abi.h declares for cuda.c is compared with the toolkit's at compile time, and a
 * difference stops the build with the name that drifted. Without the toolkit this file
 * compiles to nothing and cuda.c builds from cuda_abi.h alone.
 *
 * cuda_abi.h's names carry a gd_ prefix so that both headers fit in this one file.
 */
#if __has_include(<cuda_runtime_api.h>)
#include <stddef.h>

#include <cuda_runtime_api.h>

#include "cuda_abi.h"

/* (compared as numbers: the two enums are different types) */
#define SAME_VALUE(name)                                                                       \
	_Static_assert((long long)gd_##name == (long long)name, #name ": cuda_abi.h differs from the toolkit");
SAME_VALUE(cudaSuccess)
SAME_VALUE(cudaErrorMemoryAllocation)
SAME_VALUE(cudaErrorInsufficientDriver)
SAME_VALUE(cudaErrorDevicesUnavailable)
SAME_VALUE(cudaErrorNoDevice)
SAME_VALUE(cudaErrorInvalidDevice)
SAME_VALUE(cudaErrorNotSupported)
SAME_VALUE(cudaMemcpyHostToDevice)
SAME_VALUE(cudaMemcpyDeviceToHost)
SAME_VALUE(cudaHostAllocPortable)
SAME_VALUE(cudaStreamNonBlocking)
SAME_VALUE(CUDA_IPC_HANDLE_SIZE)

/* An enum passes as an integer of its size and signedness: those must match. */
#define SAME_INTEGER(ours, real)                                                               \
	_Static_assert(sizeof(ours) == sizeof(real) && _Alignof(ours) == _Alignof(real) &&      \
			       ((ours)-1 > (ours)0) == ((real)-1 > (real)0),                    \
		       #real ": cuda_abi.h differs from the toolkit");
SAME_INTEGER(gd_cudaError_t, cudaError_t)
SAME_INTEGER(gd_cudaMemcpyKind, enum cudaMemcpyKind)

_Static_assert(__builtin_types_compatible_p(gd_cudaStream_t, cudaStream_t),
	       "cudaStream_t: cuda_abi.h differs from the toolkit");
_Static_assert(sizeof(gd_cudaIpcMemHandle_t) == sizeof(cudaIpcMemHandle_t) &&
		       _Alignof(gd_cudaIpcMemHandle_t) == _Alignof(cudaIpcMemHandle_t) &&
		       offsetof(gd_cudaIpcMemHandle_t, reserved) ==
			       offsetof(cudaIpcMemHandle_t, reserved) &&
		       __builtin_types_compatible_p(__typeof__(((gd_cudaIpcMemHandle_t *)0)->reserved),
						    __typeof__(((cudaIpcMemHandle_t *)0)->reserved)),
	       "cudaIpcMemHandle_t: cuda_abi.h differs from the toolkit");

/* The prototypes: with each of our types spelled as the toolkit's (their equivalence is
 * checked above), every entry of GD_CUDA_CALLS must be the type of the toolkit's function. */
#define gd_cudaError_t cudaError_t
#define gd_cudaMemcpyKind enum cudaMemcpyKind
#define gd_cudaStream_t cudaStream_t
#define gd_cudaIpcMemHandle_t cudaIpcMemHandle_t
#define SAME_PROTOTYPE(ret, name, params)                                                      \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&name), ret(*) params),         \
		       #name ": the prototype in cuda_abi.h differs from the toolkit's");
GD_CUDA_CALLS(SAME_PROTOTYPE)

#else
/* No toolkit here: nothing to compare with (ISO C wants a declaration in every file). */
typedef int gd_cuda_abi_not_checked;
#endif
