// The CLI as a user runs it: exact run.c output, the cache file, and one-line errors on bad input.
#include <torch/torch.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "common.h"
#include "lumen/files.h"
#include "lumen/tensors.h"

namespace {

using lumen_test::shared_path;

using Run = lumen_test::CliRun;
using lumen_test::cli_path;
Run run(const std::string& args) { return lumen_test::run_cli(args); }

std::string q(const std::string& s) { return "'" + s + "'"; }

// Every bad input ends with one line on stderr that names the culprit, and exit code 1.
void expect_clean_error(const Run& r, const std::string& must_mention) {
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("lumen: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  EXPECT_NE(r.err.find(must_mention), std::string::npos) << "should mention '" << must_mention << "': " << r.err;
  EXPECT_EQ(r.err.find("terminate"), std::string::npos);
  EXPECT_EQ(r.err.find("Exception raised from"), std::string::npos);
}

TEST(Cli, GenerateEqualsRunCByteForByte) {
  LUMEN_REQUIRE_SHARED("testdata/llama2c/stories260K");
  LUMEN_REQUIRE_SHARED("models/stories260K");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Once upon a time", "once_upon_a_time"}, {"Lily and Tom", "lily_and_tom"}, {"The cat", "the_cat"}};
  auto bin = shared_path("models/stories260K/stories260K.bin");
  for (const auto& [prompt, slug] : cases) {
    auto ids = run("tokenize " + q(bin) + " --text " + q(prompt));
    ASSERT_EQ(ids.code, 0) << ids.err;
    const int n_prompt = static_cast<int>(std::count(ids.out.begin(), ids.out.end(), ' ')) + 1;
    const std::string want = lumen::read_file(shared_path("testdata/llama2c/stories260K/" + slug + ".stdout.txt"));
    const std::string n = std::to_string(64 - (n_prompt - 1));
    auto r = run("generate " + q(bin) + " --prompt " + q(prompt) + " --max-tokens " + n);
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, want) << slug;
    auto hf = run("generate " + q(shared_path("testdata/models/stories260K_hf")) + " --tokenizer " +
                  q(shared_path("models/stories260K/tok512.bin")) + " --prompt " + q(prompt) + " --max-tokens " + n);
    EXPECT_EQ(hf.out, want) << slug << " (HF copy)";
  }
}

TEST(Cli, TokenizeInfoAndCache) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto bin = shared_path("models/stories260K/stories260K.bin");
  auto t = run("tokenize " + q(bin) + " --text 'Once upon a time'");
  EXPECT_EQ(t.out, "1 403 407 261 378\n");
  auto info = run("info " + q(bin));
  EXPECT_EQ(info.code, 0);
  EXPECT_NE(info.out.find("blocks.{l}.attn.hook_pattern"), std::string::npos);
  EXPECT_NE(info.out.find("interleaved"), std::string::npos);

  const std::string out = lumen_test::temp_dir("cache") + "/c.safetensors";
  auto c = run("cache " + q(bin) + " --ids '1 403 407 261 378' --hooks 'blocks.*.hook_resid_post,blocks.0.attn.hook_pattern' --out " + q(out));
  ASSERT_EQ(c.code, 0) << c.err;
  auto st = lumen::TensorStore::open(out);
  EXPECT_EQ(st.get("logits").sizes(), torch::IntArrayRef({5, 512}));
  EXPECT_EQ(st.get("blocks.4.hook_resid_post").sizes(), torch::IntArrayRef({5, 64}));
  EXPECT_EQ(st.get("blocks.0.attn.hook_pattern").sizes(), torch::IntArrayRef({8, 5, 5}));
  auto ref = lumen::TensorStore::open(shared_path("testdata/llama2c/stories260K/once_upon_a_time.f64.safetensors"));
  auto diff = (st.get("logits").to(torch::kDouble) - ref.get("logits").narrow(0, 0, 5)).abs().max().item<double>();
  EXPECT_LT(diff, 1e-4);
}

// ---- bad input ----------------------------------------------------------------------------------

