// Feature circuits: the toy's known answer, IG's completeness at one site, estimates against exact
// patching, faithfulness of the full circuit, the output contract, and the CLI.
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "circuits/internal.h"
#include "common.h"
#include "lumen/circuits.h"
#include "lumen/error.h"
#include "lumen/files.h"

using lumen_test::shared_path;

namespace {

const char* kModel = "models/stories260K/stories260K.bin";

lumen::Sae random_sae(const lumen::Model& model, int layer, uint64_t seed) {
  lumen::SaeConfig c;
  c.arch = lumen::SaeArch::TopK;
  c.k = 8;
  c.d_in = model.config().d_model;
  c.d_sae = 96;
  c.hook_name = "blocks." + std::to_string(layer) + ".hook_resid_post";
  return lumen::Sae::init(c, seed);
}

}  // namespace

TEST(CircuitToy, KnownAnswer) {
  const auto r = lumen::run_toy_sva({});
  EXPECT_GE(r.accuracy, 0.99);
  EXPECT_LT(r.sae_fvu, 0.2);
  // The latent that matters most reads the subject's number, not the distractor's.
  ASSERT_GE(r.top_feature, 0);
  EXPECT_GT(std::fabs(r.top_subject_corr), 0.8);
  EXPECT_GT(std::fabs(r.top_subject_corr), std::fabs(r.top_distractor_corr) + 0.3);
  std::map<std::string, int> kinds;
  for (const auto& n : r.graph.nodes) kinds[n.kind]++;
  EXPECT_EQ(kinds["input"], 2);
  EXPECT_EQ(kinds["hidden"], 4);
  EXPECT_EQ(kinds["output"], 2);
  EXPECT_GE(kinds["feature"], 1);
  // Patching the subject moves m; the distractor is the same in both prompts, so it cannot.
  EXPECT_GT(std::fabs(r.graph.nodes[0].effect), 0.5);
  EXPECT_NEAR(r.graph.nodes[1].effect, 0.0, 1e-6);
  // IG is complete at each stage: the input effects add up to m(patch) - m(clean).
  EXPECT_NEAR(r.graph.nodes[0].effect + r.graph.nodes[1].effect, r.graph.m_patch - r.graph.m_clean,
              0.05 * std::fabs(r.graph.m_patch - r.graph.m_clean));
  bool subject_link = false;
  for (const auto& l : r.graph.links) subject_link |= r.graph.nodes[l.source].id == "x.subject";
  EXPECT_TRUE(subject_link);
  ASSERT_FALSE(r.graph.curve.empty());
  EXPECT_NEAR(r.graph.curve.back().faithfulness, 1.0, 1e-4);  // every latent and the error kept
  // Same seed, same graph.
  const auto r2 = lumen::run_toy_sva({});
  EXPECT_EQ(r2.top_feature, r.top_feature);
  EXPECT_DOUBLE_EQ(r2.graph.nodes[0].effect, r.graph.nodes[0].effect);
}

