// The architecture table: one row per checkpoint family. A row maps HF config keys onto
// ModelConfig, sets the axes, and names the tensor of each role. This is the only file that
// knows families apart; adding one is a row here plus a parity fixture.
#include <nlohmann/json.hpp>

#include <cmath>
#include <optional>
#include <sstream>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tensors.h"
#include "model/impl.h"

namespace lumen {
namespace {

using json = nlohmann::json;

enum class Role {
  Embed, PosEmbed, FinalNormW, FinalNormB, Unembed,  // global
  Ln1W, Ln1B, QkvW, QkvB, QW, KW, VW, QB, KB, VB, OW, OB, PostAttnW,
  Ln2W, Ln2B, InW, InB, UpW, OutW, OutB, PostMlpW,
};

struct TensorRule {
  Role role;
  const char* name;  // "{l}" stands for the layer index
  bool conv1d;       // stored [in, out] (GPT-2 Conv1D): viewed through .t()
};

struct ArchRow {
  const char* model_type;
  std::vector<const char*> prefixes;  // tried in order, then the bare name
  std::vector<TensorRule> tensors;
  std::vector<const char*> ignored_suffixes;  // buffers that are not parameters
  void (*read_config)(ModelConfig& c, const json& j, const std::string& origin);
};

// ---- config helpers ---------------------------------------------------------------------------

const json* find_key(const json& j, std::initializer_list<const char*> keys) {
  for (const char* k : keys) {
    auto it = j.find(k);
    if (it != j.end() && !it->is_null()) return &*it;
  }
  return nullptr;
}

int64_t get_int(const json& j, std::initializer_list<const char*> keys, const std::string& origin,
                std::optional<int64_t> fallback = std::nullopt) {
  const json* v = find_key(j, keys);
  if (!v) {
    if (fallback) return *fallback;
    throw Error(ErrorKind::Config, origin + ": missing key '" + *keys.begin() + "'");
  }
  if (!v->is_number_integer())
    throw Error(ErrorKind::Config, origin + ": key '" + *keys.begin() + "' must be an integer, got " + v->dump());
  return v->get<int64_t>();
}

double get_num(const json& j, std::initializer_list<const char*> keys, double fallback) {
  const json* v = find_key(j, keys);
  return (v && v->is_number()) ? v->get<double>() : fallback;
}

bool get_bool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return (it != j.end() && it->is_boolean()) ? it->get<bool>() : fallback;
}

ActKind parse_act(const std::string& name, const std::string& origin) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return ActKind::GeluTanh;
  if (name == "gelu") return ActKind::GeluErf;
  if (name == "silu" || name == "swish") return ActKind::Silu;
  if (name == "relu") return ActKind::Relu;
  throw Error(ErrorKind::Config, origin + ": unsupported activation '" + name +
                                     "' (expected gelu_new, gelu_pytorch_tanh, gelu, silu or relu)");
}

std::string get_str(const json& j, std::initializer_list<const char*> keys, const std::string& fallback) {
  const json* v = find_key(j, keys);
  return (v && v->is_string()) ? v->get<std::string>() : fallback;
}

void read_token_ids(ModelConfig& c, const json& j) {
  if (const json* v = find_key(j, {"bos_token_id"}); v && v->is_number_integer()) c.bos_id = v->get<int32_t>();
  if (const json* v = find_key(j, {"eos_token_id"}); v && v->is_number_integer()) c.eos_id = v->get<int32_t>();
}

// ---- rows -------------------------------------------------------------------------------------

