// Sparse feature circuits (Marks et al. 2024): node effects of SAE latents and error terms by
// attribution patching (eq. 2) or integrated gradients (eq. 3), a sample of exact patches to check
// them, edges (eq. 4-5) between consecutive sites, and faithfulness/completeness by mean ablation.
//
// Every batch runs as 2N rows (clean answer, patch answer) over the same prefixes. A node lives at
// a prefix position and has one value per pair, so its gradient is the sum over the pair's two rows,
// and patching or ablating it writes both rows. BOS and the answer positions are never nodes.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <set>
#include <tuple>

#include "circuits/internal.h"
#include "lumen/circuits.h"
#include "lumen/error.h"

namespace lumen {
namespace {

using circuits::Rows;
namespace F = torch::indexing;

struct Site {
  const Sae* sae = nullptr;
  std::string hook, acts, err;
  int64_t layer = 0, S = 0, D = 0;
};

// A node: site s, slot p (right-aligned position, or 0 when summed), index j (j == S: the error).
struct NodeKey {
  int64_t s = 0, p = 0, j = 0;
  bool operator<(const NodeKey& o) const { return std::tie(s, p, j) < std::tie(o.s, o.p, o.j); }
};

struct Batch {
  std::vector<const SvaExample*> ex;
  Rows clean, patch;
  at::Tensor tok_clean, tok_patch;  // on the model's device
};

class Attributor {
 public:
  Attributor(const Model& model, const std::vector<Sae>& saes, const SvaData& data, const CircuitOptions& opt)
      : model_(model), opt_(opt) {
    require(!saes.empty(), ErrorKind::Arg, "circuit: give at least one SAE (--sae)");
    require(!data.examples.empty(), ErrorKind::Arg, "circuit: no agreement examples (all pairs dropped for length mismatch?)");
    for (const auto& sae : saes) {
      check_sae_fits(sae, model);
      Site st;
      st.sae = &sae;
      st.hook = sae.config().hook_name;
      st.acts = sae_hook_acts(st.hook);
      st.err = sae_hook_error(st.hook);
      st.layer = HookPoint::parse(st.hook)->layer;
      st.S = sae.config().d_sae;
      st.D = sae.config().d_in;
      sites_.push_back(st);
    }
    // Forward order; two SAEs on one hook cannot both splice.
    std::stable_sort(sites_.begin(), sites_.end(), [](const Site& a, const Site& b) {
      return HookPoint::parse(a.hook)->index() < HookPoint::parse(b.hook)->index();
    });
    for (size_t i = 1; i < sites_.size(); ++i)
      require(sites_[i].hook != sites_[i - 1].hook, ErrorKind::Arg, "circuit: two SAEs at " + sites_[i].hook);
    nw_ = new_word_mask(model).to(model.device());
    const auto& tok = model.require_tokenizer();
    t0_ = tok.adds_bos_by_default() && tok.bos_id() >= 0 ? 1 : 0;
    for (const auto& e : data.examples) tmax_ = std::max<int64_t>(tmax_, e.clean.size());
    P_ = opt.keep_positions ? tmax_ : 1;
    for (auto& b : circuits::batches_by_length(data, opt.batch, -1)) {
      Batch bt;
      bt.ex = b;
      bt.clean = circuits::build_rows(b, false, circuits::pad_id(model));
      bt.patch = circuits::build_rows(b, true, circuits::pad_id(model));
      bt.tok_clean = bt.clean.tokens.to(model.device());
      bt.tok_patch = bt.patch.tokens.to(model.device());
      batches_.push_back(std::move(bt));
      n_ += static_cast<int64_t>(b.size());
    }
    for (const auto& st : sites_) {
      eff_.push_back(torch::zeros({P_, st.S + 1}, torch::kDouble));
      first_eff_.push_back(torch::zeros({P_, st.S + 1}, torch::kDouble));
      act_.push_back(torch::zeros({P_, st.S + 1}, torch::kDouble));
      mean_f_.push_back(torch::zeros({tmax_, st.S}, torch::kDouble));
      mean_e_.push_back(torch::zeros({tmax_, st.D}, torch::kDouble));
    }
    act_count_ = torch::zeros({P_}, torch::kDouble);
    mean_count_ = torch::zeros({tmax_}, torch::kDouble);
  }

