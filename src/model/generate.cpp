#include "lumen/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>

#include "lumen/error.h"
#include "model/impl.h"

namespace lumen {

Sampler::Sampler(const GenerateOptions& opt)
    : temperature_(opt.temperature), top_p_(opt.top_p), top_k_(opt.top_k), state_(opt.seed * 0x9E3779B97F4A7C15ull + 1) {
  require(opt.temperature >= 0, ErrorKind::Arg, "temperature must be >= 0");
  require(opt.top_p > 0 && opt.top_p <= 1, ErrorKind::Arg, "top_p must be in (0, 1]");
  require(opt.top_k >= 0, ErrorKind::Arg, "top_k must be >= 0");
}

// splitmix64: a tiny generator whose stream is the same on every platform and torch version.
double Sampler::uniform() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

int32_t Sampler::pick(const float* logits, int64_t V) {
  if (temperature_ == 0.0) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }
  std::vector<int64_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  int64_t keep = V;
  if (top_k_ > 0 && top_k_ < V) {
    std::partial_sort(idx.begin(), idx.begin() + top_k_, idx.end(),
                      [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    keep = top_k_;
  } else {
    std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  }
  std::vector<double> p(keep);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += (p[i] = std::exp((logits[idx[i]] - mx) / temperature_));
  if (top_p_ < 1.0) {  // smallest prefix whose mass reaches top_p
    double cum = 0;
    int64_t n = 0;
    while (n < keep) {
      cum += p[n] / sum;
      ++n;
      if (cum >= top_p_) break;
    }
    keep = n;
    sum = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  }
  double r = uniform() * sum;
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r <= 0) return static_cast<int32_t>(idx[i]);
  }
  return static_cast<int32_t>(idx[keep - 1]);
}

namespace {
// Restores a hook set's interventions when generation ends, however it ends.
struct InterventionGuard {
  HookSet* hooks;
  ~InterventionGuard() {
    if (hooks) hooks->set_interventions_enabled(true);
  }
};
}  // namespace

GenerateResult generate(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& opt) {
  const ModelConfig& c = model.config();
  require(!prompts.empty(), ErrorKind::Arg, "generate: no prompts");
  require(opt.max_new_tokens >= 0, ErrorKind::Arg, "max_new_tokens must be >= 0");
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t Tp = 0;
  for (const auto& p : prompts) {
    require(!p.empty(), ErrorKind::Arg, "generate: empty prompt (add BOS or at least one token)");
    Tp = std::max<int64_t>(Tp, p.size());
  }
  require(Tp <= c.n_ctx, ErrorKind::Arg,
          "prompt of " + std::to_string(Tp) + " tokens exceeds the model's context of " + std::to_string(c.n_ctx));
  std::vector<int32_t> stops = opt.stop_tokens;
  if (opt.use_default_stops) {
    // run.c ends a llama2.c sample when it produces BOS; HF models end on EOS.
    if (c.family == "llama2c" && c.bos_id >= 0) stops.push_back(c.bos_id);
    else if (c.eos_id >= 0) stops.push_back(c.eos_id);
  }

  torch::NoGradGuard no_grad;
  // Inference mode also skips version counters and view tracking, a few microseconds on each of the
  // ~200 ops of a decode step. Tensors made under it cannot enter autograd later, so only without
  // hooks (a hook may keep what it sees).
  std::optional<c10::InferenceMode> inference;
  if (!opt.hooks) inference.emplace();
  InterventionGuard guard{opt.hooks};
  const int64_t capacity = std::min<int64_t>(c.n_ctx, Tp + opt.max_new_tokens);
  KVCache cache = model.new_cache(B, capacity);

  // Left-pad to a rectangle; padding keys are masked and positions count real tokens only.
  auto tokens = torch::zeros({B, Tp}, torch::kLong);
  auto mask = torch::zeros({B, Tp}, torch::kBool);
  bool padded = false;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const int64_t pad = Tp - static_cast<int64_t>(p.size());
    padded |= pad > 0;
    for (size_t i = 0; i < p.size(); ++i) tokens[b][pad + i] = p[i];
    mask[b].narrow(0, pad, static_cast<int64_t>(p.size())).fill_(true);
  }

  GenerateResult res;
  res.tokens = prompts;
  res.generated.assign(B, {});
  res.stopped.assign(B, false);
  res.prompt_tokens = B * Tp;
  Sampler sampler(opt);

  RunOptions ro;
  ro.hooks = opt.hooks;
  ro.cache = &cache;
  if (padded) ro.attention_mask = mask;
  auto t0 = std::chrono::steady_clock::now();
  auto logits = model.forward(tokens, ro);  // [B,Tp,V]
  auto t1 = std::chrono::steady_clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  if (opt.hooks && !opt.hooks_every_step) opt.hooks->set_interventions_enabled(false);
  ro.attention_mask = torch::Tensor();

  auto last = logits.select(1, Tp - 1);  // [B,V]
  std::vector<int32_t> prev(B);
  for (int64_t b = 0; b < B; ++b) prev[b] = prompts[b].back();
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    auto host = last.to(torch::kCPU, torch::kFloat).contiguous();
    auto next = torch::zeros({B, 1}, torch::kLong);
    bool any_live = false;
    for (int64_t b = 0; b < B; ++b) {
      if (res.stopped[b]) continue;
      const int32_t tok = sampler.pick(host[b].data_ptr<float>(), c.d_vocab);
      if (std::find(stops.begin(), stops.end(), tok) != stops.end()) {
        res.stopped[b] = true;
        continue;
      }
      res.tokens[b].push_back(tok);
      res.generated[b].push_back(tok);
      if (opt.on_token) opt.on_token(static_cast<size_t>(b), prev[b], tok);
      prev[b] = tok;
      next[b][0] = tok;
      any_live = true;
    }
    if (!any_live || step + 1 == opt.max_new_tokens || cache.length >= cache.capacity) break;
    last = model.forward(next, ro).select(1, 0);
  }
  res.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return res;
}

}  // namespace lumen
