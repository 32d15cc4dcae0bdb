/*
 * Keeps hip_abi.h honest: where ROCm's hip/hip_runtime_api.h is found (Debian's
 * libamdhip64-dev in /usr/include, or ROCm under HIP_PATH, which gpu.mk puts on the path),
 * every value, type and prototype that hip_abi.h declares for hip.c is compared with the
 * header's at compile time, and a difference stops the build with the name that drifted.
 * Without the header this file compiles to nothing and hip.c builds from hip_abi.h alone.
 *
 * hip_abi.h's names carry a gd_ prefix so that both headers fit in this one file.
 */
/* hip_runtime_api.h needs its platform chosen; gcc compiles it as C for the AMD one. */
#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__
#endif

#if __has_include(<hip/hip_runtime_api.h>)
#include <stddef.h>

#include <hip/hip_runtime_api.h>

#include "hip_abi.h"

/* (compared as numbers: the two enums are different types) */
#define SAME_VALUE(name)                                                                       \
	_Static_assert((long long)gd_##name == (long long)name, #name ": hip_abi.h differs from HIP's");
SAME_VALUE(hipSuccess)
SAME_VALUE(hipErrorOutOfMemory)
SAME_VALUE(hipErrorInsufficientDriver)
SAME_VALUE(hipErrorNoDevice)
SAME_VALUE(hipErrorInvalidDevice)
SAME_VALUE(hipErrorNotSupported)
SAME_VALUE(hipMemcpyHostToDevice)
SAME_VALUE(hipMemcpyDeviceToHost)
SAME_VALUE(hipHostMallocPortable)
SAME_VALUE(hipStreamNonBlocking)
SAME_VALUE(HIP_IPC_HANDLE_SIZE)

/* An enum passes as an integer of its size and signedness: those must match. */
#define SAME_INTEGER(ours, real)                                                               \
	_Static_assert(sizeof(ours) == sizeof(real) && _Alignof(ours) == _Alignof(real) &&      \
			       ((ours)-1 > (ours)0) == ((real)-1 > (real)0),                    \
		       #real ": hip_abi.h differs from HIP's");
SAME_INTEGER(gd_hipError_t, hipError_t)
SAME_INTEGER(gd_hipMemcpyKind, hipMemcpyKind)

_Static_assert(__builtin_types_compatible_p(gd_hipStream_t, hipStream_t),
	       "hipStream_t: hip_abi.h differs from HIP's");
_Static_assert(sizeof(gd_hipIpcMemHandle_t) == sizeof(hipIpcMemHandle_t) &&
		       _Alignof(gd_hipIpcMemHandle_t) == _Alignof(hipIpcMemHandle_t) &&
		       offsetof(gd_hipIpcMemHandle_t, reserved) ==
			       offsetof(hipIpcMemHandle_t, reserved) &&
		       __builtin_types_compatible_p(__typeof__(((gd_hipIpcMemHandle_t *)0)->reserved),
						    __typeof__(((hipIpcMemHandle_t *)0)->reserved)),
	       "hipIpcMemHandle_t: hip_abi.h differs from HIP's");

/* The prototypes: with each of our types spelled as HIP's (their equivalence is checked
 * above), every entry of GD_HIP_CALLS must be the type of HIP's function. */
#define gd_hipError_t hipError_t
#define gd_hipMemcpyKind hipMemcpyKind
#define gd_hipStream_t hipStream_t
#define gd_hipIpcMemHandle_t hipIpcMemHandle_t
#define SAME_PROTOTYPE(ret, name, params)                                                      \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&name), ret(*) params),         \
		       #name ": the prototype in hip_abi.h differs from HIP's");
GD_HIP_CALLS(SAME_PROTOTYPE)

#else
/* No HIP header here: nothing to compare with (ISO C wants a declaration in every file). */
typedef int gd_hip_abi_not_checked;
#endif
