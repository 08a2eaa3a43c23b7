// Flag training (Ye & Cui 2026): full fine-tuning with loss = LM cross-entropy + alpha * aux, where
// aux pulls k chosen residual dimensions at blocks.{L}.hook_resid_post towards each text's concept
// labels at every position. Two stages: (1) learn to write the flags; (2) learn to rely on them,
// with the true flags supplied at the fixed dimensions (the paper's "reliably supplied" condition),
// while aux keeps training the model's own write. AdamW by hand so that its state checkpoints as
// plain tensors and a resumed run reproduces an uninterrupted one bit for bit.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <sys/stat.h>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/flags.h"
#include "lumen/tensors.h"

namespace lumen {

Intervention force_dims(const std::vector<int64_t>& dims, const std::vector<double>& values, int64_t d_model) {
  require(dims.size() == values.size(), ErrorKind::Arg, "force_dims: dims and values differ in length");
  auto keep = torch::ones({d_model}, torch::kFloat), set = torch::zeros({d_model}, torch::kFloat);
  for (size_t i = 0; i < dims.size(); ++i) {
    require(dims[i] >= 0 && dims[i] < d_model, ErrorKind::Arg,
            "force_dims: dimension " + std::to_string(dims[i]) + " is outside d_model " + std::to_string(d_model));
    keep[dims[i]] = 0.0;
    set[dims[i]] = values[i];
  }
  return Intervention::callback([keep, set](const at::Tensor& x, const HookContext&) -> at::Tensor {
    return x * keep.to(x.device(), x.scalar_type()) + set.to(x.device(), x.scalar_type());
  });
}

at::Tensor replace_dims(const at::Tensor& x, const at::Tensor& dim_idx, const at::Tensor& values) {
  const int64_t k = dim_idx.size(0);
  if (!(values.dim() == 3 && values.size(2) == k && values.size(0) == x.size(0) &&
        (values.size(1) == 1 || values.size(1) == x.size(1)))) {
    std::ostringstream o;
    o << "replace_dims: values must be [B,T,k] or [B,1,k] for x " << x.sizes() << " and k=" << k << ", got "
      << values.sizes();
    throw Error(ErrorKind::Shape, o.str());
  }
  auto v = values.to(x.device(), x.scalar_type()).expand({x.size(0), x.size(1), k});
  v = torch::where(torch::isnan(v), x.index_select(2, dim_idx), v);
  return x.index_fill(2, dim_idx, 0.0).index_add(2, dim_idx, v);
}

at::Tensor supplied_flags(const FlagSpec& spec, const at::Tensor& labels) {
  auto v = spec.off_value + labels.to(torch::kFloat) * (spec.on_value - spec.off_value);
  if (spec.supply == FlagSupply::OnOnly) v = torch::where(labels > 0.5, v, torch::full_like(v, std::nan("")));
  return v;
}

// --linear-write: in blocks 0..layer, out[..., dims] = input.detach() @ W[dims]^T (+ b[dims]), the same
// value the block wrote, with the gradient cut where it would enter the block's features.
void add_linear_write_hooks(Model& model, int64_t layer, const at::Tensor& dim_idx, HookSet& hooks) {
  const ModelConfig& c = model.config();
  require(!c.sandwich_norms, ErrorKind::Arg,
          "flags: --linear-write needs blocks whose output is a plain projection (no norm after attention/MLP)");
  const auto names = model.named_parameters();
  auto stash = std::make_shared<std::vector<at::Tensor>>(2 * (layer + 1));
  const Model* m = &model;
  for (int64_t l = 0; l <= layer; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    for (int part = 0; part < 2; ++part) {
      const std::string w_name = b + (part == 0 ? "attn.W_O" : "mlp.W_out"), b_name = b + (part == 0 ? "attn.b_O" : "mlp.b_out");
      require(names.count(w_name), ErrorKind::Config, "flags: --linear-write: no parameter " + w_name);
      const bool has_bias = names.count(b_name) > 0;
      const size_t slot = 2 * l + part;
      hooks.add(b + (part == 0 ? "attn.hook_z" : "mlp.hook_post"),
                Intervention::callback([stash, slot](const at::Tensor& x, const HookContext&) -> at::Tensor {
                  (*stash)[slot] = x;
                  return {};
                }));
      // The weights are looked up per call: set_requires_grad swaps the model's tensors.
      hooks.add(b + (part == 0 ? "hook_attn_out" : "hook_mlp_out"),
                Intervention::callback([=](const at::Tensor& x, const HookContext&) -> at::Tensor {
                  auto p = m->named_parameters();
                  auto in = (*stash)[slot].detach();
                  (*stash)[slot] = at::Tensor();
                  in = in.reshape({in.size(0), in.size(1), -1});  // z [B,T,H,E] -> [B,T,H*E]
                  auto rows = p.at(w_name).index_select(0, dim_idx);  // [k, in]
                  auto flag = torch::matmul(in.to(rows.scalar_type()), rows.t());
                  if (has_bias) flag = flag + p.at(b_name).index_select(0, dim_idx);
                  return replace_dims(x, dim_idx, flag.to(x.scalar_type()));
                }));
    }
  }
}

TokenWindows make_windows(const Model& model, const ConceptCorpus& corpus, const std::vector<ConceptRule>& rules,
                          int64_t seq_len) {
  const Tokenizer& tok = model.require_tokenizer();
  TokenWindows w;
  w.exact_positions = !rules.empty();
  for (const auto& it : corpus.items) {
    auto ids = tok.encode(it.text, true);
    if (static_cast<int64_t>(ids.size()) > seq_len) ids.resize(seq_len);
    if (ids.size() < 8) continue;
    std::vector<uint8_t> labels = it.labels;
    std::vector<int16_t> first(labels.size(), -1), start(labels.size(), -1);
    for (size_t c = 0; c < labels.size(); ++c)
      if (labels[c]) first[c] = start[c] = 0;
    // Rule labels describe what the window keeps, so a flag means "this text (as seen) needs it".
    if (!rules.empty()) {
      // Whether tokens [from, to) spell a mention of concept c.
      auto mentions = [&](size_t c, size_t from, size_t to) {
        return rule_matches(rules[c], tok.decode(std::vector<int32_t>(ids.begin() + from, ids.begin() + to)));
      };
      const std::string kept = tok.decode(ids);
      for (size_t c = 0; c < rules.size() && c < labels.size(); ++c) {
        labels[c] = rule_matches(rules[c], kept) ? 1 : 0;
        first[c] = start[c] = -1;
        if (!labels[c]) continue;
        // The shortest prefix that mentions the concept (binary search: mentions only accumulate).
        size_t lo = 1, hi = ids.size();
        while (lo < hi) {
          const size_t mid = (lo + hi) / 2;
          if (mentions(c, 0, mid)) hi = mid; else lo = mid + 1;
        }
        first[c] = static_cast<int16_t>(lo - 1);
        // The mention's first token: the latest s from which ids[s..first] still spell it (a word
        // may take several tokens of a small vocabulary).
        size_t s = lo - 1;
        while (s > 1 && !mentions(c, s, lo)) --s;
        start[c] = static_cast<int16_t>(s);
      }
    }
    std::vector<int64_t> v(ids.begin(), ids.end());
    w.tokens.push_back(torch::tensor(v, torch::kLong));
    w.labels.push_back(std::move(labels));
    w.first.push_back(std::move(first));
    w.start.push_back(std::move(start));
  }
  require(!w.tokens.empty(), ErrorKind::Arg, "flags: no text gave a window of at least 8 tokens");
  return w;
}

at::Tensor flag_labels(const TokenWindows& w, const std::vector<int64_t>& idx, int64_t T, int64_t k, FlagScope scope) {
  require(scope == FlagScope::Window || w.exact_positions, ErrorKind::Arg,
          "flags: the prefix scope needs rule labels (positions of mentions); JSONL labels have none");
  auto out = torch::zeros({static_cast<int64_t>(idx.size()), T, k}, torch::kFloat);
  auto a = out.accessor<float, 3>();
  for (size_t b = 0; b < idx.size(); ++b)
    for (int64_t c = 0; c < k; ++c) {
      if (!w.labels[idx[b]][c]) continue;
      const int64_t from = scope == FlagScope::Prefix ? w.first[idx[b]][c] : 0;
      for (int64_t t = std::max<int64_t>(from, 0); t < T; ++t) a[b][t][c] = 1.0f;
    }
  return out;
}

at::Tensor mention_weights(const TokenWindows& w, const std::vector<int64_t>& idx, int64_t T, int64_t k, double weight) {
  require(w.exact_positions, ErrorKind::Arg,
          "flags: --mention-weight needs rule labels (positions of mentions); JSONL labels have none");
  auto out = torch::ones({static_cast<int64_t>(idx.size()), std::max<int64_t>(T - 1, 0)}, torch::kFloat);
  auto a = out.accessor<float, 2>();
  for (size_t b = 0; b < idx.size(); ++b)
    for (int64_t c = 0; c < k; ++c) {
      if (!w.labels[idx[b]][c]) continue;
      for (int64_t t = std::max<int64_t>(w.start[idx[b]][c], 1); t <= w.first[idx[b]][c] && t < T; ++t)
        a[b][t - 1] = static_cast<float>(weight);
    }
  return out;
}

namespace {

// Right-pads windows into [B,T] tokens and a [B,T] validity mask (causal: padding never leaks back).
std::pair<torch::Tensor, torch::Tensor> pad_batch(const std::vector<at::Tensor>& ws, const std::vector<int64_t>& idx) {
  int64_t T = 0;
  for (auto i : idx) T = std::max(T, ws[i].size(0));
  auto tokens = torch::zeros({static_cast<int64_t>(idx.size()), T}, torch::kLong);
  auto valid = torch::zeros({static_cast<int64_t>(idx.size()), T}, torch::kBool);
  for (size_t b = 0; b < idx.size(); ++b) {
    const int64_t n = ws[idx[b]].size(0);
    tokens[b].narrow(0, 0, n).copy_(ws[idx[b]]);
    valid[b].narrow(0, 0, n).fill_(true);
  }
  return {tokens, valid};
}

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Every option that shapes the result: flags.json records it so the run can be repeated, and a
// checkpoint carries it so that --resume refuses one written with other settings.
std::string training_record(const FlagTrainOptions& o, size_t n_windows, size_t n_concepts) {
  nlohmann::json j;
  j["layer"] = o.layer;
  j["dims"] = o.n_dims;
  if (!o.dims.empty()) j["dim_list"] = o.dims;
  j["alpha"] = o.alpha;
  j["on_scale"] = o.on_scale;
  j["steps_write"] = o.steps_write;
  j["steps_rely"] = o.steps_rely;
  j["supply"] = !o.supply_flags ? "none" : o.supply_on_only ? "on-only" : "all";
  j["supply_rate"] = o.supply_rate;
  j["supply_noise"] = o.supply_noise;
  if (o.linear_write) j["linear_write"] = true;  // absent when off, so older records keep their fingerprint
  if (o.mention_weight != 1.0) j["mention_weight"] = o.mention_weight;  // likewise
  j["balance"] = o.balance;
  j["scope"] = flag_scope_name(o.scope);
  j["max_pos_weight"] = o.max_pos_weight;
  j["batch"] = o.batch;
  j["seq_len"] = o.seq_len;
  j["lr"] = o.lr;
  j["weight_decay"] = o.weight_decay;
  j["warmup_frac"] = o.warmup_frac;
  j["seed"] = o.seed;
  j["windows"] = n_windows;
  j["concepts"] = n_concepts;
  return j.dump();
}

double lr_at(const FlagTrainOptions& o, int64_t step, int64_t total) {
  const int64_t warm = std::max<int64_t>(1, static_cast<int64_t>(o.warmup_frac * total));
  if (step < warm) return o.lr * (step + 1) / warm;
  const double p = static_cast<double>(step - warm) / std::max<int64_t>(1, total - warm);
  return o.lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * p)));  // cosine to 10%
}

}  // namespace

