// Steering with flags and the evaluation table (Ye & Cui 2026 sec. "controllability" and the
// erosion hypothesis): read-out accuracy of each flag, steering success against the base model
// and the flag turned off, overrides against a prompt's own concept, the LM cost, reliance (loss
// increase when the flags are mean-ablated) and erosion (a linear probe's accuracy for each
// concept from the other dimensions, base vs flagged).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/flags.h"

namespace lumen {
namespace {

std::vector<std::string> decode_rows(const Model& model, const GenerateResult& r) {
  std::vector<std::string> out;
  for (const auto& g : r.generated) out.push_back(model.require_tokenizer().decode(g));
  return out;
}

// -log p(token t+1 | tokens <= t) for logits [B,T,V] and tokens [B,T]: [B,T-1].
torch::Tensor next_token_nll(const torch::Tensor& logits, const torch::Tensor& tokens) {
  const int64_t T = tokens.size(1);
  auto lp = torch::log_softmax(logits.narrow(1, 0, T - 1), -1);
  return -lp.gather(2, tokens.narrow(1, 1, T - 1).unsqueeze(2)).squeeze(2);
}

// Per-text statistics of one pass over windows: the residual at each probe site (site 0 is the flag
// layer) and the mean next-token loss, optionally with the flag dims replaced by `forced`: [N,1,K]
// (row i's values at every position of window i) or [N,seq_len,K] (per position).
struct PassStats {
  std::vector<torch::Tensor> pooled;  // per site [N,D]: mean over positions >= 1
  std::vector<torch::Tensor> last;    // per site [N,D]: at the last position (the whole window seen)
  torch::Tensor nll;                  // [N] mean next-token loss
  torch::Tensor ntok;                 // [N] predicted tokens
  torch::Tensor dim_mean;             // [D] mean flag-layer residual over all positions >= 1
};

PassStats run_pass(const Model& model, const TokenWindows& w, const FlagSpec& spec, const torch::Tensor* forced,
                   const std::vector<std::string>& sites) {
  torch::NoGradGuard ng;
  const int64_t N = w.tokens.size(), D = model.config().d_model, S = sites.size();
  PassStats s;
  for (int64_t k = 0; k < S; ++k) {
    s.pooled.push_back(torch::zeros({N, D}));
    s.last.push_back(torch::zeros({N, D}));
  }
  s.nll = torch::zeros({N});
  s.ntok = torch::zeros({N});
  auto sum = torch::zeros({D}, torch::kDouble);
  double count = 0;
  for (int64_t a = 0; a < N; a += 32) {
    const int64_t b = std::min(N, a + 32);
    int64_t T = 0;
    for (int64_t i = a; i < b; ++i) T = std::max(T, w.tokens[i].size(0));
    auto tokens = torch::zeros({b - a, T}, torch::kLong);
    auto valid = torch::zeros({b - a, T}, torch::kFloat);
    for (int64_t i = a; i < b; ++i) {
      tokens[i - a].narrow(0, 0, w.tokens[i].size(0)).copy_(w.tokens[i]);
      valid[i - a].narrow(0, 0, w.tokens[i].size(0)).fill_(1.0);
    }
    HookSet hooks;
    for (const auto& site : sites) hooks.cache(site);
    if (forced) {
      auto dim_idx = torch::tensor(spec.dims, torch::kLong).to(model.device());
      auto rows = forced->narrow(0, a, b - a);
      if (rows.size(1) > 1) rows = rows.narrow(1, 0, T);
      rows = rows.to(model.device(), torch::kFloat);
      hooks.add(spec.hook_name(), Intervention::callback([dim_idx, rows](const at::Tensor& x, const HookContext&) {
        return replace_dims(x, dim_idx, rows);
      }));
    }
    RunOptions ro;
    ro.hooks = &hooks;
    auto logits = model.forward(tokens.to(model.device()), ro).to(torch::kCPU, torch::kFloat);
    auto pm = valid.clone();
    pm.select(1, 0).zero_();
    for (int64_t k = 0; k < S; ++k) {
      auto x = hooks.get(sites[k]).to(torch::kCPU, torch::kFloat);  // [B,T,D] (before intervention)
      s.pooled[k].narrow(0, a, b - a).copy_((x * pm.unsqueeze(2)).sum(1) / pm.sum(1, true).clamp_min(1));
      for (int64_t i = a; i < b; ++i) s.last[k][i].copy_(x[i - a][w.tokens[i].size(0) - 1]);
      if (k == 0) sum += (x * pm.unsqueeze(2)).sum(1).sum(0).to(torch::kDouble);
    }
    count += pm.sum().item<double>();
    auto nll = next_token_nll(logits, tokens);  // [B,T-1]
    auto vm = valid.narrow(1, 1, T - 1);
    s.nll.narrow(0, a, b - a).copy_((nll * vm).sum(1) / vm.sum(1).clamp_min(1));
    s.ntok.narrow(0, a, b - a).copy_(vm.sum(1));
  }
  s.dim_mean = (sum / std::max(count, 1.0)).to(torch::kFloat);
  return s;
}

double balanced_accuracy(const torch::Tensor& pred, const torch::Tensor& label) {
  auto p = pred.to(torch::kBool), l = label.to(torch::kBool);
  const double pos = l.sum().item<double>(), neg = l.numel() - pos;
  const double tpr = pos > 0 ? (p & l).sum().item<double>() / pos : 1.0;
  const double tnr = neg > 0 ? ((~p) & (~l)).sum().item<double>() / neg : 1.0;
  return 0.5 * (tpr + tnr);
}

// Class-balanced L2 logistic regression, full batch Adam from zeros (deterministic). Returns its
// predictions on the test rows (bool [M]), or an undefined tensor when the training labels have
// fewer than 2 positives or negatives.
torch::Tensor probe_predict(const torch::Tensor& xtr, const torch::Tensor& ytr, const torch::Tensor& xte) {
  const double pos = ytr.sum().item<double>(), n = ytr.numel();
  if (pos < 2 || pos > n - 2) return {};
  torch::AutoGradMode grad_on(true);  // the caller runs the model without gradients
  auto mu = xtr.mean(0), sd = xtr.std(0).clamp_min(1e-6);
  auto a = (xtr - mu) / sd, b = (xte - mu) / sd;
  auto w = torch::zeros({a.size(1)}, torch::requires_grad());
  auto bias = torch::zeros({1}, torch::requires_grad());
  auto cw = ytr * (n / (2 * pos)) + (1 - ytr) * (n / (2 * (n - pos)));
  torch::optim::Adam opt({w, bias}, torch::optim::AdamOptions(0.05));
  for (int it = 0; it < 300; ++it) {
    opt.zero_grad();
    auto z = a.matmul(w) + bias;
    auto loss = torch::binary_cross_entropy_with_logits(z, ytr, cw) + 1e-3 * w.pow(2).sum();
    loss.backward();
    opt.step();
  }
  torch::NoGradGuard ng;
  return b.matmul(w) + bias > 0;
}

double accuracy_of(const torch::Tensor& pred, const torch::Tensor& label) {
  if (!pred.defined() || label.sum().item<double>() == 0) return std::nan("");
  return balanced_accuracy(pred, label);
}

// Mean over concepts of (balanced accuracy of pred_a - of pred_b), and its 95% percentile interval
// over `resamples` bootstrap draws of the test rows. Row counts per draw come from one seeded
// generator; every concept and both models see the same draw, so the interval is for the paired
// difference. Concepts without predictions or without test positives are left out.
ProbeShift probe_shift(const std::vector<torch::Tensor>& pred_a, const std::vector<torch::Tensor>& pred_b,
                       const torch::Tensor& y, int64_t resamples, uint64_t seed) {
  ProbeShift s;
  const int64_t M = y.size(0);
  std::vector<int64_t> used;
  for (int64_t c = 0; c < y.size(1); ++c) {
    const double pos = y.select(1, c).sum().item<double>();
    if (pred_a[c].defined() && pred_b[c].defined() && pos > 0 && pos < M) used.push_back(c);
  }
  if (used.empty()) return s;
  // Balanced accuracy under row weights W [R,M]: 0.5 * (W.(p&l) / W.l + W.(~p&~l) / W.~l).
  auto bal = [&](const torch::Tensor& W, const torch::Tensor& p, const torch::Tensor& l) {
    auto pf = p.to(torch::kFloat), lf = l.to(torch::kFloat);
    auto tp = W.matmul(pf * lf), pos = W.matmul(lf);
    auto tn = W.matmul((1 - pf) * (1 - lf)), neg = W.matmul(1 - lf);
    return 0.5 * (tp / pos.clamp_min(1e-9) + tn / neg.clamp_min(1e-9));
  };
  auto diffs = [&](const torch::Tensor& W) {  // [R, used concepts]
    std::vector<torch::Tensor> d;
    for (int64_t c : used) d.push_back(bal(W, pred_a[c], y.select(1, c)) - bal(W, pred_b[c], y.select(1, c)));
    return torch::stack(d, 1);
  };
  const auto whole = diffs(torch::ones({1, M})).squeeze(0);
  s.concepts = used.size();
  s.mean = whole.mean().item<double>();
  s.lower = (whole < 0).sum().item<int64_t>();
  if (resamples > 0) {
    auto gen = at::detail::createCPUGenerator(seed);
    auto idx = torch::randint(M, {resamples, M}, gen, torch::kLong);
    auto W = torch::zeros({resamples, M}).scatter_add_(1, idx, torch::ones({resamples, M}));
    auto d = std::get<0>(diffs(W).mean(1).sort());
    // A draw can hold no positive of a rare concept; its accuracy then counts TPR as 0 (pos clamped),
    // which widens the interval rather than narrowing it.
    s.lo = d[static_cast<int64_t>(0.025 * (resamples - 1))].item<double>();
    s.hi = d[static_cast<int64_t>(0.975 * (resamples - 1))].item<double>();
  }
  return s;
}

// Heldout labels in the spec's concept order (JSONL names matched by name; absent ones are 0).
ConceptCorpus align(const ConceptCorpus& in, const FlagSpec& spec) {
  ConceptCorpus out;
  out.concepts = spec.concepts;
  for (const auto& it : in.items) {
    LabelledText t{it.text, std::vector<uint8_t>(spec.concepts.size(), 0)};
    for (size_t c = 0; c < spec.concepts.size(); ++c)
      for (size_t j = 0; j < in.concepts.size(); ++j)
        if (in.concepts[j] == spec.concepts[c]) t.labels[c] = it.labels[j];
    out.items.push_back(std::move(t));
  }
  return out;
}

std::vector<ConceptRule> mention_rules(const FlagSpec& spec) {
  if (!spec.rules.empty()) return spec.rules;
  std::vector<ConceptRule> r;
  for (const auto& c : spec.concepts) r.push_back({c, {c}});  // JSONL-trained: the name itself
  return r;
}

GenerateResult gen(const Model& m, const std::vector<std::vector<int32_t>>& prompts, HookSet* hooks, int64_t max_new,
                   double temp, uint64_t seed) {
  GenerateOptions go;
  go.max_new_tokens = max_new;
  go.temperature = temp;
  go.seed = seed;
  go.hooks = hooks;
  go.hooks_every_step = true;
  return generate(m, prompts, go);
}

// Mean next-token loss of the generated part of each row under `judge` (the base model): how
// natural the text reads, whoever wrote it, so that steering cannot buy mentions with gibberish.
double generated_ce(const Model& judge, const GenerateResult& r) {
  torch::NoGradGuard ng;
  int64_t T = 0;
  for (const auto& row : r.tokens) T = std::max<int64_t>(T, row.size());
  const int64_t B = r.tokens.size();
  if (B == 0 || T < 2) return 0.0;
  auto tokens = torch::zeros({B, T}, torch::kLong);
  auto scored = torch::zeros({B, T - 1}, torch::kFloat);  // 1 where position t+1 is a generated token
  for (int64_t b = 0; b < B; ++b) {
    const auto& row = r.tokens[b];
    const int64_t n = row.size(), first = n - static_cast<int64_t>(r.generated[b].size());
    for (int64_t t = 0; t < n; ++t) tokens[b][t] = row[t];
    for (int64_t t = std::max<int64_t>(first, 1); t < n; ++t) scored[b][t - 1] = 1.0f;
  }
  auto logits = judge.forward(tokens.to(judge.device())).to(torch::kCPU, torch::kFloat);
  auto nll = next_token_nll(logits, tokens);
  return ((nll * scored).sum() / scored.sum().clamp_min(1)).item<double>();
}

// "blocks.2.hook_resid_post@last" -> "L2 last", "writes of blocks 3-4@mean" -> "w3-4 mean".
std::string short_site(const std::string& site) {
  const auto at = site.find('@');
  std::string head = site.substr(0, at);
  const std::string blocks = "blocks.", writes = "writes of blocks ";
  if (head.rfind(blocks, 0) == 0) {
    head = "L" + head.substr(blocks.size(), head.find('.', blocks.size()) - blocks.size());
  } else if (head.rfind(writes, 0) == 0) {
    head = "w" + head.substr(writes.size());
  }
  return at == std::string::npos ? head : head + " " + site.substr(at + 1);
}

}  // namespace

std::vector<std::string> steer(const Model& model, const FlagSpec& spec, const std::string& prompt, const SteerOptions& opt) {
  torch::NoGradGuard ng;
  const Tokenizer& tok = model.require_tokenizer();
  std::vector<int64_t> dims;
  std::vector<double> vals;
  for (const auto& [name, v] : opt.set) {
    dims.push_back(spec.dims[spec.index_of(name)]);
    vals.push_back(spec.off_value + v * (spec.on_value - spec.off_value));
  }
  HookSet hooks;
  if (!dims.empty()) hooks.add(spec.hook_name(), force_dims(dims, vals, model.config().d_model));
  auto ids = tok.encode(prompt, true);
  std::vector<std::vector<int32_t>> prompts(std::max<int64_t>(1, opt.samples), ids);
  auto r = gen(model, prompts, dims.empty() ? nullptr : &hooks, opt.max_new_tokens, opt.temperature, opt.seed);
  std::vector<std::string> out;
  for (const auto& g : r.tokens) out.push_back(tok.decode(g));
  return out;
}

FlagEvalResult evaluate_flags(const std::string& dir, const ConceptCorpus& heldout_in, const FlagEvalOptions& opt) {
  auto log = opt.log ? opt.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  torch::NoGradGuard ng;
  const FlagSpec spec = load_flag_spec(dir);
  require(!spec.base_model.empty() && (file_exists(spec.base_model) || is_directory(spec.base_model)), ErrorKind::Io,
          join_path(dir, "flags.json") + ": base_model '" + spec.base_model + "' not found (needed for the comparison)");
  const std::string probe_flags = opt.probe_supplied ? "supplied" : opt.probe_flags;
  require(probe_flags == "own" || probe_flags == "supplied" || probe_flags == "off", ErrorKind::Arg,
          "flags eval: --probe-flags must be own, supplied or off, got '" + probe_flags + "'");
  require(opt.probe_test_texts <= 0 || !opt.probe_corpus.empty(), ErrorKind::Arg,
          "flags eval: --probe-test-texts needs --probe-corpus (the test texts follow the probe's training texts there)");
  LoadOptions lo;
  lo.device = opt.device;
  Model flagged = Model::load(dir, lo), base = Model::load(spec.base_model, lo);
  const auto rules = mention_rules(spec);
  const int64_t K = spec.concepts.size(), D = flagged.config().d_model;

  ConceptCorpus held = align(heldout_in, spec);
  if (opt.max_texts >= 0 && static_cast<int64_t>(held.items.size()) > opt.max_texts) held.items.resize(opt.max_texts);
  TokenWindows w = make_windows(flagged, held, spec.rules, spec.seq_len);
  const int64_t N = w.tokens.size();
  auto labels = torch::zeros({N, K});
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < K; ++c) labels[i][c] = static_cast<float>(w.labels[i][c]);
  log("flags eval: " + std::to_string(N) + " held-out windows, " + std::to_string(K) + " concepts");

