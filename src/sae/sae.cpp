// The SAE itself: encode / decode for each architecture as plain torch ops (differentiable),
// initialisation and the weight foldings that leave reconstructions unchanged.
#include "lumen/sae.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <sstream>

#include "lumen/error.h"

namespace lumen {

const char* to_string(SaeArch a) {
  switch (a) {
    case SaeArch::ReLU: return "relu";
    case SaeArch::JumpReLU: return "jumprelu";
    case SaeArch::TopK: return "topk";
    case SaeArch::BatchTopK: return "batchtopk";
  }
  return "?";
}

SaeArch parse_sae_arch(const std::string& s, const std::string& where) {
  if (s == "relu" || s == "standard") return SaeArch::ReLU;
  if (s == "jumprelu" || s == "jump_relu") return SaeArch::JumpReLU;
  if (s == "topk" || s == "top_k") return SaeArch::TopK;
  if (s == "batchtopk" || s == "batch_topk") return SaeArch::BatchTopK;
  throw Error(ErrorKind::Arg, where + ": unknown SAE architecture '" + s + "' (expected relu, jumprelu, topk or batchtopk)");
}

namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream o;
  o << t.sizes();
  return o.str();
}

void check_shape(const at::Tensor& t, std::vector<int64_t> want, const std::string& name, const std::string& origin) {
  std::ostringstream w;
  w << c10::IntArrayRef(want);
  require(t.defined(), ErrorKind::Sae, origin + ": tensor '" + name + "' is missing (expected shape " + w.str() + ")");
  require(t.sizes() == c10::IntArrayRef(want), ErrorKind::Sae,
          origin + ": tensor '" + name + "' has shape " + shape_of(t) + " but the config says " + w.str());
}

bool uses_threshold(SaeArch a) { return a == SaeArch::JumpReLU || a == SaeArch::BatchTopK; }

}  // namespace

Sae Sae::init(const SaeConfig& cfg, uint64_t seed, c10::Device device) {
  require(cfg.d_in > 0 && cfg.d_sae > 0, ErrorKind::Arg, "SAE sizes must be positive (d_in " + std::to_string(cfg.d_in) +
                                                             ", d_sae " + std::to_string(cfg.d_sae) + ")");
  require(!(cfg.arch == SaeArch::TopK || cfg.arch == SaeArch::BatchTopK) || (cfg.k > 0 && cfg.k <= cfg.d_sae), ErrorKind::Arg,
          "SAE k must be in [1, d_sae=" + std::to_string(cfg.d_sae) + "], got " + std::to_string(cfg.k));
  Sae s;
  s.cfg_ = cfg;
  auto gen = at::detail::createCPUGenerator(seed);
  auto opts = torch::TensorOptions().dtype(torch::kFloat);
  // Unit-norm random decoder rows and a tied encoder: every latent starts as a distinct direction.
  auto w = torch::randn({cfg.d_sae, cfg.d_in}, gen, opts);  // [S,D]
  w = w / w.norm(2, 1, true);
  s.W_dec = w.to(device, cfg.dtype).contiguous();
  s.W_enc = w.t().to(device, cfg.dtype).contiguous();  // [D,S]
  s.b_enc = torch::zeros({cfg.d_sae}, torch::TensorOptions().dtype(cfg.dtype).device(device));
  s.b_dec = torch::zeros({cfg.d_in}, torch::TensorOptions().dtype(cfg.dtype).device(device));
  if (uses_threshold(cfg.arch)) s.threshold = torch::zeros({cfg.d_sae}, torch::TensorOptions().dtype(cfg.dtype).device(device));
  return s;
}

Sae Sae::from_tensors(const SaeConfig& cfg, const std::map<std::string, at::Tensor>& t, const std::string& origin,
                      c10::Device device) {
  auto get = [&](const std::string& n) -> at::Tensor {
    auto it = t.find(n);
    return it == t.end() ? at::Tensor() : it->second;
  };
  require(cfg.d_in > 0 && cfg.d_sae > 0, ErrorKind::Sae, origin + ": d_in and d_sae must be positive");
  check_shape(get("W_enc"), {cfg.d_in, cfg.d_sae}, "W_enc", origin);
  check_shape(get("W_dec"), {cfg.d_sae, cfg.d_in}, "W_dec", origin);
  check_shape(get("b_enc"), {cfg.d_sae}, "b_enc", origin);
  check_shape(get("b_dec"), {cfg.d_in}, "b_dec", origin);
  if (cfg.arch == SaeArch::TopK || cfg.arch == SaeArch::BatchTopK)
    require(cfg.k > 0 && cfg.k <= cfg.d_sae, ErrorKind::Sae,
            origin + ": " + to_string(cfg.arch) + " needs k in [1, d_sae], got " + std::to_string(cfg.k));
  Sae s;
  s.cfg_ = cfg;
  auto conv = [&](const at::Tensor& x) { return x.to(device, cfg.dtype).contiguous(); };
  s.W_enc = conv(get("W_enc"));
  s.W_dec = conv(get("W_dec"));
  s.b_enc = conv(get("b_enc"));
  s.b_dec = conv(get("b_dec"));
  if (uses_threshold(cfg.arch)) {
    at::Tensor th = get("threshold");
    require(th.defined(), ErrorKind::Sae, origin + ": " + std::string(to_string(cfg.arch)) + " SAE needs a 'threshold' tensor [" +
                                               std::to_string(cfg.d_sae) + "]");
    if (th.dim() == 0) th = th.expand({cfg.d_sae});
    check_shape(th, {cfg.d_sae}, "threshold", origin);
    s.threshold = conv(th);
  }
  return s;
}

