// The engine and the methods on an accelerator (LUMEN_TEST_DEVICE, cuda by default): parity with
// the float64 references, run.c's generations, hooks, gradients, SAEs, feature visualization and
// circuits, each against the reference or against the same computation on the CPU. They skip,
// saying so, where the device is missing. (Seeded sampling on the device: tests/model/test_generate.cpp.)
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common.h"
#include "device.h"
#include "lumen/circuits.h"
#include "lumen/error.h"
#include "lumen/generate.h"
#include "lumen/model.h"
#include "lumen/sae.h"
#include "lumen/tensors.h"
#include "lumen/viz.h"

namespace {

using lumen_test::shared_path;

const char* kStories = "models/stories260K/stories260K.bin";

lumen::Model load_on(const std::string& rel, c10::Device dev, c10::ScalarType dt = torch::kFloat) {
  lumen::LoadOptions lo;
  lo.device = dev;
  lo.dtype = dt;
  return lumen::Model::load(shared_path(rel), lo);
}

double maxdiff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  auto x = a.cpu().to(torch::kDouble), y = b.cpu().to(torch::kDouble);
  // Masked attention scores hold -inf on both sides.
  return torch::where(x == y, torch::zeros_like(x), (x - y).abs()).max().item<double>();
}

torch::Tensor ids_for(int64_t vocab, int64_t T, int64_t seed = 0) {
  auto g = torch::arange(T, torch::kLong);
  return ((g * 7919 + seed * 104729 + 13) % vocab).unsqueeze(0);
}

// Needs no GPU: the names every --device and --dtype go through.
TEST(Device, NamesParseAndBadOnesAreArgumentErrors) {
  EXPECT_EQ(lumen::parse_device("cpu"), c10::Device(c10::kCPU));
  EXPECT_EQ(lumen::parse_dtype("bf16"), torch::kBFloat16);
  EXPECT_EQ(lumen::parse_dtype("float16"), torch::kHalf);
  auto kind_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const lumen::Error& e) {
      return e.kind();
    }
    return lumen::ErrorKind::Runtime;  // no error: not Arg
  };
  EXPECT_EQ(kind_of([] { lumen::parse_device("tpu"); }), lumen::ErrorKind::Arg);
  EXPECT_EQ(kind_of([] { lumen::parse_device("cuda:x"); }), lumen::ErrorKind::Arg);
  EXPECT_EQ(kind_of([] { lumen::parse_dtype("f8"); }), lumen::ErrorKind::Arg);
  if (!torch::cuda::is_available()) EXPECT_EQ(kind_of([] { lumen::parse_device("cuda"); }), lumen::ErrorKind::Arg);
  else EXPECT_EQ(kind_of([] { lumen::parse_device("cuda:999"); }), lumen::ErrorKind::Arg);
}

TEST(Device, ParityWithFloat64References) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED("testdata/models");
  torch::NoGradGuard ng;
  for (const char* name : {"gpt2_a", "gpt2_b", "llama_a", "llama_b", "gemma2_a", "gemma2_b"}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string("testdata/models/") + name;
    auto model = load_on(dir, lumen_test::device());
    ASSERT_EQ(model.device().type(), lumen_test::device().type());
    ASSERT_TRUE(model.device().is_cpu() || model.device().has_index()) << "cuda resolves to cuda:N";
    auto ref = lumen::TensorStore::open(shared_path(dir + "/ref/T33.f64.safetensors"));
    auto ids = ref.get("input_ids").to(torch::kLong).unsqueeze(0).to(model.device());
    lumen::HookSet hooks;
    hooks.cache("blocks.*.hook_resid_post,ln_final.hook_normalized");
    lumen::RunOptions ro;
    ro.hooks = &hooks;
    auto logits = model.forward(ids, ro);
    EXPECT_EQ(logits.device(), model.device());
    EXPECT_LT(maxdiff(logits[0], ref.get("logits")), 1e-4);
    for (int64_t l = 0; l < model.config().n_layers; ++l) {
      const std::string h = "blocks." + std::to_string(l) + ".hook_resid_post";
      EXPECT_EQ(hooks.get(h).device(), model.device()) << h;
      EXPECT_LT(maxdiff(hooks.get(h)[0], ref.get("resid_post." + std::to_string(l))), 1e-4) << h;
    }
    EXPECT_LT(maxdiff(hooks.get("ln_final.hook_normalized")[0], ref.get("final_norm")), 1e-4);
  }
  auto stories = load_on(kStories, lumen_test::device());
  for (const char* slug : {"once_upon_a_time", "lily_and_tom", "the_cat"}) {
    auto ref = lumen::TensorStore::open(shared_path(std::string("testdata/llama2c/stories260K/") + slug + ".f64.safetensors"));
    auto ids = ref.get("input_ids").to(torch::kLong).unsqueeze(0);  // on the CPU: forward moves them
    EXPECT_LT(maxdiff(stories.forward(ids)[0], ref.get("logits")), 1e-4) << slug;
  }
}

