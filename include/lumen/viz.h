// Feature visualization: token sequences that strongly activate a target (an SAE latent, a neuron,
// or a direction at a hook point), found by ADAPT (beam-search initialization + adaptive
// gradient-guided mutation) or the baselines GCG, EPO-style population search, random search and
// dataset search. All methods share one candidate evaluator and one token-gradient routine and run
// under the same budget of forward-pass tokens. See docs/viz.md.
// Shapes: N candidates, T positions (BOS + the sequence), V vocabulary, D site width.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lumen/model.h"

namespace lumen {

class Sae;
class FeatureStore;

// What is maximised: feature(site activation)[position].
struct VizTarget {
  std::string hook;         // hook point, e.g. "blocks.2.hook_resid_post" (with an SAE: the SAE's hook)
  const Sae* sae = nullptr; // set: `index` is an SAE latent (scored with the SAE's exact encode)
  int64_t index = -1;       // SAE latent, or (no SAE, no direction) a unit of the site, e.g. an MLP neuron
  at::Tensor direction;     // [D]: read by dot product when defined (no SAE)
  enum class Position { Last, Max } position = Position::Last;  // last token, or max over positions

  std::string describe() const;  // "blocks.2.hook_resid_post.sae latent 17 (last token)"
};

struct VizOptions {
  std::string method = "adapt";  // adapt | gcg | epo | random | dataset
  int64_t len = 12;              // sequence length (BOS excluded)
  int64_t len_max = -1;          // > len: lengths len..len_max share the budget equally
  int64_t budget_tokens = 200000;  // forward-pass tokens (every position of every forward counts)
  double fluency = 0.0;          // lambda: objective = activation - lambda * mean next-token CE
  uint64_t seed = 0;
  int64_t batch = 512;           // candidates per forward pass
  int64_t n_best = 5;            // sequences returned
  // ADAPT
  int64_t beam_width = 8;
  int64_t beam_shortlist = 0;    // next tokens scored per beam in the beam search; 0: all when V <= 4096, else 256
  double beam_budget_share = 0.25;  // at most this share of the budget goes to the beam search
  int64_t adapt_candidates = 128;   // mutation candidates per step (more steps, more adaptation)
  int64_t adapt_patience = 4;    // steps without improvement before a perturbation
  // GCG
  int64_t gcg_candidates = 512, gcg_topk = 256, gcg_steps = 250;
  // EPO
  int64_t epo_population = 8, epo_children = 32, epo_topk = 64, epo_restart_every = 20;
  double epo_lambda_min = 0.1, epo_lambda_max = 10.0;
  // dataset search: token windows (BOS-prefixed or not) from the feature store's top contexts,
  // each with the position of its maximum.
  std::vector<std::pair<std::vector<int32_t>, int64_t>> dataset_contexts;
  std::function<void(const std::string&)> log;  // progress (stderr by default from the CLI)
};

struct VizSequence {
  std::vector<int32_t> ids;   // BOS + sequence: feed exactly these to `lumen cache --ids`
  std::string text;           // decode(ids)
  double activation = 0;      // the target's value at its position (exact, as lumen cache gives it)
  double ce = 0;              // mean next-token cross-entropy of the sequence (nats)
  double objective = 0;       // what the search maximised: activation - fluency * ce
  std::vector<float> token_acts;  // the target's value at every position (BOS first)
  bool valid = true;          // survives decode -> encode
};

struct VizResult {
  std::string method;
  std::vector<VizSequence> best;  // strongest first, distinct
  int64_t tokens_used = 0;        // forward-pass tokens spent
  int64_t candidates = 0;         // sequences evaluated
  int64_t steps = 0;
  double seconds = 0;
};

// Runs one method. Throws Error(Arg/Hook/Sae) for a target the model does not have.
VizResult visualize(const Model& model, const VizTarget& target, const VizOptions& opt);

// Dataset search inputs from a feature store: (tokens, max position) of the top contexts.
std::vector<std::pair<std::vector<int32_t>, int64_t>> store_contexts(const FeatureStore& store,
                                                                     const std::string& source, int64_t feature);

// Exact re-evaluation of given sequences (ids with BOS): activation, per-token acts and CE.
std::vector<VizSequence> score_sequences(const Model& model, const VizTarget& target,
                                         const std::vector<std::vector<int32_t>>& ids, double fluency = 0);

// ---- `lumen viz bench` (src/viz/bench.cpp) --------------------------------------------------------
struct VizBenchOptions {
  std::vector<std::string> sae_dirs;
  std::string store;
  int64_t latents = 50;           // per SAE, stratified by density
  int64_t seeds = 3;
  std::vector<std::string> methods = {"adapt", "gcg", "epo", "random", "dataset"};
  VizOptions viz;                 // len, budget, fluency, ...
  uint64_t seed = 0;              // latent sampling
  std::string out_dir;            // viz_bench.csv and viz_bench.md
  std::function<void(const std::string&)> log;
};

struct VizBenchResult {
  std::string csv_path, md_path;
  std::string markdown;  // the table
};

VizBenchResult viz_bench(const Model& model, const VizBenchOptions& opt);

// Mean and half-width of a 95% confidence interval (Student t) of xs.
std::pair<double, double> mean_ci95(const std::vector<double>& xs);

}  // namespace lumen
