// The toy agreement circuit: a 2-4-2 network reads subject and distractor number (±1) and must
// output the verb that agrees with the subject; an SAE on its hidden layer; the graph from inputs
// through hidden units and SAE features (plus the error) to the two verb logits, scored by the
// same recipe as the model's circuits (IG node effects, eq. 4 edges at the clean point).
#include <torch/torch.h>

#include <cmath>
#include <random>

#include "lumen/circuits.h"
#include "lumen/error.h"

namespace lumen {
namespace {

at::Tensor randn(std::mt19937_64& rng, std::vector<int64_t> shape, double sd) {
  std::normal_distribution<float> nd(0.f, static_cast<float>(sd));
  auto t = torch::empty(shape, torch::kFloat);
  auto* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(rng);
  return t;
}

struct Net {
  at::Tensor W1, b1, W2, b2;  // [4,2] [4] [2,4] [2]
  at::Tensor hidden(const at::Tensor& x) const { return torch::relu(torch::matmul(x, W1.t()) + b1); }  // [N,4]
  at::Tensor out(const at::Tensor& h) const { return torch::matmul(h, W2.t()) + b2; }                 // [N,2]
};

// m = logit(plural) - logit(singular): the patch answer minus the clean answer (clean = singular subject).
at::Tensor metric(const at::Tensor& logits) { return logits.select(-1, 1) - logits.select(-1, 0); }

}  // namespace

ToyResult run_toy_sva(const ToyOptions& opt) {
  torch::AutoGradMode grad_on(true);
  std::mt19937_64 rng(opt.seed);
  // Data: subject and distractor number, each ±1 with a little noise; the label is the subject's.
  const int64_t N = 256;
  auto sign = torch::empty({N, 2}, torch::kFloat);
  for (int64_t i = 0; i < N; ++i) {
    sign[i][0] = (i % 2) ? 1.f : -1.f;
    sign[i][1] = ((i / 2) % 2) ? 1.f : -1.f;
  }
  const auto x = sign + randn(rng, {N, 2}, 0.2);
  const auto y = (sign.select(1, 0) > 0).to(torch::kLong);

  Net net{randn(rng, {4, 2}, 0.7).requires_grad_(), torch::zeros({4}).requires_grad_(), randn(rng, {2, 4}, 0.5).requires_grad_(),
          torch::zeros({2}).requires_grad_()};
  {
    torch::optim::Adam adam({net.W1, net.b1, net.W2, net.b2}, torch::optim::AdamOptions(0.05));
    for (int64_t step = 0; step < 300; ++step) {
      adam.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(net.out(net.hidden(x)), y);
      loss.backward();
      adam.step();
    }
  }
  for (auto* t : {&net.W1, &net.b1, &net.W2, &net.b2}) *t = t->detach();
  ToyResult r;
  {
    torch::NoGradGuard ng;
    r.accuracy = (net.out(net.hidden(x)).argmax(-1) == y).to(torch::kFloat).mean().item<double>();
  }

  // The SAE on the hidden layer: the library's Sae (ReLU), trained here with MSE + L1 on the 4-d
  // activations (train_sae streams a language model's activations, which this toy has not got).
  SaeConfig sc;
  sc.arch = SaeArch::ReLU;
  sc.d_in = 4;
  sc.d_sae = opt.d_sae;
  sc.hook_name = "toy.hidden";
  Sae sae = Sae::init(sc, opt.seed + 1);
  const auto h_all = net.hidden(x).detach();
  {
    sae.b_dec = h_all.mean(0).clone();
    std::vector<at::Tensor> params = sae.parameters();
    for (auto& p : params) p.requires_grad_(true);
    torch::optim::Adam adam(params, torch::optim::AdamOptions(0.02));
    for (int64_t step = 0; step < opt.steps; ++step) {
      adam.zero_grad();
      auto f = sae.encode(h_all, true);
      auto loss = (sae.decode(f) - h_all).pow(2).sum(-1).mean() + opt.l1 * f.abs().sum(-1).mean();
      loss.backward();
      adam.step();
      torch::NoGradGuard ng;
      sae.W_dec.div_(sae.W_dec.norm(2, 1, true).clamp_min(1e-8));  // unit rows: L1 cannot be dodged by scale
    }
    for (auto& p : params) p.requires_grad_(false);
  }
  torch::NoGradGuard ng_outer;
  r.sae_fvu = ((sae.forward(h_all) - h_all).pow(2).sum() / (h_all - h_all.mean(0)).pow(2).sum()).item<double>();

  // Pairs: clean = singular subject, patch = plural subject, the distractor either way.
  const auto xc = torch::tensor({-1.f, -1.f, -1.f, 1.f}).view({2, 2});
  const auto xp = torch::tensor({1.f, -1.f, 1.f, 1.f}).view({2, 2});
  const int64_t S = opt.d_sae, K = 10;
  // Stages: 0 inputs [n,2], 1 hidden [n,4], 2 SAE latents + error [n,S+4]; m from any of them.
  auto from_stage = [&](int stage, const at::Tensor& z) -> at::Tensor {
    at::Tensor h = stage == 0 ? net.hidden(z) : z;
    if (stage == 2) return metric(net.out(sae.decode(z.narrow(-1, 0, S)) + z.narrow(-1, S, 4)));
    return metric(net.out(h));
  };
  auto stage_value = [&](int stage, const at::Tensor& xin) -> at::Tensor {
    if (stage == 0) return xin;
    const auto h = net.hidden(xin);
    if (stage == 1) return h;
    const auto f = sae.encode(h);
    return torch::cat({f, h - sae.decode(f)}, -1);
  };
  // IG per stage (Marks et al. eq. 3), mean over the pairs.
  std::vector<at::Tensor> eff(3), zc(3), zp(3), grad_c(3);
  for (int st = 0; st < 3; ++st) {
    zc[st] = stage_value(st, xc);
    zp[st] = stage_value(st, xp);
    torch::AutoGradMode on(true);
    const auto a = ((torch::arange(K).to(torch::kFloat) + 0.5) / K).view({K, 1, 1});
    auto z = (zc[st].unsqueeze(0) + a * (zp[st] - zc[st]).unsqueeze(0)).detach().requires_grad_(true);
    auto g = torch::autograd::grad({from_stage(st, z).sum()}, {z})[0].mean(0);
    eff[st] = (g * (zp[st] - zc[st])).mean(0).detach();
    auto zc1 = zc[st].detach().requires_grad_(true);
    grad_c[st] = torch::autograd::grad({from_stage(st, zc1).sum()}, {zc1})[0].detach();  // [n, W]
  }

  // Nodes: inputs, hidden units, latents that ever fire, the error, both outputs.
  CircuitResult& g = r.graph;
  g.method = "ig";
  g.examples = 2;
  std::vector<std::vector<int64_t>> idx(4);
  auto add_node = [&](int st, const std::string& kind, const std::string& id, int64_t feature, double act, double effect,
                      const std::string& label) {
    CircuitNode n;
    n.id = id;
    n.kind = kind;
    n.layer = st - 1;
    n.site = st == 0 ? "input" : st == 1 ? "hidden" : st == 2 ? "hidden.sae" : "output";
    n.feature = feature;
    n.activation = act;
    n.effect = effect;
    n.label = label;
    idx[st].push_back(static_cast<int64_t>(g.nodes.size()));
    g.nodes.push_back(n);
  };
  const auto ac = [&](int st, int64_t i) { return zc[st].select(1, i).mean().item<double>(); };
  add_node(0, "input", "x.subject", -1, ac(0, 0), eff[0][0].item<double>(), "subject number (-1 sing, +1 plur)");
  add_node(0, "input", "x.distractor", -1, ac(0, 1), eff[0][1].item<double>(), "distractor number");
  for (int64_t k = 0; k < 4; ++k) add_node(1, "hidden", "h" + std::to_string(k), k, ac(1, k), eff[1][k].item<double>(), "hidden unit " + std::to_string(k));
  const auto f_all = sae.encode(h_all);
  std::vector<int64_t> live;  // latent index for each stage-2 node (S: the error)
  double best = -1;
  for (int64_t j = 0; j < S; ++j) {
    if ((f_all.select(1, j) > 0).sum().item<int64_t>() == 0) continue;  // dead latents draw nothing
    const double e = eff[2][j].item<double>();
    // What the latent reads: Pearson r of its activation with each input over the training points.
    std::vector<double> fa, s0, s1;
    for (int64_t i = 0; i < N; ++i) {
      fa.push_back(f_all[i][j].item<double>());
      s0.push_back(sign[i][0].item<double>());
      s1.push_back(sign[i][1].item<double>());
    }
    const double rs = pearson(fa, s0), rd = pearson(fa, s1);
    add_node(2, "feature", "f" + std::to_string(j), j, ac(2, j), e,
             "subject r=" + std::to_string(rs).substr(0, 5) + ", distractor r=" + std::to_string(rd).substr(0, 5));
    live.push_back(j);
    if (std::fabs(e) > best) {
      best = std::fabs(e);
      r.top_feature = j;
      r.top_subject_corr = rs;
      r.top_distractor_corr = rd;
    }
  }
  add_node(2, "error", "err", -1, (zc[2].narrow(-1, S, 4)).norm(2, -1).mean().item<double>(),
           eff[2].narrow(0, S, 4).sum().item<double>(), "SAE error");
  live.push_back(S);
  const auto oc = net.out(zc[1]), op = net.out(zp[1]);
  add_node(3, "output", "verb.singular", 0, oc.select(1, 0).mean().item<double>(), (op - oc).select(1, 0).mean().item<double>(), "logit: is");
  add_node(3, "output", "verb.plural", 1, oc.select(1, 1).mean().item<double>(), (op - oc).select(1, 1).mean().item<double>(), "logit: are");

  // Edges (eq. 4 at the clean point): delta(u) * d(v)/d(u) * d(m)/d(v), mean over the pairs.
  auto link = [&](int64_t s, int64_t t, double w) { g.links.push_back({s, t, w}); };  // thresholded after merging
  const auto pre = torch::matmul(xc, net.W1.t()) + net.b1;  // [n,4]
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t k = 0; k < 4; ++k) {
      const auto w = (zp[0] - zc[0]).select(1, i) * (pre.select(1, k) > 0).to(torch::kFloat) * net.W1[k][i] * grad_c[1].select(1, k);
      link(idx[0][i], idx[1][k], w.mean().item<double>());
    }
  // Hidden -> latents and error: the Jacobian of (f, err) with respect to h, by autograd per pair.
  for (int64_t n = 0; n < 2; ++n) {
    torch::AutoGradMode on(true);
    const auto h0 = zc[1][n].detach().requires_grad_(true);
    const auto f = sae.encode(h0.unsqueeze(0)).squeeze(0);
    const auto z = torch::cat({f, h0 - sae.decode(f.unsqueeze(0)).squeeze(0)});  // [S+4]
    const auto dh = (zp[1][n] - zc[1][n]);
    for (size_t q = 0; q < live.size(); ++q) {
      const int64_t j = live[q];
      // d(m)/d(node) . node, so the error's four dimensions act as one node.
      const auto gsel = j < S ? z[j] * grad_c[2][n][j] : (z.narrow(0, S, 4) * grad_c[2][n].narrow(0, S, 4)).sum();
      const auto dj = torch::autograd::grad({gsel}, {h0}, {}, true, false, true)[0];
      for (int64_t k = 0; k < 4; ++k) {
        const double w = (dh[k] * dj[k]).item<double>() / 2;
        link(idx[1][k], idx[2][q], w);
      }
    }
  }
  // Latents and error -> outputs: d(out_c)/d(node) . delta(node), signed by d(m)/d(out_c) = ±1.
  const auto dz = (zp[2] - zc[2]).mean(0);  // [S+4]
  const auto WdW2 = torch::matmul(sae.W_dec, net.W2.t());  // [S,2]
  for (size_t q = 0; q < live.size(); ++q) {
    const int64_t j = live[q];
    for (int64_t c = 0; c < 2; ++c) {
      const double sgn = c == 1 ? 1.0 : -1.0;
      const double w = j < S ? (dz[j] * WdW2[j][c]).item<double>() : (dz.narrow(0, S, 4) * net.W2[c]).sum().item<double>();
      link(idx[2][q], idx[3][c], sgn * w);
    }
  }
  // Merge the per-pair hidden -> latent contributions, then threshold.
  std::map<std::pair<int64_t, int64_t>, double> merged;
  std::vector<std::pair<int64_t, int64_t>> order;
  for (auto& l : g.links) {
    auto key = std::make_pair(l.source, l.target);
    if (!merged.count(key)) order.push_back(key);
    merged[key] += l.weight;
  }
  g.links.clear();
  for (auto& k : order)
    if (std::fabs(merged[k]) >= opt.edge_threshold) g.links.push_back({k.first, k.second, merged[k]});

