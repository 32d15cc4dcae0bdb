# safetensorsfs: `make` builds, `make demo` and `make test` install what is missing
# (scripts/deps.sh: Debian packages by purpose; .venv: the pinned Python packages) and run.

VERSION   := 0.1.0
PREFIX    ?= /usr/local
BUILD     ?= build
PYTHON    ?= python3
VENV      ?= .venv
CC        ?= cc
PKGS      := fuse3 json-c libcurl

CFLAGS    ?= -O2 -g
CPPFLAGS  += -D_GNU_SOURCE -DFUSE_USE_VERSION=314 -DSAFETENSORSFS_VERSION=\"$(VERSION)\"
CFLAGS    += -std=c11 -Wall -Wextra -Werror $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS    += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread

ifeq ($(SANITIZE),1)
CFLAGS    += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS   += -fsanitize=address,undefined
endif

PARSER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard parser/*.c))
FS_OBJ     := $(patsubst %.c,$(BUILD)/%.o,$(filter-out fs/main.c,$(wildcard fs/*.c)))
GPU_OBJ    := $(patsubst %.c,$(BUILD)/%.o,$(wildcard gpu_direct/*.c))
LIB_OBJ    := $(FS_OBJ) $(GPU_OBJ) $(PARSER_OBJ)
# Every tests/c/test_NAME.c is a test binary $(BUILD)/test_NAME linked with everything but main.
TEST_BINS  := $(patsubst tests/c/%.c,$(BUILD)/%,$(wildcard tests/c/test_*.c))
BINARIES   := $(BUILD)/safetensorsfs $(TEST_BINS)

# gpu_direct/gpu.mk: the GPU backends' include paths and libraries.
-include gpu_direct/gpu.mk

PYTEST = SAFETENSORSFS=$(abspath $(1))/safetensorsfs TEST_PARSER=$(abspath $(1))/test_parser \
	TEST_BIN_DIR=$(abspath $(1)) $(VENV)/bin/python -m pytest -q -ra tests

.PHONY: all deps venv venv-demo venv-bench test test-asan demo bench fuzz corpus stress install devcarry clean

all: $(BINARIES)

# Without libfuse3's and json-c's headers every object would fail alone: say once what to install.
$(BUILD)/.build-deps:
	@pkg-config --exists $(PKGS) || { echo "safetensorsfs: the build needs libfuse3, json-c and libcurl: run scripts/deps.sh build (it names the apt-get line)" >&2; exit 1; }
	@mkdir -p $(dir $@) && touch $@

$(BUILD)/%.o: %.c $(wildcard parser/*.h fs/*.h gpu_direct/*.h tests/c/*.h) | $(BUILD)/.build-deps
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/safetensorsfs: $(BUILD)/fs/main.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/test_%: $(BUILD)/tests/c/test_%.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# What the mount needs to build and run; `scripts/deps.sh test` and `bench` add their own.
deps:
	@scripts/deps.sh build

# The pinned Python environments (scripts/pin.py writes the hashes): the demo's, and the tests'.
venv-demo: $(VENV)/.demo-installed
venv: $(VENV)/.test-installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: scripts/requirements-demo.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r scripts/requirements-demo.txt
	@touch $@

$(VENV)/.test-installed: scripts/requirements.txt scripts/requirements-demo.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r scripts/requirements.txt
	@touch $@ $(VENV)/.demo-installed

test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory all venv
	$(call PYTEST,$(BUILD))

# The same tests against an ASan+UBSan build; the daemon's reports fail the test that caused them.
test-asan:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory all venv BUILD=build-asan SANITIZE=1
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
		LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0 \
		$(call PYTEST,build-asan)

demo: deps
	@$(MAKE) --no-print-directory all venv-demo
	scripts/demo.sh $(BUILD)/safetensorsfs

# make bench's own environment: the tests' packages and the peers it compares remote reads
# with (s3fs, Run:ai's streamer, which brings torch: several GB): scripts/requirements-bench.txt.
venv-bench: $(VENV)-bench/.bench-installed

$(VENV)-bench/.bench-installed: scripts/requirements-bench.txt
	$(PYTHON) -m venv $(VENV)-bench
	$(VENV)-bench/bin/pip install -q --disable-pip-version-check --require-hashes -r scripts/requirements-bench.txt
	@touch $@

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all venv-bench
	PYTHON=$(VENV)-bench/bin/python scripts/bench/run.sh $(BUILD)/safetensorsfs

# libFuzzer targets (clang): the parser, and the tree/escaping code fed from it.
# New inputs land in build-fuzz/corpus-*; tests/corpus seeds them, tests/fuzz/quant-seeds seeds
# fuzz_quant (the quantized-layer finder and decoders), and tests/fuzz/remote-seeds seeds
# fuzz_remote (S3 listings, Hub trees and URLs rather than safetensors files).
FUZZ_SECONDS ?= 60
FUZZ_FLAGS    = -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	$(shell pkg-config --cflags json-c)
FUZZ_TARGETS := build-fuzz/fuzz_parser build-fuzz/fuzz_quant build-fuzz/fuzz_tree build-fuzz/fuzz_folder build-fuzz/fuzz_remote

build-fuzz/fuzz_parser: tests/fuzz/fuzz_parser.c $(wildcard parser/*.c parser/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) $(filter %.c,$^) $(shell pkg-config --libs json-c) -o $@

# The quantized-layer finder and the decoders on what it finds: seeded from tests/fuzz/quant-seeds.
build-fuzz/fuzz_quant: tests/fuzz/fuzz_quant.c fs/decode.c fs/convert.c $(wildcard fs/decode_*.c parser/*.c parser/*.h fs/decode*.h fs/convert.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) $(filter %.c,$^) $(shell pkg-config --libs json-c) -lm -o $@

build-fuzz/fuzz_folder: tests/fuzz/fuzz_folder.c fs/folder.c parser/header.c parser/dtype.c parser/validate.c parser/json_walk.c $(wildcard fs/folder.h parser/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) $(filter %.c,$^) $(shell pkg-config --libs json-c) -o $@

build-fuzz/fuzz_tree: tests/fuzz/fuzz_tree.c fs/tree.c fs/escape.c $(wildcard parser/*.c parser/*.h fs/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) $(filter %.c,$^) $(shell pkg-config --libs json-c) -o $@

# The remote sources' parsers (S3 listings, Hub trees, URLs): seeded from tests/fuzz/remote-seeds.
build-fuzz/fuzz_remote: tests/fuzz/fuzz_remote.c fs/s3.c fs/hub.c fs/http.c fs/remote.c $(wildcard fs/s3.h fs/hub.h fs/http.h fs/remote.h parser/header.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -DSAFETENSORSFS_VERSION=\"$(VERSION)\" $(shell pkg-config --cflags libcurl) $(filter %.c,$^) $(shell pkg-config --libs json-c libcurl) -o $@

fuzz: $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $$t.corpus || exit 1; \
		case $$t in *fuzz_remote) seeds=tests/fuzz/remote-seeds dict= ;; \
			*fuzz_quant) seeds=tests/fuzz/quant-seeds dict=-dict=tests/fuzz/safetensors.dict ;; \
			*) seeds=tests/corpus dict=-dict=tests/fuzz/safetensors.dict ;; esac; \
		$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$dict \
			-artifact_prefix=build-fuzz/ $$t.corpus $$seeds || exit 1; \
	done

corpus:
	$(PYTHON) scripts/make_corpus.py

# 32 readers for 60 s over random tensors, offsets, lengths and mmap, every byte checked.
stress:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory all venv
	$(VENV)/bin/python scripts/stress.py --bin $(BUILD)/safetensorsfs --seconds $(or $(STRESS_SECONDS),60)

install: $(BUILD)/safetensorsfs
	install -D -m 0755 $(BUILD)/safetensorsfs $(DESTDIR)$(PREFIX)/bin/safetensorsfs
	install -D -m 0644 safetensorsfs.1 $(DESTDIR)$(PREFIX)/share/man/man1/safetensorsfs.1

# The daemon and the two libraries GPU images lack, for scripts/gpu-check.sh's mount check
# (the device tool carries .devcarry/ to a lent GPU machine).
devcarry: $(BUILD)/safetensorsfs
	rm -rf .devcarry && mkdir -p .devcarry/bin .devcarry/lib
	cp $(BUILD)/safetensorsfs .devcarry/bin/
	ldd $(BUILD)/safetensorsfs | awk '/libfuse3|libjson-c/ {print $$3}' | xargs -I{} cp -L {} .devcarry/lib/

clean:
	rm -rf build build-asan build-fuzz .devcarry
