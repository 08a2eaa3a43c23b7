// lumen scope | scope bench: Patchscopes and Superscopes from the command line.
#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/sae.h"
#include "lumen/scopes.h"

namespace lumen_cli {
namespace {

struct ScopeArgs {
  std::string sae;
  int64_t latent = -1;
  double sae_scale = 10.0;
  std::string source, site = "resid_post", amp = "1", target = "identity", placeholder = "?", baseline,
              baseline_corpus, expect;
  int64_t layer = 0, pos = -1, target_layer = -1, max_tokens = 20;
  double temperature = 0;
  uint64_t seed = 0;
  bool every_step = false, auto_pick = false, json = false;
};

std::vector<double> parse_amps(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stod(item, &used));
      lumen::require(used == item.size(), ErrorKind::Arg, "");
    } catch (const std::exception&) {
      throw Error(ErrorKind::Arg, "--amp: '" + item + "' is not a number (expected e.g. 1,2,4,8)");
    }
  }
  lumen::require(!out.empty(), ErrorKind::Arg, "--amp: no factors");
  return out;
}

std::vector<int64_t> parse_layers(const std::string& s) {
  std::vector<int64_t> out;
  for (double d : parse_amps(s)) out.push_back(static_cast<int64_t>(d));
  return out;
}

lumen::ScopeTarget make_target(const std::string& which, const std::string& placeholder, int64_t layer, bool every) {
  lumen::ScopeTarget t;
  t.text = which == "identity" ? lumen::kIdentityTemplate : which == "describe" ? lumen::kDescribeTemplate : which;
  t.placeholder = placeholder;
  t.layer = layer;
  t.every_step = every;
  return t;
}

std::string one_line(std::string s) {
  for (auto& ch : s)
    if (ch == '\n') ch = ' ';
  return s;
}

int cmd_scope(const ModelArgs& ma, const ScopeArgs& a) {
  lumen::require(a.source.empty() != a.sae.empty(), ErrorKind::Arg,
                 "scope: give --source PROMPT, or --sae DIR --latent N (an SAE decoder direction)");
  auto model = ma.load(true);
  int64_t layer = a.layer;
  std::string site = a.site;
  at::Tensor v;
  if (!a.sae.empty()) {
    lumen::require(a.latent >= 0, ErrorKind::Arg, "scope: --sae needs --latent N");
    auto sae = lumen::load_sae(a.sae, model.device());
    lumen::check_sae_fits(sae, model);
    v = lumen::scope_sae_direction(sae, a.latent, a.sae_scale, &layer, &site);
  } else {
    v = lumen::scope_source_vector(model, a.source, a.layer, a.site, a.pos);
  }
  lumen::ScopeOptions so;
  so.amps = parse_amps(a.amp);
  so.max_new_tokens = a.max_tokens;
  so.temperature = a.temperature;
  so.seed = a.seed;
  if (!a.baseline.empty()) so.baseline = lumen::scope_source_vector(model, a.baseline, layer, site, -1);
  if (!a.baseline_corpus.empty()) so.baseline = lumen::scope_mean_vector(model, a.baseline_corpus, layer, site, 20000);
  auto rows = lumen::run_scope(model, v, layer, site, make_target(a.target, a.placeholder, a.target_layer, a.every_step), so);
  const size_t pick = lumen::scope_pick_auto(rows, a.source, a.expect);
  if (a.json) {
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < rows.size(); ++i) {
      nlohmann::json r = {{"layer", rows[i].layer}, {"site", rows[i].site}, {"amp", rows[i].amp}, {"text", rows[i].text}};
      if (a.auto_pick) r["auto"] = (i == pick);
      out.push_back(r);
    }
    std::cout << out.dump() << "\n";
    return 0;
  }
  const std::string what = a.sae.empty() ? "\"" + a.source + "\" pos " + std::to_string(a.pos)
                                         : "SAE latent " + std::to_string(a.latent) + " x" + std::to_string(a.sae_scale);
  std::printf("source: %s, layer %lld %s; %s%s\n", what.c_str(), (long long)layer, site.c_str(), so.baseline.defined() ? "guidance v_base + a(v - v_base)" : "scalar a*v",
              a.every_step ? "; patched every step" : "");
  std::printf("%8s  %s\n", "factor", "generated");
  for (size_t i = 0; i < rows.size(); ++i)
    std::printf("%8g  %s%s\n", rows[i].amp, one_line(rows[i].text).c_str(), a.auto_pick && i == pick ? "   <- auto" : "");
  if (a.auto_pick)
    std::printf("auto: factor %g, by %s\n", rows[pick].amp,
                a.expect.empty() ? "overlap with the source prompt's content words" : ("the expected word '" + a.expect + "'").c_str());
  return 0;
}

struct BenchArgs {
  std::string entities, layers, site = "resid_post", amp = "1,2,4,8,16", target = "identity";
  int64_t max_tokens = 12;
  bool json = false, verbose = false;
};

