// Hook points: names, shapes, the algebra between sites, interventions, gradients, stop_at_layer.
#include <torch/torch.h>

#include "common.h"
#include "lumen/error.h"
#include "lumen/model.h"

namespace {

using lumen_test::shared_path;

lumen::Model load(const std::string& name, c10::ScalarType dt = torch::kFloat) {
  lumen::LoadOptions lo;
  lo.dtype = dt;
  return lumen::Model::load(shared_path("testdata/models/" + name), lo);
}

torch::Tensor ids_for(const lumen::Model& m, int64_t T, int64_t seed = 0) {
  auto g = torch::arange(T, torch::kLong);
  return ((g * 7919 + seed * 104729 + 13) % m.config().d_vocab).unsqueeze(0);
}

double maxdiff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(HookNames, ParseAndPrintRoundTrip) {
  for (const auto& p : lumen::all_hook_points(3, true, true)) {
    auto q = lumen::HookPoint::parse(p.name());
    ASSERT_TRUE(q.has_value()) << p.name();
    EXPECT_EQ(q->name(), p.name());
    EXPECT_EQ(q->index(), p.index());
  }
  EXPECT_FALSE(lumen::HookPoint::parse("blocks.x.hook_resid_pre").has_value());
  EXPECT_FALSE(lumen::HookPoint::parse("blocks.0.hook_nothing").has_value());
  EXPECT_TRUE(lumen::hook_pattern_matches("blocks.*.hook_resid_post", "blocks.11.hook_resid_post"));
  EXPECT_FALSE(lumen::hook_pattern_matches("blocks.*.hook_resid_post", "blocks.1.hook_resid_pre"));
  EXPECT_TRUE(lumen::hook_pattern_matches("hook_embed, all", "anything"));
}

class EveryArch : public testing::TestWithParam<std::string> {};

TEST_P(EveryArch, CacheAllHasEverySiteWithConsistentAlgebra) {
  LUMEN_REQUIRE_SHARED("testdata/models/" + GetParam());
  torch::NoGradGuard ng;
  auto model = load(GetParam());
  const auto& c = model.config();
  const int64_t T = 9;
  lumen::HookSet hooks;
  hooks.cache("all");
  lumen::RunOptions ro;
  ro.hooks = &hooks;
  auto logits = model.forward(ids_for(model, T), ro);
  auto plain = model.forward(ids_for(model, T));
  EXPECT_TRUE(torch::equal(logits, plain)) << "caching must not change the output";
  for (const auto& name : model.hook_names()) EXPECT_TRUE(hooks.has(name)) << name;

  const int64_t H = c.n_heads, K = c.n_kv_heads, E = c.d_head, D = c.d_model;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    auto pre = hooks.get(b + "hook_resid_pre"), mid = hooks.get(b + "hook_resid_mid"), post = hooks.get(b + "hook_resid_post");
    EXPECT_LT(maxdiff(mid, pre + hooks.get(b + "hook_attn_out")), 1e-5);
    EXPECT_LT(maxdiff(post, mid + hooks.get(b + "hook_mlp_out")), 1e-5);
    if (l + 1 < c.n_layers) EXPECT_TRUE(torch::equal(post, hooks.get("blocks." + std::to_string(l + 1) + ".hook_resid_pre")));
    EXPECT_EQ(hooks.get(b + "attn.hook_q").sizes(), torch::IntArrayRef({1, T, H, E}));
    EXPECT_EQ(hooks.get(b + "attn.hook_k").sizes(), torch::IntArrayRef({1, T, K, E}));
    EXPECT_EQ(hooks.get(b + "attn.hook_v").sizes(), torch::IntArrayRef({1, T, K, E}));
    EXPECT_EQ(hooks.get(b + "attn.hook_z").sizes(), torch::IntArrayRef({1, T, H, E}));
    auto pattern = hooks.get(b + "attn.hook_pattern");
    EXPECT_EQ(pattern.sizes(), torch::IntArrayRef({1, H, T, T}));
    EXPECT_LT(maxdiff(pattern.sum(-1), torch::ones({1, H, T})), 1e-5);
    EXPECT_EQ(pattern.triu(1).abs().max().item<double>(), 0.0) << "causal";
    EXPECT_EQ(hooks.get(b + "mlp.hook_post").sizes(), torch::IntArrayRef({1, T, c.d_mlp}));
    EXPECT_EQ(pre.sizes(), torch::IntArrayRef({1, T, D}));
    // z is the pattern-weighted sum of values of the head's kv group.
    auto v = hooks.get(b + "attn.hook_v")[0];  // [T,K,E]
    const int64_t h = H - 1, kv = h / (H / K);
    auto z_h = torch::matmul(pattern[0][h], v.select(1, kv));
    EXPECT_LT(maxdiff(z_h, hooks.get(b + "attn.hook_z")[0].select(1, h)), 1e-5);
  }
}

