// lumen features harvest | show | top | merge
#include <unistd.h>

#include "common.h"
#include "lumen/features.h"
#include "lumen/sae.h"

namespace lumen_cli {
namespace {

struct HarvestArgs {
  std::vector<std::string> saes, neurons;
  std::string direction, direction_hook, corpus, out, shard = "0/1";
  int64_t tokens = 1000000, ctx_len = 64, batch = 32, top_k = 20, threads = 0;
  bool resume = false;
};

int cmd_harvest(const ModelArgs& ma, const HarvestArgs& a) {
  auto model = ma.load(true);
  std::vector<lumen::FeatureSource> sources;
  for (const auto& dir : a.saes) {
    auto sae = lumen::load_sae(dir, model.device());
    lumen::check_sae_fits(sae, model);
    sources.push_back(lumen::sae_feature_source(sae));
  }
  for (const auto& l : a.neurons) sources.push_back(lumen::neuron_feature_source(model, std::stoll(l)));
  if (!a.direction.empty()) {
    lumen::require(!a.direction_hook.empty(), ErrorKind::Arg, "--direction needs --hook NAME (where to read it)");
    sources.push_back(lumen::direction_feature_source("direction:" + a.direction, a.direction_hook, lumen::load_directions(a.direction)));
  }
  lumen::HarvestOptions o;
  o.corpus = a.corpus;
  o.out = a.out;
  o.tokens = a.tokens;
  o.ctx_len = a.ctx_len;
  o.batch = a.batch;
  o.top_k = a.top_k;
  o.resume = a.resume;
  o.threads = a.threads;
  auto slash = a.shard.find('/');
  lumen::require(slash != std::string::npos, ErrorKind::Arg, "--shard must look like i/n");
  o.shard = std::stoll(a.shard.substr(0, slash));
  o.n_shards = std::stoll(a.shard.substr(slash + 1));
  auto r = lumen::harvest_features(model, sources, o);
  std::printf("harvested %lld windows (%lld tokens) into %s in %.1f s (%.0f tok/s)\n", (long long)r.windows,
              (long long)r.tokens, a.out.c_str(), r.seconds, r.seconds > 0 ? r.tokens / r.seconds : 0.0);
  return 0;
}

int cmd_show(const std::string& store_path, const std::string& source, int64_t latent, bool json) {
  auto store = lumen::FeatureStore::open(store_path);
  auto info = store.info(source.empty() ? store.default_source() : source, latent);
  if (json) std::cout << lumen::feature_info_json(info) << "\n";
  else std::cout << lumen::render_feature_dashboard(info, isatty(STDOUT_FILENO));
  return 0;
}

int cmd_top(const std::string& store_path, const std::string& source, const std::string& by, int64_t n) {
  auto store = lumen::FeatureStore::open(store_path);
  const std::string src = source.empty() ? store.default_source() : source;
  std::printf("%s: latents by %s\n%8s %12s %12s %12s\n", src.c_str(), by.c_str(), "latent", "density", "max", "mean");
  for (const auto& [f, _] : store.top(src, by, n)) {
    auto info = store.info(src, f);
    std::printf("%8lld %11.4f%% %12.4f %12.5f\n", (long long)f, 100 * info.density, info.max, info.mean);
  }
  return 0;
}

}  // namespace

void add_features_commands(CLI::App& app, int& rc) {
  auto* feats = app.add_subcommand("features", "feature statistics: harvest a corpus, show feature pages");
  feats->require_subcommand(1);

  auto ma = std::make_shared<ModelArgs>();
  auto h = std::make_shared<HarvestArgs>();
  auto* harvest = feats->add_subcommand("harvest", "record top contexts, histograms, density and logit effects");
  ma->add(harvest);
  harvest->add_option("--sae", h->saes, "SAE folder (repeatable)");
  harvest->add_option("--neurons", h->neurons, "MLP neurons of this layer (repeatable)");
  harvest->add_option("--direction", h->direction, "directions file (.safetensors 'directions' [F,D] or text rows)");
  harvest->add_option("--hook", h->direction_hook, "with --direction: the hook point it is read at");
  harvest->add_option("--corpus", h->corpus, "plain text (one document per line) or JSONL")->required();
  harvest->add_option("--tokens", h->tokens, "corpus tokens to read")->capture_default_str();
  harvest->add_option("--out", h->out, "the SQLite store")->required();
  harvest->add_option("--ctx-len", h->ctx_len, "window length")->capture_default_str();
  harvest->add_option("--batch", h->batch, "windows per forward pass")->capture_default_str();
  harvest->add_option("--top-k", h->top_k, "contexts kept per feature")->capture_default_str();
  harvest->add_option("--threads", h->threads, "threads folding sources in (0: one per core; the store is the same)")->capture_default_str();
  harvest->add_option("--shard", h->shard, "i/n: read every n-th window starting at i (merge shards later)")->capture_default_str();
  harvest->add_flag("--resume", h->resume, "continue a killed harvest");
  harvest->callback([&rc, ma, h] { rc = cmd_harvest(*ma, *h); });

  struct ShowArgs {
    std::string store, source, by = "density";
    int64_t latent = 0, n = 20;
    bool json = false;
  };
  auto s = std::make_shared<ShowArgs>();
  auto* show = feats->add_subcommand("show", "a feature's dashboard");
  show->add_option("store", s->store, "feature store")->required();
  show->add_option("--latent", s->latent, "feature index")->required();
  show->add_option("--source", s->source, "source name (default: the first)");
  show->add_flag("--json", s->json, "print JSON");
  show->callback([&rc, s] { rc = cmd_show(s->store, s->source, s->latent, s->json); });

  auto t = std::make_shared<ShowArgs>();
  auto* top = feats->add_subcommand("top", "list latents by density or max");
  top->add_option("store", t->store, "feature store")->required();
  top->add_option("--by", t->by, "density or max")->capture_default_str();
  top->add_option("--source", t->source, "source name (default: the first)");
  top->add_option("-n", t->n, "how many")->capture_default_str();
  top->callback([&rc, t] { rc = cmd_top(t->store, t->source, t->by, t->n); });

  auto m = std::make_shared<std::vector<std::string>>();
  auto mout = std::make_shared<std::string>();
  auto* merge = feats->add_subcommand("merge", "merge stores harvested on disjoint shards");
  merge->add_option("out", *mout, "merged store")->required();
  merge->add_option("inputs", *m, "shard stores")->required();
  merge->callback([&rc, m, mout] {
    lumen::merge_feature_stores(*mout, *m);
    std::printf("merged %zu stores into %s\n", m->size(), mout->c_str());
    rc = 0;
  });
}

}  // namespace lumen_cli
