// Patchscopes / Superscopes on top of the shared model, hook and generation code: the source
// vector comes from a cached hook site, the patch is a Replace intervention at the target site,
// and all factors of a sweep run as one batched generation.
#include "lumen/scopes.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cctype>
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/generate.h"
#include "lumen/sae.h"

namespace lumen {
namespace {

std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : text) {
    if (std::isalnum(static_cast<unsigned char>(ch))) {
      cur += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!cur.empty()) {
      out.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

const std::set<std::string>& stop_words() {
  static const std::set<std::string> s = {"a", "an", "the", "and", "to", "of", "was", "is", "in", "on", "it",
                                          "he", "she", "they", "there", "once", "upon", "time", "with", "his", "her",
                                          "saw", "had", "one", "day", "very", "little", "big"};
  return s;
}

std::string decode_continuation(const Tokenizer& tok, int32_t prev, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    s += tok.decode_step(prev, id);
    prev = id;
  }
  return s;
}

}  // namespace

std::string scope_hook_name(const std::string& site, int64_t layer) {
  static const std::map<std::string, std::string> sites = {
      {"resid_post", "hook_resid_post"}, {"mlp_out", "hook_mlp_out"}, {"resid_mid", "hook_resid_mid"},
      {"resid_pre", "hook_resid_pre"}, {"attn_out", "hook_attn_out"}};
  auto it = sites.find(site);
  require(it != sites.end(), ErrorKind::Arg,
          "unknown scope site '" + site + "' (expected resid_post, mlp_out, resid_mid, resid_pre or attn_out)");
  return "blocks." + std::to_string(layer) + "." + it->second;
}

namespace {

// Activations at one site for a batch of token windows [B,T] -> [B,T,D], running only the
// blocks up to that site.
at::Tensor site_activations(const Model& model, const at::Tensor& tokens, int64_t layer, const std::string& name) {
  HookSet hooks;
  hooks.cache(name);
  RunOptions ro;
  ro.hooks = &hooks;
  ro.stop_at_layer = layer + 1;
  model.forward(tokens, ro);
  return hooks.get(name);
}

}  // namespace

at::Tensor scope_source_vector(const Model& model, const std::string& prompt, int64_t layer, const std::string& site,
                               int64_t pos) {
  require(layer >= 0 && layer < model.config().n_layers, ErrorKind::Arg,
          "--layer " + std::to_string(layer) + " is outside [0," + std::to_string(model.config().n_layers) + ")");
  torch::NoGradGuard ng;
  const auto& tok = model.require_tokenizer();
  auto ids = tok.encode(prompt, tok.adds_bos_by_default());
  require(!ids.empty(), ErrorKind::Arg, "empty source prompt");
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t p = pos < 0 ? T + pos : pos;
  require(p >= 0 && p < T, ErrorKind::Arg,
          "--pos " + std::to_string(pos) + " is outside the source prompt's " + std::to_string(T) + " tokens");
  auto acts = site_activations(model, tokens_tensor(ids, model.device()), layer, scope_hook_name(site, layer));
  return acts[0][p].clone();
}

at::Tensor scope_mean_vector(const Model& model, const std::string& corpus_path, int64_t layer, const std::string& site,
                             int64_t max_tokens) {
  torch::NoGradGuard ng;
  const std::string name = scope_hook_name(site, layer);
  auto windows = tokenize_corpus(model, corpus_path, std::min<int64_t>(model.config().n_ctx, 128), "text", max_tokens);
  require(windows.size(0) > 0, ErrorKind::Arg, corpus_path + ": no text to average over");
  at::Tensor sum;
  int64_t count = 0;
  for (int64_t w = 0; w < windows.size(0); w += 16) {
    auto batch = windows.narrow(0, w, std::min<int64_t>(16, windows.size(0) - w)).to(model.device());
    auto acts = site_activations(model, batch, layer, name).to(torch::kDouble);  // [B,T,D]
    auto part = acts.sum(std::vector<int64_t>{0, 1});
    sum = sum.defined() ? sum + part : part;
    count += acts.size(0) * acts.size(1);
  }
  return (sum / static_cast<double>(count)).to(model.dtype());
}

at::Tensor scope_sae_direction(const Sae& sae, int64_t latent, double scale, int64_t* layer, std::string* site) {
  const auto& c = sae.config();
  require(latent >= 0 && latent < c.d_sae, ErrorKind::Arg,
          "--latent " + std::to_string(latent) + " is outside the SAE's " + std::to_string(c.d_sae) + " latents");
  auto hp = HookPoint::parse(c.hook_name);
  static const std::map<HookSite, std::string> sites = {{HookSite::resid_post, "resid_post"}, {HookSite::mlp_out, "mlp_out"},
                                                         {HookSite::resid_mid, "resid_mid"}, {HookSite::resid_pre, "resid_pre"},
                                                         {HookSite::attn_out, "attn_out"}};
  require(hp && sites.count(hp->site), ErrorKind::Arg,
          "SAE hook '" + c.hook_name + "' is not a residual, MLP-out or attention-out site a scope can patch");
  *layer = hp->layer;
  *site = sites.at(hp->site);
  return (sae.W_dec[latent].to(torch::kFloat) * scale).detach();
}

int64_t scope_placeholder_position(const Tokenizer& tok, const ScopeTarget& target, std::vector<int32_t>* ids_out) {
  const auto cut = target.text.rfind(target.placeholder);
  require(!target.placeholder.empty() && cut != std::string::npos, ErrorKind::Arg,
          "target template has no placeholder '" + target.placeholder + "'");
  const bool bos = tok.adds_bos_by_default();
  auto ids = tok.encode(target.text, bos);
  auto prefix = tok.encode(target.text.substr(0, cut + target.placeholder.size()), bos);
  const bool clean = prefix.size() <= ids.size() && std::equal(prefix.begin(), prefix.end(), ids.begin());
  if (!clean) {  // the placeholder merged with what follows: tokenize the two halves apart
    auto rest = tok.encode(target.text.substr(cut + target.placeholder.size()), false);
    ids = prefix;
    ids.insert(ids.end(), rest.begin(), rest.end());
  }
  require(!prefix.empty(), ErrorKind::Arg, "target template encodes to no tokens");
  if (ids_out) *ids_out = ids;
  return static_cast<int64_t>(prefix.size()) - 1;
}

std::vector<ScopeRow> run_scope(const Model& model, const at::Tensor& v, int64_t layer, const std::string& site,
                                const ScopeTarget& target, const ScopeOptions& opt) {
  const auto& c = model.config();
  require(v.dim() == 1 && v.size(0) == c.d_model, ErrorKind::Shape,
          "source vector must be [" + std::to_string(c.d_model) + "], got " + std::to_string(v.numel()) + " values");
  require(!opt.amps.empty(), ErrorKind::Arg, "no amplification factors");
  const int64_t tl = target.layer < 0 ? layer : target.layer;
  require(tl >= 0 && tl < c.n_layers, ErrorKind::Arg, "target layer " + std::to_string(tl) + " is outside the model");
  const auto& tok = model.require_tokenizer();
  std::vector<int32_t> ids;
  const int64_t pos = scope_placeholder_position(tok, target, &ids);

  // Row b carries a_b v (scalar) or v_base + a_b (v - v_base) (guidance): [B,1,D].
  const int64_t B = static_cast<int64_t>(opt.amps.size());
  auto vv = v.to(model.device(), model.dtype());
  std::vector<at::Tensor> rows;
  for (double a : opt.amps) {
    if (opt.baseline.defined()) {
      auto base = opt.baseline.to(model.device(), model.dtype());
      rows.push_back(base + a * (vv - base));
    } else {
      rows.push_back(a * vv);
    }
  }
  auto patch = torch::stack(rows).unsqueeze(1);  // [B,1,D]

  const std::string hook = scope_hook_name(site, tl);
  HookSet hooks;
  hooks.add(hook, Intervention::replace(patch, {pos}));
  if (target.every_step)
    hooks.add(hook, Intervention::callback([patch](const at::Tensor& x, const HookContext& ctx) {
      return ctx.pos_offset > 0 ? patch.expand_as(x).clone() : at::Tensor();
    }));
  GenerateOptions go;
  go.max_new_tokens = opt.max_new_tokens;
  go.temperature = opt.temperature;
  go.seed = opt.seed;
  go.hooks = &hooks;
  go.hooks_every_step = target.every_step;
  auto res = generate(model, std::vector<std::vector<int32_t>>(B, ids), go);
  std::vector<ScopeRow> out;
  for (int64_t b = 0; b < B; ++b)
    out.push_back({layer, site, opt.amps[b], decode_continuation(tok, ids.back(), res.generated[b]), res.generated[b]});
  return out;
}

bool scope_contains_word(const std::string& text, const std::string& word) {
  const auto want = words_of(word);
  if (want.empty()) return false;
  const auto have = words_of(text);
  for (size_t i = 0; i + want.size() <= have.size(); ++i)
    if (std::equal(want.begin(), want.end(), have.begin() + i)) return true;
  return false;
}

double scope_score(const std::string& output, const std::string& source_prompt, const std::string& expect) {
  const auto out = words_of(output);
  std::set<std::string> out_set(out.begin(), out.end());
  std::set<std::string> src;
  for (const auto& w : words_of(source_prompt))
    if (!stop_words().count(w)) src.insert(w);
  double overlap = 0;
  for (const auto& w : src) overlap += out_set.count(w);
  overlap = src.empty() ? 0 : overlap / src.size();
  if (!expect.empty()) return (scope_contains_word(output, expect) ? 1.0 : 0.0) + 0.01 * overlap;
  // Degenerate outputs (one word over and over) say nothing about the vector.
  const double distinct = out.empty() ? 0 : static_cast<double>(out_set.size()) / out.size();
  const double penalty = out.size() >= 4 && distinct < 0.3 ? 0.5 : 0.0;
  return overlap - penalty;
}

size_t scope_pick_auto(const std::vector<ScopeRow>& rows, const std::string& source_prompt, const std::string& expect) {
  size_t best = 0;
  double best_score = -1e9;
  for (size_t i = 0; i < rows.size(); ++i) {
    const double s = scope_score(rows[i].text, source_prompt, expect);
    if (s > best_score + 1e-12 || (std::abs(s - best_score) <= 1e-12 && rows[i].amp < rows[best].amp)) {
      best = i;
      best_score = s;
    }
  }
  return best;
}

ScopeBenchResult run_scope_bench(const Model& model, const std::string& entities_path, const ScopeBenchOptions& opt) {
  struct Entity {
    std::string prompt, answer;
  };
  std::vector<Entity> ents;
  std::ifstream in(entities_path);
  require(static_cast<bool>(in), ErrorKind::Io, entities_path + ": cannot open entity file");
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      auto j = nlohmann::json::parse(line);
      ents.push_back({j.at("prompt").get<std::string>(), j.at("answer").get<std::string>()});
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::Format, entities_path + ":" + std::to_string(lineno) +
                                         ": expected {\"prompt\": ..., \"answer\": ...} (" + e.what() + ")");
    }
  }
  require(!ents.empty(), ErrorKind::Arg, entities_path + ": no entities");
  std::vector<int64_t> layers = opt.layers;
  if (layers.empty())
    for (int64_t l = 0; l < model.config().n_layers; ++l) layers.push_back(l);
  std::vector<double> amps = opt.amps;
  if (std::find(amps.begin(), amps.end(), 1.0) == amps.end()) amps.insert(amps.begin(), 1.0);
  const size_t i1 = std::find(amps.begin(), amps.end(), 1.0) - amps.begin();

  ScopeBenchResult res;
  res.n_entities = static_cast<int64_t>(ents.size());
  // Control: what the target prompt says with no patch at all (its answers are a base rate).
  {
    std::vector<int32_t> ids;
    scope_placeholder_position(model.require_tokenizer(), opt.target, &ids);
    GenerateOptions go;
    go.max_new_tokens = opt.max_new_tokens;
    auto plain = generate(model, {ids}, go);
    const std::string text = decode_continuation(model.require_tokenizer(), ids.back(), plain.generated[0]);
    int64_t hits = 0;
    for (const auto& e : ents) hits += scope_contains_word(text, e.answer);
    for (int64_t layer : layers) res.rates["unpatched"][layer] = hits / static_cast<double>(ents.size());
  }
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t layer : layers) {
    int64_t ok1 = 0, ok_best = 0, ok_auto = 0;
    for (const auto& e : ents) {
      auto v = scope_source_vector(model, e.prompt, layer, opt.site, -1);
      ScopeOptions so;
      so.amps = amps;
      so.max_new_tokens = opt.max_new_tokens;
      auto rows = run_scope(model, v, layer, opt.site, opt.target, so);
      bool any = false;
      for (const auto& r : rows) any = any || scope_contains_word(r.text, e.answer);
      ok1 += scope_contains_word(rows[i1].text, e.answer);
      ok_best += any;
      ok_auto += scope_contains_word(rows[scope_pick_auto(rows, e.prompt, "")].text, e.answer);
      if (opt.verbose)
        std::fprintf(stderr, "layer %lld  %-12s amp1: %s\n", static_cast<long long>(layer), e.answer.c_str(),
                     rows[i1].text.c_str());
    }
    const double n = static_cast<double>(ents.size());
    res.rates["patchscopes"][layer] = ok1 / n;
    res.rates["superscopes_best"][layer] = ok_best / n;
    res.rates["superscopes_auto"][layer] = ok_auto / n;
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  res.ms_per_source_vector = ms / static_cast<double>(ents.size() * layers.size());
  return res;
}

}  // namespace lumen
