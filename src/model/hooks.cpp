// Hook points and hook sets. Names resolve once per (model shape, hook set) into a dense array
// of flags, so the forward pass pays one lookup per site when nothing is hooked there.
#include "lumen/hooks.h"

#include <torch/torch.h>

#include <sstream>

#include "lumen/error.h"

namespace lumen {
namespace {

struct SiteName {
  HookSite site;
  const char* suffix;
};

constexpr SiteName kSiteNames[] = {
    {HookSite::embed, "hook_embed"},
    {HookSite::pos_embed, "hook_pos_embed"},
    {HookSite::ln_final, "ln_final.hook_normalized"},
    {HookSite::resid_pre, "hook_resid_pre"},
    {HookSite::ln1, "ln1.hook_normalized"},
    {HookSite::attn_q, "attn.hook_q"},
    {HookSite::attn_k, "attn.hook_k"},
    {HookSite::attn_v, "attn.hook_v"},
    {HookSite::attn_scores, "attn.hook_attn_scores"},
    {HookSite::attn_pattern, "attn.hook_pattern"},
    {HookSite::attn_z, "attn.hook_z"},
    {HookSite::attn_out, "hook_attn_out"},
    {HookSite::resid_mid, "hook_resid_mid"},
    {HookSite::ln2, "ln2.hook_normalized"},
    {HookSite::mlp_pre, "mlp.hook_pre"},
    {HookSite::mlp_pre_linear, "mlp.hook_pre_linear"},
    {HookSite::mlp_post, "mlp.hook_post"},
    {HookSite::mlp_out, "hook_mlp_out"},
    {HookSite::resid_post, "hook_resid_post"},
};

const char* suffix_of(HookSite s) { return kSiteNames[static_cast<int>(s)].suffix; }

bool glob_match(const char* pat, const char* str) {
  // Iterative '*' matcher with backtracking to the last star.
  const char *star = nullptr, *resume = nullptr;
  while (*str) {
    if (*pat == '*') {
      star = pat++;
      resume = str;
    } else if (*pat == *str) {
      ++pat;
      ++str;
    } else if (star) {
      pat = star + 1;
      str = ++resume;
    } else {
      return false;
    }
  }
  while (*pat == '*') ++pat;
  return *pat == '\0';
}

std::vector<std::string> split_patterns(const std::string& patterns) {
  std::vector<std::string> out;
  std::stringstream ss(patterns);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto b = item.find_first_not_of(" \t");
    auto e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

// Where positions and heads live in a site's tensor.
int pos_dim(HookSite s) { return (s == HookSite::attn_scores || s == HookSite::attn_pattern) ? 2 : 1; }
int head_dim(HookSite s) {
  switch (s) {
    case HookSite::attn_q: case HookSite::attn_k: case HookSite::attn_v: case HookSite::attn_z: return 2;
    case HookSite::attn_scores: case HookSite::attn_pattern: return 1;
    default: return -1;
  }
}

enum Flag : uint8_t { kCache = 1, kWatch = 2, kIntervene = 4 };

}  // namespace

// ---- HookPoint ----------------------------------------------------------------------------------

std::string HookPoint::name() const {
  if (is_global()) return suffix_of(site);
  return "blocks." + std::to_string(layer) + "." + suffix_of(site);
}

int HookPoint::index() const {
  const int s = static_cast<int>(site);
  return is_global() ? s : kNumGlobalSites + layer * kNumLayerSites + (s - kNumGlobalSites);
}

std::optional<HookPoint> HookPoint::parse(const std::string& name) {
  for (int s = 0; s < kNumGlobalSites; ++s)
    if (name == kSiteNames[s].suffix) return HookPoint{kSiteNames[s].site, -1};
  const std::string pre = "blocks.";
  if (name.compare(0, pre.size(), pre) != 0) return std::nullopt;
  size_t i = pre.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j >= name.size() || name[j] != '.' || j - i > 6) return std::nullopt;
  const int layer = std::stoi(name.substr(i, j - i));
  const std::string rest = name.substr(j + 1);
  for (int s = kNumGlobalSites; s < kNumGlobalSites + kNumLayerSites; ++s)
    if (rest == kSiteNames[s].suffix) return HookPoint{kSiteNames[s].site, layer};
  return std::nullopt;
}

std::vector<HookPoint> all_hook_points(int64_t n_layers, bool learned_pos, bool gated_mlp) {
  std::vector<HookPoint> out{{HookSite::embed, -1}};
  if (learned_pos) out.push_back({HookSite::pos_embed, -1});
  for (int l = 0; l < n_layers; ++l) {
    for (int s = kNumGlobalSites; s < kNumGlobalSites + kNumLayerSites; ++s) {
      auto site = static_cast<HookSite>(s);
      if (site == HookSite::mlp_pre_linear && !gated_mlp) continue;
      out.push_back({site, l});
    }
  }
  out.push_back({HookSite::ln_final, -1});
  return out;
}

bool hook_pattern_matches(const std::string& patterns, const std::string& name) {
  for (const auto& p : split_patterns(patterns))
    if (p == "all" || glob_match(p.c_str(), name.c_str())) return true;
  return false;
}

// ---- Intervention -------------------------------------------------------------------------------

Intervention Intervention::replace(at::Tensor value, std::vector<int64_t> positions) {
  Intervention iv;
  iv.kind = Kind::Replace;
  iv.value = std::move(value);
  iv.positions = std::move(positions);
  return iv;
}
Intervention Intervention::add(at::Tensor value, std::vector<int64_t> positions) {
  Intervention iv = replace(std::move(value), std::move(positions));
  iv.kind = Kind::Add;
  return iv;
}
Intervention Intervention::scale(double factor, std::vector<int64_t> positions) {
  Intervention iv;
  iv.kind = Kind::Scale;
  iv.factor = factor;
  iv.positions = std::move(positions);
  return iv;
}
Intervention Intervention::zero(std::vector<int64_t> positions) {
  Intervention iv;
  iv.kind = Kind::Zero;
  iv.positions = std::move(positions);
  return iv;
}
Intervention Intervention::mean_ablate(at::Tensor mean, std::vector<int64_t> positions) {
  Intervention iv = replace(std::move(mean), std::move(positions));
  iv.kind = Kind::MeanAblate;
  return iv;
}
Intervention Intervention::callback(HookFn fn) {
  Intervention iv;
  iv.kind = Kind::Callback;
  iv.fn = std::move(fn);
  return iv;
}

// ---- HookSet ------------------------------------------------------------------------------------

struct HookSet::State {
  std::vector<std::string> cache_patterns, watch_patterns;
  std::vector<std::pair<std::string, Intervention>> interventions;
  std::map<std::string, at::Tensor> cached;
  std::map<std::string, at::Tensor> watched;
  std::vector<std::string> declared;  // extra named points (SAE features, errors)
  bool interventions_enabled = true;

