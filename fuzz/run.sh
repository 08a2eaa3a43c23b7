#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and runs each for
# FUZZ_SECONDS (default 600). Corpora live in fuzz/corpus-<name>/ (seeded from the shared test
# data on first run, grown by the fuzzer); crashes land in fuzz/out/. Exit status 1 if any
# target found something. Not part of CI: a long run is a deliberate act.
#   FUZZ_SECONDS=20 fuzz/run.sh            # smoke run
#   LUMEN_SHARED=/path/to/shared fuzz/run.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_PER_TARGET=${FUZZ_SECONDS:-600}
SHARED=${LUMEN_SHARED:-$ROOT/../shared}
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
JOBS=${JOBS:-2}

# ---- toolchain: clang plus the libFuzzer/sanitizer runtimes (Debian 12: libclang-rt-14-dev) ----
need=()
command -v clang++ >/dev/null || need+=(clang)
dpkg -s libclang-rt-14-dev >/dev/null 2>&1 || dpkg -s libclang-rt-dev >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
if ((${#need[@]})); then
  echo "fuzz: installing ${need[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <cstdint>\n#include <cstddef>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' > "$probe/p.cpp"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" 2>"$probe/err"; then
  echo "fuzz: clang cannot link libFuzzer:"; cat "$probe/err"; exit 2
fi

# ---- build ----------------------------------------------------------------------------------------
mkdir -p "$BUILD"
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLUMEN_FUZZ=ON \
  -DLUMEN_BUILD_TESTS=OFF -DLUMEN_BUILD_BENCH=OFF >"$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log"; exit 2; }
targets=(fuzz_safetensors)
[ -f fuzz/fuzz_tokenizer.cpp ] && targets+=(fuzz_tokenizer)
cmake --build "$BUILD" --target "${targets[@]}" -j "$JOBS"

# ---- seed corpora (only files not there yet; the fuzzer keeps what it adds) -----------------------
mkdir -p fuzz/out fuzz/corpus-safetensors
if [ -d "$SHARED/testdata" ]; then
  while IFS= read -r f; do
    seed="fuzz/corpus-safetensors/$(echo "${f#"$SHARED"/testdata/}" | tr '/' '_')"
    [ -e "$seed" ] && continue
    size=$(stat -c %s "$f")
    if [ "$size" -le 65536 ]; then
      cp "$f" "$seed"
    else  # big checkpoints: the header and the first data bytes are what the parser looks at
      n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
      head -c $((8 + n + 256)) "$f" >"$seed"
    fi
  done < <(find "$SHARED/testdata" -name '*.safetensors' | sort)
else
  echo "fuzz: no shared test data at $SHARED; seeding safetensors with a minimal file only"
fi
hdr='{"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  '
{ printf "$(printf '\\%03o' "${#hdr}")"; printf '\0\0\0\0\0\0\0%s' "$hdr"; head -c 8 /dev/zero; } \
  >fuzz/corpus-safetensors/minimal.safetensors

# Words the JSON mutator would take long to invent.
cat >"$BUILD/safetensors.dict" <<'DICT'
"dtype"
"shape"
"data_offsets"
"__metadata__"
"F64"
"F32"
"F16"
"BF16"
"I64"
"I32"
"I16"
"I8"
"U8"
"BOOL"
"format"
"pt"
"18446744073709551615"
"9223372036854775807"
DICT

if [[ " ${targets[*]} " == *" fuzz_tokenizer "* ]]; then
  mkdir -p fuzz/corpus-tokenizer
  i=0
  for s in "Hello world" "Hello  world" "" " " "Once upon a time" $'tabs\tand\nnewlines\r\n' \
           "don't won't 123 4.56" "héllo wörld" "Привет мир" "こんにちは世界" "你好，世界" "안녕하세요" \
           "مرحبا" "नमस्ते" "👍🏽 👨‍👩‍👧" "∑∫√∞" "<|endoftext|>" "<s> </s> <unk>" $'nbsp\xc2\xa0zwsp\xe2\x80\x8b' \
           "int main() { return 0; }" "https://example.com/a?b=c"; do
    printf '%s' "$s" >"fuzz/corpus-tokenizer/seed$i.txt"
    i=$((i + 1))
  done
  printf '\xff\xfe\x80 invalid utf-8 \xc3' >fuzz/corpus-tokenizer/invalid_utf8.txt
fi

# ---- run ------------------------------------------------------------------------------------------
status=0
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  extra=()
  [ "$t" = fuzz_safetensors ] && extra+=(-dict="$BUILD/safetensors.dict" -max_len=65536)
  echo "=== $t: ${SECONDS_PER_TARGET}s, corpus fuzz/corpus-$name ($(ls fuzz/corpus-"$name" | wc -l) files)"
  before=$(ls fuzz/out | wc -l)
  set +e
  "$BUILD/fuzz/$t" "fuzz/corpus-$name" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="fuzz/out/$name-" "${extra[@]}" 2>"$BUILD/$t.log"
  rc=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$BUILD/$t.log" || true
  found=$(ls fuzz/out | wc -l)
  if [ "$rc" -ne 0 ] || [ "$found" -gt "$before" ]; then
    status=1
    echo "!!! $t FOUND A PROBLEM (exit $rc); log: $BUILD/$t.log"
    grep -E 'ERROR: |SUMMARY: |runtime error|Test unit written' "$BUILD/$t.log" | head -20 || true
    echo "reproduce: $BUILD/fuzz/$t fuzz/out/<file>"
  else
    echo "--- $t: no crashes, corpus now $(ls fuzz/corpus-"$name" | wc -l) files"
  fi
done
exit $status
