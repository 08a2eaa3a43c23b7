#!/usr/bin/env bash
# The engine benchmark on one GPU: lumen vs PyTorch eager, both with `run --device cuda`, on random
# Llama checkpoints of the stories15M / 42M / 110M shapes and a 1B one, in f32 and bf16. Prints one
# markdown table and saves it to BUILD/bench/engine_cuda.md. See bench/README.md ("CUDA mode").
#
#   bench/run_cuda.sh [BUILD_DIR]
#
# Environment:
#   LUMEN_BENCH_SHAPES   comma list of 15M,42M,110M,1B (default all four)
#   LUMEN_BENCH_DTYPES   comma list of f32,bf16 (default both)
#   LUMEN_BENCH_REPS     rounds per shape and dtype; a round is one lumen and one eager process, back to back (default 3)
#   LUMEN_BENCH_CALLS    timed calls per workload in each process (default 8; decode: 3 generations)
#   LUMEN_BENCH_PYTHON   interpreter whose torch has CUDA, for the eager side (default python3)
#   LUMEN_BENCH_DEVICE   cuda (default); cpu runs the whole pipeline on the CPU, only to test this script
#   JOBS                 build parallelism (default 2)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=build
for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) build=$a ;;
  esac
done
[[ $build = /* ]] || build=$root/$build
py=${LUMEN_BENCH_PYTHON:-python3}
device=${LUMEN_BENCH_DEVICE:-cuda}
shapes=${LUMEN_BENCH_SHAPES:-15M,42M,110M,1B}
dtypes=${LUMEN_BENCH_DTYPES:-f32,bf16}
rounds=${LUMEN_BENCH_REPS:-3}
calls=${LUMEN_BENCH_CALLS:-8}
decode_calls=$(( calls < 3 ? calls : 3 ))
out=$build/bench
results=$out/results-cuda
mkdir -p "$out/models" "$results"
rm -f "$results"/*.json "$results"/*.log

source "$here/common.sh"
die() { printf 'run_cuda.sh: %s\n' "$*" >&2; exit 1; }

case "$device" in
  cuda) ;;
  cpu) say "LUMEN_BENCH_DEVICE=cpu: a test of this script on the CPU, not a GPU measurement" ;;
  *) die "LUMEN_BENCH_DEVICE=$device: expected cuda (or cpu, to test the script)" ;;
esac
IFS=, read -r -a shape_list <<<"$shapes"
IFS=, read -r -a dtype_list <<<"$dtypes"
for dt in "${dtype_list[@]}"; do
  [[ $dt = f32 || $dt = bf16 ]] || die "LUMEN_BENCH_DTYPES: '$dt' (expected f32 and/or bf16)"
done

# ---- the eager side's interpreter, before the long steps -----------------------------------------
if [[ $device = cuda ]]; then
  "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || die "$py has no torch that sees a GPU ($("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1)); set LUMEN_BENCH_PYTHON"
else
  "$py" -c 'import torch' 2>/dev/null || die "$py cannot import torch; set LUMEN_BENCH_PYTHON"
fi

# ---- build -------------------------------------------------------------------------------------
# A fresh folder on a GPU machine builds against the interpreter's (CUDA) libtorch.
prefix=()
[[ $device = cuda ]] && prefix=(-DCMAKE_PREFIX_PATH="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')")
build_engine "$build" "$out/build_cuda.log" "${prefix[@]}"

# ---- models ------------------------------------------------------------------------------------
# The shapes of bench/common.sh, made as bench/run.sh makes them (same folders, same seed).
make_models "${shape_list[@]}"

# ---- rounds ------------------------------------------------------------------------------------
# One process per side and round, lumen first in even rounds and eager first in odd ones. Both get
# OMP_WAIT_POLICY=PASSIVE set (so lumen::init_runtime does not re-execute) and the same sections:
# roofline, prefill, decode, fwd_bwd, hooks (lumen only) and check. On CUDA both skip load and gemv
# themselves, with a note in their JSON; on the CPU they are left out here.
common=(--device "$device" --reps "$calls" --decode-reps "$decode_calls")
lumen_only=() eager_only=()
if [[ $device = cpu ]]; then
  lumen_only=(--only "roofline,prefill,decode,fwd_bwd,hooks,check")
  eager_only=(--only "roofline,prefill,decode,fwd_bwd,check")
fi
declare -A ok=([lumen]=0 [eager]=0)
failed=()
run_one() {  # impl shape dtype round
  local impl=$1 s=$2 dt=$3 r=$4
  local name=$impl-$s-$dt-r$r
  local args=(--model "$out/models/stories$s" --shape "$s" --dtype "$dt" --out "$results/$name.json" "${common[@]}")
  local t0=$SECONDS rc=0
  if [[ $impl = lumen ]]; then
    env OMP_WAIT_POLICY=PASSIVE LUMEN_KEEP_OMP_POLICY=1 "$engine" run "${args[@]}" "${lumen_only[@]}" >"$results/$name.log" 2>&1 || rc=$?
  else
    env OMP_WAIT_POLICY=PASSIVE "$py" "$here/baseline_engine.py" run "${args[@]}" "${eager_only[@]}" >"$results/$name.log" 2>&1 || rc=$?
  fi
  if [[ $rc = 0 ]]; then
    ok[$impl]=1
    say "$name: $(( SECONDS - t0 )) s"
    return
  fi
  grep -m1 -E 'error|what\(\)|Error' "$results/$name.log" >&2 || tail -n 3 "$results/$name.log" >&2
  # A side that has never worked (no CUDA in this libtorch, say) would fail every round: stop.
  [[ ${ok[$impl]} = 1 ]] || die "$impl failed on its first run ($results/$name.log)"
  failed+=("$name")
  say "$name FAILED (rc $rc), going on"
}

t_start=$SECONDS
for s in "${shape_list[@]}"; do
  for dt in "${dtype_list[@]}"; do
    say "$s $dt: $rounds rounds"
    for (( r = 0; r < rounds; r++ )); do
      if (( r % 2 == 0 )); then run_one lumen "$s" "$dt" "$r"; run_one eager "$s" "$dt" "$r"
      else run_one eager "$s" "$dt" "$r"; run_one lumen "$s" "$dt" "$r"; fi
    done
  done
done

# ---- report ------------------------------------------------------------------------------------
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || rev="$rev+dirty"
note=""
[[ $device = cpu ]] && note=", \"device\": \"cpu (LUMEN_BENCH_DEVICE=cpu: a test of the script)\""
[[ ${#failed[@]} -gt 0 ]] && note="$note, \"failed runs\": \"${failed[*]}\""
[[ $engine_note != fresh ]] && note="$note, \"bench_engine\": \"$engine_note\""
cat >"$out/meta_cuda.json" <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%MZ)", "commit": "$rev", "rounds": $rounds, "calls per workload": $calls,
 "bench wall time": "$(( SECONDS - t_start )) s"$note}
EOF
"$py" "$here/baseline_engine.py" report-cuda --results "$results" --meta "$out/meta_cuda.json" --out "$out/engine_cuda.md"
say "saved $out/engine_cuda.md (raw results and logs in $results)"