  // Residual sites the erosion probes read: the flag layer first, then later layers (default: the last).
  std::vector<std::string> sites{spec.hook_name()};
  std::vector<int64_t> site_layers{spec.layer};
  std::vector<int64_t> probe_layers = opt.probe_layers;
  if (probe_layers.empty()) probe_layers.push_back(flagged.config().n_layers - 1);
  for (int64_t l : probe_layers) {
    require(l >= 0 && l < flagged.config().n_layers, ErrorKind::Arg,
            "flags eval: probe layer " + std::to_string(l) + " is outside the model's " +
                std::to_string(flagged.config().n_layers) + " layers");
    const std::string h = "blocks." + std::to_string(l) + ".hook_resid_post";
    if (std::find(sites.begin(), sites.end(), h) == sites.end()) sites.push_back(h), site_layers.push_back(l);
  }
  const std::vector<std::string> flag_site{spec.hook_name()};

  PassStats fb = run_pass(base, w, spec, nullptr, sites), ff = run_pass(flagged, w, spec, nullptr, sites);
  auto dims_t = torch::tensor(spec.dims, torch::kLong);
  auto mean_f = ff.dim_mean.index_select(0, dims_t).view({1, 1, K}).expand({N, 1, K}).contiguous();
  auto mean_b = fb.dim_mean.index_select(0, dims_t).view({1, 1, K}).expand({N, 1, K}).contiguous();
  // The true flags of every window, supplied the way training supplied them.
  auto truth_of = [&](const TokenWindows& win) {
    std::vector<int64_t> rows(win.tokens.size());
    std::iota(rows.begin(), rows.end(), int64_t{0});
    return supplied_flags(spec, flag_labels(win, rows, spec.seq_len, K, spec.scope));
  };
  const auto truth = truth_of(w);
  PassStats fa = run_pass(flagged, w, spec, &mean_f, flag_site), ba = run_pass(base, w, spec, &mean_b, flag_site);
  PassStats fs = run_pass(flagged, w, spec, &truth, probe_flags == "supplied" ? sites : flag_site);

