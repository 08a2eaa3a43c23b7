// Pieces the circuit files share: answer rows for a batch of pairs and the word-level metric.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "lumen/circuits.h"
#include "lumen/tokenizer.h"

namespace lumen::circuits {

// The tokens of `answer` as a continuation of `prefix`.
std::vector<int32_t> continuation(const Tokenizer& tok, const std::string& prefix, const std::string& answer);

// A batch of N pairs as 2N rows: row 2i is prefix_i + clean answer, row 2i+1 prefix_i + patch answer,
// right-padded to L = T + longest answer (causal attention: padding never reaches earlier positions).
struct Rows {
  at::Tensor tokens;  // [2N, L] int64, CPU
  std::vector<std::vector<int32_t>> answers;  // by row
  int64_t n = 0, T = 0, L = 0;
};
Rows build_rows(const std::vector<const SvaExample*>& ex, bool patch_prefix, int32_t pad);

// m per pair [N] from logits [2N, L, V]: word score of the patch answer minus that of the clean one.
at::Tensor word_metric(const at::Tensor& logits, const Rows& r, const at::Tensor& new_word);

// Examples grouped by prefix length (a batch shares T), in batches of at most `batch`; limit < 0: all.
std::vector<std::vector<const SvaExample*>> batches_by_length(const SvaData& data, int64_t batch, int64_t limit);

inline at::Tensor forward_with(const Model& model, const at::Tensor& tokens, HookSet& hooks) {
  RunOptions o;
  o.hooks = &hooks;
  return model.forward(tokens, o);
}

inline int32_t pad_id(const Model& model) {
  const int32_t e = model.config().eos_id;
  return e >= 0 ? e : 0;
}

}  // namespace lumen::circuits