TEST_P(EveryArch, PatchingTheLastResidualReproducesTheSourceRun) {
  LUMEN_REQUIRE_SHARED("testdata/models/" + GetParam());
  torch::NoGradGuard ng;
  auto model = load(GetParam());
  const std::string last = "blocks." + std::to_string(model.config().n_layers - 1) + ".hook_resid_post";
  lumen::HookSet src;
  src.cache(last);
  lumen::RunOptions ro;
  ro.hooks = &src;
  auto src_logits = model.forward(ids_for(model, 6, 1), ro);
  lumen::HookSet patch;
  patch.add(last, lumen::Intervention::replace(src.get(last)));
  ro.hooks = &patch;
  auto patched = model.forward(ids_for(model, 6, 2), ro);
  EXPECT_LT(maxdiff(patched, src_logits), 1e-5);
}

TEST_P(EveryArch, KvCacheDecodingMatchesFullForward) {
  LUMEN_REQUIRE_SHARED("testdata/models/" + GetParam());
  torch::NoGradGuard ng;
  auto model = load(GetParam());
  const int64_t T = std::min<int64_t>(20, model.config().n_ctx);
  auto ids = ids_for(model, T, 3);
  auto full = model.forward(ids);
  auto cache = model.new_cache(1, T);
  lumen::RunOptions ro;
  ro.cache = &cache;
  auto first = model.forward(ids.narrow(1, 0, 5), ro);
  EXPECT_LT(maxdiff(first, full.narrow(1, 0, 5)), 1e-5);
  for (int64_t t = 5; t < T; ++t) {
    auto step = model.forward(ids.narrow(1, t, 1), ro);
    EXPECT_LT(maxdiff(step[0][0], full[0][t]), 1e-4) << "position " << t;
  }
}

