#!/usr/bin/env bash
# The engine benchmark (`make bench`): lumen vs PyTorch eager on random Llama checkpoints of the
# stories15M / 42M / 110M shapes, under both OpenMP wait policies, plus a GEMM roofline.
# Prints one markdown table and saves it to BUILD/bench/engine.md. See bench/README.md.
#
#   bench/run.sh [BUILD_DIR] [--quick]
#
# Environment:
#   LUMEN_BENCH_SHAPES   comma list of 15M,42M,110M (default all; --quick: 15M)
#   LUMEN_BENCH_REPS     paired rounds per workload (default by shape: 9 / 7 / 5; --quick: 3)
#   LUMEN_BENCH_PYTHON   interpreter with torch for the eager baseline (default /usr/bin/python3)
#   LUMEN_BENCH_OMP_DEFAULT=0   skip the runs with the default OpenMP wait policy
#   LUMEN_BENCH_OMP_SHAPES      shapes that get the OpenMP runs (default: the first one)
#   JOBS                 build parallelism (default 2)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=build
quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) build=$a ;;
  esac
done
[[ $build = /* ]] || build=$root/$build
py=${LUMEN_BENCH_PYTHON:-/usr/bin/python3}
if [[ $quick = 1 ]]; then shapes=${LUMEN_BENCH_SHAPES:-15M}; else shapes=${LUMEN_BENCH_SHAPES:-15M,42M,110M}; fi
out=$build/bench
results=$out/results
mkdir -p "$out/models" "$results"
rm -f "$results"/*.json

source "$here/common.sh"

# ---- build -------------------------------------------------------------------------------------
build_engine "$build" "$out/build.log"

have_eager=1
if ! "$py" -c 'import torch, numpy' 2>/dev/null; then
  say "WARNING: $py cannot import torch and numpy; the eager columns stay empty (set LUMEN_BENCH_PYTHON)"
  have_eager=0
fi
report_py=$py
"$report_py" -c 'import json' 2>/dev/null || report_py=python3

# ---- models ------------------------------------------------------------------------------------
default_reps() {
  if [[ -n ${LUMEN_BENCH_REPS:-} ]]; then echo "$LUMEN_BENCH_REPS"; return; fi
  if [[ $quick = 1 ]]; then echo 3; return; fi
  # Medians of 3 paired rounds moved single cells by 10% between runs on a shared machine.
  case "$1" in 15M) echo 9 ;; 42M) echo 7 ;; *) echo 5 ;; esac
}

IFS=, read -r -a shape_list <<<"$shapes"
# The OpenMP runs (six processes per shape) go to the first shape only, unless asked: the policy's
# effect does not depend on the model's size, and they would double the bench's time.
omp_shapes=${LUMEN_BENCH_OMP_SHAPES:-${shape_list[0]}}
make_models "${shape_list[@]}"

# ---- runs --------------------------------------------------------------------------------------
# Every process gets its OpenMP policy explicitly: PASSIVE, or the variable removed plus
# LUMEN_KEEP_OMP_POLICY=1 so that lumen::init_runtime does not re-exec with PASSIVE.
policy_env() {
  if [[ $1 = passive ]]; then echo "env OMP_WAIT_POLICY=PASSIVE LUMEN_KEEP_OMP_POLICY=1"
  else echo "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT LUMEN_KEEP_OMP_POLICY=1"; fi
}
cores=$(nproc)
torch_threads=$cores
[[ $have_eager = 1 ]] && torch_threads=$(OMP_WAIT_POLICY=PASSIVE "$py" -c 'import torch; print(torch.get_num_threads())')
run_one() {  # impl policy threads shape unit args...
  local impl=$1 policy=$2 threads=$3 s=$4 unit=$5; shift 5
  local out_json=$results/$impl-$s-$policy-t$threads-$unit.json
  say "$s $unit: $impl, OMP_WAIT_POLICY=$([[ $policy = passive ]] && echo PASSIVE || echo unset), threads=${threads/#0/torch default}"
  if [[ $impl = lumen ]]; then
    $(policy_env "$policy") "$engine" run --model "$out/models/stories$s" --shape "$s" --threads "$threads" --out "$out_json" "$@"
  else
    $(policy_env "$policy") "$py" "$here/baseline_engine.py" run --model "$out/models/stories$s" --shape "$s" \
      --threads "$threads" --out "$out_json" "$@"
  fi
}

t_start=$(date +%s)
for s in "${shape_list[@]}"; do
  reps=$(default_reps "$s")
  dreps=$(( reps < 5 ? reps : 5 ))
  [[ $s = 110M ]] && dreps=$(( reps < 3 ? reps : 3 ))
  omp_reps=3
  [[ $s = 110M ]] && omp_reps=2
  (( reps < omp_reps )) && omp_reps=$reps
  # Prefill, decode and fwd+bwd: one Python process drives eager itself and `bench_engine serve`,
  # in paired rounds that alternate the two sides (bench/paired.py), each with its own roofline
  # before and after. Load, the GEMV probe and the value check run in processes of their own.
  r=(--reps "$reps")
  say "$s prefill, decode, fwd+bwd: lumen and eager in $reps paired rounds ($dreps for decode), load $(cut -d' ' -f1 /proc/loadavg)"
  pair_args=(pair --lumen "$engine" --model "$out/models/stories$s" --shape "$s" --rounds "$reps" --decode-rounds "$dreps"
             --out "$results/pair-$s.json" --min-round-s "$([[ $quick = 1 ]] && echo 0.5 || echo 1.0)")
  pair_py=$py
  [[ $have_eager = 1 ]] || { pair_args+=(--lumen-only); pair_py=$report_py; }
  $(policy_env passive) "$pair_py" "$here/baseline_engine.py" "${pair_args[@]}"
  run_one lumen passive 0 "$s" setup "${r[@]}" --only load,gemv,check
  [[ $have_eager = 1 ]] && run_one eager passive 0 "$s" setup "${r[@]}" --only load,check
  run_one lumen passive 0 "$s" hooks "${r[@]}" --only hooks
  # OpenMP: PASSIVE and default back to back for each (impl, threads). Eager only at one thread per
  # core when that differs from torch's default: with a single intra-op thread there is no OpenMP
  # team to spin, which lumen's own pair shows.
  if [[ ${LUMEN_BENCH_OMP_DEFAULT:-1} != 0 && ",$omp_shapes," == *",$s,"* ]]; then
    omp=(--only prefill,decode --prefill-shapes 8x128 --new-tokens 33 --reps "$omp_reps" --decode-reps 2)
    pairs=("lumen 0")
    if [[ $torch_threads != "$cores" ]]; then
      pairs+=("lumen $cores")
      [[ $have_eager = 1 ]] && pairs+=("eager $cores")
    else
      [[ $have_eager = 1 ]] && pairs+=("eager 0")
    fi
    for pair in "${pairs[@]}"; do
      read -r impl threads <<<"$pair"
      for policy in passive default; do run_one "$impl" "$policy" "$threads" "$s" omp "${omp[@]}"; done
    done
  fi
done

# ---- report ------------------------------------------------------------------------------------
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || rev="$rev+dirty"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
torch_v=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "?")
cat >"$out/meta.json" <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%MZ)", "commit": "$rev", "cpu": "$cpu", "cores": "$(nproc)",
 "bench_engine": "$engine_note", "torch": "$torch_v", "torch default intra-op threads": "$torch_threads", "shapes": "$shapes", "bench wall time": "$(( $(date +%s) - t_start )) s"}
EOF
"$report_py" "$here/baseline_engine.py" report --results "$results" --meta "$out/meta.json" --out "$out/engine.md"
say "saved $out/engine.md (raw results in $results)"
