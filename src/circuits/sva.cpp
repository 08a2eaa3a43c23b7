// Subject-verb agreement data: the shipped JSONL sets, a template generator in TinyStories words,
// tokenization that keeps same-length pairs, and word-level answer scoring.
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "circuits/internal.h"
#include "lumen/circuits.h"
#include "lumen/error.h"

namespace lumen {

std::vector<SvaPair> load_sva_jsonl(const std::string& path, int64_t limit) {
  std::ifstream in(path);
  require(in.good(), ErrorKind::Io, "cannot open agreement data '" + path + "'");
  std::vector<SvaPair> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line) && (limit < 0 || static_cast<int64_t>(out.size()) < limit)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw Error(ErrorKind::Format, path + ":" + std::to_string(lineno) + ": not JSON (" + e.what() + ")");
    }
    for (const char* k : {"clean_prefix", "patch_prefix", "clean_answer", "patch_answer"})
      require(j.contains(k) && j[k].is_string(), ErrorKind::Format,
              path + ":" + std::to_string(lineno) + ": missing string field '" + k +
                  "' (expected clean_prefix, patch_prefix, clean_answer, patch_answer)");
    SvaPair p;
    p.clean_prefix = j["clean_prefix"];
    p.patch_prefix = j["patch_prefix"];
    p.clean_answer = j["clean_answer"];
    p.patch_answer = j["patch_answer"];
    if (j.contains("case") && j["case"].is_string()) p.kind = j["case"];
    p.construction = j.value("construction", p.kind);
    p.controller_word = j.value("controller_word", int64_t{-1});
    p.distractor_word = j.value("distractor_word", int64_t{-1});
    out.push_back(std::move(p));
  }
  require(!out.empty(), ErrorKind::Format, "agreement data '" + path + "' holds no pairs");
  return out;
}

std::vector<SvaPair> sva_template_pairs(int64_t n, uint64_t seed, const std::string& construction,
                                        const Model* model) {
  require(construction == "simple" || construction == "pp" || construction == "all", ErrorKind::Arg,
          "template construction '" + construction + "': expected simple, pp or all");
  // Words a TinyStories model has seen thousands of times.
  static const char* kNouns[][2] = {{"dog", "dogs"},   {"cat", "cats"},     {"girl", "girls"}, {"boy", "boys"},
                                    {"bird", "birds"}, {"friend", "friends"}, {"tree", "trees"}, {"ball", "balls"},
                                    {"toy", "toys"},   {"duck", "ducks"},   {"frog", "frogs"}, {"bear", "bears"},
                                    {"car", "cars"},   {"flower", "flowers"}, {"kid", "kids"},  {"bug", "bugs"}, {"man", "men"}, {"woman", "women"}};
  static const char* kVerbs[][2] = {{" is", " are"}, {" was", " were"}, {" has", " have"}};
  static const char* kPreps[] = {"near", "with", "behind", "by"};
  const int nn = sizeof(kNouns) / sizeof(kNouns[0]), nv = 3, np = 4;
  static const char* kDets[][2] = {{"The", "The"}, {"A", "The"}, {"This", "These"}, {"That", "These"}};
  const Tokenizer* tok = model ? &model->require_tokenizer() : nullptr;
  auto same_len = [&](const std::string& a, const std::string& b) {
    return !tok || tok->encode(a, false).size() == tok->encode(b, false).size();
  };
  std::mt19937_64 rng(seed);
  std::vector<SvaPair> out;
  for (int64_t tries = 0; static_cast<int64_t>(out.size()) < n && tries < 50 * n + 100; ++tries) {
    const bool plural_clean = out.size() % 2 == 1;  // alternate so the set is balanced
    const int s = static_cast<int>(rng() % nn), v = static_cast<int>(rng() % nv);
    const bool pp = construction == "pp" || (construction == "all" && rng() % 2 == 1);
    SvaPair p;
    std::string tail;
    if (pp) {
      int d = static_cast<int>(rng() % nn);
      if (d == s) d = (d + 1) % nn;
      // The distractor has the clean subject's opposite number: it points the wrong way.
      tail = std::string(" ") + kPreps[rng() % np] + " the " + kNouns[d][plural_clean ? 0 : 1];
    }
    int det = 0;
    while (det < 4 && !same_len(std::string(kDets[det][0]) + " " + kNouns[s][0], std::string(kDets[det][1]) + " " + kNouns[s][1])) ++det;
    if (det == 4) continue;
    p.clean_prefix = std::string(kDets[det][plural_clean]) + " " + kNouns[s][plural_clean] + tail;
    p.patch_prefix = std::string(kDets[det][!plural_clean]) + " " + kNouns[s][!plural_clean] + tail;
    p.clean_answer = kVerbs[v][plural_clean];
    p.patch_answer = kVerbs[v][!plural_clean];
    // The case as ../shared/data/sva writes it: subject number, then the distractor's.
    p.kind = std::string(plural_clean ? "plural" : "singular") + (pp ? (plural_clean ? "_singular" : "_plural") : "");
    out.push_back(std::move(p));
  }
  return out;
}

