// The harvest: stream corpus windows through the model (stopping after the deepest hooked layer),
// encode each source's features, and fold the batch into running statistics that are committed to
// the store in transactions. A killed harvest resumes from its last commit with the same batches,
// so the result equals an uninterrupted run.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "features/store.h"
#include "lumen/error.h"
#include "lumen/features.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "lumen/tensors.h"
#include "model/impl.h"

namespace lumen {

FeatureSource sae_feature_source(const Sae& sae) {
  FeatureSource s;
  s.name = sae.config().hook_name + ".sae";
  s.kind = "sae";
  s.hook = sae.config().hook_name;
  s.n_features = sae.config().d_sae;
  Sae copy = sae;
  s.encode = [copy](const at::Tensor& x) { return copy.encode(x); };
  s.write_directions = sae.W_dec.to(torch::kFloat);  // [S,D]
  return s;
}

FeatureSource neuron_feature_source(const Model& model, int64_t layer) {
  require(layer >= 0 && layer < model.config().n_layers, ErrorKind::Arg,
          "--neurons layer " + std::to_string(layer) + " is outside the model");
  FeatureSource s;
  s.hook = "blocks." + std::to_string(layer) + ".mlp.hook_post";
  s.name = s.hook;
  s.kind = "neurons";
  s.n_features = model.config().d_mlp;
  s.encode = [](const at::Tensor& x) { return x; };
  s.write_directions = model.impl().layers[layer].w_out.t().to(torch::kFloat);  // [F,D]
  return s;
}

FeatureSource direction_feature_source(const std::string& name, const std::string& hook, const at::Tensor& directions) {
  require(directions.dim() == 2, ErrorKind::Shape, "directions must be [F, D]");
  FeatureSource s;
  s.name = name;
  s.kind = "direction";
  s.hook = hook;
  s.n_features = directions.size(0);
  auto d = directions.to(torch::kFloat);
  s.encode = [d](const at::Tensor& x) { return torch::matmul(x.to(torch::kFloat), d.to(x.device()).t()); };
  s.write_directions = d;
  return s;
}

at::Tensor load_directions(const std::string& path) {
  if (path.size() > 12 && path.substr(path.size() - 12) == ".safetensors") {
    auto st = TensorStore::open(path);
    require(st.has("directions"), ErrorKind::Format, path + ": expected a tensor named 'directions' [F, D]");
    auto t = st.get("directions").to(torch::kFloat);
    return t.dim() == 1 ? t.unsqueeze(0) : t;
  }
  std::ifstream in(path);
  require(static_cast<bool>(in), ErrorKind::Io, path + ": cannot open directions file");
  std::vector<std::vector<float>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::vector<float> r;
    float v;
    while (ss >> v) r.push_back(v);
    if (!r.empty()) rows.push_back(std::move(r));
  }
  require(!rows.empty(), ErrorKind::Format, path + ": no numbers (one direction per line)");
  for (auto& r : rows) require(r.size() == rows[0].size(), ErrorKind::Format, path + ": rows have different lengths");
  auto t = torch::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) t[i][j] = rows[i][j];
  return t;
}

namespace {

std::string sources_signature(const std::vector<FeatureSource>& sources) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& s : sources) j.push_back({{"name", s.name}, {"kind", s.kind}, {"hook", s.hook}, {"n", s.n_features}});
  return j.dump();
}

int64_t hook_layer(const std::string& hook) {
  // The SAE's own site name ends in ".sae"; what matters is the model site it reads.
  auto hp = HookPoint::parse(hook);
  require(hp.has_value(), ErrorKind::Hook, "feature source hook '" + hook + "' is not a hook point");
  return hp->is_global() ? (hp->site == HookSite::ln_final ? 1 << 20 : -1) : hp->layer;
}