  // Faithfulness over latent thresholds: latents (and the error) outside the circuit take their
  // mean over the training points.
  const auto z_all = torch::cat({f_all, h_all - sae.decode(f_all)}, -1);
  const auto z_mean = z_all.mean(0);
  auto m_with = [&](const std::vector<bool>& keep) {
    auto z = zc[2].clone();
    for (int64_t j = 0; j < S + 4; ++j)
      if (!keep[std::min(j, S)]) z.select(1, j).fill_(z_mean[j].item<double>());
    return from_stage(2, z).mean().item<double>();
  };
  std::vector<bool> all(S + 1, true), none(S + 1, false);
  g.m_clean = m_with(all);
  g.m_empty = m_with(none);
  g.m_patch = metric(net.out(zp[1])).mean().item<double>();
  g.accuracy = r.accuracy;
  std::vector<std::pair<double, int64_t>> ranked;
  for (int64_t q : live) ranked.push_back({std::fabs(q < S ? eff[2][q].item<double>() : eff[2].narrow(0, S, 4).sum().item<double>()), q});
  std::sort(ranked.rbegin(), ranked.rend());
  for (size_t k = 1; k <= ranked.size(); ++k) {
    std::vector<bool> in(S + 1, false);
    for (size_t i = 0; i < k; ++i) in[ranked[i].second] = true;
    std::vector<bool> out(S + 1);
    for (int64_t j = 0; j <= S; ++j) out[j] = !in[j];
    FaithfulnessPoint fp;
    fp.node_threshold = ranked[k - 1].first;
    fp.n_nodes = static_cast<int64_t>(k);
    fp.faithfulness = (m_with(in) - g.m_empty) / (g.m_clean - g.m_empty);
    fp.completeness = (m_with(out) - g.m_empty) / (g.m_clean - g.m_empty);
    g.curve.push_back(fp);
  }
  g.total_nodes = static_cast<int64_t>(g.nodes.size());
  g.threshold = 0;
  g.faithfulness = g.curve.empty() ? 0 : g.curve.back().faithfulness;
  g.completeness = g.curve.empty() ? 0 : g.curve.back().completeness;
  return r;
}

}  // namespace lumen