  // Binding to a model shape.
  bool dirty = true;
  int64_t n_layers = -1;
  bool learned_pos = false, gated = false;
  std::vector<uint8_t> flags;                 // by HookPoint::index()
  std::vector<std::string> names;             // by index
  std::vector<std::vector<size_t>> ivs;       // by index: positions into `interventions`
};

HookSet::HookSet() : s_(std::make_unique<State>()) {}
HookSet::~HookSet() = default;
HookSet::HookSet(HookSet&&) noexcept = default;
HookSet& HookSet::operator=(HookSet&&) noexcept = default;

HookSet& HookSet::cache(const std::string& patterns) {
  for (auto& p : split_patterns(patterns)) s_->cache_patterns.push_back(p);
  s_->dirty = true;
  return *this;
}
HookSet& HookSet::watch(const std::string& patterns) {
  for (auto& p : split_patterns(patterns)) s_->watch_patterns.push_back(p);
  s_->dirty = true;
  return *this;
}
HookSet& HookSet::add(const std::string& name, Intervention iv) {
  require(iv.kind != Intervention::Kind::Callback || iv.fn, ErrorKind::Hook, "hook '" + name + "': empty callback");
  s_->interventions.emplace_back(name, std::move(iv));
  s_->dirty = true;
  return *this;
}

HookSet& HookSet::declare(const std::string& name) {
  if (std::find(s_->declared.begin(), s_->declared.end(), name) == s_->declared.end()) s_->declared.push_back(name);
  s_->dirty = true;
  return *this;
}
const std::vector<std::string>& HookSet::declared() const { return s_->declared; }

const std::map<std::string, at::Tensor>& HookSet::cached() const { return s_->cached; }
bool HookSet::has(const std::string& name) const { return s_->cached.count(name) > 0; }
at::Tensor HookSet::get(const std::string& name) const {
  auto it = s_->cached.find(name);
  if (it == s_->cached.end()) {
    std::string have;
    for (auto& kv : s_->cached) have += (have.empty() ? "" : ", ") + kv.first;
    throw Error(ErrorKind::Hook, "'" + name + "' was not cached (cached: " + (have.empty() ? "none" : have) + ")");
  }
  return it->second;
}
void HookSet::clear_cache() {
  s_->cached.clear();
  s_->watched.clear();
}
void HookSet::set_interventions_enabled(bool on) { s_->interventions_enabled = on; }
bool HookSet::empty() const {
  return s_->cache_patterns.empty() && s_->watch_patterns.empty() && s_->interventions.empty();
}

std::map<std::string, at::Tensor> HookSet::gradients(const at::Tensor& scalar, bool retain_graph) const {
  require(scalar.numel() == 1, ErrorKind::Shape, "gradients() needs a scalar, got " + std::to_string(scalar.numel()) + " elements");
  std::vector<std::string> names;
  std::vector<at::Tensor> inputs;
  for (auto& kv : s_->watched) {
    if (!kv.second.requires_grad()) continue;
    names.push_back(kv.first);
    inputs.push_back(kv.second);
  }
  require(!inputs.empty(), ErrorKind::Hook,
          "no watched hook tensor is on the autograd graph (call watch() before the forward pass, with grad mode on)");
  auto grads = torch::autograd::grad({scalar}, inputs, {}, retain_graph, false, /*allow_unused=*/true);
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < names.size(); ++i)
    out[names[i]] = grads[i].defined() ? grads[i] : torch::zeros_like(inputs[i]);
  return out;
}

