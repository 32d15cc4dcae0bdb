# gpu_direct: the GPU backends compile against the real runtime headers on every build and
# link nothing of them: the runtimes (libcudart, libcufile, libamdhip64) are dlopen()ed when
# first used, so one binary runs with or without them.
#   cuda.c  the CUDA toolkit's headers (cuda_runtime_api.h, cuda.h; cufile.h where installed,
#           else gpu_direct/cufile_abi.h) under CUDA_HOME
#   hip.c   hip/hip_runtime_api.h from Debian's libamdhip64-dev (or ROCm under HIP_PATH),
#           compiled as C for the AMD platform
CUDA_HOME ?= /usr/local/cuda

$(BUILD)/gpu_direct/cuda.o: CPPFLAGS += -I$(CUDA_HOME)/include
$(BUILD)/gpu_direct/hip.o: CPPFLAGS += -D__HIP_PLATFORM_AMD__ $(if $(HIP_PATH),-I$(HIP_PATH)/include)
LDLIBS += -ldl
