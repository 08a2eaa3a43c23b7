// ModelConfig: a transformer described by sizes plus independent axes (norm kind, position kind,
// MLP layout, soft-caps, ...). One forward pass reads these axes; model/arch.cpp maps each
// checkpoint family onto them, so no code outside that file asks "is this Gemma?".
#pragma once

#include <cstdint>
#include <string>

namespace lumen {

enum class NormKind { LayerNorm, RMSNorm };
enum class PosKind { Learned, Rotary };
enum class RopeStyle { RotateHalf, Interleaved };  // HF pairs (i, i+hd/2); Meta/llama2.c (2i, 2i+1)
enum class MlpKind { Standard, Gated };            // down(act(W_in x)) | down(act(gate x) * up x)
enum class ActKind { GeluTanh, GeluErf, Silu, Relu };

struct ModelConfig {
  std::string family;  // the arch.cpp row that produced it: "gpt2", "llama", "gemma2", "llama2c"
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // < n_heads: grouped-query attention; 1: multi-query
  int64_t d_head = 0;      // explicit: Gemma 2 allows n_heads * d_head != d_model
  int64_t d_mlp = 0;
  int64_t d_vocab = 0;
  int64_t n_ctx = 0;

  NormKind norm = NormKind::LayerNorm;
  double norm_eps = 1e-5;
  bool norm_weight_plus_one = false;  // Gemma stores w and multiplies by (1 + w)
  bool sandwich_norms = false;        // extra norms on the attention and MLP outputs (Gemma 2)

  PosKind pos = PosKind::Learned;
  RopeStyle rope_style = RopeStyle::RotateHalf;
  double rope_theta = 10000.0;

  MlpKind mlp = MlpKind::Standard;
  ActKind act = ActKind::GeluTanh;
  bool attn_qkv_bias = false;
  bool attn_out_bias = false;
  bool mlp_bias = false;
  bool final_norm_bias = false;  // LayerNorm biases (GPT-2) everywhere

  double attn_scale = 0.0;      // multiplies q·k; 1/sqrt(d_head) or query_pre_attn_scalar^-0.5
  double attn_softcap = 0.0;    // 0: off. tanh(s / c) * c before the mask
  double final_softcap = 0.0;   // 0: off. applied to the logits
  int64_t sliding_window = 0;   // 0: off. query i sees keys j with i - W < j <= i
  int64_t sliding_period = 0;   // layer l slides iff sliding_window > 0 and l % period == 0
  double embed_scale = 1.0;     // Gemma: sqrt(d_model)
  bool tied_embeddings = true;

  int32_t bos_id = -1;
  int32_t eos_id = -1;
  std::string file_dtype = "F32";  // what the checkpoint stores

  bool layer_slides(int64_t layer) const {
    return sliding_window > 0 && sliding_period > 0 && layer % sliding_period == 0;
  }
  int64_t q_width() const { return n_heads * d_head; }
  int64_t kv_width() const { return n_kv_heads * d_head; }
  void validate(const std::string& origin) const;  // throws Error(Config)
  std::string summary() const;                     // multi-line, for `lumen info`
};

const char* to_string(NormKind v);
const char* to_string(PosKind v);
const char* to_string(RopeStyle v);
const char* to_string(MlpKind v);
const char* to_string(ActKind v);

}  // namespace lumen
