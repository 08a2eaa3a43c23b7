// The shared objective of feature visualization: target extraction, the batched candidate evaluator
// (with a shared-prefix path for beam search), the one-hot token-gradient routine and validity.
#include "viz/objective.h"

#include <algorithm>
#include <cmath>
#include <limits>

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
  HookSet hooks;
  hooks.cache(target_.hook);
  RunOptions ro;
  ro.hooks = &hooks;
  ro.cache = cache;
  ro.stop_at_layer = logits ? -1 : layer_stop_;  // the evaluation stops at the target layer
  if (embeds.defined()) ro.input_embeds = embeds;
  auto out = model_.forward(tokens, ro);
  if (logits_out) *logits_out = out;
  return hooks.get(target_.hook);
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
      ce = -logp.gather(2, tokens.narrow(1, 1, T).unsqueeze(2)).squeeze(2).mean(1).cpu();
    }
    a = a.cpu().contiguous();
    p = p.cpu().contiguous();
    const float *ap = a.data_ptr<float>(), *pp = p.data_ptr<float>();
    const float* cp = need_ce_ ? (ce = ce.contiguous()).data_ptr<float>() : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      Score sc;
      sc.act = ap[i];
      sc.search = search_score(target_.sae != nullptr, sc.act, pp[i]);
      sc.ce = cp ? cp[i] : 0.0;
      out.push_back(sc);
    }
    if (token_acts) {
      auto ac = act.cpu().contiguous();
      for (int64_t i = 0; i < n; ++i) token_acts->emplace_back(ac[i].data_ptr<float>(), ac[i].data_ptr<float>() + T + 1);
    }
    used_ += n * (T + 1);
    candidates_ += n;
  }
  return out;
}

std::vector<Score> Objective::extend(const std::vector<Seq>& prefixes, const std::vector<std::pair<int64_t, int32_t>>& ext_in) {
  torch::NoGradGuard ng;
  std::vector<Score> out;
  const int64_t W = static_cast<int64_t>(prefixes.size()), t = static_cast<int64_t>(prefixes[0].size());
  if (ext_in.empty() || !affordable(W * (t + 1) + 1)) return out;
  // 1. The prefixes once: keys/values for every layer that runs, and for the fluency term the
  //    next-token log-probabilities at their last position.
  std::vector<Seq> pre_seqs = prefixes;
  torch::Tensor ptoks;
  if (t == 0) ptoks = torch::full({W, 1}, bos_, torch::kLong).to(model_.device());
  else ptoks = tokens_of(pre_seqs);
  KVCache pc = model_.new_cache(W, t + 2);
  torch::Tensor logits;
  auto psite = run(ptoks, {}, &pc, need_ce_, &logits);
  used_ += W * (t + 1);
  auto [pact, ppre] = feature(psite);  // [W,t+1]
  torch::Tensor pmax_a, pmax_p, ce_sum, last_logp;
  if (t > 0) {
    pmax_a = std::get<0>(pact.narrow(1, 1, t).max(1));
    pmax_p = std::get<0>(ppre.narrow(1, 1, t).max(1));
  } else {
    pmax_a = torch::full({W}, -std::numeric_limits<float>::infinity());
    pmax_p = pmax_a.clone();
  }
  if (need_ce_) {
    auto logp = torch::log_softmax(logits.to(torch::kFloat), -1);  // [W,t+1,V]
    ce_sum = t > 0 ? -logp.narrow(1, 0, t).gather(2, ptoks.narrow(1, 1, t).unsqueeze(2)).squeeze(2).sum(1)
                   : torch::zeros({W});
    last_logp = logp.select(1, t);  // [W,V]
  }
  pmax_a = pmax_a.to(torch::kCPU, torch::kFloat).contiguous();
  pmax_p = pmax_p.to(torch::kCPU, torch::kFloat).contiguous();
  const float *pma = pmax_a.data_ptr<float>(), *pmp = pmax_p.data_ptr<float>();

  // 2. Every (prefix, token) pair as one new token on a copy of its prefix's cache rows.
  const int64_t n_all = std::min<int64_t>(static_cast<int64_t>(ext_in.size()), remaining());
  for (int64_t s0 = 0; s0 < n_all; s0 += opt_.batch) {
    const int64_t n = std::min<int64_t>(opt_.batch, n_all - s0);
    auto rows = torch::empty({n}, torch::kLong);
    auto toks = torch::empty({n, 1}, torch::kLong);
    int64_t *rp = rows.data_ptr<int64_t>(), *tp = toks.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      rp[i] = ext_in[s0 + i].first;
      tp[i] = ext_in[s0 + i].second;
    }
    rows = rows.to(model_.device());
    KVCache kc;
    for (size_t l = 0; l < pc.k.size(); ++l) {
      kc.k.push_back(pc.k[l].index_select(0, rows));
      kc.v.push_back(pc.v[l].index_select(0, rows));
    }
    kc.key_valid = pc.key_valid.index_select(0, rows);
    kc.next_pos = pc.next_pos.index_select(0, rows);
    kc.length = pc.length;
    kc.capacity = pc.capacity;
    auto site = run(toks.to(model_.device()), {}, &kc, false, nullptr);
    auto [act, pre] = feature(site);  // [n,1]
    auto a = act.select(1, 0).cpu().contiguous(), p = pre.select(1, 0).cpu().contiguous();
    torch::Tensor ce;
    if (need_ce_) {
      auto picked = last_logp.index_select(0, rows).gather(1, toks.to(model_.device())).squeeze(1);
      ce = ((ce_sum.index_select(0, rows) - picked) / static_cast<double>(t + 1)).cpu().contiguous();
    }
    const float *ap = a.data_ptr<float>(), *pp = p.data_ptr<float>(), *cp = need_ce_ ? ce.data_ptr<float>() : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t w = ext_in[s0 + i].first;
      double av = ap[i], pv = pp[i];
      if (target_.position == VizTarget::Position::Max) {
        av = std::max<double>(av, pma[w]);
        pv = std::max<double>(pv, pmp[w]);
      }
      Score sc;
      sc.act = av;
      sc.search = search_score(target_.sae != nullptr, av, pv);
      sc.ce = cp ? cp[i] : 0.0;
      out.push_back(sc);
    }
    used_ += n;
    candidates_ += n;
  }
  return out;
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
