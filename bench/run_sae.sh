#!/usr/bin/env bash
# SAE and feature-harvest benchmark: lumen (bench_sae) against PyTorch eager (baseline_sae.py) on
# stories260K, in paired rounds within one run. Writes BUILD_DIR/bench/sae.md.
#   bench/run_sae.sh [BUILD_DIR] [--quick]
# Needs trained SAEs: LUMEN_BENCH_SAES (a folder holding sae_l0..sae_lN), default BUILD_DIR/demo,
# which `make demo` fills. LUMEN_SHARED points at the shared data (default ../shared).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
[[ $build = /* ]] || build=$root/$build
quick=0
[[ ${2:-} == --quick ]] && quick=1
shared=${LUMEN_SHARED:-$root/../shared}
model=$shared/models/stories260K
corpus=$shared/data/tinystories/train.txt
saes_dir=${LUMEN_BENCH_SAES:-$build/demo}
py=${LUMEN_BENCH_PYTHON:-/usr/bin/python3}
out=$build/bench
work=$out/sae-work
mkdir -p "$work"
export OMP_WAIT_POLICY=PASSIVE

[[ -d $model ]] || { echo "run_sae.sh: $model is missing (set LUMEN_SHARED)" >&2; exit 1; }
saes=()
for d in "$saes_dir"/sae_l*; do [[ -f $d/cfg.json ]] && saes+=(--sae "$d"); done
[[ ${#saes[@]} -gt 0 ]] || { echo "run_sae.sh: no SAEs in $saes_dir (run make demo, or set LUMEN_BENCH_SAES)" >&2; exit 1; }

if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLUMEN_BUILD_BENCH=ON >/dev/null
fi
echo "== building bench_sae in $build" >&2
cmake --build "$build" --target bench_sae -j "${JOBS:-2}" >"$out/build_sae.log" 2>&1 || { tail -20 "$out/build_sae.log" >&2; exit 1; }

# Paired rounds (bench/paired.py): baseline_sae.py runs eager itself and asks bench_sae serve for
# lumen's measurement of each round. LUMEN_BENCH_ROUNDS overrides the round count.
# A store round serves 32768 rows: half its 65536-row buffer, so every round includes exactly one
# refill (the store refills when half empty).
# An update round takes at least round_s seconds on the faster side.
rounds=${LUMEN_BENCH_ROUNDS:-5}; round_s=1.5; store_rows=32768; tokens=50000
[[ $quick == 1 ]] && { rounds=${LUMEN_BENCH_ROUNDS:-3}; round_s=0.5; tokens=10000; }
"$build/bench/bench_sae" export --model "$model" --out "$work/hf"
echo "== lumen and PyTorch eager, $rounds paired rounds (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
"$py" "$root/bench/baseline_sae.py" pair --lumen "$build/bench/bench_sae" --lumen-model "$model" --model "$work/hf" \
  --corpus "$corpus" --work "$work" "${saes[@]}" --out "$out/sae_paired.json" \
  --rounds "$rounds" --min-round-s $round_s --store-rows $store_rows --harvest-tokens $tokens
"$py" "$root/bench/baseline_sae.py" report --results "$out/sae_paired.json" --md "$out/sae.md"

# Peak memory of a long harvest (LUMEN_BENCH_RSS_TOKENS, default 1M; 0 skips): memory must stay
# bounded in the corpus size, so it is measured on the real CLI.
rss_tokens=${LUMEN_BENCH_RSS_TOKENS:-1000000}
if [[ $quick == 0 && $rss_tokens -gt 0 ]]; then
  cmake --build "$build" --target lumen_cli -j "${JOBS:-2}" >>"$out/build_sae.log" 2>&1
  rm -f "$work"/rss.db*
  /usr/bin/time -v "$build/lumen" features harvest "$model" "${saes[@]}" --corpus "$corpus" --tokens "$rss_tokens" \
    --out "$work/rss.db" 2>"$work/rss.log" >/dev/null
  rss=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$work/rss.log")
  line=$(grep -E "^harvest: .* windows" "$work/rss.log" | tail -1 || true)
  printf '\n## Peak RSS of a long harvest\n\n`lumen features harvest` with %d SAEs, --tokens %s: peak RSS %d MB. %s\n' \
    $((${#saes[@]} / 2)) "$rss_tokens" $((rss / 1024)) "$line" | tee -a "$out/sae.md"
fi
echo "== saved $out/sae.md" >&2
