// Patchscopes / Superscopes: the patch lands where it should and the sweep is one faithful batch.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/error.h"
#include "lumen/generate.h"
#include "lumen/files.h"
#include "lumen/scopes.h"

#include <fstream>

namespace {

using lumen_test::shared_path;

lumen::Model stories() { return lumen::Model::load(shared_path("models/stories260K/stories260K.bin")); }

TEST(Scope, PlaceholderIsTheLastTokenOfTheIdentityPrompt) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = stories();
  std::vector<int32_t> ids;
  lumen::ScopeTarget t;
  const int64_t pos = lumen::scope_placeholder_position(model.require_tokenizer(), t, &ids);
  EXPECT_EQ(pos, static_cast<int64_t>(ids.size()) - 1);
  t.text = "The word ? means";
  const int64_t mid = lumen::scope_placeholder_position(model.require_tokenizer(), t, &ids);
  EXPECT_LT(mid, static_cast<int64_t>(ids.size()) - 1);
  EXPECT_EQ(model.require_tokenizer().decode({ids[mid]}).back(), '?');
  t.text = "no placeholder";
  EXPECT_THROW(lumen::scope_placeholder_position(model.require_tokenizer(), t, &ids), lumen::Error);
}

// Patching the target's own activation back in changes nothing; a foreign one changes the output.
TEST(Scope, PatchingTheTargetsOwnVectorIsANoOp) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = stories();
  lumen::ScopeTarget t;
  t.text = "Once upon a time, there was a ?";
  const std::string src = t.text;
  auto own = lumen::scope_source_vector(model, src, 1, "resid_post", -1);
  lumen::ScopeOptions so;
  so.amps = {1.0};
  so.max_new_tokens = 15;
  auto rows = lumen::run_scope(model, own, 1, "resid_post", t, so);
  auto ids = model.require_tokenizer().encode(src, true);
  lumen::GenerateOptions go;
  go.max_new_tokens = 15;
  auto plain = lumen::generate(model, {ids}, go);
  EXPECT_EQ(rows[0].ids, plain.generated[0]);
  auto other = lumen::scope_source_vector(model, "The dragon flew over the castle", 1, "resid_post", -1);
  auto rows2 = lumen::run_scope(model, other * 8.0, 1, "resid_post", t, so);
  EXPECT_NE(rows2[0].ids, plain.generated[0]);
}

TEST(Scope, BatchedSweepEqualsSeparateRunsAndGuidanceFixedPoint) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto model = stories();
  auto v = lumen::scope_source_vector(model, "Lily had a small cat", 3, "mlp_out", -1);
  lumen::ScopeTarget t;
  lumen::ScopeOptions so;
  so.amps = {1, 4, 16};
  so.max_new_tokens = 10;
  auto batch = lumen::run_scope(model, v, 3, "mlp_out", t, so);
  ASSERT_EQ(batch.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    lumen::ScopeOptions one = so;
    one.amps = {so.amps[i]};
    auto single = lumen::run_scope(model, v, 3, "mlp_out", t, one);
    EXPECT_EQ(batch[i].ids, single[0].ids) << "factor " << so.amps[i];
  }
  // v_base + a (v - v_base) with v_base = v is v for every factor.
  so.baseline = v;
  auto fixed = lumen::run_scope(model, v, 3, "mlp_out", t, so);
  EXPECT_EQ(fixed[0].ids, fixed[1].ids);
  EXPECT_EQ(fixed[0].ids, fixed[2].ids);
}

TEST(Scope, ScoringRules) {
  EXPECT_TRUE(lumen::scope_contains_word("I saw a Dog.", "dog"));
  EXPECT_FALSE(lumen::scope_contains_word("I saw a doghouse", "dog"));
  std::vector<lumen::ScopeRow> rows = {{0, "resid_post", 1, "the the the the", {}},
                                       {0, "resid_post", 2, "a happy dog ran", {}},
                                       {0, "resid_post", 4, "a happy dog ran", {}}};
  EXPECT_EQ(lumen::scope_pick_auto(rows, "there was a little dog", ""), 1u);
  EXPECT_EQ(lumen::scope_pick_auto(rows, "x", "dog"), 1u);
}

TEST(Scope, CliJsonContracts) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  const char* env = std::getenv("LUMEN_CLI");
  const std::string cli_path = env ? env : std::string(LUMEN_BINARY_DIR) + "/lumen";
  const char* cli = cli_path.c_str();
  const std::string dir = lumen_test::temp_dir("scope");
  const std::string model = shared_path("models/stories260K/stories260K.bin");
  std::string cmd = std::string(cli) + " scope '" + model +
                    "' --source 'Lily had a small cat' --layer 2 --site mlp_out --amp 1,2,4 --max-tokens 5 --json > " + dir + "/a.json";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto a = nlohmann::json::parse(lumen::read_file(dir + "/a.json"));
  ASSERT_TRUE(a.is_array());
  ASSERT_EQ(a.size(), 3u);
  for (auto& r : a) {
    EXPECT_EQ(r["layer"], 2);
    EXPECT_EQ(r["site"], "mlp_out");
    EXPECT_TRUE(r["text"].is_string());
  }
  std::ofstream(dir + "/ents.jsonl") << "{\"prompt\": \"Tom saw a bird\", \"answer\": \"bird\"}\n";
  cmd = std::string(cli) + " scope bench '" + model + "' --entities " + dir + "/ents.jsonl --layers 0,4 --amp 1,8 --max-tokens 4 --json > " +
        dir + "/b.json";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto b = nlohmann::json::parse(lumen::read_file(dir + "/b.json"));
  for (const char* m : {"patchscopes", "superscopes_best", "superscopes_auto"}) {
    ASSERT_TRUE(b.contains(m)) << m;
    EXPECT_TRUE(b[m].contains("0") && b[m].contains("4"));
  }
}

}  // namespace