TEST(Device, GreedyGenerationEqualsRunCAlsoInABatch) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED("testdata/llama2c/stories260K/generations.json");
  auto model = load_on(kStories, lumen_test::device());
  std::ifstream in(shared_path("testdata/llama2c/stories260K/generations.json"));
  auto j = nlohmann::json::parse(in);
  std::vector<nlohmann::json> cases;
  if (j.is_array()) {
    for (auto& g : j) cases.push_back(g);
  } else if (j.contains("cases")) {
    for (auto& g : j["cases"]) cases.push_back(g);
  } else {
    for (auto& kv : j.items())
      if (kv.value().is_object() && kv.value().contains("all_ids")) cases.push_back(kv.value());
  }
  ASSERT_EQ(cases.size(), 3u);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& g : cases) {
    auto prompt = g.at("prompt_ids_with_bos").get<std::vector<int32_t>>();
    lumen::GenerateOptions go;
    go.max_new_tokens = 64 - (static_cast<int64_t>(prompt.size()) - 1);  // run.c -n 64
    EXPECT_EQ(lumen::generate(model, {prompt}, go).tokens[0], g.at("all_ids").get<std::vector<int32_t>>());
    prompts.push_back(prompt);
  }
  lumen::GenerateOptions go;
  go.max_new_tokens = 24;
  auto batched = lumen::generate(model, prompts, go);
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(batched.tokens[i], lumen::generate(model, {prompts[i]}, go).tokens[0]) << "prompt " << i;
}