int cmd_scope_bench(const ModelArgs& ma, const BenchArgs& b) {
  auto model = ma.load(true);
  lumen::ScopeBenchOptions o;
  if (!b.layers.empty()) o.layers = parse_layers(b.layers);
  o.site = b.site;
  o.amps = parse_amps(b.amp);
  o.target = make_target(b.target, "?", -1, false);
  o.max_new_tokens = b.max_tokens;
  o.verbose = b.verbose;
  auto res = lumen::run_scope_bench(model, b.entities, o);
  if (b.json) {
    nlohmann::json out;
    for (const auto& [method, by_layer] : res.rates)
      for (const auto& [layer, rate] : by_layer) out[method][std::to_string(layer)] = rate;
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::printf("%lld entities, site %s, factors %s; %.1f ms per source vector (sweep included)\n",
              (long long)res.n_entities, b.site.c_str(), b.amp.c_str(), res.ms_per_source_vector);
  std::printf("%-18s", "method \\ layer");
  for (const auto& [layer, _] : res.rates.begin()->second) std::printf("%8lld", (long long)layer);
  std::printf("\n");
  for (const auto& [method, by_layer] : res.rates) {
    std::printf("%-18s", method.c_str());
    for (const auto& [layer, rate] : by_layer) std::printf("%8.2f", rate);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

void add_scope_commands(CLI::App& app, int& rc) {
  auto ma = std::make_shared<ModelArgs>();
  auto a = std::make_shared<ScopeArgs>();
  auto* scope = app.add_subcommand("scope", "Patchscopes/Superscopes: patch an (amplified) activation into a target prompt");
  ma->add(scope, false);
  scope->add_option("--source", a->source, "source prompt");
  scope->add_option("--sae", a->sae, "describe an SAE latent's decoder direction instead (SAELens folder / params.npz)");
  scope->add_option("--latent", a->latent, "with --sae: the latent");
  scope->add_option("--sae-scale", a->sae_scale, "with --sae: the direction's scale")->capture_default_str();
  scope->add_option("--layer", a->layer, "source layer")->capture_default_str();
  scope->add_option("--site", a->site, "resid_post (hidden state), mlp_out, resid_mid (MLP input)")->capture_default_str();
  scope->add_option("--pos", a->pos, "source position (negative: from the end)")->capture_default_str();
  scope->add_option("--amp", a->amp, "comma-separated factors, swept in one batch")->capture_default_str();
  scope->add_option("--target", a->target, "identity, describe, or your own text with the placeholder")->capture_default_str();
  scope->add_option("--placeholder", a->placeholder, "placeholder in the target text")->capture_default_str();
  scope->add_option("--target-layer", a->target_layer, "patch layer (-1: the source layer)")->capture_default_str();
  scope->add_flag("--every-step", a->every_step, "also patch each generated position");
  scope->add_option("--baseline", a->baseline, "neutral prompt: guidance v_base + a (v - v_base)");
  scope->add_option("--baseline-corpus", a->baseline_corpus, "text file: v_base = mean over its positions");
  scope->add_option("--max-tokens", a->max_tokens, "tokens to generate")->capture_default_str();
  scope->add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  scope->add_option("--seed", a->seed, "sampling seed")->capture_default_str();
  scope->add_flag("--auto", a->auto_pick, "pick the factor whose output best matches the scoring rule");
  scope->add_option("--expect", a->expect, "with --auto: the word the output should contain");
  scope->add_flag("--json", a->json, "print a JSON list of {layer, site, amp, text}");

  auto mb = std::make_shared<ModelArgs>();
  auto b = std::make_shared<BenchArgs>();
  auto* bench = scope->add_subcommand("bench", "success rates of Patchscopes vs Superscopes over an entity set");
  mb->add(bench);
  bench->add_option("--entities", b->entities, "JSONL of {\"prompt\", \"answer\"}")->required();
  bench->add_option("--layers", b->layers, "comma-separated source layers (default all)");
  bench->add_option("--site", b->site, "resid_post, mlp_out, resid_mid")->capture_default_str();
  bench->add_option("--amp", b->amp, "factors swept for Superscopes")->capture_default_str();
  bench->add_option("--target", b->target, "identity, describe or your own text with '?'")->capture_default_str();
  bench->add_option("--max-tokens", b->max_tokens, "tokens generated per probe")->capture_default_str();
  bench->add_flag("--json", b->json, "print {method: {layer: success_rate}}");
  bench->add_flag("--verbose", b->verbose, "print every probe's output to stderr");
  bench->callback([&rc, mb, b] { rc = cmd_scope_bench(*mb, *b); });

  scope->callback([&rc, ma, a, bench] {
    if (bench->parsed()) return;
    lumen::require(!ma->path.empty(), ErrorKind::Arg, "scope: MODEL is required");
    rc = cmd_scope(*ma, *a);
  });
}

}  // namespace lumen_cli
