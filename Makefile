# vmla — the two commands of the README:
#   make run    install what is missing, build, and run the server on the bundled model at
#               http://127.0.0.1:8080/ (PORT=, MODEL=, PRESET= override)
#   make test   install what is missing, build, and run the whole suite: unit tests, end-to-end
#               tests, the unit tests again under ASan+UBSan, and the fuzzers for a short while
# Other targets: deps, build, build-asan, build-fuzz, clean.

BUILD      ?= build
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 20
CMAKE_FLAGS ?=

# Debian 12 packages the build and the tests need.
DEB_PKGS = build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev \
           libopenblas-dev libjansson-dev libmicrohttpd-dev libwebsockets-dev \
           libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev ffmpeg \
           python3 python3-websocket python3-numpy chromium

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps build build-asan build-fuzz run test test-unit test-asan test-fuzz clean

deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "all build dependencies are installed"; fi

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DVMLA_WERROR=ON $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(BUILD)-asan -G Ninja -DVMLA_WERROR=ON -DVMLA_SANITIZE=ON -DVMLA_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(BUILD)-asan -j $(JOBS)

build-fuzz: deps
	CC=clang cmake -S . -B $(BUILD)-fuzz -G Ninja -DVMLA_FUZZ=ON -DVMLA_CUDA=OFF -DVMLA_FUZZ_SECONDS=$(FUZZ_SECONDS)
	cmake --build $(BUILD)-fuzz -j $(JOBS)

# The server on the bundled model (models/vmla-tiny.safetensors); until that file exists, on the
# tiny random test weights (the video is noise then). Open http://127.0.0.1:8080/
MODEL ?= $(if $(wildcard models/vmla-tiny.safetensors),models/vmla-tiny.safetensors,tests/golden/tiny-mla.safetensors)
PRESET ?= $(if $(wildcard models/vmla-tiny.safetensors),tiny,tiny-test-mla)
PORT ?= 8080
run: build
	@if [ -x $(BUILD)/vmla-server ]; then \
	  echo "open http://127.0.0.1:$(PORT)/ (Ctrl-C stops)"; \
	  exec $(BUILD)/vmla-server --model $(MODEL) --preset $(PRESET) --port $(PORT); \
	else \
	  echo "vmla-server was not built (libmicrohttpd, libwebsockets or FFmpeg missing); a clip with vmla-gen instead"; \
	  mkdir -p out && $(BUILD)/vmla-gen --preset $(PRESET) --model $(MODEL) --prompt "a red square moving left on a white background" \
	    --seconds 3 --out out/demo.y4m && echo "open out/demo.y4m"; \
	fi

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: build-asan
	cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -L unit -j $(JOBS)
	@# the server under ASan+UBSan with real clients; LeakSanitizer reports at its SIGTERM exit fail the run
	@if [ -x $(BUILD)-asan/vmla-server ]; then \
	  cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 VMLA_BUILD_DIR=$$PWD VMLA_SOURCE_DIR=$(CURDIR) \
	    /usr/bin/python3 $(CURDIR)/tests/server/test_server.py --quick; fi

test-fuzz: build-fuzz
	cd $(BUILD)-fuzz && ctest --output-on-failure -L fuzz

test: test-unit test-asan test-fuzz
	@echo "make test: all suites passed"

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-fuzz
