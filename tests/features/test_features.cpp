// Feature store: statistics are consistent, a killed harvest resumes to the same store, shards merge
// into the single-harvest result, and the JSON contract holds.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/error.h"
#include "lumen/features.h"
#include "lumen/files.h"
#include "lumen/sae.h"

namespace {

using lumen_test::shared_path;

struct Fixture {
  lumen::Model model = lumen::Model::load(shared_path("models/stories260K/stories260K.bin"));
  std::vector<lumen::FeatureSource> sources = {lumen::neuron_feature_source(model, 1), lumen::neuron_feature_source(model, 3)};
  lumen::HarvestOptions opt(const std::string& out) {
    lumen::HarvestOptions o;
    o.corpus = shared_path("data/tinystories/train.txt");
    o.out = out;
    o.tokens = 8192;
    o.ctx_len = 32;
    o.batch = 8;
    o.top_k = 5;
    o.commit_every = 16;
    o.log = [](const std::string&) {};
    return o;
  }
};

void expect_same_store(const std::string& a, const std::string& b, double sum_tol) {
  auto sa = lumen::FeatureStore::open(a), sb = lumen::FeatureStore::open(b);
  ASSERT_EQ(sa.sources(), sb.sources());
  for (const auto& src : sa.sources()) {
    for (int64_t f = 0; f < sa.n_features(src); ++f) {
      auto x = sa.info(src, f), y = sb.info(src, f);
      ASSERT_EQ(x.tokens, y.tokens);
      ASSERT_EQ(x.nonzero, y.nonzero) << src << " " << f;
      ASSERT_EQ(x.histogram, y.histogram) << src << " " << f;
      ASSERT_EQ(x.max, y.max);
      ASSERT_NEAR(x.mean, y.mean, sum_tol);
      ASSERT_EQ(x.contexts.size(), y.contexts.size()) << src << " " << f;
      for (size_t i = 0; i < x.contexts.size(); ++i) {
        ASSERT_EQ(x.contexts[i].window, y.contexts[i].window) << src << " " << f << " rank " << i;
        ASSERT_EQ(x.contexts[i].tokens, y.contexts[i].tokens);
        ASSERT_EQ(x.contexts[i].acts, y.contexts[i].acts);
      }
    }
  }
}

TEST(Features, StatisticsAreConsistent) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  LUMEN_REQUIRE_SHARED("data/tinystories/train.txt");
  Fixture fx;
  const std::string out = lumen_test::temp_dir("feat") + "/f.db";
  auto r = lumen::harvest_features(fx.model, fx.sources, fx.opt(out));
  EXPECT_TRUE(r.finished);
  auto store = lumen::FeatureStore::open(out);
  ASSERT_EQ(store.sources().size(), 2u);
  int checked = 0;
  for (int64_t f = 0; f < store.n_features("blocks.1.mlp.hook_post"); f += 17) {
    auto fi = store.info("blocks.1.mlp.hook_post", f);
    EXPECT_EQ(fi.tokens, r.tokens);
    EXPECT_NEAR(fi.density, static_cast<double>(fi.nonzero) / fi.tokens, 1e-12);
    int64_t hist_total = 0;
    for (auto c : fi.histogram) hist_total += c;
    EXPECT_EQ(hist_total, fi.nonzero);
    if (fi.contexts.empty()) continue;
    EXPECT_FLOAT_EQ(fi.contexts[0].max, static_cast<float>(fi.max));
    for (size_t i = 1; i < fi.contexts.size(); ++i) EXPECT_GE(fi.contexts[i - 1].max, fi.contexts[i].max);
    for (const auto& c : fi.contexts) EXPECT_FLOAT_EQ(*std::max_element(c.acts.begin(), c.acts.end()), c.max);
    EXPECT_DOUBLE_EQ(store.percentile("blocks.1.mlp.hook_post", f, fi.max * 2), 1.0);
    EXPECT_DOUBLE_EQ(store.percentile("blocks.1.mlp.hook_post", f, -1.0), 0.0);
    EXPECT_NEAR(store.percentile("blocks.1.mlp.hook_post", f, 0.0), 1.0 - fi.density, 1e-9);
    EXPECT_LE(fi.quantiles[0].second, fi.quantiles[2].second);
    EXPECT_EQ(fi.top_logits.size(), 10u);
    ++checked;
  }
  EXPECT_GT(checked, 3);
  auto top = store.top("blocks.3.mlp.hook_post", "max", 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_GE(top[0].second, top[1].second);
  // The JSON contract.
  auto j = nlohmann::json::parse(lumen::feature_info_json(store.info("blocks.3.mlp.hook_post", top[0].first)));
  for (const char* k : {"max", "mean", "density", "quantiles", "top_contexts", "logit_effects"}) EXPECT_TRUE(j.contains(k)) << k;
  for (const char* q : {"0.5", "0.9", "0.99"}) EXPECT_TRUE(j["quantiles"].contains(q)) << q;
  EXPECT_TRUE(j["top_contexts"][0].contains("tokens") && j["top_contexts"][0].contains("activations"));
  EXPECT_EQ(j["logit_effects"]["top"].size(), 10u);
  // A second harvest into the same store without --resume is refused.
  EXPECT_THROW(lumen::harvest_features(fx.model, fx.sources, fx.opt(out)), lumen::Error);
}

TEST(Features, KilledHarvestResumesToTheSameStore) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  LUMEN_REQUIRE_SHARED("data/tinystories/train.txt");
  Fixture fx;
  const std::string dir = lumen_test::temp_dir("resume");
  lumen::harvest_features(fx.model, fx.sources, fx.opt(dir + "/full.db"));
  auto o = fx.opt(dir + "/part.db");
  o.stop_after_windows = 96;
  auto first = lumen::harvest_features(fx.model, fx.sources, o);
  EXPECT_FALSE(first.finished);
  o.stop_after_windows = -1;
  o.resume = true;
  auto second = lumen::harvest_features(fx.model, fx.sources, o);
  EXPECT_TRUE(second.finished);
  expect_same_store(dir + "/full.db", dir + "/part.db", 0.0);
  // Resuming with other options is refused.
  o.top_k = 7;
  EXPECT_THROW(lumen::harvest_features(fx.model, fx.sources, o), lumen::Error);
}

