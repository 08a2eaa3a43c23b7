// Feature statistics: stream a corpus through the model and record, for every feature (SAE latent,
// MLP neuron or given direction), its top activating contexts, a log-spaced histogram of its
// non-zero activations, density, max, mean and logit effects, in a SQLite store that survives a
// killed harvest (--resume) and merges across corpus shards.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lumen/model.h"

namespace lumen {

class Sae;

// What is measured: a hook site and a map from its activations [N,D_site] to features [N,F].
struct FeatureSource {
  std::string name;  // unique within a store, e.g. "blocks.2.hook_resid_post.sae"
  std::string kind;  // "sae", "neurons", "direction"
  std::string hook;
  int64_t n_features = 0;
  std::function<at::Tensor(const at::Tensor&)> encode;
  at::Tensor write_directions;  // [F, d_model]: what each feature adds to the residual stream (logit effects)
};

FeatureSource sae_feature_source(const Sae& sae);
FeatureSource neuron_feature_source(const Model& model, int64_t layer);  // blocks.L.mlp.hook_post
// Directions [F, D] read at `hook` by dot product (a file: .safetensors with tensor "directions", or
// whitespace-separated numbers, one direction per line).
FeatureSource direction_feature_source(const std::string& name, const std::string& hook, const at::Tensor& directions);
at::Tensor load_directions(const std::string& path);

struct HarvestOptions {
  std::string corpus;
  std::string text_field = "text";
  std::string out;            // the SQLite store
  int64_t tokens = 1000000;   // corpus tokens to read (BOS excluded from the statistics)
  int64_t ctx_len = 64;
  int64_t batch = 32;         // windows per forward pass
  int64_t top_k = 20;         // contexts kept per feature
  // A commit rewrites every feature's statistics, so it is rare: every `commit_every` windows
  // (rounded to whole batches) or `commit_seconds` of work, whichever comes first.
  int64_t commit_every = 4096;
  double commit_seconds = 30;
  int64_t shard = 0, n_shards = 1;  // this harvest reads windows with index % n_shards == shard
  bool resume = false;
  int64_t threads = 0;        // threads folding sources in (0: one per core); results do not depend on it
  int64_t stop_after_windows = -1;  // tests: stop (after a commit) once this many windows are done
  std::function<void(const std::string&)> log;
};

struct HarvestResult {
  int64_t windows = 0, tokens = 0;
  double seconds = 0;
  bool finished = true;
};

HarvestResult harvest_features(const Model& model, const std::vector<FeatureSource>& sources, const HarvestOptions& opt);

// Merges stores harvested on disjoint shards of one corpus (same model, sources and options) into
// `out`: the same statistics as one harvest over the union.
void merge_feature_stores(const std::string& out, const std::vector<std::string>& inputs);

struct FeatureContext {
  std::vector<int32_t> tokens;
  std::vector<std::string> pieces;
  std::vector<float> acts;
  float max = 0;
  int64_t window = 0, position = 0;  // global window index; max position inside the window
};

struct FeatureInfo {
  std::string source;
  int64_t feature = 0;
  int64_t tokens = 0, nonzero = 0;
  double density = 0, mean = 0, max = 0;
  std::vector<std::pair<double, double>> quantiles;  // (q, value) over non-zero activations
  std::vector<int64_t> histogram;                    // counts per bin (see histogram_edges())
  std::vector<FeatureContext> contexts;              // strongest first
  std::vector<std::pair<std::string, float>> top_logits, bottom_logits;
};

// Bin edges of the histogram of positive activations: bin 0 is (0, edges[0]), bin i is
// [edges[i-1], edges[i]), the last bin is [edges.back(), inf).
const std::vector<double>& histogram_edges();

class FeatureStore {
 public:
  static FeatureStore open(const std::string& path);  // throws Error(Io/Format) naming the file
  ~FeatureStore();
  FeatureStore(FeatureStore&&) noexcept;

  std::vector<std::string> sources() const;
  int64_t n_features(const std::string& source) const;
  std::string default_source() const;  // the first one
  FeatureInfo info(const std::string& source, int64_t feature) const;
  // Share of all token activations (zeros included) at or below x; cheap (histogram lookup).
  double percentile(const std::string& source, int64_t feature, double x) const;
  double dataset_max(const std::string& source, int64_t feature) const;
  // Features ordered by "density" or "max", strongest first.
  std::vector<std::pair<int64_t, double>> top(const std::string& source, const std::string& by, int64_t n) const;
  std::string meta(const std::string& key) const;

 private:
  FeatureStore();
  struct Impl;
  std::unique_ptr<Impl> p_;
};

// Terminal dashboard (ANSI colours when `color`) and the JSON of `lumen features show --json`.
std::string render_feature_dashboard(const FeatureInfo& info, bool color);
std::string feature_info_json(const FeatureInfo& info);

}  // namespace lumen