  CircuitResult run() {
    const auto t_start = std::chrono::steady_clock::now();
    CircuitResult res;
    res.method = opt_.method == AttributionMethod::IG ? "ig" : "atp";
    res.examples = n_;
    // 1. Node effects, activations and means, batch by batch.
    double mc = 0, mp = 0;
    int64_t right = 0;
    for (size_t bi = 0; bi < batches_.size(); ++bi) {
      auto& b = batches_[bi];
      log("attribution (" + res.method + "): batch " + std::to_string(bi + 1) + "/" + std::to_string(batches_.size()));
      Values patch = values(b, true, false);
      Values clean = values(b, false, opt_.method == AttributionMethod::AtP);
      right += (clean.m < 0).sum().item<int64_t>() + (patch.m > 0).sum().item<int64_t>();
      mc += clean.m.sum().item<double>();
      mp += patch.m.sum().item<double>();
      accumulate_stats(b, clean, patch);
      std::vector<at::Tensor> ef, ee;  // per site [n,T,S], [n,T]
      if (opt_.method == AttributionMethod::AtP) {
        for (size_t s = 0; s < sites_.size(); ++s) {
          ef.push_back(clean.gf[s] * (patch.f[s] - clean.f[s]));
          ee.push_back((clean.ge[s] * (patch.e[s] - clean.e[s])).sum(-1));
        }
      } else {
        for (size_t s = 0; s < sites_.size(); ++s) {
          auto [gf, ge] = ig_grads(b, s, clean, patch);
          ef.push_back(gf * (patch.f[s] - clean.f[s]));
          ee.push_back((ge * (patch.e[s] - clean.e[s])).sum(-1));
        }
      }
      for (size_t s = 0; s < sites_.size(); ++s) {
        auto add = slotted(b.clean.T, ef[s], ee[s]);
        eff_[s] += add;
        if (bi == 0) first_eff_[s] += add;
      }
    }
    res.accuracy = static_cast<double>(right) / (2.0 * n_);
    res.m_clean = mc / n_;
    res.m_patch = mp / n_;
    for (size_t s = 0; s < sites_.size(); ++s) {
      mean_f_[s] /= mean_count_.clamp_min(1).unsqueeze(1);
      mean_e_[s] /= mean_count_.clamp_min(1).unsqueeze(1);
      act_[s] /= act_count_.clamp_min(1).unsqueeze(1);
      eff_[s] /= static_cast<double>(n_);
    }

    // 2. Rank every candidate node by |mean effect|.
    std::vector<std::pair<double, NodeKey>> ranked;
    for (size_t s = 0; s < sites_.size(); ++s) {
      res.total_nodes += P_ * (sites_[s].S + 1);
      auto acc = eff_[s].accessor<double, 2>();
      for (int64_t p = 0; p < P_; ++p)
        for (int64_t j = 0; j <= sites_[s].S; ++j)
          ranked.push_back({std::fabs(acc[p][j]), {static_cast<int64_t>(s), p, j}});  // zeros too: threshold 0 = all
    }
    std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t i = 0; i < ranked.size() && i < 200 && ranked[i].first > 0; ++i) res.top_nodes.push_back(make_node(ranked[i].second));

    // 3. Exact patches on the first batch against that batch's estimates.
    if (opt_.exact_nodes > 0 && !ranked.empty()) exact_check(ranked, res);