SvaData tokenize_sva(const Model& model, const std::vector<SvaPair>& pairs) {
  const Tokenizer& tok = model.require_tokenizer();
  SvaData d;
  for (const auto& p : pairs) {
    SvaExample e;
    e.clean = tok.encode(p.clean_prefix, tok.adds_bos_by_default());
    e.patch = tok.encode(p.patch_prefix, tok.adds_bos_by_default());
    // Answers are continuations: encode them after a prefix and keep the new tokens, so that a
    // SentencePiece leading space is not doubled.
    e.clean_answer = circuits::continuation(tok, p.clean_prefix, p.clean_answer);
    e.patch_answer = circuits::continuation(tok, p.clean_prefix, p.patch_answer);
    e.kind = p.kind;
    if (e.clean.size() != e.patch.size() || e.clean.empty() || e.clean_answer.empty() || e.patch_answer.empty() ||
        e.clean_answer == e.patch_answer) {
      ++d.dropped;
      continue;
    }
    d.examples.push_back(std::move(e));
  }
  return d;
}

at::Tensor new_word_mask(const Model& model) {
  const Tokenizer& tok = model.require_tokenizer();
  const int64_t V = model.config().d_vocab;
  auto m = torch::zeros({V}, torch::kBool);
  auto acc = m.accessor<bool, 1>();
  for (int64_t v = 0; v < V && v < tok.vocab_size(); ++v) {
    const std::string pc = tok.piece(static_cast<int32_t>(v));
    if (pc.empty()) continue;
    const unsigned char c0 = static_cast<unsigned char>(pc[0]);
    const bool space = pc.rfind("\xe2\x96\x81", 0) == 0 || pc.rfind("\xc4\xa0", 0) == 0 || c0 == ' ';
    const bool newline = pc == "<0x0A>" || pc.rfind("\xc4\x8a", 0) == 0 || c0 == '\n';
    const bool punct = std::ispunct(c0) && pc.size() == 1;
    acc[v] = space || newline || punct;
  }
  for (int32_t id : {tok.eos_id(), model.config().eos_id})
    if (id >= 0 && id < V) acc[id] = true;
  return m;
}

