# lumen's two commands: `make demo` (the main job) and `make test` (builds, then runs ctest).
# Both install missing Debian packages first, so a fresh Debian 12 machine needs nothing else.
BUILD ?= build
JOBS ?= 2
BUILD_TYPE ?= Release
LUMEN_SHARED ?= ../shared
LUMEN_MODEL ?= $(LUMEN_SHARED)/models/stories260K
CMAKE_ARGS ?=

.PHONY: all deps configure build test demo bench fuzz clean
all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS) > $(BUILD).configure.log 2>&1 || (cat $(BUILD).configure.log; exit 1)
	@grep -E "WARNING|lumen:" -A3 $(BUILD).configure.log || true

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	$(BUILD)/lumen demo $(LUMEN_MODEL) --corpus $(LUMEN_SHARED)/data/tinystories/train.txt \
	  --heldout $(LUMEN_SHARED)/data/tinystories/heldout.txt --work-dir $(BUILD)/demo
	$(BUILD)/lumen flags demo $(LUMEN_MODEL) --corpus $(LUMEN_SHARED)/data/tinystories/train.txt \
	  --out $(BUILD)/demo/flags --concept dog

bench: configure
	cmake --build $(BUILD) -j $(JOBS) --target bench_engine bench_sae lumen_cli
	bench/run.sh $(BUILD)
	bench/run_sae.sh $(BUILD)

fuzz:
	fuzz/run.sh

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
