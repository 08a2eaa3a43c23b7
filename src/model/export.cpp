// save_hf_checkpoint: writes a model as an HF llama folder (config.json + model.safetensors +
// tokenizer), so a fine-tuned model is an ordinary checkpoint every lumen command loads.
// llama2.c models rotate interleaved pairs (2i, 2i+1); HF llama rotates halves (i, i+E/2), so
// their q/k rows are permuted on the way out and the exported model computes the same function.
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tensors.h"
#include "model/impl.h"

namespace lumen {
namespace {

// [H*E, D] rows ordered (h, i, j) with pair element j -> (h, j, i): interleaved to rotate-half.
torch::Tensor interleaved_to_half(const torch::Tensor& w, int64_t heads, int64_t d_head) {
  const int64_t cols = w.dim() == 2 ? w.size(1) : 1;
  return w.reshape({heads, d_head / 2, 2, cols}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// The tokenizer file next to the model, with the name the HF loader looks for.
std::pair<std::string, std::string> find_tokenizer_file(const Model& model) {
  const std::string dir = is_directory(model.path()) ? model.path() : parent_dir(model.path());
  const std::string V = std::to_string(model.config().d_vocab);
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"})
    if (file_exists(join_path(dir, name))) return {join_path(dir, name), name};
  if (file_exists(join_path(dir, "tok" + V + ".bin"))) return {join_path(dir, "tok" + V + ".bin"), "tokenizer.bin"};
  return {};
}

}  // namespace

void save_hf_checkpoint(const Model& model, const std::string& dir) {
  const ModelConfig& c = model.config();
  require(c.family == "llama" || c.family == "llama2c", ErrorKind::Config,
          "save_hf_checkpoint(" + dir + "): only llama and llama2c models can be exported, this is '" + c.family + "'");
  ::mkdir(dir.c_str(), 0755);
  require(is_directory(dir), ErrorKind::Io, dir + ": cannot create the output folder");
  const bool permute = c.rope_style == RopeStyle::Interleaved;
  auto params = model.named_parameters();
  auto get = [&](const std::string& n) -> torch::Tensor {
    auto it = params.find(n);
    if (it == params.end()) return {};
    return it->second.detach().to(torch::kCPU, torch::kFloat).contiguous();
  };

  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", get("embed.W_E"));
  out.emplace_back("model.norm.weight", get("ln_final.w"));
  if (!c.tied_embeddings) out.emplace_back("lm_head.weight", get("unembed.W_U"));
  const std::pair<const char*, const char*> names[] = {
      {"ln1.w", "input_layernorm.weight"}, {"attn.W_Q", "self_attn.q_proj.weight"},
      {"attn.W_K", "self_attn.k_proj.weight"}, {"attn.W_V", "self_attn.v_proj.weight"},
      {"attn.W_O", "self_attn.o_proj.weight"}, {"attn.b_Q", "self_attn.q_proj.bias"},
      {"attn.b_K", "self_attn.k_proj.bias"}, {"attn.b_V", "self_attn.v_proj.bias"},
      {"attn.b_O", "self_attn.o_proj.bias"}, {"ln2.w", "post_attention_layernorm.weight"},
      {"mlp.W_gate", "mlp.gate_proj.weight"}, {"mlp.W_in", "mlp.up_proj.weight"},
      {"mlp.W_out", "mlp.down_proj.weight"}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string src = "blocks." + std::to_string(l) + ".", dst = "model.layers." + std::to_string(l) + ".";
    for (const auto& [from, to] : names) {
      torch::Tensor t = get(src + from);
      if (!t.defined()) continue;
      const std::string f(from);
      if (permute && (f == "attn.W_Q" || f == "attn.b_Q")) t = interleaved_to_half(t, c.n_heads, c.d_head);
      if (permute && (f == "attn.W_K" || f == "attn.b_K")) t = interleaved_to_half(t, c.n_kv_heads, c.d_head);
      out.emplace_back(dst + to, t);
    }
  }

  nlohmann::json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.d_model;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.d_head;
  j["intermediate_size"] = c.d_mlp;
  j["vocab_size"] = c.d_vocab;
  j["max_position_embeddings"] = c.n_ctx;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["hidden_act"] = "silu";
  j["attention_bias"] = c.attn_qkv_bias;
  j["tie_word_embeddings"] = c.tied_embeddings;
  if (c.bos_id >= 0) j["bos_token_id"] = c.bos_id;
  if (c.eos_id >= 0) j["eos_token_id"] = c.eos_id;
  j["torch_dtype"] = "float32";

  save_safetensors(join_path(dir, "model.safetensors"), out, {{"format", "pt"}});
  write_file_atomic(join_path(dir, "config.json"), [&](std::ostream& os) { os << j.dump(2) << "\n"; });
  auto [tok_src, tok_name] = find_tokenizer_file(model);
  const std::string tok_dst = tok_name.empty() ? std::string() : join_path(dir, tok_name);
  if (!tok_src.empty() && tok_src != tok_dst) {
    const std::string bytes = read_file(tok_src);
    write_file_atomic(tok_dst, [&](std::ostream& os) { os.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
  }
}

}  // namespace lumen