void HookSet::bind(int64_t n_layers, bool learned_pos, bool gated_mlp) const {
  State& s = *s_;
  if (!s.dirty && s.n_layers == n_layers && s.learned_pos == learned_pos && s.gated == gated_mlp) return;
  const auto points = all_hook_points(n_layers, learned_pos, gated_mlp);
  const size_t n = kNumGlobalSites + n_layers * kNumLayerSites;
  s.flags.assign(n, 0);
  s.names.assign(n, std::string());
  s.ivs.assign(n, {});
  for (const auto& p : points) s.names[p.index()] = p.name();

  auto explain = [&](const std::string& name) {
    std::string msg = "unknown hook point '" + name + "'";
    auto hp = HookPoint::parse(name);
    if (hp && !hp->is_global() && hp->layer >= n_layers)
      msg += ": the model has " + std::to_string(n_layers) + " layers (blocks.0 to blocks." + std::to_string(n_layers - 1) + ")";
    else if (hp)
      msg += ": this model has no such site";
    msg += " (run `lumen info MODEL` to list hook points)";
    return msg;
  };
  auto mark = [&](const std::vector<std::string>& pats, uint8_t flag) {
    for (const auto& pat : pats) {
      bool any = false;
      for (const auto& p : points) {
        if (pat == "all" || glob_match(pat.c_str(), s.names[p.index()].c_str())) {
          s.flags[p.index()] |= flag;
          any = true;
        }
      }
      for (const auto& d : s.declared) any = any || glob_match(pat.c_str(), d.c_str());
      require(any, ErrorKind::Hook, explain(pat));
    }
  };
  mark(s.cache_patterns, kCache);
  mark(s.watch_patterns, kWatch | kCache);
  for (size_t i = 0; i < s.interventions.size(); ++i) {
    const std::string& name = s.interventions[i].first;
    if (std::find(s.declared.begin(), s.declared.end(), name) != s.declared.end()) continue;  // via apply_named
    auto hp = HookPoint::parse(name);
    bool ok = hp && (hp->is_global() || hp->layer < n_layers) && !s.names[hp->index()].empty();
    require(ok, ErrorKind::Hook, explain(name));
    s.flags[hp->index()] |= kIntervene;
    s.ivs[hp->index()].push_back(i);
  }
  s.n_layers = n_layers;
  s.learned_pos = learned_pos;
  s.gated = gated_mlp;
  s.dirty = false;
}

bool HookSet::active(const HookPoint& p) const {
  const int i = p.index();
  return i < static_cast<int>(s_->flags.size()) && s_->flags[i] != 0;
}

bool HookSet::wants(const std::string& name) const {
  for (const auto& p : s_->cache_patterns)
    if (p == "all" || glob_match(p.c_str(), name.c_str())) return true;
  for (const auto& p : s_->watch_patterns)
    if (p == "all" || glob_match(p.c_str(), name.c_str())) return true;
  for (const auto& kv : s_->interventions)
    if (kv.first == name) return true;
  return false;
}

