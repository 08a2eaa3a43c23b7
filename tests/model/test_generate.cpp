// Generation: batches with left padding, sampling reproducibility, hooks during generation.
#include <torch/torch.h>

#include "common.h"
#include "device.h"
#include "lumen/error.h"
#include "lumen/generate.h"

namespace {

using lumen_test::shared_path;

lumen::Model stories() { return lumen::Model::load(shared_path("models/stories260K/stories260K.bin")); }

TEST(Generate, BatchedPromptsOfDifferentLengthsMatchSingleRuns) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = stories();
  const auto& tok = model.require_tokenizer();
  std::vector<std::vector<int32_t>> prompts = {tok.encode("Once upon a time", true), tok.encode("The cat", true),
                                               tok.encode("Lily and Tom went to the park. They", true)};
  lumen::GenerateOptions go;
  go.max_new_tokens = 30;
  auto batched = lumen::generate(model, prompts, go);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto single = lumen::generate(model, {prompts[i]}, go);
    EXPECT_EQ(batched.tokens[i], single.tokens[0]) << "row " << i;
  }
}

// On the CPU and, where there is one, on the accelerator (LUMEN_TEST_DEVICE): each device has its
// own random streams, so each is checked against itself.
TEST(Generate, SamplingIsReproducibleFromTheSeed) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  std::vector<c10::Device> devices{c10::kCPU};
  if (lumen_test::device_available() && !lumen_test::device().is_cpu()) devices.push_back(lumen_test::device());
  for (const c10::Device dev : devices) {
    SCOPED_TRACE(dev.str());
    lumen::LoadOptions lo;
    lo.device = dev;
    auto model = lumen::Model::load(shared_path("models/stories260K/stories260K.bin"), lo);
    auto ids = model.require_tokenizer().encode("Once upon a time", true);
    lumen::GenerateOptions go;
    go.max_new_tokens = 40;
    go.temperature = 1.0;
    go.top_k = 40;
    go.top_p = 0.9;
    go.seed = 7;
    auto a = lumen::generate(model, {ids}, go);
    auto b = lumen::generate(model, {ids}, go);
    EXPECT_EQ(a.tokens, b.tokens);
    ASSERT_EQ(a.generated[0].size(), 40u);
    for (int32_t t : a.generated[0]) EXPECT_LT(t, model.config().d_vocab);
    go.seed = 8;
    auto c = lumen::generate(model, {ids}, go);
    EXPECT_NE(a.tokens, c.tokens);
  }
}

TEST(Generate, StopsOnStopTokensAndRespectsContext) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = stories();
  auto ids = model.require_tokenizer().encode("Once upon a time", true);
  lumen::GenerateOptions go;
  go.max_new_tokens = 20;
  auto greedy = lumen::generate(model, {ids}, go);
  ASSERT_GE(greedy.generated[0].size(), 3u);
  go.stop_tokens = {greedy.generated[0][2]};
  auto stopped = lumen::generate(model, {ids}, go);
  EXPECT_TRUE(stopped.stopped[0]);
  EXPECT_LE(stopped.generated[0].size(), 2u);
  std::vector<int32_t> too_long(600, 5);
  EXPECT_THROW(lumen::generate(model, {too_long}, go), lumen::Error);
}

TEST(Generate, HooksApplyOnThePromptOnlyOrEveryStep) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = stories();
  auto ids = model.require_tokenizer().encode("Once upon a time", true);
  int calls_with_intervention = 0;
  lumen::HookSet hooks;
  hooks.add("blocks.2.hook_resid_post", lumen::Intervention::callback([&](const at::Tensor& x, const lumen::HookContext&) {
    ++calls_with_intervention;
    return x * 0.0;
  }));
  lumen::GenerateOptions go;
  go.max_new_tokens = 10;
  go.hooks = &hooks;
  auto prompt_only = lumen::generate(model, {ids}, go);
  EXPECT_EQ(calls_with_intervention, 1);
  calls_with_intervention = 0;
  go.hooks_every_step = true;
  auto every = lumen::generate(model, {ids}, go);
  EXPECT_EQ(calls_with_intervention, static_cast<int>(every.generated[0].size()));
  EXPECT_NE(prompt_only.tokens, every.tokens);
  // Cached sites grow along the sequence while decoding.
  lumen::HookSet cache;
  cache.cache("blocks.0.hook_resid_post");
  go.hooks = &cache;
  auto res = lumen::generate(model, {ids}, go);
  EXPECT_EQ(cache.get("blocks.0.hook_resid_post").size(1), static_cast<int64_t>(res.tokens[0].size()) - 1);
}

}  // namespace