  FlagEvalResult res;
  res.concepts = spec.concepts;
  res.steer_scale = opt.steer_scale;
  res.supply = flag_supply_name(spec.supply == FlagSupply::OnOnly ? FlagSupply::OnOnly : FlagSupply::All);
  res.per_concept.assign(K, {});
  auto ppl = [](const PassStats& s) {
    return std::exp(((s.nll * s.ntok).sum() / s.ntok.sum()).item<double>());
  };
  res.ppl_base = ppl(fb);
  res.ppl_flagged = ppl(ff);
  res.loss_base = std::log(res.ppl_base);
  res.loss_flagged = std::log(res.ppl_flagged);
  auto any = labels.sum(1) > 0;
  if (any.sum().item<int64_t>() > 0) {
    res.loss_ablated = fa.nll.index({any}).mean().item<double>();
    res.reliance_flagged = (fa.nll - ff.nll).index({any}).mean().item<double>();
    res.reliance_base = (ba.nll - fb.nll).index({any}).mean().item<double>();
    res.supplied_gain = (ff.nll - fs.nll).index({any}).mean().item<double>();
  }
  std::optional<Model> control;
  std::optional<PassStats> fc;
  if (!opt.control.empty()) {
    control.emplace(Model::load(opt.control, lo));
    fc.emplace(run_pass(*control, w, spec, nullptr, sites));
    res.ppl_control = ppl(*fc);
  }