// Every cached site, the interventions (given CPU tensors) and KV-cache decoding agree with the CPU.
TEST(Device, HooksInterventionsAndKvCacheMatchTheCpu) {
  LUMEN_REQUIRE_DEVICE();
  for (const char* name : {"llama_b", "gemma2_a", "gpt2_b"}) {
    SCOPED_TRACE(name);
    LUMEN_REQUIRE_SHARED(std::string("testdata/models/") + name);
    torch::NoGradGuard ng;
    const std::string dir = std::string("testdata/models/") + name;
    auto cpu = load_on(dir, c10::kCPU);
    auto dev = load_on(dir, lumen_test::device());
    const auto& c = cpu.config();
    auto ids = ids_for(c.d_vocab, 9);
    lumen::HookSet hc, hd;
    hc.cache("all");
    hd.cache("all");
    lumen::RunOptions rc, rd;
    rc.hooks = &hc;
    rd.hooks = &hd;
    EXPECT_LT(maxdiff(cpu.forward(ids, rc), dev.forward(ids.to(dev.device()), rd)), 1e-4);
    for (const auto& n : cpu.hook_names()) {
      ASSERT_TRUE(hd.has(n)) << n;
      EXPECT_EQ(hd.get(n).device(), dev.device()) << n;
      EXPECT_LT(maxdiff(hc.get(n), hd.get(n)), 1e-4) << n;
    }

    // Interventions built from CPU tensors, restricted to positions and heads.
    const std::string site = "blocks.1.hook_resid_pre";
    auto vec = torch::randn({c.d_model});
    auto mu = hc.get(site).mean(1)[0];
    auto patch = hc.get(site) * 0.5;
    auto run_with = [&](const lumen::Model& m, lumen::HookSet& hs) {
      lumen::RunOptions ro;
      ro.hooks = &hs;
      return m.forward(ids.to(m.device()), ro);
    };
    lumen::HookSet iv;
    iv.add(site, lumen::Intervention::add(vec, {2, -1}))
        .add(site, lumen::Intervention::scale(3.0, {0}))
        .add(site, lumen::Intervention::mean_ablate(mu, {3}))
        .add(site, lumen::Intervention::replace(patch, {5}))
        .add("blocks.0.attn.hook_z", lumen::Intervention::zero().on_heads({1}));
    EXPECT_LT(maxdiff(run_with(cpu, iv), run_with(dev, iv)), 1e-4);

    // stop_at_layer returns the residual stream, on the device.
    lumen::RunOptions so;
    so.stop_at_layer = 1;
    auto resid = dev.forward(ids.to(dev.device()), so);
    EXPECT_EQ(resid.device(), dev.device());
    EXPECT_LT(maxdiff(resid, hc.get("blocks.0.hook_resid_post")), 1e-4);

    // KV-cache decoding equals the full forward.
    const int64_t T = std::min<int64_t>(16, c.n_ctx);
    auto seq = ids_for(c.d_vocab, T, 3).to(dev.device());
    auto full = dev.forward(seq);
    auto cache = dev.new_cache(1, T);
    lumen::RunOptions kv;
    kv.cache = &cache;
    EXPECT_LT(maxdiff(dev.forward(seq.narrow(1, 0, 4), kv), full.narrow(1, 0, 4)), 1e-4);
    for (int64_t t = 4; t < T; ++t) EXPECT_LT(maxdiff(dev.forward(seq.narrow(1, t, 1), kv)[0][0], full[0][t]), 1e-4) << t;
  }
}

// Gradients to a hook site and to the input embeddings (and through the one-hot token path).
TEST(Device, GradientsMatchTheCpu) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED("testdata/models/llama_b");
  auto cpu = load_on("testdata/models/llama_b", c10::kCPU);
  auto dev = load_on("testdata/models/llama_b", lumen_test::device());
  const int64_t V = cpu.config().d_vocab;
  auto ids = ids_for(V, 7);
  struct Grads {
    torch::Tensor site, one_hot;
  };
  auto grads = [&](const lumen::Model& m) {
    auto one_hot = torch::one_hot(ids.to(m.device()), V).to(torch::kFloat).requires_grad_(true);
    lumen::HookSet w;
    w.watch("blocks.1.hook_resid_mid");
    lumen::RunOptions ro;
    ro.hooks = &w;
    ro.input_embeds = m.embed_one_hot(one_hot);
    auto logits = m.forward(torch::Tensor(), ro);
    auto loss = torch::log_softmax(logits[0][6], -1)[5] + logits[0][3][11] * 0.5;
    auto g_site = w.gradients(loss, true)["blocks.1.hook_resid_mid"];
    auto g_one_hot = torch::autograd::grad({loss}, {one_hot})[0];
    return Grads{g_site, g_one_hot};
  };
  auto gc = grads(cpu), gd = grads(dev);
  EXPECT_EQ(gd.site.device(), dev.device());
  const double scale = gc.site.abs().max().item<double>();
  EXPECT_GT(scale, 0.0);
  EXPECT_LT(maxdiff(gc.site, gd.site), 1e-4 * std::max(1.0, scale));
  EXPECT_LT(maxdiff(gc.one_hot, gd.one_hot), 1e-4 * std::max(1.0, gc.one_hot.abs().max().item<double>()));
}

