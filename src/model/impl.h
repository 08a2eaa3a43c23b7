// Model internals shared by the loader, the forward pass and generation. Not installed.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "lumen/model.h"

namespace lumen {

// One block's weights in torch.nn.Linear orientation [out, in]. They may be non-contiguous views
// of the mapped checkpoint (e.g. GPT-2's Conv1D [in, out] seen through .t()): linear() takes
// them as they are, which is what makes loading zero-copy.
struct LayerWeights {
  torch::Tensor ln1_w, ln1_b;              // [D]
  torch::Tensor wq, wk, wv;                // [H*E, D], [K*E, D], [K*E, D]
  torch::Tensor bq, bk, bv;                // optional
  torch::Tensor wo, bo;                    // [D, H*E], [D]
  torch::Tensor post_attn_w;               // [D] sandwich norm
  torch::Tensor ln2_w, ln2_b;              // [D]
  torch::Tensor w_in, b_in;                // [F, D]: the gate when gated, else the input matrix
  torch::Tensor w_up;                      // [F, D] gated only
  torch::Tensor w_out, b_out;              // [D, F]
  torch::Tensor post_mlp_w;                // [D] sandwich norm
};

struct Model::Impl {
  ModelConfig cfg;
  std::string path;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string tokenizer_searched;  // where we looked, for the error message
  std::vector<std::shared_ptr<void>> keep_alive;  // mappings the weights view

  torch::Tensor w_embed;   // [V, D]
  torch::Tensor w_pos;     // [n_ctx, D] learned positions
  torch::Tensor lnf_w, lnf_b;
  torch::Tensor w_unembed; // [V, D] (== w_embed when tied)
  std::vector<LayerWeights> layers;
  torch::Tensor rope_cos, rope_sin;  // [n_ctx, E/2] float32

  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;

  // Converts every weight to dtype/device; norm weights (1 + w) folding happens before this.
  void finalize(c10::Device dev, c10::ScalarType dt);
  std::vector<std::pair<std::string, torch::Tensor*>> tensor_slots();
};

// arch.cpp: config.json -> ModelConfig, and the tensor names of each role.
ModelConfig parse_hf_config(const std::string& config_path);
void assign_hf_weights(Model::Impl& m, const class TensorStore& store);
ModelConfig llama2c_config(int32_t dim, int32_t hidden, int32_t n_layers, int32_t n_heads, int32_t n_kv_heads,
                           int32_t vocab, int32_t seq_len);

}  // namespace lumen