std::vector<int64_t> choose_flag_dims(const Model& model, const std::vector<at::Tensor>& windows, int64_t layer,
                                      int64_t k, double* rms_out) {
  torch::NoGradGuard ng;
  const int64_t D = model.config().d_model;
  require(k > 0 && k <= D, ErrorKind::Arg, "flags: --dims " + std::to_string(k) + " must be in 1.." + std::to_string(D));
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < std::min<int64_t>(64, windows.size()); ++i) idx.push_back(i);
  auto [tokens, valid] = pad_batch(windows, idx);
  RunOptions ro;
  ro.stop_at_layer = layer + 1;
  auto x = model.forward(tokens.to(model.device()), ro).to(torch::kCPU, torch::kFloat);  // [B,T,D]
  // Position 0 (BOS) is identical in every text and often huge; it says nothing about usage.
  auto m = valid.clone();
  m.select(1, 0).fill_(false);
  auto rows = x.index({m});  // [N,D]
  auto var = rows.var(0);    // [D]
  if (rms_out) *rms_out = rows.pow(2).mean().sqrt().item<double>();
  // The rule: the k least-varying dimensions are the least used, so claiming them costs the least.
  auto order = std::get<1>(var.sort(0, false));
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < k; ++i) dims.push_back(order[i].item<int64_t>());
  return dims;
}