TEST(CircuitData, LoadTemplatesAndTokenize) {
  LUMEN_REQUIRE_SHARED(kModel);
  LUMEN_REQUIRE_SHARED("data/sva/simple_test.json");
  auto pairs = lumen::load_sva_jsonl(shared_path("data/sva/simple_test.json"), 20);
  ASSERT_EQ(pairs.size(), 20u);
  EXPECT_EQ(pairs[0].clean_prefix.substr(0, 4), "The ");
  EXPECT_THROW(lumen::load_sva_jsonl(shared_path("data/sva/missing.json")), lumen::Error);
  auto model = lumen::Model::load(shared_path(kModel));
  // Without a tokenizer to match lengths, tok512's plural "s" token drops most pairs ...
  auto loose = lumen::tokenize_sva(model, lumen::sva_template_pairs(40, 3, "all"));
  EXPECT_GT(loose.dropped, 0);
  EXPECT_EQ(static_cast<int64_t>(loose.examples.size()) + loose.dropped, 40);
  // ... with the model, determiners are chosen so that every pair keeps.
  auto t = lumen::sva_template_pairs(40, 3, "all", &model);
  ASSERT_EQ(t.size(), 40u);
  int plural = 0;
  for (const auto& p : t) {
    EXPECT_NE(p.clean_prefix, p.patch_prefix);
    EXPECT_NE(p.clean_answer, p.patch_answer);
    plural += p.kind.rfind("plural", 0) == 0;
  }
  EXPECT_EQ(plural, 20);
  auto d = lumen::tokenize_sva(model, t);
  EXPECT_EQ(d.examples.size(), 40u);
  EXPECT_EQ(d.dropped, 0);
  for (const auto& e : d.examples) EXPECT_EQ(e.clean.size(), e.patch.size());
  // " is" is more than one token in tok512: the word scorer must see every piece.
  const auto nw = lumen::new_word_mask(model);
  EXPECT_GT(nw.sum().item<int64_t>(), 10);
  EXPECT_LT(nw.sum().item<int64_t>(), model.config().d_vocab);
  const auto acc = lumen::sva_accuracy(model, d);
  EXPECT_GT(acc.accuracy, 0.0);
  EXPECT_LE(acc.accuracy, 1.0);
}

TEST(CircuitModel, IntegratedGradientsAreCompleteAtOneSite) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = lumen::Model::load(shared_path(kModel));
  const auto data = lumen::tokenize_sva(model, lumen::sva_template_pairs(16, 1, "simple", &model));
  ASSERT_GT(data.examples.size(), 4u);
  const int layer = 2;
  std::vector<lumen::Sae> saes{random_sae(model, layer, 7)};
  lumen::CircuitOptions o;
  o.method = lumen::AttributionMethod::IG;
  o.ig_steps = 16;
  o.node_threshold = 0.0;
  o.exact_nodes = 12;
  o.batch = 64;
  o.sweep = {0.0};
  o.log = [](const std::string&) {};
  const auto r = lumen::find_circuit(model, saes, data, o);
  ASSERT_LE(r.total_nodes, 200);  // every candidate with an effect is listed in top_nodes
  double sum = 0;
  for (const auto& n : r.top_nodes) sum += n.effect;

  // The exact value: the site's prefix positions patched wholesale (latents + error = the
  // residual stream) from the patch prompts, the answer positions left to run.
  torch::NoGradGuard ng;
  const auto nw = lumen::new_word_mask(model);
  const std::string hook = "blocks." + std::to_string(layer) + ".hook_resid_post";
  double exact = 0;
  for (const auto& b : lumen::circuits::batches_by_length(data, 64, -1)) {
    auto rc = lumen::circuits::build_rows(b, false, lumen::circuits::pad_id(model));
    auto rp = lumen::circuits::build_rows(b, true, lumen::circuits::pad_id(model));
    lumen::HookSet hp;
    hp.cache(hook);
    lumen::circuits::forward_with(model, rp.tokens, hp);
    auto x = hp.get(hook);
    std::vector<int64_t> pos;
    for (int64_t t = 0; t < rc.T; ++t) pos.push_back(t);
    lumen::HookSet hc;
    hc.add(hook, lumen::Intervention::replace(x, pos));
    const auto m1 = lumen::circuits::word_metric(lumen::circuits::forward_with(model, rc.tokens, hc), rc, nw);
    const auto m0 = lumen::circuits::word_metric(model.forward(rc.tokens), rc, nw);
    exact += (m1 - m0).sum().item<double>();
  }
  exact /= static_cast<double>(data.examples.size());
  EXPECT_NEAR(sum, exact, 0.05 * std::fabs(exact) + 1e-3) << "IG sum " << sum << " vs exact " << exact;
  EXPECT_GT(std::fabs(exact), 0.05);
  // Single-node estimates against single-node patches.
  EXPECT_EQ(r.exact_checked, 12);
  EXPECT_GT(r.exact_correlation, 0.7);
  // Every node kept: the model itself; nothing kept: m(empty).
  ASSERT_FALSE(r.curve.empty());
  EXPECT_NEAR(r.faithfulness, 1.0, 1e-3);
  EXPECT_NEAR(r.completeness, 0.0, 1e-3);
  EXPECT_NEAR(r.accuracy, lumen::sva_accuracy(model, data).accuracy, 1e-9);
}

