/*
 * The part of NVIDIA's cufile.h (GPUDirect Storage, libcufile.so.0) that cuda.c uses, with
 * the same names, for builds where cufile.h is not installed: the CUDA toolkit ships it,
 * the pip wheels of the CUDA runtime do not (nvidia-cufile does). Where cufile.h is found,
 * cuda.c includes it instead and checks its own function-pointer types against it, so this
 * file cannot silently drift from the real ABI on any machine that has the header.
 * Transcribed from cufile.h of libcufile 1.x (CUDA 12 and 13), whose ABI these names keep.
 */
#ifndef SAFETENSORSFS_CUFILE_ABI_H
#define SAFETENSORSFS_CUFILE_ABI_H

/* CUresult, the CUDA driver's error code (enum cudaError_enum, 0 is CUDA_SUCCESS): from the
 * toolkit's cuda.h where it is on the path, else declared here, since only its value is read. */
#if __has_include(<cuda.h>)
#include <cuda.h>
#else
typedef enum cudaError_enum { CUDA_SUCCESS = 0 } CUresult;
#endif
#include <sys/types.h>

#define CUFILEOP_BASE_ERR 5000

typedef enum CUfileOpError {
	CU_FILE_SUCCESS = 0,
	CU_FILE_DRIVER_NOT_INITIALIZED = CUFILEOP_BASE_ERR + 1,
	CU_FILE_CUDA_DRIVER_ERROR = CUFILEOP_BASE_ERR + 11,
	CU_FILE_IO_MAX_ERROR = CUFILEOP_BASE_ERR + 50,
} CUfileOpError;

typedef struct CUfileError {
	CUfileOpError err;
	CUresult cu_err;
} CUfileError_t;

typedef enum CUfileDriverStatusFlags {
	CU_FILE_LUSTRE_SUPPORTED = 0,
	CU_FILE_WEKAFS_SUPPORTED = 1,
	CU_FILE_NFS_SUPPORTED = 2,
	CU_FILE_GPFS_SUPPORTED = 3,
	CU_FILE_NVME_SUPPORTED = 4,
	CU_FILE_NVMEOF_SUPPORTED = 5,
	CU_FILE_SCSI_SUPPORTED = 6,
	CU_FILE_SCALEFLUX_CSD_SUPPORTED = 7,
	CU_FILE_NVMESH_SUPPORTED = 8,
	CU_FILE_BEEGFS_SUPPORTED = 9,
} CUfileDriverStatusFlags_t;

typedef struct CUfileDrvProps {
	struct {
		unsigned int major_version;
		unsigned int minor_version;
		size_t poll_thresh_size;
		size_t max_direct_io_size;
		unsigned int dstatusflags;
		unsigned int dcontrolflags;
	} nvfs;
	unsigned int fflags;
	unsigned int max_device_cache_size;
	unsigned int per_buffer_cache_size;
	unsigned int max_device_pinned_mem_size;
	unsigned int max_batch_io_size;
	unsigned int max_batch_io_timeout_msecs;
} CUfileDrvProps_t;

typedef struct CUfileFSOps CUfileFSOps_t; /* only ever passed as NULL here */

enum CUfileFileHandleType {
	CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1,
	CU_FILE_HANDLE_TYPE_OPAQUE_WIN32 = 2,
	CU_FILE_HANDLE_TYPE_USERSPACE_FS = 3,
};

typedef struct CUfileDescr_t {
	enum CUfileFileHandleType type;
	union {
		int fd;
		void *handle;
	} handle;
	const CUfileFSOps_t *fs_ops;
} CUfileDescr_t;

typedef void *CUfileHandle_t;

#endif