  // Erosion probes use every dimension except the flags. They train on the probe corpus's windows
  // and test on the held-out ones (or on the probe corpus's next probe_test_texts texts), or,
  // without a probe corpus, on the two halves of the held-out set.
  // Each site is read at the last position (what the model carries forward about the window; the
  // headline) and mean-pooled (which also holds the bag of token embeddings, untouched by erosion).
  auto keep = torch::ones({D}, torch::kBool);
  for (auto d : spec.dims) keep[d] = false;
  using torch::indexing::Slice;
  auto labels_of = [&](const TokenWindows& win) {
    auto y = torch::zeros({static_cast<int64_t>(win.tokens.size()), K});
    for (size_t i = 0; i < win.tokens.size(); ++i)
      for (int64_t c = 0; c < K; ++c) y[i][c] = static_cast<float>(win.labels[i][c]);
    return y;
  };
  std::optional<TokenWindows> pw, tw;  // probe train and (probe_test_texts) test windows
  torch::Tensor train_y, test_y;
  if (!opt.probe_corpus.empty()) {
    const auto train_texts = read_texts(opt.probe_corpus, opt.probe_texts);
    ConceptCorpus pc = align(label_texts(train_texts, rules), spec);
    pw.emplace(make_windows(flagged, pc, spec.rules, spec.seq_len));
    train_y = labels_of(*pw);
    test_y = labels;
    if (opt.probe_test_texts > 0) {
      ConceptCorpus tc = align(
          label_texts(read_texts(opt.probe_corpus, opt.probe_test_texts, static_cast<int64_t>(train_texts.size())), rules),
          spec);
      tw.emplace(make_windows(flagged, tc, spec.rules, spec.seq_len));
      test_y = labels_of(*tw);
    }
    log("flags eval: probes train on " + std::to_string(pw->tokens.size()) + " windows of " + opt.probe_corpus +
        " and test on " + std::to_string(test_y.size(0)) +
        (tw ? " windows of the texts after them" : " held-out windows"));
  } else {
    train_y = labels.index({Slice(0, N / 2)});
    test_y = labels.index({Slice(N / 2, N)});
  }
  res.probe_train_windows = train_y.size(0);
  res.probe_test_windows = test_y.size(0);
  // Views: each site at the last position and mean-pooled, then what the layers after the flag
  // layer wrote (a later site minus the flag layer): the encodings they compute, which the
  // erosion hypothesis expects to fade once the flags are there to read.
  for (const auto& site : sites) {
    res.probe_sites.push_back(site + "@last");
    res.probe_sites.push_back(site + "@mean");
  }
  for (size_t k = 1; k < sites.size(); ++k) {
    const int64_t from = spec.layer + 1, to = site_layers[k];
    const std::string span = "writes of blocks " + std::to_string(from) + (to > from ? "-" + std::to_string(to) : "");
    res.probe_sites.push_back(span + "@last");
    res.probe_sites.push_back(span + "@mean");
  }
  auto views = [&](const PassStats& p) {
    std::vector<torch::Tensor> v;
    for (size_t k = 0; k < sites.size(); ++k) v.insert(v.end(), {p.last[k], p.pooled[k]});
    for (size_t k = 1; k < sites.size(); ++k) v.insert(v.end(), {p.last[k] - p.last[0], p.pooled[k] - p.pooled[0]});
    return v;
  };
  // One model's (train, test) probe inputs per view, from its held-out pass.
  using ProbeInputs = std::vector<std::pair<torch::Tensor, torch::Tensor>>;
  // `is_flagged`: the flagged model, which alone gets the true flags when probe_flags is "supplied".
  auto probe_inputs = [&](const Model& model, const PassStats& held_pass, bool is_flagged) {
    const bool supplied = is_flagged && probe_flags == "supplied", off = probe_flags == "off";
    auto pass_views = [&](const TokenWindows& win) {
      const int64_t n = win.tokens.size();
      torch::Tensor forced;
      if (supplied) forced = truth_of(win);
      if (off) forced = torch::full({n, 1, K}, spec.off_value);
      return views(run_pass(model, win, spec, forced.defined() ? &forced : nullptr, sites));
    };
    const auto held = tw ? pass_views(*tw) : supplied ? views(fs) : off ? pass_views(w) : views(held_pass);
    std::vector<torch::Tensor> train;
    if (pw) train = pass_views(*pw);
    ProbeInputs out;
    for (size_t k = 0; k < held.size(); ++k) {
      torch::Tensor tr, te;
      if (pw) {
        tr = train[k], te = held[k];
      } else {
        tr = held[k].index({Slice(0, N / 2)}), te = held[k].index({Slice(N / 2, N)});
      }
      out.emplace_back(tr.index({Slice(), keep}), te.index({Slice(), keep}));
    }
    return out;
  };
  res.probe_supplied = probe_flags == "supplied";
  res.probe_flags = probe_flags;
  const ProbeInputs pb = probe_inputs(base, fb, false);
  const ProbeInputs pf = probe_inputs(flagged, ff, true);
  std::optional<ProbeInputs> pctl;
  if (control) pctl.emplace(probe_inputs(*control, *fc, false));
  const size_t V = pb.size();
  // Predictions per view and concept, for the accuracies and the shift intervals.
  std::vector<std::vector<torch::Tensor>> pred_b(V, std::vector<torch::Tensor>(K)), pred_f = pred_b, pred_c = pred_b;
  for (int64_t c = 0; c < K; ++c) {
    ConceptEval& e = res.per_concept[c];
    auto y = labels.select(1, c);
    e.positives = y.sum().item<int64_t>();
    const double thr = 0.5 * (spec.on_value + spec.off_value);
    e.readout_accuracy = balanced_accuracy(ff.last[0].select(1, spec.dims[c]) > thr, y);
    if (e.positives > 0) e.reliance = (fa.nll - ff.nll).index({y > 0}).mean().item<double>();
    const auto ytr = train_y.select(1, c), yte = test_y.select(1, c);
    for (size_t k = 0; k < V; ++k) {
      ProbeAccuracy p;
      pred_b[k][c] = probe_predict(pb[k].first, ytr, pb[k].second);
      pred_f[k][c] = probe_predict(pf[k].first, ytr, pf[k].second);
      p.before = accuracy_of(pred_b[k][c], yte);
      p.after = accuracy_of(pred_f[k][c], yte);
      if (pctl) {
        pred_c[k][c] = probe_predict((*pctl)[k].first, ytr, (*pctl)[k].second);
        p.control = accuracy_of(pred_c[k][c], yte);
      }
      e.probes.push_back(p);
    }
    e.probe_accuracy_before = e.probes[0].before;
    e.probe_accuracy_after = e.probes[0].after;
    e.probe_accuracy_control = e.probes[0].control;
  }
  for (size_t k = 0; k < V; ++k) {
    res.probe_shifts.push_back(probe_shift(pred_f[k], pctl ? pred_c[k] : pred_b[k], test_y, opt.bootstrap, opt.seed + k));
    res.probe_shifts.back().against = pctl ? "control" : "base";
  }