void gpt2_config(ModelConfig& c, const json& j, const std::string& o) {
  c.d_model = get_int(j, {"n_embd", "hidden_size"}, o);
  c.n_layers = get_int(j, {"n_layer", "num_hidden_layers"}, o);
  c.n_heads = get_int(j, {"n_head", "num_attention_heads"}, o);
  c.n_kv_heads = c.n_heads;
  c.d_head = c.d_model / c.n_heads;
  c.d_mlp = get_int(j, {"n_inner"}, o, 4 * c.d_model);
  c.d_vocab = get_int(j, {"vocab_size"}, o);
  c.n_ctx = get_int(j, {"n_positions", "n_ctx", "max_position_embeddings"}, o);
  c.norm = NormKind::LayerNorm;
  c.norm_eps = get_num(j, {"layer_norm_epsilon"}, 1e-5);
  c.pos = PosKind::Learned;
  c.mlp = MlpKind::Standard;
  c.act = parse_act(get_str(j, {"activation_function"}, "gelu_new"), o);
  c.attn_qkv_bias = c.attn_out_bias = c.mlp_bias = c.final_norm_bias = true;
  c.attn_scale = 1.0 / std::sqrt(static_cast<double>(c.d_head));
  c.tied_embeddings = get_bool(j, "tie_word_embeddings", true);
  require(!get_bool(j, "scale_attn_by_inverse_layer_idx", false) && !get_bool(j, "reorder_and_upcast_attn", false),
          ErrorKind::Config, o + ": scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported");
}

void llama_config(ModelConfig& c, const json& j, const std::string& o) {
  c.d_model = get_int(j, {"hidden_size"}, o);
  c.n_layers = get_int(j, {"num_hidden_layers"}, o);
  c.n_heads = get_int(j, {"num_attention_heads"}, o);
  c.n_kv_heads = get_int(j, {"num_key_value_heads"}, o, c.n_heads);
  c.d_head = get_int(j, {"head_dim"}, o, c.d_model / c.n_heads);
  c.d_mlp = get_int(j, {"intermediate_size"}, o);
  c.d_vocab = get_int(j, {"vocab_size"}, o);
  c.n_ctx = get_int(j, {"max_position_embeddings"}, o, 2048);
  c.norm = NormKind::RMSNorm;
  c.norm_eps = get_num(j, {"rms_norm_eps"}, 1e-6);
  c.pos = PosKind::Rotary;
  c.rope_style = RopeStyle::RotateHalf;
  c.rope_theta = get_num(j, {"rope_theta"}, 10000.0);
  const json* scaling = find_key(j, {"rope_scaling"});
  require(!scaling, ErrorKind::Config, o + ": rope_scaling is not supported yet (found " + (scaling ? scaling->dump() : "") + ")");
  c.mlp = MlpKind::Gated;
  c.act = parse_act(get_str(j, {"hidden_act"}, "silu"), o);
  c.attn_qkv_bias = c.attn_out_bias = get_bool(j, "attention_bias", false);
  c.mlp_bias = get_bool(j, "mlp_bias", false);
  require(!c.mlp_bias, ErrorKind::Config, o + ": mlp_bias=true is not supported for llama checkpoints");
  c.attn_scale = 1.0 / std::sqrt(static_cast<double>(c.d_head));
  c.tied_embeddings = get_bool(j, "tie_word_embeddings", false);
}

void gemma2_config(ModelConfig& c, const json& j, const std::string& o) {
  llama_config(c, j, o);
  c.d_head = get_int(j, {"head_dim"}, o, 256);
  c.norm_weight_plus_one = true;
  c.sandwich_norms = true;
  c.act = parse_act(get_str(j, {"hidden_activation", "hidden_act"}, "gelu_pytorch_tanh"), o);
  c.attn_scale = 1.0 / std::sqrt(get_num(j, {"query_pre_attn_scalar"}, static_cast<double>(c.d_head)));
  c.attn_softcap = get_num(j, {"attn_logit_softcapping"}, 0.0);
  c.final_softcap = get_num(j, {"final_logit_softcapping"}, 0.0);
  c.sliding_window = get_int(j, {"sliding_window"}, o, 4096);
  c.sliding_period = 2;  // HF's default layer_types: sliding on even layers, global on odd
  if (const json* lt = find_key(j, {"layer_types"}); lt && lt->is_array()) {
    for (size_t l = 0; l < lt->size(); ++l) {
      bool slides = (*lt)[l] == "sliding_attention";
      require(slides == (l % 2 == 0), ErrorKind::Config,
              o + ": layer_types must alternate sliding/full starting with sliding (layer " + std::to_string(l) + ")");
    }
  }
  c.embed_scale = std::sqrt(static_cast<double>(c.d_model));
  c.tied_embeddings = get_bool(j, "tie_word_embeddings", true);
}

