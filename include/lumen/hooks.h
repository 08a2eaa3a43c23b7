// Hook points with TransformerLens names, and hook sets: what to cache, what to change, where to
// take gradients. The forward pass calls one line per site, `x = hooks.at(site, layer, x)`, which
// both captures and intervenes; a site nobody asked for costs one array lookup.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace lumen {

// Shapes, with B batch, T positions (the current call's), Tk key positions (cache + current),
// D d_model, H heads, K kv heads, E d_head, F d_mlp.
enum class HookSite : uint8_t {
  // global sites
  embed,            // hook_embed                  [B,T,D] token embeddings (x embed_scale)
  pos_embed,        // hook_pos_embed              [B,T,D] learned position embeddings
  ln_final,         // ln_final.hook_normalized    [B,T,D]
  // per-layer sites
  resid_pre,        // blocks.l.hook_resid_pre     [B,T,D]
  ln1,              // blocks.l.ln1.hook_normalized [B,T,D]
  attn_q,           // blocks.l.attn.hook_q        [B,T,H,E] after rotary
  attn_k,           // blocks.l.attn.hook_k        [B,T,K,E] after rotary
  attn_v,           // blocks.l.attn.hook_v        [B,T,K,E]
  attn_scores,      // blocks.l.attn.hook_attn_scores [B,H,T,Tk] scaled, capped, masked
  attn_pattern,     // blocks.l.attn.hook_pattern  [B,H,T,Tk]
  attn_z,           // blocks.l.attn.hook_z        [B,T,H,E]
  attn_out,         // blocks.l.hook_attn_out      [B,T,D]
  resid_mid,        // blocks.l.hook_resid_mid     [B,T,D]
  ln2,              // blocks.l.ln2.hook_normalized [B,T,D]
  mlp_pre,          // blocks.l.mlp.hook_pre       [B,T,F] (gate pre-activation when gated)
  mlp_pre_linear,   // blocks.l.mlp.hook_pre_linear [B,T,F] (gated MLPs: the up projection)
  mlp_post,         // blocks.l.mlp.hook_post      [B,T,F]
  mlp_out,          // blocks.l.hook_mlp_out       [B,T,D]
  resid_post,       // blocks.l.hook_resid_post    [B,T,D]
};
constexpr int kNumGlobalSites = 3;
constexpr int kNumLayerSites = 16;

struct HookPoint {
  HookSite site = HookSite::embed;
  int layer = -1;  // -1 for global sites

  std::string name() const;
  bool is_global() const { return static_cast<int>(site) < kNumGlobalSites; }
  // Dense index in [0, kNumGlobalSites + n_layers * kNumLayerSites).
  int index() const;
  // Parses a TransformerLens name. Returns nullopt for names that are not hook points.
  static std::optional<HookPoint> parse(const std::string& name);
};

// Every hook point a model with these sizes has, in forward order.
std::vector<HookPoint> all_hook_points(int64_t n_layers, bool learned_pos, bool gated_mlp);

struct HookContext {
  const std::string& name;
  int layer;
  int64_t pos_offset;  // absolute position of index 0 along T (non-zero while decoding)
};

// A callback may return an undefined tensor to leave x unchanged.
using HookFn = std::function<at::Tensor(const at::Tensor& x, const HookContext& ctx)>;

// A typed intervention. Positions are absolute (the prompt's own indices, also while decoding);
// negative positions count from the end of the current call. Heads apply to per-head sites.
struct Intervention {
  enum class Kind { Replace, Add, Scale, Zero, MeanAblate, Callback };
  Kind kind = Kind::Callback;
  at::Tensor value;               // Replace: broadcastable to the selection; Add: vector or tensor;
                                  // MeanAblate: the mean (e.g. [D] or [T,D])
  double factor = 1.0;            // Scale
  std::vector<int64_t> positions; // empty: all
  std::vector<int64_t> heads;     // empty: all
  HookFn fn;                      // Callback

  static Intervention replace(at::Tensor value, std::vector<int64_t> positions = {});
  static Intervention add(at::Tensor value, std::vector<int64_t> positions = {});
  static Intervention scale(double factor, std::vector<int64_t> positions = {});
  static Intervention zero(std::vector<int64_t> positions = {});
  static Intervention mean_ablate(at::Tensor mean, std::vector<int64_t> positions = {});
  static Intervention callback(HookFn fn);
  Intervention& on_heads(std::vector<int64_t> h) { heads = std::move(h); return *this; }
};

// Matches hook names against comma-separated patterns with '*' wildcards ("all" = everything),
// e.g. "blocks.*.hook_resid_post,hook_embed".
bool hook_pattern_matches(const std::string& patterns, const std::string& name);

class HookSet {
 public:
  HookSet();
  ~HookSet();
  HookSet(HookSet&&) noexcept;
  HookSet& operator=(HookSet&&) noexcept;

  // What to record. Cached tensors keep their autograd graph when grad mode is on.
  HookSet& cache(const std::string& patterns);
  // Makes each matching site a gradient target: its tensor joins the graph (as a leaf when
  // nothing upstream needs grad) and is cached, so gradients() can return d(loss)/d(site).
  HookSet& watch(const std::string& patterns);
  HookSet& add(const std::string& name, Intervention iv);
  // Shorthands for add().
  HookSet& hook(const std::string& name, HookFn fn) { return add(name, Intervention::callback(std::move(fn))); }

  const std::map<std::string, at::Tensor>& cached() const;
  at::Tensor get(const std::string& name) const;  // throws Error(Hook) when not cached
  bool has(const std::string& name) const;
  void clear_cache();
  // d(scalar)/d(watched site) for every watched site (zeros where the scalar does not depend on it).
  std::map<std::string, at::Tensor> gradients(const at::Tensor& scalar, bool retain_graph = false) const;

  // Registers an extra hook point (e.g. "blocks.2.hook_resid_post.sae.hook_acts") that some
  // component (an attached SAE) will call through apply_named(); caching, watching and
  // interventions may then name it like any standard point.
  HookSet& declare(const std::string& name);
  const std::vector<std::string>& declared() const;

  // Interventions apply while this is true; generation turns it off after the prompt when asked.
  void set_interventions_enabled(bool on);
  bool empty() const;

  // ---- used by the forward pass ----
  // Resolves names for a model of n_layers; throws Error(Hook) for an unknown name.
  void bind(int64_t n_layers, bool learned_pos, bool gated_mlp) const;
  bool active(const HookPoint& p) const;
  at::Tensor apply(const HookPoint& p, const at::Tensor& x, int64_t pos_offset);
  // Extra named points (SAE features and errors attach here); same semantics, slower lookup.
  at::Tensor apply_named(const std::string& name, int layer, const at::Tensor& x, int64_t pos_offset);
  bool wants(const std::string& name) const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace lumen
