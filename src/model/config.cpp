#include <sstream>

#include "lumen/config.h"
#include "lumen/error.h"

namespace lumen {

const char* to_string(NormKind v) { return v == NormKind::LayerNorm ? "LayerNorm" : "RMSNorm"; }
const char* to_string(PosKind v) { return v == PosKind::Learned ? "learned" : "rotary"; }
const char* to_string(RopeStyle v) { return v == RopeStyle::RotateHalf ? "rotate_half" : "interleaved"; }
const char* to_string(MlpKind v) { return v == MlpKind::Standard ? "standard" : "gated"; }
const char* to_string(ActKind v) {
  switch (v) {
    case ActKind::GeluTanh: return "gelu_tanh";
    case ActKind::GeluErf: return "gelu";
    case ActKind::Silu: return "silu";
    case ActKind::Relu: return "relu";
  }
  return "?";
}

void ModelConfig::validate(const std::string& origin) const {
  auto positive = [&](int64_t v, const char* what) {
    require(v > 0, ErrorKind::Config, origin + ": " + what + " must be positive, got " + std::to_string(v));
  };
  positive(d_model, "d_model");
  positive(n_layers, "n_layers");
  positive(n_heads, "n_heads");
  positive(n_kv_heads, "n_kv_heads");
  positive(d_head, "d_head");
  positive(d_mlp, "d_mlp");
  positive(d_vocab, "vocab_size");
  positive(n_ctx, "n_ctx");
  require(n_heads % n_kv_heads == 0, ErrorKind::Config,
          origin + ": n_heads (" + std::to_string(n_heads) + ") must be a multiple of n_kv_heads (" +
              std::to_string(n_kv_heads) + ")");
  require(pos != PosKind::Rotary || d_head % 2 == 0, ErrorKind::Config,
          origin + ": rotary positions need an even head_dim, got " + std::to_string(d_head));
  require(n_layers <= 1024 && d_model <= (1 << 20) && d_vocab <= (1 << 24), ErrorKind::Config,
          origin + ": implausible sizes (layers " + std::to_string(n_layers) + ", d_model " + std::to_string(d_model) + ")");
}

std::string ModelConfig::summary() const {
  std::ostringstream o;
  o << "family        " << family << "\n"
    << "layers        " << n_layers << "\n"
    << "d_model       " << d_model << "\n"
    << "heads         " << n_heads << " (kv " << n_kv_heads << ", head_dim " << d_head << ")\n"
    << "d_mlp         " << d_mlp << " (" << to_string(mlp) << ", " << to_string(act) << ")\n"
    << "vocab         " << d_vocab << "\n"
    << "context       " << n_ctx << "\n"
    << "norm          " << to_string(norm) << " eps " << norm_eps << (norm_weight_plus_one ? " (1+w)" : "")
    << (sandwich_norms ? ", sandwich" : "") << "\n"
    << "positions     " << to_string(pos);
  if (pos == PosKind::Rotary) o << " (" << to_string(rope_style) << ", theta " << rope_theta << ")";
  o << "\n"
    << "attn scale    " << attn_scale;
  if (attn_softcap > 0) o << ", softcap " << attn_softcap;
  if (sliding_window > 0) o << ", sliding window " << sliding_window << " every " << sliding_period << " layers";
  o << "\n";
  if (final_softcap > 0) o << "logit softcap " << final_softcap << "\n";
  if (embed_scale != 1.0) o << "embed scale   " << embed_scale << "\n";
  o << "embeddings    " << (tied_embeddings ? "tied" : "untied") << "\n"
    << "file dtype    " << file_dtype << "\n";
  return o.str();
}

}  // namespace lumen
