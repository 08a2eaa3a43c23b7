#!/usr/bin/env bash
# The feature-visualization benchmark: candidates per second of one GCG step (512 candidates of 12
# tokens on stories260K with a layer SAE), lumen against a PyTorch-eager Python step, in one run.
# Prints a markdown table and saves it to BUILD/bench/viz.md. See bench/README.md.
#
#   bench/run_viz.sh [BUILD_DIR]
#
# Environment:
#   LUMEN_SHARED        the shared data folder (default ../shared): models/stories260K
#   LUMEN_VIZ_SAE       the SAE folder (default /work/stories_saes/sae_l2)
#   LUMEN_VIZ_LATENT    the latent (default 0)
#   LUMEN_BENCH_REPS    timed GCG steps per side (default 10)
#   LUMEN_BENCH_PYTHON  interpreter with torch (default /usr/bin/python3)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${1:-build}
[[ $build = /* ]] || build=$root/$build
shared=${LUMEN_SHARED:-$root/../shared}
sae=${LUMEN_VIZ_SAE:-/work/stories_saes/sae_l2}
latent=${LUMEN_VIZ_LATENT:-0}
reps=${LUMEN_BENCH_REPS:-10}
py=${LUMEN_BENCH_PYTHON:-/usr/bin/python3}
out=$build/bench
mkdir -p "$out"
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLUMEN_BUILD_BENCH=ON >/dev/null
fi
cmake --build "$build" --target bench_viz -j "${JOBS:-2}" >"$out/build_viz.log" 2>&1 || { tail -20 "$out/build_viz.log"; exit 1; }
bin=$shared/models/stories260K/stories260K.bin
"$build/bench/bench_viz" export --model "$bin" --out "$out/stories260K_hf"
# Same thread count on both sides: torch's default.
threads=$(OMP_WAIT_POLICY=PASSIVE "$py" -c 'import torch; print(torch.get_num_threads())')
OMP_WAIT_POLICY=PASSIVE "$build/bench/bench_viz" run --model "$bin" --sae "$sae" --latent "$latent" --reps "$reps" \
  --threads "$threads" --out "$out/viz_lumen.json" >/dev/null
OMP_WAIT_POLICY=PASSIVE "$py" "$here/baseline_viz.py" run --model "$out/stories260K_hf" --sae "$sae" --latent "$latent" \
  --reps "$reps" --threads "$threads" --out "$out/viz_eager.json" >/dev/null
"$py" "$here/baseline_viz.py" report --lumen "$out/viz_lumen.json" --eager "$out/viz_eager.json" --out "$out/viz.md"
