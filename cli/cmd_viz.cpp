// lumen viz | viz bench: feature visualization (ADAPT, GCG, EPO, random, dataset search)
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "lumen/features.h"
#include "lumen/sae.h"
#include "lumen/viz.h"

namespace lumen_cli {
namespace {

struct VizArgs {
  std::string sae, hook, direction, store, method = "adapt", position = "last";
  int64_t latent = -1, len = 12, len_max = -1, budget = 200000, n_best = 5, beam_width = 8, adapt_candidates = 128;
  double beam_share = 0.25;
  uint64_t seed = 0;
  double fluency = 0;
  bool json = false;
};

void add_search_options(CLI::App* c, VizArgs* a) {
  c->add_option("--len", a->len, "sequence length (BOS excluded)")->capture_default_str();
  c->add_option("--len-max", a->len_max, "longest length: lengths --len..--len-max share the budget");
  c->add_option("--budget", a->budget, "forward-pass tokens per run")->capture_default_str();
  c->add_option("--fluency", a->fluency, "lambda of the fluency penalty (mean next-token CE)")->capture_default_str();
  c->add_option("--position", a->position, "last or max (over positions)")->capture_default_str();
  c->add_option("--beam-width", a->beam_width, "ADAPT beam width")->capture_default_str();
  c->add_option("--beam-share", a->beam_share, "ADAPT: largest share of the budget for the beam search")->capture_default_str();
  c->add_option("--adapt-candidates", a->adapt_candidates, "ADAPT: mutation candidates per step")->capture_default_str();
}

lumen::VizOptions options_of(const VizArgs& a) {
  lumen::VizOptions o;
  o.method = a.method;
  o.len = a.len;
  o.len_max = a.len_max;
  o.budget_tokens = a.budget;
  o.fluency = a.fluency;
  o.seed = a.seed;
  o.n_best = a.n_best;
  o.beam_width = a.beam_width;
  o.beam_budget_share = a.beam_share;
  o.adapt_candidates = a.adapt_candidates;
  o.log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  return o;
}

lumen::VizTarget::Position position_of(const std::string& p) {
  if (p == "last") return lumen::VizTarget::Position::Last;
  if (p == "max") return lumen::VizTarget::Position::Max;
  throw Error(ErrorKind::Arg, "--position " + p + ": expected last or max");
}

std::string visible(const std::string& piece) {
  std::string out;
  for (char ch : piece) out += ch == '\n' ? std::string("\\n") : std::string(1, ch);
  return out;
}

// Tokens with their activations: coloured backgrounds on a terminal, [piece act] otherwise.
std::string highlight(const lumen::Model& model, const lumen::VizSequence& s, double scale, bool color) {
  const auto& tok = model.require_tokenizer();
  std::string o;
  for (size_t i = 1; i < s.ids.size(); ++i) {
    const std::string p = visible(tok.decode_step(s.ids[i - 1], s.ids[i]));
    const double a = i < s.token_acts.size() ? s.token_acts[i] : 0.0;
    const double frac = scale > 0 ? a / scale : 0;
    if (color) {
      static const int ramp[] = {230, 223, 216, 209, 202};
      o += frac > 0 ? "\033[48;5;" + std::to_string(ramp[std::min(4, static_cast<int>(frac * 5))]) + "m\033[38;5;16m" + p + "\033[0m" : p;
    } else {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.2f", a);
      o += a > 0 ? "[" + p + " " + buf + "]" : p;
    }
  }
  return o;
}

int cmd_viz(const ModelArgs& ma, const VizArgs& a) {
  auto model = ma.load(true);
  lumen::VizTarget tg;
  tg.position = position_of(a.position);
  lumen::Sae sae;
  std::string source;
  if (!a.sae.empty()) {
    sae = lumen::load_sae(a.sae, model.device());
    lumen::check_sae_fits(sae, model);
    tg.sae = &sae;
    tg.hook = sae.config().hook_name;
    source = tg.hook + ".sae";
    lumen::require(a.latent >= 0, ErrorKind::Arg, "viz: --latent N is needed with --sae");
    tg.index = a.latent;
  } else {
    lumen::require(!a.hook.empty(), ErrorKind::Arg, "viz: give --sae DIR --latent N, or --hook H with --latent N (a unit) or --direction FILE");
    tg.hook = a.hook;
    source = a.hook;
    if (!a.direction.empty()) {
      auto d = lumen::load_directions(a.direction);
      tg.direction = d.dim() == 2 ? d[0] : d;
    } else {
      tg.index = a.latent;
    }
  }
  auto o = options_of(a);
  double dmax = std::nan("");
  std::optional<lumen::FeatureStore> store;
  if (!a.store.empty()) {
    store.emplace(lumen::FeatureStore::open(a.store));
    const auto srcs = store->sources();
    if (std::find(srcs.begin(), srcs.end(), source) != srcs.end() && tg.index >= 0) {
      dmax = store->dataset_max(source, tg.index);
      if (a.method == "dataset") o.dataset_contexts = lumen::store_contexts(*store, source, tg.index);
    } else {
      store.reset();
      std::fprintf(stderr, "note: %s has no source '%s'; no dataset metrics\n", a.store.c_str(), source.c_str());
    }
  }
  lumen::require(a.method != "dataset" || store.has_value(), ErrorKind::Arg, "viz --method dataset needs --store with this latent's source");
  auto r = lumen::visualize(model, tg, o);
  auto pct = [&](double x) { return store ? store->percentile(source, tg.index, x) : std::nan(""); };

  if (a.json) {
    nlohmann::json j;
    j["latent"] = tg.index;
    j["hook"] = tg.hook;
    j["source"] = source;
    j["position"] = a.position;
    j["method"] = r.method;
    j["budget_tokens"] = a.budget;
    j["tokens_used"] = r.tokens_used;
    j["candidates"] = r.candidates;
    j["seconds"] = r.seconds;
    j["dataset_max"] = std::isfinite(dmax) ? nlohmann::json(dmax) : nlohmann::json(nullptr);
    j["best"] = nlohmann::json::array();
    for (const auto& b : r.best) {
      nlohmann::json e{{"ids", b.ids}, {"text", b.text}, {"activation", b.activation}, {"ce", b.ce},
                       {"token_activations", b.token_acts}, {"valid", b.valid}};
      e["normalized"] = std::isfinite(dmax) && dmax > 0 ? nlohmann::json(b.activation / dmax) : nlohmann::json(nullptr);
      e["percentile"] = store ? nlohmann::json(pct(b.activation)) : nlohmann::json(nullptr);
      j["best"].push_back(e);
    }
    // Byte tokens can leave invalid UTF-8 in "text"; the ids are exact, the text is replaced.
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return 0;
  }
  const bool color = isatty(STDOUT_FILENO);
  std::printf("%s: %s, %lld forward tokens, %lld candidates, %.2f s (%.0f candidates/s)\n", tg.describe().c_str(),
              r.method.c_str(), (long long)r.tokens_used, (long long)r.candidates, r.seconds,
              r.seconds > 0 ? r.candidates / r.seconds : 0.0);
  if (std::isfinite(dmax)) std::printf("dataset max %.4f\n", dmax);
  const double scale = std::isfinite(dmax) && dmax > 0 ? dmax : (r.best.empty() ? 0.0 : r.best[0].activation);
  for (size_t i = 0; i < r.best.size(); ++i) {
    const auto& b = r.best[i];
    std::printf("%zu. act %.4f", i + 1, b.activation);
    if (std::isfinite(dmax)) std::printf("  (%.2fx max, percentile %.4f)", b.activation / dmax, pct(b.activation));
    std::printf("  CE %.2f%s\n   %s\n", b.ce, b.valid ? "" : "  (does not survive decode->encode)",
                highlight(model, b, scale, color).c_str());
  }
  return 0;
}

struct BenchArgs {
  std::vector<std::string> saes;
  std::string store, out = "viz_bench", methods = "adapt,gcg,epo,random,dataset";
  int64_t latents = 50, seeds = 3;
};

int cmd_bench(const ModelArgs& ma, const VizArgs& a, const BenchArgs& b) {
  auto model = ma.load(true);
  lumen::VizBenchOptions o;
  o.sae_dirs = b.saes;
  o.store = b.store;
  o.latents = b.latents;
  o.seeds = b.seeds;
  o.methods.clear();
  std::stringstream ss(b.methods);
  for (std::string m; std::getline(ss, m, ',');)
    if (!m.empty()) o.methods.push_back(m);
  o.viz = options_of(a);
  o.viz.log = nullptr;
  o.out_dir = b.out;
  o.log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  auto r = lumen::viz_bench(model, o);
  std::printf("budget %lld tokens per run, length %lld, %lld latents x %lld seeds per SAE\n\n%s\nwrote %s and %s\n",
              (long long)a.budget, (long long)a.len, (long long)b.latents, (long long)b.seeds, r.markdown.c_str(),
              r.csv_path.c_str(), r.md_path.c_str());
  return 0;
}

}  // namespace

void demo_viz(const lumen::Model& model, const std::vector<lumen::Sae>& saes, const std::string& store_path) {
  if (saes.empty()) return;
  auto store = lumen::FeatureStore::open(store_path);
  const lumen::Sae& sae = saes[std::min<size_t>(2, saes.size() - 1)];
  const std::string src = sae.config().hook_name + ".sae";
  std::printf("\n-- feature visualization: ADAPT (budget 40000 forward tokens, length 10) next to dataset contexts\n");
  int shown = 0;
  for (const auto& [f, density] : store.top(src, "density", store.n_features(src))) {
    if (shown >= 3) break;
    // Sparse but not rare latents (0.1% to 2% of tokens) make the clearest pictures.
    if (density > 0.02 || density < 0.001) continue;
    ++shown;
    lumen::VizTarget tg;
    tg.hook = sae.config().hook_name;
    tg.sae = &sae;
    tg.index = f;
    lumen::VizOptions o;
    o.len = 10;
    o.budget_tokens = 40000;
    auto r = lumen::visualize(model, tg, o);
    const auto info = store.info(src, f);
    std::printf("\n%s latent %lld (density %.2f%%, dataset max %.3f)\n", src.c_str(), (long long)f, 100 * density, info.max);
    if (!r.best.empty())
      std::printf("  ADAPT  %.3f (%.2fx max): %s\n", r.best[0].activation, r.best[0].activation / info.max,
                  highlight(model, r.best[0], info.max, false).c_str());
    for (size_t i = 0; i < info.contexts.size() && i < 3; ++i) {
      const auto& c = info.contexts[i];
      std::string text;
      for (size_t t = 0; t < c.pieces.size(); ++t) {
        const std::string p = visible(c.pieces[t]);
        text += static_cast<int64_t>(t) == c.position ? "[" + p + "]" : p;
      }
      std::printf("  data   %.3f: %s\n", c.max, text.c_str());
    }
  }
}

void add_viz_commands(CLI::App& app, int& rc) {
  auto ma = std::make_shared<ModelArgs>();
  auto a = std::make_shared<VizArgs>();
  auto* viz = app.add_subcommand("viz", "feature visualization: sequences that activate an SAE latent, neuron or direction");
  ma->add(viz, false);
  viz->add_option("--sae", a->sae, "SAE folder (the target is one of its latents)");
  viz->add_option("--latent", a->latent, "SAE latent (or, with --hook, a unit of that site)");
  viz->add_option("--hook", a->hook, "hook point of a neuron/direction target (without --sae)");
  viz->add_option("--direction", a->direction, "direction file (.safetensors 'directions' or text) read at --hook");
  viz->add_option("--method", a->method, "adapt, gcg, epo, random or dataset")->capture_default_str();
  viz->add_option("--seed", a->seed, "random seed")->capture_default_str();
  viz->add_option("--store", a->store, "feature store: dataset max, percentiles, dataset search");
  viz->add_option("-n,--n-best", a->n_best, "sequences shown")->capture_default_str();
  viz->add_flag("--json", a->json, "print one JSON object");
  add_search_options(viz, a.get());

  auto bma = std::make_shared<ModelArgs>();
  auto ba = std::make_shared<VizArgs>();
  ba->budget = 200000;
  auto b = std::make_shared<BenchArgs>();
  auto* bench = viz->add_subcommand("bench", "all methods on density-stratified latents of every SAE: CSV + markdown");
  bma->add(bench);
  bench->add_option("--sae", b->saes, "SAE folders (repeatable)")->required()->expected(1, -1);
  bench->add_option("--store", b->store, "feature store harvested with these SAEs")->required();
  bench->add_option("--latents", b->latents, "latents per SAE")->capture_default_str();
  bench->add_option("--seeds", b->seeds, "seeds per latent and method")->capture_default_str();
  bench->add_option("--methods", b->methods, "comma-separated methods")->capture_default_str();
  bench->add_option("--out", b->out, "output folder (viz_bench.csv, viz_bench.md)")->capture_default_str();
  add_search_options(bench, ba.get());
  bench->callback([&rc, bma, ba, b] { rc = cmd_bench(*bma, *ba, *b); });

  viz->callback([&rc, ma, a, viz] {
    if (viz->get_subcommands().empty()) {
      lumen::require(!ma->path.empty(), ErrorKind::Arg, "viz: give a MODEL (or `viz bench MODEL ...`)");
      rc = cmd_viz(*ma, *a);
    }
  });
}

}  // namespace lumen_cli