    // 4. Faithfulness and completeness over node thresholds.
    log("faithfulness: m(M) and m(empty)");
    const double m_full = ablated_metric({}, false);   // nothing ablated
    const double m_empty = ablated_metric({}, true);   // everything ablated
    res.m_empty = m_empty;
    std::vector<double> thresholds = opt_.sweep;
    if (thresholds.empty()) {
      for (int64_t k : {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000})
        if (k <= static_cast<int64_t>(ranked.size())) thresholds.push_back(ranked[k - 1].first);
    }
    thresholds.push_back(opt_.node_threshold);
    std::sort(thresholds.begin(), thresholds.end(), std::greater<double>());
    thresholds.erase(std::unique(thresholds.begin(), thresholds.end()), thresholds.end());
    const double denom = m_full - m_empty;
    for (double th : thresholds) {
      std::set<NodeKey> c;
      for (auto& r : ranked)
        if (r.first >= th) c.insert(r.second);
      log("faithfulness: threshold " + std::to_string(th) + " (" + std::to_string(c.size()) + " nodes)");
      FaithfulnessPoint fp;
      fp.node_threshold = th;
      fp.n_nodes = static_cast<int64_t>(c.size());
      fp.faithfulness = (ablated_metric(c, true) - m_empty) / denom;
      fp.completeness = (ablated_metric(c, false) - m_empty) / denom;
      res.curve.push_back(fp);
      if (th == opt_.node_threshold) {
        res.faithfulness = fp.faithfulness;
        res.completeness = fp.completeness;
      }
    }
    std::sort(res.curve.begin(), res.curve.end(), [](const auto& a, const auto& b) { return a.n_nodes < b.n_nodes; });

    // 5. The circuit and its edges.
    res.threshold = opt_.node_threshold;
    std::vector<NodeKey> circuit;
    std::map<NodeKey, int64_t> index;
    for (auto& r : ranked)
      if (r.first >= opt_.node_threshold && r.first > 0) {
        index[r.second] = static_cast<int64_t>(res.nodes.size());
        res.nodes.push_back(make_node(r.second));
        circuit.push_back(r.second);
      }
    edges(circuit, index, res);
    CircuitNode out;
    out.id = "metric";
    out.kind = "output";
    out.layer = model_.config().n_layers;
    out.site = "logits";
    out.effect = res.m_clean;
    out.activation = res.m_clean;
    out.label = "m = score(patch) - score(clean)";
    const int64_t out_i = static_cast<int64_t>(res.nodes.size());
    res.nodes.push_back(out);
    // The last site feeds the output directly: its edges are its effects.
    for (auto& k : circuit)
      if (k.s == static_cast<int64_t>(sites_.size()) - 1) res.links.push_back({index[k], out_i, eff_[k.s][k.p][k.j].item<double>()});
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    return res;
  }

 private:
  // Node values (pairs' rows 2i, prefix positions) and, with grad, d(sum m)/d(node) summed over both rows.
  struct Values {
    std::vector<at::Tensor> f, e;    // [n,T,S], [n,T,D]
    std::vector<at::Tensor> gf, ge;  // same, only with grad
    at::Tensor m;                    // [n] CPU
  };

  void attach_all(HookSet& h) const {
    for (const auto& st : sites_) attach(h, *st.sae, SpliceMode::WithError);
  }

  static at::Tensor prefix_rows(const at::Tensor& x, int64_t T) {  // [2n,L,W] -> [n,T,W] (rows 2i)
    return x.index({F::Slice(F::None, F::None, 2), F::Slice(F::None, T)});
  }
  static at::Tensor pair_sum(const at::Tensor& g, int64_t T) {  // gradient of a shared node
    return g.index({F::Slice(F::None, F::None, 2), F::Slice(F::None, T)}) +
           g.index({F::Slice(1, F::None, 2), F::Slice(F::None, T)});
  }