TEST(Features, ShardsMergeIntoTheSingleHarvest) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  LUMEN_REQUIRE_SHARED("data/tinystories/train.txt");
  Fixture fx;
  const std::string dir = lumen_test::temp_dir("merge");
  lumen::harvest_features(fx.model, fx.sources, fx.opt(dir + "/full.db"));
  for (int i = 0; i < 2; ++i) {
    auto o = fx.opt(dir + "/s" + std::to_string(i) + ".db");
    o.shard = i;
    o.n_shards = 2;
    lumen::harvest_features(fx.model, fx.sources, o);
  }
  lumen::merge_feature_stores(dir + "/merged.db", {dir + "/s0.db", dir + "/s1.db"});
  expect_same_store(dir + "/full.db", dir + "/merged.db", 1e-9);
  EXPECT_THROW(lumen::merge_feature_stores(dir + "/bad.db", {dir + "/s0.db", dir + "/s0.db"}), lumen::Error);
}

}  // namespace

namespace {
// A TopK SAE on blocks.2.hook_resid_post with seeded random weights: sparse, non-negative codes.
lumen::Sae random_topk_sae(const lumen::Model& model, uint64_t seed) {
  lumen::SaeConfig c;
  c.arch = lumen::SaeArch::TopK;
  c.d_in = model.config().d_model;
  c.d_sae = 96;
  c.k = 6;
  c.hook_name = "blocks.2.hook_resid_post";
  return lumen::Sae::init(c, seed);
}
}  // namespace

TEST(Features, ThreadCountDoesNotChangeTheStore) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  LUMEN_REQUIRE_SHARED("data/tinystories/train.txt");
  Fixture fx;
  // Sparse SAE sources take the firing-entries-only path; neurons the dense one.
  auto sources = fx.sources;
  sources.push_back(lumen::sae_feature_source(random_topk_sae(fx.model, 1)));
  const std::string dir = lumen_test::temp_dir("feat_threads");
  auto one = fx.opt(dir + "/one.db"), two = fx.opt(dir + "/two.db");
  one.threads = 1;
  two.threads = 3;
  lumen::harvest_features(fx.model, sources, one);
  lumen::harvest_features(fx.model, sources, two);
  expect_same_store(dir + "/one.db", dir + "/two.db", 0.0);
  // And the sparse path's statistics match their definition on the SAE source.
  auto st = lumen::FeatureStore::open(dir + "/one.db");
  const std::string src = sources.back().name;
  int64_t fired = 0;
  for (int64_t f = 0; f < st.n_features(src); ++f) {
    auto info = st.info(src, f);
    int64_t hist_total = 0;
    for (auto h : info.histogram) hist_total += h;
    EXPECT_EQ(hist_total, info.nonzero) << "feature " << f;
    if (info.nonzero > 0) EXPECT_GT(info.max, 0.0);
    for (const auto& c : info.contexts) EXPECT_GT(c.max, 0.0f) << "a context of feature " << f << " never fired";
    fired += info.nonzero;
  }
  // k = 6 latents fire at every token (TopK on a random SAE keeps positive values almost always).
  EXPECT_GT(fired, 3 * st.info(src, 0).tokens);
}