void write_logit_effects(features::Db& db, const Model& model, const FeatureSource& src) {
  if (!src.write_directions.defined()) return;
  auto WU = model.unembed_matrix().to(torch::kCPU, torch::kFloat);  // [V,D]
  const int64_t n = std::min<int64_t>(10, WU.size(0));
  features::Stmt st(db, "INSERT OR REPLACE INTO logits(source, feature, top_ids, top_vals, bottom_ids, bottom_vals) VALUES(?,?,?,?,?,?)");
  auto dirs = src.write_directions.to(torch::kCPU);
  require(dirs.size(1) == WU.size(1), ErrorKind::Shape,
          src.name + ": feature directions have width " + std::to_string(dirs.size(1)) + ", the unembedding " + std::to_string(WU.size(1)));
  for (int64_t f0 = 0; f0 < dirs.size(0); f0 += 256) {
    const int64_t nf = std::min<int64_t>(256, dirs.size(0) - f0);
    auto eff = torch::matmul(dirs.narrow(0, f0, nf), WU.t());  // [nf,V]
    auto top = eff.topk(n, 1, true, true), bot = eff.topk(n, 1, false, true);
    // [nf,n] each, contiguous, read through raw pointers (one tensor op per block, not per feature).
    const auto ti = std::get<1>(top).to(torch::kInt).contiguous(), tv = std::get<0>(top).contiguous();
    const auto bi = std::get<1>(bot).to(torch::kInt).contiguous(), bv = std::get<0>(bot).contiguous();
    for (int64_t i = 0; i < nf; ++i) {
      st.bind(1, src.name).bind(2, f0 + i);
      st.bind_blob(3, ti.data_ptr<int32_t>() + i * n, n * 4).bind_blob(4, tv.data_ptr<float>() + i * n, n * 4);
      st.bind_blob(5, bi.data_ptr<int32_t>() + i * n, n * 4).bind_blob(6, bv.data_ptr<float>() + i * n, n * 4);
      st.step();
      st.reset();
    }
  }
}