std::string copy_model(const std::string& name, const std::string& tag) {
  const std::string dir = lumen_test::temp_dir(tag);
  std::system(("cp -r " + q(shared_path("testdata/models/" + name)) + "/. " + q(dir)).c_str());
  return dir;
}

TEST(CliErrors, TruncatedAndLyingCheckpoints) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  const std::string dir = lumen_test::temp_dir("trunc");
  const std::string bin = lumen::read_file(shared_path("models/stories260K/stories260K.bin"));
  std::ofstream(dir + "/short.bin", std::ios::binary).write(bin.data(), 1000);
  expect_clean_error(run("info " + q(dir + "/short.bin")), "short.bin");
  std::string lie = bin;
  int32_t dim = 128;  // the header claims a wider model than the file holds
  std::memcpy(&lie[0], &dim, 4);
  std::ofstream(dir + "/lie.bin", std::ios::binary).write(lie.data(), lie.size());
  expect_clean_error(run("info " + q(dir + "/lie.bin")), "lie.bin");
  std::ofstream(dir + "/tiny.bin", std::ios::binary).write(bin.data(), 10);
  expect_clean_error(run("info " + q(dir + "/tiny.bin")), "tiny.bin");
  // A safetensors file cut short.
  const std::string hf = copy_model("gpt2_a", "trunc_hf");
  const std::string st = lumen::read_file(hf + "/model.safetensors");
  std::ofstream(hf + "/model.safetensors", std::ios::binary | std::ios::trunc).write(st.data(), st.size() / 2);
  expect_clean_error(run("info " + q(hf)), "model.safetensors");
}

TEST(CliErrors, MissingTensorWrongShapeUnknownType) {
  LUMEN_REQUIRE_SHARED("testdata/models/llama_a");
  {
    const std::string dir = copy_model("llama_a", "missing");
    auto store = lumen::TensorStore::open(dir + "/model.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> keep;
    for (const auto& n : store.names())
      if (n != "model.layers.1.mlp.up_proj.weight") keep.emplace_back(n, store.get(n).clone());
    lumen::save_safetensors(dir + "/model.safetensors", keep);
    expect_clean_error(run("info " + q(dir)), "layers.1.mlp.up_proj.weight");
  }
  {
    const std::string dir = copy_model("llama_a", "shape");
    auto store = lumen::TensorStore::open(dir + "/model.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> keep;
    for (const auto& n : store.names())
      keep.emplace_back(n, n == "model.layers.0.self_attn.k_proj.weight" ? torch::zeros({16, 64}) : store.get(n).clone());
    lumen::save_safetensors(dir + "/model.safetensors", keep);
    expect_clean_error(run("info " + q(dir)), "model.layers.0.self_attn.k_proj.weight");
  }
  {
    const std::string dir = copy_model("llama_a", "type");
    std::string cfg = lumen::read_file(dir + "/config.json");
    cfg.replace(cfg.find("\"llama\""), 7, "\"mamba\"");
    std::ofstream(dir + "/config.json", std::ios::trunc) << cfg;
    expect_clean_error(run("info " + q(dir)), "mamba");
  }
}

TEST(CliErrors, UnknownHookLongPromptMissingTokenizer) {
  LUMEN_REQUIRE_SHARED("models/stories260K");
  auto bin = shared_path("models/stories260K/stories260K.bin");
  const std::string out = lumen_test::temp_dir("err") + "/x.safetensors";
  expect_clean_error(run("cache " + q(bin) + " --ids '1 2 3' --hooks blocks.9.hook_resid_post --out " + q(out)),
                     "blocks.9.hook_resid_post");
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "the cat sat. ";
  expect_clean_error(run("generate " + q(bin) + " --prompt " + q(long_prompt) + " --max-tokens 5"), "context");
  expect_clean_error(run("generate " + q(shared_path("testdata/models/stories260K_hf")) + " --prompt hi"), "tokenizer");
  expect_clean_error(run("info /nonexistent/model"), "/nonexistent/model");
}

}  // namespace