  if (opt.samples <= 0) {  // loss, reliance and probes only
    for (auto& e : res.per_concept)
      e.steer_success = e.base_rate = e.flag_off_rate = e.override_success = e.steer_ce = std::nan("");
    res.base_gen_ce = res.flagged_gen_ce = std::nan("");
    log("flags eval: --samples 0, steering not run");
    return res;
  }
  // Steering: the same seeds for base, flag on and flag off, so the conditions are paired.
  const double on_steer = spec.off_value + opt.steer_scale * (spec.on_value - spec.off_value);
  const Tokenizer& tok = flagged.require_tokenizer();
  const std::vector<std::vector<int32_t>> prompts(opt.samples, tok.encode(opt.prompt, true));
  auto rate = [&](const std::vector<std::string>& texts, int64_t c) {
    double hit = 0;
    for (const auto& t : texts) hit += rule_matches(rules[c], t);
    return texts.empty() ? 0.0 : hit / texts.size();
  };
  const GenerateResult base_gen = gen(base, prompts, nullptr, opt.max_new_tokens, opt.temperature, opt.seed);
  auto base_texts = decode_rows(base, base_gen);
  res.base_gen_ce = generated_ce(base, base_gen);
  res.flagged_gen_ce = generated_ce(base, gen(flagged, prompts, nullptr, opt.max_new_tokens, opt.temperature, opt.seed));
  for (int64_t c = 0; c < K; ++c) {
    ConceptEval& e = res.per_concept[c];
    e.base_rate = rate(base_texts, c);
    for (int on = 0; on < 2; ++on) {
      HookSet hooks;
      hooks.add(spec.hook_name(), force_dims({spec.dims[c]}, {on ? on_steer : spec.off_value}, D));
      const GenerateResult g = gen(flagged, prompts, &hooks, opt.max_new_tokens, opt.temperature, opt.seed);
      (on ? e.steer_success : e.flag_off_rate) = rate(decode_rows(flagged, g), c);
      if (on) e.steer_ce = generated_ce(base, g);
    }
    // Overrides: held-out openings (first sentence) that name another concept and not this one.
    std::vector<std::vector<int32_t>> op;
    for (const auto& it : held.items) {
      if (static_cast<int64_t>(op.size()) >= opt.samples) break;
      const auto dot = it.text.find('.');
      const std::string first = it.text.substr(0, dot == std::string::npos ? it.text.size() : dot + 1);
      if (rule_matches(rules[c], it.text)) continue;
      bool other = false;
      for (int64_t o = 0; o < K && !other; ++o) other = o != c && rule_matches(rules[o], first);
      if (other) op.push_back(tok.encode(first, true));
    }
    if (!op.empty()) {
      HookSet hooks;
      hooks.add(spec.hook_name(), force_dims({spec.dims[c]}, {on_steer}, D));
      e.override_success = rate(decode_rows(flagged, gen(flagged, op, &hooks, opt.max_new_tokens, opt.temperature,
                                                         opt.seed + 1)), c);
    }
    log("flags eval: " + spec.concepts[c] + " steer " + std::to_string(e.steer_success) + " base " +
        std::to_string(e.base_rate) + " off " + std::to_string(e.flag_off_rate));
  }
  return res;
}

