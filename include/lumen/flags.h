// Inert interpretability flags (Ye & Cui, 2026, "Efficient Representations are Controllable
// Representations"): fine-tune a model so that k fixed residual dimensions at one layer carry k
// binary concept labels, teach it to rely on them, then steer generation by setting them.
// Labels come from a JSONL corpus or from keyword rules over plain text (docs/flags.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lumen/generate.h"
#include "lumen/hooks.h"
#include "lumen/model.h"

namespace lumen {

// ---- concepts and labels (src/flags/concepts.cpp) ------------------------------------------------

// A concept is present in a text when any of its words occurs as a whole word, case-insensitively.
struct ConceptRule {
  std::string name;
  std::vector<std::string> words;
};

// The built-in TinyStories set: 12 concrete or emotional concepts common enough in the corpus.
std::vector<ConceptRule> default_tinystories_rules();
// Rules file: one concept a line, "name: word word ...", '#' starts a comment.
std::vector<ConceptRule> load_rules(const std::string& path);
bool rule_matches(const ConceptRule& rule, const std::string& text);

struct LabelledText {
  std::string text;
  std::vector<uint8_t> labels;  // one per concept, 0/1
};

struct ConceptCorpus {
  std::vector<std::string> concepts;
  std::vector<LabelledText> items;
  std::vector<int64_t> positives() const;  // per concept
};

// Newline-separated texts (TinyStories layout); blank lines skipped; max_texts < 0: all.
// The non-empty lines of `path` (trimmed) after skipping the first `skip` of them, at most max_texts.
std::vector<std::string> read_texts(const std::string& path, int64_t max_texts = -1, int64_t skip = 0);
ConceptCorpus label_texts(const std::vector<std::string>& texts, const std::vector<ConceptRule>& rules);
// JSONL: {"text": "...", "labels": {"dog": 1, "cat": 0}} or {"text": "...", "concepts": ["dog"]}.
// The concept list is the union of the names seen, in first-seen order. At most 64 concepts.
ConceptCorpus load_concepts_jsonl(const std::string& path, int64_t max_texts = -1);
void save_concepts_jsonl(const std::string& path, const ConceptCorpus& corpus);

// ---- the flag specification (flags.json next to a flagged checkpoint) ----------------------------

// What a flag says at position t. Window: the concept occurs somewhere in the window, so a flag
// announces what is still to come and the model can only guess it early on. Prefix: the concept has
// occurred at or before t, so the model can write the flag exactly from what it has read.
enum class FlagScope { Window, Prefix };
std::string flag_scope_name(FlagScope s);
FlagScope parse_flag_scope(const std::string& s);  // "window" | "prefix"; throws Error(Arg)

// What stage 2 put in the flag dims: nothing, the truth in every flag dim (the paper), or on_value in
// the dims of present concepts only (the others keep the model's write).
enum class FlagSupply { None, All, OnOnly };
std::string flag_supply_name(FlagSupply s);
FlagSupply parse_flag_supply(const std::string& s);  // "none" | "all" | "on-only"; throws Error(Arg)

struct FlagSpec {
  std::vector<std::string> concepts;
  std::vector<int64_t> dims;      // residual dimension of each concept
  int64_t layer = 0;              // flags live in blocks.{layer}.hook_resid_post
  double on_value = 1.0;          // the value a present concept's dimension is trained to
  double off_value = 0.0;
  std::string base_model;         // what was fine-tuned (for base-vs-flagged evaluation)
  std::vector<ConceptRule> rules; // empty when labels came from JSONL
  int64_t seq_len = 128;
  FlagScope scope = FlagScope::Window;
  FlagSupply supply = FlagSupply::All;  // how training supplied the flags (flags.json before it: all)
  std::string training;           // JSON object: every training option and the data size (empty: not recorded)
  std::string hook_name() const;
  int64_t index_of(const std::string& concept) const;  // throws Error(Arg) naming the known ones
};
FlagSpec load_flag_spec(const std::string& dir);  // dir/flags.json
void save_flag_spec(const std::string& dir, const FlagSpec& spec);

// Forces flag dimensions: values[i] for dims[i], at every position (a Replace on those dims only).
// Other dimensions pass through untouched, so gradients still flow through them.
Intervention force_dims(const std::vector<int64_t>& dims, const std::vector<double>& values, int64_t d_model);
// x [B,T,D] with dims `dim_idx` [k] replaced by `values` [B,T,k] or [B,1,k]; the rest passes through,
// and so does a flag dim where its value is NaN (keep what the model wrote).
at::Tensor replace_dims(const at::Tensor& x, const at::Tensor& dim_idx, const at::Tensor& values);
// The values the spec's supply mode puts in the flag dims for labels [B,T,k] in {0,1}: off/on_value,
// or NaN (keep) for absent concepts under on-only. None is treated as All (supplying for a test).
at::Tensor supplied_flags(const FlagSpec& spec, const at::Tensor& labels);
// FlagTrainOptions::linear_write: hooks on blocks 0..layer that recompute the flag dims of each
// block's output from its input detached (same values), so a loss on the flag dims reaches only the
// rows of W_O / W_out that write them (and W_E's flag columns). `model` must outlive `hooks`.
void add_linear_write_hooks(Model& model, int64_t layer, const at::Tensor& dim_idx, HookSet& hooks);

// ---- training (src/flags/train.cpp) --------------------------------------------------------------
struct FlagTrainOptions {
  int64_t layer = 2;
  int64_t n_dims = 16;           // k: the first k concepts get a dimension each
  std::vector<int64_t> dims;     // given dims; empty: chosen by the lowest-variance rule
  double alpha = 4.0;            // weight of the auxiliary flag loss
  double on_scale = 4.0;         // on_value = on_scale x the layer's per-dimension residual RMS
  int64_t steps_write = 200;     // stage 1: learn to write the flags (LM + alpha aux)
  int64_t steps_rely = 1200;     // stage 2: learn to rely on them (true flags supplied)
  bool supply_flags = true;      // stage 2 replaces the flag dims with the true labels
  double supply_rate = 1.0;      // share of stage-2 batches that get the true flags
  double balance = 0.5;          // share of batch rows drawn as a positive of a uniformly chosen concept
  FlagScope scope = FlagScope::Window;  // what a flag says at each position (needs rules for Prefix)
  double max_pos_weight = 10.0;  // positives' aux weight is neg/pos, capped here (1: unweighted)
  double supply_noise = 0.0;     // std of Gaussian noise on supplied flags, in units of on_value
  bool supply_on_only = false;   // supply only present concepts (on_value); absent ones keep the model's write
  // The flag dims' share of each block's output (blocks <= layer) reads its input detached, so the
  // flags are written as a linear read-out of features the LM shapes: learning to write them trains
  // only the rows of W_O / W_out that write the flag dims and W_E's flag columns, and cannot enrich
  // the representation upstream. Llama/GPT-2 blocks only (no norm after the block's output).
  bool linear_write = false;
  // Stage 2 weights the LM loss on the tokens of each concept's first mention by this factor (1: off):
  // those few tokens are where a "this text needs X" flag informs the next-token prediction, and at
  // TinyStories rates they are a few hundred per concept per epoch of ~780k. Needs rule labels.
  double mention_weight = 1.0;
  int64_t batch = 16;
  int64_t seq_len = 128;
  double lr = 3e-3;
  double weight_decay = 0.0;
  double warmup_frac = 0.05;
  uint64_t seed = 0;
  std::string out_dir;
  int64_t checkpoint_every = 200;
  bool resume = false;
  int64_t log_every = 100;
  int64_t stop_after_steps = -1;  // tests: stop after checkpointing at this step
  std::function<void(const std::string&)> log;
};

struct FlagTrainResult {
  FlagSpec spec;
  int64_t steps = 0;
  double first_aux = 0, last_aux = 0;  // aux on a fixed batch before and after this run
  double last_lm = 0;
  bool finished = true;
};

// Fine-tunes `model` in place (all weights, AdamW) and, when finished, writes out_dir as an HF
// llama checkpoint plus flags.json. `base_path` is recorded in flags.json.
FlagTrainResult train_flags(Model& model, const std::string& base_path, const ConceptCorpus& corpus,
                            const std::vector<ConceptRule>& rules, const FlagTrainOptions& opt);

// Per-dimension statistics used by the dimension rule; exposed for tests and docs.
std::vector<int64_t> choose_flag_dims(const Model& model, const std::vector<at::Tensor>& windows, int64_t layer,
                                      int64_t k, double* rms_out = nullptr);
// Texts -> [BOS + tokens] windows truncated to seq_len, with the labels of what the window keeps.
// With rules, `first` holds the position of the token that completes a concept's first mention and
// `start` the position of that mention's first token (-1 when absent); with given labels a present
// concept counts from position 0.
struct TokenWindows {
  std::vector<at::Tensor> tokens;          // each [T] int64, T <= seq_len
  std::vector<std::vector<uint8_t>> labels;
  std::vector<std::vector<int16_t>> first;
  std::vector<std::vector<int16_t>> start;
  bool exact_positions = false;            // `first` came from rules
};
TokenWindows make_windows(const Model& model, const ConceptCorpus& corpus, const std::vector<ConceptRule>& rules,
                          int64_t seq_len);
// The 0/1 flag labels [B,T,k] of windows `idx` at positions 0..T-1 under `scope`.
at::Tensor flag_labels(const TokenWindows& w, const std::vector<int64_t>& idx, int64_t T, int64_t k, FlagScope scope);
// LM-loss weights [B,T-1] for windows `idx` (prediction t scores token t+1): `weight` where token t+1
// belongs to the first mention of one of the first k concepts, 1 elsewhere. Needs rule positions.
at::Tensor mention_weights(const TokenWindows& w, const std::vector<int64_t>& idx, int64_t T, int64_t k, double weight);

// ---- steering and evaluation (src/flags/eval.cpp) ------------------------------------------------
struct SteerOptions {
  std::map<std::string, double> set;  // concept -> 0/1 (scaled to on/off values)
  int64_t max_new_tokens = 120;
  double temperature = 0.8;
  uint64_t seed = 0;
  int64_t samples = 1;
};
// Generates from `prompt` with the named flags forced at every position and every step.
std::vector<std::string> steer(const Model& model, const FlagSpec& spec, const std::string& prompt,
                               const SteerOptions& opt);

struct FlagEvalOptions {
  int64_t samples = 20;          // seeded generations per concept and condition
  int64_t max_new_tokens = 120;
  double temperature = 0.8;
  uint64_t seed = 0;
  std::string prompt = "Once upon a time";
  int64_t max_texts = 600;       // held-out texts used for read-out, loss and reliance
  std::string probe_corpus;      // plain texts (labelled by the spec's rules) that train the erosion
                                 // probes, which then test on the held-out set; empty: half/half held-out
  int64_t probe_texts = 2000;    // texts read from probe_corpus
  int64_t probe_test_texts = 0;  // > 0: the probes test on the probe_corpus texts after the first
                                 // probe_texts (this many) instead of the held-out set: more positives
  int64_t bootstrap = 1000;      // resamples of the probe test windows for the erosion intervals
  std::string control;           // a fine-tune without flags (alpha 0, no supply): its perplexity
  double steer_scale = 1.0;      // steering forces a flag to steer_scale x on_value
  std::vector<int64_t> probe_layers;  // resid_post layers probed besides the flag layer (empty: the last)
  bool probe_supplied = false;   // probe the flagged model with the true flags supplied (its stage-2 condition)
  // What the flag dims hold in the probe passes: "own" (what each model writes), "supplied" (the
  // flagged model gets the true flags; same as probe_supplied) or "off" (every model, base and
  // control included, has them forced to off_value: later blocks cannot read the concept there).
  std::string probe_flags = "own";
  c10::Device device = c10::Device(c10::kCPU);  // where the flagged, base and control models run
  std::function<void(const std::string&)> log;
};

// Erosion probe accuracy at one site: base model, flagged model, no-flag control fine-tune.
struct ProbeAccuracy {
  double before = std::nan(""), after = std::nan(""), control = std::nan("");
};

// The flagged model's probe accuracy minus the control's (the base model's without a control) at
// one view, averaged over the concepts with enough positives to probe, with a 95% bootstrap interval
// over the test windows (the same resample for both models and every concept).
struct ProbeShift {
  double mean = std::nan(""), lo = std::nan(""), hi = std::nan("");
  int64_t concepts = 0, lower = 0;  // concepts averaged, and how many of them fell
  std::string against = "control";  // "control" or "base"
};

struct ConceptEval {
  double readout_accuracy = 0, steer_success = 0, base_rate = 0, flag_off_rate = 0, override_success = 0;
  double probe_accuracy_before = 0, probe_accuracy_after = 0;
  double probe_accuracy_control = std::nan("");  // the no-flag fine-tune (FlagEvalOptions::control)
  double reliance = 0;           // LM loss increase on this concept's texts when the flags are ablated
  double steer_ce = 0;           // base model's loss per token of the flag-on generations (fluency)
  std::vector<ProbeAccuracy> probes;  // per FlagEvalResult::probe_sites; probes[0] is probe_accuracy_*
  int64_t positives = 0;
};

struct FlagEvalResult {
  std::vector<std::string> concepts;
  std::vector<ConceptEval> per_concept;
  double ppl_base = 0, ppl_flagged = 0;
  double loss_base = 0, loss_flagged = 0, loss_ablated = 0;  // over concept texts for the last two
  double reliance_flagged = 0;   // mean loss increase on concept texts, flags mean-ablated
  double reliance_base = 0;      // the same ablation on the base model (control)
  double supplied_gain = 0;      // concept-text loss drop when the true flags replace the model's own
  double ppl_control = 0;        // perplexity of FlagEvalOptions::control (0: none given)
  double base_gen_ce = 0;        // base model's loss per token of its own generations (steer_ce's reference)
  double flagged_gen_ce = 0;     // ... and of the flagged model's unsteered generations
  double steer_scale = 1.0;
  std::vector<std::string> probe_sites;  // "blocks.L.hook_resid_post@last|@mean", the flag layer's @last first
  bool probe_supplied = false;           // the flagged model's probes ran with the true flags supplied
  std::string probe_flags = "own";       // FlagEvalOptions::probe_flags as run
  std::vector<ProbeShift> probe_shifts;  // per probe_sites: erosion shows as an interval below 0
  int64_t probe_train_windows = 0, probe_test_windows = 0;
  std::string supply = "all";            // how the true flags were supplied (supplied_gain, probe_supplied)
  std::string to_json() const;   // the contract: {concepts:{name:{...}}, ppl_base, ppl_flagged, ...}
  std::string table() const;
};

FlagEvalResult evaluate_flags(const std::string& dir, const ConceptCorpus& heldout, const FlagEvalOptions& opt);

}  // namespace lumen
