# gpu_direct: the GPU backends build from the project's own declarations of the runtimes'
# ABI (cuda_abi.h, hip_abi.h, cufile_abi.h) and link nothing of them: the runtimes
# (libcudart, libcufile, libamdhip64) are dlopen()ed when first used, so one binary runs with
# or without them, and no GPU header is needed to build it. Where the real headers are found,
# cuda_abi_check.c and hip_abi_check.c compare our declarations with them at compile time:
#   CUDA  the toolkit's include directory under CUDA_HOME, put on the path only if it exists
#         (cufile.h there, where installed, is used by cuda.c in place of cufile_abi.h)
#   HIP   hip/hip_runtime_api.h on the default path (Debian's libamdhip64-dev) or under
#         HIP_PATH's include directory, if it exists
CUDA_HOME ?= /usr/local/cuda

GD_CUDA_INC := $(wildcard $(CUDA_HOME)/include)
GD_HIP_INC  := $(if $(HIP_PATH),$(wildcard $(HIP_PATH)/include))

GD_CUDA_OBJ := $(BUILD)/gpu_direct/cuda.o $(BUILD)/gpu_direct/cuda_abi_check.o

$(GD_CUDA_OBJ): CPPFLAGS += $(addprefix -I,$(GD_CUDA_INC))
$(BUILD)/gpu_direct/hip_abi_check.o: CPPFLAGS += $(addprefix -I,$(GD_HIP_INC))
LDLIBS += -ldl