// Runs fn(0..n-1) on up to `workers` threads, item i on thread i % workers; rethrows the first error.
void run_parallel(size_t n, size_t workers, const std::function<void(size_t)>& fn) {
  if (workers <= 1 || n <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(workers);
  for (size_t w = 0; w < std::min(workers, n); ++w)
    threads.emplace_back([&, w] {
      try {
        for (size_t i = w; i < n; i += workers) fn(i);
      } catch (...) {
        errors[w] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Density, moments, max and histogram, given the batch's window maxima wmax [B,F]. SAE codes are
// sparse and never negative, so only the firing entries are touched (3% of them for a k=16-of-512
// TopK); a source with negative values (neurons, directions) takes the dense path so that its mean
// still counts them.
void accumulate_stats(features::SourceState& s, const torch::Tensor& a, const torch::Tensor& wmax, const torch::Tensor& edge_t,
                      bool nonnegative) {
  const int64_t F = s.F;
  s.max = torch::maximum(s.max, wmax.amax(0).to(torch::kDouble));
  // One scan for the firing entries: masked_select would repeat nonzero's.
  const auto flat = (a > 0).reshape({-1}).nonzero().view({-1});  // [n] flat indices, row-major order
  const auto vals = a.reshape({-1}).index_select(0, flat).to(torch::kDouble);  // [n]
  const auto feat = flat.remainder(F);                             // [n] their features
  auto ones = torch::ones_like(feat);
  s.nonzero.index_add_(0, feat, ones);
  if (!nonnegative && (a < 0).any().item<bool>()) {
    auto a64 = a.to(torch::kDouble);
    s.sum += a64.sum(std::vector<int64_t>{0, 1});
    s.sum_sq += (a64 * a64).sum(std::vector<int64_t>{0, 1});
  } else {
    s.sum.index_add_(0, feat, vals);
    s.sum_sq.index_add_(0, feat, vals * vals);
  }
  auto bins = torch::bucketize(vals, edge_t, /*out_int32=*/false, /*right=*/true);  // [n]
  s.hist.view({-1}).index_add_(0, bins + feat * features::kBins, ones);
}

// One candidate context per window and feature: the window's strongest position (best = a.max(1),
// [B,F] values and positions). Only candidates that beat a feature's current K-th value can enter
// its top-K (windows arrive in increasing order, so a tie loses), so contexts are gathered for at
// most the C best windows per feature, where C is the largest number of such candidates any
// feature has in this batch (often 0).
void merge_window_maxima(features::SourceState& s, const torch::Tensor& a, const std::tuple<torch::Tensor, torch::Tensor>& best,
                         const torch::Tensor& toks, const torch::Tensor& gid, int64_t W, int64_t before) {
  const int64_t T = a.size(1), F = s.F;
  auto wmax = std::get<0>(best).t().contiguous(), wpos = std::get<1>(best).t().contiguous();  // [F,B]
  auto cand = torch::where(wmax > 0, wmax, torch::full_like(wmax, -std::numeric_limits<float>::infinity()));
  const int64_t C = (cand > s.top_val.narrow(1, s.K - 1, 1)).sum(1).max().item<int64_t>();
  if (C == 0) return;
  auto sel = std::get<1>(cand.topk(C, 1, /*largest=*/true, /*sorted=*/true));  // [F,C] windows of the batch
  auto val = cand.gather(1, sel);
  auto pos = wpos.gather(1, sel);
  auto win = gid.index_select(0, sel.reshape({-1})).view({F, C});
  win = torch::where(val > -std::numeric_limits<float>::infinity(), win, torch::full_like(win, -1));  // never fired: empty
  auto start = (pos - before).clamp(0, T - W);                                       // [F,C]
  auto t_idx = start.unsqueeze(-1) + torch::arange(W, torch::kLong).view({1, 1, W});  // [F,C,W]
  auto row = sel.unsqueeze(-1) * T + t_idx;                                          // (window, position)
  auto ctx_tok = toks.to(torch::kInt).reshape({-1}).index_select(0, row.reshape({-1})).view({F, C, W});
  auto f_idx = torch::arange(F, torch::kLong).view({F, 1, 1});
  auto ctx_act = a.reshape({-1}).index_select(0, (row * F + f_idx).reshape({-1})).view({F, C, W});
  s.merge_top(val, win, pos, ctx_tok, ctx_act);
}

}  // namespace

HarvestResult harvest_features(const Model& model, const std::vector<FeatureSource>& sources, const HarvestOptions& opt) {
  require(!sources.empty(), ErrorKind::Arg, "harvest: no feature sources (give --sae, --neurons or --direction)");
  require(opt.n_shards >= 1 && opt.shard >= 0 && opt.shard < opt.n_shards, ErrorKind::Arg, "--shard must be i/n with 0 <= i < n");
  require(opt.top_k >= 1 && opt.batch >= 1 && opt.ctx_len >= 2, ErrorKind::Arg, "top_k, batch and ctx_len must be positive");
  auto log = opt.log ? opt.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  torch::NoGradGuard ng;
  const auto& tok = model.require_tokenizer();

  // Windows of the corpus; this shard takes every n-th, keeping global indices.
  auto windows = tokenize_corpus(model, opt.corpus, opt.ctx_len, opt.text_field, opt.tokens);
  require(windows.size(0) > 0, ErrorKind::Arg, opt.corpus + ": the corpus yields no window of " + std::to_string(opt.ctx_len) + " tokens");
  std::vector<int64_t> mine;
  for (int64_t w = opt.shard; w < windows.size(0); w += opt.n_shards) mine.push_back(w);
  const int64_t T = windows.size(1);
  const int64_t W = std::min<int64_t>(32, T), before = W * 3 / 4;
  const int32_t bos = tok.bos_id() >= 0 ? tok.bos_id() : -1;

  int64_t stop = -1;
  std::vector<std::string> hooks;
  for (const auto& s : sources) {
    require(s.n_features > 0 && s.encode, ErrorKind::Arg, "feature source " + s.name + " is empty");
    stop = std::max(stop, hook_layer(s.hook));
    hooks.push_back(s.hook);
  }
  const int64_t stop_at = stop >= model.config().n_layers ? -1 : stop + 1;

  // Store: fresh, or resumed after checking it was made by the same command.
  if (!opt.resume && file_exists(opt.out))
    throw Error(ErrorKind::Arg, opt.out + ": store exists (pass --resume to continue it, or remove it)");
  features::Db db(opt.out, true);
  db.create_schema();
  const std::map<std::string, std::string> signature = {
      {"model", model.path()}, {"corpus", opt.corpus}, {"ctx_len", std::to_string(opt.ctx_len)},
      {"top_k", std::to_string(opt.top_k)}, {"context_width", std::to_string(W)}, {"batch", std::to_string(opt.batch)},
      {"tokens", std::to_string(opt.tokens)}, {"shard", std::to_string(opt.shard)},
      {"n_shards", std::to_string(opt.n_shards)}, {"sources", sources_signature(sources)}};
  std::vector<features::SourceState> state(sources.size());
  int64_t done = 0;  // windows of `mine` already folded in
  const bool existing = db.meta("started") == "1";
  if (existing) {
    require(opt.resume, ErrorKind::Arg, opt.out + ": store exists (pass --resume to continue it)");
    for (const auto& [k, v] : signature)
      require(db.meta(k) == v, ErrorKind::Arg,
              opt.out + ": cannot resume: " + k + " was '" + db.meta(k) + "', now '" + v + "'");
    done = std::stoll(db.meta("windows_done", "0"));
    for (size_t i = 0; i < sources.size(); ++i) db.read_source(state[i], sources[i].name, opt.top_k, W);
    if (db.meta("finished") == "1") {
      log("harvest: " + opt.out + " is already complete (" + std::to_string(done) + " windows)");
      return {done, std::stoll(db.meta("tokens_done", "0")), 0.0, true};
    }
    log("harvest: resuming " + opt.out + " after " + std::to_string(done) + " of " + std::to_string(mine.size()) + " windows");
  } else {
    db.exec("BEGIN");
    for (const auto& [k, v] : signature) db.set_meta(k, v);
    db.set_meta("started", "1");
    db.set_meta("windows_done", "0");
    db.set_meta("tokens_done", "0");
    for (size_t i = 0; i < sources.size(); ++i) {
      features::Stmt st(db, "INSERT INTO sources(name, idx, kind, hook, n_features, tokens) VALUES(?,?,?,?,?,0)");
      st.bind(1, sources[i].name).bind(2, static_cast<int64_t>(i)).bind(3, sources[i].kind).bind(4, sources[i].hook);
      st.bind(5, sources[i].n_features).step();
      state[i].name = sources[i].name;
      state[i].init(sources[i].n_features, opt.top_k, W);
    }
    features::Stmt vs(db, "INSERT INTO vocab(id, piece) VALUES(?, ?)");
    // Pieces as they print inside a text: after a token that is not BOS, so tokenizers that drop
    // the word-start space of a text's first token (SentencePiece, Metaspace) keep it here.
    const int32_t inside = tok.bos_id() == 0 ? 1 : 0;
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
      vs.bind(1, static_cast<int64_t>(id)).bind(2, tok.decode_step(inside, id));
      vs.step();
      vs.reset();
    }
    db.exec("COMMIT");
  }
  for (size_t i = 0; i < sources.size(); ++i)
    require(state[i].F == sources[i].n_features, ErrorKind::Arg, opt.out + ": source " + sources[i].name + " changed size");

  const int64_t commit_every = std::max<int64_t>(1, opt.commit_every / opt.batch) * opt.batch;
  const auto& edges = histogram_edges();
  auto edge_t = torch::tensor(std::vector<double>(edges.begin(), edges.end()), torch::kDouble);
  int64_t tokens_done = std::stoll(db.meta("tokens_done", "0"));
  const int64_t tokens_at_start = tokens_done;
  const auto t0 = std::chrono::steady_clock::now();
  auto last_log = t0, last_commit = t0;
  const size_t workers = opt.threads > 0 ? static_cast<size_t>(opt.threads)
                                         : std::max<size_t>(1, std::thread::hardware_concurrency());
  const int64_t start_done = done;
  HarvestResult res;
  res.finished = true;

  auto commit = [&] {
    db.exec("BEGIN");
    for (auto& s : state) db.write_source(s, false);
    db.set_meta("windows_done", std::to_string(done));
    db.set_meta("tokens_done", std::to_string(tokens_done));
    db.exec("COMMIT");
  };

  while (done < static_cast<int64_t>(mine.size())) {
    const int64_t B = std::min<int64_t>(opt.batch, static_cast<int64_t>(mine.size()) - done);
    auto gid = torch::tensor(std::vector<int64_t>(mine.begin() + done, mine.begin() + done + B), torch::kLong);
    auto toks = windows.index_select(0, gid);  // [B,T]
    HookSet hs;
    for (const auto& h : hooks) hs.cache(h);
    RunOptions ro;
    ro.hooks = &hs;
    ro.stop_at_layer = stop_at;
    model.forward(toks, ro);
    // BOS positions carry no text: they are not counted and never a context.
    auto valid = bos >= 0 ? (toks != bos) : torch::ones_like(toks, torch::kBool);
    const int64_t n_valid = valid.sum().item<int64_t>();
    // Sources are independent given the cached sites: fold them in on up to `workers` threads
    // (each thread owns whole sources, so the result does not depend on the thread count).
    auto hidden = valid.logical_not().unsqueeze(-1);
    auto fold = [&](size_t i) {
      torch::NoGradGuard ng_thread;  // grad mode is per thread
      auto& s = state[i];
      auto x = hs.get(sources[i].hook).reshape({B * T, -1});
      auto a = sources[i].encode(x).to(torch::kCPU, torch::kFloat).view({B, T, s.F});
      // In place unless the codes share memory with the cached site (an identity encoder, as
      // neurons have): another source may read the same site.
      a = a.is_alias_of(x) ? a.masked_fill(hidden, 0.0f) : a.masked_fill_(hidden, 0.0f);
      s.tokens += n_valid;
      const auto best = a.max(1);  // [B,F]: each window's strongest activation and its position
      accumulate_stats(s, a, std::get<0>(best), edge_t, sources[i].kind == "sae");
      merge_window_maxima(s, a, best, toks, gid, W, before);
    };
    run_parallel(sources.size(), workers, fold);
    done += B;
    tokens_done += n_valid;
    const bool last = done == static_cast<int64_t>(mine.size());
    const bool stop_now = opt.stop_after_windows >= 0 && done >= opt.stop_after_windows;
    auto now = std::chrono::steady_clock::now();
    if (last || stop_now || (done - start_done) % commit_every == 0 ||
        std::chrono::duration<double>(now - last_commit).count() > opt.commit_seconds) {
      commit();
      last_commit = now;
    }
    if (last || std::chrono::duration<double>(now - last_log).count() > 5) {
      const double secs = std::chrono::duration<double>(now - t0).count();
      char buf[256];
      std::snprintf(buf, sizeof(buf), "harvest: %lld/%zu windows, %lld tokens, %.0f tok/s",
                    static_cast<long long>(done), mine.size(), static_cast<long long>(tokens_done),
                    secs > 0 ? (tokens_done - tokens_at_start) / secs : 0.0);
      log(buf);
      last_log = now;
    }
    if (stop_now && !last) {
      res.finished = false;
      break;
    }
  }
  if (res.finished) {
    db.exec("BEGIN");
    for (const auto& s : sources) write_logit_effects(db, model, s);
    db.set_meta("finished", "1");
    db.exec("COMMIT");
  }
  res.windows = done;
  res.tokens = tokens_done;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace lumen