at::Tensor Sae::pre_activation(const at::Tensor& x_in) const {
  require(x_in.dim() >= 1 && x_in.size(-1) == cfg_.d_in, ErrorKind::Shape,
          "SAE at '" + cfg_.hook_name + "': input has last dimension " + std::to_string(x_in.dim() ? x_in.size(-1) : 0) +
              ", expected d_in = " + std::to_string(cfg_.d_in));
  at::Tensor x = x_in.to(W_enc.device(), W_enc.scalar_type());
  if (cfg_.act_scale != 1.0) x = x * cfg_.act_scale;
  if (cfg_.apply_b_dec_to_input) x = x - b_dec;
  return torch::matmul(x, W_enc) + b_enc;  // [...,S]
}

at::Tensor Sae::encode(const at::Tensor& x, bool training) const { return activate(pre_activation(x), training); }

at::Tensor Sae::activate(const at::Tensor& pre, bool training) const {
  switch (cfg_.arch) {
    case SaeArch::ReLU: return torch::relu(pre);
    case SaeArch::JumpReLU: return torch::relu(pre) * (pre > threshold).to(pre.scalar_type());
    case SaeArch::TopK: {
      // The k largest pre-activations per row, ReLU'd; everything else is 0. Their order does not
      // matter once scattered, so topk need not sort them.
      auto top = torch::topk(pre, cfg_.k, -1, /*largest=*/true, /*sorted=*/false);
      return torch::zeros_like(pre).scatter(-1, std::get<1>(top), torch::relu(std::get<0>(top)));
    }
    case SaeArch::BatchTopK: {
      if (!training) return torch::relu(pre) * (pre > threshold).to(pre.scalar_type());
      // The k*N largest activations over the whole batch: rows may use more or fewer than k.
      auto flat = torch::relu(pre).reshape({-1});
      const int64_t rows = pre.numel() / cfg_.d_sae;
      const int64_t n = std::min<int64_t>(cfg_.k * rows, flat.numel());
      auto top = torch::topk(flat, n, -1);
      return torch::zeros_like(flat).scatter(-1, std::get<1>(top), std::get<0>(top)).view(pre.sizes());
    }
  }
  return pre;
}

at::Tensor Sae::decode(const at::Tensor& f) const {
  require(f.dim() >= 1 && f.size(-1) == cfg_.d_sae, ErrorKind::Shape,
          "SAE at '" + cfg_.hook_name + "': features have last dimension " + std::to_string(f.dim() ? f.size(-1) : 0) +
              ", expected d_sae = " + std::to_string(cfg_.d_sae));
  at::Tensor out = torch::matmul(f.to(W_dec.device(), W_dec.scalar_type()), W_dec) + b_dec;  // [...,D]
  return cfg_.act_scale != 1.0 ? out / cfg_.act_scale : out;
}

void Sae::fold_decoder_norm() {
  torch::NoGradGuard ng;
  auto norms = W_dec.norm(2, 1);  // [S]
  if (cfg_.arch == SaeArch::TopK || cfg_.arch == SaeArch::BatchTopK) {
    // Scaling pre-activations per latent would change which latents are the top k.
    const double dev = (norms - 1).abs().max().item<double>();
    require(dev < 1e-4, ErrorKind::Sae,
            "SAE at '" + cfg_.hook_name + "': cannot fold decoder norms into a " + to_string(cfg_.arch) +
                " SAE (it would change the top-k selection); its rows deviate from unit norm by " + std::to_string(dev));
  }
  auto safe = norms.clamp_min(1e-12);
  W_dec = W_dec / safe.unsqueeze(1);
  W_enc = W_enc * safe.unsqueeze(0);
  b_enc = b_enc * safe;
  if (threshold.defined()) threshold = threshold * safe;
}

void Sae::fold_activation_scale() {
  torch::NoGradGuard ng;
  const double s = cfg_.act_scale;
  if (s == 1.0) return;
  // pre = (s x - b) W + c = (x - b/s)(s W) + c; out = (f W_dec + b)/s. Without the input
  // shift the same folding holds.
  W_enc = W_enc * s;
  W_dec = W_dec / s;
  b_dec = b_dec / s;
  cfg_.act_scale = 1.0;
}

Sae Sae::to(c10::Device device, c10::ScalarType dtype) const {
  Sae s = *this;
  auto conv = [&](const at::Tensor& t) { return t.defined() ? t.detach().to(device, dtype).clone() : t; };
  s.W_enc = conv(W_enc);
  s.W_dec = conv(W_dec);
  s.b_enc = conv(b_enc);
  s.b_dec = conv(b_dec);
  s.threshold = conv(threshold);
  s.cfg_.dtype = dtype;
  return s;
}

Sae Sae::clone() const { return to(device(), W_enc.scalar_type()); }

std::vector<std::pair<std::string, at::Tensor>> Sae::tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out{
      {"W_enc", W_enc.detach()}, {"b_enc", b_enc.detach()}, {"W_dec", W_dec.detach()}, {"b_dec", b_dec.detach()}};
  if (threshold.defined()) out.emplace_back("threshold", threshold.detach());
  return out;
}

}  // namespace lumen