  Values values(const Batch& b, bool patch, bool grad) {
    const Rows& r = patch ? b.patch : b.clean;
    HookSet h;
    attach_all(h);
    std::string pats;
    for (const auto& st : sites_) pats += (pats.empty() ? "" : ",") + st.acts + "," + st.err;
    Values v;
    if (grad) {
      torch::AutoGradMode on(true);
      h.watch(pats);
      const auto m = circuits::word_metric(circuits::forward_with(model_, patch ? b.tok_patch : b.tok_clean, h), r, nw_);
      auto g = h.gradients(m.sum());
      for (const auto& st : sites_) {
        v.gf.push_back(pair_sum(g.at(st.acts), r.T).detach().to(torch::kFloat));
        v.ge.push_back(pair_sum(g.at(st.err), r.T).detach().to(torch::kFloat));
      }
      v.m = m.detach().cpu();
    } else {
      torch::NoGradGuard ng;
      h.cache(pats);
      v.m = circuits::word_metric(circuits::forward_with(model_, patch ? b.tok_patch : b.tok_clean, h), r, nw_).cpu();
    }
    for (const auto& st : sites_) {
      v.f.push_back(prefix_rows(h.get(st.acts), r.T).detach().to(torch::kFloat));
      v.e.push_back(prefix_rows(h.get(st.err), r.T).detach().to(torch::kFloat));
    }
    return v;
  }

  // Integrated gradients at one site (Marks et al. eq. 3): the site's latents and error follow the
  // straight line from clean to patch, every other site runs as it would; the mean gradient over
  // the path (midpoint rule, opt.ig_steps points, all in one batch) times the difference.
  std::pair<at::Tensor, at::Tensor> ig_grads(const Batch& b, size_t s, const Values& c, const Values& p) {
    const int64_t K = opt_.ig_steps, n = b.clean.n, T = b.clean.T;
    require(K >= 1, ErrorKind::Arg, "circuit: --steps must be >= 1");
    torch::AutoGradMode on(true);
    const auto alpha = (torch::arange(K, c.f[s].options()) + 0.5) / static_cast<double>(K);
    const auto a4 = alpha.view({K, 1, 1, 1});
    auto lf = (c.f[s].unsqueeze(0) + a4 * (p.f[s] - c.f[s]).unsqueeze(0)).detach().requires_grad_(true);  // [K,n,T,S]
    auto le = (c.e[s].unsqueeze(0) + a4 * (p.e[s] - c.e[s]).unsqueeze(0)).detach().requires_grad_(true);  // [K,n,T,D]
    auto splice = [K, n, T](const at::Tensor& leaf) {
      return [leaf, K, n, T](const at::Tensor& x, const HookContext&) -> at::Tensor {
        // Both rows of a pair read the same leaf, so its gradient sums over them.
        auto pre = leaf.unsqueeze(2).expand({K, n, 2, T, leaf.size(-1)}).reshape({K * 2 * n, T, leaf.size(-1)});
        pre = pre.to(x.scalar_type());
        return x.size(1) > T ? torch::cat({pre, x.index({F::Slice(), F::Slice(T, F::None)})}, 1) : pre;
      };
    };
    HookSet h;
    attach_all(h);
    h.hook(sites_[s].acts, splice(lf));
    h.hook(sites_[s].err, splice(le));
    Rows rk = b.clean;
    rk.n = K * n;
    rk.answers.clear();
    for (int64_t k = 0; k < K; ++k) rk.answers.insert(rk.answers.end(), b.clean.answers.begin(), b.clean.answers.end());
    const auto m = circuits::word_metric(circuits::forward_with(model_, b.tok_clean.repeat({K, 1}), h), rk, nw_);
    auto g = torch::autograd::grad({m.sum()}, {lf, le}, {}, false, false, true);
    auto gf = g[0].defined() ? g[0].mean(0) : torch::zeros_like(c.f[s]);
    auto ge = g[1].defined() ? g[1].mean(0) : torch::zeros_like(c.e[s]);
    return {gf.detach(), ge.detach()};
  }

  // Per-pair, per-position effects [n,T,S] and [n,T] -> summed over pairs into slots [P, S+1].
  at::Tensor slotted(int64_t T, const at::Tensor& ef, const at::Tensor& ee) const {
    auto x = torch::cat({ef, ee.unsqueeze(-1)}, -1).sum(0).to(torch::kCPU, torch::kDouble);  // [T,S+1]
    x.index_put_({F::Slice(F::None, t0_)}, 0.0);
    if (!opt_.keep_positions) return x.sum(0, true);
    auto out = torch::zeros({P_, x.size(1)}, torch::kDouble);
    out.index_put_({F::Slice(tmax_ - T, F::None)}, x);
    return out;
  }
  int64_t slot_of(int64_t T, int64_t t) const { return opt_.keep_positions ? tmax_ - T + t : 0; }

