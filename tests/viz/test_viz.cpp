// Feature visualization: the shared evaluator agrees with a plain forward pass (also on the
// shared-prefix paths: beam extensions and edits of a base), the token gradient matches finite differences, every method stays in its
// budget and returns valid sequences, the beam search is exact for one token, ADAPT beats random
// search, and the --json contract reproduces through `lumen cache`.
#include <torch/torch.h>

#include <sys/wait.h>

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "lumen/tensors.h"
#include "lumen/viz.h"
#include "viz/objective.h"

namespace {

using lumen_test::shared_path;

struct Fixture {
  lumen::Model model = lumen::Model::load(shared_path("models/stories260K/stories260K.bin"));
  lumen::Sae sae;
  Fixture(const std::string& hook = "blocks.2.hook_resid_post") {
    lumen::SaeConfig c;
    c.arch = lumen::SaeArch::TopK;
    c.k = 8;
    c.d_in = 64;
    c.d_sae = 128;
    c.hook_name = hook;
    sae = lumen::Sae::init(c, 7);
    // Fresh SAEs have zero biases; a small random encoder bias makes latents differ in density.
    torch::manual_seed(3);
    sae.b_enc.copy_(torch::randn({128}) * 0.1);
  }
  lumen::VizTarget target(int64_t latent, lumen::VizTarget::Position p = lumen::VizTarget::Position::Last) const {
    lumen::VizTarget t;
    t.hook = sae.config().hook_name;
    t.sae = &sae;
    t.index = latent;
    t.position = p;
    return t;
  }
  // The latent at every position by a plain forward pass and the SAE's encode: the reference.
  torch::Tensor reference(const std::vector<int32_t>& ids, int64_t latent) const {
    torch::NoGradGuard ng;
    lumen::HookSet hooks;
    hooks.cache(sae.config().hook_name);
    lumen::RunOptions ro;
    ro.hooks = &hooks;
    model.forward(lumen::tokens_tensor(ids), ro);
    return sae.encode(hooks.get(sae.config().hook_name))[0].select(-1, latent);
  }
};

std::vector<int32_t> with_bos(const std::vector<int32_t>& s) {
  std::vector<int32_t> v{1};
  v.insert(v.end(), s.begin(), s.end());
  return v;
}

TEST(Viz, EvaluatorMatchesForwardAndPrefixReuse) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  for (auto pos : {lumen::VizTarget::Position::Last, lumen::VizTarget::Position::Max}) {
    lumen::VizOptions o;
    o.len = 6;
    o.batch = 5;  // several chunks
    o.budget_tokens = 1 << 30;
    o.fluency = 0.5;  // CE on: the prefix path must reproduce it too
    lumen::viz::Objective obj(fx.model, fx.target(5, pos), o, true);
    std::mt19937_64 rng(1);
    std::vector<lumen::viz::Seq> prefixes;
    for (int i = 0; i < 3; ++i) prefixes.push_back(obj.random_seq(5, rng));
    std::vector<std::pair<int64_t, int32_t>> ext;
    std::vector<lumen::viz::Seq> full;
    for (int i = 0; i < 12; ++i) {
      const int64_t w = i % 3;
      const int32_t t = obj.random_token(rng);
      ext.push_back({w, t});
      full.push_back(prefixes[w]);
      full.back().push_back(t);
    }
    auto a = obj.extend(prefixes, ext);
    auto b = obj.evaluate(full);
    ASSERT_EQ(a.size(), full.size());
    ASSERT_EQ(b.size(), full.size());
    for (size_t i = 0; i < full.size(); ++i) {
      auto ref = fx.reference(with_bos(full[i]), 5);
      const double want = pos == lumen::VizTarget::Position::Last ? ref[-1].item<double>()
                                                                  : ref.narrow(0, 1, 6).max().item<double>();
      EXPECT_NEAR(b[i].act, want, 1e-4) << i;
      EXPECT_NEAR(a[i].act, want, 1e-4) << "prefix path " << i;
      EXPECT_NEAR(a[i].ce, b[i].ce, 1e-4) << i;
      EXPECT_GT(b[i].ce, 0.0);
      EXPECT_NEAR(a[i].search, b[i].search, 1e-4);
    }
  }
}