const std::vector<ArchRow>& arch_table() {
  static const std::vector<ArchRow> rows = {
      {"gpt2",
       {"transformer."},
       {{Role::Embed, "wte.weight", false},
        {Role::PosEmbed, "wpe.weight", false},
        {Role::Ln1W, "h.{l}.ln_1.weight", false},
        {Role::Ln1B, "h.{l}.ln_1.bias", false},
        {Role::QkvW, "h.{l}.attn.c_attn.weight", true},
        {Role::QkvB, "h.{l}.attn.c_attn.bias", false},
        {Role::OW, "h.{l}.attn.c_proj.weight", true},
        {Role::OB, "h.{l}.attn.c_proj.bias", false},
        {Role::Ln2W, "h.{l}.ln_2.weight", false},
        {Role::Ln2B, "h.{l}.ln_2.bias", false},
        {Role::InW, "h.{l}.mlp.c_fc.weight", true},
        {Role::InB, "h.{l}.mlp.c_fc.bias", false},
        {Role::OutW, "h.{l}.mlp.c_proj.weight", true},
        {Role::OutB, "h.{l}.mlp.c_proj.bias", false},
        {Role::FinalNormW, "ln_f.weight", false},
        {Role::FinalNormB, "ln_f.bias", false},
        {Role::Unembed, "lm_head.weight", false}},
       {".attn.bias", ".attn.masked_bias"},
       gpt2_config},
      {"llama",
       {"model."},
       {{Role::Embed, "embed_tokens.weight", false},
        {Role::Ln1W, "layers.{l}.input_layernorm.weight", false},
        {Role::QW, "layers.{l}.self_attn.q_proj.weight", false},
        {Role::KW, "layers.{l}.self_attn.k_proj.weight", false},
        {Role::VW, "layers.{l}.self_attn.v_proj.weight", false},
        {Role::QB, "layers.{l}.self_attn.q_proj.bias", false},
        {Role::KB, "layers.{l}.self_attn.k_proj.bias", false},
        {Role::VB, "layers.{l}.self_attn.v_proj.bias", false},
        {Role::OW, "layers.{l}.self_attn.o_proj.weight", false},
        {Role::OB, "layers.{l}.self_attn.o_proj.bias", false},
        {Role::Ln2W, "layers.{l}.post_attention_layernorm.weight", false},
        {Role::InW, "layers.{l}.mlp.gate_proj.weight", false},
        {Role::UpW, "layers.{l}.mlp.up_proj.weight", false},
        {Role::OutW, "layers.{l}.mlp.down_proj.weight", false},
        {Role::FinalNormW, "norm.weight", false},
        {Role::Unembed, "lm_head.weight", false}},
       {".rotary_emb.inv_freq"},
       llama_config},
      {"gemma2",
       {"model."},
       {{Role::Embed, "embed_tokens.weight", false},
        {Role::Ln1W, "layers.{l}.input_layernorm.weight", false},
        {Role::QW, "layers.{l}.self_attn.q_proj.weight", false},
        {Role::KW, "layers.{l}.self_attn.k_proj.weight", false},
        {Role::VW, "layers.{l}.self_attn.v_proj.weight", false},
        {Role::OW, "layers.{l}.self_attn.o_proj.weight", false},
        {Role::PostAttnW, "layers.{l}.post_attention_layernorm.weight", false},
        {Role::Ln2W, "layers.{l}.pre_feedforward_layernorm.weight", false},
        {Role::InW, "layers.{l}.mlp.gate_proj.weight", false},
        {Role::UpW, "layers.{l}.mlp.up_proj.weight", false},
        {Role::OutW, "layers.{l}.mlp.down_proj.weight", false},
        {Role::PostMlpW, "layers.{l}.post_feedforward_layernorm.weight", false},
        {Role::FinalNormW, "norm.weight", false},
        {Role::Unembed, "lm_head.weight", false}},
       {".rotary_emb.inv_freq"},
       gemma2_config},
  };
  return rows;
}

const ArchRow* find_row(const std::string& model_type) {
  for (const auto& r : arch_table())
    if (model_type == r.model_type) return &r;
  return nullptr;
}

std::string supported_types() {
  std::string s;
  for (const auto& r : arch_table()) s += (s.empty() ? "" : ", ") + std::string(r.model_type);
  return s;
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? "," : "") << s[i];
  o << "]";
  return o.str();
}

