// Parity with independent reference implementations (nanoGPT, llama2.c model.py / run.c,
// gemma_pytorch): logits and every residual stream within 1e-4 of the float64 dumps.
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/generate.h"
#include "lumen/model.h"
#include "lumen/tensors.h"

namespace {

using lumen_test::shared_path;

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

struct ParityCase {
  std::string model;
  int T;
};

std::string case_name(const testing::TestParamInfo<ParityCase>& info) {
  return info.param.model + "_T" + std::to_string(info.param.T);
}

class HfParity : public testing::TestWithParam<ParityCase> {};

TEST_P(HfParity, LogitsAndResidualsMatchFloat64Reference) {
  const auto& pc = GetParam();
  LUMEN_REQUIRE_SHARED("testdata/models/" + pc.model);
  torch::NoGradGuard ng;
  auto model = lumen::Model::load(shared_path("testdata/models/" + pc.model));
  auto ref = lumen::TensorStore::open(shared_path("testdata/models/" + pc.model + "/ref/T" + std::to_string(pc.T) + ".f64.safetensors"));
  auto ids = ref.get("input_ids").to(torch::kLong).unsqueeze(0);
  lumen::HookSet hooks;
  hooks.cache("blocks.0.hook_resid_pre,blocks.*.hook_resid_post,ln_final.hook_normalized");
  lumen::RunOptions ro;
  ro.hooks = &hooks;
  auto logits = model.forward(ids, ro);

  const double tol = 1e-4;
  EXPECT_LT(max_abs_diff(logits[0], ref.get("logits")), tol) << "logits";
  EXPECT_LT(max_abs_diff(hooks.get("blocks.0.hook_resid_pre")[0], ref.get("embed")), tol) << "embed";
  for (int64_t l = 0; l < model.config().n_layers; ++l) {
    const std::string name = "blocks." + std::to_string(l) + ".hook_resid_post";
    EXPECT_LT(max_abs_diff(hooks.get(name)[0], ref.get("resid_post." + std::to_string(l))), tol) << name;
  }
  EXPECT_LT(max_abs_diff(hooks.get("ln_final.hook_normalized")[0], ref.get("final_norm")), tol) << "final_norm";
  // argmax agrees everywhere
  EXPECT_TRUE(torch::equal(logits[0].argmax(-1), ref.get("logits").argmax(-1)));
}

std::vector<ParityCase> hf_cases() {
  std::vector<ParityCase> out;
  for (const char* m : {"gpt2_a", "gpt2_a_fp16", "gpt2_a_bf16", "gpt2_b", "llama_a", "llama_b", "gemma2_a", "gemma2_b"})
    for (int T : {1, 7, 33}) out.push_back({m, T});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Models, HfParity, testing::ValuesIn(hf_cases()), case_name);

// ---- stories260K: the .bin and its HF copy against model.py (f64) and run.c ------------------------

class StoriesParity : public testing::TestWithParam<std::string> {};

std::string stories_path(const std::string& which) {
  return which == "bin" ? shared_path("models/stories260K/stories260K.bin") : shared_path("testdata/models/stories260K_hf");
}

TEST_P(StoriesParity, LogitsMatchModelPyAndRunC) {
  LUMEN_REQUIRE_SHARED("testdata/llama2c/stories260K");
  LUMEN_REQUIRE_SHARED("models/stories260K");
  torch::NoGradGuard ng;
  auto model = lumen::Model::load(stories_path(GetParam()));
  for (const char* slug : {"once_upon_a_time", "lily_and_tom", "the_cat"}) {
    const std::string base = shared_path(std::string("testdata/llama2c/stories260K/") + slug);
    auto ref64 = lumen::TensorStore::open(base + ".f64.safetensors");
    auto ref32 = lumen::TensorStore::open(base + ".safetensors");
    auto ids = ref64.get("input_ids").to(torch::kLong).unsqueeze(0);
    lumen::HookSet hooks;
    hooks.cache("blocks.*.hook_resid_post");
    lumen::RunOptions ro;
    ro.hooks = &hooks;
    auto logits = model.forward(ids, ro)[0];
    EXPECT_LT(max_abs_diff(logits, ref64.get("logits")), 1e-4) << slug;
    EXPECT_LT(max_abs_diff(logits, ref32.get("runc_logits")), 1e-4) << slug << " vs run.c";
    for (int l = 0; l < 5; ++l)
      EXPECT_LT(max_abs_diff(hooks.get("blocks." + std::to_string(l) + ".hook_resid_post")[0],
                             ref64.get("resid_post." + std::to_string(l))),
                1e-4)
          << slug << " layer " << l;
  }
}

TEST_P(StoriesParity, GreedyGenerationEqualsRunC) {
  LUMEN_REQUIRE_SHARED("testdata/llama2c/stories260K/generations.json");
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = lumen::Model::load(stories_path(GetParam()));
  std::ifstream in(shared_path("testdata/llama2c/stories260K/generations.json"));
  auto j = nlohmann::json::parse(in);
  int checked = 0;
  auto check = [&](const nlohmann::json& g) {
    auto prompt = g.at("prompt_ids_with_bos").get<std::vector<int32_t>>();
    auto all = g.at("all_ids").get<std::vector<int32_t>>();
    lumen::GenerateOptions go;
    go.max_new_tokens = 64 - (static_cast<int64_t>(prompt.size()) - 1);  // run.c -n 64
    auto res = lumen::generate(model, {prompt}, go);
    EXPECT_EQ(res.tokens[0], all);
    ++checked;
  };
  if (j.is_array()) {
    for (auto& g : j) check(g);
  } else if (j.contains("cases")) {
    for (auto& g : j["cases"]) check(g);
  } else {
    for (auto& kv : j.items())
      if (kv.value().is_object() && kv.value().contains("all_ids")) check(kv.value());
  }
  EXPECT_EQ(checked, 3);
}

INSTANTIATE_TEST_SUITE_P(Formats, StoriesParity, testing::Values("bin", "hf"));

}  // namespace