TEST(Device, Bf16ForwardAgreesWithFloat32) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED(kStories);
  torch::NoGradGuard ng;
  auto f32 = load_on(kStories, lumen_test::device());
  auto bf16 = load_on(kStories, lumen_test::device(), torch::kBFloat16);
  auto ids = lumen::tokens_tensor(f32.require_tokenizer().encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", true));
  auto a = f32.forward(ids), b = bf16.forward(ids);
  EXPECT_EQ(b.scalar_type(), torch::kBFloat16);
  const double agree = (a.argmax(-1) == b.argmax(-1)).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(agree, 0.9);
  lumen::GenerateOptions go;
  go.max_new_tokens = 20;
  EXPECT_EQ(lumen::generate(bf16, {f32.require_tokenizer().encode("Once upon a time", true)}, go).generated[0].size(), 20u);
}

lumen::Sae random_sae(int64_t d_in, int layer, uint64_t seed, c10::Device dev) {
  lumen::SaeConfig c;
  c.arch = lumen::SaeArch::TopK;
  c.d_in = d_in;
  c.d_sae = 128;
  c.k = 8;
  c.hook_name = "blocks." + std::to_string(layer) + ".hook_resid_post";
  return lumen::Sae::init(c, seed, dev);
}

// An SAE spliced in, evaluated, and trained on the device; evaluation agrees with the CPU's.
TEST(Device, SaeSpliceEvaluateAndTrain) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED(kStories);
  LUMEN_REQUIRE_SHARED("data/tinystories/train.txt");
  auto cpu = load_on(kStories, c10::kCPU);
  auto dev = load_on(kStories, lumen_test::device());
  auto sae_cpu = random_sae(64, 2, 5, c10::kCPU);
  auto sae_dev = sae_cpu.to(dev.device(), torch::kFloat);
  EXPECT_EQ(sae_dev.device(), dev.device());
  {
    torch::NoGradGuard ng;
    auto ids = ids_for(512, 16).to(dev.device());
    lumen::HookSet hs;
    lumen::attach(hs, sae_dev, lumen::SpliceMode::WithError);
    const std::string acts = lumen::sae_hook_acts(sae_dev.config().hook_name);
    hs.cache(acts);
    lumen::RunOptions ro;
    ro.hooks = &hs;
    EXPECT_LT(maxdiff(dev.forward(ids, ro), dev.forward(ids)), 1e-5);
    EXPECT_EQ(hs.get(acts).device(), dev.device());
    EXPECT_TRUE(torch::equal((hs.get(acts) > 0).sum(-1).cpu(), torch::full({1, 16}, 8, torch::kLong)));
  }
  lumen::EvalOptions eo;
  eo.corpus = shared_path("data/tinystories/heldout.txt");
  eo.tokens = 3000;
  eo.ctx_len = 64;
  const auto ec = lumen::evaluate_sae(cpu, sae_cpu, eo), ed = lumen::evaluate_sae(dev, sae_dev, eo);
  EXPECT_EQ(ec.tokens, ed.tokens);
  EXPECT_NEAR(ec.fvu, ed.fvu, 1e-3 * std::max(1.0, ec.fvu));
  EXPECT_NEAR(ec.l0, ed.l0, 1e-3);
  EXPECT_NEAR(ec.ce_loss_spliced, ed.ce_loss_spliced, 1e-3);

  lumen::TrainOptions o;
  o.sae.arch = lumen::SaeArch::TopK;
  o.sae.d_sae = 256;
  o.sae.k = 8;
  o.sae.hook_name = "blocks.1.hook_resid_post";
  o.data.corpus = shared_path("data/tinystories/train.txt");
  o.data.ctx_len = 64;
  o.data.batch_tokens = 512;
  o.data.buffer_tokens = 4096;
  o.data.model_batch = 8;
  o.total_tokens = 512 * 100;
  o.lr = 3e-3;
  o.seed = 11;
  o.log = [](const std::string&) {};
  auto r = lumen::train_sae(dev, o);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.sae.device(), dev.device());
  const auto ev = lumen::evaluate_sae(dev, r.sae, eo);
  EXPECT_LT(ev.fvu, 0.4);
  EXPECT_NEAR(ev.l0, 8, 4);
}