// Random edits (1-3 swaps) of two bases, plus a copy of a base and edits at the first and last
// position: evaluate_edits must give evaluate()'s scores, charge what it runs, and under a budget
// that runs out score a prefix of the candidates.
void expect_edits_match_evaluate(const lumen::Model& model, const lumen::VizTarget& target, bool ce, const std::string& what) {
  for (auto pos : {lumen::VizTarget::Position::Last, lumen::VizTarget::Position::Max}) {
    auto t = target;
    t.position = pos;
    lumen::VizOptions o;
    o.len = 12;
    o.batch = 7;  // groups split into several chunks
    o.budget_tokens = 1 << 30;
    const std::string tag = what + (ce ? " with CE" : "") + (pos == lumen::VizTarget::Position::Last ? " (last)" : " (max)");
    lumen::viz::Objective obj(model, t, o, ce);
    std::mt19937_64 rng(7);
    const int64_t T = o.len;
    std::vector<lumen::viz::Seq> bases{obj.random_seq(T, rng), obj.random_seq(T, rng)};
    std::vector<lumen::viz::Seq> cands{bases[0], bases[1]};
    for (int64_t p : {int64_t(0), T - 1}) {
      cands.push_back(bases[0]);
      cands.back()[p] = bases[0][p] == 5 ? 6 : 5;
    }
    for (int i = 0; i < 60; ++i) {
      auto s = bases[i % 2];
      const int swaps = 1 + i % 3;
      for (int j = 0; j < swaps; ++j) s[std::uniform_int_distribution<int64_t>(0, T - 1)(rng)] = obj.random_token(rng);
      cands.push_back(s);
    }
    // The charge: each base once over the positions up to the latest first difference, and each
    // candidate from its first difference (a copy of its base from its last position).
    int64_t P = 0, own = 0;
    std::set<size_t> used_bases;
    for (const auto& c : cands) {
      int64_t best_from = 0;
      size_t best = 0;
      for (size_t b = 0; b < 2; ++b) {
        const int64_t common = std::mismatch(c.begin(), c.end(), bases[b].begin()).first - c.begin();
        if (std::min(common + 1, T) > best_from) best_from = std::min(common + 1, T), best = b;
      }
      used_bases.insert(best);
      P = std::max(P, best_from);
      own += T + 1 - best_from;
    }
    auto want = obj.evaluate(cands);
    const int64_t u0 = obj.used();
    auto got = obj.evaluate_edits(cands, bases);
    EXPECT_EQ(obj.used() - u0, static_cast<int64_t>(used_bases.size()) * P + own) << tag;
    EXPECT_LT(obj.used() - u0, static_cast<int64_t>(cands.size()) * (T + 1)) << tag;
    ASSERT_EQ(got.size(), cands.size()) << tag;
    for (size_t i = 0; i < cands.size(); ++i) {
      EXPECT_NEAR(got[i].act, want[i].act, 1e-4 * std::max(1.0, std::fabs(want[i].act))) << tag << " candidate " << i;
      EXPECT_NEAR(got[i].search, want[i].search, 1e-4 * std::max(1.0, std::fabs(want[i].search))) << tag << " candidate " << i;
      EXPECT_NEAR(got[i].ce, want[i].ce, 1e-4) << tag << " candidate " << i;
      if (ce) EXPECT_GT(got[i].ce, 0.0) << tag;
    }
    // A budget that runs out: the scores cover a prefix of the candidates, within the budget.
    lumen::VizOptions small = o;
    small.budget_tokens = 150;
    lumen::viz::Objective tight(model, t, small, ce);
    auto part = tight.evaluate_edits(cands, bases);
    EXPECT_LE(tight.used(), small.budget_tokens) << tag;
    EXPECT_GT(part.size(), 150u / (T + 1)) << tag << ": sharing scores more than plain evaluation would";
    ASSERT_LT(part.size(), cands.size()) << tag;
    for (size_t i = 0; i < part.size(); ++i) EXPECT_NEAR(part[i].act, want[i].act, 1e-4 * std::max(1.0, std::fabs(want[i].act))) << tag;
  }
}

TEST(Viz, EditsShareTheBasePrefixAndMatchEvaluate) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  for (bool ce : {false, true}) expect_edits_match_evaluate(fx.model, fx.target(5), ce, "stories260K SAE latent");
}