std::string expand(const char* tmpl, int64_t layer) {
  std::string s(tmpl);
  auto p = s.find("{l}");
  if (p != std::string::npos) s.replace(p, 3, std::to_string(layer));
  return s;
}

// Expected stored shape of each role, given the config ([in,out] for Conv1D rules).
std::vector<int64_t> expected_shape(Role r, const ModelConfig& c, bool conv1d) {
  const int64_t D = c.d_model, F = c.d_mlp, V = c.d_vocab, Q = c.q_width(), KV = c.kv_width();
  auto lin = [&](int64_t out, int64_t in) {
    return conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in};
  };
  switch (r) {
    case Role::Embed: case Role::Unembed: return {V, D};
    case Role::PosEmbed: return {c.n_ctx, D};
    case Role::FinalNormW: case Role::FinalNormB: case Role::Ln1W: case Role::Ln1B: case Role::Ln2W:
    case Role::Ln2B: case Role::PostAttnW: case Role::PostMlpW: case Role::OB: case Role::OutB:
      return {D};
    case Role::QkvW: return lin(Q + 2 * KV, D);
    case Role::QkvB: return {Q + 2 * KV};
    case Role::QW: return lin(Q, D);
    case Role::KW: case Role::VW: return lin(KV, D);
    case Role::QB: return {Q};
    case Role::KB: case Role::VB: return {KV};
    case Role::OW: return lin(D, Q);
    case Role::InW: case Role::UpW: return lin(F, D);
    case Role::InB: return {F};
    case Role::OutW: return lin(D, F);
  }
  return {};
}

bool role_required(Role r, const ModelConfig& c) {
  switch (r) {
    case Role::PosEmbed: return c.pos == PosKind::Learned;
    case Role::Unembed: return !c.tied_embeddings;
    case Role::QB: case Role::KB: case Role::VB: case Role::QkvB: return c.attn_qkv_bias;
    case Role::OB: return c.attn_out_bias;
    case Role::InB: case Role::OutB: return c.mlp_bias;
    case Role::FinalNormB: case Role::Ln1B: case Role::Ln2B: return c.final_norm_bias;
    case Role::UpW: return c.mlp == MlpKind::Gated;
    case Role::PostAttnW: case Role::PostMlpW: return c.sandwich_norms;
    default: return true;
  }
}

}  // namespace

ModelConfig parse_hf_config(const std::string& config_path) {
  json j;
  try {
    j = json::parse(read_file(config_path));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Config, config_path + ": not valid JSON (" + e.what() + ")");
  }
  require(j.is_object(), ErrorKind::Config, config_path + ": expected a JSON object");
  const std::string model_type = get_str(j, {"model_type"}, "");
  require(!model_type.empty(), ErrorKind::Config, config_path + ": missing 'model_type' (supported: " + supported_types() + ")");
  const ArchRow* row = find_row(model_type);
  require(row != nullptr, ErrorKind::Config,
          config_path + ": unknown model_type '" + model_type + "' (supported: " + supported_types() + ")");
  ModelConfig c;
  c.family = row->model_type;
  row->read_config(c, j, config_path);
  read_token_ids(c, j);
  const std::string td = get_str(j, {"torch_dtype", "dtype"}, "float32");
  c.file_dtype = td == "float16" ? "F16" : td == "bfloat16" ? "BF16" : td == "float64" ? "F64" : "F32";
  c.validate(config_path);
  return c;
}

