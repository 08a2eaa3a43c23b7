// libFuzzer target for the safetensors header parser: any input must either parse into entries
// that are safe to read, or throw lumen::Error. Anything else (crash, sanitizer report, a
// "valid" entry pointing outside the input) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "lumen/error.h"
#include "lumen/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lumen::SafetensorsHeader h = lumen::parse_safetensors_header(data, size, "fuzz.safetensors");
    // Touch every accepted byte range so ASan checks what the validator promised.
    unsigned sum = 0;
    for (const auto& e : h.tensors) {
      if (h.data_start + e.end > size || e.begin > e.end) std::abort();
      if (static_cast<uint64_t>(e.numel()) * lumen::dtype_size(e.dtype) != e.end - e.begin) std::abort();
      for (size_t i = e.begin; i < e.end; ++i) sum += data[h.data_start + i];
    }
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const lumen::Error&) {
    // Rejected input: the expected outcome for most mutations.
  }
  return 0;
}
