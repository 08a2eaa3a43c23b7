# Shared by bench/run.sh and bench/run_cuda.sh: messages, the model shapes, building bench_engine.
# Source it after setting `root` (the repository) and `out` (BUILD/bench).

say() { printf '== %s\n' "$*" >&2; }

# name -> "dim layers heads hidden": the llama2.c stories shapes (n_kv_heads = heads, vocab 32000),
# and 1B, a TinyLlama-like width and depth with full kv heads (GPU runs).
shape_args() {
  case "$1" in
    15M) echo "288 6 6 768" ;;
    42M) echo "512 8 8 1376" ;;
    110M) echo "768 12 12 2048" ;;
    1B) echo "2048 16 32 5632" ;;
    *) echo "unknown shape '$1' (expected 15M, 42M, 110M or 1B)" >&2; exit 2 ;;
  esac
}

# build_engine BUILD LOG [CMAKE_ARGS...]: configures BUILD when new, builds bench_engine, and sets
# `engine` (its path) and `engine_note` ("fresh", or a STALE warning when the build failed but an
# older binary exists: the library is shared with work in progress, and an older binary still
# measures something).
build_engine() {
  local build=$1 log=$2; shift 2
  if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLUMEN_BUILD_BENCH=ON "$@" >/dev/null
  fi
  say "building bench_engine in $build"
  engine=$build/bench/bench_engine
  engine_note=fresh
  if ! cmake --build "$build" --target bench_engine -j "${JOBS:-2}" >"$log" 2>&1; then
    grep -m5 -A3 'error' "$log" >&2 || tail -20 "$log" >&2
    [[ -x $engine ]] || exit 1
    engine_note="STALE: the build failed, using bench_engine from $(date -r "$engine" -u +%Y-%m-%dT%H:%MZ)"
    say "WARNING: $engine_note"
  fi
}

# make_models SHAPE...: the seeded random checkpoints, in $out/models/stories<SHAPE>.
make_models() {
  local s dim layers heads hidden
  for s in "$@"; do
    read -r dim layers heads hidden <<<"$(shape_args "$s")"
    say "model $s: dim $dim, $layers layers, $heads heads, hidden $hidden"
    OMP_WAIT_POLICY=PASSIVE "$engine" make-model --out "$out/models/stories$s" --dim "$dim" --layers "$layers" \
      --heads "$heads" --hidden "$hidden" --vocab 32000 --ctx 1024 --seed 1 >&2
  done
}
