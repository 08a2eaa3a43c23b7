// The objective shared by every visualization method: one candidate evaluator (batched, stopping
// at the target layer when no cross-entropy is needed, with a shared-prefix path for candidates that
// are edits or extensions of known sequences), one token-gradient routine through the one-hot
// embedding, and the round-trip validity check.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "lumen/model.h"
#include "lumen/viz.h"

namespace lumen::viz {

using Seq = std::vector<int32_t>;  // the sequence without BOS

struct Score {
  double search = 0;  // what selection compares: the activation when it is > 0, else tanh(pre) - 1 < 0
  double act = 0;     // the exact target value (SAE encode, neuron, direction)
  double ce = 0;      // mean next-token CE of the sequence (0 when not computed)
  double objective(double lambda) const { return search - lambda * ce; }
};

class Objective {
 public:
  Objective(const Model& model, const VizTarget& target, const VizOptions& opt, bool need_ce);

  // Scores equal-length sequences in batches of opt.batch; charges N * (T+1) tokens.
  std::vector<Score> evaluate(const std::vector<Seq>& seqs, std::vector<std::vector<float>>* token_acts = nullptr);

  // Candidates that are edits of known sequences (GCG swaps, ADAPT and EPO children): each one
  // shares its leading tokens with the base it has the longest common prefix with. The bases run
  // once with a KV cache, and each candidate runs only from its first differing position on, on a
  // copy of its base's cache rows. Same scores as evaluate(); charges the tokens that run (the
  // bases' shared positions once, plus every candidate's own positions), and falls back to
  // evaluate() when sharing would not run fewer tokens. Bases of another length are ignored.
  std::vector<Score> evaluate_edits(const std::vector<Seq>& seqs, const std::vector<Seq>& bases);

  // Beam extension with the prefixes' keys and values computed once: every (prefix, token) pair
  // costs one forward token. The prefixes all have the same length.
  std::vector<Score> extend(const std::vector<Seq>& prefixes, const std::vector<std::pair<int64_t, int32_t>>& ext);

  // d(surrogate - lambda_i * CE_i)/d(one-hot) for every sequence: [N,T,V] float (BOS dropped).
  // The surrogate is the pre-activation (TopK/JumpReLU latents have zero gradient while off).
  // lambdas: one per sequence, or empty for opt.fluency. Charges N * (T+1) tokens.
  torch::Tensor gradients(const std::vector<Seq>& seqs, const std::vector<double>& lambdas = {});

  bool valid(const Seq& s) const;     // decode -> encode gives s back
  std::string text(const Seq& s) const;
  Seq reencode(const std::string& text) const;  // encode without BOS
  Seq random_seq(int64_t len, std::mt19937_64& rng) const;  // a valid random sequence
  int32_t random_token(std::mt19937_64& rng) const;
  const std::vector<int32_t>& allowed() const { return allowed_; }
  torch::Tensor allowed_mask() const { return allowed_mask_; }  // [V] bool

  bool affordable(int64_t tokens) const { return used_ + tokens <= budget_; }
  int64_t used() const { return used_; }
  int64_t remaining() const { return budget_ - used_; }
  int64_t candidates() const { return candidates_; }
  int64_t vocab() const { return V_; }
  const VizOptions& options() const { return opt_; }
  bool need_ce() const { return need_ce_; }
  VizSequence finish(const Seq& s);  // exact re-score (not charged) into a result row

 private:
  // site [N,T,...] -> (exact act, pre-activation) [N,T] each
  std::pair<torch::Tensor, torch::Tensor> feature(const torch::Tensor& site) const;
  torch::Tensor run(const torch::Tensor& tokens, const torch::Tensor& embeds, KVCache* cache, bool logits,
                    torch::Tensor* logits_out) const;  // -> site [N,T,...]
  torch::Tensor tokens_of(const std::vector<Seq>& seqs) const;  // [N,T+1] with BOS
  // The shared-prefix evaluator behind evaluate_edits and extend: candidate i equals
  // bases[edits[i].base] (with BOS) on positions [0, edits[i].from), 1 <= from <= T.
  struct Edit {
    int64_t base;  // index into bases
    int64_t from;  // first position (BOS = 0) the candidate runs itself
  };
  std::vector<Score> score_edits(const std::vector<Seq>& bases, const std::vector<Seq>& seqs, const std::vector<Edit>& edits);
  std::vector<Score> scores_of(const torch::Tensor& act, const torch::Tensor& pre, const torch::Tensor& ce) const;

  const Model& model_;
  VizTarget target_;
  VizOptions opt_;
  bool need_ce_;
  int64_t layer_stop_;  // stop_at_layer that still runs the target site
  int32_t bos_;
  int64_t V_;
  int64_t budget_, used_ = 0, candidates_ = 0;
  std::vector<int32_t> allowed_;
  torch::Tensor allowed_mask_;
  // One hook set for every forward pass: it caches the target site, and is bound to the model
  // once instead of on each of the many small forward passes of evaluate_edits.
  mutable HookSet hooks_;
};

}  // namespace lumen::viz