  void accumulate_stats(const Batch& b, const Values& c, const Values& p) {
    const int64_t T = b.clean.T, n = b.clean.n;
    for (size_t s = 0; s < sites_.size(); ++s) {
      auto sl = F::Slice(tmax_ - T, F::None);
      mean_f_[s].index_put_({sl}, mean_f_[s].index({sl}) + (c.f[s] + p.f[s]).sum(0).to(torch::kCPU, torch::kDouble));
      mean_e_[s].index_put_({sl}, mean_e_[s].index({sl}) + (c.e[s] + p.e[s]).sum(0).to(torch::kCPU, torch::kDouble));
      auto a = torch::cat({c.f[s], c.e[s].norm(2, -1, true)}, -1).sum(0).to(torch::kCPU, torch::kDouble);  // [T,S+1]
      a.index_put_({F::Slice(F::None, t0_)}, 0.0);
      if (opt_.keep_positions)
        act_[s].index_put_({sl}, act_[s].index({sl}) + a);
      else
        act_[s] += a.sum(0, true);
    }
    mean_count_.index_put_({F::Slice(tmax_ - T, F::None)}, mean_count_.index({F::Slice(tmax_ - T, F::None)}) + 2.0 * n);
    if (opt_.keep_positions)
      act_count_.index_put_({F::Slice(tmax_ - T + t0_, F::None)}, act_count_.index({F::Slice(tmax_ - T + t0_, F::None)}) + n);
    else
      act_count_ += static_cast<double>(n * (T - t0_));
  }

  // Mean m over every pair with the nodes outside `nodes` (keep_inside) or inside it (!keep_inside)
  // replaced by their dataset means. keep_inside with an empty set ablates everything; !keep_inside
  // with an empty set ablates nothing.
  double ablated_metric(const std::set<NodeKey>& nodes, bool keep_inside) {
    torch::NoGradGuard ng;
    double total = 0;
    for (const auto& b : batches_) {
      const int64_t T = b.clean.T, L = b.clean.L;
      HookSet h;
      attach_all(h);
      for (size_t s = 0; s < sites_.size(); ++s) {
        const int64_t S = sites_[s].S;
        auto keep = torch::ones({L, S + 1}, torch::kBool);  // true: leave as computed
        auto ka = keep.accessor<bool, 2>();
        for (int64_t t = t0_; t < T; ++t)
          for (int64_t j = 0; j <= S; ++j) {
            const bool in = nodes.count({static_cast<int64_t>(s), slot_of(T, t), j}) > 0;
            ka[t][j] = keep_inside ? in : !in;
          }
        auto mf = torch::zeros({L, S}, torch::kFloat), me = torch::zeros({L, sites_[s].D}, torch::kFloat);
        mf.index_put_({F::Slice(F::None, T)}, mean_f_[s].index({F::Slice(tmax_ - T, F::None)}).to(torch::kFloat));
        me.index_put_({F::Slice(F::None, T)}, mean_e_[s].index({F::Slice(tmax_ - T, F::None)}).to(torch::kFloat));
        override_site(h, s, keep.index({F::Slice(), F::Slice(F::None, S)}), mf, keep.index({F::Slice(), F::Slice(S, S + 1)}), me);
      }
      total += circuits::word_metric(circuits::forward_with(model_, b.tok_clean, h), b.clean, nw_).sum().item<double>();
    }
    return total / n_;
  }