TEST(CircuitModel, AttributionPatchingTwoSitesWritesTheGraph) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = lumen::Model::load(shared_path(kModel));
  const auto data = lumen::tokenize_sva(model, lumen::sva_template_pairs(16, 2, "simple", &model));
  std::vector<lumen::Sae> saes{random_sae(model, 3, 9), random_sae(model, 1, 8)};  // any order
  lumen::CircuitOptions o;
  o.method = lumen::AttributionMethod::AtP;
  o.keep_positions = true;
  o.node_threshold = 0.02;
  o.edge_threshold = 0.0;
  o.exact_nodes = 8;
  o.log = [](const std::string&) {};
  auto r = lumen::find_circuit(model, saes, data, o);
  ASSERT_GE(r.nodes.size(), 2u);
  EXPECT_EQ(r.nodes.back().kind, "output");
  EXPECT_FALSE(r.links.empty());
  for (const auto& l : r.links) {
    // Links run forward: from an earlier layer to a later one (or to the output).
    EXPECT_LT(r.nodes[l.source].layer, r.nodes[l.target].layer);
    EXPECT_TRUE(std::isfinite(l.weight));
  }
  for (size_t i = 1; i < r.curve.size(); ++i) EXPECT_GE(r.curve[i].n_nodes, r.curve[i - 1].n_nodes);
  const std::string dir = lumen_test::temp_dir("circuit");
  lumen::write_circuit(r, dir, "test");
  const auto g = nlohmann::json::parse(lumen::read_file(dir + "/graph.json"));
  ASSERT_TRUE(g["nodes"].is_array() && g["links"].is_array());
  EXPECT_EQ(g["nodes"].size(), r.nodes.size());
  for (const char* k : {"id", "layer", "site", "position", "feature", "activation", "effect", "label"})
    EXPECT_TRUE(g["nodes"][0].contains(k)) << k;
  for (const char* k : {"source", "target", "weight"}) EXPECT_TRUE(g["links"][0].contains(k)) << k;
  const auto f = nlohmann::json::parse(lumen::read_file(dir + "/faithfulness.json"));
  ASSERT_TRUE(f.is_array());
  for (const char* k : {"node_threshold", "n_nodes", "faithfulness", "completeness"}) EXPECT_TRUE(f[0].contains(k)) << k;
  for (const char* file : {"/circuit.dot", "/circuit.html", "/faithfulness.svg"}) EXPECT_TRUE(lumen::file_exists(dir + file)) << file;
  EXPECT_NE(lumen::read_file(dir + "/circuit.html").find("<svg"), std::string::npos);
}

TEST(CircuitCli, ToyAndErrors) {
  LUMEN_REQUIRE_SHARED(kModel);
  const char* env = std::getenv("LUMEN_CLI");
  const std::string cli = env ? env : std::string(LUMEN_BINARY_DIR) + "/lumen";
  const std::string dir = lumen_test::temp_dir("toycli");
  ASSERT_EQ(std::system((cli + " toy sva --seed 1 --out " + dir + " > " + dir + "/log.txt").c_str()), 0);
  const auto g = nlohmann::json::parse(lumen::read_file(dir + "/graph.json"));
  EXPECT_GE(g["nodes"].size(), 9u);
  // A user mistake is one line and a non-zero exit, not a crash.
  const std::string model = shared_path(kModel);
  EXPECT_NE(std::system((cli + " circuit '" + model + "' --sae /nonexistent --template sva 2> " + dir + "/err.txt").c_str()), 0);
  EXPECT_NE(lumen::read_file(dir + "/err.txt").find("lumen:"), std::string::npos);
}
