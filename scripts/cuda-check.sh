#!/usr/bin/env bash
# Builds lumen against the libtorch inside the `torch` Python package (a CUDA build) and runs the
# test suite with LUMEN_TEST_DEVICE=cuda, for a machine with a GPU but no package registry.
#
#   scripts/cuda-check.sh DEBS SHARED LOG_DIR [STEPS]
#
# DEBS holds the Debian -dev packages lumen builds against (fetched elsewhere with
# `apt-get download`, see scripts/fetch-debs.sh); they are unpacked with dpkg -x into a private
# prefix, never into /. SHARED is the shared test-data folder. STEPS (default "build test smoke")
# picks what runs after the build; each step's log goes to LOG_DIR.
set -uo pipefail
debs=$(realpath "$1"); shared=$(realpath "$2"); logs=$3; steps=${4:-"build test smoke"}
mkdir -p "$logs"; logs=$(realpath "$logs")
prefix=/tmp/lumen-deps
build=${LUMEN_CUDA_BUILD:-build-cuda}
jobs=$(nproc)

mkdir -p "$prefix"
for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
arch_lib=$prefix/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$arch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_PATH=$arch_lib/pkgconfig:$prefix/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$prefix
pkgconfig=$(command -v pkg-config || echo "$prefix/usr/bin/pkgconf")
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$torch_lib:$LD_LIBRARY_PATH

{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
  g++ --version | head -1; cmake --version | head -1; command -v ninja nvcc
} > "$logs/env.log" 2>&1

gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
start=$(date +%s)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DPKG_CONFIG_EXECUTABLE="$pkgconfig" \
  -DLUMEN_SHARED_DIR="$shared" -DLUMEN_BUILD_BENCH=${LUMEN_CUDA_BENCH:-OFF} > "$logs/configure.log" 2>&1 \
  || { echo "configure failed"; tail -40 "$logs/configure.log"; exit 1; }
cmake --build "$build" -j "$jobs" > "$logs/build.log" 2>&1 \
  || { echo "build failed"; grep -E "error|Error" "$logs/build.log" | head -40; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

for step in $steps; do
  case $step in
    build) ;;
    test)
      # The whole suite on the CPU with this libtorch, then the device tests on CUDA.
      t0=$(date +%s)
      (cd "$build" && ctest -j "$jobs" --timeout 600 --output-on-failure) > "$logs/ctest_cpu.log" 2>&1
      echo "ctest (cpu) rc=$? in $(( $(date +%s) - t0 )) s: $(grep -E 'tests passed|tests failed' "$logs/ctest_cpu.log")"
      t0=$(date +%s)
      (cd "$build" && LUMEN_TEST_DEVICE=cuda ctest -j 4 --timeout 600 --output-on-failure -R 'Device|Cuda') > "$logs/ctest_cuda.log" 2>&1
      echo "ctest (cuda) rc=$? in $(( $(date +%s) - t0 )) s: $(grep -E 'tests passed|tests failed' "$logs/ctest_cuda.log")"
      ;;
    backtrace)
      # A crash's stack, for a test that dies on this machine only (TEST names the gtest filter).
      gdb_bin=$(command -v gdb || command -v cuda-gdb || echo /usr/local/cuda/bin/cuda-gdb)
      "$gdb_bin" -batch -ex run -ex bt --args "$build/${LUMEN_BT_BINARY:-test_io}" --gtest_filter="${LUMEN_BT_TEST:-*}" \
        > "$logs/backtrace.log" 2>&1
      echo "backtrace: $(grep -c '^#' "$logs/backtrace.log") frames"
      ;;
    smoke)
      # The CLI's greedy story on the GPU byte for byte as on the CPU, then the main job, as
      # `make demo` runs it, on the GPU.
      model=$shared/models/stories260K
      for dev in cpu cuda; do
        "$build/lumen" generate "$model/stories260K.bin" --prompt "Once upon a time" --max-tokens 100 \
          --temperature 0 --device $dev > "$logs/generate_$dev.txt" 2> "$logs/generate_$dev.log"
      done
      cmp -s "$logs/generate_cpu.txt" "$logs/generate_cuda.txt" && echo "generate: cuda == cpu, byte for byte" \
        || echo "generate: cuda differs from cpu"
      t0=$(date +%s)
      timeout 400 "$build/lumen" demo "$model" --device cuda --corpus "$shared/data/tinystories/train.txt" \
        --heldout "$shared/data/tinystories/heldout.txt" --work-dir "$build/demo" > "$logs/demo_cuda.log" 2>&1
      echo "demo (cuda) rc=$? in $(( $(date +%s) - t0 )) s"
      t0=$(date +%s)
      timeout 300 "$build/lumen" flags demo "$model" --device cuda --corpus "$shared/data/tinystories/train.txt" \
        --out "$build/demo/flags" --concept dog > "$logs/flags_demo_cuda.log" 2>&1
      echo "flags demo (cuda) rc=$? in $(( $(date +%s) - t0 )) s"
      # The flags evaluation on both devices: read-out, loss and probes should agree closely
      # (sampled stories need not: each device has its own random streams). The 260K model leaves a
      # GPU launch-bound: on the H100 the CUDA run took longer than the CPU's 124 s on 16 cores.
      for dev in cuda cpu; do
        t0=$(date +%s)
        timeout 300 "$build/lumen" flags eval "$build/demo/flags" --corpus "$shared/data/tinystories/heldout.txt" \
          --samples 4 --max-texts 300 --device $dev --json > "$logs/flags_eval_$dev.json" 2> "$logs/flags_eval_$dev.log"
        echo "flags eval ($dev) rc=$? in $(( $(date +%s) - t0 )) s"
      done
      ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