  // Where keep is false, the site's latents (errors) take the replacement's value.
  void override_site(HookSet& h, size_t s, const at::Tensor& keep_f, const at::Tensor& repl_f,
                     const at::Tensor& keep_e, const at::Tensor& repl_e) const {
    const auto dev = model_.device();
    auto fn = [](at::Tensor keep, at::Tensor repl) {
      return [keep, repl](const at::Tensor& x, const HookContext&) -> at::Tensor {
        return torch::where(keep, x, repl.to(x.scalar_type()));
      };
    };
    if (!keep_f.all().item<bool>()) h.hook(sites_[s].acts, fn(keep_f.to(dev), repl_f.to(dev)));
    if (!keep_e.all().item<bool>()) h.hook(sites_[s].err, fn(keep_e.to(dev), repl_e.to(dev)));
  }

  // Patches single nodes from clean to patch on the first batch and compares the change in m with
  // that batch's linear estimate: the top half of the sample by |effect|, the rest drawn at random.
  void exact_check(const std::vector<std::pair<double, NodeKey>>& ranked, CircuitResult& res) {
    torch::NoGradGuard ng;
    const auto& b = batches_[0];
    const int64_t T = b.clean.T, L = b.clean.L, n = b.clean.n;
    std::vector<NodeKey> sample;
    const int64_t want = std::min<int64_t>(opt_.exact_nodes, ranked.size());
    for (int64_t i = 0; i < (want + 1) / 2; ++i) sample.push_back(ranked[i].second);
    std::mt19937_64 rng(opt_.seed);
    size_t live = 0;  // nodes with a non-zero estimate (ranked is sorted)
    while (live < ranked.size() && ranked[live].first > 0) ++live;
    for (int64_t tries = 0; live > 0 && static_cast<int64_t>(sample.size()) < want && tries < 100 * want; ++tries) {
      const auto& k = ranked[rng() % live].second;
      if (std::find_if(sample.begin(), sample.end(), [&](const NodeKey& o) { return !(o < k) && !(k < o); }) == sample.end())
        sample.push_back(k);
    }
    Values c = values(b, false, false), p = values(b, true, false);
    const double m0 = c.m.sum().item<double>();
    std::vector<double> est, exact;
    for (size_t i = 0; i < sample.size(); ++i) {
      const NodeKey& k = sample[i];
      log("exact patching: node " + std::to_string(i + 1) + "/" + std::to_string(sample.size()));
      const int64_t S = sites_[k.s].S;
      auto keep = torch::ones({L, S + 1}, torch::kBool);
      for (int64_t t = t0_; t < T; ++t)
        if (slot_of(T, t) == k.p) keep[t][k.j] = false;
      // Patch values in both rows of each pair: [2n, L, W].
      auto rows2 = [n, T, L](const at::Tensor& v) {
        auto full = torch::zeros({n, 2, L, v.size(-1)}, v.options());
        full.index_put_({F::Slice(), F::Slice(), F::Slice(F::None, T)}, v.unsqueeze(1).expand({n, 2, T, v.size(-1)}));
        return full.view({2 * n, L, v.size(-1)});
      };
      HookSet h;
      attach_all(h);
      override_site(h, k.s, keep.index({F::Slice(), F::Slice(F::None, S)}), rows2(p.f[k.s]),
                    keep.index({F::Slice(), F::Slice(S, S + 1)}), rows2(p.e[k.s]));
      const double m1 = circuits::word_metric(circuits::forward_with(model_, b.tok_clean, h), b.clean, nw_).sum().item<double>();
      exact.push_back(m1 - m0);
      est.push_back(first_eff_[k.s][k.p][k.j].item<double>());
    }
    res.exact_correlation = pearson(est, exact);
    res.exact_checked = static_cast<int64_t>(sample.size());
  }