// The tiny testdata checkpoints cover learned positions (gpt2), and a sliding window shorter than
// the sequence plus logit soft-caps (gemma2), on the cached path.
TEST(Viz, EditsMatchEvaluateOnTinyCheckpoints) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/tok512/tok512.bin");
  for (const char* name : {"gpt2_a", "llama_a", "gemma2_a"}) {
    const std::string dir = std::string("testdata/models/") + name;
    if (!lumen_test::path_exists(shared_path(dir))) continue;
    lumen::LoadOptions lo;
    lo.tokenizer_path = shared_path("testdata/tokenizers/tok512/tok512.bin");
    auto model = lumen::Model::load(shared_path(dir), lo);
    lumen::VizTarget t;
    t.hook = "blocks.0.mlp.hook_post";
    t.index = 3;
    for (bool ce : {false, true}) expect_edits_match_evaluate(model, t, ce, name);
  }
}

TEST(Viz, TokenGradientMatchesFiniteDifferences) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  lumen::VizOptions o;
  o.len = 5;
  lumen::viz::Objective obj(fx.model, fx.target(9), o, false);
  std::mt19937_64 rng(2);
  auto s = obj.random_seq(5, rng);
  auto g = obj.gradients({s})[0];  // [T,V]
  // Relaxed one-hot: move eps of mass at position p from the current token to token v.
  auto pre_of = [&](const torch::Tensor& oh) {
    lumen::HookSet hooks;
    hooks.cache("blocks.2.hook_resid_post");
    lumen::RunOptions ro;
    ro.hooks = &hooks;
    ro.input_embeds = fx.model.embed_one_hot(oh);
    fx.model.forward({}, ro);
    return fx.sae.pre_activation(hooks.get("blocks.2.hook_resid_post"))[0][-1][9].item<double>();
  };
  torch::NoGradGuard ng;
  auto base = torch::zeros({1, 6, 512});
  auto ids = with_bos(s);
  for (int i = 0; i < 6; ++i) base[0][i][ids[i]] = 1.0;
  const double eps = 1e-2;
  for (int64_t p : {0, 2, 4})
    for (int32_t v : {17, 300}) {
      auto dir = torch::zeros_like(base);
      dir[0][p + 1][v] = 1.0;
      dir[0][p + 1][ids[p + 1]] = -1.0;
      const double fd = (pre_of(base + eps * dir) - pre_of(base - eps * dir)) / (2 * eps);
      const double an = g[p][v].item<double>() - g[p][ids[p + 1]].item<double>();
      EXPECT_NEAR(fd, an, 2e-2 * std::max(1.0, std::fabs(an))) << "position " << p << " token " << v;
    }
}

TEST(Viz, MethodsStayInBudgetAndReturnValidSequences) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  const auto& tok = fx.model.require_tokenizer();
  for (const char* m : {"adapt", "gcg", "epo", "random"}) {
    lumen::VizOptions o;
    o.method = m;
    o.len = 6;
    o.budget_tokens = 12000;
    o.n_best = 3;
    auto r = lumen::visualize(fx.model, fx.target(11), o);
    EXPECT_LE(r.tokens_used, o.budget_tokens) << m;
    EXPECT_GT(r.tokens_used, o.budget_tokens / 2) << m << " should use its budget";
    ASSERT_FALSE(r.best.empty()) << m;
    for (size_t i = 0; i < r.best.size(); ++i) {
      const auto& b = r.best[i];
      ASSERT_EQ(b.ids.size(), 7u);
      EXPECT_TRUE(b.valid) << m;
      std::vector<int32_t> body(b.ids.begin() + 1, b.ids.end());
      EXPECT_EQ(tok.encode(tok.decode(body), false), body) << m << ": decode->encode";
      EXPECT_NEAR(b.activation, fx.reference(b.ids, 11)[-1].item<double>(), 1e-4) << m;
      if (i) EXPECT_LE(b.objective, r.best[i - 1].objective) << m << ": strongest first";
    }
  }
  // Dataset search takes windows of the given contexts that end at their maximum.
  lumen::VizOptions o;
  o.method = "dataset";
  o.len = 4;
  o.dataset_contexts = {{tok.encode("Once upon a time there was a little girl", true), 6}};
  auto r = lumen::visualize(fx.model, fx.target(11), o);
  ASSERT_EQ(r.best.size(), 1u);
  EXPECT_EQ(r.best[0].ids.size(), 5u);
}

