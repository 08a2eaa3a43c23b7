// Text generation with a KV cache: greedy or seeded sampling (temperature, top-k, top-p), stop
// tokens, batches of prompts (left-padded), and hooks active on the prompt pass or every step.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lumen/model.h"

namespace lumen {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy (first maximum, as llama2.c's argmax)
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
  // Stop tokens. With use_default_stops the model's EOS is added (for llama2.c models, BOS, which
  // is what run.c stops on). A stop token ends its row and is not part of the output.
  std::vector<int32_t> stop_tokens;
  bool use_default_stops = true;
  HookSet* hooks = nullptr;
  bool hooks_every_step = false;  // false: interventions apply during the prompt pass only
  // Called for every generated token of every row, in order.
  std::function<void(size_t row, int32_t prev, int32_t token)> on_token;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;      // per row: prompt + generated
  std::vector<std::vector<int32_t>> generated;   // per row: generated only
  std::vector<bool> stopped;                     // hit a stop token
  int64_t prompt_tokens = 0;                     // forward tokens in the prompt pass (B x T)
  double prefill_seconds = 0, decode_seconds = 0;
};

GenerateResult generate(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& opt);

// Picks the next token from one row of logits (greedy or sampled), as generate() does.
class Sampler {
 public:
  explicit Sampler(const GenerateOptions& opt);
  int32_t pick(const float* logits, int64_t vocab);

 private:
  double temperature_, top_p_;
  int64_t top_k_;
  uint64_t state_;
  double uniform();
};

}  // namespace lumen