std::string FlagEvalResult::to_json() const {
  nlohmann::json j, cs = nlohmann::json::object();
  auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  for (size_t c = 0; c < concepts.size(); ++c) {
    const ConceptEval& e = per_concept[c];
    cs[concepts[c]] = {{"readout_accuracy", num(e.readout_accuracy)}, {"steer_success", num(e.steer_success)},
                       {"base_rate", num(e.base_rate)}, {"flag_off_rate", num(e.flag_off_rate)},
                       {"override_success", num(e.override_success)},
                       {"probe_accuracy_before", num(e.probe_accuracy_before)},
                       {"probe_accuracy_after", num(e.probe_accuracy_after)}, {"reliance", num(e.reliance)},
                       {"steer_ce", num(e.steer_ce)}, {"probe_accuracy_control", num(e.probe_accuracy_control)},
                       {"positives", e.positives}};
    nlohmann::json ps = nlohmann::json::object();
    for (size_t k = 0; k < e.probes.size() && k < probe_sites.size(); ++k)
      ps[probe_sites[k]] = {{"before", num(e.probes[k].before)}, {"after", num(e.probes[k].after)},
                            {"control", num(e.probes[k].control)}};
    cs[concepts[c]]["probes"] = ps;
  }
  j["concepts"] = cs;
  j["probe_sites"] = probe_sites;
  j["probe_supplied"] = probe_supplied;
  j["probe_flags"] = probe_flags;
  if (!probe_shifts.empty()) {
    nlohmann::json sh = nlohmann::json::object();
    for (size_t k = 0; k < probe_shifts.size() && k < probe_sites.size(); ++k) {
      const ProbeShift& p = probe_shifts[k];
      sh[probe_sites[k]] = {{"mean", num(p.mean)}, {"lo", num(p.lo)}, {"hi", num(p.hi)},
                            {"concepts", p.concepts}, {"lower", p.lower}, {"against", p.against}};
    }
    j["probe_shifts"] = sh;  // flagged - reference, mean over concepts, 95% bootstrap interval
    j["probe_train_windows"] = probe_train_windows;
    j["probe_test_windows"] = probe_test_windows;
  }
  j["supply"] = supply;
  j["ppl_base"] = ppl_base;
  j["ppl_flagged"] = ppl_flagged;
  j["loss_base"] = loss_base;
  j["loss_flagged"] = loss_flagged;
  j["loss_ablated"] = loss_ablated;
  j["reliance_flagged"] = reliance_flagged;
  j["reliance_base"] = reliance_base;
  j["supplied_gain"] = supplied_gain;
  j["base_gen_ce"] = num(base_gen_ce);
  j["flagged_gen_ce"] = num(flagged_gen_ce);
  j["steer_scale"] = steer_scale;
  if (ppl_control > 0) j["ppl_control"] = ppl_control;
  return j.dump(2);
}