TEST(Viz, BeamSearchIsExactForOneToken) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  for (int64_t latent : {3, 40}) {
    lumen::VizOptions o;
    o.len = 1;
    o.beam_width = 1;
    o.beam_budget_share = 1.0;  // room for every token of the one position (no gradient shortlist)
    o.budget_tokens = 2000;
    auto r = lumen::visualize(fx.model, fx.target(latent), o);
    ASSERT_FALSE(r.best.empty());
    // Brute force over every single token.
    lumen::VizOptions bo = o;
    bo.budget_tokens = 1 << 20;
    lumen::viz::Objective obj(fx.model, fx.target(latent), bo, false);
    std::vector<lumen::viz::Seq> all;
    for (int32_t t : obj.allowed())
      if (obj.valid({t})) all.push_back({t});
    auto sc = obj.evaluate(all);
    double best = -1e9;
    for (const auto& s : sc) best = std::max(best, s.search);
    EXPECT_NEAR(r.best[0].activation, best, 1e-5) << "latent " << latent;
  }
}

TEST(Viz, AdaptBeatsRandomSearch) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  double adapt = 0, random = 0;
  for (int64_t latent : {2, 21, 60}) {
    lumen::VizOptions o;
    o.len = 8;
    o.budget_tokens = 40000;
    o.method = "adapt";
    adapt += lumen::visualize(fx.model, fx.target(latent), o).best[0].activation;
    o.method = "random";
    random += lumen::visualize(fx.model, fx.target(latent), o).best[0].activation;
  }
  EXPECT_GT(adapt, random);
}

TEST(Viz, BadInputIsAnError) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx;
  lumen::VizOptions o;
  o.method = "annealing";
  EXPECT_THROW(lumen::visualize(fx.model, fx.target(1), o), lumen::Error);
  o.method = "adapt";
  EXPECT_THROW(lumen::visualize(fx.model, fx.target(500), o), lumen::Error);
  auto t = fx.target(1);
  t.hook = "blocks.9.hook_resid_post";
  EXPECT_THROW(lumen::visualize(fx.model, t, o), lumen::Error);
  std::vector<double> xs{1, 2, 3, 4};
  auto [m, h] = lumen::mean_ci95(xs);
  EXPECT_DOUBLE_EQ(m, 2.5);
  EXPECT_NEAR(h, 3.182 * std::sqrt(5.0 / 3.0 / 4.0), 1e-9);
}

// ---- the CLI contract: `viz --json` ids reproduce the activation through `lumen cache` ----------

using lumen_test::run_cli;

TEST(VizCli, JsonIdsReproduceThroughCache) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  Fixture fx("blocks.3.hook_resid_post");
  const std::string dir = lumen_test::temp_dir("vizsae");
  lumen::save_saelens(fx.sae, dir + "/sae");
  const std::string bin = shared_path("models/stories260K/stories260K.bin");
  for (const char* method : {"adapt", "gcg"}) {
    for (const char* position : {"last", "max"}) {
      auto r = run_cli("viz '" + bin + "' --sae '" + dir + "/sae' --latent 33 --method " + method + " --position " + position +
                   " --len 6 --budget 8000 --seed 4 -n 2 --json");
      ASSERT_EQ(r.code, 0) << r.err;
      auto j = nlohmann::json::parse(r.out);
      EXPECT_EQ(j["latent"], 33);
      EXPECT_EQ(j["method"], method);
      EXPECT_EQ(j["budget_tokens"], 8000);
      EXPECT_TRUE(j.contains("dataset_max"));
      ASSERT_GE(j["best"].size(), 1u);
      for (const auto& b : j["best"]) {
        for (const char* k : {"ids", "text", "activation", "normalized", "percentile", "ce"}) EXPECT_TRUE(b.contains(k)) << k;
        std::string ids;
        for (const auto& id : b["ids"]) ids += (ids.empty() ? "" : " ") + std::to_string(id.get<int>());
        const std::string out = dir + "/c.safetensors";
        auto c = run_cli("cache '" + bin + "' --ids '" + ids + "' --hooks blocks.3.hook_resid_post --out '" + out + "'");
        ASSERT_EQ(c.code, 0) << c.err;
        auto acts = fx.sae.encode(lumen::TensorStore::open(out).get("blocks.3.hook_resid_post")).select(-1, 33);
        const double want = std::string(position) == "last" ? acts[-1].item<double>()
                                                            : acts.narrow(0, 1, acts.size(0) - 1).max().item<double>();
        EXPECT_NEAR(b["activation"].get<double>(), want, 1e-4) << method << " " << position << " ids " << ids;
      }
    }
  }
  auto bad = run_cli("viz '" + bin + "' --sae '" + dir + "/sae' --latent 33 --method annealing");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("annealing"), std::string::npos) << bad.err;
}

}  // namespace