TEST_P(EveryArch, StopAtLayerReturnsTheResidualStream) {
  LUMEN_REQUIRE_SHARED("testdata/models/" + GetParam());
  torch::NoGradGuard ng;
  auto model = load(GetParam());
  lumen::HookSet hooks;
  hooks.cache("blocks.*.hook_resid_post");
  lumen::RunOptions ro;
  ro.hooks = &hooks;
  model.forward(ids_for(model, 5), ro);
  for (int64_t k = 0; k <= model.config().n_layers; ++k) {
    lumen::HookSet seen;
    seen.cache("blocks.*.hook_resid_pre");
    lumen::RunOptions so;
    so.stop_at_layer = k;
    so.hooks = &seen;
    auto out = model.forward(ids_for(model, 5), so);
    EXPECT_EQ(out.sizes(), torch::IntArrayRef({1, 5, model.config().d_model}));
    if (k > 0) EXPECT_TRUE(torch::equal(out, hooks.get("blocks." + std::to_string(k - 1) + ".hook_resid_post")));
    EXPECT_EQ(seen.cached().size(), static_cast<size_t>(k)) << "blocks past the stop must not run";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EveryArch, testing::Values("gpt2_b", "llama_b", "gemma2_b", "gemma2_a"));

TEST(Interventions, AddScaleZeroRespectPositionsAndHeads) {
  LUMEN_REQUIRE_SHARED("testdata/models/llama_b");
  torch::NoGradGuard ng;
  auto model = load("llama_b");
  const int64_t D = model.config().d_model;
  auto ids = ids_for(model, 6);
  lumen::HookSet base;
  base.cache("blocks.1.hook_resid_pre,blocks.1.attn.hook_z");
  lumen::RunOptions ro;
  ro.hooks = &base;
  model.forward(ids, ro);
  auto x = base.get("blocks.1.hook_resid_pre");
  auto z = base.get("blocks.1.attn.hook_z");

  torch::Tensor seen;
  auto record = lumen::Intervention::callback([&](const at::Tensor& t, const lumen::HookContext&) {
    seen = t.clone();
    return at::Tensor();
  });
  auto vec = torch::randn({D});
  lumen::HookSet add;
  add.add("blocks.1.hook_resid_pre", lumen::Intervention::add(vec, {2, -1})).add("blocks.1.hook_resid_pre", record);
  ro.hooks = &add;
  model.forward(ids, ro);
  auto want = x.clone();
  want[0][2] += vec;
  want[0][5] += vec;
  EXPECT_LT(maxdiff(seen, want), 1e-6);

  lumen::HookSet scale;
  scale.add("blocks.1.hook_resid_pre", lumen::Intervention::scale(3.0, {0})).add("blocks.1.hook_resid_pre", record);
  ro.hooks = &scale;
  model.forward(ids, ro);
  want = x.clone();
  want[0][0] *= 3.0;
  EXPECT_LT(maxdiff(seen, want), 1e-6);

  lumen::HookSet zero_head;
  zero_head.add("blocks.1.attn.hook_z", lumen::Intervention::zero().on_heads({1})).add("blocks.1.attn.hook_z", record);
  ro.hooks = &zero_head;
  model.forward(ids, ro);
  want = z.clone();
  want.select(2, 1).zero_();
  EXPECT_LT(maxdiff(seen, want), 1e-7);

  lumen::HookSet mean;
  auto mu = x.mean(1)[0];  // [D]
  mean.add("blocks.1.hook_resid_pre", lumen::Intervention::mean_ablate(mu, {3})).add("blocks.1.hook_resid_pre", record);
  ro.hooks = &mean;
  model.forward(ids, ro);
  want = x.clone();
  want[0][3] = mu;
  EXPECT_LT(maxdiff(seen, want), 1e-6);
}

TEST(Interventions, UnknownHookNamesFailWithAClearMessage) {
  LUMEN_REQUIRE_SHARED("testdata/models/gpt2_a");
  auto model = load("gpt2_a");
  lumen::HookSet bad;
  bad.cache("blocks.7.hook_resid_post");
  lumen::RunOptions ro;
  ro.hooks = &bad;
  try {
    model.forward(ids_for(model, 3), ro);
    FAIL() << "expected lumen::Error";
  } catch (const lumen::Error& e) {
    EXPECT_EQ(e.kind(), lumen::ErrorKind::Hook);
    EXPECT_NE(std::string(e.what()).find("blocks.7.hook_resid_post"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("2 layers"), std::string::npos) << e.what();
  }
  lumen::HookSet typo;
  typo.add("blocks.0.hook_resid_psot", lumen::Intervention::zero());
  ro.hooks = &typo;
  EXPECT_THROW(model.forward(ids_for(model, 3), ro), lumen::Error);
  lumen::HookSet gated;  // gpt2 has no gated MLP
  gated.cache("blocks.0.mlp.hook_pre_linear");
  ro.hooks = &gated;
  EXPECT_THROW(model.forward(ids_for(model, 3), ro), lumen::Error);
}

// Gradients to a hook tensor agree with finite differences (float64 model).
TEST(Gradients, WatchedSiteMatchesFiniteDifferences) {
  LUMEN_REQUIRE_SHARED("testdata/models/gemma2_b");
  auto model = load("gemma2_b", torch::kDouble);
  auto ids = ids_for(model, 7);
  const std::string site = "blocks.1.hook_resid_mid";
  auto loss_of = [&](lumen::HookSet* hs) {
    lumen::RunOptions ro;
    ro.hooks = hs;
    auto logits = model.forward(ids, ro);
    return torch::log_softmax(logits[0][6], -1)[5] + logits[0][3][11] * 0.5;
  };
  lumen::HookSet w;
  w.watch(site);
  auto loss = loss_of(&w);
  auto grads = w.gradients(loss);
  ASSERT_EQ(grads.count(site), 1u);
  auto g = grads[site][0];  // [T,D]
  torch::NoGradGuard ng;
  const double eps = 1e-6;
  for (auto [p, d] : std::vector<std::pair<int64_t, int64_t>>{{2, 3}, {3, 40}, {6, 95}, {0, 0}}) {
    auto delta = torch::zeros({model.config().d_model}, torch::kDouble);
    delta[d] = eps;
    lumen::HookSet plus, minus;
    plus.add(site, lumen::Intervention::add(delta, {p}));
    minus.add(site, lumen::Intervention::add(-delta, {p}));
    const double fd = (loss_of(&plus) - loss_of(&minus)).item<double>() / (2 * eps);
    EXPECT_NEAR(g[p][d].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << "pos " << p << " dim " << d;
  }
  // positions after the target cannot influence it
  EXPECT_EQ(grads[site][0].narrow(0, 7, 0).numel(), 0);
}

TEST(Gradients, OneHotTokenPathEqualsEmbeddingGradient) {
  LUMEN_REQUIRE_SHARED("testdata/models/llama_b");
  auto model = load("llama_b", torch::kDouble);
  const int64_t V = model.config().d_vocab;
  auto ids = ids_for(model, 5);
  auto one_hot = torch::one_hot(ids, V).to(torch::kDouble).requires_grad_(true);
  lumen::HookSet w;
  w.watch("hook_embed");
  lumen::RunOptions ro;
  ro.hooks = &w;
  ro.input_embeds = model.embed_one_hot(one_hot);
  auto logits = model.forward(torch::Tensor(), ro);
  auto loss = logits[0][4].logsumexp(-1) - logits[0][4][7];
  auto g_embed = w.gradients(loss, true)["hook_embed"][0];  // [T,D]
  auto g_onehot = torch::autograd::grad({loss}, {one_hot})[0][0];  // [T,V]
  auto expect = torch::matmul(g_embed * model.config().embed_scale, model.embed_tokens(torch::arange(V).unsqueeze(0))[0].t());
  EXPECT_LT(maxdiff(g_onehot, expect), 1e-10);
  // the one-hot path reproduces the token path's forward
  torch::NoGradGuard ng;
  EXPECT_LT(maxdiff(logits.detach(), model.forward(ids)), 1e-10);
}

}  // namespace