FlagTrainResult train_flags(Model& model, const std::string& base_path, const ConceptCorpus& corpus,
                            const std::vector<ConceptRule>& rules, const FlagTrainOptions& opt) {
  auto log = opt.log ? opt.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  const ModelConfig& cfg = model.config();
  require(opt.layer >= 0 && opt.layer < cfg.n_layers, ErrorKind::Arg,
          "flags: --layer " + std::to_string(opt.layer) + " outside 0.." + std::to_string(cfg.n_layers - 1));
  require(!opt.out_dir.empty(), ErrorKind::Arg, "flags: --out DIR is required");
  const int64_t k = std::min<int64_t>(opt.n_dims, corpus.concepts.size());
  require(k > 0, ErrorKind::Arg, "flags: no concepts to train");
  require(opt.mention_weight > 0, ErrorKind::Arg, "flags: --mention-weight must be > 0");
  require(opt.mention_weight == 1.0 || !rules.empty(), ErrorKind::Arg,
          "flags: --mention-weight needs rule labels (a plain-text --corpus); JSONL labels carry no positions");
  require(opt.dims.empty() || static_cast<int64_t>(opt.dims.size()) == k, ErrorKind::Arg,
          "flags: " + std::to_string(opt.dims.size()) + " dims given for " + std::to_string(k) + " concepts");

  TokenWindows win = make_windows(model, corpus, rules, opt.seq_len);
  const int64_t N = win.tokens.size(), total = opt.steps_write + opt.steps_rely;
  const std::string ckpt = join_path(opt.out_dir, "checkpoint.safetensors");
  ::mkdir(opt.out_dir.c_str(), 0755);

  FlagSpec spec;
  spec.concepts.assign(corpus.concepts.begin(), corpus.concepts.begin() + k);
  spec.layer = opt.layer;
  spec.base_model = base_path;
  spec.seq_len = opt.seq_len;
  spec.scope = opt.scope;
  spec.supply = !opt.supply_flags ? FlagSupply::None : opt.supply_on_only ? FlagSupply::OnOnly : FlagSupply::All;
  for (int64_t c = 0; c < k && c < static_cast<int64_t>(rules.size()); ++c) spec.rules.push_back(rules[c]);

  model.set_requires_grad(true);
  auto named = model.named_parameters();
  std::vector<std::string> names;
  std::vector<torch::Tensor> params, m1, m2;
  for (auto& kv : named) {
    names.push_back(kv.first);
    params.push_back(kv.second);
    m1.push_back(torch::zeros_like(kv.second).detach());
    m2.push_back(torch::zeros_like(kv.second).detach());
  }
  const std::string fp = training_record(opt, N, k);
  int64_t start = 0;
  if (opt.resume && file_exists(ckpt)) {
    TensorStore st = TensorStore::open(ckpt);
    const auto& md = st.metadata();
    require(md.count("fingerprint") && md.at("fingerprint") == fp, ErrorKind::Arg,
            ckpt + ": written by a run with other settings; use the same options or a new --out");
    torch::NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].copy_(st.get("p/" + names[i]));
      m1[i].copy_(st.get("m/" + names[i]));
      m2[i].copy_(st.get("v/" + names[i]));
    }
    auto sj = nlohmann::json::parse(md.at("spec"));
    spec.dims = sj["dims"].get<std::vector<int64_t>>();
    spec.on_value = sj["on_value"].get<double>();
    start = std::stoll(md.at("step"));
    log("flags: resumed from " + ckpt + " at step " + std::to_string(start));
  } else {
    double rms = 1.0;
    auto chosen = choose_flag_dims(model, win.tokens, opt.layer, k, &rms);
    spec.dims = opt.dims.empty() ? chosen : opt.dims;
    spec.on_value = opt.on_scale * rms;
  }
  std::string dims_s;
  for (size_t i = 0; i < spec.dims.size(); ++i)
    dims_s += (i ? " " : "") + spec.concepts[i] + "=" + std::to_string(spec.dims[i]);
  log("flags: " + std::to_string(N) + " windows, layer " + std::to_string(opt.layer) + ", on_value " +
      std::to_string(spec.on_value) + ", dims " + dims_s);

  // Concept-balanced rows: at TinyStories rates (dog in 2% of texts) a batch of 16 holds a positive
  // of a given concept every few steps, too rarely to learn to write, let alone rely on, its flag.
  std::vector<std::vector<int64_t>> positives_of(k);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < k; ++c)
      if (win.labels[i][c]) positives_of[c].push_back(i);
  std::vector<int64_t> drawable;  // concepts with at least one positive window
  for (int64_t c = 0; c < k; ++c)
    if (!positives_of[c].empty()) drawable.push_back(c);
  // Rare concepts would be learned as "always off": positives are up-weighted by neg/pos (<= max_pos_weight),
  // at the rate a batch row is positive once balancing is counted (co-occurrence ignored).
  std::vector<double> pw(k, 1.0);
  for (int64_t c = 0; c < k; ++c) {
    if (positives_of[c].empty()) continue;
    const double p = (1.0 - opt.balance) * positives_of[c].size() / N + (drawable.empty() ? 0.0 : opt.balance / drawable.size());
    pw[c] = std::min(opt.max_pos_weight, std::max(1.0, (1.0 - p) / p));
  }
  auto pos_weight = torch::tensor(pw, torch::kFloat).to(model.device());
  auto dim_idx = torch::tensor(spec.dims, torch::kLong).to(model.device());

  torch::Tensor stash, supply_values;  // set per step; read by the hook
  bool supply_now = false;
  HookSet hooks;
  hooks.add(spec.hook_name(), Intervention::callback([&](const at::Tensor& x, const HookContext&) -> at::Tensor {
    stash = x;
    if (!supply_now) return {};
    // Stage 2: the true flags replace what the model wrote, so later layers learn to trust them.
    // Under on-only an absent concept's dim keeps the model's own write (NaN in supply_values), so
    // "not on" looks in training as it will in use, where the model cannot know yet what the text
    // will mention.
    return replace_dims(x, dim_idx, supply_values);
  }));

  if (opt.linear_write) add_linear_write_hooks(model, opt.layer, dim_idx, hooks);

  // A fixed batch (the first windows, flags not supplied) measures aux before and after training.
  auto fixed_aux = [&]() {
    torch::NoGradGuard ng;
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < std::min<int64_t>(32, N); ++i) idx.push_back(i);
    auto [tokens, valid] = pad_batch(win.tokens, idx);
    auto lab = flag_labels(win, idx, tokens.size(1), k, opt.scope).to(model.device());  // [B,T,k]
    supply_now = false;
    RunOptions ro;
    ro.hooks = &hooks;
    ro.stop_at_layer = opt.layer + 1;
    model.forward(tokens.to(model.device()), ro);
    auto xs = stash.to(torch::kFloat).index_select(2, dim_idx);
    auto am = valid.to(model.device()).to(torch::kFloat);
    am.select(1, 0).zero_();
    auto wm = (1.0 + lab * (pos_weight - 1.0)) * am.unsqueeze(2);
    return ((((xs - lab * spec.on_value) / spec.on_value).pow(2) * wm).sum() / wm.sum()).item<double>();
  };

  FlagTrainResult res;
  res.spec = spec;
  res.first_aux = fixed_aux();
  auto t0 = std::chrono::steady_clock::now();
  int64_t step = start;
  for (; step < total; ++step) {
    std::mt19937_64 rng(mix(opt.seed, step));
    std::vector<int64_t> idx(opt.batch);
    for (auto& i : idx) {
      const bool balanced = !drawable.empty() && (rng() % 1000000) < opt.balance * 1000000;
      if (balanced) {
        const auto& pool = positives_of[drawable[rng() % drawable.size()]];
        i = pool[rng() % pool.size()];
      } else {
        i = static_cast<int64_t>(rng() % N);
      }
    }
    const bool stage2 = step >= opt.steps_write;
    supply_now = stage2 && opt.supply_flags && (rng() % 1000000) < opt.supply_rate * 1000000;
    auto [tokens, valid] = pad_batch(win.tokens, idx);
    tokens = tokens.to(model.device());
    valid = valid.to(model.device());
    auto lab = flag_labels(win, idx, tokens.size(1), k, opt.scope).to(model.device());  // [B,T,k]
    const double on = spec.on_value;
    supply_values = supplied_flags(spec, lab);
    if (supply_now && opt.supply_noise > 0) {
      // Later layers that only ever saw exact 0 / on_value react to the small errors of the model's
      // own write; noise on what is supplied teaches them to read the flags with a tolerance.
      auto gen = at::detail::createCPUGenerator(mix(opt.seed ^ 0x5eed, step));
      supply_values = supply_values + (torch::randn(lab.sizes(), gen, torch::kFloat) * (opt.supply_noise * on)).to(lab.device());
    }

    RunOptions ro;
    ro.hooks = &hooks;
    auto logits = model.forward(tokens, ro).to(torch::kFloat);  // [B,T,V]
    const int64_t T = tokens.size(1);
    auto vm = valid.narrow(1, 1, T - 1).to(torch::kFloat);
    auto nll = torch::nn::functional::cross_entropy(
        logits.narrow(1, 0, T - 1).reshape({-1, logits.size(2)}), tokens.narrow(1, 1, T - 1).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    auto lm = (nll * vm.reshape({-1})).sum() / vm.sum();
    // Stage 2, --mention-weight: the first-mention tokens count `mention_weight` times; the plain LM
    // term stays as it is and the extra (W-1) share is added on top, so `lm` stays comparable.
    torch::Tensor lm_extra;
    if (stage2 && opt.mention_weight != 1.0) {
      auto mw = mention_weights(win, idx, T, k, opt.mention_weight).to(model.device()) - 1.0;
      lm_extra = (nll * (mw * vm).reshape({-1})).sum() / vm.sum();
    }
    // aux: squared error in units of on_value, at every position after BOS.
    auto xs = stash.to(torch::kFloat).index_select(2, dim_idx);  // [B,T,k]
    auto target = lab * on;                                      // [B,T,k]
    auto w = 1.0 + lab * (pos_weight - 1.0);                     // [B,T,k]
    auto am = valid.to(torch::kFloat).clone();
    am.select(1, 0).zero_();
    auto wm = w * am.unsqueeze(2);
    auto aux = (((xs - target) / on).pow(2) * wm).sum() / wm.sum();
    auto loss = lm + opt.alpha * aux;
    if (lm_extra.defined()) loss = loss + lm_extra;
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    loss.backward();

    {
      torch::NoGradGuard ng;
      // Global-norm clipping at 1, then AdamW (decoupled weight decay on matrices only).
      double sq = 0;
      for (auto& p : params)
        if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
      const double clip = std::min(1.0, 1.0 / (std::sqrt(sq) + 1e-12));
      const double lr = lr_at(opt, step, total), b1 = 0.9, b2 = 0.999, eps = 1e-8;
      const double bc1 = 1 - std::pow(b1, step + 1), bc2 = 1 - std::pow(b2, step + 1);
      for (size_t i = 0; i < params.size(); ++i) {
        if (!params[i].grad().defined()) continue;
        auto g = params[i].grad() * clip;
        m1[i].mul_(b1).add_(g, 1 - b1);
        m2[i].mul_(b2).addcmul_(g, g, 1 - b2);
        if (opt.weight_decay > 0 && params[i].dim() >= 2) params[i].mul_(1 - lr * opt.weight_decay);
        params[i].addcdiv_(m1[i] / bc1, (m2[i] / bc2).sqrt_().add_(eps), -lr);
      }
    }
    const double aux_v = aux.item<double>(), lm_v = lm.item<double>();
    res.last_lm = lm_v;
    if (opt.log_every > 0 && ((step + 1) % opt.log_every == 0 || step + 1 == total)) {
      torch::NoGradGuard ng;
      auto pred = (xs.detach() > on * 0.5).to(torch::kFloat);
      auto acc = ((pred == target.detach().gt(0).to(torch::kFloat)).to(torch::kFloat) * am.unsqueeze(2))
                     .sum().item<double>() / (am.sum().item<double>() * k);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      char buf[256];
      std::snprintf(buf, sizeof buf, "flags: step %lld/%lld stage %d%s lm %.4f aux %.4f flag-acc %.3f (%.1f steps/s)",
                    static_cast<long long>(step + 1), static_cast<long long>(total), stage2 ? 2 : 1,
                    supply_now ? " (supplied)" : "", lm_v, aux_v, acc, (step + 1 - start) / std::max(secs, 1e-9));
      log(buf);
    }
    const bool stop_here = opt.stop_after_steps >= 0 && step + 1 >= opt.stop_after_steps;
    if ((opt.checkpoint_every > 0 && (step + 1) % opt.checkpoint_every == 0) || stop_here || step + 1 == total) {
      std::vector<std::pair<std::string, at::Tensor>> ts;
      for (size_t i = 0; i < params.size(); ++i) {
        ts.emplace_back("p/" + names[i], params[i].detach());
        ts.emplace_back("m/" + names[i], m1[i]);
        ts.emplace_back("v/" + names[i], m2[i]);
      }
      nlohmann::json sj;
      sj["dims"] = spec.dims;
      sj["on_value"] = spec.on_value;
      save_safetensors(ckpt, ts, {{"step", std::to_string(step + 1)}, {"fingerprint", fp}, {"spec", sj.dump()}});
    }
    if (stop_here && step + 1 < total) {
      res.finished = false;
      ++step;
      break;
    }
  }
  res.steps = step;
  res.spec = spec;
  res.last_aux = fixed_aux();
  model.set_requires_grad(false);
  if (res.finished) {
    save_hf_checkpoint(model, opt.out_dir);
    res.spec.training = fp;
    save_flag_spec(opt.out_dir, res.spec);
    log("flags: wrote " + opt.out_dir + " (model.safetensors, config.json, flags.json)");
  }
  return res;
}

}  // namespace lumen