  // Marks et al. eq. 4-5 with AtP: edge(u -> d) = grad_d m * (dd/du) * (u_patch - u_clean), summed
  // over pairs (and positions), for d at a site and u at the site before it.
  void edges(const std::vector<NodeKey>& circuit, const std::map<NodeKey, int64_t>& index, CircuitResult& res) {
    std::vector<NodeKey> down;
    for (auto& k : circuit)
      if (k.s > 0 && static_cast<int64_t>(down.size()) < opt_.max_edge_nodes) down.push_back(k);
    if (down.empty()) return;
    std::map<std::pair<int64_t, int64_t>, double> w;
    torch::AutoGradMode on(true);
    for (size_t bi = 0; bi < batches_.size(); ++bi) {
      const auto& b = batches_[bi];
      log("edges: batch " + std::to_string(bi + 1) + "/" + std::to_string(batches_.size()));
      const int64_t T = b.clean.T;
      Values p = values(b, true, false);
      HookSet h;
      attach_all(h);
      std::string pats;
      for (const auto& st : sites_) pats += (pats.empty() ? "" : ",") + st.acts + "," + st.err;
      h.watch(pats);
      const auto m = circuits::word_metric(circuits::forward_with(model_, b.tok_clean, h), b.clean, nw_);
      auto g = h.gradients(m.sum(), true);
      for (const auto& d : down) {
        const Site& sd = sites_[d.s];
        const Site& su = sites_[d.s - 1];
        const bool is_err = d.j == sd.S;
        const auto val = prefix_rows(h.get(is_err ? sd.err : sd.acts), T);
        const auto grad = pair_sum(g.at(is_err ? sd.err : sd.acts), T).detach();
        auto sel = torch::zeros({T}, val.options().dtype(torch::kBool));
        for (int64_t t = t0_; t < T; ++t) sel[t] = slot_of(T, t) == d.p;
        at::Tensor y = is_err ? (grad * val).sum(-1) : (grad * val).select(-1, d.j);  // [n,T]
        y = (y * sel.to(y.scalar_type())).sum();
        auto gu = torch::autograd::grad({y}, {h.get(su.acts), h.get(su.err)}, {}, true, false, true);
        auto cu = prefix_rows(h.get(su.acts), T).detach(), ce = prefix_rows(h.get(su.err), T).detach();
        const auto gfa = gu[0].defined() ? prefix_rows(gu[0], T) : torch::zeros_like(cu);
        const auto gea = gu[1].defined() ? prefix_rows(gu[1], T) : torch::zeros_like(ce);
        auto per = slotted(T, gfa * (p.f[d.s - 1] - cu), (gea * (p.e[d.s - 1] - ce)).sum(-1));  // [P, S+1]
        auto acc = per.accessor<double, 2>();
        for (auto& kv : index) {
          const NodeKey& u = kv.first;
          if (u.s != d.s - 1) continue;
          w[{kv.second, index.at(d)}] += acc[u.p][u.j];
        }
      }
    }
    for (auto& kv : w) {
      const double wt = kv.second / n_;
      if (std::fabs(wt) >= opt_.edge_threshold) res.links.push_back({kv.first.first, kv.first.second, wt});
    }
  }

  CircuitNode make_node(const NodeKey& k) const {
    const Site& st = sites_[k.s];
    CircuitNode nd;
    const bool err = k.j == st.S;
    nd.kind = err ? "error" : "feature";
    nd.layer = st.layer;
    nd.site = st.hook;
    nd.position = opt_.keep_positions ? (uniform_len() ? k.p : k.p - tmax_) : -1;
    nd.feature = err ? -1 : k.j;
    nd.activation = act_[k.s][k.p][k.j].item<double>();
    nd.effect = eff_[k.s][k.p][k.j].item<double>();
    std::string site = st.hook.substr(st.hook.rfind('.') + 1);
    if (site.rfind("hook_", 0) == 0) site = site.substr(5);
    nd.id = "L" + std::to_string(st.layer) + "." + site + "." + (err ? std::string("e") : "f" + std::to_string(k.j)) +
            (opt_.keep_positions ? "@" + std::to_string(nd.position) : "");
    nd.label = err ? "error" : "#" + std::to_string(k.j);
    return nd;
  }
  bool uniform_len() const {
    for (const auto& b : batches_)
      if (b.clean.T != tmax_) return false;
    return true;
  }

  void log(const std::string& s) const {
    if (opt_.log) opt_.log(s);
    else std::fprintf(stderr, "\r%-70s", s.c_str());  // one line that updates in a terminal
  }

