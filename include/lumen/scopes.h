// Patchscopes and Superscopes: take a hidden vector from a source prompt (or a direction such as
// an SAE decoder column), optionally amplify it, patch it into a target prompt built to make the
// model put it into words, and generate.
//   Patchscopes: Ghandeharioun et al. 2024 (identity prompt, patch at the placeholder).
//   Superscopes: Jacobi & Niv 2025 (amplify by a factor, scalar or classifier-free-guidance style
//   v_base + a (v - v_base), and sweep the factor).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lumen/model.h"

namespace lumen {

// Where a vector is read and written: "resid_post" (hidden state), "mlp_out", "resid_mid" (MLP input).
std::string scope_hook_name(const std::string& site, int64_t layer);

// The vector at (layer, site, pos) of a prompt's run: [D]. pos < 0 counts from the end.
at::Tensor scope_source_vector(const Model& model, const std::string& prompt, int64_t layer,
                               const std::string& site, int64_t pos);
// The mean vector at (layer, site) over every position of a corpus's first `max_tokens` tokens.
at::Tensor scope_mean_vector(const Model& model, const std::string& corpus_path, int64_t layer,
                             const std::string& site, int64_t max_tokens);

class Sae;
// A direction to describe: scale x the SAE's decoder row for `latent` ([D]), and where it lives
// (the SAE's hook: layer and site name as scope_hook_name understands it).
at::Tensor scope_sae_direction(const Sae& sae, int64_t latent, double scale, int64_t* layer, std::string* site);

constexpr const char* kIdentityTemplate = "cat -> cat\n1135 -> 1135\nhello -> hello\n?";
constexpr const char* kDescribeTemplate = "Here is a word and what it means.\n?";

struct ScopeTarget {
  std::string text = kIdentityTemplate;  // must contain `placeholder`
  std::string placeholder = "?";         // patched at its (last) occurrence's last token
  int64_t layer = -1;                    // -1: the source layer
  bool every_step = false;               // also write the vector at each generated position
};

struct ScopeOptions {
  std::vector<double> amps = {1.0};
  at::Tensor baseline;  // [D]; defined: guidance v_base + a (v - v_base), else scalar a v
  int64_t max_new_tokens = 20;
  double temperature = 0.0;
  uint64_t seed = 0;
};

struct ScopeRow {
  int64_t layer;
  std::string site;
  double amp;
  std::string text;  // the generated continuation
  std::vector<int32_t> ids;
};

// Patch position in the target template's tokens: the last token of the last placeholder.
int64_t scope_placeholder_position(const Tokenizer& tok, const ScopeTarget& target, std::vector<int32_t>* ids);

// One batched generation over all factors. v is [D] at the source site of `layer`.
std::vector<ScopeRow> run_scope(const Model& model, const at::Tensor& v, int64_t layer, const std::string& site,
                                const ScopeTarget& target, const ScopeOptions& opt);

// --auto: scores each row and returns the index of the best; ties go to the smaller factor.
// With `expect` non-empty: 1 if the output contains it as a word (case-insensitive), else 0, with
// token overlap as the tie-breaker. Without: the share of the source prompt's words the output
// repeats, minus a penalty for degenerate (repetitive) output.
double scope_score(const std::string& output, const std::string& source_prompt, const std::string& expect);
size_t scope_pick_auto(const std::vector<ScopeRow>& rows, const std::string& source_prompt, const std::string& expect);
bool scope_contains_word(const std::string& text, const std::string& word);

// The evaluation harness: entities are JSONL lines {"prompt": ..., "answer": ...}; the source
// vector is read at the prompt's last token.
struct ScopeBenchOptions {
  std::vector<int64_t> layers;  // empty: all
  std::string site = "resid_post";
  std::vector<double> amps = {1, 2, 4, 8, 16};
  ScopeTarget target;
  int64_t max_new_tokens = 12;
  bool verbose = false;
};
struct ScopeBenchResult {
  // method -> layer -> success rate; methods: patchscopes (factor 1), superscopes_best (any factor
  // succeeds: an oracle upper bound), superscopes_auto (factor chosen without the answer), and
  // unpatched (the target prompt's own output: the base rate any method must beat)
  std::map<std::string, std::map<int64_t, double>> rates;
  int64_t n_entities = 0;
  double ms_per_source_vector = 0;
};
ScopeBenchResult run_scope_bench(const Model& model, const std::string& entities_path, const ScopeBenchOptions& opt);

}  // namespace lumen