// ADAPT's best sequence is scored exactly as a plain forward pass on the device scores it.
TEST(Device, FeatureVisualizationScoresExactly) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED(kStories);
  auto dev = load_on(kStories, lumen_test::device());
  auto sae = random_sae(64, 2, 7, dev.device());
  lumen::VizTarget t;
  t.hook = sae.config().hook_name;
  t.sae = &sae;
  t.index = 3;
  lumen::VizOptions o;
  o.len = 8;
  o.budget_tokens = 20000;
  o.seed = 1;
  o.log = [](const std::string&) {};
  auto r = lumen::visualize(dev, t, o);
  ASSERT_FALSE(r.best.empty());
  torch::NoGradGuard ng;
  lumen::HookSet hs;
  hs.cache(t.hook);
  lumen::RunOptions ro;
  ro.hooks = &hs;
  dev.forward(lumen::tokens_tensor(r.best[0].ids, dev.device()), ro);
  const double want = sae.encode(hs.get(t.hook))[0].select(-1, 3)[-1].item<double>();
  EXPECT_NEAR(r.best[0].activation, want, 1e-4 * std::max(1.0, std::fabs(want)));
  EXPECT_GT(r.best[0].activation, 0.0);
}

// Attribution patching over SAE features gives the CPU's node effects and circuit.
TEST(Device, CircuitEffectsMatchTheCpu) {
  LUMEN_REQUIRE_DEVICE();
  LUMEN_REQUIRE_SHARED(kStories);
  auto cpu = load_on(kStories, c10::kCPU);
  auto dev = load_on(kStories, lumen_test::device());
  const auto data = lumen::tokenize_sva(cpu, lumen::sva_template_pairs(16, 2, "simple", &cpu));
  ASSERT_GT(data.examples.size(), 4u);
  lumen::CircuitOptions o;
  o.method = lumen::AttributionMethod::AtP;
  o.node_threshold = 0.02;
  o.exact_nodes = 8;
  o.sweep = {0.0, 0.02};
  o.log = [](const std::string&) {};
  std::vector<lumen::Sae> sc{random_sae(64, 1, 8, c10::kCPU), random_sae(64, 3, 9, c10::kCPU)};
  std::vector<lumen::Sae> sd{sc[0].to(dev.device(), torch::kFloat), sc[1].to(dev.device(), torch::kFloat)};
  const auto a = lumen::find_circuit(cpu, sc, data, o), b = lumen::find_circuit(dev, sd, data, o);
  EXPECT_EQ(a.total_nodes, b.total_nodes);
  EXPECT_NEAR(a.m_clean, b.m_clean, 1e-4);
  EXPECT_NEAR(a.accuracy, b.accuracy, 1e-9);
  // Nodes whose effect is zero in exact arithmetic may come out as rounding noise on one side only.
  std::map<std::string, double> eb;
  for (const auto& n : b.top_nodes) eb[n.id] = n.effect;
  int compared = 0, strong = 0;
  for (const auto& n : a.top_nodes) {
    if (std::fabs(n.effect) < 1e-4) continue;
    ++strong;
    if (!eb.count(n.id)) {
      ADD_FAILURE() << n.id << " (effect " << n.effect << ") is missing on the device";
      continue;
    }
    EXPECT_NEAR(n.effect, eb[n.id], 1e-4 + 1e-3 * std::fabs(n.effect)) << n.id;
    ++compared;
  }
  EXPECT_GT(strong, 20);
  EXPECT_EQ(compared, strong);
  EXPECT_NEAR(a.faithfulness, b.faithfulness, 1e-3);
}

}  // namespace