void assign_hf_weights(Model::Impl& m, const TensorStore& store) {
  const ModelConfig& c = m.cfg;
  const ArchRow* row = find_row(c.family);
  require(row != nullptr, ErrorKind::Config, "no architecture row for family '" + c.family + "'");

  auto resolve = [&](const std::string& bare) -> std::string {
    for (const char* p : row->prefixes)
      if (store.has(p + bare)) return p + bare;
    return store.has(bare) ? bare : std::string();
  };
  auto load = [&](const TensorRule& rule, int64_t layer) -> torch::Tensor {
    const std::string bare = expand(rule.name, layer);
    const std::string name = resolve(bare);
    if (name.empty()) {
      require(!role_required(rule.role, c), ErrorKind::Format,
              store.origin() + ": missing tensor '" + bare + "' (also tried prefixes " +
                  (row->prefixes.empty() ? "none" : std::string(row->prefixes[0])) + ") required by " + c.family);
      return {};
    }
    torch::Tensor t = store.get(name);
    const auto want = expected_shape(rule.role, c, rule.conv1d);
    require(t.sizes().vec() == want, ErrorKind::Shape,
            store.file_of(name) + ": tensor '" + name + "' has shape " + shape_str(t.sizes()) + ", expected " +
                shape_str(want) + " from config.json" + (rule.conv1d ? " (Conv1D [in,out])" : ""));
    return rule.conv1d ? t.t() : t;
  };

  m.layers.assign(c.n_layers, LayerWeights{});
  for (const TensorRule& rule : row->tensors) {
    const bool per_layer = std::string(rule.name).find("{l}") != std::string::npos;
    for (int64_t l = 0; l < (per_layer ? c.n_layers : 1); ++l) {
      torch::Tensor t = load(rule, l);
      if (!t.defined()) continue;
      LayerWeights& w = m.layers[per_layer ? l : 0];
      const int64_t Q = c.q_width(), KV = c.kv_width();
      switch (rule.role) {
        case Role::Embed: m.w_embed = t; break;
        case Role::PosEmbed: m.w_pos = t; break;
        case Role::FinalNormW: m.lnf_w = t; break;
        case Role::FinalNormB: m.lnf_b = t; break;
        case Role::Unembed: m.w_unembed = t; break;
        case Role::Ln1W: w.ln1_w = t; break;
        case Role::Ln1B: w.ln1_b = t; break;
        case Role::QkvW:  // [Q+2KV, D] after .t(): rows are [q | k | v]
          w.wq = t.narrow(0, 0, Q); w.wk = t.narrow(0, Q, KV); w.wv = t.narrow(0, Q + KV, KV); break;
        case Role::QkvB:
          w.bq = t.narrow(0, 0, Q); w.bk = t.narrow(0, Q, KV); w.bv = t.narrow(0, Q + KV, KV); break;
        case Role::QW: w.wq = t; break;
        case Role::KW: w.wk = t; break;
        case Role::VW: w.wv = t; break;
        case Role::QB: w.bq = t; break;
        case Role::KB: w.bk = t; break;
        case Role::VB: w.bv = t; break;
        case Role::OW: w.wo = t; break;
        case Role::OB: w.bo = t; break;
        case Role::PostAttnW: w.post_attn_w = t; break;
        case Role::Ln2W: w.ln2_w = t; break;
        case Role::Ln2B: w.ln2_b = t; break;
        case Role::InW: w.w_in = t; break;
        case Role::InB: w.b_in = t; break;
        case Role::UpW: w.w_up = t; break;
        case Role::OutW: w.w_out = t; break;
        case Role::OutB: w.b_out = t; break;
        case Role::PostMlpW: w.post_mlp_w = t; break;
      }
    }
  }
  if (c.tied_embeddings || !m.w_unembed.defined()) m.w_unembed = m.w_embed;
}

// The llama2.c row: a legacy .bin header maps onto the same axes as HF llama, but with Meta's
// interleaved rotary pairs and run.c's fixed eps.
ModelConfig llama2c_config(int32_t dim, int32_t hidden, int32_t n_layers, int32_t n_heads, int32_t n_kv_heads,
                           int32_t vocab, int32_t seq_len) {
  ModelConfig c;
  c.family = "llama2c";
  c.d_model = dim;
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.d_head = n_heads > 0 ? dim / n_heads : 0;
  c.d_mlp = hidden;
  c.d_vocab = vocab < 0 ? -vocab : vocab;
  c.n_ctx = seq_len;
  c.norm = NormKind::RMSNorm;
  c.norm_eps = 1e-5;
  c.pos = PosKind::Rotary;
  c.rope_style = RopeStyle::Interleaved;
  c.rope_theta = 10000.0;
  c.mlp = MlpKind::Gated;
  c.act = ActKind::Silu;
  c.attn_scale = c.d_head > 0 ? 1.0 / std::sqrt(static_cast<double>(c.d_head)) : 0.0;
  c.tied_embeddings = vocab > 0;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

}  // namespace lumen