std::string FlagEvalResult::table() const {
  std::ostringstream o;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-8s %5s %8s %7s %6s %6s %8s %8s %8s %9s %8s %8s\n", "concept", "pos", "readout",
                "steer", "base", "off", "override", "probe<", "probe>", "probe-ctl", "reliance", "steer-ce");
  o << buf;
  for (size_t c = 0; c < concepts.size(); ++c) {
    const ConceptEval& e = per_concept[c];
    std::snprintf(buf, sizeof buf, "%-8s %5lld %8.3f %7.2f %6.2f %6.2f %8.2f %8.3f %8.3f %9.3f %8.4f %8.3f\n",
                  concepts[c].c_str(), static_cast<long long>(e.positives), e.readout_accuracy, e.steer_success,
                  e.base_rate, e.flag_off_rate, e.override_success, e.probe_accuracy_before, e.probe_accuracy_after,
                  e.probe_accuracy_control, e.reliance, e.steer_ce);
    o << buf;
  }
  if (!probe_sites.empty()) {
    // One row per view: the mean over concepts, then each concept's flagged minus the reference
    // (the control when given, else the base model). Every number is in --json.
    const bool has_control = !per_concept.empty() && !per_concept[0].probes.empty() &&
                             !std::isnan(per_concept[0].probes[0].control);
    o << "erosion: probe balanced accuracy from the non-flag dims (Ln: blocks.n.hook_resid_post, wa-b: what blocks "
         "a..b wrote; last position or mean over positions)"
      << (probe_flags == "supplied" ? ", the flagged model with the true flags supplied"
          : probe_flags == "off"    ? ", every model with the flag dims forced off"
                                    : "")
      << "; per concept: flagged - "
      << (has_control ? "control" : "base") << " (negative: erosion); shift: the mean of those, its 95% bootstrap "
         "interval over the "
      << probe_test_windows << " test windows, and how many concepts fell\n";
    std::snprintf(buf, sizeof buf, "%-10s %6s %6s %6s %-24s", "view", "base", "ctl", "flag", " shift [95%]  fell");
    o << buf;
    for (const auto& c : concepts) {
      std::snprintf(buf, sizeof buf, " %6.6s", c.c_str());
      o << buf;
    }
    o << "\n";
    for (size_t k = 0; k < probe_sites.size(); ++k) {
      ProbeAccuracy mean{0, 0, 0};
      int counted = 0;  // concepts with too few positives to probe (NaN) are left out of the mean
      std::string deltas;
      for (size_t c = 0; c < concepts.size(); ++c) {
        const ProbeAccuracy p = k < per_concept[c].probes.size() ? per_concept[c].probes[k] : ProbeAccuracy{};
        const double d = p.after - (has_control ? p.control : p.before);
        if (!std::isnan(d)) {
          mean.before += p.before, mean.control += p.control, mean.after += p.after;
          ++counted;
        }
        if (std::isnan(d)) {
          std::snprintf(buf, sizeof buf, " %6s", "n/a");
        } else {
          std::snprintf(buf, sizeof buf, " %+6.2f", d);
        }
        deltas += buf;
      }
      const double n = std::max(counted, 1);
      mean.before /= n, mean.control /= n, mean.after /= n;
      std::snprintf(buf, sizeof buf, "%-10s %6.3f %6.3f %6.3f ", short_site(probe_sites[k]).c_str(), mean.before,
                    mean.control, mean.after);
      o << buf;
      const ProbeShift sh = k < probe_shifts.size() ? probe_shifts[k] : ProbeShift{};
      std::snprintf(buf, sizeof buf, "%+.3f [%+.3f,%+.3f] %2lld/%-2lld", sh.mean, sh.lo, sh.hi,
                    static_cast<long long>(sh.lower), static_cast<long long>(sh.concepts));
      std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), "%*s", std::max(0, 24 - static_cast<int>(std::strlen(buf))), "");
      o << buf << deltas << "\n";
    }
  }
  std::snprintf(buf, sizeof buf,
                "perplexity base %.4f flagged %.4f (%+.2f%%); concept-text loss with flags mean-ablated: %+.4f nats "
                "(same ablation on the base model: %+.4f)\n",
                ppl_base, ppl_flagged, 100.0 * (ppl_flagged / ppl_base - 1.0), reliance_flagged,
                reliance_base);
  o << buf;
  std::snprintf(buf, sizeof buf,
                "concept-text loss with the true flags supplied (%s): %+.4f nats against the model's own flags\n",
                supply.c_str(), -supplied_gain);
  o << buf;
  if (ppl_control > 0) {
    std::snprintf(buf, sizeof buf, "control fine-tune (no flags) perplexity %.4f: the flags cost %+.2f%%\n", ppl_control,
                  100.0 * (ppl_flagged / ppl_control - 1.0));
    o << buf;
  }
  if (std::isnan(base_gen_ce)) return o.str();  // --samples 0: no steering
  std::snprintf(buf, sizeof buf,
                "steering forces the flag to %.1fx on_value; steer-ce: the base model's loss per generated token of the "
                "steered stories (of its own: %.3f; of the flagged model's unsteered ones: %.3f)\n",
                steer_scale, base_gen_ce, flagged_gen_ce);
  o << buf;
  return o.str();
}

}  // namespace lumen