namespace {

// Boolean mask broadcastable to x that is true at the selected positions and heads; undefined
// when the intervention applies everywhere.
at::Tensor selection_mask(const Intervention& iv, HookSite site, const at::Tensor& x, int64_t pos_offset,
                          const std::string& name) {
  if (iv.positions.empty() && iv.heads.empty()) return {};
  std::vector<int64_t> shape(x.dim(), 1);
  at::Tensor mask;
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(x.device());
  if (!iv.positions.empty()) {
    const int pd = pos_dim(site);
    require(x.dim() > pd, ErrorKind::Hook, "hook '" + name + "': positions given but the tensor has no position axis");
    const int64_t T = x.size(pd);
    auto m = torch::zeros({T}, opts.device(torch::kCPU));
    auto acc = m.accessor<bool, 1>();
    for (int64_t p : iv.positions) {
      const int64_t local = p < 0 ? T + p : p - pos_offset;
      if (local >= 0 && local < T) acc[local] = true;
    }
    auto sh = shape;
    sh[pd] = T;
    mask = m.to(x.device()).view(sh);
  }
  if (!iv.heads.empty()) {
    const int hd = head_dim(site);
    require(hd >= 0, ErrorKind::Hook, "hook '" + name + "': heads given but this site has no head axis");
    const int64_t H = x.size(hd);
    auto m = torch::zeros({H}, opts.device(torch::kCPU));
    auto acc = m.accessor<bool, 1>();
    for (int64_t h : iv.heads) {
      require(h >= 0 && h < H, ErrorKind::Hook, "hook '" + name + "': head " + std::to_string(h) + " out of range [0," + std::to_string(H) + ")");
      acc[h] = true;
    }
    auto sh = shape;
    sh[hd] = H;
    auto hm = m.to(x.device()).view(sh);
    mask = mask.defined() ? (mask & hm) : hm;
  }
  return mask;
}

at::Tensor value_for(const Intervention& iv, const at::Tensor& x, const std::string& name) {
  at::Tensor v = iv.value.to(x.device(), x.scalar_type());
  try {
    (void)at::infer_size(v.sizes(), x.sizes());
  } catch (const std::exception&) {
    std::ostringstream o;
    o << "hook '" << name << "': value of shape " << v.sizes() << " does not broadcast to the site's shape " << x.sizes();
    throw Error(ErrorKind::Shape, o.str());
  }
  return v;
}

at::Tensor apply_one(const Intervention& iv, HookSite site, const at::Tensor& x, int64_t pos_offset,
                     const std::string& name, int layer) {
  using K = Intervention::Kind;
  if (iv.kind == K::Callback) {
    HookContext ctx{name, layer, pos_offset};
    at::Tensor r = iv.fn(x, ctx);
    if (!r.defined()) return x;
    if (r.sizes() != x.sizes()) {
      std::ostringstream o;
      o << "hook '" << name << "': callback returned shape " << r.sizes() << ", expected " << x.sizes();
      throw Error(ErrorKind::Shape, o.str());
    }
    return r;
  }
  const at::Tensor mask = selection_mask(iv, site, x, pos_offset, name);
  switch (iv.kind) {
    case K::Replace:
    case K::MeanAblate: {
      at::Tensor v = value_for(iv, x, name);
      return mask.defined() ? torch::where(mask, v, x) : v.expand_as(x).clone();
    }
    case K::Add: {
      at::Tensor v = value_for(iv, x, name);
      return mask.defined() ? x + v * mask.to(x.scalar_type()) : x + v;
    }
    case K::Scale: return mask.defined() ? torch::where(mask, x * iv.factor, x) : x * iv.factor;
    case K::Zero: return mask.defined() ? x.masked_fill(mask, 0.0) : torch::zeros_like(x);
    case K::Callback: break;
  }
  return x;
}

}  // namespace

at::Tensor HookSet::apply(const HookPoint& p, const at::Tensor& in, int64_t pos_offset) {
  State& s = *s_;
  const int idx = p.index();
  const uint8_t f = s.flags[idx];
  at::Tensor x = in;
  const std::string& name = s.names[idx];
  if (f & kWatch) {
    if (!x.requires_grad() && torch::GradMode::is_enabled()) x = x.detach().requires_grad_(true);
    s.watched[name] = x;
  }
  if (f & kCache) {
    auto it = s.cached.find(name);
    // While decoding, each step appends its positions to what the prompt pass cached.
    const int pd = pos_dim(p.site);
    if (it != s.cached.end() && pos_offset > 0 && pd == 1 && it->second.dim() == x.dim() &&
        it->second.size(1) == pos_offset) {
      it->second = torch::cat({it->second, x}, 1);
    } else {
      s.cached[name] = x;
    }
  }
  if ((f & kIntervene) && s.interventions_enabled)
    for (size_t i : s.ivs[idx]) x = apply_one(s.interventions[i].second, p.site, x, pos_offset, name, p.layer);
  return x;
}

at::Tensor HookSet::apply_named(const std::string& name, int layer, const at::Tensor& in, int64_t pos_offset) {
  State& s = *s_;
  at::Tensor x = in;
  bool cache_it = false;
  for (const auto& pat : s.cache_patterns) cache_it |= (pat == "all" || glob_match(pat.c_str(), name.c_str()));
  bool watch_it = false;
  for (const auto& pat : s.watch_patterns) watch_it |= (pat == "all" || glob_match(pat.c_str(), name.c_str()));
  if (watch_it) {
    if (!x.requires_grad() && torch::GradMode::is_enabled()) x = x.detach().requires_grad_(true);
    s.watched[name] = x;
  }
  if (cache_it || watch_it) s.cached[name] = x;
  if (s.interventions_enabled)
    for (const auto& kv : s.interventions)
      if (kv.first == name) x = apply_one(kv.second, HookSite::resid_post, x, pos_offset, name, layer);
  return x;
}

}  // namespace lumen
