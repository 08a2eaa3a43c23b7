// Model: one transformer for every supported checkpoint (HF gpt2 / llama / gemma2 folders and
// llama2.c .bin files), with hook points at every standard site.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "lumen/config.h"
#include "lumen/hooks.h"
#include "lumen/tokenizer.h"

namespace lumen {

struct LoadOptions {
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;  // compute dtype; weights are converted when they differ
  std::string tokenizer_path;           // empty: look next to the model
  bool require_tokenizer = false;       // throw when none is found
};

// "cpu", "cuda" or "cuda:N" -> the device; a GPU this build or machine lacks (or an index past the
// last GPU) throws Error(Arg).
c10::Device parse_device(const std::string& name);
// "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16" -> the dtype; anything else throws Error(Arg).
c10::ScalarType parse_dtype(const std::string& name);

// Keys and values of past positions, one pair per layer, preallocated to `capacity` positions.
struct KVCache {
  std::vector<at::Tensor> k, v;  // [B, K, capacity, E]
  at::Tensor key_valid;          // [B, capacity] bool; false for left padding
  at::Tensor next_pos;           // [B] int64: the position id the next token of each row gets
  int64_t length = 0;            // positions filled
  int64_t capacity = 0;
  bool padded = false;           // some row was left-padded: positions and masks per row
};

struct RunOptions {
  HookSet* hooks = nullptr;
  // Run blocks [0, stop_at_layer) and return the residual stream [B,T,D] (TransformerLens
  // semantics: blocks.{n-1}.hook_resid_post is the last site that runs). -1: run everything.
  int64_t stop_at_layer = -1;
  KVCache* cache = nullptr;     // decoding: reads and extends it
  at::Tensor input_embeds;      // [B,T,D] replaces the token embeddings (before x embed_scale)
  at::Tensor attention_mask;    // [B,T] bool/int, 0 = padding (no cache); ignored with a cache
};

class Model {
 public:
  // A folder with config.json (+ safetensors), a llama2.c .bin file, or a folder holding one.
  static Model load(const std::string& path, const LoadOptions& opt = {});

  const ModelConfig& config() const;
  const std::string& path() const;
  const Tokenizer* tokenizer() const;  // may be null
  const Tokenizer& require_tokenizer() const;  // throws Error(Tokenizer) naming where it looked
  c10::Device device() const;
  c10::ScalarType dtype() const;

  // tokens [B,T] int64 on any device -> logits [B,T,V] (or the residual stream with stop_at_layer).
  at::Tensor forward(const at::Tensor& tokens, const RunOptions& opt = {}) const;

  // Token embeddings [B,T,D] (x embed_scale is applied by forward, not here). With a one-hot
  // (or relaxed) [B,T,V] input the result is differentiable in it: the token-gradient path.
  at::Tensor embed_tokens(const at::Tensor& tokens) const;
  at::Tensor embed_one_hot(const at::Tensor& one_hot) const;
  at::Tensor unembed_matrix() const;  // [V,D]

  std::vector<HookPoint> hook_points() const;
  std::vector<std::string> hook_names() const;
  KVCache new_cache(int64_t batch, int64_t capacity) const;

  // Parameters by canonical name (blocks.{l}.attn.W_Q, ...), as views of the loaded weights.
  std::map<std::string, at::Tensor> named_parameters() const;
  void set_requires_grad(bool on);
  int64_t num_parameters() const;

  struct Impl;
  explicit Model(std::shared_ptr<Impl> impl);
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<Impl> impl_;
};

// Token ids as a [1,T] int64 tensor on `device`.
at::Tensor tokens_tensor(const std::vector<int32_t>& ids, c10::Device device = c10::Device(c10::kCPU));

// Writes `model` as an HF llama folder: config.json, model.safetensors (float32) and the tokenizer
// found next to the model. llama and llama2c families only; llama2.c q/k rows are permuted from
// interleaved to rotate-half RoPE order, so the exported model computes the same logits.
void save_hf_checkpoint(const Model& model, const std::string& dir);

}  // namespace lumen
