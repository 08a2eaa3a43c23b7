// The shared objective of feature visualization: target extraction, the batched candidate evaluator
// (with a shared-prefix path for edits and beam extensions), the one-hot token-gradient routine and
// validity.
#include "viz/objective.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "lumen/error.h"
#include "lumen/hooks.h"
#include "lumen/sae.h"

namespace lumen {

std::string VizTarget::describe() const {
  std::string what = sae ? hook + ".sae latent " + std::to_string(index)
                         : direction.defined() ? hook + " direction" : hook + " unit " + std::to_string(index);
  return what + (position == Position::Last ? " (last token)" : " (max over positions)");
}

namespace viz {

Objective::Objective(const Model& model, const VizTarget& target, const VizOptions& opt, bool need_ce)
    : model_(model), target_(target), opt_(opt), need_ce_(need_ce || opt.fluency > 0) {
  const Tokenizer& tok = model.require_tokenizer();
  auto hp = HookPoint::parse(target.hook);
  require(hp.has_value(), ErrorKind::Hook, "viz target '" + target.hook + "' is not a hook point (e.g. blocks.2.hook_resid_post)");
  const int64_t L = model.config().n_layers;
  require(hp->layer < L, ErrorKind::Hook, "viz target '" + target.hook + "': the model has " + std::to_string(L) + " layers");
  // The last block that must run for the site to exist (TransformerLens stop_at_layer semantics).
  if (hp->site == HookSite::ln_final) layer_stop_ = -1;
  else layer_stop_ = hp->is_global() ? 0 : hp->layer + 1;
  if (target.sae) {
    require(target.sae->config().hook_name == target.hook, ErrorKind::Sae,
            "viz: the SAE reads '" + target.sae->config().hook_name + "', the target is at '" + target.hook + "'");
    check_sae_fits(*target.sae, model);
    require(target.index >= 0 && target.index < target.sae->config().d_sae, ErrorKind::Arg,
            "viz: latent " + std::to_string(target.index) + " is outside the SAE's [0," +
                std::to_string(target.sae->config().d_sae) + ")");
  } else if (target.direction.defined()) {
    require(target.direction.dim() == 1, ErrorKind::Shape, "viz: the direction must be a vector [D]");
  } else {
    require(target.index >= 0, ErrorKind::Arg, "viz: a unit index >= 0 is needed without an SAE or direction");
  }
  require(opt.len >= 1 && opt.len + 1 <= model.config().n_ctx, ErrorKind::Arg,
          "viz: --len " + std::to_string(opt.len) + " must be in [1, n_ctx-1]");
  require(opt.batch >= 1, ErrorKind::Arg, "viz: batch must be >= 1");
  bos_ = tok.bos_id() >= 0 ? tok.bos_id() : model.config().eos_id;
  require(bos_ >= 0, ErrorKind::Tokenizer, "viz: the tokenizer has neither BOS nor EOS to start a sequence with");
  V_ = model.config().d_vocab;
  budget_ = opt.budget_tokens;
  // Control pieces (BOS, EOS, <unk>) decode to nothing and can never survive the round trip.
  const int32_t nv = std::min<int32_t>(tok.vocab_size(), static_cast<int32_t>(V_));
  allowed_mask_ = torch::zeros({V_}, torch::kBool);
  for (int32_t t = 0; t < nv; ++t) {
    if (t == tok.bos_id() || t == tok.eos_id() || tok.decode({t}).empty()) continue;
    allowed_.push_back(t);
    allowed_mask_[t] = true;
  }
  require(!allowed_.empty(), ErrorKind::Tokenizer, "viz: no token of the vocabulary decodes to text");
  hooks_.cache(target.hook);
}

torch::Tensor Objective::tokens_of(const std::vector<Seq>& seqs) const {
  const int64_t N = static_cast<int64_t>(seqs.size()), T = static_cast<int64_t>(seqs[0].size());
  auto t = torch::empty({N, T + 1}, torch::kLong);
  auto a = t.accessor<int64_t, 2>();
  for (int64_t n = 0; n < N; ++n) {
    require(static_cast<int64_t>(seqs[n].size()) == T, ErrorKind::Shape, "viz: a batch of sequences must share one length");
    a[n][0] = bos_;
    for (int64_t i = 0; i < T; ++i) a[n][i + 1] = seqs[n][i];
  }
  return t.to(model_.device());
}

torch::Tensor Objective::run(const torch::Tensor& tokens, const torch::Tensor& embeds, KVCache* cache, bool logits,
                             torch::Tensor* logits_out) const {
  RunOptions ro;
  ro.hooks = &hooks_;
  ro.cache = cache;
  ro.stop_at_layer = logits ? -1 : layer_stop_;  // the evaluation stops at the target layer
  if (embeds.defined()) ro.input_embeds = embeds;
  auto out = model_.forward(tokens, ro);
  if (logits_out) *logits_out = out;
  auto site = hooks_.get(target_.hook);
  hooks_.clear_cache();  // a cached site would otherwise be extended by the next cached run
  return site;
}

std::pair<torch::Tensor, torch::Tensor> Objective::feature(const torch::Tensor& site) const {
  torch::Tensor x = site;
  if (target_.sae) {
    const int64_t d_in = target_.sae->config().d_in;
    if (x.dim() == 4 && x.size(-1) != d_in) x = x.flatten(2);  // per-head sites: heads concatenated
    auto pre = target_.sae->pre_activation(x);                  // [N,T,S]
    auto act = target_.sae->activate(pre).select(-1, target_.index);
    return {act.to(torch::kFloat), pre.select(-1, target_.index).to(torch::kFloat)};
  }
  if (x.dim() == 4) x = x.flatten(2);
  torch::Tensor v;
  if (target_.direction.defined()) {
    require(target_.direction.size(0) == x.size(-1), ErrorKind::Shape,
            "viz: the direction has " + std::to_string(target_.direction.size(0)) + " entries, '" + target_.hook +
                "' is " + std::to_string(x.size(-1)) + " wide");
    v = torch::matmul(x.to(torch::kFloat), target_.direction.to(x.device(), torch::kFloat));
  } else {
    require(target_.index < x.size(-1), ErrorKind::Arg,
            "viz: unit " + std::to_string(target_.index) + " is outside '" + target_.hook + "' (width " +
                std::to_string(x.size(-1)) + ")");
    v = x.select(-1, target_.index).to(torch::kFloat);
  }
  return {v, v};
}

// The search score: the activation when it is on; below every "on" value, the pre-activation
// orders the "off" candidates so that a TopK latent that never fires still gives a direction.
static double search_score(bool has_sae, double act, double pre) {
  if (!has_sae || act > 0) return act;
  return std::tanh(pre) - 1.0;
}

std::vector<Score> Objective::scores_of(const torch::Tensor& act, const torch::Tensor& pre, const torch::Tensor& ce) const {
  auto a = act.to(torch::kCPU, torch::kFloat).contiguous(), p = pre.to(torch::kCPU, torch::kFloat).contiguous();
  torch::Tensor c = ce.defined() ? ce.to(torch::kCPU, torch::kFloat).contiguous() : ce;
  const float *ap = a.data_ptr<float>(), *pp = p.data_ptr<float>(), *cp = c.defined() ? c.data_ptr<float>() : nullptr;
  std::vector<Score> out(static_cast<size_t>(a.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].act = ap[i];
    out[i].search = search_score(target_.sae != nullptr, ap[i], pp[i]);
    out[i].ce = cp ? cp[i] : 0.0;
  }
  return out;
}

std::vector<Score> Objective::evaluate(const std::vector<Seq>& seqs_in, std::vector<std::vector<float>>* token_acts) {
  torch::NoGradGuard ng;
  std::vector<Score> out;
  if (seqs_in.empty()) return out;
  const int64_t T = static_cast<int64_t>(seqs_in[0].size());
  const int64_t afford = std::max<int64_t>(0, remaining() / (T + 1));
  const int64_t n_all = std::min<int64_t>(static_cast<int64_t>(seqs_in.size()), afford);
  for (int64_t s0 = 0; s0 < n_all; s0 += opt_.batch) {
    const int64_t n = std::min<int64_t>(opt_.batch, n_all - s0);
    std::vector<Seq> chunk(seqs_in.begin() + s0, seqs_in.begin() + s0 + n);
    auto tokens = tokens_of(chunk);  // [n,T+1]
    torch::Tensor logits;
    auto site = run(tokens, {}, nullptr, need_ce_, &logits);
    // A last-token target needs the SAE at one position only (13x less encoder work at len 12).
    const bool last_only = target_.position == VizTarget::Position::Last && !token_acts;
    auto [act, pre] = feature(last_only ? site.narrow(1, T, 1) : site);  // [n,T+1] (or [n,1])
    torch::Tensor a, p;
    if (last_only) {
      a = act.select(1, 0);
      p = pre.select(1, 0);
    } else if (target_.position == VizTarget::Position::Last) {
      a = act.select(1, T);
      p = pre.select(1, T);
    } else {
      a = std::get<0>(act.narrow(1, 1, T).max(1));
      p = std::get<0>(pre.narrow(1, 1, T).max(1));
    }
    torch::Tensor ce;
    if (need_ce_) {
      auto logp = torch::log_softmax(logits.narrow(1, 0, T).to(torch::kFloat), -1);  // [n,T,V]
      ce = -logp.gather(2, tokens.narrow(1, 1, T).unsqueeze(2)).squeeze(2).mean(1);
    }
    auto sc = scores_of(a, p, ce);
    out.insert(out.end(), sc.begin(), sc.end());
    if (token_acts) {
      auto ac = act.cpu().contiguous();
      for (int64_t i = 0; i < n; ++i) token_acts->emplace_back(ac[i].data_ptr<float>(), ac[i].data_ptr<float>() + T + 1);
    }
    used_ += n * (T + 1);
    candidates_ += n;
  }
  return out;
}

// Rows `rows` [n] of `src`'s first `length` positions as a new cache with src's capacity. Only the
// first `layers` layers are copied: the forward passes that read the copy run no further.
static KVCache cache_rows(const KVCache& src, const torch::Tensor& rows, int64_t length, int64_t layers) {
  KVCache kc;
  const int64_t n = rows.size(0);
  for (size_t l = 0; l < src.k.size(); ++l) {
    if (static_cast<int64_t>(l) >= std::max<int64_t>(1, layers)) {
      kc.k.emplace_back();
      kc.v.emplace_back();
      continue;
    }
    // Positions >= length stay uninitialised: a cached forward pass writes its own positions
    // before it reads them, and reads nothing beyond.
    for (auto [in, out] : {std::make_pair(&src.k[l], &kc.k), std::make_pair(&src.v[l], &kc.v)}) {
      auto sizes = in->sizes().vec();  // [B,K,capacity,E]
      sizes[0] = n;
      auto t = torch::empty(sizes, in->options());
      t.narrow(2, 0, length).copy_(in->narrow(2, 0, length).index_select(0, rows));
      out->push_back(t);
    }
  }
  kc.key_valid = torch::ones({n, src.capacity}, src.key_valid.options());
  kc.next_pos = torch::full({n}, length, src.next_pos.options());
  kc.length = length;
  kc.capacity = src.capacity;
  return kc;
}

std::vector<Score> Objective::score_edits(const std::vector<Seq>& bases, const std::vector<Seq>& seqs,
                                          const std::vector<Edit>& edits) {
  torch::NoGradGuard ng;
  if (seqs.empty()) return {};
  const int64_t T = static_cast<int64_t>(seqs[0].size());
  const auto dev = model_.device();
  // 1. The candidates the budget covers (in order) and the bases they use. The bases run positions
  //    [0, P) once, P being the latest first difference; each candidate runs its own T+1-from.
  std::vector<int64_t> row(bases.size(), -1), used_bases;
  int64_t P = 0, own = 0, n_all = 0;
  for (const Edit& e : edits) {
    const int64_t p = std::max(P, e.from);
    const int64_t nb = static_cast<int64_t>(used_bases.size()) + (row[e.base] < 0 ? 1 : 0);
    if (nb * p + own + (T + 1 - e.from) > remaining()) break;
    if (row[e.base] < 0) {
      row[e.base] = static_cast<int64_t>(used_bases.size());
      used_bases.push_back(e.base);
    }
    P = p;
    own += T + 1 - e.from;
    ++n_all;
  }
  if (n_all == 0) return {};

  // 2. The bases once, with a KV cache that has room for the candidates' T+1 positions; for the
  //    fluency term also the log-probabilities of their positions and the CE sums of their prefixes.
  const int64_t W = static_cast<int64_t>(used_bases.size());
  auto btoks = torch::empty({W, P}, torch::kLong);  // BOS + the base's first P-1 tokens
  {
    auto ba = btoks.accessor<int64_t, 2>();
    for (int64_t w = 0; w < W; ++w) {
      ba[w][0] = bos_;
      for (int64_t j = 1; j < P; ++j) ba[w][j] = bases[used_bases[w]][j - 1];
    }
  }
  btoks = btoks.to(dev);
  KVCache bc = model_.new_cache(W, T + 1);
  torch::Tensor blogits;
  auto bsite = run(btoks, {}, &bc, need_ce_, &blogits);
  used_ += W * P;
  torch::Tensor pmax_a, pmax_p;  // [W,P]: at index f-1, the max over positions [1, f) (-inf for f = 1)
  if (target_.position == VizTarget::Position::Max) {
    auto [a, p] = feature(bsite);
    a = a.clone();
    p = p.clone();
    a.select(1, 0).fill_(-std::numeric_limits<float>::infinity());
    p.select(1, 0).fill_(-std::numeric_limits<float>::infinity());
    pmax_a = std::get<0>(a.cummax(1));
    pmax_p = std::get<0>(p.cummax(1));
  }
  torch::Tensor blogp, ce_before;  // [W,P,V]; [W,P]: at index f-1, the CE terms of predictions 0..f-2
  if (need_ce_) {
    blogp = torch::log_softmax(blogits.to(torch::kFloat), -1);
    auto terms = -blogp.narrow(1, 0, P - 1).gather(2, btoks.narrow(1, 1, P - 1).unsqueeze(2)).squeeze(2);  // [W,P-1]
    ce_before = torch::cat({torch::zeros({W, 1}, terms.options()), terms.cumsum(1)}, 1);
  }

  // 3. The candidates grouped by their first difference, in chunks of opt.batch: positions
  //    [from, T] on a copy of their base's cache rows.
  std::map<int64_t, std::vector<int64_t>> groups;
  for (int64_t i = 0; i < n_all; ++i) groups[edits[i].from].push_back(i);
  const int64_t n_layers = model_.config().n_layers;
  const int64_t layers_run = need_ce_ || layer_stop_ < 0 ? n_layers : layer_stop_;
  std::vector<Score> out(static_cast<size_t>(n_all));
  for (const auto& [from, idx] : groups) {
    const int64_t S = T + 1 - from;
    for (size_t c0 = 0; c0 < idx.size(); c0 += static_cast<size_t>(opt_.batch)) {
      const int64_t n = std::min<int64_t>(opt_.batch, static_cast<int64_t>(idx.size() - c0));
      auto rows = torch::empty({n}, torch::kLong);
      auto toks = torch::empty({n, S}, torch::kLong);  // positions [from, T]
      int64_t *rp = rows.data_ptr<int64_t>(), *tp = toks.data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = idx[c0 + i];
        rp[i] = row[edits[c].base];
        require(static_cast<int64_t>(seqs[c].size()) == T, ErrorKind::Shape, "viz: a batch of sequences must share one length");
        for (int64_t j = 0; j < S; ++j) tp[i * S + j] = seqs[c][from - 1 + j];
      }
      rows = rows.to(dev);
      toks = toks.to(dev);
      KVCache kc = cache_rows(bc, rows, from, layers_run);
      torch::Tensor logits;
      auto site = run(toks, {}, &kc, need_ce_ && S > 1, &logits);  // [n,S,...]
      torch::Tensor a, p;
      if (target_.position == VizTarget::Position::Last) {
        auto [fa, fp] = feature(site.narrow(1, S - 1, 1));
        a = fa.select(1, 0);
        p = fp.select(1, 0);
      } else {
        auto [fa, fp] = feature(site);
        a = torch::maximum(std::get<0>(fa.max(1)), pmax_a.select(1, from - 1).index_select(0, rows));
        p = torch::maximum(std::get<0>(fp.max(1)), pmax_p.select(1, from - 1).index_select(0, rows));
      }
      torch::Tensor ce;
      if (need_ce_) {
        // Predictions 0..from-2 are the base's; from-1 is the base's distribution at the candidate's
        // token; from..T-1 come from this run.
        auto first = blogp.select(1, from - 1).index_select(0, rows).gather(1, toks.narrow(1, 0, 1)).squeeze(1);
        ce = ce_before.select(1, from - 1).index_select(0, rows) - first;
        if (S > 1) {
          auto logp = torch::log_softmax(logits.narrow(1, 0, S - 1).to(torch::kFloat), -1);  // [n,S-1,V]
          ce = ce - logp.gather(2, toks.narrow(1, 1, S - 1).unsqueeze(2)).squeeze(2).sum(1);
        }
        ce = ce / static_cast<double>(T);
      }
      auto sc = scores_of(a, p, ce);
      for (int64_t i = 0; i < n; ++i) out[idx[c0 + i]] = sc[i];
      used_ += n * S;
      candidates_ += n;
    }
  }
  return out;
}

std::vector<Score> Objective::evaluate_edits(const std::vector<Seq>& seqs, const std::vector<Seq>& bases) {
  if (seqs.empty()) return {};
  const int64_t T = static_cast<int64_t>(seqs[0].size());
  // Each candidate's base: the one it shares the longest prefix with. A candidate equal to its base
  // still runs its last position (from = T), which gives its score.
  std::vector<Edit> edits;
  edits.reserve(seqs.size());
  std::vector<char> used(bases.size(), 0);
  int64_t P = 0, own = 0, n_used = 0;
  for (const Seq& s : seqs) {
    require(static_cast<int64_t>(s.size()) == T, ErrorKind::Shape, "viz: a batch of sequences must share one length");
    Edit e{-1, 0};
    for (size_t b = 0; b < bases.size(); ++b) {
      if (static_cast<int64_t>(bases[b].size()) != T) continue;
      const int64_t common = std::mismatch(s.begin(), s.end(), bases[b].begin()).first - s.begin();
      const int64_t from = std::min(common + 1, T);
      if (from > e.from) e = {static_cast<int64_t>(b), from};
    }
    if (e.base < 0) return evaluate(seqs);  // no base of this length
    n_used += used[e.base] ? 0 : 1;
    used[e.base] = 1;
    P = std::max(P, e.from);
    own += T + 1 - e.from;
    edits.push_back(e);
  }
  const int64_t n = static_cast<int64_t>(seqs.size());
  if (n_used * P + own >= n * (T + 1)) return evaluate(seqs);
  return score_edits(bases, seqs, edits);
}

std::vector<Score> Objective::extend(const std::vector<Seq>& prefixes, const std::vector<std::pair<int64_t, int32_t>>& ext) {
  if (ext.empty()) return {};
  // Candidate (w, tok) is prefix w + tok: it shares the prefix's t+1 positions (BOS included) and
  // runs one of its own.
  const int64_t t = static_cast<int64_t>(prefixes[0].size());
  std::vector<Seq> seqs;
  std::vector<Edit> edits;
  seqs.reserve(ext.size());
  for (const auto& [w, tok] : ext) {
    seqs.push_back(prefixes[w]);
    seqs.back().push_back(tok);
    edits.push_back({w, t + 1});
  }
  return score_edits(prefixes, seqs, edits);
}

torch::Tensor Objective::gradients(const std::vector<Seq>& seqs, const std::vector<double>& lambdas) {
  torch::AutoGradMode grad_on(true);
  const int64_t N = static_cast<int64_t>(seqs.size()), T = static_cast<int64_t>(seqs[0].size());
  auto tokens = tokens_of(seqs);  // [N,T+1]
  auto lam = torch::full({N}, opt_.fluency, torch::kFloat);
  for (size_t i = 0; i < lambdas.size() && i < static_cast<size_t>(N); ++i) lam[i] = lambdas[i];
  const bool with_ce = lam.gt(0).any().item<bool>();
  auto one_hot = torch::zeros({N, T + 1, V_}, torch::TensorOptions().dtype(torch::kFloat).device(model_.device()));
  one_hot.scatter_(2, tokens.unsqueeze(2), 1.0);
  one_hot.requires_grad_(true);
  auto embeds = model_.embed_one_hot(one_hot);  // [N,T+1,D], differentiable in the one-hot
  torch::Tensor logits;
  auto site = run(tokens, embeds, nullptr, with_ce, &logits);
  auto pre = feature(site).second;  // [N,T+1]
  torch::Tensor obj = target_.position == VizTarget::Position::Last ? pre.select(1, T)
                                                                    : std::get<0>(pre.narrow(1, 1, T).max(1));
  if (with_ce) {
    auto logp = torch::log_softmax(logits.narrow(1, 0, T).to(torch::kFloat), -1);
    auto ce = -logp.gather(2, tokens.narrow(1, 1, T).unsqueeze(2)).squeeze(2).mean(1);
    obj = obj - lam.to(obj.device()) * ce;
  }
  obj.sum().backward();
  used_ += N * (T + 1);
  return one_hot.grad().narrow(1, 1, T).to(torch::kCPU, torch::kFloat);  // [N,T,V]
}

bool Objective::valid(const Seq& s) const {
  const Tokenizer& tok = *model_.tokenizer();
  return tok.encode(tok.decode(s), false) == s;
}

std::string Objective::text(const Seq& s) const { return model_.tokenizer()->decode(s); }

Seq Objective::reencode(const std::string& t) const { return model_.tokenizer()->encode(t, false); }

int32_t Objective::random_token(std::mt19937_64& rng) const {
  return allowed_[std::uniform_int_distribution<size_t>(0, allowed_.size() - 1)(rng)];
}

Seq Objective::random_seq(int64_t len, std::mt19937_64& rng) const {
  // Left to right, each token kept only when the prefix still survives the round trip.
  Seq best;
  for (int attempt = 0; attempt < 20; ++attempt) {
    Seq s;
    for (int64_t i = 0; i < len; ++i) {
      int32_t pick = random_token(rng);
      for (int tries = 0; tries < 64; ++tries) {
        s.push_back(pick);
        const bool ok = valid(s);
        s.pop_back();
        if (ok) break;
        pick = random_token(rng);
      }
      s.push_back(pick);
    }
    if (valid(s)) return s;
    best = s;
  }
  return best;
}

VizSequence Objective::finish(const Seq& s) {
  VizSequence v;
  v.ids.push_back(bos_);
  v.ids.insert(v.ids.end(), s.begin(), s.end());
  v.text = text(s);
  v.valid = valid(s);
  // Re-scored with the full forward pass (not charged to the budget): exact activation and CE.
  const bool saved_ce = need_ce_;
  const int64_t saved_budget = budget_, saved_used = used_, saved_cand = candidates_;
  need_ce_ = true;
  budget_ = std::numeric_limits<int64_t>::max() / 2;
  used_ = 0;
  std::vector<std::vector<float>> ta;
  auto sc = evaluate({s}, &ta);
  need_ce_ = saved_ce;
  budget_ = saved_budget;
  used_ = saved_used;
  candidates_ = saved_cand;
  v.activation = sc[0].act;
  v.ce = sc[0].ce;
  v.objective = sc[0].act - opt_.fluency * sc[0].ce;
  v.token_acts = ta[0];
  return v;
}

}  // namespace viz

std::vector<VizSequence> score_sequences(const Model& model, const VizTarget& target,
                                         const std::vector<std::vector<int32_t>>& ids, double fluency) {
  VizOptions o;
  o.fluency = fluency;
  std::vector<VizSequence> out;
  const int32_t bos = model.require_tokenizer().bos_id() >= 0 ? model.require_tokenizer().bos_id() : model.config().eos_id;
  for (const auto& row : ids) {
    viz::Seq s(row.begin() + (!row.empty() && row[0] == bos ? 1 : 0), row.end());
    require(!s.empty(), ErrorKind::Arg, "viz: an empty sequence cannot be scored");
    o.len = static_cast<int64_t>(s.size());
    viz::Objective obj(model, target, o, true);
    out.push_back(obj.finish(s));
  }
  return out;
}

}  // namespace lumen