namespace circuits {

std::vector<int32_t> continuation(const Tokenizer& tok, const std::string& prefix, const std::string& answer) {
  const auto a = tok.encode(prefix, false);
  const auto b = tok.encode(prefix + answer, false);
  size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  // A merge across the boundary would change the prefix; fall back to the answer alone.
  if (k < a.size()) return tok.encode(answer, false);
  return std::vector<int32_t>(b.begin() + static_cast<long>(k), b.end());
}

Rows build_rows(const std::vector<const SvaExample*>& ex, bool patch_prefix, int32_t pad) {
  Rows r;
  r.n = static_cast<int64_t>(ex.size());
  r.T = static_cast<int64_t>(ex[0]->clean.size());
  int64_t amax = 1;
  for (auto* e : ex) amax = std::max<int64_t>(amax, std::max(e->clean_answer.size(), e->patch_answer.size()));
  r.L = r.T + amax;
  r.tokens = torch::full({2 * r.n, r.L}, pad, torch::kLong);
  auto acc = r.tokens.accessor<int64_t, 2>();
  for (int64_t i = 0; i < r.n; ++i) {
    const auto& pre = patch_prefix ? ex[i]->patch : ex[i]->clean;
    for (int a = 0; a < 2; ++a) {
      const auto& ans = a == 0 ? ex[i]->clean_answer : ex[i]->patch_answer;
      for (int64_t t = 0; t < r.T; ++t) acc[2 * i + a][t] = pre[t];
      for (size_t j = 0; j < ans.size(); ++j) acc[2 * i + a][r.T + j] = ans[j];
      r.answers.push_back(ans);
    }
  }
  return r;
}

at::Tensor word_metric(const at::Tensor& logits, const Rows& r, const at::Tensor& new_word) {
  const auto lp = torch::log_softmax(logits.to(torch::kFloat), -1);  // [2N, L, V]
  const int64_t R = 2 * r.n, A = r.L - r.T;
  // Where each answer token is predicted, which token, and whether the row has it: [R, A].
  auto pos = torch::zeros({R, A}, torch::kLong), tok = torch::zeros({R, A}, torch::kLong);
  auto has = torch::zeros({R, A}, torch::kFloat), end = torch::zeros({R}, torch::kLong);
  auto pa = pos.accessor<int64_t, 2>(), ta = tok.accessor<int64_t, 2>();
  auto ea = end.accessor<int64_t, 1>();
  auto ha = has.accessor<float, 2>();
  for (int64_t row = 0; row < R; ++row) {
    const auto& ans = r.answers[row];
    for (int64_t j = 0; j < static_cast<int64_t>(ans.size()); ++j) {
      pa[row][j] = r.T - 1 + j;
      ta[row][j] = ans[j];
      ha[row][j] = 1;
    }
    ea[row] = r.T - 1 + static_cast<int64_t>(ans.size());
  }
  const auto dev = lp.device();
  const auto rows = torch::arange(R, torch::TensorOptions().dtype(torch::kLong).device(dev));
  const auto tok_lp = lp.index({rows.unsqueeze(1), pos.to(dev), tok.to(dev)});                  // [R, A]
  // The word ends after its last token: the next token must start a new one.
  const auto after = lp.index({rows, end.to(dev)});                                               // [R, V]
  const auto stop = after.masked_fill(new_word.to(dev).logical_not(), -INFINITY).logsumexp(-1);  // [R]
  const auto sc = ((tok_lp * has.to(dev)).sum(1) + stop).view({r.n, 2});
  return sc.select(1, 1) - sc.select(1, 0);  // [N]: score(patch answer) - score(clean answer)
}

std::vector<std::vector<const SvaExample*>> batches_by_length(const SvaData& data, int64_t batch, int64_t limit) {
  std::map<size_t, std::vector<const SvaExample*>> groups;
  int64_t used = 0;
  for (const auto& e : data.examples) {
    if (limit >= 0 && used >= limit) break;
    groups[e.clean.size()].push_back(&e);
    ++used;
  }
  std::vector<std::vector<const SvaExample*>> out;
  for (auto& kv : groups)
    for (size_t i = 0; i < kv.second.size(); i += static_cast<size_t>(batch))
      out.emplace_back(kv.second.begin() + static_cast<long>(i),
                       kv.second.begin() + static_cast<long>(std::min(kv.second.size(), i + static_cast<size_t>(batch))));
  return out;
}

}  // namespace circuits

SvaAccuracy sva_accuracy(const Model& model, const SvaData& data, int64_t batch) {
  require(!data.examples.empty(), ErrorKind::Arg, "no agreement examples to score (all dropped for length mismatch?)");
  torch::NoGradGuard ng;
  const auto nw = new_word_mask(model);
  SvaAccuracy acc;
  int64_t right = 0;
  double mc = 0, mp = 0;
  for (const auto& b : circuits::batches_by_length(data, batch, -1)) {
    for (int side = 0; side < 2; ++side) {
      auto r = circuits::build_rows(b, side == 1, circuits::pad_id(model));
      const auto m = circuits::word_metric(model.forward(r.tokens.to(model.device())), r, nw).cpu();
      auto ma = m.accessor<float, 1>();
      for (int64_t i = 0; i < r.n; ++i) {
        right += side == 0 ? ma[i] < 0 : ma[i] > 0;
        (side == 0 ? mc : mp) += ma[i];
      }
    }
    acc.examples += static_cast<int64_t>(b.size());
  }
  acc.accuracy = static_cast<double>(right) / (2.0 * acc.examples);
  acc.mean_metric_clean = mc / acc.examples;
  acc.mean_metric_patch = mp / acc.examples;
  return acc;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = std::min(a.size(), b.size());
  if (n < 2) return 0;
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) ma += a[i], mb += b[i];
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0;
}

}  // namespace lumen