  const Model& model_;
  CircuitOptions opt_;
  std::vector<Site> sites_;
  std::vector<Batch> batches_;
  at::Tensor nw_;
  int64_t t0_ = 0, tmax_ = 0, P_ = 1, n_ = 0;
  std::vector<at::Tensor> eff_, first_eff_, act_, mean_f_, mean_e_;  // CPU double
  at::Tensor act_count_, mean_count_;
};

}  // namespace

CircuitResult find_circuit(const Model& model, const std::vector<Sae>& saes, const SvaData& data,
                           const CircuitOptions& opt) {
  Attributor a(model, saes, data, opt);
  auto r = a.run();
  if (!opt.log) std::fprintf(stderr, "\n");
  return r;
}

LatentReadout latent_readout(const Model& model, const Sae& sae, const SvaData& data, int64_t batch) {
  torch::NoGradGuard ng;
  check_sae_fits(sae, model);
  LatentReadout out;
  std::vector<at::Tensor> cs, ps;
  for (const auto& b : circuits::batches_by_length(data, batch, -1)) {
    for (int side = 0; side < 2; ++side) {
      auto r = circuits::build_rows(b, side == 1, circuits::pad_id(model));
      HookSet h;
      attach(h, sae, SpliceMode::WithError);
      h.cache(sae_hook_acts(sae.config().hook_name));
      lumen::circuits::forward_with(model, r.tokens.to(model.device()), h);
      // Summed over the prefix (BOS included: it is the same in every prompt), like a summed node.
      auto a = h.get(sae_hook_acts(sae.config().hook_name)).index({F::Slice(F::None, F::None, 2), F::Slice(F::None, r.T)}).sum(1);
      (side == 0 ? cs : ps).push_back(a.to(torch::kCPU, torch::kFloat));
    }
    for (auto* e : b) out.example.push_back(e - data.examples.data());
  }
  out.clean = torch::cat(cs, 0);
  out.patch = torch::cat(ps, 0);
  return out;
}

std::vector<NumberReadout> number_readout(const Model& model, const std::vector<Sae>& saes, const SvaData& data,
                                          const CircuitResult& circuit, int64_t top) {
  auto number = [](const std::string& w) { return w == "singular" ? -1.0 : w == "plural" ? 1.0 : 0.0; };
  std::vector<NumberReadout> out;
  std::map<std::string, LatentReadout> cache;  // by hook
  for (const auto& src : {circuit.nodes, circuit.top_nodes}) {
    for (const auto& n : src) {
      if (n.kind != "feature" || static_cast<int64_t>(out.size()) >= top) continue;
      if (std::any_of(out.begin(), out.end(), [&](const NumberReadout& o) { return o.id == n.id; })) continue;
      const Sae* sae = nullptr;
      for (const auto& s : saes)
        if (s.config().hook_name == n.site) sae = &s;
      if (!sae) continue;
      if (!cache.count(n.site)) cache[n.site] = latent_readout(model, *sae, data);
      const auto& lr = cache[n.site];
      std::vector<double> act, subj, dist;
      for (size_t row = 0; row < lr.example.size(); ++row) {
        const std::string& kind = data.examples[lr.example[row]].kind;
        const auto us = kind.find('_');
        const double s0 = number(kind.substr(0, us));
        const double d0 = us == std::string::npos ? 0.0 : number(kind.substr(us + 1));
        if (s0 == 0) continue;
        for (int side = 0; side < 2; ++side) {  // the patch prompt flips the subject only
          act.push_back((side == 0 ? lr.clean : lr.patch)[row][n.feature].item<double>());
          subj.push_back(side == 0 ? s0 : -s0);
          dist.push_back(d0);
        }
      }
      NumberReadout r;
      r.id = n.id;
      r.effect = n.effect;
      r.r_subject = pearson(act, subj);
      r.r_distractor = pearson(act, dist);
      r.prompts = static_cast<int64_t>(act.size());
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace lumen
